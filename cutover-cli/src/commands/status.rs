//! `cutover db status`.

use std::io::IsTerminal;

use cutover_pg::status::Status;

use crate::cli::{Global, StatusArgs};
use crate::output;

pub async fn run(g: &Global, args: StatusArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let interval = if args.watch {
        plan.status.refresh
    } else {
        std::time::Duration::from_secs(1)
    };
    if plan.sync.mode == cutover_core::Mode::Trigger {
        return trigger_status(g, &plan, args.watch).await;
    }
    let mut interrupted = interrupt();
    loop {
        let status = tokio::select! {
            s = cutover_pg::status::status(&plan, interval) => s?,
            _ = interrupted.as_mut() => return Ok(0),
        };
        if !args.watch {
            if g.json {
                output::json(&status)?;
            } else {
                out!("{}", render(&status));
            }
            return Ok(0);
        }
        let text = if g.json {
            format!("{}\n", serde_json::to_string(&status)?)
        } else {
            format!("{}{}", clear(), render(&status))
        };
        if !output::frame(&text)? {
            return Ok(0);
        }
    }
}

/// Ctrl-C, listened for from now on. Made once per watch, not once per refresh: a
/// listener made anew misses a Ctrl-C that came while the frame before was written. Polled
/// once here, which is when it starts listening.
fn interrupt() -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>>>> {
    use std::future::Future;
    let mut f = Box::pin(tokio::signal::ctrl_c());
    let noop = &mut std::task::Context::from_waker(std::task::Waker::noop());
    if f.as_mut().poll(noop).is_ready() {
        // No handler could be installed: Ctrl-C ends the process as it would anyway.
        return Box::pin(std::future::pending());
    }
    f
}

/// What starts a watched frame: a cleared screen on a terminal, nothing in a pipe.
fn clear() -> &'static str {
    if std::io::stdout().is_terminal() {
        "\x1b[2J\x1b[H"
    } else {
        ""
    }
}

fn rate(r: Option<f64>) -> String {
    r.map(|v| format!("{}/s", output::bytes(v.max(0.0) as i64)))
        .unwrap_or_else(|| "-".into())
}

fn render(s: &Status) -> String {
    let mut out = String::new();
    let lag = s
        .slot
        .as_ref()
        .and_then(|x| x.lag_bytes)
        .map(output::bytes)
        .unwrap_or_else(|| "-".into());
    let retained = s
        .slot
        .as_ref()
        .and_then(|x| x.retained_bytes)
        .map(output::bytes)
        .unwrap_or_else(|| "-".into());
    let eta = match s.eta_seconds {
        Some(e) if e < 1.0 => "caught up".to_string(),
        Some(e) => output::millis((e * 1000.0) as u64),
        None => "- (not gaining)".to_string(),
    };
    if s.direction == "reverse" {
        out.push_str("direction     reverse: the target is the primary, the source follows it (ready for `cutover db rollback`)\n");
    }
    out.push_str(&format!(
        "lag           {lag} ({} WAL at {})\n",
        if s.direction == "reverse" {
            "target"
        } else {
            "source"
        },
        s.source_lsn
    ));
    out.push_str(&format!("retained WAL  {retained}\n"));
    out.push_str(&format!(
        "apply rate    {}   source writes {}   ETA {eta}\n",
        rate(s.apply_rate_bps),
        rate(s.source_rate_bps)
    ));
    match &s.subscription {
        Some(sub) => out.push_str(&format!(
            "subscription  {} {}, apply worker {}, {} worker errors\n",
            sub.name,
            if sub.enabled { "enabled" } else { "DISABLED" },
            if sub.worker_running {
                "running"
            } else {
                "not running"
            },
            sub.errors
        )),
        None => out.push_str("subscription  none\n"),
    }
    if !s.tables.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .tables
            .iter()
            .map(|t| {
                vec![
                    t.table.clone(),
                    t.state.to_string(),
                    t.rows_done.to_string(),
                    output::bytes(t.bytes_done),
                ]
            })
            .collect();
        out.push_str(&output::table(&["TABLE", "STATE", "ROWS", "BYTES"], &rows));
    }
    out.push_str(&render_schema(&s.schema));
    for w in &s.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

/// The "schema" section: every difference between the primary's schema and the follower's.
fn render_schema(drifts: &[cutover_pg::drift::Drift]) -> String {
    if drifts.is_empty() {
        return "\nschema        the same on both sides\n".into();
    }
    let mut out = format!(
        "\nschema        {} change(s) on the primary not on the follower\n",
        drifts.len()
    );
    for d in drifts {
        out.push_str(&format!(
            "  {}  {}\n",
            if d.additive { "pending" } else { "HELD   " },
            d.describe
        ));
    }
    out
}

/// Trigger mode: the backlog, the rates, the ETA and each table's state, as native mode.
async fn trigger_status(g: &Global, plan: &cutover_core::Plan, watch: bool) -> anyhow::Result<i32> {
    let link = super::follow::current_link(plan).await?;
    let interval = if watch {
        plan.status.refresh
    } else {
        std::time::Duration::from_secs(1)
    };
    let mut interrupted = interrupt();
    loop {
        let s = tokio::select! {
            s = cutover_pg::trigger::status(&link, &plan.sync, interval) => s?,
            _ = interrupted.as_mut() => return Ok(0),
        };
        if !watch && g.json {
            output::json(&s)?;
            return Ok(0);
        }
        let text = if g.json {
            format!("{}\n", serde_json::to_string(&s)?)
        } else {
            format!("{}{}", if watch { clear() } else { "" }, render_trigger(&s))
        };
        if !watch {
            out!("{text}");
            return Ok(0);
        }
        if !output::frame(&text)? {
            return Ok(0);
        }
    }
}

fn per_second(r: Option<f64>) -> String {
    r.map(|v| format!("{v:.0} changes/s"))
        .unwrap_or_else(|| "-".into())
}

fn render_trigger(s: &cutover_pg::trigger::TriggerStatus) -> String {
    let b = &s.backlog;
    let eta = match s.eta_seconds {
        Some(e) if e < 1.0 => "caught up".to_string(),
        Some(e) => output::millis((e * 1000.0) as u64),
        None => "- (not gaining)".to_string(),
    };
    let mut out = format!(
        "trigger mode, {} -> {} (link {})\nbacklog       {} changes{}\napplied       {} changes so far\napply rate    {}   captured {}   ETA {eta}\napplier       {}\n",
        s.origin,
        s.follower,
        s.link,
        b.changes,
        b.oldest_age_seconds
            .map(|a| format!(", oldest {a:.1} s old"))
            .unwrap_or_default(),
        b.applied_changes,
        per_second(s.apply_rate),
        per_second(s.capture_rate),
        if s.applier_running { "running" } else { "not running" }
    );
    if !s.tables.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .tables
            .iter()
            .map(|t| vec![t.table.clone(), t.state.to_string(), t.backlog.to_string()])
            .collect();
        out.push_str(&output::table(&["TABLE", "STATE", "BACKLOG"], &rows));
    }
    out.push_str(&render_schema(&s.schema));
    for w in &s.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}
