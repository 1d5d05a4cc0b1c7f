//! What a run that died left behind: read before anything else by the next run.
//!
//! With the proxy still on `from`, a run killed before its switch can have left `from`
//! fenced (its fence is in the journal), the proxy paused, the old direction stopped and the
//! new one started: all of that is undone, and `from` takes writes again. With the proxy
//! already on `to`, the run died after its point of no return: the next one finishes instead.

use cutover_core::engine::Steps;
use cutover_core::Plan;
use cutover_pg::fence::{self, Fence};
use cutover_proxy::Proxies;

use super::{backend, fence_key, Direction, Switch, SwitchError, SwitchSummary};

/// Undoes what a run of `direction` that died before its switch left behind, when the proxy
/// is still on that run's old primary. Returns false, having done nothing, when the switch
/// happened.
pub async fn undo_interrupted(
    plan: &Plan,
    steps: &Steps<'_>,
    admin: &Proxies,
    direction: Direction,
) -> Result<bool, SwitchError> {
    let options = super::Options::default();
    let s = Switch::open(plan, steps, admin, direction, &options).await?;
    let status = admin.status().await?;
    if status.active == backend(s.to) {
        return Ok(false);
    }
    s.recover(status.paused).await?;
    Ok(true)
}

impl Switch<'_> {
    /// The proxy is still on `from`: undoes what an earlier run left before its switch.
    pub(super) async fn recover(&self, paused: bool) -> Result<(), SwitchError> {
        let journal = self.steps.journal();
        let fenced = journal.fact(&fence_key(self.from))?;
        let new_started = self.new.exists(&self.c).await?;
        let old_stopped = self.old.stopped(&self.c).await?;
        if fenced.is_none() && !new_started && !old_stopped && !paused {
            return Ok(());
        }
        self.steps
            .run(
                &self.step("recover"),
                "undo what an earlier run left before its switch",
                || async {
                    if new_started {
                        self.new.take_down(&self.c, self.plan).await?;
                    }
                    // Trigger mode: `from`'s triggers fire again (a run killed between the
                    // swap and the new link's start leaves no other trace of the swap).
                    self.new.hand_back(&self.c, self.plan).await?;
                    if old_stopped {
                        self.old.restart(&self.c).await?;
                    }
                    if let Some(text) = &fenced {
                        let f: Fence = serde_json::from_str(text).map_err(|err| {
                            SwitchError::Refused(format!(
                                "the journal's fence of the {}: {err}",
                                self.from
                            ))
                        })?;
                        fence::unfence(self.c.on(self.from), self.from, &f).await?;
                        journal.set_fact(&fence_key(self.from), None)?;
                    }
                    self.admin.resume().await?;
                    Ok::<_, SwitchError>(format!("the {} takes writes again", self.from))
                },
            )
            .await?;
        Ok(())
    }

    /// The proxy is on `to` already: a run that died after the point of no return is
    /// finished (resume, the new direction applies, the old one is retired); else nothing.
    pub(super) async fn finish_switched(&self, paused: bool) -> Result<SwitchSummary, SwitchError> {
        if paused || self.old.exists(&self.c).await? {
            self.steps
                .run(
                    &self.step("finish"),
                    "finish a switch that an earlier run made but did not complete",
                    || async {
                        self.admin.resume().await?;
                        self.after_switch().await?;
                        Ok::<_, SwitchError>(
                            "resumed; the new direction runs, the old one is retired".to_string(),
                        )
                    },
                )
                .await?;
        } else {
            self.steps.skip(
                &self.step("preconditions"),
                &format!("the proxy is already on the {}", self.to),
            )?;
        }
        Ok(SwitchSummary {
            direction: self.direction,
            already: true,
            active: backend(self.to),
            pause_ms: 0.0,
            longest_client_wait_ms: 0.0,
            sessions_moved: 0,
            fence_position: None,
            sequences: 0,
            reverse_replication: false,
            steps: vec![],
        })
    }
}
