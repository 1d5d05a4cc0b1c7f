//! `cutover demo`: the whole move of a small shop between two local platforms (the migration
//! runbook, under HTTP load), or with `--database-only` the database move alone under pgbench
//! load; a summary at the end either way.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cutover_core::engine::Steps;
use cutover_core::{ConnString, Journal, Plan};
use cutover_pg::local::{ClusterOptions, LocalCluster, WalLevel};
use cutover_pg::{connect, Side};
use serde::Serialize;

use crate::cli::{DemoArgs, DemoOrder, Global, SourceKind, VerifyArgs};
use crate::output;
use crate::progress::{step_printer, CopyProgress};

use cutover_demo::SHOP_SCHEMA;

#[derive(Serialize)]
struct Summary {
    tables: usize,
    rows: i64,
    bytes: i64,
    writes_during_copy: i64,
    time_to_synced_ms: u64,
    /// "native" (logical replication) or "trigger" (a Heroku-like source).
    mode: String,
    /// The load through the proxy while the database switched.
    switchover: SwitchFigures,
    /// With a Heroku-like source: the way back, under load too.
    rollback: Option<SwitchFigures>,
    verification: &'static str,
    tables_equal: usize,
    removed: Vec<String>,
    journal: String,
}

#[derive(Serialize)]
struct SwitchFigures {
    transactions: u64,
    failed_transactions: u64,
    aborted_clients: usize,
    /// The longest a client request waited at the proxy.
    longest_client_pause_ms: f64,
    /// From pause to resume.
    pause_ms: f64,
    sessions_moved: usize,
    steps: Vec<cutover_runbook::switchover::StepTime>,
    /// Errors pgbench reported during the copy (it ran through the proxy too).
    errors_during_copy: Vec<String>,
}

/// Starts the write load through the proxy: pgbench's TPC-B-like transactions at `rate`
/// per second, for `seconds`.
fn start_load(url: &ConnString, rate: u32, seconds: u32) -> anyhow::Result<tokio::process::Child> {
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn plan_for(
    dir: &Path,
    source: &ConnString,
    target: &ConnString,
    source_pw: &str,
    target_pw: &str,
    app_pw: &str,
    trigger: bool,
) -> anyhow::Result<Plan> {
    let mut text =
        cutover_core::plan::template("${CUTOVER_DEMO_SOURCE_URL}", "${CUTOVER_DEMO_TARGET_URL}");
    if trigger {
        text = text.replace("mode = \"native\"", "mode = \"trigger\"");
    }
    text.push_str(&format!(
        "\n[proxy]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\
         admin_token = \"${{CUTOVER_DEMO_ADMIN_TOKEN}}\"\n\n[[proxy.users]]\nname = \"app\"\n\
         password = \"${{CUTOVER_DEMO_APP_PASSWORD}}\"\n",
        free_port()?,
        free_port()?
    ));
    let path = dir.join("cutover.toml");
    std::fs::write(&path, &text)?;
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
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'\n"))
        .collect();
    write_private(&dir.join("demo.env"), &exports)?;
    Ok(cutover_core::plan::parse(&text, &path, &env)?)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

pub async fn run(g: &Global, args: DemoArgs) -> anyhow::Result<i32> {
    if !args.database_only {
        if args.keep {
            anyhow::bail!(
                "--keep works with --database-only; the whole move finishes and cleans up"
            );
        }
        return whole(g, &args).await;
    }
    database_only(g, args).await
}

/// The whole move, by the migration runbook.
async fn whole(g: &Global, args: &DemoArgs) -> anyhow::Result<i32> {
    use cutover_runbook::demo::{whole, DemoOptions};
    let options = DemoOptions {
        heroku: args.source_kind == SourceKind::Heroku,
        order: match args.order {
            DemoOrder::DatabaseFirst => cutover_core::plan::Order::DatabaseFirst,
            DemoOrder::TrafficFirst => cutover_core::plan::Order::TrafficFirst,
        },
        rate: args.rate.unwrap_or(40) as f64,
    };
    // Progress goes to stderr with --json too: stdout holds the summary alone.
    let verbose = g.verbose > 0;
    let events = |e: &cutover_runbook::migration::Event| super::migration::print_event(e, verbose);
    let note = |text: &str| eprintln!("\n{text}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let summary = tokio::select! {
        s = whole::run(&options, &events, &note) => s?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the demo's servers are stopped and removed"),
        _ = term.recv() => anyhow::bail!("terminated; the demo's servers are stopped and removed"),
    };
    if g.json {
        output::json(&summary)?;
    } else {
        print_move(&summary);
    }
    Ok(if summary.clean() { 0 } else { 1 })
}

fn print_move(s: &cutover_runbook::demo::MoveSummary) {
    let ms = |v: Option<f64>| {
        v.map(|v| format!("{v:.0} ms"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "cutover demo: the whole move ({} mode, {})",
        s.mode, s.order
    );
    println!(
        "  requests          {} sent, {} failed ({:.1}/s, through the splitter, then the new app)",
        s.requests_sent, s.requests_failed, s.requests_per_second
    );
    for f in &s.failures {
        println!("                    {f}");
    }
    println!(
        "  writes            {} acknowledged, {} on the final primary, {} lost",
        s.writes_acknowledged, s.writes_present, s.writes_lost
    );
    println!(
        "  database switch   longest request in flight {}",
        ms(s.longest_request_at_switch_ms)
    );
    if s.rolled_back_mid_canary {
        println!(
            "  rollback          mid-canary, longest request while the database switched back {}; moved again (attempt {})",
            ms(s.longest_request_at_rollback_ms),
            s.attempts
        );
    }
    let steps: Vec<String> = s
        .longest_request_at_canary_steps
        .iter()
        .map(|c| format!("{} {}", c.step, ms(c.longest_request_ms)))
        .collect();
    println!("  canary steps      longest request: {}", steps.join(", "));
    println!("  longest request   {}", ms(s.longest_request_ms));
    let phases: Vec<String> = s
        .phases
        .iter()
        .map(|p| format!("{} {}", p.phase, output::millis(p.ms)))
        .collect();
    println!("  phases            {}", phases.join(", "));
    println!("  total             {}", output::millis(s.total_ms));
    println!("  checklist         {}", s.checklist);
}

/// The database move alone, under pgbench load.
async fn database_only(g: &Global, args: DemoArgs) -> anyhow::Result<i32> {
    eprintln!(
        "starting two local PostgreSQL clusters (wal_level=logical on both: the target replicates back after the switch)..."
    );
    let heroku = args.source_kind == SourceKind::Heroku;
    if heroku {
        eprintln!("the source is Heroku-like: wal_level=replica, and cutover uses only the application's role, which owns the tables (no superuser, no replication)");
    }
    let (source, target) = tokio::join!(
        LocalCluster::start(ClusterOptions {
            wal_level: if heroku {
                WalLevel::Replica
            } else {
                WalLevel::Logical
            },
            ..Default::default()
        }),
        LocalCluster::start(ClusterOptions {
            wal_level: WalLevel::Logical,
            ..Default::default()
        })
    );
    let (source, target) = (source?, target?);
    // The application's role, on both platforms, with one password; not a superuser.
    let app_pw = cutover_core::Secret::new(cutover_pg::local::random_password());
    output::hide_in_logs([
        source.password().clone(),
        target.password().clone(),
        app_pw.clone(),
    ]);
    for (c, side) in [(&source, Side::Source), (&target, Side::Target)] {
        let admin = connect(&c.url("postgres"), side).await?;
        for sql in [
            format!(
                "CREATE ROLE app LOGIN PASSWORD {}",
                cutover_pg::literal(app_pw.expose())
            ),
            "CREATE DATABASE shop OWNER app".to_string(),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .map_err(|e| cutover_pg::PgError::sql(side, "prepare the demo database", e))?;
        }
    }
    let (src_url, dst_url) = (source.url("shop"), target.url("shop"));
    let app_src = source.url_as("app", Some(app_pw.clone()), "shop");
    eprintln!("source {src_url}\ntarget {dst_url}");
    eprintln!(
        "loading demo data as the application's role (pgbench scale {} and a shop schema)...",
        args.scale
    );
    cutover_pg::pgbench::init(&app_src, args.scale).await?;
    connect(&app_src, Side::Source)
        .await?
        .batch_execute(SHOP_SCHEMA)
        .await
        .map_err(|e| cutover_pg::PgError::sql(Side::Source, "load the shop schema", e))?;

    let dir = tempfile::Builder::new().prefix("cutover-demo-").tempdir()?;
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
    // On Ctrl-C or SIGTERM the clusters are still stopped and removed (their Drop runs).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let summary = tokio::select! {
        s = migrate(g, &args, &plan, &src_url, &app_pw) => s?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the demo clusters are stopped and removed"),
        _ = term.recv() => anyhow::bail!("terminated; the demo clusters are stopped and removed"),
    };
    if g.json {
        output::json(&summary)?;
    } else {
        print_summary(&summary);
    }
    if args.keep {
        let kept = dir.keep();
        let k = kept.display();
        eprintln!(
            "\nkept the plan and journal in {k}; the clusters run until Ctrl-C. To use them:"
        );
        eprintln!("  . {k}/demo.env    # the URLs the plan refers to (readable by you only)");
        eprintln!("  cutover --plan {k}/cutover.toml status");
        eprintln!("  cutover --plan {k}/cutover.toml proxy    # then db rollback / db switchover");
        eprintln!("  cutover --plan {k}/cutover.toml check");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    let clean = [Some(&summary.switchover), summary.rollback.as_ref()]
        .into_iter()
        .flatten()
        .all(|f| f.failed_transactions == 0 && f.aborted_clients == 0)
        && summary.switchover.errors_during_copy.is_empty();
    Ok(if summary.verification == "equal" && clean {
        0
    } else {
        1
    })
}

async fn migrate(
    g: &Global,
    args: &DemoArgs,
    plan: &Plan,
    src_url: &ConnString,
    app_pw: &cutover_core::Secret,
) -> anyhow::Result<Summary> {
    let report = cutover_pg::preflight::check(plan).await?;
    eprintln!("\ncutover check:");
    for f in report
        .findings
        .iter()
        .filter(|f| f.severity != cutover_pg::preflight::Severity::Info)
    {
        eprintln!("  {:?} {}: {}", f.severity, f.subject, f.message);
    }
    if report
        .errors()
        .any(|f| f.subject == "public.pgbench_history")
    {
        eprintln!(
            "  → fixing it the first way check suggests: a primary key for public.pgbench_history"
        );
        connect(src_url, Side::Source)
            .await?
            .batch_execute("ALTER TABLE public.pgbench_history ADD COLUMN id bigserial PRIMARY KEY")
            .await
            .map_err(|e| cutover_pg::PgError::sql(Side::Source, "add a primary key", e))?;
    }

    // The application reaches the database through the proxy from here on.
    let proxy_config = cutover_proxy::Config::from_plan(plan).map_err(anyhow::Error::msg)?;
    let admin = cutover_proxy::AdminClient::new(
        proxy_config.admin_listen,
        proxy_config.admin_token.clone(),
    );
    let proxy = cutover_proxy::start(proxy_config)
        .await
        .map_err(anyhow::Error::msg)?;
    let via_proxy = ConnString::parse(&format!(
        "postgres://app@{}:{}/shop?sslmode=disable",
        proxy.addr.ip(),
        proxy.addr.port()
    ))?
    .with_password(Some(app_pw.clone()));
    eprintln!(
        "\nproxy on {} (admin API on {})",
        proxy.addr, proxy.admin_addr
    );

    let rate = args.rate.unwrap_or(100);
    let copy_load = start_load(&via_proxy, rate, 3600)?;
    eprintln!(
        "write load through the proxy ({} transactions/s) during the copy\n",
        rate
    );
    let journal = Journal::open(&plan.journal_path())?;
    let run = journal.begin_run("demo: db sync")?;
    let steps = Steps::new(&journal, run, &step_printer);
    let bars = CopyProgress::new(g.json);
    let started = Instant::now();
    let show = |t: &[cutover_pg::sync::TableProgress]| bars.update(t);
    let synced = cutover_pg::sync::sync(plan, &steps, &show).await;
    bars.finish();
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
    eprintln!(
        "\nall tables ready after {}; {} keeps following",
        output::millis(time_to_synced.as_millis() as u64),
        if trigger {
            "the applier"
        } else {
            "the subscription"
        }
    );
    if trigger {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let link = cutover_pg::sync::current_link(plan).await?;
        let b = cutover_pg::trigger::backlog(
            &connect(&link.origin, link.origin_side).await?,
            &connect(&link.follower, link.follower_side).await?,
            &link,
        )
        .await?;
        eprintln!(
            "db status under load: backlog {} changes, {} applied",
            b.changes, b.applied_changes
        );
    } else {
        let status = cutover_pg::status::status(plan, Duration::from_secs(1)).await?;
        eprintln!(
            "db status under load: lag {}, apply rate {}/s",
            status
                .slot
                .as_ref()
                .and_then(|s| s.lag_bytes)
                .map(output::bytes)
                .unwrap_or_default(),
            output::bytes(status.apply_rate_bps.unwrap_or(0.0) as i64)
        );
    }
    // The copy's load ends (pgbench cannot be asked for a summary mid-run; what it said on
    // stderr is kept), and a timed one runs across the switchover.
    stop_load(&mut copy_load).await;
    let copy_out = copy_load.wait_with_output().await?;
    let errors_during_copy: Vec<String> = String::from_utf8_lossy(&copy_out.stderr)
        .lines()
        .filter(|l| l.contains("error") || l.contains("aborted"))
        .map(str::to_string)
        .collect();
    let writes: i64 = connect(src_url, Side::Source)
        .await?
        .query_one("SELECT count(*) FROM public.pgbench_history", &[])
        .await?
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
    eprintln!("granted the application's role its privileges on the target (the schema copy carries none)");

    let switchover = switch_under_load(
        &journal,
        plan,
        &admin,
        &via_proxy,
        rate,
        cutover_runbook::Direction::Switchover,
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
                cutover_runbook::Direction::Rollback,
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
                anyhow::bail!("the applier did not catch up within 120 s");
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
    let steps = Steps::new(&journal, run, &step_printer);
    let verify_args = VerifyArgs { tables: vec![] };
    let report = steps
        .run("verify", "compare every table", || async {
            super::verify::verify(plan, &verify_args)
                .await
                .map(super::verify::Verified)
        })
        .await
        .map(|v| v.0);
    journal.end_run(run, if report.is_ok() { "ok" } else { "failed" })?;
    let report = report?;
    if !g.json {
        eprintln!("\n{}", super::verify::render(&report));
    }
    proxy.stop().await;
    stop_follow.cancel();
    if let Some(f) = follower {
        let _ = f.await;
    }
    let run = journal.begin_run("demo: db cleanup")?;
    let removed = cutover_pg::cleanup::cleanup(plan).await?;
    journal.end_run(run, "ok")?;
    Ok(Summary {
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
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let link = cutover_pg::sync::current_link(&plan).await?;
            let origin = connect(&link.origin, link.origin_side).await?;
            let tables = cutover_pg::inspect::tables(&origin, link.origin_side, &plan.sync).await?;
            drop(origin);
            cutover_pg::trigger::follow(
                &link,
                &tables,
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
    admin: &cutover_proxy::AdminClient,
    via_proxy: &ConnString,
    rate: u32,
    direction: cutover_runbook::Direction,
) -> anyhow::Result<SwitchFigures> {
    let load = start_load(via_proxy, rate.max(50) * 2, 10)?;
    eprintln!(
        "\n{} in the middle of a 10 s load through the proxy...",
        direction.name()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let run = journal.begin_run(&format!("demo: db {}", direction.name()))?;
    let steps = Steps::new(journal, run, &step_printer);
    let options = cutover_runbook::Options {
        app_roles: vec!["app".into()],
        ..Default::default()
    };
    let switched = cutover_runbook::run(
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
    eprintln!(
        "{}: {} sessions moved, paused {:.0} ms, longest client wait {:.0} ms; pgbench: {} transactions, {} failed",
        direction.name(),
        switched.sessions_moved,
        switched.pause_ms,
        switched.longest_client_wait_ms,
        verdict.processed,
        verdict.failed
    );
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

fn print_summary(s: &Summary) {
    println!("cutover demo: summary");
    println!("  tables            {}", s.tables);
    println!("  rows              {}", s.rows);
    println!("  bytes             {}", output::bytes(s.bytes));
    println!(
        "  writes in copy    {} transactions on the source while it ran",
        s.writes_during_copy
    );
    println!(
        "  time to synced    {}",
        output::millis(s.time_to_synced_ms)
    );
    let w = &s.switchover;
    println!(
        "  switchover        {} transactions through the proxy across it, {} failed, {} clients aborted",
        w.transactions, w.failed_transactions, w.aborted_clients
    );
    println!(
        "  client pause      longest {:.0} ms (proxy paused {:.0} ms, {} sessions moved)",
        w.longest_client_pause_ms, w.pause_ms, w.sessions_moved
    );
    if let Some(r) = &s.rollback {
        println!(
            "  rollback          {} transactions across it, {} failed, {} clients aborted; longest pause {:.0} ms",
            r.transactions, r.failed_transactions, r.aborted_clients, r.longest_client_pause_ms
        );
    }
    if !w.errors_during_copy.is_empty() {
        println!("  errors in copy    {}", w.errors_during_copy.join("; "));
    }
    println!(
        "  verification      {} ({} of {} tables equal)",
        s.verification, s.tables_equal, s.tables
    );
    println!(
        "  cleanup           removed {}",
        if s.removed.is_empty() {
            "nothing".into()
        } else {
            s.removed.join(", ")
        }
    );
}
