//! The step engine: intent → act → outcome.
//!
//! A procedure (`db sync`, later the switchover) is a sequence of named steps. [`Steps::run`]
//! writes the intent to the journal before the step acts and the outcome after, with its
//! duration, and tells an observer (the CLI prints it) at both points. Steps are written to be
//! idempotent: running a finished step again finds its work done and changes nothing, which is
//! what makes a killed procedure restartable.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::journal::{Journal, JournalError, RunId, Status};

/// What the engine tells its observer.
#[derive(Debug, Clone)]
pub enum StepEvent<'a> {
    Started {
        step: &'a str,
        intent: &'a str,
    },
    Finished {
        step: &'a str,
        status: Status,
        duration: Duration,
        outcome: &'a str,
    },
}

/// Something a step can report on success: a short line for the journal.
pub trait Outcome {
    fn summary(&self) -> String;
}

impl Outcome for () {
    fn summary(&self) -> String {
        "done".into()
    }
}

impl Outcome for String {
    fn summary(&self) -> String {
        self.clone()
    }
}

/// Runs named steps of one run, journaling each.
pub struct Steps<'a> {
    journal: &'a Journal,
    run: RunId,
    observer: &'a (dyn Fn(&StepEvent<'_>) + Send + Sync),
}

impl<'a> Steps<'a> {
    pub fn new(
        journal: &'a Journal,
        run: RunId,
        observer: &'a (dyn Fn(&StepEvent<'_>) + Send + Sync),
    ) -> Self {
        Steps {
            journal,
            run,
            observer,
        }
    }

    pub fn run_id(&self) -> RunId {
        self.run
    }

    pub fn journal(&self) -> &Journal {
        self.journal
    }

    /// Runs one step: intent, act, outcome. A journal failure is an error of its own
    /// (`E: From<JournalError>`): a step must not act if its intent cannot be written.
    pub async fn run<T, E, F, Fut>(&self, step: &str, intent: &str, act: F) -> Result<T, E>
    where
        T: Outcome,
        E: std::fmt::Display + From<JournalError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let record = self.journal.intent(self.run, step, intent)?;
        (self.observer)(&StepEvent::Started { step, intent });
        let started = Instant::now();
        let result = act().await;
        let duration = started.elapsed();
        let (status, text) = match &result {
            Ok(v) => (Status::Ok, v.summary()),
            Err(e) => (Status::Failed, e.to_string()),
        };
        self.journal.outcome(record, status, duration, &text)?;
        (self.observer)(&StepEvent::Finished {
            step,
            status,
            duration,
            outcome: &text,
        });
        result
    }

    /// Records a step that had nothing to do (already done by an earlier run).
    pub fn skip(&self, step: &str, why: &str) -> Result<(), JournalError> {
        let record = self.journal.intent(self.run, step, why)?;
        self.journal
            .outcome(record, Status::Skipped, Duration::ZERO, why)?;
        (self.observer)(&StepEvent::Finished {
            step,
            status: Status::Skipped,
            duration: Duration::ZERO,
            outcome: why,
        });
        Ok(())
    }
}
