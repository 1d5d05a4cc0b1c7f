//! `cutover rollback`: users and writes back on the old platform from wherever the migration
//! is, losing nothing written on the new one.
//!
//! A running `apply` is asked to stop first (a journal fact it reads between and inside its
//! steps; a canary under way sends every user back to the old app as it stops), and the
//! rollback takes the lock once it has. Then every step this attempt touched that changed
//! something is undone, newest first: in a database-first move the users come back before the
//! database does, in a traffic-first one the database first. The database comes back through
//! the reverse replication that has followed the new primary since the switch. A rollback
//! killed half-way is finished by running it again: each undo is idempotent and recorded.

use std::time::Duration;

use cutover_core::journal::now_ms;
use cutover_core::{Journal, Plan};
use serde::Serialize;

use super::apply::{finish_run, Applied};
use super::events::Event;
use super::lock::Lock;
use super::run::Run;
use super::runbook::Runbook;
use super::state::{self, MigrationState, RunState};
use super::MigrationError;

#[derive(Clone, Debug, Serialize)]
pub struct RolledBack {
    pub attempt: u32,
    /// The steps undone, in the order they were.
    pub undone: Vec<String>,
}

/// How long a rollback waits for a running `apply` to stop.
const STOP_WAIT: Duration = Duration::from_secs(120);

pub async fn rollback(
    plan: &Plan,
    journal: &Journal,
    events: &(dyn Fn(Event) + Send + Sync),
) -> Result<RolledBack, MigrationError> {
    let runbook = Runbook::of(plan);
    let Some(first) = MigrationState::load(journal)? else {
        return Err(MigrationError::refused(
            "nothing to roll back: no migration has started here (`cutover apply` starts one)",
        ));
    };
    let to_undo = |s: &MigrationState| -> Vec<String> {
        s.touched()
            .into_iter()
            .filter(|n| !s.undone.contains(n))
            .filter(|n| runbook.step(n).is_some_and(|st| st.undoes(plan).is_some()))
            .collect()
    };
    match first.state {
        RunState::RolledBack => {
            return Err(MigrationError::refused(format!(
                "nothing to roll back: attempt {} was rolled back already; users and writes are on the old platform (`cutover apply` moves again)",
                first.attempt
            )))
        }
        RunState::Finished => {
            return Err(MigrationError::refused(
                "nothing to roll back to: the migration is finished and its replication was cut (`cutover status` says when)",
            ))
        }
        _ => {}
    }
    if first.touched().iter().any(|s| s.starts_with("finish.")) {
        return Err(MigrationError::refused(
            "nothing to roll back to: `finish` has cut the replication back to the old database; run `cutover finish` to complete it",
        ));
    }
    if to_undo(&first).is_empty() && first.state != RunState::RollingBack {
        return Err(MigrationError::refused(format!(
            "nothing to roll back: neither the users nor the database have moved yet{}; they are all on the old platform (`cutover apply` goes on from there)",
            first
                .step
                .as_deref()
                .map(|s| format!(" (the migration is at {s})"))
                .unwrap_or_default()
        )));
    }
    // Ask a running apply to stop, and a canary under way to send users back as it does.
    state::request_stop(journal)?;
    if cutover_traffic::canary::state(journal)?.is_some_and(|s| !s.phase.finished()) {
        cutover_traffic::canary::request(journal, cutover_traffic::canary::Control::Abort)?;
    }
    let _lock = match Lock::take(&plan.path, "rollback", STOP_WAIT).await {
        Ok(l) => l,
        Err(e) => {
            let _ = state::clear_request(journal);
            return Err(e);
        }
    };
    let mut s = MigrationState::load(journal)?.unwrap_or(first);
    let undo = to_undo(&s);
    s.state = RunState::RollingBack;
    s.reason = None;
    let done = s.undone.len();
    let run = Run::begin(plan, journal, events, "rollback", s, done)?;
    let watch = run.observer();
    let steps = run.steps(&watch);
    let cx = run.cx(&steps);
    // Trigger mode: the direction the database goes back on is applied while we work.
    run.follower.start();
    let state = &run.state;
    let result = async {
        let mut undone = vec![];
        for name in undo.iter().rev() {
            let step = runbook
                .step(name)
                .expect("only the runbook's steps are undone");
            let full = format!("rollback.{name}");
            *cx.current.lock().unwrap() = (step.phase(), full.clone());
            let does = step.undoes(plan).unwrap_or_default();
            cx.steps.run(&full, &does, || step.undo(&cx)).await?;
            let mut s = state.lock().unwrap();
            s.undone.push(name.clone());
            s.save(journal)?;
            undone.push(name.clone());
        }
        let mut s = state.lock().unwrap();
        s.state = RunState::RolledBack;
        s.reason = Some(format!(
            "rolled back at {}: users and writes are on the old platform",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(now_ms() as u64)
            )
        ));
        s.save(journal)?;
        state::clear_request(journal)?;
        Ok::<_, MigrationError>(undone)
    }
    .await;
    run.follower.stop().await;
    let undone = match &result {
        Ok(u) => u.clone(),
        Err(_) => vec![],
    };
    let attempt = state.lock().unwrap().attempt;
    let applied: Result<Applied, MigrationError> = result.map(|_| Applied {
        attempt,
        state: RunState::RolledBack,
        phase: None,
        step: None,
        reason: None,
        waiting_for_approval: false,
    });
    // A failed rollback stays "rolling back": running it again finishes it.
    if let Err(e) = &applied {
        let mut s = state.lock().unwrap();
        s.reason = Some(format!(
            "the rollback failed: {e}; run `cutover rollback` again to finish it"
        ));
        let _ = s.save(journal);
        drop(s);
        journal.end_run(run.id, "failed")?;
        events(Event::Ended {
            command: "rollback",
            state: RunState::RollingBack,
            phase: None,
            step: None,
            reason: Some(e.to_string()),
        });
        return Err(applied.unwrap_err());
    }
    finish_run(&cx, "rollback", run.id, applied)?;
    Ok(RolledBack { attempt, undone })
}
