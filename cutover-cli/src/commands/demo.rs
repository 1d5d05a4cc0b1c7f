//! `cutover demo`: the whole move of a small shop between two local platforms (the migration
//! runbook, under HTTP load), or with `--database-only` the database move alone under pgbench
//! load; a summary at the end either way. The demos themselves are cutover-runbook's; this
//! parses, calls and prints.

use cutover_runbook::demo::database::{self, Callbacks, DatabaseOptions, DatabaseSummary, Kept};

use crate::cli::{DemoArgs, DemoOrder, Global, SourceKind};
use crate::output;
use crate::progress::{step_printer, CopyProgress};

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
    outln!(
        "cutover demo: the whole move ({} mode, {})",
        s.mode,
        s.order
    );
    outln!(
        "  requests          {} sent, {} failed ({:.1}/s, through the splitter, then the new app)",
        s.requests_sent,
        s.requests_failed,
        s.requests_per_second
    );
    for f in &s.failures {
        outln!("                    {f}");
    }
    outln!(
        "  writes            {} acknowledged, {} on the final primary, {} lost",
        s.writes_acknowledged,
        s.writes_present,
        s.writes_lost
    );
    outln!(
        "  database switch   longest request in flight {}",
        ms(s.longest_request_at_switch_ms)
    );
    if s.rolled_back_mid_canary {
        outln!(
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
    outln!("  canary steps      longest request: {}", steps.join(", "));
    outln!("  longest request   {}", ms(s.longest_request_ms));
    let phases: Vec<String> = s
        .phases
        .iter()
        .map(|p| format!("{} {}", p.phase, output::millis(p.ms)))
        .collect();
    outln!("  phases            {}", phases.join(", "));
    outln!("  total             {}", output::millis(s.total_ms));
    outln!("  checklist         {}", s.checklist);
}

/// The database move alone, under pgbench load.
async fn database_only(g: &Global, args: DemoArgs) -> anyhow::Result<i32> {
    let options = DatabaseOptions {
        heroku: args.source_kind == SourceKind::Heroku,
        scale: args.scale,
        rate: args.rate.unwrap_or(100),
    };
    let bars = CopyProgress::new(g.json);
    let note = |text: &str| eprintln!("{text}");
    let copy = |t: &[cutover_pg::sync::TableProgress]| bars.update(t);
    let copy_done = || bars.finish();
    let verified = |report: &cutover_pg::verify::VerifyReport| {
        if !g.json {
            eprintln!("\n{}", super::verify::render(report));
        }
    };
    let secrets = |s: Vec<cutover_core::Secret>| output::hide_in_logs(s);
    let cx = Callbacks {
        note: &note,
        steps: &step_printer,
        copy: &copy,
        copy_done: &copy_done,
        verified: &verified,
        secrets: &secrets,
    };
    // On Ctrl-C or SIGTERM the clusters are still stopped and removed (their Drop runs).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (summary, kept) = tokio::select! {
        s = database::run(&options, &cx) => s?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the demo clusters are stopped and removed"),
        _ = term.recv() => anyhow::bail!("terminated; the demo clusters are stopped and removed"),
    };
    if g.json {
        output::json(&summary)?;
    } else {
        print_summary(&summary);
    }
    if args.keep {
        let Kept {
            source,
            target,
            dir,
        } = kept;
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
        drop((source, target));
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

fn print_summary(s: &DatabaseSummary) {
    outln!("cutover demo: summary");
    outln!("  tables            {}", s.tables);
    outln!("  rows              {}", s.rows);
    outln!("  bytes             {}", output::bytes(s.bytes));
    outln!(
        "  writes in copy    {} transactions on the source while it ran",
        s.writes_during_copy
    );
    outln!(
        "  time to synced    {}",
        output::millis(s.time_to_synced_ms)
    );
    let w = &s.switchover;
    outln!(
        "  switchover        {} transactions through the proxy across it, {} failed, {} clients aborted",
        w.transactions, w.failed_transactions, w.aborted_clients
    );
    outln!(
        "  client pause      longest {:.0} ms (proxy paused {:.0} ms, {} sessions moved)",
        w.longest_client_pause_ms,
        w.pause_ms,
        w.sessions_moved
    );
    if let Some(r) = &s.rollback {
        outln!(
            "  rollback          {} transactions across it, {} failed, {} clients aborted; longest pause {:.0} ms",
            r.transactions, r.failed_transactions, r.aborted_clients, r.longest_client_pause_ms
        );
    }
    if !w.errors_during_copy.is_empty() {
        outln!("  errors in copy    {}", w.errors_during_copy.join("; "));
    }
    outln!(
        "  verification      {} ({} of {} tables equal)",
        s.verification,
        s.tables_equal,
        s.tables
    );
    outln!(
        "  cleanup           removed {}",
        if s.removed.is_empty() {
            "nothing".into()
        } else {
            s.removed.join(", ")
        }
    );
}
