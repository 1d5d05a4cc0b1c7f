//! What a migration tells whoever watches it: `cutover apply --json` prints one [`Line`] per
//! event, the text output renders them, the demo times its phases with them.

use cutover_core::journal::{now_ms, Status};
use serde::Serialize;

use super::{Phase, RunState};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A run of `apply`, `rollback` or `finish` begins.
    Started {
        command: &'static str,
        attempt: u32,
        order: &'static str,
        /// Steps already done by earlier runs of this attempt.
        done: usize,
    },
    StepStarted {
        phase: Phase,
        step: String,
        intent: String,
    },
    StepFinished {
        phase: Phase,
        step: String,
        status: Status,
        duration_ms: u64,
        outcome: String,
    },
    /// Done by an earlier run of this attempt, or not needed.
    StepSkipped {
        phase: Phase,
        step: String,
        why: String,
    },
    /// A step of a procedure inside a runbook step (`schema.dump`, `switchover.fence`,
    /// `traffic.canary.step.2`...), as the journal records it.
    Detail {
        phase: Phase,
        step: String,
        detail: String,
        /// None when it starts.
        status: Option<Status>,
        duration_ms: Option<u64>,
        text: String,
    },
    /// How a long step is doing.
    Progress {
        phase: Phase,
        step: String,
        message: String,
    },
    /// A step that changes production waited for a person.
    Approval {
        phase: Phase,
        step: String,
        question: String,
        /// "yes" (asked and answered, or --yes), "no", or "not asked" (no terminal).
        answer: &'static str,
    },
    /// The run ends.
    Ended {
        command: &'static str,
        state: RunState,
        phase: Option<Phase>,
        step: Option<String>,
        reason: Option<String>,
    },
}

/// One line of `--json`: the event and when it happened.
#[derive(Clone, Debug, Serialize)]
pub struct Line<'a> {
    pub at_ms: i64,
    #[serde(flatten)]
    pub event: &'a Event,
}

impl<'a> Line<'a> {
    pub fn now(event: &'a Event) -> Line<'a> {
        Line {
            at_ms: now_ms(),
            event,
        }
    }
}
