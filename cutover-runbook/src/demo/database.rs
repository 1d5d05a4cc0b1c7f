//! `cutover demo --database-only`: the database move alone on two local clusters, with
//! pgbench writing through the proxy during the copy and across the switchover (and, with a
//! Heroku-like source, the rollback), then verification and cleanup.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cutover_core::engine::{StepEvent, Steps};
use cutover_core::{ConnString, Journal, Plan, Secret};
use cutover_demo::SHOP_SCHEMA;
use cutover_pg::local::LocalCluster;
use cutover_pg::sync::TableProgress;
use cutover_pg::verify::VerifyReport;
use cutover_pg::{connect, Side};
use serde::Serialize;

use super::whole::DemoError;

#[derive(Clone, Debug)]
pub struct DatabaseOptions {
    /// A Heroku-like source: trigger mode, and a rollback under load too.
    pub heroku: bool,
    /// pgbench scale of the data.
    pub scale: u32,
    /// pgbench transactions per second during the copy.
    pub rate: u32,
}

/// Where the demo reports as it goes.
pub struct Callbacks<'a> {
    pub note: &'a (dyn Fn(&str) + Send + Sync),
    /// Every journaled step.
    pub steps: &'a (dyn Fn(&StepEvent<'_>) + Send + Sync),
    /// The copy's progress per table, then its end.
    pub copy: &'a (dyn Fn(&[TableProgress]) + Send + Sync),
    pub copy_done: &'a (dyn Fn() + Send + Sync),
    /// The verification's report.
    pub verified: &'a (dyn Fn(&VerifyReport) + Send + Sync),
    /// Passwords that must never be printed, as soon as they exist.
    pub secrets: &'a (dyn Fn(Vec<Secret>) + Send + Sync),
}

/// The clusters and the plan's folder: they stop and vanish when this is dropped.
pub struct Kept {
    pub source: LocalCluster,
    pub target: LocalCluster,
    pub dir: tempfile::TempDir,
}

fn failed(e: impl std::fmt::Display) -> DemoError {
    DemoError::Failed(e.to_string())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Verified(VerifyReport);

impl cutover_core::engine::Outcome for Verified {
    fn summary(&self) -> String {
        format!(
            "{} of {} tables equal",
            self.0.tables.iter().filter(|t| t.equal).count(),
            self.0.tables.len()
        )
    }
}

#[derive(Serialize)]
pub struct DatabaseSummary {
    pub tables: usize,
    pub rows: i64,
    pub bytes: i64,
    pub writes_during_copy: i64,
    pub time_to_synced_ms: u64,
    /// "native" (logical replication) or "trigger" (a Heroku-like source).
    pub mode: String,
    /// The load through the proxy while the database switched.
    pub switchover: SwitchFigures,
    /// With a Heroku-like source: the way back, under load too.
    pub rollback: Option<SwitchFigures>,
    pub verification: &'static str,
    pub tables_equal: usize,
    pub removed: Vec<String>,
    pub journal: String,
}

#[derive(Serialize)]
pub struct SwitchFigures {
    pub transactions: u64,
    pub failed_transactions: u64,
    pub aborted_clients: usize,
    /// The longest a client request waited at the proxy.
    pub longest_client_pause_ms: f64,
    /// From pause to resume.
    pub pause_ms: f64,
    pub sessions_moved: usize,
    pub steps: Vec<crate::switchover::StepTime>,
    /// Errors pgbench reported during the copy (it ran through the proxy too).
    pub errors_during_copy: Vec<String>,
}

/// Starts the write load through the proxy: pgbench's TPC-B-like transactions at `rate`
/// per second, for `seconds`.
fn start_load(
    url: &ConnString,
    rate: u32,
    seconds: u32,
) -> Result<tokio::process::Child, DemoError> {
    let (r, t) = (rate.to_string(), seconds.to_string());
    let child = cutover_pg::pgbench::start(
        url,
        &[
            "-n", "-c", "8", "-j", "2", "-M", "prepared", "-R", &r, "-T", &t,
        ],
    )?;
    Ok(child)
}

async fn stop_load(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

fn plan_for(
    dir: &Path,
    source: &ConnString,
    target: &ConnString,
    source_pw: &str,
    target_pw: &str,
    app_pw: &str,
    trigger: bool,
) -> Result<Plan, DemoError> {
    let mut text =
        cutover_core::plan::template("${CUTOVER_DEMO_SOURCE_URL}", "${CUTOVER_DEMO_TARGET_URL}");
    if trigger {
        text = text.replace("mode = \"native\"", "mode = \"trigger\"");
    }
    text.push_str(&format!(
        "\n[proxy]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\
         admin_token = \"${{CUTOVER_DEMO_ADMIN_TOKEN}}\"\n\n[[proxy.users]]\nname = \"app\"\n\
         password = \"${{CUTOVER_DEMO_APP_PASSWORD}}\"\n",
        free_port().map_err(failed)?,
        free_port().map_err(failed)?
    ));
    let path = dir.join("cutover.toml");
    std::fs::write(&path, &text).map_err(failed)?;
    let url = |c: &ConnString, pw: &str| {
        format!(
            "postgres://{}:{pw}@{}:{}/{}?sslmode=disable",
            c.user, c.host, c.port, c.dbname
        )
    };
    let mut env = BTreeMap::new();
    env.insert(
        "CUTOVER_DEMO_SOURCE_URL".to_string(),
        url(source, source_pw),
    );
    env.insert(
        "CUTOVER_DEMO_TARGET_URL".to_string(),
        url(target, target_pw),
    );
    env.insert("CUTOVER_DEMO_APP_PASSWORD".to_string(), app_pw.to_string());
    env.insert(
        "CUTOVER_DEMO_ADMIN_TOKEN".to_string(),
        cutover_pg::local::random_password(),
    );
    // For `--keep`: the variables the plan refers to, in a file only its owner can read, so
    // the user can run cutover against the kept clusters without a password being printed.
    super::stage::write_env(&dir.join("demo.env"), &env)?;
    Ok(cutover_core::plan::parse(&text, &path, &env)?)
}

/// Runs the database-only demo. The clusters and the plan's folder come back with the summary
/// (`Kept`): dropped, they stop and vanish; held, they serve until the caller lets go.
pub async fn run(
    options: &DatabaseOptions,
    cx: &Callbacks<'_>,
) -> Result<(DatabaseSummary, Kept), DemoError> {
    (cx.note)(
        "starting two local PostgreSQL clusters (wal_level=logical on both: the target replicates back after the switch)...",
    );
    let heroku = options.heroku;
    if heroku {
        (cx.note)("the source is Heroku-like: wal_level=replica, and cutover uses only the application's role, which owns the tables (no superuser, no replication)");
    }
    let (source, target, app_pw) = super::stage::platforms(heroku).await?;
    (cx.secrets)(vec![
        source.password().clone(),
        target.password().clone(),
        app_pw.clone(),
    ]);
    let (src_url, dst_url) = (source.url("shop"), target.url("shop"));
    let app_src = source.url_as("app", Some(app_pw.clone()), "shop");
    (cx.note)(&format!("source {src_url}\ntarget {dst_url}"));
    (cx.note)(&format!(
        "loading demo data as the application's role (pgbench scale {} and a shop schema)...",
        options.scale
    ));
    cutover_pg::pgbench::init(&app_src, options.scale).await?;
    connect(&app_src, Side::Source)
        .await?
        .batch_execute(SHOP_SCHEMA)
        .await
        .map_err(|e| cutover_pg::PgError::sql(Side::Source, "load the shop schema", e))?;

    let dir = tempfile::Builder::new()
        .prefix("cutover-demo-")
        .tempdir()
        .map_err(failed)?;
    // On a Heroku-like source cutover has the application's role and nothing more.
    let (plan_src, plan_src_pw) = if heroku {
        (app_src.clone(), app_pw.expose().to_string())
    } else {
        (src_url.clone(), source.password().expose().to_string())
    };
    let plan = plan_for(
        dir.path(),
        &plan_src,
        &dst_url,
        &plan_src_pw,
        target.password().expose(),
        app_pw.expose(),
        heroku,
    )?;
    let summary = migrate(options, cx, &plan, &src_url, &app_pw).await?;
    Ok((
        summary,
        Kept {
            source,
            target,
            dir,
        },
    ))
}

async fn migrate(
    options: &DatabaseOptions,
    cx: &Callbacks<'_>,
    plan: &Plan,
    src_url: &ConnString,
    app_pw: &cutover_core::Secret,
) -> Result<DatabaseSummary, DemoError> {
    let report = cutover_pg::preflight::check(plan).await?;
    (cx.note)("\ncutover check:");
    for f in report
        .findings
        .iter()
        .filter(|f| f.severity != cutover_pg::preflight::Severity::Info)
    {
        (cx.note)(&format!("  {:?} {}: {}", f.severity, f.subject, f.message));
    }
    if report
        .errors()
        .any(|f| f.subject == "public.pgbench_history")
    {
        (cx.note)(
            "  → fixing it the first way check suggests: a primary key for public.pgbench_history",
        );
        connect(src_url, Side::Source)
            .await?
            .batch_execute("ALTER TABLE public.pgbench_history ADD COLUMN id bigserial PRIMARY KEY")
            .await
            .map_err(|e| cutover_pg::PgError::sql(Side::Source, "add a primary key", e))?;
    }

    // The application reaches the database through the proxy from here on.
    let proxy_config = cutover_proxy::Config::from_plan(plan).map_err(DemoError::Failed)?;
    let admin = cutover_proxy::Proxies::from_plan(plan).map_err(DemoError::Failed)?;
    let proxy = cutover_proxy::start(proxy_config)
        .await
        .map_err(DemoError::Failed)?;
    let via_proxy = ConnString::parse(&format!(
        "postgres://app@{}:{}/shop?sslmode=disable",
        proxy.addr.ip(),
        proxy.addr.port()
    ))
    .map_err(failed)?
    .with_password(Some(app_pw.clone()));
    (cx.note)(&format!(
        "\nproxy on {} (admin API on {})",
        proxy.addr, proxy.admin_addr
    ));

    let rate = options.rate;
    let copy_load = start_load(&via_proxy, rate, 3600)?;
    (cx.note)(&format!(
        "write load through the proxy ({rate} transactions/s) during the copy\n"
    ));
    let journal = Journal::open(&plan.journal_path())?;
    let run = journal.begin_run("demo: db sync")?;
    let steps = Steps::new(&journal, run, cx.steps);
    let started = Instant::now();
    let synced = crate::sync::sync(plan, &steps, cx.copy).await;
    (cx.copy_done)();
    journal.end_run(run, if synced.is_ok() { "ok" } else { "failed" })?;
    let mut copy_load = copy_load;
    let synced = match synced {
        Ok(s) => s,
        Err(e) => {
            stop_load(&mut copy_load).await;
            return Err(e.into());
        }
    };
    let time_to_synced = started.elapsed();
    let trigger = plan.sync.mode == cutover_core::Mode::Trigger;
    // Trigger mode's applier is cutover's own process (`cutover db follow`); here a task.
    let stop_follow = tokio_util::sync::CancellationToken::new();
    let follower = trigger.then(|| follow_task(plan.clone(), stop_follow.clone()));
    (cx.note)(&format!(
        "\nall tables ready after {} ms; {} keeps following",
        time_to_synced.as_millis(),
        if trigger {
            "the applier"
        } else {
            "the subscription"
        }
    ));
    if trigger {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let link = cutover_pg::sync::current_link(plan).await?;
        let b = cutover_pg::trigger::backlog(
            &connect(&link.origin, link.origin_side).await?,
            &connect(&link.follower, link.follower_side).await?,
            &link,
        )
        .await?;
        (cx.note)(&format!(
            "db status under load: backlog {} changes, {} applied",
            b.changes, b.applied_changes
        ));
    } else {
        let status = cutover_pg::status::status(plan, Duration::from_secs(1)).await?;
        (cx.note)(&format!(
            "db status under load: lag {} bytes, apply rate {:.0} bytes/s",
            status.slot.as_ref().and_then(|s| s.lag_bytes).unwrap_or(0),
            status.apply_rate_bps.unwrap_or(0.0)
        ));
    }
    // The copy's load ends (pgbench cannot be asked for a summary mid-run; what it said on
    // stderr is kept), and a timed one runs across the switchover.
    stop_load(&mut copy_load).await;
    let copy_out = copy_load.wait_with_output().await.map_err(failed)?;
    let errors_during_copy: Vec<String> = String::from_utf8_lossy(&copy_out.stderr)
        .lines()
        .filter(|l| l.contains("error") || l.contains("aborted"))
        .map(str::to_string)
        .collect();
    let writes: i64 = connect(src_url, Side::Source)
        .await?
        .query_one("SELECT count(*) FROM public.pgbench_history", &[])
        .await
        .map_err(|e| cutover_pg::PgError::sql(Side::Source, "count the writes", e))?
        .get(0);
    connect(&plan.target.url, Side::Target)
        .await?
        .batch_execute(
            "GRANT USAGE ON SCHEMA public, shop TO app;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, shop TO app;
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public, shop TO app",
        )
        .await
        .map_err(|e| {
            cutover_pg::PgError::sql(Side::Target, "grant the application's privileges", e)
        })?;
    (cx.note)("granted the application's role its privileges on the target (the schema copy carries none)");

    let switchover = switch_under_load(
        &journal,
        plan,
        &admin,
        &via_proxy,
        rate,
        crate::Direction::Switchover,
        cx,
    )
    .await?;
    let rollback = if trigger {
        Some(
            switch_under_load(
                &journal,
                plan,
                &admin,
                &via_proxy,
                rate,
                crate::Direction::Rollback,
                cx,
            )
            .await?,
        )
    } else {
        None
    };

    // Once the side that follows has everything, both must be equal.
    if trigger {
        let link = cutover_pg::sync::current_link(plan).await?;
        let (origin, follower) = (
            connect(&link.origin, link.origin_side).await?,
            connect(&link.follower, link.follower_side).await?,
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while cutover_pg::trigger::backlog(&origin, &follower, &link)
            .await?
            .changes
            > 0
        {
            if Instant::now() > deadline {
                return Err(DemoError::Failed(
                    "the applier did not catch up within 120 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        let target = connect(&plan.target.url, Side::Target).await?;
        let at = cutover_pg::fence::wal_position(&target, Side::Target).await?;
        cutover_pg::replication::wait_applied(
            &target,
            Side::Target,
            &plan.sync.reverse_slot(),
            &at,
            Duration::from_secs(120),
        )
        .await?;
    }
    let run = journal.begin_run("demo: db verify")?;
    let steps = Steps::new(&journal, run, cx.steps);
    let report = steps
        .run("verify", "compare every table", || async {
            crate::verify::verify(plan, &[]).await.map(Verified)
        })
        .await
        .map(|v| v.0);
    journal.end_run(run, if report.is_ok() { "ok" } else { "failed" })?;
    let report = report?;
    (cx.verified)(&report);
    proxy.stop().await;
    stop_follow.cancel();
    if let Some(f) = follower {
        let _ = f.await;
    }
    let run = journal.begin_run("demo: db cleanup")?;
    let removed = cutover_pg::cleanup::cleanup(plan).await?;
    journal.end_run(run, "ok")?;
    Ok(DatabaseSummary {
        tables: synced.tables,
        rows: report.tables.iter().map(|t| t.source_rows).sum(),
        bytes: synced.bytes,
        writes_during_copy: writes,
        time_to_synced_ms: time_to_synced.as_millis() as u64,
        mode: plan.sync.mode.to_string(),
        switchover: SwitchFigures {
            errors_during_copy,
            ..switchover
        },
        rollback,
        verification: if report.equal { "equal" } else { "DIFFERENT" },
        tables_equal: report.tables.iter().filter(|t| t.equal).count(),
        removed: removed
            .iter()
            .map(|r| format!("{} {} ({})", r.kind, r.name, r.side))
            .collect(),
        journal: plan.journal_path().display().to_string(),
    })
}

/// What `cutover db follow` does: follow the link in force, and the next one when a
/// switchover retires it.
fn follow_task(
    plan: Plan,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), cutover_pg::PgError>> {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let link = cutover_pg::sync::current_link(&plan).await?;
            cutover_pg::trigger::follow(
                &link,
                &plan.sync,
                Duration::from_millis(50),
                stop.clone(),
                &|_| {},
            )
            .await?;
        }
        Ok(())
    })
}

/// A 10 s load through the proxy with a switch (or rollback) in its middle.
async fn switch_under_load(
    journal: &Journal,
    plan: &Plan,
    admin: &cutover_proxy::Proxies,
    via_proxy: &ConnString,
    rate: u32,
    direction: crate::Direction,
    cx: &Callbacks<'_>,
) -> Result<SwitchFigures, DemoError> {
    let load = start_load(via_proxy, rate.max(50) * 2, 10)?;
    (cx.note)(&format!(
        "\n{} in the middle of a 10 s load through the proxy...",
        direction.name()
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let run = journal.begin_run(&format!("demo: db {}", direction.name()))?;
    let steps = Steps::new(journal, run, cx.steps);
    let options = crate::Options {
        app_roles: vec!["app".into()],
        ..Default::default()
    };
    let switched = crate::switchover::run(
        plan,
        &steps,
        admin,
        direction,
        &options,
        std::future::pending(),
    )
    .await;
    journal.end_run(run, if switched.is_ok() { "ok" } else { "failed" })?;
    let verdict = cutover_pg::pgbench::finish(load).await?;
    let switched = switched?;
    (cx.note)(&format!(
        "{}: {} sessions moved, paused {:.0} ms, longest client wait {:.0} ms; pgbench: {} transactions, {} failed",
        direction.name(),
        switched.sessions_moved,
        switched.pause_ms,
        switched.longest_client_wait_ms,
        verdict.processed,
        verdict.failed
    ));
    Ok(SwitchFigures {
        transactions: verdict.processed,
        failed_transactions: verdict.failed,
        aborted_clients: verdict.aborted.len(),
        longest_client_pause_ms: switched.longest_client_wait_ms,
        pause_ms: switched.pause_ms,
        sessions_moved: switched.sessions_moved,
        steps: switched.steps,
        errors_during_copy: vec![],
    })
}
