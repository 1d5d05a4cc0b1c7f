//! The switch's one undo stack. Each phase before the point of no return pushes the undo of
//! what it did; any failure, an interruption, a panic or a dropped future pops them, newest
//! first, and resumes the proxy on the old primary.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cutover_core::engine::Steps;
use cutover_core::journal::RunId;
use cutover_core::{Journal, Plan};
use cutover_pg::fence::{self, Fence};
use cutover_pg::{connect, Side};
use cutover_proxy::Proxies;

use super::link::{links, Clients, Link};
use super::{fence_key, Direction, SwitchError};

/// The undo of one thing done before the switch.
#[derive(Clone, Debug)]
pub(super) enum Undo {
    /// The new direction was prepared or started: take it down.
    NewStarted,
    /// `from` was fenced with this: lift it (and forget it in the journal).
    FromFenced(Fence),
    /// `to`'s fence of an earlier switch was lifted: put it back (and remember it).
    ToUnfenced(Fence),
    /// The new direction's origin took over in its mode's terms: hand back.
    TookOver,
    /// The old direction was stopped: start it again.
    OldStopped,
}

/// Shared with the guard, which may have to undo from its `Drop`.
pub(super) type Stack = Arc<Mutex<Vec<Undo>>>;

pub(super) fn push(stack: &Stack, undo: Undo) {
    stack.lock().unwrap().push(undo);
}

/// Pops and undoes everything, newest first, as one journaled step. Every part is tried; the
/// failures are joined into one message that says what is left to do by hand.
#[allow(clippy::too_many_arguments)]
pub(super) async fn undo_all(
    steps: &Steps<'_>,
    plan: &Plan,
    direction: Direction,
    old: &dyn Link,
    new: &dyn Link,
    c: &Clients,
    stack: &Stack,
) -> Result<(), String> {
    let todo: Vec<Undo> = std::mem::take(&mut *stack.lock().unwrap());
    if todo.is_empty() {
        return Ok(());
    }
    let (from, to) = (old.origin(), old.follower());
    let journal = steps.journal();
    let step = format!("{}.undo", direction.name());
    steps
        .run(&step, "undo what was done before the switch", || async {
            let mut failures = vec![];
            for u in todo.iter().rev() {
                let done = match u {
                    Undo::NewStarted => new
                        .take_down(c, plan)
                        .await
                        .map_err(|e| format!("take down {}: {e}", new.name())),
                    Undo::TookOver => new
                        .hand_back(c, plan)
                        .await
                        .map_err(|e| format!("hand the triggers back: {e}")),
                    Undo::OldStopped => old
                        .restart(c)
                        .await
                        .map_err(|e| format!("start {} again: {e}", old.name())),
                    Undo::ToUnfenced(f) => {
                        let text = serde_json::to_string(f).expect("a fence serializes");
                        match journal.set_fact(&fence_key(to), Some(&text)) {
                            Err(e) => Err(format!("journal: {e}")),
                            Ok(()) => fence::apply_fence(c.on(to), to, f)
                                .await
                                .map_err(|e| format!("fence the {to} again: {e}")),
                        }
                    }
                    Undo::FromFenced(f) => match fence::unfence(c.on(from), from, f).await {
                        Ok(()) => journal
                            .set_fact(&fence_key(from), None)
                            .map_err(|e| format!("journal: {e}")),
                        Err(e) => Err(format!(
                            "unfence the {from}: {e} (the revoked privileges are in the journal; run the command again to retry)"
                        )),
                    },
                };
                if let Err(e) = done {
                    failures.push(e);
                }
            }
            if failures.is_empty() {
                Ok(format!("the {from} takes writes again"))
            } else {
                Err(SwitchError::Refused(failures.join("; ")))
            }
        })
        .await
        .map(|_: String| ())
        .map_err(|e| e.to_string())
}

/// Undoes and resumes the proxy when dropped unless released: a panic or a cancelled future
/// (the caller gave up on the run) leaves the old primary unfenced and serving, exactly as
/// an error does.
pub(super) struct PausedProxy {
    pub admin: Proxies,
    pub armed: bool,
    pub stack: Stack,
    pub plan: Plan,
    pub direction: Direction,
    pub from: Side,
    pub journal: PathBuf,
    pub run: RunId,
}

impl PausedProxy {
    pub async fn release(mut self) -> Result<(), SwitchError> {
        self.armed = false;
        self.admin.resume().await?;
        Ok(())
    }

    /// The proxy resumed by itself (the switch ends the pause): nothing left to do.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for PausedProxy {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (stack, plan, direction, from, journal, run) = (
            self.stack.clone(),
            self.plan.clone(),
            self.direction,
            self.from,
            self.journal.clone(),
            self.run,
        );
        // The future that owned the switch is gone: the undo runs on a runtime of its own.
        let undone = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let journal = Journal::open(&journal).map_err(|e| e.to_string())?;
                let steps = Steps::new(&journal, run, &|_| {});
                let c = Clients {
                    source: connect(&plan.source.url, Side::Source)
                        .await
                        .map_err(|e| e.to_string())?,
                    target: connect(&plan.target.url, Side::Target)
                        .await
                        .map_err(|e| e.to_string())?,
                };
                let (old, new) = links(&plan, from);
                undo_all(
                    &steps,
                    &plan,
                    direction,
                    old.as_ref(),
                    new.as_ref(),
                    &c,
                    &stack,
                )
                .await
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the undo panicked".into()));
        if let Err(e) = undone {
            tracing::error!(
                "undoing the interrupted switch: {e}; run the command again to finish the undo"
            );
        }
        if let Err(e) = self.admin.resume_blocking() {
            tracing::error!(
                "could not resume the proxies through {}: {e}; run `cutover db switchover` again, which resumes them first",
                self.admin.describe()
            );
        }
    }
}
