//! The migration's state: a journal fact written after every step.
//!
//! It says which attempt this is (a rollback ends one; `apply` after it starts the next),
//! which steps of the attempt are done, where the run is or stopped and why, and when the move
//! was done (the rollback window starts there). A run killed between two writes loses at most
//! the record of the step it was in, which then runs again: every step is idempotent.

use cutover_core::journal::now_ms;
use cutover_core::plan::Order;
use cutover_core::Journal;
use serde::{Deserialize, Serialize};

use super::{MigrationError, Phase};

/// Journal fact holding the [`MigrationState`].
pub const STATE_FACT: &str = "migration";
/// Journal fact holding a request to a running `apply` ("rollback": stop now).
pub const CONTROL_FACT: &str = "migration.control";

/// Where a migration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// `apply` runs it (or ran it and was killed: then no command holds its lock).
    Running,
    /// `apply` stopped as asked (`--until`), for a person's approval, or for a rollback.
    Stopped,
    /// A step failed; the reason says why and how to go on.
    Failed,
    /// `rollback` runs (or ran and was killed: running it again finishes it).
    RollingBack,
    /// Users and writes are back on the old platform; `apply` starts a new attempt.
    RolledBack,
    /// Replication is cut and both sides are clean: nothing more to do.
    Finished,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Stopped => "stopped",
            RunState::Failed => "failed",
            RunState::RollingBack => "rolling back",
            RunState::RolledBack => "rolled back",
            RunState::Finished => "finished",
        }
    }
}

/// A step of this attempt that completed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DoneStep {
    pub step: String,
    pub outcome: String,
    pub at_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrationState {
    /// Counted from 1; a rollback ends an attempt.
    pub attempt: u32,
    pub started_ms: i64,
    pub order: Order,
    pub state: RunState,
    /// The step under way, or where the run stopped or failed.
    pub phase: Option<Phase>,
    pub step: Option<String>,
    pub done: Vec<DoneStep>,
    /// Why it stopped, failed or was rolled back.
    pub reason: Option<String>,
    /// When the move was done (the done phase passed): the rollback window starts here.
    pub done_ms: Option<i64>,
    /// Steps undone by rollbacks of this attempt (a killed rollback skips them when run again).
    #[serde(default)]
    pub undone: Vec<String>,
    pub updated_ms: i64,
}

impl MigrationState {
    pub fn new(attempt: u32, order: Order) -> MigrationState {
        let now = now_ms();
        MigrationState {
            attempt,
            started_ms: now,
            order,
            state: RunState::Running,
            phase: None,
            step: None,
            done: vec![],
            reason: None,
            done_ms: None,
            undone: vec![],
            updated_ms: now,
        }
    }

    pub fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|d| d.step == step)
    }

    /// The steps this attempt touched, in the order it did: the done ones, then the one under
    /// way (which may have acted before it was stopped).
    pub fn touched(&self) -> Vec<String> {
        let mut out: Vec<String> = self.done.iter().map(|d| d.step.clone()).collect();
        if let Some(s) = &self.step {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    pub fn load(journal: &Journal) -> Result<Option<MigrationState>, MigrationError> {
        match journal.fact(STATE_FACT)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                MigrationError::refused(format!(
                    "the journal's migration state cannot be read ({e}); it was written by another version of cutover"
                ))
            }),
        }
    }

    pub fn save(&mut self, journal: &Journal) -> Result<(), MigrationError> {
        self.updated_ms = now_ms();
        let text = serde_json::to_string(self).expect("the state serializes");
        journal.set_fact(STATE_FACT, Some(&text))?;
        Ok(())
    }
}

/// Asks a running `apply` to stop for a rollback.
pub fn request_stop(journal: &Journal) -> Result<(), MigrationError> {
    journal.set_fact(CONTROL_FACT, Some("rollback"))?;
    Ok(())
}

pub fn stop_requested(journal: &Journal) -> Result<bool, MigrationError> {
    Ok(journal.fact(CONTROL_FACT)?.is_some())
}

pub fn clear_request(journal: &Journal) -> Result<(), MigrationError> {
    journal.set_fact(CONTROL_FACT, None)?;
    Ok(())
}
