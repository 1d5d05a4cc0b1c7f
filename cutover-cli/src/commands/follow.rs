//! `cutover db follow`: trigger mode's applier in the foreground, for a service manager, and
//! in both modes the follower of the source's schema ([`cutover_pg::drift`]).
//! Stops cleanly on SIGTERM or Ctrl-C (the batch in progress either commits with its
//! position or not at all); `--health ADDR` serves `GET /health` as JSON.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_core::{Mode, Plan};
use cutover_pg::connect;
use cutover_pg::trigger::{self, FollowEvent};
use serde::Serialize;

use crate::cli::{FollowArgs, Global};

#[derive(Clone, Debug, Default, Serialize)]
struct Health {
    link: String,
    batches: u64,
    changes: u64,
    retries: u64,
    last_error: Option<String>,
    /// Schema changes applied to the follower.
    schema_applied: u64,
    /// Schema changes that hold the applier until `cutover db schema apply`.
    held: Vec<String>,
    /// Seconds since the last batch that applied something.
    idle_seconds: Option<f64>,
    #[serde(skip)]
    last_applied: Option<Instant>,
}

pub async fn run(g: &Global, args: FollowArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    follow_until_stopped(g, &plan, args.health).await
}

/// The link to follow now: the reverse one once a switchover made it, else the forward one.
pub async fn current_link(plan: &Plan) -> anyhow::Result<trigger::Link> {
    if plan.sync.mode != Mode::Trigger {
        anyhow::bail!(
            "this plan uses sync.mode = \"native\", where the target's subscription follows by itself and there is no trigger-mode link; watch it with `cutover db status`"
        );
    }
    Ok(cutover_pg::sync::current_link(plan).await?)
}

/// How often native mode's follower compares the schemas.
const SCHEMA_POLL: Duration = Duration::from_secs(2);

/// Native mode: the subscription applies the rows by itself; what `db follow` adds is the
/// schema. Every [`SCHEMA_POLL`] it compares the source's with the target's and applies
/// what is additive (`sync.schema_changes = "apply"`), and says what is held.
async fn watch_native(g: &Global, plan: &Plan) -> anyhow::Result<i32> {
    eprintln!(
        "native mode: the subscription follows the rows by itself; following the source's schema (additive changes {}), stop with Ctrl-C or SIGTERM",
        if plan.sync.apply_schema_changes {
            "applied on their own, the others held"
        } else {
            "and the others held"
        }
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut last_held: Vec<String> = vec![];
    loop {
        let pass = async {
            let source = connect(&plan.source.url, cutover_pg::Side::Source).await?;
            let target = connect(&plan.target.url, cutover_pg::Side::Target).await?;
            cutover_pg::schema_change::reconcile_native(plan, &source, &target, false).await
        };
        let pass = tokio::select! {
            p = pass => p,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        match pass {
            Ok(p) => {
                for change in &p.applied {
                    if g.json {
                        outln!(
                            "{}",
                            serde_json::json!({"event": "schema_applied", "change": change})
                        );
                    } else {
                        eprintln!("schema: applied {change}");
                    }
                }
                if p.held != last_held && !p.held.is_empty() {
                    if g.json {
                        outln!(
                            "{}",
                            serde_json::json!({"event": "held", "changes": p.held})
                        );
                    } else {
                        eprintln!(
                            "schema: held: {}; review, then run `cutover db schema apply` (the subscription waits at the first change the target cannot take)",
                            p.held.join("; ")
                        );
                    }
                }
                last_held = p.held;
            }
            Err(e) if e.retry() == cutover_pg::Retry::Transient => {
                eprintln!("retrying after: {e}");
            }
            // No subscription (not synced yet, or switched over): said once, looked at again.
            Err(e @ cutover_pg::PgError::Refused(_)) => {
                let said = vec![e.to_string()];
                if said != last_held {
                    eprintln!("{e}");
                    last_held = said;
                }
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = tokio::time::sleep(SCHEMA_POLL) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    eprintln!("stopped");
    Ok(0)
}

pub async fn follow_until_stopped(
    g: &Global,
    plan: &Plan,
    health_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<i32> {
    if plan.sync.mode == Mode::Native {
        return watch_native(g, plan).await;
    }
    let mut link = current_link(plan).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.cancel();
        });
    }
    let health = Arc::new(Mutex::new(Health {
        link: link.name.clone(),
        ..Default::default()
    }));
    if let Some(addr) = health_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot serve health on {addr}: {e}; pick another --health address")
        })?;
        let h = health.clone();
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let h = h.clone();
                async move {
                    let mut v = h.lock().unwrap().clone();
                    v.idle_seconds = v.last_applied.map(|t| t.elapsed().as_secs_f64());
                    axum::Json(v)
                }
            }),
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }
    let json = g.json;
    let last_line = Mutex::new(Instant::now() - Duration::from_secs(10));
    let pending = Mutex::new((0u64, 0u64));
    let on_event = |e: FollowEvent| {
        if json {
            if let Ok(line) = serde_json::to_string(&e) {
                outln!("{line}");
            }
        }
        let mut h = health.lock().unwrap();
        match &e {
            FollowEvent::Applied { batch, .. } => {
                h.held.clear();
                h.batches += 1;
                h.changes += batch.changes;
                h.last_applied = Some(Instant::now());
                let mut p = pending.lock().unwrap();
                p.0 += 1;
                p.1 += batch.changes;
                let mut last = last_line.lock().unwrap();
                if !json && last.elapsed() >= Duration::from_secs(5) {
                    eprintln!("applied {} changes in {} batches", p.1, p.0);
                    *p = (0, 0);
                    *last = Instant::now();
                }
            }
            FollowEvent::Retired => {
                if !json {
                    eprintln!("a switchover retired this direction");
                }
            }
            FollowEvent::SchemaChanged { what } => {
                if !json {
                    eprintln!("the schema changed ({what}); comparing it again");
                }
            }
            FollowEvent::SchemaApplied { change } => {
                h.schema_applied += 1;
                if !json {
                    eprintln!("schema: applied {change}");
                }
            }
            FollowEvent::Held { changes } => {
                h.held = changes.clone();
                if !json {
                    eprintln!(
                        "schema: held, nothing is applied until it is resolved: {}; review, then run `cutover db schema apply`",
                        changes.join("; ")
                    );
                }
            }
            FollowEvent::Retrying { error } => {
                h.retries += 1;
                h.last_error = Some(error.clone());
                if !json {
                    eprintln!("retrying after: {error}");
                }
            }
        }
    };
    // A switchover retires the link being followed; the other direction takes over.
    loop {
        health.lock().unwrap().link = link.name.clone();
        eprintln!(
            "following the {} into the {} (trigger mode, link {}); stop with Ctrl-C or SIGTERM",
            link.origin_side, link.follower_side, link.name
        );
        trigger::follow(
            &link,
            &plan.sync,
            Duration::from_millis(100),
            stop.clone(),
            &on_event,
        )
        .await?;
        if stop.is_cancelled() {
            break;
        }
        let next = current_link(plan).await?;
        if next.name == link.name {
            anyhow::bail!(
                "the {} holds no position for link {}: run `cutover db sync` first",
                link.follower_side,
                link.name
            );
        }
        link = next;
    }
    eprintln!(
        "stopped; the position is on the {}: `cutover db follow` continues from it",
        link.follower_side
    );
    Ok(0)
}
