//! The canary: `cutover traffic canary`.
//!
//! Steps of weights for the new app (1, 5, 10, 25, 50, 100 by default). Each step sets the
//! weight, then watches the new app for `interval`, checking the gates every `check_every`;
//! `failure_threshold` failed checks in a row (no data counts as failed) roll the weight back
//! to 0% at once. Reaching the last step promotes.
//!
//! Every step is journaled (intent, then outcome) and the canary's state is a journal fact
//! written before each weight change, so a killed canary started again resumes at the step it
//! was on. A weight that cannot be set (the DNS provider refused the batch) stops the canary
//! at its step the same way, with the reason in its state. `promote`, `abort`, `pause` and
//! `resume` come from other processes through the journal too: the running canary reads them
//! between checks, and a stopped one acts on `abort` or `promote` before anything else when
//! it is started again.
//!
//! A rollback, an abort or a promotion is journaled as a state of its own (rolling back,
//! aborting, promoting) before its weight change, because that change can fail too (the DNS
//! provider refuses the batch). A canary started again in one of these states makes that move
//! first and only: going back to the step's weight would send users to an app that failed its
//! gates, and watching the step again could pass and raise the weight.

pub mod gates;

use std::time::Duration;

use cutover_core::engine::Steps;
use cutover_core::journal::now_ms;
use cutover_core::plan::{GateSource, TrafficSettings};
use cutover_core::{Journal, JournalError};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use gates::{judge, Gates, Thresholds, Verdict};

/// Journal fact with the canary's [`State`].
pub const STATE_FACT: &str = "traffic.canary";
/// Journal fact with a pending [`Control`].
pub const CONTROL_FACT: &str = "traffic.canary.control";

/// Where a canary is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    /// Moving to 100%: the move was started and has not completed yet.
    Promoting,
    /// Moving to 0% after a failed gate: the move was started and has not completed yet.
    RollingBack,
    /// Moving to 0% on `cutover traffic abort`: the move was started and has not completed.
    Aborting,
    Promoted,
    RolledBack,
    Aborted,
}

impl Phase {
    pub fn finished(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Aborted)
    }

    /// The move to 0% or 100% this phase is in the middle of, if any.
    fn moving(self) -> Option<Move> {
        match self {
            Phase::Promoting => Some(Move::Promote),
            Phase::RollingBack => Some(Move::RollBack),
            Phase::Aborting => Some(Move::Abort),
            _ => None,
        }
    }

    /// How `cutover traffic status` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoting => "promoting",
            Phase::RollingBack => "rolling back",
            Phase::Aborting => "aborting",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled back",
            Phase::Aborted => "aborted",
        }
    }
}

/// A move that ends the canary: once begun, it is the only thing a restarted canary does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Move {
    RollBack,
    Abort,
    Promote,
}

impl Move {
    fn percent(self) -> u8 {
        match self {
            Move::RollBack | Move::Abort => 0,
            Move::Promote => 100,
        }
    }

    fn moving(self) -> Phase {
        match self {
            Move::RollBack => Phase::RollingBack,
            Move::Abort => Phase::Aborting,
            Move::Promote => Phase::Promoting,
        }
    }

    fn done(self) -> Phase {
        match self {
            Move::RollBack => Phase::RolledBack,
            Move::Abort => Phase::Aborted,
            Move::Promote => Phase::Promoted,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Move::RollBack => "rollback",
            Move::Abort => "abort",
            Move::Promote => "promotion",
        }
    }

    /// Its journal step.
    fn step(self) -> &'static str {
        match self {
            Move::RollBack => "traffic.canary.rollback",
            Move::Abort => "traffic.canary.abort",
            Move::Promote => "traffic.canary.promote",
        }
    }

    /// What a person can do when the move did not complete.
    fn retry(self) -> &'static str {
        match self {
            Move::RollBack | Move::Abort => {
                "`cutover traffic canary` tries the move to 0% again before anything else"
            }
            Move::Promote => {
                "`cutover traffic canary` tries the move to 100% again before anything else, `cutover traffic abort` goes back to 0% instead"
            }
        }
    }
}

/// The canary's state, kept in the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Index into the steps.
    pub step: usize,
    /// The weight of the new app, percent.
    pub new_percent: u8,
    pub phase: Phase,
    /// Why it was (or is being) rolled back or aborted, or why it stopped at its step (the
    /// weight could not be set) while still running.
    pub reason: Option<String>,
    /// While rolling back, aborting or promoting: why the move did not complete (the canary
    /// stopped; started again, it tries the move first). None while the move is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub updated_ms: i64,
}

impl State {
    /// One line for `cutover traffic status`, after "canary: ".
    pub fn summary(&self) -> String {
        let at = format!("step {} ({}%)", self.step + 1, self.new_percent);
        let reason = self.reason.as_deref();
        match self.phase.moving() {
            Some(m) => {
                let head = format!("{} to {}% from {at}", self.phase.as_str(), m.percent());
                let why = match (m, reason) {
                    (Move::RollBack, Some(r)) => format!("; it rolls back because {r}"),
                    _ => String::new(),
                };
                match &self.error {
                    Some(e) => format!("{head}, not finished: {e}{why}"),
                    None => format!(
                        "{head}, under way or stopped before it completed ({}){why}",
                        m.retry()
                    ),
                }
            }
            None if self.phase.finished() => {
                let p = format!(
                    "{} to {}% at step {}",
                    self.phase.as_str(),
                    self.new_percent,
                    self.step + 1
                );
                match reason {
                    Some(r) => format!("{p}: {r}"),
                    None => p,
                }
            }
            None => match reason {
                Some(r) => format!("{} at {at}: {r}", self.phase.as_str()),
                None => format!("{} at {at}", self.phase.as_str()),
            },
        }
    }
}

/// A request from `cutover traffic promote|abort|pause|resume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    Promote,
    Abort,
    Pause,
    Resume,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Promote => "promote",
            Control::Abort => "abort",
            Control::Pause => "pause",
            Control::Resume => "resume",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    #[error("cannot set the weight: {0}")]
    Weight(String),
    /// A step's weight could not be set: the canary stopped at that step, and its state in
    /// the journal says so; started again, it resumes there.
    #[error("the canary stopped at step {step} ({percent}%): cannot set the weight: {reason}; `cutover traffic canary` tries this step again, `cutover traffic abort` goes back to 0%")]
    Stopped {
        /// Counted from 1, as the journal's step names are.
        step: usize,
        percent: u8,
        reason: String,
    },
    /// A rollback, abort or promotion could not set its weight: the canary stopped, and its
    /// state in the journal says it is still making that move; started again, it tries that
    /// move before anything else.
    #[error("the {what} to {to}% did not complete: cannot set the weight: {reason}; the new app may still get {percent}% of new users; {retry}")]
    Unfinished {
        /// "rollback", "abort" or "promotion".
        what: &'static str,
        /// 0 or 100.
        to: u8,
        /// The weight of the step it was leaving.
        percent: u8,
        reason: String,
        retry: &'static str,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// The canary's settings.
#[derive(Clone, Debug, Serialize)]
pub struct Canary {
    pub steps: Vec<u8>,
    #[serde(with = "secs")]
    pub interval: Duration,
    #[serde(with = "secs")]
    pub check_every: Duration,
    pub failure_threshold: u32,
    pub thresholds: Thresholds,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

impl Canary {
    pub fn from_settings(t: &TrafficSettings) -> Canary {
        Canary {
            steps: t.steps.clone(),
            interval: t.interval,
            check_every: t.check_every,
            failure_threshold: t.failure_threshold,
            thresholds: Thresholds {
                min_success_rate: t.min_success_rate,
                max_p99: t.max_p99,
                // Only gates that count requests can hold them to a minimum.
                min_requests: match &t.metrics {
                    GateSource::Prometheus {
                        requests_query: None,
                        ..
                    } => None,
                    _ => Some(t.min_requests),
                },
            },
        }
    }

    /// `--dry-run`: one line per step and the gates, changing nothing.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![];
        let n = self.steps.len();
        for (i, p) in self.steps.iter().enumerate() {
            if i + 1 == n {
                out.push(format!(
                    "step {}: {p}% of new users to the new app: promoted",
                    i + 1
                ));
            } else {
                out.push(format!(
                    "step {}: {p}% of new users to the new app, watched for {}, checked every {}",
                    i + 1,
                    humantime::format_duration(self.interval),
                    humantime::format_duration(self.check_every)
                ));
            }
        }
        let requests = match self.thresholds.min_requests {
            Some(n) => format!("at least {n} requests per check (fewer is no data, which fails)"),
            // Say so rather than print a minimum nothing enforces.
            None => "traffic.min_requests does not apply: the Prometheus gates count no requests without traffic.requests_query (a window without any request is still no data, which fails)".to_string(),
        };
        out.push(format!(
            "gates: success rate >= {}%, p99 <= {}ms, {requests}; {} failed check(s) in a row roll back to 0%",
            self.thresholds.min_success_rate,
            self.thresholds.max_p99.as_millis(),
            self.failure_threshold
        ));
        out
    }
}

/// What moves the weight: the splitter, or the DNS provider's weighted records.
pub trait Weights: Send + Sync {
    fn set(&self, new_percent: u8) -> BoxFuture<'_, Result<(), String>>;
}

impl Weights for crate::splitter::admin::AdminClient {
    fn set(&self, new_percent: u8) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.set_new_percent(new_percent).await.map(|_| ()) })
    }
}

/// The canary's state as the journal holds it.
pub fn state(journal: &Journal) -> Result<Option<State>, JournalError> {
    Ok(journal
        .fact(STATE_FACT)?
        .and_then(|t| serde_json::from_str(&t).ok()))
}

/// Leaves a request for the running canary.
pub fn request(journal: &Journal, control: Control) -> Result<(), JournalError> {
    journal.set_fact(CONTROL_FACT, Some(control.as_str()))
}

fn take_control(journal: &Journal) -> Result<Option<Control>, JournalError> {
    let c = journal.fact(CONTROL_FACT)?;
    if c.is_some() {
        journal.set_fact(CONTROL_FACT, None)?;
    }
    Ok(c.and_then(|t| serde_json::from_value(serde_json::Value::String(t)).ok()))
}

fn save(journal: &Journal, s: &State) -> Result<(), JournalError> {
    journal.set_fact(
        STATE_FACT,
        Some(&serde_json::to_string(s).unwrap_or_default()),
    )
}

/// What a step's watch ended with.
enum Watch {
    Passed,
    RollBack(String),
    Promote,
    Abort,
}

/// How the canary ended.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub phase: Phase,
    pub new_percent: u8,
    pub reason: Option<String>,
    /// The step it started from (non-zero when it resumed).
    pub resumed_at: usize,
}

/// How often a watch looks for promote/abort/pause between checks.
const POLL: Duration = Duration::from_millis(200);

/// Runs the canary to its end: promoted, rolled back or aborted.
pub async fn run(
    canary: &Canary,
    weights: &dyn Weights,
    gates: &dyn Gates,
    steps: &Steps<'_>,
    report: &(dyn Fn(&str) + Send + Sync),
) -> Result<Outcome, CanaryError> {
    let journal = steps.journal();
    let saved = state(journal)?;
    if let Some((s, m)) = saved
        .as_ref()
        .and_then(|s| s.phase.moving().map(|m| (s.clone(), m)))
    {
        return resume_move(steps, weights, s, m, report).await;
    }
    let mut state = match saved {
        Some(s) if !s.phase.finished() && s.step < canary.steps.len() => {
            report(&format!(
                "resuming at step {} ({}%)",
                s.step + 1,
                canary.steps[s.step]
            ));
            s
        }
        _ => {
            // A new canary: requests left for an earlier one do not apply.
            journal.set_fact(CONTROL_FACT, None)?;
            State {
                step: 0,
                new_percent: 0,
                phase: Phase::Running,
                reason: None,
                error: None,
                updated_ms: now_ms(),
            }
        }
    };
    let resumed_at = state.step;
    // An abort or promote left for a stopped canary is acted on before the step's weight is
    // set again: an abort must not first send users back to the new app. (A new canary has
    // cleared any request above; a pause is left for the watch.)
    match journal.fact(CONTROL_FACT)?.as_deref() {
        Some(c) if c == Control::Abort.as_str() => {
            take_control(journal)?;
            return make_move(steps, weights, state, Move::Abort, ABORTED, resumed_at).await;
        }
        Some(c) if c == Control::Promote.as_str() => {
            take_control(journal)?;
            return make_move(steps, weights, state, Move::Promote, None, resumed_at).await;
        }
        _ => {}
    }
    loop {
        let p = canary.steps[state.step];
        state.new_percent = p;
        state.updated_ms = now_ms();
        state.reason = None;
        save(journal, &state)?;
        let moved = steps
            .run(
                &format!("traffic.canary.step.{}", state.step + 1),
                &format!("send {p}% of new users to the new app"),
                || async {
                    weights.set(p).await.map_err(CanaryError::Weight)?;
                    Ok::<_, CanaryError>(format!("new app at {p}%"))
                },
            )
            .await;
        if let Err(CanaryError::Weight(reason)) = moved {
            // The state keeps this step, still running, so a canary started again resumes
            // here; the reason tells `cutover traffic status` why it stopped.
            let stopped = CanaryError::Stopped {
                step: state.step + 1,
                percent: p,
                reason,
            };
            state.reason = Some(stopped.to_string());
            state.updated_ms = now_ms();
            save(journal, &state)?;
            return Err(stopped);
        }
        moved?;
        report(&format!("step {}: new app at {p}%", state.step + 1));
        let last = state.step + 1 == canary.steps.len();
        let watch = if last {
            Watch::Promote
        } else {
            watch(canary, gates, journal, &mut state, report).await?
        };
        match watch {
            Watch::Passed => state.step += 1,
            Watch::Promote if last => {
                return finish(journal, state, Phase::Promoted, 100, None, resumed_at);
            }
            Watch::Promote => {
                return make_move(steps, weights, state, Move::Promote, None, resumed_at).await;
            }
            Watch::Abort => {
                return make_move(steps, weights, state, Move::Abort, ABORTED, resumed_at).await;
            }
            Watch::RollBack(reason) => {
                let out = make_move(
                    steps,
                    weights,
                    state,
                    Move::RollBack,
                    Some(&reason),
                    resumed_at,
                )
                .await?;
                report(&format!("rolled back to 0%: {reason}"));
                return Ok(out);
            }
        }
    }
}

/// Sends every new user back to the old app, whatever state the canary is in (a migration's
/// rollback). The move is journaled as an abort before the weight changes, like any abort, so
/// a canary started later finishes it first and never raises the weight after it. A request
/// left for a running canary is dropped: this is the last word.
pub async fn abandon(
    steps: &Steps<'_>,
    weights: &dyn Weights,
    reason: &str,
) -> Result<Outcome, CanaryError> {
    let journal = steps.journal();
    journal.set_fact(CONTROL_FACT, None)?;
    let state = state(journal)?.unwrap_or(State {
        step: 0,
        new_percent: 0,
        phase: Phase::Running,
        reason: None,
        error: None,
        updated_ms: now_ms(),
    });
    let at = state.step;
    make_move(steps, weights, state, Move::Abort, Some(reason), at).await
}

/// The reason an abort's state gives.
const ABORTED: Option<&str> = Some("aborted by `cutover traffic abort`");

/// Finishes a rollback, abort or promotion that a stopped canary left not completed: that
/// move first and only, whatever the steps say. A request left meanwhile may turn a
/// promotion into an abort; it cannot turn a move to 0% into a raise.
async fn resume_move(
    steps: &Steps<'_>,
    weights: &dyn Weights,
    state: State,
    mut m: Move,
    report: &(dyn Fn(&str) + Send + Sync),
) -> Result<Outcome, CanaryError> {
    let journal = steps.journal();
    let mut reason = state.reason.clone();
    match take_control(journal)? {
        Some(Control::Abort) if m == Move::Promote => {
            m = Move::Abort;
            reason = ABORTED.map(str::to_string);
        }
        Some(Control::Promote) if m != Move::Promote => report(&format!(
            "the request to promote is dropped: the {} to 0% is finished first, and the canary never raises the weight after it",
            m.noun()
        )),
        // Pause and resume mean nothing to a move; a request for the same move is this one.
        _ => {}
    }
    report(&format!("resuming the {} to {}%", m.noun(), m.percent()));
    let resumed_at = state.step;
    let out = make_move(steps, weights, state, m, reason.as_deref(), resumed_at).await?;
    if m == Move::RollBack {
        report(&format!(
            "rolled back to 0%: {}",
            out.reason.as_deref().unwrap_or_default()
        ));
    }
    Ok(out)
}

/// A rollback, abort or promotion: its state is journaled before the weight changes, so a
/// canary stopped or killed in the middle resumes this move and nothing else.
async fn make_move(
    steps: &Steps<'_>,
    weights: &dyn Weights,
    mut state: State,
    m: Move,
    reason: Option<&str>,
    resumed_at: usize,
) -> Result<Outcome, CanaryError> {
    let journal = steps.journal();
    state.phase = m.moving();
    state.reason = reason.map(str::to_string);
    state.error = None;
    state.updated_ms = now_ms();
    save(journal, &state)?;
    let why = match m {
        Move::RollBack => reason.unwrap_or("a gate failed"),
        Move::Abort => "aborted by request",
        Move::Promote => "promoted by request",
    };
    match set(steps, weights, m.step(), m.percent(), why).await {
        Ok(()) => {}
        Err(CanaryError::Weight(e)) => {
            let unfinished = CanaryError::Unfinished {
                what: m.noun(),
                to: m.percent(),
                percent: state.new_percent,
                reason: e,
                retry: m.retry(),
            };
            state.error = Some(unfinished.to_string());
            state.updated_ms = now_ms();
            save(journal, &state)?;
            return Err(unfinished);
        }
        Err(e) => return Err(e),
    }
    let reason = state.reason.clone();
    finish(journal, state, m.done(), m.percent(), reason, resumed_at)
}

async fn set(
    steps: &Steps<'_>,
    weights: &dyn Weights,
    step: &str,
    p: u8,
    why: &str,
) -> Result<(), CanaryError> {
    steps
        .run(step, &format!("set the new app to {p}%: {why}"), || async {
            weights.set(p).await.map_err(CanaryError::Weight)?;
            Ok::<_, CanaryError>(format!("new app at {p}%"))
        })
        .await
        .map(|_| ())
}

fn finish(
    journal: &Journal,
    mut state: State,
    phase: Phase,
    p: u8,
    reason: Option<String>,
    resumed_at: usize,
) -> Result<Outcome, CanaryError> {
    state.phase = phase;
    state.new_percent = p;
    state.reason = reason.clone();
    state.error = None;
    state.updated_ms = now_ms();
    save(journal, &state)?;
    Ok(Outcome {
        phase,
        new_percent: p,
        reason,
        resumed_at,
    })
}

/// Watches one step for `interval`, checking every `check_every`.
async fn watch(
    canary: &Canary,
    gates: &dyn Gates,
    journal: &Journal,
    state: &mut State,
    report: &(dyn Fn(&str) + Send + Sync),
) -> Result<Watch, CanaryError> {
    let mut failures = 0u32;
    let mut watched = Duration::ZERO;
    'window: while watched < canary.interval {
        let window = canary.check_every.min(canary.interval - watched);
        let begun = gates.begin().await;
        let mut waited = Duration::ZERO;
        while waited < window {
            let nap = POLL.min(window - waited);
            tokio::time::sleep(nap).await;
            waited += nap;
            match take_control(journal)? {
                Some(Control::Promote) => return Ok(Watch::Promote),
                Some(Control::Abort) => return Ok(Watch::Abort),
                Some(Control::Pause) => {
                    state.phase = Phase::Paused;
                    state.updated_ms = now_ms();
                    save(journal, state)?;
                    report("paused; `cutover traffic resume` goes on");
                    loop {
                        tokio::time::sleep(POLL).await;
                        match take_control(journal)? {
                            Some(Control::Resume) => break,
                            Some(Control::Promote) => return Ok(Watch::Promote),
                            Some(Control::Abort) => return Ok(Watch::Abort),
                            _ => {}
                        }
                    }
                    state.phase = Phase::Running;
                    state.updated_ms = now_ms();
                    save(journal, state)?;
                    report("resumed");
                    // The window is started again: what happened while paused is not judged.
                    continue 'window;
                }
                Some(Control::Resume) | None => {}
            }
        }
        watched += window;
        let verdict = match begun {
            Err(e) => Verdict::NoData {
                reason: format!("no data: {e}"),
            },
            Ok(()) => match gates.measure().await {
                Ok(m) => judge(&m, &canary.thresholds),
                Err(e) => Verdict::NoData {
                    reason: format!("no data: {e}"),
                },
            },
        };
        if verdict.passed() {
            failures = 0;
            report(&format!("  check passed at {}%", state.new_percent));
        } else {
            failures += 1;
            report(&format!(
                "  check failed at {}% ({failures}/{}): {}",
                state.new_percent,
                canary.failure_threshold,
                verdict.reason()
            ));
            if failures >= canary.failure_threshold {
                return Ok(Watch::RollBack(verdict.reason().to_string()));
            }
        }
    }
    Ok(Watch::Passed)
}

/// The weight as the DNS provider's weighted records (traffic.weights_via = "dns"). Each
/// change is its own journaled step and waits for the TTL planner's safe time unless forced.
pub struct DnsWeights<'a> {
    pub provider: &'a dyn crate::dns::DnsProvider,
    pub settings: &'a cutover_core::plan::DnsSettings,
    pub steps: &'a Steps<'a>,
    pub force: bool,
}

impl Weights for DnsWeights<'_> {
    fn set(&self, new_percent: u8) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            crate::dns::ops::set_split(
                self.provider,
                self.settings,
                new_percent,
                self.force,
                self.steps,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    }
}
