//! The whole move as one migration: `cutover plan`, `apply`, `status`, `rollback`, `finish`.
//!
//! A migration is a list of typed steps (`step::Step`) in phases, built from the plan file
//! ([`runbook::Runbook`]):
//!
//! 1. *prepare*: check both databases, the proxy and the splitter; lower the DNS TTL (the safe
//!    time is recorded, and waited for before any DNS change); sync; verify.
//! 2. *new app*: healthy, synthetic checks, shadow diff: any failure stops the run before a
//!    user is moved.
//! 3. *proxy*: every application session on the source comes through the proxy, measured in
//!    `pg_stat_activity`.
//! 4. *database* and *traffic*, in the plan's order: the switchover, then the canary (its
//!    gates include the replication that protects the rollback and the proxy's errors) and
//!    the DNS switch.
//! 5. *done*: the traffic still reaching the old origin stays under a threshold for a window.
//! 6. *hold*: the rollback window, with the old database following the new one.
//! 7. *finish*: replication cut, cleanup on both sides, the decommission checklist.
//!
//! Each step writes its intent to the journal before it acts and its outcome after, and the
//! migration's own state (which steps are done, where it stopped and why) is a journal fact
//! written after every step, so a run killed at any moment goes on where it was: a done step
//! is skipped, the step that was under way runs again (every step is idempotent). One command
//! at a time drives a migration: `apply`, `rollback` and `finish` hold a lock beside the plan,
//! and `rollback` asks a running `apply` to stop (a journal fact it reads between and inside
//! its steps) before it takes over.
//!
//! Where a new step goes: a struct in the phase's file under `steps/`, implementing
//! `step::Step` (what it does and changes, its precondition, its action, the check that it
//! took effect, its undo), listed in [`runbook::Runbook::of`] at its place. A new mode of
//! replication goes in `cutover-pg` behind the switchover, not here.

mod apply;
mod events;
mod finish;
mod follower;
mod gates;
mod lag;
mod lock;
mod rollback;
mod run;
mod runbook;
mod state;
mod status;
pub(crate) mod step;
mod steps;

pub use apply::{apply, Applied, Approval, Options};
pub use events::{Event, Line};
pub use finish::{finish, FinishOptions};
pub use lock::Lock;
pub use rollback::{rollback, RolledBack};
pub use runbook::{saved_plan, Runbook, SavedPlan, Skipped, StepPlan};
pub use state::{MigrationState, RunState};
pub use status::{status, StatusView};

use cutover_pg::PgError;

/// The phases of a move, in the order a plan file without `order` runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Prepare,
    NewApp,
    Proxy,
    Database,
    Traffic,
    Done,
    Hold,
    Finish,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Prepare,
        Phase::NewApp,
        Phase::Proxy,
        Phase::Database,
        Phase::Traffic,
        Phase::Done,
        Phase::Hold,
        Phase::Finish,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::NewApp => "new_app",
            Phase::Proxy => "proxy",
            Phase::Database => "database",
            Phase::Traffic => "traffic",
            Phase::Done => "done",
            Phase::Hold => "hold",
            Phase::Finish => "finish",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s || p.as_str().replace('_', "-") == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Switch(#[from] crate::SwitchError),
    #[error(transparent)]
    Journal(#[from] cutover_core::JournalError),
    #[error(transparent)]
    Canary(#[from] cutover_traffic::canary::CanaryError),
    #[error(transparent)]
    Dns(#[from] cutover_traffic::dns::DnsError),
    #[error(transparent)]
    Proxy(#[from] cutover_proxy::admin::AdminError),
    /// A definite stop: the message says what is wrong and how to go on.
    #[error("{0}")]
    Refused(String),
    /// A rollback asked the run to stop, and it did, between or inside a step.
    #[error("stopped: {0}")]
    Stopped(String),
    /// Another cutover command drives this migration now.
    #[error("{0}")]
    Busy(String),
}

impl MigrationError {
    pub(crate) fn refused(text: impl Into<String>) -> MigrationError {
        MigrationError::Refused(text.into())
    }
}
