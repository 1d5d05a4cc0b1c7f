//! `cutover status`: where the migration is, then the journal as a timeline.

use cutover_core::journal::Status;

use cutover_runbook::migration::{self, MigrationState, StatusView};

use crate::cli::Global;
use crate::output;

fn print_migration(s: &MigrationState, v: Option<&StatusView>, unavailable: Option<&str>) {
    let driven = v
        .and_then(|v| v.driven_by.clone())
        .map(|d| format!(" ({d} drives it)"))
        .unwrap_or_else(|| {
            if s.state == migration::RunState::Running {
                " (no command drives it now: `cutover apply` goes on)".into()
            } else {
                String::new()
            }
        });
    outln!(
        "migration: attempt {}, {}, {}{driven}",
        s.attempt,
        s.order.as_str(),
        s.state.as_str()
    );
    if let Some(step) = &s.step {
        outln!(
            "  at {step}; {} step(s) done{}",
            s.done.len(),
            v.map(|v| format!(" of {}", v.steps_total))
                .unwrap_or_default()
        );
    }
    if let Some(r) = &s.reason {
        outln!("  {r}");
    }
    let Some(v) = v else {
        if let Some(u) = unavailable {
            outln!("  (the live view needs the plan: {u})");
        }
        return;
    };
    if let Some(p) = &v.proxy {
        outln!(
            "  database: the proxy is on the {} (epoch {}, {} session(s), {} server error(s){})",
            p.active,
            p.epoch,
            p.sessions,
            p.server_errors,
            if p.paused { ", PAUSED" } else { "" }
        );
    }
    if let Some(l) = &v.lag {
        let amount = match (l.bytes, l.changes) {
            (Some(b), _) => output::bytes(b),
            (None, Some(c)) => format!("{c} change(s)"),
            (None, None) => "nothing follows".into(),
        };
        outln!("  replication {}: {amount} behind", l.direction);
    }
    if let Some(t) = &v.traffic {
        outln!(
            "  traffic: {}% of new users to the new app; new app {} over {} request(s); old origin {:.1} requests/s",
            t.new_percent,
            t.new_success_rate
                .map(|r| format!("{r:.2}% successful"))
                .unwrap_or_else(|| "no answer yet".into()),
            t.new_requests,
            t.old_origin_rps
        );
        if let Some(c) = &t.canary {
            outln!("  canary: {c}");
        }
    }
    match (&v.rollback_window_ends, v.rollback_window_left_s) {
        (Some(end), Some(left)) if left > 0 => outln!(
            "  rollback window: {} left (until {end}); `cutover rollback` loses nothing",
            humantime::format_duration(std::time::Duration::from_secs(left as u64))
        ),
        (Some(end), _) if s.state != migration::RunState::Finished => {
            outln!("  rollback window: over since {end}; `cutover finish` cuts the replication")
        }
        (None, _) => outln!("  rollback window: starts when the move is done"),
        _ => {}
    }
    for u in &v.unavailable {
        outln!("  unavailable: {u}");
    }
}

pub async fn run(g: &Global) -> anyhow::Result<i32> {
    let path = cutover_core::plan::journal_path_for(&g.plan);
    if !path.exists() {
        anyhow::bail!(
            "no journal at {} yet; it is written by `cutover db sync` and the other commands",
            path.display()
        );
    }
    let journal = cutover_core::Journal::open(&path)?;
    let runs = journal.timeline()?;
    let state = MigrationState::load(&journal)?;
    // The live view needs the plan (its proxy, splitter and databases); the journal alone
    // still says where the migration is.
    let (view, unavailable) = match &state {
        None => (None, None),
        Some(_) => match super::load_plan(&g.plan) {
            Ok(plan) => (migration::status(&plan, &journal).await?, None),
            Err(e) => (None, Some(format!("{e:#}").replace('\n', "; "))),
        },
    };
    if g.json {
        output::json(&serde_json::json!({
            "migration": view,
            "state": state,
            "live_view_unavailable": unavailable,
            "runs": runs,
        }))?;
        return Ok(0);
    }
    if let Some(s) = &state {
        print_migration(s, view.as_ref(), unavailable.as_deref());
        outln!();
    }
    for run in &runs {
        let outcome = match (&run.outcome, run.ended_ms) {
            (Some(o), _) => o.clone(),
            (None, _) => "interrupted (no outcome recorded)".to_string(),
        };
        let took = run
            .ended_ms
            .map(|e| format!(", {}", output::millis((e - run.started_ms).max(0) as u64)));
        outln!(
            "run {} · {} · {} · {}{}",
            run.id,
            output::timestamp(run.started_ms),
            run.command,
            outcome,
            took.unwrap_or_default()
        );
        for step in &run.steps {
            let (mark, text) = match step.status {
                Some(Status::Ok) => ("✓", step.outcome.clone().unwrap_or_default()),
                Some(Status::Skipped) => ("·", step.outcome.clone().unwrap_or_default()),
                Some(Status::Failed) => ("✗", step.outcome.clone().unwrap_or_default()),
                None => ("…", format!("{} (stopped before it finished)", step.intent)),
            };
            let took = step
                .duration_ms
                .map(|d| format!(" ({})", output::millis(d as u64)))
                .unwrap_or_default();
            outln!(
                "  {mark} {}  {}{took}: {text}",
                output::timestamp(step.started_ms),
                step.step
            );
        }
    }
    if runs.is_empty() {
        outln!("the journal is empty");
    }
    Ok(0)
}
