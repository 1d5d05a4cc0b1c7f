//! `cutover status`: the journal as a timeline.

use cutover_core::journal::Status;

use crate::cli::Global;
use crate::output;

pub fn run(g: &Global) -> anyhow::Result<i32> {
    let path = cutover_core::plan::journal_path_for(&g.plan);
    if !path.exists() {
        anyhow::bail!(
            "no journal at {} yet; it is written by `cutover db sync` and the other commands",
            path.display()
        );
    }
    let journal = cutover_core::Journal::open(&path)?;
    let runs = journal.timeline()?;
    if g.json {
        output::json(&runs)?;
        return Ok(0);
    }
    for run in &runs {
        let outcome = match (&run.outcome, run.ended_ms) {
            (Some(o), _) => o.clone(),
            (None, _) => "interrupted (no outcome recorded)".to_string(),
        };
        let took = run
            .ended_ms
            .map(|e| format!(", {}", output::millis((e - run.started_ms).max(0) as u64)));
        println!(
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
            println!(
                "  {mark} {}  {}{took}: {text}",
                output::timestamp(step.started_ms),
                step.step
            );
        }
    }
    if runs.is_empty() {
        println!("the journal is empty");
    }
    Ok(0)
}
