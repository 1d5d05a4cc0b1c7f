//! `db switchover` and `db rollback`: one procedure, two directions.
//!
//! The old primary is `from`, the new one `to`. In order, each a journaled step:
//!
//! 1. **preconditions** (nothing changes if they fail): the proxy answers and is on `from`;
//!    the replication `from` → `to` exists, every table is ready, the lag is under
//!    `switchover.max_lag_mib`; the reverse direction is possible (the role on `from` may
//!    create a subscription); no application session on `from` bypasses the proxy (refused,
//!    listed, unless forced). The fence marker table is put in place and published.
//! 2. **pause** the proxy: new transactions wait.
//! 3. **drain**: running transactions finish (timeout: abort). Sessions holding state that
//!    cannot move must end first.
//! 4. **fence** `from`: every write privilege on the moved tables and sequences revoked, what
//!    was revoked written to the journal first (so any later run can undo it), then every
//!    session that is not the proxy's ended.
//! 5. **catch up**: a marker row written on `from` after the fence, awaited on `to`.
//! 6. **sequences**: every sequence's `last_value`/`is_called` copied `from` → `to`.
//! 7. **reverse**: the replication `from` → `to` is stopped (on PostgreSQL 15 it would loop
//!    otherwise), then `to` → `from` started with no copy, so `from` keeps every later write.
//!    If `to` was fenced by an earlier switch, that fence is lifted.
//! 8. **switch** the proxy to `to`: **the point of no return**. The proxy writes its new
//!    backend to disk before moving any session.
//! 9. **resume**.
//!
//! Before the switch, any failure or interruption undoes what was done, newest first: the
//! reverse replication stopped, the old direction started again (nothing was written on
//! `from` since the fence, so nothing is missed), `to`'s fence restored, `from` unfenced,
//! and the proxy resumed on `from`. A guard resumes the proxy from its `Drop` too, so a
//! panic cannot leave clients paused. After the switch nothing is undone: the proxy stays
//! on `to`, and going back is `db rollback`, the same procedure the other way round.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cutover_core::engine::Steps;
use cutover_core::{ConnString, Plan};
use cutover_pg::fence::{self, Fence};
use cutover_pg::inspect::{self, Sequence, Table};
use cutover_pg::{connect, marker, replication, sequences, PgError, Side};
use cutover_proxy::{AdminClient, Backend};
use serde::Serialize;
use tokio_postgres::Client;

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

/// One end of a replication link: who publishes, who subscribes, and the names.
#[derive(Clone, Debug)]
struct Link {
    publication: String,
    subscription: String,
    slot: String,
}

/// The two databases as this direction sees them.
#[derive(Clone)]
struct Ends {
    from_side: Side,
    to_side: Side,
    from_url: ConnString,
    to_url: ConnString,
    /// How `from` reaches `to` for replication (the new direction).
    to_replication_url: ConnString,
    old: Link,
    new: Link,
    proxy_from: Backend,
    proxy_to: Backend,
    /// Trigger mode: the links of its own applier instead of subscriptions.
    trigger: bool,
    sync: cutover_core::plan::SyncSettings,
    old_t: cutover_pg::trigger::Link,
    new_t: cutover_pg::trigger::Link,
}

impl Ends {
    fn of(plan: &Plan, direction: Direction) -> Ends {
        let s = &plan.sync;
        let forward = Link {
            publication: s.publication(),
            subscription: s.subscription(),
            slot: s.slot(),
        };
        let reverse = Link {
            publication: s.reverse_publication(),
            subscription: s.reverse_subscription(),
            slot: s.reverse_slot(),
        };
        let trigger = plan.sync.mode == cutover_core::Mode::Trigger;
        let (fwd_t, rev_t) = (
            cutover_pg::sync::forward_link(plan),
            cutover_pg::sync::reverse_link(plan),
        );
        match direction {
            Direction::Switchover => Ends {
                trigger,
                sync: plan.sync.clone(),
                old_t: fwd_t,
                new_t: rev_t,
                from_side: Side::Source,
                to_side: Side::Target,
                from_url: plan.source.url.clone(),
                to_url: plan.target.url.clone(),
                to_replication_url: plan.target.replication_url.clone(),
                old: forward,
                new: reverse,
                proxy_from: Backend::Source,
                proxy_to: Backend::Target,
            },
            Direction::Rollback => Ends {
                trigger,
                sync: plan.sync.clone(),
                old_t: rev_t,
                new_t: fwd_t,
                from_side: Side::Target,
                to_side: Side::Source,
                from_url: plan.target.url.clone(),
                to_url: plan.source.url.clone(),
                to_replication_url: plan.source.replication_url.clone(),
                old: reverse,
                new: forward,
                proxy_from: Backend::Target,
                proxy_to: Backend::Source,
            },
        }
    }
}

fn fence_key(side: Side) -> String {
    format!("fence.{side}")
}

/// The fence an earlier switch left on the new primary, if any.
fn to_fence_pending(plan: &Plan, e: &Ends) -> Result<Option<String>, SwitchError> {
    let journal = cutover_core::Journal::open(&plan.journal_path())?;
    Ok(journal.fact(&fence_key(e.to_side))?)
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

/// What has been done before the switch, to be undone on failure.
#[derive(Default)]
struct Undo {
    from_fenced: Option<Fence>,
    to_unfenced: Option<Fence>,
    old_stopped: bool,
    new_started: bool,
    triggers_swapped: bool,
}

/// Undoes and resumes the proxy when dropped unless released: a panic or a cancelled
/// future (the caller gave up on the run) leaves the old primary unfenced and serving,
/// exactly as an error does.
struct PausedProxy {
    admin: AdminClient,
    armed: bool,
    undo: Arc<Mutex<Undo>>,
    ends: Ends,
    journal: std::path::PathBuf,
    run: cutover_core::journal::RunId,
    name: &'static str,
}

impl PausedProxy {
    async fn release(mut self) -> Result<(), SwitchError> {
        self.armed = false;
        self.admin.resume().await?;
        Ok(())
    }

    /// The proxy resumed by itself (the switch ends the pause): nothing left to do.
    fn disarm(mut self) {
        self.armed = false;
    }
}

/// How long after the switch the new direction starts (native mode) and the old one is
/// retired.
const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

impl Drop for PausedProxy {
    fn drop(&mut self) {
        if self.armed {
            let (undo, ends, journal, run, name) = (
                self.undo.clone(),
                self.ends.clone(),
                self.journal.clone(),
                self.run,
                self.name,
            );
            let undone = std::thread::spawn(move || -> Result<(), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    let journal =
                        cutover_core::Journal::open(&journal).map_err(|e| e.to_string())?;
                    let steps = Steps::new(&journal, run, &|_| {});
                    let from = connect(&ends.from_url, ends.from_side)
                        .await
                        .map_err(|e| e.to_string())?;
                    let to = connect(&ends.to_url, ends.to_side)
                        .await
                        .map_err(|e| e.to_string())?;
                    undo_all(&steps, &ends, &from, &to, &undo, name).await
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
                tracing::error!("could not resume the proxy: {e}; resume it with `curl -X POST -H 'Authorization: Bearer ...' http://{}/resume`", self.admin.addr);
            }
        }
    }
}

struct Pre {
    tables_from: Vec<Table>,
    tables_to: Vec<Table>,
    sequences: Vec<Sequence>,
    /// What the fence will revoke, read before the pause. A grant made in between makes
    /// the fence fail its own check and the switch stop, never a fence with a hole.
    fence: Fence,
}

/// Runs the switch. `interrupt` resolves when the user asks to stop (Ctrl-C): before the
/// point of no return that undoes everything; after it, it is ignored.
pub async fn run(
    plan: &Plan,
    steps: &Steps<'_>,
    admin: &AdminClient,
    direction: Direction,
    options: &Options,
    interrupt: impl Future<Output = ()>,
) -> Result<SwitchSummary, SwitchError> {
    let e = Ends::of(plan, direction);
    let name = direction.name();
    let times = Mutex::new(Vec::<StepTime>::new());
    let from = connect(&e.from_url, e.from_side).await?;
    let to = connect(&e.to_url, e.to_side).await?;

    // 1. Preconditions.
    let t = Instant::now();
    let status = admin.status().await?;
    if status.active == e.proxy_to {
        // Switched already, perhaps by a run that died after the point of no return:
        // finish what it left (resume, retire the old direction).
        let old_there = if e.trigger {
            cutover_pg::trigger::position(&to, e.to_side, &e.old_t.name)
                .await?
                .is_some()
        } else {
            subscription_exists(&to, e.to_side, &e.old.subscription).await?
        };
        if status.paused || old_there {
            steps
                .run(
                    &format!("{name}.finish"),
                    "finish a switch that an earlier run made but did not complete",
                    || async {
                        admin.resume().await?;
                        after_switch(&e, &from, &to).await?;
                        Ok::<_, SwitchError>(
                            "resumed; the new direction runs, the old one is retired".to_string(),
                        )
                    },
                )
                .await?;
        } else {
            steps.skip(
                &format!("{name}.preconditions"),
                &format!("the proxy is already on the {}", e.to_side),
            )?;
        }
        return Ok(SwitchSummary {
            direction,
            already: true,
            active: status.active,
            pause_ms: 0.0,
            longest_client_wait_ms: 0.0,
            sessions_moved: 0,
            fence_position: None,
            sequences: 0,
            reverse_replication: false,
            steps: vec![],
        });
    }
    recover(steps, &e, &from, &to, admin, name, status.paused).await?;
    let pre = steps
        .run(
            &format!("{name}.preconditions"),
            &format!(
                "check the proxy, the replication {} -> {}, the lag and the sessions on the {}",
                e.from_side, e.to_side, e.from_side
            ),
            || preconditions(plan, &e, &from, &to, admin, options),
        )
        .await
        .map_err(|p: SwitchError| p)?;
    push_time(&times, "preconditions", t);
    let undo = Arc::new(Mutex::new(Undo::default()));

    // Native mode: the reverse subscription and its slot are made now, disabled, so that
    // inside the pause starting it is a position and a flag (see
    // `replication::prepare_replication`).
    if !e.trigger && !options.no_reverse {
        let t = Instant::now();
        let mut tables = pre.tables_to.clone();
        tables.push(marker::table());
        undo.lock().unwrap().new_started = true;
        let prepared = steps
            .run(
                &format!("{name}.prepare_reverse"),
                &format!(
                    "create {} on the {} and, disabled, {} with its slot ({} -> {})",
                    e.new.publication, e.to_side, e.new.subscription, e.to_side, e.from_side
                ),
                || async {
                    replication::prepare_replication(
                        &to,
                        e.to_side,
                        &e.to_replication_url,
                        &from,
                        e.from_side,
                        &e.new.publication,
                        &e.new.subscription,
                        &e.new.slot,
                        &tables,
                    )
                    .await
                    .map_err(SwitchError::from)
                },
            )
            .await;
        if let Err(cause) = prepared {
            let _ = replication::stop_subscription(&from, e.from_side, &e.new.subscription).await;
            let _ = admin.resume().await;
            return Err(cause);
        }
        push_time(&times, "prepare_reverse", t);
    }

    // 2. Pause.
    let paused_at = Instant::now();
    let paused = steps
        .run(
            &format!("{name}.pause"),
            "hold new transactions at the proxy",
            || async { admin.pause().await.map(|_| ()).map_err(SwitchError::from) },
        )
        .await;
    if let Err(cause) = paused {
        let undone = undo_all(steps, &e, &from, &to, &undo, name).await;
        let _ = admin.resume().await;
        return Err(match undone {
            Ok(()) => cause,
            Err(u) => SwitchError::Undo {
                cause: cause.to_string(),
                undo: u,
            },
        });
    }
    let guard = PausedProxy {
        admin: admin.clone(),
        armed: true,
        undo: undo.clone(),
        ends: e.clone(),
        journal: plan.journal_path(),
        run: steps.run_id(),
        name,
    };
    push_time(&times, "pause", paused_at);

    let marker_id = cutover_core::journal::now_ms();
    let before_switch = async {
        let t = Instant::now();
        let drain_timeout = plan.switchover.drain_timeout;
        let drained = steps
            .run(
                &format!("{name}.drain"),
                &format!(
                    "wait up to {}s for running transactions",
                    drain_timeout.as_secs()
                ),
                || async {
                    admin.drain(drain_timeout).await.map_err(|err| match err {
                        cutover_proxy::admin::AdminError::Refused { message, .. } => {
                            SwitchError::Refused(format!(
                                "{message}; nothing was changed, the proxy resumed on the {}",
                                e.from_side
                            ))
                        }
                        other => other.into(),
                    })
                },
            )
            .await?;
        push_time(&times, "drain", t);
        let proxy_pids = drained.server_pids(e.proxy_from);

        // The fence of `from` first. Then, together (two servers, no shared object): the
        // catch-up, and on `to` the lifting of the fence an earlier switch left there. Never
        // before `from` is fenced: no moment with two writable primaries.
        let t = Instant::now();
        let plan_of_fence = pre.fence.clone();
        let fence_text = serde_json::to_string(&plan_of_fence).expect("a fence serializes");
        let journal = steps.journal();
        let earlier_fence: Option<Fence> = match journal.fact(&fence_key(e.to_side))? {
            Some(text) => Some(serde_json::from_str(&text).map_err(|err| {
                SwitchError::Refused(format!("the journal's fence of the {}: {err}", e.to_side))
            })?),
            None => None,
        };
        let fence_step = async {
            steps.run(
            &format!("{name}.fence"),
            &format!(
                "revoke {} write privileges on the {} and end every session that is not the proxy's",
                plan_of_fence.revoked.len(),
                e.from_side
            ),
            || async {
                journal.set_fact(&fence_key(e.from_side), Some(&fence_text))?;
                undo.lock().unwrap().from_fenced = Some(plan_of_fence.clone());
                fence::apply_fence(&from, e.from_side, &plan_of_fence).await?;
                let others = fence::other_sessions(&from, e.from_side, &proxy_pids).await?;
                let pids: Vec<i32> = others.iter().map(|s| s.pid).collect();
                let ended = fence::terminate(&from, e.from_side, &pids).await?;
                Ok::<_, SwitchError>(format!(
                    "{} privileges revoked, {ended} sessions ended",
                    plan_of_fence.revoked.len()
                ))
            },
        ).await
        };
        // The new primary takes writes again (its own earlier fence lifted) before anything
        // is written to it: the sequences, the reverse link's position.
        let unfence_step = async {
            let Some(earlier) = &earlier_fence else {
                return Ok::<_, SwitchError>(());
            };
            steps
                .run(
                    &format!("{name}.unfence"),
                    &format!(
                        "give the {} back its {} write privileges",
                        e.to_side,
                        earlier.revoked.len()
                    ),
                    || async {
                        fence::unfence(&to, e.to_side, earlier).await?;
                        undo.lock().unwrap().to_unfenced = Some(earlier.clone());
                        journal.set_fact(&fence_key(e.to_side), None)?;
                        Ok::<_, SwitchError>(())
                    },
                )
                .await
        };
        fence_step.await?;
        push_time(&times, "fence", t);

        let t = Instant::now();
        let catch_up_step = async {
            steps
                .run(
                    &format!("{name}.catch_up"),
                    &format!(
                        "write a marker on the {} after the fence and wait for it on the {}",
                        e.from_side, e.to_side
                    ),
                    || async {
                        if e.trigger {
                            return trigger_catch_up(
                                &e,
                                &pre.tables_from,
                                plan.switchover.catch_up_timeout,
                            )
                            .await;
                        }
                        let lsn = marker::write(&from, e.from_side, marker_id).await?;
                        marker::wait(&to, e.to_side, marker_id, plan.switchover.catch_up_timeout)
                            .await?;
                        Ok::<_, SwitchError>(lsn)
                    },
                )
                .await
        };
        let lsn = if e.trigger {
            // Trigger mode's catch-up writes on a fenced `to` by granting itself privileges
            // for the length of its transaction and revoking them after: with the unfence
            // alongside, that revoke could take back a privilege the unfence just gave.
            let lsn = catch_up_step.await?;
            unfence_step.await?;
            lsn
        } else {
            let (caught_up, unfenced) = tokio::join!(catch_up_step, unfence_step);
            unfenced?;
            caught_up?
        };
        push_time(&times, "catch_up", t);

        // Everything is on `to` now. The sequences and the change of direction touch
        // different objects: they run together too.
        let t = Instant::now();
        let sequences_step = async {
            steps
                .run(
                    &format!("{name}.sequences"),
                    &format!(
                        "copy {} sequences {} -> {}",
                        pre.sequences.len(),
                        e.from_side,
                        e.to_side
                    ),
                    || async {
                        let v = sequences::copy_sequences(
                            &from,
                            e.from_side,
                            &to,
                            e.to_side,
                            &pre.sequences,
                        )
                        .await?;
                        Ok::<_, SwitchError>(format!("{} sequences copied", v.len()))
                    },
                )
                .await
        };
        let reverse_step = async {
            steps
                .run(
                    &format!("{name}.reverse"),
                    &if e.trigger {
                        format!(
                    "triggers on for the {}, off for the {}; capture and link {} ({} -> {})",
                    e.to_side, e.from_side, e.new_t.name, e.to_side, e.from_side
                )
                    } else {
                        format!(
                            "stop {} and start {} ({} -> {})",
                            e.old.subscription, e.new.subscription, e.to_side, e.from_side
                        )
                    },
                    || async {
                        if e.trigger {
                            // The new primary's triggers fire (its capture among them); the old
                            // one's stop (its applied rows are neither captured nor events).
                            undo.lock().unwrap().triggers_swapped = true;
                            cutover_pg::trigger::set_user_triggers(
                                &to,
                                e.to_side,
                                &pre.tables_to,
                                true,
                            )
                            .await?;
                            cutover_pg::trigger::set_user_triggers(
                                &from,
                                e.from_side,
                                &pre.tables_from,
                                false,
                            )
                            .await?;
                            if options.no_reverse {
                                return Ok(format!(
                                    "{} stops; no replication back (--no-reverse)",
                                    e.old_t.name
                                ));
                            }
                            undo.lock().unwrap().new_started = true;
                            cutover_pg::trigger::start_link(&to, &from, &e.new_t, &pre.tables_to)
                                .await?;
                            return Ok(format!(
                                "capture on the {}, link {} started",
                                e.to_side, e.new_t.name
                            ));
                        }
                        // Disabled now, dropped after the resume: nothing is left for it to
                        // apply, and the drop (which reaches the other server) stays out of the pause.
                        replication::set_enabled(&to, e.to_side, &e.old.subscription, false)
                            .await?;
                        undo.lock().unwrap().old_stopped = true;
                        if options.no_reverse {
                            return Ok::<_, SwitchError>(format!(
                                "{} stopped; no replication back (--no-reverse)",
                                e.old.subscription
                            ));
                        }
                        // Every change `to` committed so far came from `from` (the old direction
                        // applied them, and no client reached `to` yet): the new direction starts
                        // after the last of them. Its slot keeps every later change; it is
                        // enabled after the resume (see `after_switch`), so that its start-up
                        // (a worker, a walsender, decoding since the slot was made) does not
                        // compete with the transactions the resume releases.
                        let start = fence::wal_position(&to, e.to_side).await?;
                        replication::set_start(&from, e.from_side, &e.new.subscription, &start)
                            .await?;
                        Ok(format!(
                            "{} disabled, {} to start at {start} of the {}",
                            e.old.subscription, e.new.subscription, e.to_side
                        ))
                    },
                )
                .await
        };
        let (copied, reversed) = tokio::join!(sequences_step, reverse_step);
        copied?;
        reversed?;
        push_time(&times, "sequences_reverse", t);

        Ok::<_, SwitchError>(lsn)
    };

    let outcome = tokio::select! {
        r = before_switch => r,
        _ = interrupt => Err(SwitchError::Interrupted),
    };
    let lsn = match outcome {
        Ok(lsn) => lsn,
        Err(cause) => {
            let undone = undo_all(steps, &e, &from, &to, &undo, name).await;
            let resumed = guard.release().await;
            return Err(match (undone, resumed) {
                (Ok(()), Ok(())) => cause,
                (Err(u), _) => SwitchError::Undo {
                    cause: cause.to_string(),
                    undo: u,
                },
                (Ok(()), Err(r)) => SwitchError::Undo {
                    cause: cause.to_string(),
                    undo: format!("resume the proxy: {r}"),
                },
            });
        }
    };

    // 8. The point of no return.
    let t = Instant::now();
    let switched = steps
        .run(
            &format!("{name}.switch"),
            &format!(
                "move every proxy session to the {} and let the held transactions go on (point of no return)",
                e.to_side
            ),
            || async {
                match admin.switch_and_resume(e.proxy_to).await {
                    Ok(r) => Ok(r),
                    Err(err) => {
                        // The answer may have been lost after the proxy switched.
                        match admin.status().await {
                            Ok(s) if s.active == e.proxy_to => {
                                if s.paused {
                                    admin.resume().await?;
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
        .await;
    let report = match switched {
        Ok(r) => r,
        Err(cause) => {
            let undone = undo_all(steps, &e, &from, &to, &undo, name).await;
            let resumed = guard.release().await;
            return Err(match (undone, resumed) {
                (Ok(()), Ok(())) => cause,
                (Err(u), _) => SwitchError::Undo {
                    cause: cause.to_string(),
                    undo: u,
                },
                (Ok(()), Err(r)) => SwitchError::Undo {
                    cause: cause.to_string(),
                    undo: format!("resume the proxy: {r}"),
                },
            });
        }
    };
    push_time(&times, "switch", t);
    guard.disarm();
    let pause_ms = paused_at.elapsed().as_secs_f64() * 1000.0;

    // The new direction starts and the old one is dropped once the released transactions
    // are through: both reach both servers, and nobody waits for them.
    tokio::time::sleep(RETIRE_AFTER).await;
    let t = Instant::now();
    steps
        .run(
            &format!("{name}.retire"),
            &if e.trigger {
                format!(
                    "retire link {} (a running `db follow` moves to the other direction)",
                    e.old_t.name
                )
            } else {
                format!(
                    "start {} on the {}; drop {} on the {} and its slot",
                    e.new.subscription, e.from_side, e.old.subscription, e.to_side
                )
            },
            || async { after_switch(&e, &from, &to).await },
        )
        .await?;
    push_time(&times, "retire", t);
    let after = admin.status().await?;
    Ok(SwitchSummary {
        direction,
        already: false,
        active: report.active,
        pause_ms,
        longest_client_wait_ms: after.pause.last_pause_longest_hold_ms,
        sessions_moved: report.moved,
        fence_position: Some(lsn),
        sequences: pre.sequences.len(),
        reverse_replication: !options.no_reverse,
        steps: times.into_inner().unwrap(),
    })
}

fn push_time(times: &Mutex<Vec<StepTime>>, step: &str, started: Instant) {
    times.lock().unwrap().push(StepTime {
        step: step.to_string(),
        ms: started.elapsed().as_secs_f64() * 1000.0,
    });
}

async fn preconditions(
    plan: &Plan,
    e: &Ends,
    from: &Client,
    to: &Client,
    admin: &AdminClient,
    options: &Options,
) -> Result<Pre, SwitchError> {
    let status = admin.status().await?;
    if status.active != e.proxy_from {
        return Err(SwitchError::Refused(format!(
            "the proxy is on the {}, not the {}",
            status.active, e.proxy_from
        )));
    }
    if e.trigger {
        trigger_preconditions(e, from, to).await?;
    } else {
        // The old direction: there, ready, caught up enough.
        let sub = replication::subscription_info(to, e.to_side, &e.old.subscription).await?;
        let Some(sub) = sub else {
            return Err(SwitchError::Refused(match e.to_side {
                Side::Target => format!(
                    "the target has no subscription {}: nothing follows the source; run `cutover db sync` first",
                    e.old.subscription
                ),
                Side::Source => format!(
                    "the source has no subscription {}: nothing carries the target's writes back, so a rollback would lose them; it is made by `cutover db switchover` (without --no-reverse)",
                    e.old.subscription
                ),
            }));
        };
        let (enabled, not_ready) = (sub.enabled, sub.not_ready);
        if !enabled {
            return Err(SwitchError::Refused(format!(
                "subscription {} on the {} is disabled; enable it (ALTER SUBSCRIPTION {} ENABLE) and let it catch up",
                e.old.subscription, e.to_side, e.old.subscription
            )));
        }
        if not_ready > 0 {
            return Err(SwitchError::Refused(format!(
                "{not_ready} tables are still being copied into the {}; wait until `cutover db status` shows every table ready",
                e.to_side
            )));
        }
        // A subscription enabled a moment ago (a sync's last step re-enables it) has no apply
        // worker until the launcher starts one, up to 5 s later: the catch-up inside the pause
        // would wait for it, and every client with it.
        let started = Instant::now();
        while !replication::apply_worker_running(to, e.to_side, &e.old.subscription).await? {
            if started.elapsed() > WORKER_WAIT {
                return Err(SwitchError::Refused(format!(
                    "subscription {} on the {} has no apply worker running after {}s; read the {} server's log (`cutover db status` shows its errors)",
                    e.old.subscription,
                    e.to_side,
                    WORKER_WAIT.as_secs(),
                    e.to_side
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let lag = replication::slot_lag(from, e.from_side, &e.old.slot).await?;
        let Some(lag) = lag else {
            return Err(SwitchError::Refused(format!(
                "the {} has no replication slot {}; the subscription is not following it",
                e.from_side, e.old.slot
            )));
        };
        if lag as u64 > plan.switchover.max_lag_bytes {
            return Err(SwitchError::Refused(format!(
                "the {} is {} bytes behind, over switchover.max_lag_mib ({} MiB); wait for it to catch up (`cutover db status --watch`)",
                e.to_side,
                lag,
                plan.switchover.max_lag_bytes / (1024 * 1024)
            )));
        }
        if !options.no_reverse {
            replication::can_subscribe(from, e.from_side).await.map_err(|err| {
                SwitchError::Refused(format!(
                    "{err}; or pass --no-reverse to switch without replication back (a rollback would then lose the writes made after the switch)"
                ))
            })?;
        }
    }
    // Nobody writes to `from` behind the proxy's back.
    let proxy_pids = status.server_pids(e.proxy_from);
    // cutover's own sessions (trigger mode's applier reads the old primary, a migration's
    // checks come and go) are not applications; the fence's terminations only make them
    // reconnect.
    let others: Vec<_> = fence::other_sessions(from, e.from_side, &proxy_pids)
        .await?
        .into_iter()
        .filter(|s| !fence::is_cutover_session(s))
        .collect();
    if !others.is_empty() && !options.force {
        let list: Vec<String> = others
            .iter()
            .map(|s| {
                format!(
                    "pid {} user {} from {} ({})",
                    s.pid,
                    s.user,
                    s.client_addr.as_deref().unwrap_or("local socket"),
                    if s.application_name.is_empty() {
                        "no application_name"
                    } else {
                        &s.application_name
                    }
                )
            })
            .collect();
        return Err(SwitchError::Refused(format!(
            "{} sessions on the {} do not go through the proxy: {}; point them at the proxy, or pass --force to end them at the fence",
            others.len(),
            e.from_side,
            list.join("; ")
        )));
    }
    let tables_from = inspect::tables(from, e.from_side, &plan.sync).await?;
    let tables_to = inspect::tables(to, e.to_side, &plan.sync).await?;
    let sequences = inspect::sequences(from, e.from_side, &plan.sync).await?;
    // The applications can work on the new primary (pg_dump's copy carries no grants). A
    // side fenced by an earlier switch gets its exact grants back before the switch.
    if to_fence_pending(plan, e)?.is_none() {
        let mut roles: Vec<String> = options.app_roles.clone();
        roles.extend(status.sessions.iter().map(|s| s.user.clone()));
        roles.sort();
        roles.dedup();
        let names: Vec<String> = tables_to.iter().map(|t| t.qualified()).collect();
        let seqs: Vec<String> = inspect::sequences(to, e.to_side, &plan.sync)
            .await?
            .iter()
            .map(|s| cutover_pg::qualified(&s.schema, &s.name))
            .collect();
        let rows = cutover_pg::grants::missing(to, e.to_side, &roles, &names, &seqs).await?;
        if !rows.is_empty() {
            let list: Vec<String> = rows
                .iter()
                .map(|(role, what)| {
                    if what.is_empty() {
                        format!(
                            "role {role} does not exist (CREATE ROLE {role} LOGIN PASSWORD ...)"
                        )
                    } else {
                        format!("role {role} cannot read and write {what}")
                    }
                })
                .collect();
            return Err(SwitchError::Refused(format!(
                "the applications could not work on the {}: {}; grant it there, e.g. GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO <role>; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO <role>",
                e.to_side,
                list.join("; ")
            )));
        }
    }
    if !e.trigger {
        marker::ensure(from, e.from_side).await?;
        marker::ensure(to, e.to_side).await?;
        marker::publish(
            from,
            e.from_side,
            &e.old.publication,
            to,
            e.to_side,
            &e.old.subscription,
        )
        .await?;
    }
    let fence = fence::plan_fence(from, e.from_side, &tables_from, &sequences).await?;
    // Sessions log in to the new primary now, so the pause only swaps connections.
    admin.prepare(e.proxy_to).await?;
    Ok(Pre {
        tables_from,
        tables_to,
        sequences,
        fence,
    })
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

/// How long the preconditions wait for the old direction's apply worker to run.
const WORKER_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Changes waiting beyond which a trigger-mode switch does not start: the catch-up inside
/// the pause would be long.
const MAX_BACKLOG: i64 = 50_000;

async fn trigger_preconditions(e: &Ends, from: &Client, to: &Client) -> Result<(), SwitchError> {
    if cutover_pg::trigger::position(to, e.to_side, &e.old_t.name)
        .await?
        .is_none()
    {
        return Err(SwitchError::Refused(match e.to_side {
            Side::Target => format!(
                "the target follows nothing yet (no position for {}); run `cutover db sync`",
                e.old_t.name
            ),
            Side::Source => format!(
                "the source does not follow the target (no position for {}); it is started by `cutover db switchover` (without --no-reverse)",
                e.old_t.name
            ),
        }));
    }
    let backlog = cutover_pg::trigger::backlog(from, to, &e.old_t).await?;
    if backlog.changes > MAX_BACKLOG {
        return Err(SwitchError::Refused(format!(
            "{} changes wait to be applied to the {} (more than {MAX_BACKLOG}); let `cutover db follow` catch up first (`cutover db status`)",
            backlog.changes, e.to_side
        )));
    }
    Ok(())
}

/// After the switch: starts the new direction where it waits to be enabled (native mode),
/// then ends the old one: the subscription and its slot, or the trigger link's position (a
/// running `db follow` notices and follows the new direction).
async fn after_switch(e: &Ends, from: &Client, to: &Client) -> Result<(), SwitchError> {
    if !e.trigger {
        // Native mode: the reverse subscription, prepared and positioned inside the pause,
        // starts now (a no-op with --no-reverse, when there is none, or when it runs).
        if let Some(sub) =
            replication::subscription_info(from, e.from_side, &e.new.subscription).await?
        {
            if !sub.enabled {
                replication::set_enabled(from, e.from_side, &e.new.subscription, true).await?;
            }
        }
    }
    if e.trigger {
        cutover_pg::trigger::retire(to, e.to_side, &e.old_t.name).await?;
    } else {
        replication::stop_subscription(to, e.to_side, &e.old.subscription).await?;
    }
    Ok(())
}

/// Trigger mode: back to "`from` is the primary": its triggers on, `to`'s off.
async fn swap_back_triggers(e: &Ends, from: &Client, to: &Client) -> Result<(), PgError> {
    let from_tables = cutover_pg::inspect::tables(from, e.from_side, &e.sync).await?;
    let to_tables = cutover_pg::inspect::tables(to, e.to_side, &e.sync).await?;
    cutover_pg::trigger::set_user_triggers(to, e.to_side, &to_tables, false).await?;
    cutover_pg::trigger::set_user_triggers(from, e.from_side, &from_tables, true).await
}

/// Trigger mode's catch-up after the fence: one batch applies every change the old
/// primary committed (its snapshot is taken after the fence); the next must find none.
async fn trigger_catch_up(
    e: &Ends,
    tables_from: &[Table],
    timeout: std::time::Duration,
) -> Result<String, SwitchError> {
    let started = Instant::now();
    let mut applier = cutover_pg::trigger::Applier::open(&e.old_t, tables_from).await?;
    let mut applied = 0u64;
    loop {
        let Some(batch) = applier.apply_once().await? else {
            return Err(SwitchError::Refused(format!(
                "link {} was retired while the switch waited for it",
                e.old_t.name
            )));
        };
        if batch.changes == 0 {
            return Ok(format!("{applied} changes applied after the fence"));
        }
        applied += batch.changes;
        if started.elapsed() > timeout {
            return Err(SwitchError::Refused(format!(
                "the {} did not apply the writes made before the fence within {}s",
                e.to_side,
                timeout.as_secs()
            )));
        }
    }
}

async fn subscription_exists(client: &Client, side: Side, name: &str) -> Result<bool, SwitchError> {
    Ok(replication::subscription_info(client, side, name)
        .await?
        .is_some())
}

/// Undoes what a run of `direction` that died before its switch left behind (the fence, a
/// paused proxy, a half-started reverse direction), when the proxy is still on that run's
/// old primary. Returns false, having done nothing, when the switch happened.
pub async fn undo_interrupted(
    plan: &Plan,
    steps: &Steps<'_>,
    admin: &AdminClient,
    direction: Direction,
) -> Result<bool, SwitchError> {
    let e = Ends::of(plan, direction);
    let status = admin.status().await?;
    if status.active == e.proxy_to {
        return Ok(false);
    }
    let from = connect(&e.from_url, e.from_side).await?;
    let to = connect(&e.to_url, e.to_side).await?;
    recover(
        steps,
        &e,
        &from,
        &to,
        admin,
        direction.name(),
        status.paused,
    )
    .await?;
    Ok(true)
}

/// A run that died before the switch (killed, machine lost) can leave the old primary
/// fenced, the proxy paused, the old direction disabled and the reverse one started. The
/// proxy is still on `from`, so all of that is undone before anything else.
async fn recover(
    steps: &Steps<'_>,
    e: &Ends,
    from: &Client,
    to: &Client,
    admin: &AdminClient,
    name: &str,
    paused: bool,
) -> Result<(), SwitchError> {
    let journal = steps.journal();
    let fenced = journal.fact(&fence_key(e.from_side))?;
    let new_started = if e.trigger {
        cutover_pg::trigger::position(from, e.from_side, &e.new_t.name)
            .await?
            .is_some()
    } else {
        subscription_exists(from, e.from_side, &e.new.subscription).await?
    };
    let old_disabled = replication::subscription_info(to, e.to_side, &e.old.subscription)
        .await?
        .is_some_and(|s| !s.enabled);
    if fenced.is_none() && !new_started && !old_disabled && !paused {
        return Ok(());
    }
    steps
        .run(
            &format!("{name}.recover"),
            "undo what an earlier run left before its switch",
            || async {
                if new_started && e.trigger {
                    cutover_pg::trigger::retire(from, e.from_side, &e.new_t.name).await?;
                    swap_back_triggers(e, from, to).await?;
                } else if new_started {
                    replication::stop_subscription(from, e.from_side, &e.new.subscription).await?;
                }
                if old_disabled {
                    replication::set_enabled(to, e.to_side, &e.old.subscription, true).await?;
                }
                if let Some(text) = &fenced {
                    let f: Fence = serde_json::from_str(text).map_err(|err| {
                        SwitchError::Refused(format!(
                            "the journal's fence of the {}: {err}",
                            e.from_side
                        ))
                    })?;
                    fence::unfence(from, e.from_side, &f).await?;
                    journal.set_fact(&fence_key(e.from_side), None)?;
                }
                admin.resume().await?;
                Ok::<_, SwitchError>(format!("the {} takes writes again", e.from_side))
            },
        )
        .await?;
    Ok(())
}

/// Undoes, newest first, what was done before the switch. Every part is tried; the
/// failures are joined into one message that says what is left to do by hand.
async fn undo_all(
    steps: &Steps<'_>,
    e: &Ends,
    from: &Client,
    to: &Client,
    undo: &Mutex<Undo>,
    name: &str,
) -> Result<(), String> {
    let (from_fenced, to_unfenced, old_stopped, new_started, triggers_swapped) = {
        let u = undo.lock().unwrap();
        (
            u.from_fenced.clone(),
            u.to_unfenced.clone(),
            u.old_stopped,
            u.new_started,
            u.triggers_swapped,
        )
    };
    let journal = steps.journal();
    let mut failures = vec![];
    let step = format!("{name}.undo");
    let r = steps
        .run(&step, "undo what was done before the switch", || async {
            if e.trigger {
                if new_started {
                    if let Err(err) =
                        cutover_pg::trigger::retire(from, e.from_side, &e.new_t.name).await
                    {
                        failures.push(format!("retire {}: {err}", e.new_t.name));
                    }
                }
                if triggers_swapped {
                    if let Err(err) = swap_back_triggers(e, from, to).await {
                        failures.push(format!("triggers: {err}"));
                    }
                }
            } else if new_started {
                if let Err(err) =
                    replication::stop_subscription(from, e.from_side, &e.new.subscription).await
                {
                    failures.push(format!("stop {}: {err}", e.new.subscription));
                }
            }
            if old_stopped {
                // Nothing was written on `from` since the fence: enabled again, it misses nothing.
                if let Err(err) = replication::set_enabled(to, e.to_side, &e.old.subscription, true).await
                {
                    failures.push(format!("enable {} again: {err}", e.old.subscription));
                }
            }
            if let Some(f) = &to_unfenced {
                let text = serde_json::to_string(f).expect("a fence serializes");
                if let Err(err) = journal.set_fact(&fence_key(e.to_side), Some(&text)) {
                    failures.push(format!("journal: {err}"));
                }
                if let Err(err) = fence::apply_fence(to, e.to_side, f).await {
                    failures.push(format!("fence the {} again: {err}", e.to_side));
                }
            }
            if let Some(f) = &from_fenced {
                match fence::unfence(from, e.from_side, f).await {
                    Ok(()) => {
                        if let Err(err) = journal.set_fact(&fence_key(e.from_side), None) {
                            failures.push(format!("journal: {err}"));
                        }
                    }
                    Err(err) => failures.push(format!(
                        "unfence the {}: {err} (the revoked privileges are in the journal; run the command again to retry)",
                        e.from_side
                    )),
                }
            }
            if failures.is_empty() {
                Ok(format!("the {} takes writes again", e.from_side))
            } else {
                Err(SwitchError::Refused(failures.join("; ")))
            }
        })
        .await;
    r.map(|_: String| ()).map_err(|err| err.to_string())
}
