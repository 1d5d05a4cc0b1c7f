//! `cutover apply`: runs the runbook's steps in order, each journaled, skipping what earlier
//! runs of this attempt did, asking a person before the steps that change production, and
//! stopping when a rollback asks.

use std::time::Duration;

use cutover_core::{Journal, Plan};
use futures_util::future::BoxFuture;
use serde::Serialize;

use super::events::Event;
use super::lock::Lock;
use super::run::Run;
use super::runbook::Runbook;
use super::state::{self, MigrationState, RunState};
use super::step::{Cx, OnStop, Step};
use super::{MigrationError, Phase};

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Answer yes to every question (steps that change production).
    pub yes: bool,
    /// Stop after this phase.
    pub until: Option<Phase>,
}

/// A person's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    Yes,
    No,
    /// Nobody to ask (no terminal): the run stops there.
    NotAsked,
}

/// Asks a person a question.
pub type Approver<'a> = &'a (dyn Fn(String) -> BoxFuture<'static, Approval> + Send + Sync);

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub attempt: u32,
    pub state: RunState,
    pub phase: Option<Phase>,
    pub step: Option<String>,
    pub reason: Option<String>,
    /// It stopped before a step that needs a person's yes.
    pub waiting_for_approval: bool,
}

pub async fn apply(
    plan: &Plan,
    journal: &Journal,
    options: &Options,
    events: &(dyn Fn(Event) + Send + Sync),
    approve: Approver<'_>,
) -> Result<Applied, MigrationError> {
    let runbook = Runbook::of(plan);
    if !runbook.blocking.is_empty() {
        return Err(MigrationError::refused(runbook.blocking.join("\n")));
    }
    if let Some(u) = options.until {
        if !runbook.phases().contains(&u) {
            return Err(MigrationError::refused(format!(
                "--until {u}: this plan has no {u} phase (`cutover plan` shows the phases it has)"
            )));
        }
    }
    let _lock = Lock::take_now(&plan.path, "apply")?;
    if state::stop_requested(journal)? {
        return Err(MigrationError::Busy(
            "a rollback asked this migration to stop and has not run yet; run `cutover rollback` to finish it"
                .into(),
        ));
    }
    let state = match MigrationState::load(journal)? {
        None => MigrationState::new(1, plan.migration.order),
        Some(s) if s.state == RunState::RolledBack => {
            MigrationState::new(s.attempt + 1, plan.migration.order)
        }
        Some(s) if s.state == RunState::Finished => {
            let reason = "the migration is finished; nothing is left to do".to_string();
            events(Event::Ended {
                command: "apply",
                state: s.state,
                phase: s.phase,
                step: s.step.clone(),
                reason: Some(reason.clone()),
            });
            return Ok(Applied {
                attempt: s.attempt,
                state: s.state,
                phase: s.phase,
                step: s.step,
                reason: Some(reason),
                waiting_for_approval: false,
            });
        }
        Some(s) if s.state == RunState::RollingBack => {
            return Err(MigrationError::refused(
                "a rollback of this migration did not complete; run `cutover rollback` to finish it first",
            ));
        }
        Some(s) if s.order != plan.migration.order && !s.done.is_empty() => {
            return Err(MigrationError::refused(format!(
                "this migration runs {}, but the plan now says migration.order = \"{}\"; set it back, or `cutover rollback` and start again",
                s.order.as_str(),
                plan.migration.order.as_str()
            )));
        }
        Some(mut s) => {
            s.state = RunState::Running;
            s.reason = None;
            s
        }
    };
    let done = state.done.len();
    let sync_done = state.is_done("prepare.sync");
    let run = Run::begin(plan, journal, events, "apply", state, done)?;
    let watch = run.observer();
    let steps = run.steps(&watch);
    let cx = run.cx(&steps);
    if sync_done {
        run.follower.start();
    }
    let result = drive(&cx, &runbook, |_| true, options, approve).await;
    run.follower.stop().await;
    finish_run(&cx, "apply", run.id, result)
}

/// Runs the runbook's steps that `wanted` selects, in order, from where this attempt is.
pub(crate) async fn drive(
    cx: &Cx<'_>,
    runbook: &Runbook,
    wanted: impl Fn(&dyn Step) -> bool,
    options: &Options,
    approve: Approver<'_>,
) -> Result<Applied, MigrationError> {
    let phases = runbook.phases();
    let index = |p: Phase| phases.iter().position(|x| *x == p).unwrap_or(usize::MAX);
    for step in runbook
        .steps
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| wanted(*s))
    {
        let name = step.full_name();
        let phase = step.phase();
        if cx.state.lock().unwrap().is_done(&name) {
            (cx.events)(Event::StepSkipped {
                phase,
                step: name,
                why: "done by an earlier run".into(),
            });
            continue;
        }
        if let Some(u) = options.until {
            if index(phase) > index(u) {
                return stop(
                    cx,
                    Some(phase),
                    Some(&name),
                    format!("stopped after the {u} phase, as asked (--until {u})"),
                    false,
                );
            }
        }
        if let Some(question) = step.approval(cx.plan) {
            let answer = if options.yes {
                Approval::Yes
            } else {
                approve(question.clone()).await
            };
            (cx.events)(Event::Approval {
                phase,
                step: name.clone(),
                question: question.clone(),
                answer: match (options.yes, answer) {
                    (true, _) => "yes (--yes)",
                    (_, Approval::Yes) => "yes",
                    (_, Approval::No) => "no",
                    (_, Approval::NotAsked) => "not asked (no terminal)",
                },
            });
            if answer != Approval::Yes {
                let why = match answer {
                    Approval::No => format!("stopped before {name}: the answer to \"{question}\" was no; `cutover apply` asks again"),
                    _ => format!("waiting for a person before {name} ({question}); run `cutover apply` on a terminal, or `cutover apply --yes`"),
                };
                return stop(cx, Some(phase), Some(&name), why, true);
            }
        }
        if state::stop_requested(cx.journal())? {
            return Err(MigrationError::Stopped("a rollback asked for it".into()));
        }
        run_step(cx, step).await?;
    }
    let mut s = cx.state.lock().unwrap();
    if s.is_done("finish.checklist") {
        s.state = RunState::Finished;
        s.reason = None;
        s.save(cx.journal())?;
    }
    Ok(Applied {
        attempt: s.attempt,
        state: s.state,
        phase: s.phase,
        step: s.step.clone(),
        reason: s.reason.clone(),
        waiting_for_approval: false,
    })
}

/// One step: the state says it is under way, then the journal has its intent; precondition,
/// action and the check that it took effect; then its outcome, and the state says it is done.
pub(crate) async fn run_step(cx: &Cx<'_>, step: &dyn Step) -> Result<String, MigrationError> {
    let (phase, name) = (step.phase(), step.full_name());
    *cx.current.lock().unwrap() = (phase, name.clone());
    {
        let mut s = cx.state.lock().unwrap();
        s.phase = Some(phase);
        s.step = Some(name.clone());
        s.state = RunState::Running;
        s.save(cx.journal())?;
    }
    let does = step.does(cx.plan);
    let work = cx.steps.run(&name, &does, || async {
        step.precondition(cx).await?;
        let outcome = step.act(cx).await?;
        step.took_effect(cx).await?;
        Ok::<_, MigrationError>(outcome)
    });
    let outcome = match step.on_stop() {
        OnStop::Drop => tokio::select! {
            r = work => r,
            _ = stop_request(cx) => Err(MigrationError::Stopped("a rollback asked for it".into())),
        },
        OnStop::Finish | OnStop::Own => work.await,
    }?;
    let mut s = cx.state.lock().unwrap();
    s.done.push(super::state::DoneStep {
        step: name,
        outcome: outcome.clone(),
        at_ms: cutover_core::journal::now_ms(),
    });
    s.save(cx.journal())?;
    Ok(outcome)
}

/// Resolves once a rollback asks this run to stop.
async fn stop_request(cx: &Cx<'_>) {
    loop {
        if cx.stop_requested() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn stop(
    cx: &Cx<'_>,
    phase: Option<Phase>,
    step: Option<&str>,
    reason: String,
    approval: bool,
) -> Result<Applied, MigrationError> {
    // The state keeps the last step that ran: the next one has not started (a rollback
    // undoes only what started).
    let mut s = cx.state.lock().unwrap();
    s.state = RunState::Stopped;
    s.reason = Some(reason.clone());
    s.save(cx.journal())?;
    Ok(Applied {
        attempt: s.attempt,
        state: s.state,
        phase,
        step: step.map(str::to_string),
        reason: Some(reason),
        waiting_for_approval: approval,
    })
}

/// Records how the run ended: the state, the journal's run, and the last event.
pub(crate) fn finish_run(
    cx: &Cx<'_>,
    command: &'static str,
    run: cutover_core::journal::RunId,
    result: Result<Applied, MigrationError>,
) -> Result<Applied, MigrationError> {
    let journal = cx.journal();
    let result = match result {
        Err(MigrationError::Stopped(why)) => {
            let (phase, step) = {
                let s = cx.state.lock().unwrap();
                (s.phase, s.step.clone())
            };
            stop(cx, phase, step.as_deref(), why, false)
        }
        other => other,
    };
    let mut s = cx.state.lock().unwrap();
    if let Err(e) = &result {
        if !matches!(e, MigrationError::Busy(_)) {
            s.state = RunState::Failed;
            s.reason = Some(e.to_string());
            let _ = s.save(journal);
        }
    }
    journal.end_run(
        run,
        match (&result, s.state) {
            (Ok(_), RunState::Finished | RunState::Running | RunState::RolledBack) => "ok",
            (Ok(_), _) => "stopped",
            (Err(_), _) => "failed",
        },
    )?;
    (cx.events)(Event::Ended {
        command,
        state: s.state,
        phase: s.phase,
        step: s.step.clone(),
        reason: s.reason.clone(),
    });
    result
}
