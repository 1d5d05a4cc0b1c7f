//! `cutover finish`: after the rollback window, the finish phase on its own (replication cut,
//! both sides cleaned up, the decommission checklist), when `apply` did not run it.

use cutover_core::journal::now_ms;
use cutover_core::{Journal, Plan};

use super::apply::{drive, finish_run, Applied, Approver, Options};
use super::events::Event;
use super::lock::Lock;
use super::run::Run;
use super::runbook::Runbook;
use super::state::{DoneStep, MigrationState, RunState};
use super::{MigrationError, Phase};

#[derive(Clone, Debug, Default)]
pub struct FinishOptions {
    /// Finish inside the rollback window.
    pub force: bool,
    pub yes: bool,
}

pub async fn finish(
    plan: &Plan,
    journal: &Journal,
    options: &FinishOptions,
    events: &(dyn Fn(Event) + Send + Sync),
    approve: Approver<'_>,
) -> Result<Applied, MigrationError> {
    let runbook = Runbook::of(plan);
    let Some(mut s) = MigrationState::load(journal)? else {
        return Err(MigrationError::refused(
            "nothing to finish: no migration has started here (`cutover apply` starts one)",
        ));
    };
    match s.state {
        RunState::Finished => {
            return Ok(Applied {
                attempt: s.attempt,
                state: s.state,
                phase: s.phase,
                step: s.step,
                reason: Some("the migration is finished already".into()),
                waiting_for_approval: false,
            })
        }
        RunState::RolledBack | RunState::RollingBack => {
            return Err(MigrationError::refused(
                "nothing to finish: the migration was rolled back; `cutover apply` moves again, `cutover db cleanup` removes the sync",
            ))
        }
        _ => {}
    }
    let Some(done_ms) = s.done_ms else {
        return Err(MigrationError::refused(format!(
            "the move is not done yet{}: finish comes after the done phase and the rollback window (`cutover apply` takes it there)",
            s.step.as_deref().map(|x| format!(" (it is at {x}, {})", s.state.as_str())).unwrap_or_default()
        )));
    };
    let ends = done_ms + plan.migration.hold.as_millis() as i64;
    let left = ends - now_ms();
    if left > 0 && !options.force {
        return Err(MigrationError::refused(format!(
            "the rollback window ends at {} ({} from now); finish cuts the replication that makes a rollback lossless: wait, or pass --force",
            rfc3339(ends),
            humantime::format_duration(std::time::Duration::from_secs((left as u64).div_ceil(1000)))
        )));
    }
    let _lock = Lock::take_now(&plan.path, "finish")?;
    if !s.is_done("hold.window") {
        s.done.push(DoneStep {
            step: "hold.window".into(),
            outcome: if left > 0 {
                format!(
                    "closed early by `cutover finish --force` at {}",
                    rfc3339(now_ms())
                )
            } else {
                "the rollback window is over".into()
            },
            at_ms: now_ms(),
        });
    }
    s.state = RunState::Running;
    let done = s.done.len();
    let run = Run::begin(plan, journal, events, "finish", s, done)?;
    let watch = run.observer();
    let steps = run.steps(&watch);
    let cx = run.cx(&steps);
    let result = drive(
        &cx,
        &runbook,
        |step| step.phase() == Phase::Finish,
        &Options {
            yes: options.yes,
            until: None,
        },
        approve,
    )
    .await;
    finish_run(&cx, "finish", run.id, result)
}

pub(crate) fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}
