//! One run of `apply`, `rollback` or `finish`: the migration's state as the run changes it,
//! the journal's run, the step under way (which names the events), and trigger mode's
//! follower; and the context its steps get.

use std::sync::Mutex;

use cutover_core::engine::{StepEvent, Steps};
use cutover_core::journal::RunId;
use cutover_core::{Journal, Plan};

use super::apply::observer;
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
