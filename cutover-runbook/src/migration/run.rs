//! One run of `apply`, `rollback` or `finish`: the migration's state as the run changes it,
//! the journal's run, the step under way (which names the events), and trigger mode's
//! follower; and the context its steps get.

use std::sync::Mutex;

use cutover_core::engine::{StepEvent, Steps};
use cutover_core::journal::RunId;
use cutover_core::{Journal, Plan};

use super::events::Event;
use super::follower::Follower;
use super::state::MigrationState;
use super::step::Cx;
use super::{MigrationError, Phase};

pub(crate) struct Run<'a> {
    pub plan: &'a Plan,
    pub journal: &'a Journal,
    pub events: &'a (dyn Fn(Event) + Send + Sync),
    pub id: RunId,
    pub state: Mutex<MigrationState>,
    pub current: Mutex<(Phase, String)>,
    pub follower: Follower,
}

impl<'a> Run<'a> {
    /// Saves the state, says the run began (`done`: steps done before it), and opens the
    /// journal's run.
    pub fn begin(
        plan: &'a Plan,
        journal: &'a Journal,
        events: &'a (dyn Fn(Event) + Send + Sync),
        command: &'static str,
        mut state: MigrationState,
        done: usize,
    ) -> Result<Run<'a>, MigrationError> {
        state.save(journal)?;
        events(Event::Started {
            command,
            attempt: state.attempt,
            order: state.order.as_str(),
            done,
        });
        let id = journal.begin_run(command)?;
        Ok(Run {
            plan,
            journal,
            events,
            id,
            state: Mutex::new(state),
            current: Mutex::new((Phase::Prepare, String::new())),
            follower: Follower::new(plan),
        })
    }

    /// The journal's observer: the run's events.
    pub fn observer(&self) -> impl Fn(&StepEvent<'_>) + Send + Sync + '_ {
        observer(self.events, &self.current)
    }

    pub fn steps<'s>(&'s self, observer: &'s (dyn Fn(&StepEvent<'_>) + Send + Sync)) -> Steps<'s> {
        Steps::new(self.journal, self.id, observer)
    }

    /// What the run's steps work with.
    pub fn cx<'s>(&'s self, steps: &'s Steps<'s>) -> Cx<'s> {
        Cx {
            plan: self.plan,
            steps,
            events: self.events,
            state: &self.state,
            follower: &self.follower,
            current: &self.current,
        }
    }
}

/// Turns the journal's step events into the migration's: the runbook's own steps, and the
/// steps of the procedures they call as details.
fn observer<'a>(
    events: &'a (dyn Fn(Event) + Send + Sync),
    current: &'a Mutex<(Phase, String)>,
) -> impl Fn(&StepEvent<'_>) + Send + Sync + 'a {
    move |e: &StepEvent<'_>| {
        let (phase, outer) = current.lock().unwrap().clone();
        let event = match e {
            StepEvent::Started { step, intent } if *step == outer => Event::StepStarted {
                phase,
                step: step.to_string(),
                intent: intent.to_string(),
            },
            StepEvent::Finished {
                step,
                status,
                duration,
                outcome,
            } if *step == outer => Event::StepFinished {
                phase,
                step: step.to_string(),
                status: *status,
                duration_ms: duration.as_millis() as u64,
                outcome: outcome.to_string(),
            },
            StepEvent::Started { step, intent } => Event::Detail {
                phase,
                step: outer,
                detail: step.to_string(),
                status: None,
                duration_ms: None,
                text: intent.to_string(),
            },
            StepEvent::Finished {
                step,
                status,
                duration,
                outcome,
            } => Event::Detail {
                phase,
                step: outer,
                detail: step.to_string(),
                status: Some(*status),
                duration_ms: Some(duration.as_millis() as u64),
                text: outcome.to_string(),
            },
        };
        events(event);
    }
}
