//! `db switchover` and `db rollback`: one procedure, two directions.
//!
//! The old primary is `from`, the new one `to`. The direction of replication in force is the
//! *old* `Link` (`from` → `to`), the one the switch starts the *new* one (`to` → `from`);
//! native and trigger mode are two implementations of it (`link.rs`), so the procedure below is
//! written once. In order, each a journaled step, each a function of `Switch`:
//!
//! 1. **preconditions** (nothing changes if they fail): the proxy answers and is on `from`;
//!    the old direction is there, ready and close (`switchover.max_lag_mib`); the schemas are
//!    the same (`cutover_pg::drift`); the new one can
//!    start (the role on `from` may subscribe, in native mode); no application session on
//!    `from` bypasses the proxy (refused, listed, unless forced); the applications' roles can
//!    work on `to`. The fence is planned here, and the proxy's sessions log in to `to`.
//!    **ready**: the new primary gets planner statistics where a table has none and its
//!    materialized views refreshed (`cutover_pg::ready`); the large objects copied.
//!    **prepare_reverse** (native mode): the new direction's publication and its disabled
//!    subscription with its slot, the slow part of starting it, made before the pause.
//! 2. **pause** the proxy: new transactions wait.
//! 3. **drain**: running transactions finish (timeout: abort). Sessions holding state that
//!    cannot move must end first.
//! 4. **fence** `from`: every write privilege on the moved tables and sequences revoked, what
//!    was revoked written to the journal first (so any later run can undo it), then every
//!    session that is not the proxy's ended. Then, together, the **catch up** (everything
//!    `from` committed is on `to`) and the **unfence** of a fence an earlier switch left on
//!    `to`.
//! 5. **sequences** copied `from` → `to` (and the large objects changed since the copy
//!    before the pause) and, together, **reverse**: the new direction takes
//!    over (trigger mode: the triggers fire on `to`, not `from`), the old one stops, the new
//!    one starts after everything the old one applied.
//! 6. **switch** the proxy to `to`: **the point of no return**. The proxy writes its new
//!    backend to disk before moving any session, and resumes.
//! 7. **retire**, half a second later: the new direction applies, the old one is dropped.
//!
//! Before the switch every phase pushes the undo of what it did on one stack (`undo.rs`);
//! any failure or interruption pops it, newest first, and resumes the proxy on `from`, and a
//! guard does the same from its `Drop`, so a panic or a dropped future cannot leave clients
//! paused or `from` fenced. After the switch nothing is undone: the proxy stays on `to`, and
//! going back is `db rollback`, the same procedure the other way round.
//!
//! A run that cannot undo (killed outright) leaves traces the next run reads first
//! (`recover.rs`): with the proxy still on `from` it undoes them; with the proxy on `to` it
//! finishes instead.

mod checks;
mod link;
mod recover;
mod undo;

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use cutover_core::engine::Steps;
use cutover_core::Plan;
use cutover_pg::fence::{self, Fence};
use cutover_pg::inspect::{Sequence, Table};
use cutover_pg::{connect, sequences, PgError, Side};
use cutover_proxy::{Backend, Proxies};
use serde::Serialize;

pub use recover::undo_interrupted;

use link::{links, Clients, Link};
use undo::{push, undo_all, PausedProxy, Stack, Undo};

/// Which way the database moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Source → target.
    Switchover,
    /// Target → source.
    Rollback,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Switchover => "switchover",
            Direction::Rollback => "rollback",
        }
    }

    /// The old primary.
    fn from(self) -> Side {
        match self {
            Direction::Switchover => Side::Source,
            Direction::Rollback => Side::Target,
        }
    }
}

fn backend(side: Side) -> Backend {
    match side {
        Side::Source => Backend::Source,
        Side::Target => Backend::Target,
    }
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Go on although application sessions bypass the proxy (they are ended by the fence).
    pub force: bool,
    /// Switch without starting replication back into the old primary: no lossless rollback.
    pub no_reverse: bool,
    /// The roles applications log in as (the proxy's users); they must be able to read and
    /// write every moved table on the new primary. The users of the proxy's sessions are
    /// checked too.
    pub app_roles: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Admin(#[from] cutover_proxy::admin::AdminError),
    #[error(transparent)]
    Journal(#[from] cutover_core::JournalError),
    #[error("{0}")]
    Refused(String),
    #[error("interrupted")]
    Interrupted,
    /// The procedure failed and so did part of its undo: a person must look.
    #[error("{cause}; undoing it also failed: {undo}")]
    Undo { cause: String, undo: String },
}

/// The journal fact holding the fence of `side`.
fn fence_key(side: Side) -> String {
    format!("fence.{side}")
}

/// What a finished switch reports.
#[derive(Clone, Debug, Serialize)]
pub struct SwitchSummary {
    pub direction: Direction,
    /// The proxy was already on the new primary; nothing was done.
    pub already: bool,
    pub active: Backend,
    /// From pause to resume.
    pub pause_ms: f64,
    /// The longest a client request waited at the proxy during this pause.
    pub longest_client_wait_ms: f64,
    pub sessions_moved: usize,
    /// Native mode: the WAL position the fence marker was written at. Trigger mode: what
    /// the catch-up applied after the fence.
    pub fence_position: Option<String>,
    pub sequences: usize,
    pub reverse_replication: bool,
    pub steps: Vec<StepTime>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepTime {
    pub step: String,
    pub ms: f64,
}

/// How long after the switch the new direction starts applying and the old one is retired.
const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// One switch: what its phases share.
struct Switch<'a> {
    plan: &'a Plan,
    steps: &'a Steps<'a>,
    admin: &'a Proxies,
    options: &'a Options,
    direction: Direction,
    name: &'static str,
    from: Side,
    to: Side,
    old: Box<dyn Link>,
    new: Box<dyn Link>,
    c: Clients,
    stack: Stack,
    times: Mutex<Vec<StepTime>>,
}

/// What the preconditions found, for the phases after them.
struct Pre {
    tables_from: Vec<Table>,
    tables_to: Vec<Table>,
    sequences: Vec<Sequence>,
    /// What the fence will revoke, read before the pause. A grant made in between makes the
    /// fence fail its own check and the switch stop, never a fence with a hole.
    fence: Fence,
    /// Either side holds large objects: they are copied before the pause and, what changed,
    /// again inside it.
    large_objects: bool,
}

impl cutover_core::engine::Outcome for Pre {
    fn summary(&self) -> String {
        format!(
            "{} tables, {} sequences",
            self.tables_from.len(),
            self.sequences.len()
        )
    }
}

/// Runs the switch. `interrupt` resolves when the user asks to stop (Ctrl-C): before the
/// point of no return that undoes everything; after it, it is ignored.
pub async fn run(
    plan: &Plan,
    steps: &Steps<'_>,
    admin: &Proxies,
    direction: Direction,
    options: &Options,
    interrupt: impl Future<Output = ()>,
) -> Result<SwitchSummary, SwitchError> {
    let s = Switch::open(plan, steps, admin, direction, options).await?;
    let status = admin.status().await?;
    if status.active == backend(s.to) {
        // Switched already, perhaps by a run that died after the point of no return.
        return s.finish_switched(status.paused).await;
    }
    s.recover(status.paused).await?;
    let t = Instant::now();
    let pre = s
        .steps
        .run(
            &s.step("preconditions"),
            &format!(
                "check the proxy, the replication {} -> {}, the lag and the sessions on the {}",
                s.from, s.to, s.from
            ),
            || s.preconditions(),
        )
        .await?;
    s.time("preconditions", t);
    if let Err(cause) = s.ready(&pre).await {
        return Err(s.fail_before_pause(cause).await);
    }
    if let Err(cause) = s.prepare_reverse(&pre).await {
        return Err(s.fail_before_pause(cause).await);
    }
    let paused_at = Instant::now();
    if let Err(cause) = s
        .steps
        .run(
            &s.step("pause"),
            "hold new transactions at the proxy",
            || async { admin.pause().await.map(|_| ()).map_err(SwitchError::from) },
        )
        .await
    {
        return Err(s.fail_before_pause(cause).await);
    }
    let guard = PausedProxy {
        admin: admin.clone(),
        armed: true,
        stack: s.stack.clone(),
        plan: plan.clone(),
        direction,
        from: s.from,
        journal: plan.journal_path(),
        run: steps.run_id(),
    };
    s.time("pause", paused_at);
    let marker_id = cutover_core::journal::now_ms();
    let before_switch = async {
        let proxy_pids = s.drain().await?;
        s.fence(&pre, &proxy_pids).await?;
        let position = s.catch_up_and_unfence(&pre, marker_id).await?;
        s.sequences_and_reverse(&pre).await?;
        Ok::<_, SwitchError>(position)
    };
    let outcome = tokio::select! {
        r = before_switch => r,
        _ = interrupt => Err(SwitchError::Interrupted),
    };
    let position = match outcome {
        Ok(p) => p,
        Err(cause) => return Err(s.fail_paused(cause, guard).await),
    };
    let report = match s.switch().await {
        Ok(r) => r,
        Err(cause) => return Err(s.fail_paused(cause, guard).await),
    };
    guard.disarm();
    let pause_ms = paused_at.elapsed().as_secs_f64() * 1000.0;
    // The new direction starts and the old one is dropped once the released transactions
    // are through: both reach both servers, and nobody waits for them.
    tokio::time::sleep(RETIRE_AFTER).await;
    let t = Instant::now();
    s.steps
        .run(
            &s.step("retire"),
            &format!("{} applies; {} is retired", s.new.name(), s.old.name()),
            || s.after_switch(),
        )
        .await?;
    s.time("retire", t);
    let after = admin.status().await?;
    Ok(SwitchSummary {
        direction,
        already: false,
        active: report.active,
        pause_ms,
        longest_client_wait_ms: after.pause.last_pause_longest_hold_ms,
        sessions_moved: report.moved,
        fence_position: Some(position),
        sequences: pre.sequences.len(),
        reverse_replication: !options.no_reverse,
        steps: s.times.into_inner().unwrap(),
    })
}

impl<'a> Switch<'a> {
    async fn open(
        plan: &'a Plan,
        steps: &'a Steps<'a>,
        admin: &'a Proxies,
        direction: Direction,
        options: &'a Options,
    ) -> Result<Switch<'a>, SwitchError> {
        let from = direction.from();
        let (old, new) = links(plan, from);
        let c = Clients {
            source: connect(&plan.source.url, Side::Source).await?,
            target: connect(&plan.target.url, Side::Target).await?,
        };
        Ok(Switch {
            plan,
            steps,
            admin,
            options,
            direction,
            name: direction.name(),
            from,
            to: old.follower(),
            old,
            new,
            c,
            stack: Stack::default(),
            times: Mutex::new(vec![]),
        })
    }

    fn step(&self, what: &str) -> String {
        format!("{}.{what}", self.name)
    }

    fn time(&self, step: &str, started: Instant) {
        self.times.lock().unwrap().push(StepTime {
            step: step.to_string(),
            ms: started.elapsed().as_secs_f64() * 1000.0,
        });
    }

    async fn undo(&self) -> Result<(), String> {
        undo_all(
            self.steps,
            self.plan,
            self.direction,
            self.old.as_ref(),
            self.new.as_ref(),
            &self.c,
            &self.stack,
        )
        .await
    }

    /// A failure before the pause: undone, and the proxy told to go on (it was not paused,
    /// or its pause did not take).
    async fn fail_before_pause(&self, cause: SwitchError) -> SwitchError {
        let undone = self.undo().await;
        let _ = self.admin.resume().await;
        match undone {
            Ok(()) => cause,
            Err(u) => SwitchError::Undo {
                cause: cause.to_string(),
                undo: u,
            },
        }
    }

    /// A failure inside the pause: undone, then the proxy resumed on `from`.
    async fn fail_paused(&self, cause: SwitchError, guard: PausedProxy) -> SwitchError {
        let undone = self.undo().await;
        let resumed = guard.release().await;
        match (undone, resumed) {
            (Ok(()), Ok(())) => cause,
            (Err(u), _) => SwitchError::Undo {
                cause: cause.to_string(),
                undo: u,
            },
            (Ok(()), Err(r)) => SwitchError::Undo {
                cause: cause.to_string(),
                undo: format!("resume the proxy: {r}"),
            },
        }
    }

    /// Before the pause, what the new direction needs to start quickly (native mode).
    async fn prepare_reverse(&self, pre: &Pre) -> Result<(), SwitchError> {
        if self.options.no_reverse {
            return Ok(());
        }
        let Some(does) = self.new.prepares() else {
            return Ok(());
        };
        let t = Instant::now();
        push(&self.stack, Undo::NewStarted);
        self.steps
            .run(&self.step("prepare_reverse"), &does, || {
                self.new.prepare(&self.c, &pre.tables_to)
            })
            .await?;
        self.time("prepare_reverse", t);
        Ok(())
    }

    /// Waits for the running transactions; returns the server pids of the proxy's sessions
    /// on `from`, which the fence leaves alone.
    async fn drain(&self) -> Result<Vec<i32>, SwitchError> {
        let t = Instant::now();
        let timeout = self.plan.switchover.drain_timeout;
        let drained = self
            .steps
            .run(
                &self.step("drain"),
                &format!("wait up to {}s for running transactions", timeout.as_secs()),
                || async {
                    self.admin.drain(timeout).await.map_err(|err| match err {
                        cutover_proxy::admin::AdminError::Refused { message, .. } => {
                            SwitchError::Refused(format!(
                                "{message}; nothing was changed, the proxy resumed on the {}",
                                self.from
                            ))
                        }
                        other => other.into(),
                    })
                },
            )
            .await?;
        self.time("drain", t);
        Ok(drained.server_pids(backend(self.from)))
    }

    /// `from` fenced: its write privileges revoked (written to the journal first, so any
    /// later run can undo it), then every session that is not the proxy's ended.
    async fn fence(&self, pre: &Pre, proxy_pids: &[i32]) -> Result<(), SwitchError> {
        let t = Instant::now();
        let f = &pre.fence;
        let from = self.c.on(self.from);
        self.steps
            .run(
                &self.step("fence"),
                &format!(
                    "revoke {} write privileges on the {} and end every session that is not the proxy's",
                    f.revoked.len(),
                    self.from
                ),
                || async {
                    let text = serde_json::to_string(f).expect("a fence serializes");
                    self.steps
                        .journal()
                        .set_fact(&fence_key(self.from), Some(&text))?;
                    push(&self.stack, Undo::FromFenced(f.clone()));
                    fence::apply_fence(from, self.from, f).await?;
                    let others = fence::other_sessions(from, self.from, proxy_pids).await?;
                    let pids: Vec<i32> = others
                        .iter()
                        .filter(|s| !fence::is_control_session(s))
                        .map(|s| s.pid)
                        .collect();
                    let ended = fence::terminate(from, self.from, &pids).await?;
                    Ok::<_, SwitchError>(format!(
                        "{} privileges revoked, {ended} sessions ended",
                        f.revoked.len()
                    ))
                },
            )
            .await?;
        self.time("fence", t);
        Ok(())
    }

    /// Everything `from` committed reaches `to`; meanwhile `to` gets back the write
    /// privileges an earlier switch fenced there (never before `from` is fenced: no moment
    /// with two writable primaries), so the sequences and the new direction can write there.
    async fn catch_up_and_unfence(&self, pre: &Pre, marker_id: i64) -> Result<String, SwitchError> {
        let t = Instant::now();
        let (name, intent) = (
            self.step("catch_up"),
            format!(
                "write a marker on the {} after the fence and wait for it on the {}",
                self.from, self.to
            ),
        );
        let catch_up = self.steps.run(&name, &intent, || {
            self.old
                .catch_up(&self.c, self.plan, &pre.tables_from, marker_id)
        });
        let position = if self.new.prepares().is_none() {
            // Trigger mode's catch-up writes on a fenced `to` by granting itself privileges for
            // the length of its transaction and revoking them after: with the unfence
            // alongside, that revoke could take back a privilege the unfence just gave.
            let position = catch_up.await?;
            self.unfence_to().await?;
            position
        } else {
            let (caught_up, unfenced) = tokio::join!(catch_up, self.unfence_to());
            unfenced?;
            caught_up?
        };
        self.time("catch_up", t);
        Ok(position)
    }

    async fn unfence_to(&self) -> Result<(), SwitchError> {
        let journal = self.steps.journal();
        let Some(text) = journal.fact(&fence_key(self.to))? else {
            return Ok(());
        };
        let earlier: Fence = serde_json::from_str(&text).map_err(|err| {
            SwitchError::Refused(format!("the journal's fence of the {}: {err}", self.to))
        })?;
        self.steps
            .run(
                &self.step("unfence"),
                &format!(
                    "give the {} back its {} write privileges",
                    self.to,
                    earlier.revoked.len()
                ),
                || async {
                    fence::unfence(self.c.on(self.to), self.to, &earlier).await?;
                    push(&self.stack, Undo::ToUnfenced(earlier.clone()));
                    journal.set_fact(&fence_key(self.to), None)?;
                    Ok::<_, SwitchError>(())
                },
            )
            .await
    }

    /// Everything is on `to` now. The sequences and the change of direction touch different
    /// objects: they run together.
    async fn sequences_and_reverse(&self, pre: &Pre) -> Result<(), SwitchError> {
        let t = Instant::now();
        let (seq_name, seq_intent) = (
            self.step("sequences"),
            format!(
                "copy {} sequences {} -> {}",
                pre.sequences.len(),
                self.from,
                self.to
            ),
        );
        let (rev_name, rev_intent) = (
            self.step("reverse"),
            format!(
                "stop {} and start {} ({} -> {})",
                self.old.name(),
                self.new.name(),
                self.to,
                self.from
            ),
        );
        let sequences = self.steps.run(&seq_name, &seq_intent, || async {
            let v = sequences::copy_sequences(
                self.c.on(self.from),
                self.from,
                self.c.on(self.to),
                self.to,
                &pre.sequences,
            )
            .await?;
            Ok::<_, SwitchError>(format!("{} sequences copied", v.len()))
        });
        let reverse = self.steps.run(&rev_name, &rev_intent, || self.reverse(pre));
        // Nothing writes `from` any more: what changed since the copy before the pause.
        let large_objects = async {
            if !pre.large_objects {
                return Ok(());
            }
            self.steps
                .run(
                    &self.step("large_objects"),
                    &format!(
                        "copy the large objects that changed {} -> {}",
                        self.from, self.to
                    ),
                    || async { Ok::<_, SwitchError>(self.copy_large_objects().await?) },
                )
                .await
                .map(|_| ())
        };
        let (copied, reversed, objects) = tokio::join!(sequences, reverse, large_objects);
        copied?;
        reversed?;
        objects?;
        self.time("sequences_reverse", t);
        Ok(())
    }

    /// The new direction takes over, the old one stops, the new one starts after everything
    /// the old one applied.
    async fn reverse(&self, pre: &Pre) -> Result<String, SwitchError> {
        let mut done = vec![];
        if self
            .new
            .take_over(&self.c, &pre.tables_to, &pre.tables_from)
            .await?
        {
            push(&self.stack, Undo::TookOver);
            done.push(format!(
                "the {}'s triggers fire, the {}'s do not",
                self.to, self.from
            ));
        }
        if self.old.stop(&self.c).await? {
            push(&self.stack, Undo::OldStopped);
            done.push(format!("{} stopped", self.old.name()));
        }
        if self.options.no_reverse {
            done.push("no replication back (--no-reverse)".into());
        } else {
            if self.new.prepares().is_none() {
                push(&self.stack, Undo::NewStarted);
            }
            done.push(self.new.start(&self.c, &pre.tables_to).await?);
        }
        Ok(done.join("; "))
    }

    /// The point of no return: every session moves to `to` and the held transactions go on.
    async fn switch(&self) -> Result<cutover_proxy::SwitchReport, SwitchError> {
        let t = Instant::now();
        let to = backend(self.to);
        let report = self
            .steps
            .run(
                &self.step("switch"),
                &format!(
                    "move every proxy session to the {} and let the held transactions go on (point of no return)",
                    self.to
                ),
                || async {
                    match self.admin.switch_and_resume(to).await {
                        Ok(r) => Ok(r),
                        Err(err) => {
                            // The answer may have been lost after the proxy switched.
                            match self.admin.status().await {
                                Ok(s) if s.active == to => {
                                    if s.paused {
                                        self.admin.resume().await?;
                                    }
                                    Ok(cutover_proxy::SwitchReport {
                                        active: s.active,
                                        epoch: s.epoch,
                                        moved: s.sessions.len(),
                                        failed: vec![],
                                        already: false,
                                    })
                                }
                                _ => Err(SwitchError::from(err)),
                            }
                        }
                    }
                },
            )
            .await?;
        self.time("switch", t);
        Ok(report)
    }

    /// After the switch: the new direction applies, the old one is retired.
    async fn after_switch(&self) -> Result<(), SwitchError> {
        self.new.go(&self.c).await?;
        self.old.retire(&self.c).await?;
        Ok(())
    }
}
