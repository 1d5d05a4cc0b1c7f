//! `cutover demo`: the whole move of the shop from one local platform to the other, under
//! HTTP load from start to end, by the migration runbook with short intervals. With a
//! Heroku-like source it also rolls back in the middle of the canary and moves again.
//!
//! The summary is the user's side of it: requests sent and failed, writes acknowledged and
//! present on the final primary, the longest request while the database switched and while
//! each canary step ran, and the time each phase took.

use std::sync::Mutex;
use std::time::Instant;

use cutover_core::journal::{now_ms, Status};
use cutover_core::plan::Order;
use cutover_core::Journal;
use cutover_pg::Side;
use futures_util::future::BoxFuture;
use serde::Serialize;

use super::stage::{Stage, StageError, StageOptions};
use crate::migration::{self, Approval, Event, MigrationError, Phase, RunState};

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub heroku: bool,
    pub order: Order,
    /// HTTP requests per second from the shop's users.
    pub rate: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error(transparent)]
    Journal(#[from] cutover_core::JournalError),
    #[error(transparent)]
    Pg(#[from] cutover_pg::PgError),
    #[error(transparent)]
    Local(#[from] cutover_pg::local::LocalError),
    #[error(transparent)]
    Plan(#[from] cutover_core::PlanError),
    #[error(transparent)]
    Switch(#[from] crate::SwitchError),
    #[error("{0}")]
    Failed(String),
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseTime {
    pub phase: Phase,
    pub ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepStall {
    /// "traffic.canary.step.2 (50%)".
    pub step: String,
    pub longest_request_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MoveSummary {
    /// "native" or "trigger".
    pub mode: String,
    pub order: &'static str,
    pub requests_sent: u64,
    pub requests_failed: u64,
    /// The first failures, with their reasons.
    pub failures: Vec<String>,
    pub requests_per_second: f64,
    pub writes_acknowledged: usize,
    /// Acknowledged orders found on the final primary.
    pub writes_present: i64,
    pub writes_lost: i64,
    /// The longest request that was in flight while the database switched.
    pub longest_request_at_switch_ms: Option<f64>,
    /// With a Heroku-like source: while the database switched back.
    pub longest_request_at_rollback_ms: Option<f64>,
    pub longest_request_at_canary_steps: Vec<StepStall>,
    pub longest_request_ms: Option<f64>,
    pub phases: Vec<PhaseTime>,
    pub rolled_back_mid_canary: bool,
    pub attempts: u32,
    pub total_ms: u64,
    pub journal: String,
    pub checklist: String,
}

impl MoveSummary {
    pub fn clean(&self) -> bool {
        self.requests_failed == 0 && self.writes_lost == 0 && self.requests_sent > 0
    }
}

/// Every event with when it happened.
type Timeline = Mutex<Vec<(i64, Event)>>;

/// Runs the whole demo; `events` hears the migration as it goes.
pub async fn run(
    options: &DemoOptions,
    events: &(dyn Fn(&Event) + Send + Sync),
    note: &(dyn Fn(&str) + Send + Sync),
) -> Result<MoveSummary, DemoError> {
    let started = Instant::now();
    note("starting two local platforms: a PostgreSQL cluster and an instance of the shop on each, one cutover proxy both apps reach their database through, and the splitter in front of the old app");
    let mut stage = Stage::start(StageOptions {
        heroku: options.heroku,
        order: options.order,
        ..StageOptions::default()
    })
    .await?;
    let result = drive(&stage, options, events, note, started).await;
    stage.stop().await;
    result
}

async fn drive(
    stage: &Stage,
    options: &DemoOptions,
    events: &(dyn Fn(&Event) + Send + Sync),
    note: &(dyn Fn(&str) + Send + Sync),
    started: Instant,
) -> Result<MoveSummary, DemoError> {
    let plan = &stage.plan;
    note(&format!(
        "users send {} requests/s (orders placed and read back) to the shop's name, which resolves to the splitter",
        options.rate
    ));
    let load = stage.load(options.rate);
    let journal = Journal::open(&plan.journal_path())?;
    let timeline: Timeline = Mutex::new(vec![]);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let record = |e: Event| {
        events(&e);
        timeline.lock().unwrap().push((now_ms(), e.clone()));
        let _ = tx.send(e);
    };
    let yes = |_q: String| -> BoxFuture<'static, Approval> { Box::pin(async { Approval::Yes }) };
    let apply_options = migration::Options {
        yes: true,
        until: None,
    };
    let mut rolled_back = false;
    if options.heroku {
        // The first attempt is rolled back in the middle of the canary, under load.
        let apply = migration::apply(plan, &journal, &apply_options, &record, &yes);
        tokio::pin!(apply);
        let mut rollback = None;
        let applied = loop {
            tokio::select! {
                a = &mut apply => break a,
                Some(e) = rx.recv(), if rollback.is_none() => {
                    if matches!(&e, Event::Detail { detail, status: Some(Status::Ok), .. } if detail == "traffic.canary.step.2") {
                        note("rolling back in the middle of the canary: users and writes go back to the old platform");
                        // The rollback asks the running apply to stop and waits for it: both
                        // go on together.
                        let (a, r) = tokio::join!(&mut apply, migration::rollback(plan, &journal, &record));
                        rollback = Some(r);
                        break a;
                    }
                }
            }
        };
        let applied = applied?;
        match rollback {
            Some(r) => {
                r?;
                rolled_back = true;
                note("rolled back; moving again");
            }
            None => {
                return Err(DemoError::Failed(format!(
                    "the first attempt ended {} before the canary's second step: {}",
                    applied.state.as_str(),
                    applied.reason.unwrap_or_default()
                )))
            }
        }
    }
    // What the first attempt and its rollback said is in the timeline already.
    while rx.try_recv().is_ok() {}
    // The move. Once the canary has promoted, users' DNS caches expire and they reach the
    // new app directly: the splitter in front of the old one sees less and less.
    let new_url = stage.new_app_url();
    let apply = migration::apply(plan, &journal, &apply_options, &record, &yes);
    tokio::pin!(apply);
    let applied = loop {
        tokio::select! {
            a = &mut apply => break a,
            Some(e) = rx.recv() => {
                if matches!(&e, Event::StepFinished { step, status: Status::Ok, .. } if step == "traffic.canary") {
                    note("the name now resolves to the new app: users move as their DNS caches expire");
                    stage.resolver.set(&new_url);
                }
            }
        }
    };
    let report = load.stop().await;
    let applied = applied?;
    if applied.state != RunState::Finished {
        return Err(DemoError::Failed(format!(
            "the move ended {}: {}",
            applied.state.as_str(),
            applied.reason.unwrap_or_default()
        )));
    }
    let present = stage
        .orders_present(Side::Target, &report.acknowledged)
        .await?;
    let timeline = std::mem::take(&mut *timeline.lock().unwrap());
    let window = |step: &str, from: usize| step_window(&timeline[from..], step);
    // The last apply's events: the move that stayed.
    let last_apply = timeline
        .iter()
        .rposition(|(_, e)| {
            matches!(
                e,
                Event::Started {
                    command: "apply",
                    ..
                }
            )
        })
        .unwrap_or(0);
    let longest = |w: Option<(i64, i64)>| w.and_then(|(a, b)| report.longest_between(a, b));
    let at_switch = longest(window("database.switchover", last_apply));
    let at_rollback = longest(window("rollback.database.switchover", 0));
    let canary = canary_windows(&timeline[last_apply..])
        .into_iter()
        .map(|(step, a, b)| StepStall {
            step,
            longest_request_ms: report.longest_between(a, b),
        })
        .collect();
    let longest_all = report
        .samples
        .iter()
        .map(|s| s.ms)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    Ok(MoveSummary {
        mode: plan.sync.mode.to_string(),
        order: options.order.as_str(),
        requests_sent: report.sent,
        requests_failed: report.failed,
        failures: report.failures.clone(),
        requests_per_second: report.requests_per_second(),
        writes_acknowledged: report.acknowledged.len(),
        writes_present: present,
        writes_lost: report.acknowledged.len() as i64 - present,
        longest_request_at_switch_ms: at_switch,
        longest_request_at_rollback_ms: at_rollback,
        longest_request_at_canary_steps: canary,
        longest_request_ms: longest_all,
        phases: phase_times(&timeline[last_apply..]),
        rolled_back_mid_canary: rolled_back,
        attempts: applied.attempt,
        total_ms: started.elapsed().as_millis() as u64,
        journal: plan.journal_path().display().to_string(),
        checklist: plan.migration.checklist.display().to_string(),
    })
}

/// From a step's start to its end, as the events say.
fn step_window(timeline: &[(i64, Event)], name: &str) -> Option<(i64, i64)> {
    let start = timeline.iter().find_map(|(at, e)| match e {
        Event::StepStarted { step, .. } if step == name => Some(*at),
        _ => None,
    })?;
    let end = timeline.iter().find_map(|(at, e)| match e {
        Event::StepFinished { step, .. } if step == name => Some(*at),
        _ => None,
    })?;
    Some((start, end))
}

/// Each canary step, from when its weight was set to when the next one's was (or the canary
/// ended).
fn canary_windows(timeline: &[(i64, Event)]) -> Vec<(String, i64, i64)> {
    let mut starts: Vec<(String, i64)> = vec![];
    let mut end = None;
    for (at, e) in timeline {
        match e {
            Event::Detail {
                detail,
                status: None,
                text,
                ..
            } if detail.starts_with("traffic.canary.step.") => {
                starts.push((format!("{detail} ({text})"), *at));
            }
            Event::StepFinished { step, .. } if step == "traffic.canary" => end = Some(*at),
            _ => {}
        }
    }
    let end = end.unwrap_or_else(now_ms);
    (0..starts.len())
        .map(|i| {
            let to = starts.get(i + 1).map(|s| s.1).unwrap_or(end);
            (starts[i].0.clone(), starts[i].1, to)
        })
        .collect()
}

/// Time per phase: from its first step's start to its last step's end.
fn phase_times(timeline: &[(i64, Event)]) -> Vec<PhaseTime> {
    let mut out: Vec<(Phase, i64, i64)> = vec![];
    for (at, e) in timeline {
        let phase = match e {
            Event::StepStarted { phase, .. } | Event::StepFinished { phase, .. } => *phase,
            _ => continue,
        };
        match out.iter_mut().find(|(p, _, _)| *p == phase) {
            Some(x) => x.2 = *at,
            None => out.push((phase, *at, *at)),
        }
    }
    out.into_iter()
        .map(|(phase, a, b)| PhaseTime {
            phase,
            ms: (b - a).max(0) as u64,
        })
        .collect()
}
