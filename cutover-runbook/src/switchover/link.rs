//! One direction of replication between the two databases, whichever mode carries it: a
//! mode is a type. [`Native`] is a publication and a subscription (PostgreSQL's logical
//! replication); [`Trigger`] is cutover's change log and applier (for sources without
//! logical replication). The switchover speaks only of a [`Link`]: the old direction (the
//! one in force, `from` → `to`) and the new one (`to` → `from`), so each of its phases is
//! written once for both modes.

use std::time::Instant;

use cutover_core::{ConnString, Mode, Plan};
use cutover_pg::inspect::Table;
use cutover_pg::{fence, marker, replication, trigger, Side};
use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use super::SwitchError;

type Fut<'a, T> = BoxFuture<'a, Result<T, SwitchError>>;

/// A client on each side.
pub(super) struct Clients {
    pub source: Client,
    pub target: Client,
}

impl Clients {
    pub fn on(&self, side: Side) -> &Client {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }
}

/// One direction of replication, `origin` → `follower`.
pub(super) trait Link: Send + Sync {
    fn origin(&self) -> Side;
    fn follower(&self) -> Side;
    /// "subscription cutover_sub" or "link cutover_forward", for messages.
    fn name(&self) -> String;

    // As the direction in force.

    /// Refuses when it cannot carry a switch: missing, still copying, too far behind.
    fn check_ready<'a>(&'a self, c: &'a Clients, plan: &'a Plan) -> Fut<'a, ()>;
    /// Inside the pause, after the fence: waits until the follower has everything the origin
    /// committed. Returns the fence's position (native) or what was applied (trigger).
    fn catch_up<'a>(
        &'a self,
        c: &'a Clients,
        plan: &'a Plan,
        tables: &'a [Table],
        marker_id: i64,
    ) -> Fut<'a, String>;
    /// Stops applying, inside the pause; true when there was something to stop.
    fn stop<'a>(&'a self, c: &'a Clients) -> Fut<'a, bool>;
    /// Undoes [`Link::stop`]: nothing was written on the origin since, so nothing is missed.
    fn restart<'a>(&'a self, c: &'a Clients) -> Fut<'a, ()>;
    /// After the switch: ends it for good.
    fn retire<'a>(&'a self, c: &'a Clients) -> Fut<'a, ()>;
    /// Whether it is there at all (a subscription, a position).
    fn exists<'a>(&'a self, c: &'a Clients) -> Fut<'a, bool>;
    /// Whether it is there and stopped (what a run killed inside its pause leaves).
    fn stopped<'a>(&'a self, c: &'a Clients) -> Fut<'a, bool>;

    // As the direction a switch starts.

    /// Refuses when the follower cannot take this direction (native: its role may not
    /// subscribe); `--no-reverse` says how to switch without it.
    fn check_can_start<'a>(&'a self, c: &'a Clients) -> Fut<'a, ()>;
    /// What [`Link::prepare`] does, or None when the mode needs nothing before the pause.
    fn prepares(&self) -> Option<String>;
    /// Before the pause: makes starting it inside the pause quick.
    fn prepare<'a>(&'a self, c: &'a Clients, origin_tables: &'a [Table]) -> Fut<'a, ()>;
    /// The origin becomes the primary in the mode's own terms (trigger mode: the tables'
    /// triggers fire on it, not on the follower); true when that changed something.
    fn take_over<'a>(
        &'a self,
        c: &'a Clients,
        origin_tables: &'a [Table],
        follower_tables: &'a [Table],
    ) -> Fut<'a, bool>;
    /// Undoes [`Link::take_over`].
    fn hand_back<'a>(&'a self, c: &'a Clients, plan: &'a Plan) -> Fut<'a, ()>;
    /// Inside the pause, once the old direction is stopped: starts after everything the old
    /// direction applied. Returns a line for the journal.
    fn start<'a>(&'a self, c: &'a Clients, origin_tables: &'a [Table]) -> Fut<'a, String>;
    /// After the switch: applies from where it starts.
    fn go<'a>(&'a self, c: &'a Clients) -> Fut<'a, ()>;
    /// Undoes [`Link::prepare`] and [`Link::start`].
    fn take_down<'a>(&'a self, c: &'a Clients, plan: &'a Plan) -> Fut<'a, ()>;
}

/// The old direction (`from` → `to`) and the new one (`to` → `from`) of a switch that moves
/// the applications from `from` to `to`.
pub(super) fn links(plan: &Plan, from: Side) -> (Box<dyn Link>, Box<dyn Link>) {
    let s = &plan.sync;
    let forward_native = Native {
        origin: Side::Source,
        follower: Side::Target,
        publication: s.publication(),
        subscription: s.subscription(),
        slot: s.slot(),
        origin_url: plan.source.replication_url.clone(),
    };
    let reverse_native = Native {
        origin: Side::Target,
        follower: Side::Source,
        publication: s.reverse_publication(),
        subscription: s.reverse_subscription(),
        slot: s.reverse_slot(),
        origin_url: plan.target.replication_url.clone(),
    };
    let (forward, reverse): (Box<dyn Link>, Box<dyn Link>) = match plan.sync.mode {
        Mode::Native => (Box::new(forward_native), Box::new(reverse_native)),
        Mode::Trigger => (
            Box::new(Trigger {
                link: cutover_pg::sync::forward_link(plan),
            }),
            Box::new(Trigger {
                link: cutover_pg::sync::reverse_link(plan),
            }),
        ),
    };
    match from {
        Side::Source => (forward, reverse),
        Side::Target => (reverse, forward),
    }
}

// ---------------------------------------------------------------------------------------
// Native: a publication on the origin, a subscription on the follower.

pub(super) struct Native {
    origin: Side,
    follower: Side,
    publication: String,
    subscription: String,
    slot: String,
    /// How the follower's server reaches the origin.
    origin_url: ConnString,
}

impl Link for Native {
    fn origin(&self) -> Side {
        self.origin
    }
    fn follower(&self) -> Side {
        self.follower
    }
    fn name(&self) -> String {
        format!("subscription {}", self.subscription)
    }

    fn check_ready<'a>(&'a self, c: &'a Clients, plan: &'a Plan) -> Fut<'a, ()> {
        Box::pin(async move {
            let (origin, follower) = (c.on(self.origin), c.on(self.follower));
            let sub =
                replication::subscription_info(follower, self.follower, &self.subscription).await?;
            let Some(sub) = sub else {
                return Err(SwitchError::Refused(match self.follower {
                    Side::Target => format!(
                        "the target has no subscription {}: nothing follows the source; run `cutover db sync` first",
                        self.subscription
                    ),
                    Side::Source => format!(
                        "the source has no subscription {}: nothing carries the target's writes back, so a rollback would lose them; it is made by `cutover db switchover` (without --no-reverse)",
                        self.subscription
                    ),
                }));
            };
            if !sub.enabled {
                return Err(SwitchError::Refused(format!(
                    "subscription {} on the {} is disabled; enable it (ALTER SUBSCRIPTION {} ENABLE) and let it catch up",
                    self.subscription, self.follower, self.subscription
                )));
            }
            if sub.not_ready > 0 {
                return Err(SwitchError::Refused(format!(
                    "{} tables are still being copied into the {}; wait until `cutover db status` shows every table ready",
                    sub.not_ready, self.follower
                )));
            }
            // A subscription enabled a moment ago (a sync's last step enables it again) has no
            // apply worker until the launcher starts one, up to 5 s later: the catch-up inside
            // the pause would wait for it, and every client with it.
            let started = Instant::now();
            while !replication::apply_worker_running(follower, self.follower, &self.subscription)
                .await?
            {
                if started.elapsed() > WORKER_WAIT {
                    return Err(SwitchError::Refused(format!(
                        "subscription {} on the {} has no apply worker running after {}s; read the {} server's log (`cutover db status` shows its errors)",
                        self.subscription,
                        self.follower,
                        WORKER_WAIT.as_secs(),
                        self.follower
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let Some(lag) = replication::slot_lag(origin, self.origin, &self.slot).await? else {
                return Err(SwitchError::Refused(format!(
                    "the {} has no replication slot {}; the subscription is not following it",
                    self.origin, self.slot
                )));
            };
            if lag as u64 > plan.switchover.max_lag_bytes {
                return Err(SwitchError::Refused(format!(
                    "the {} is {lag} bytes behind, over switchover.max_lag_mib ({} MiB); wait for it to catch up (`cutover db status --watch`)",
                    self.follower,
                    plan.switchover.max_lag_bytes / (1024 * 1024)
                )));
            }
            // The marker is what the catch-up waits for: it travels with the tables.
            marker::ensure(origin, self.origin).await?;
            marker::ensure(follower, self.follower).await?;
            marker::publish(
                origin,
                self.origin,
                &self.publication,
                follower,
                self.follower,
                &self.subscription,
            )
            .await?;
            Ok(())
        })
    }

    fn catch_up<'a>(
        &'a self,
        c: &'a Clients,
        plan: &'a Plan,
        _tables: &'a [Table],
        marker_id: i64,
    ) -> Fut<'a, String> {
        Box::pin(async move {
            let lsn = marker::write(c.on(self.origin), self.origin, marker_id).await?;
            marker::wait(
                c.on(self.follower),
                self.follower,
                marker_id,
                plan.switchover.catch_up_timeout,
            )
            .await?;
            Ok(lsn)
        })
    }

    fn stop<'a>(&'a self, c: &'a Clients) -> Fut<'a, bool> {
        Box::pin(async move {
            // Disabled now, dropped after the resume (retire): nothing is left for it to
            // apply, and the drop, which reaches the other server, stays out of the pause.
            replication::set_enabled(
                c.on(self.follower),
                self.follower,
                &self.subscription,
                false,
            )
            .await?;
            Ok(true)
        })
    }

    fn restart<'a>(&'a self, c: &'a Clients) -> Fut<'a, ()> {
        Box::pin(async move {
            replication::set_enabled(c.on(self.follower), self.follower, &self.subscription, true)
                .await?;
            Ok(())
        })
    }

    fn retire<'a>(&'a self, c: &'a Clients) -> Fut<'a, ()> {
        Box::pin(async move {
            replication::stop_subscription(c.on(self.follower), self.follower, &self.subscription)
                .await?;
            Ok(())
        })
    }

    fn exists<'a>(&'a self, c: &'a Clients) -> Fut<'a, bool> {
        Box::pin(async move {
            Ok(replication::subscription_info(
                c.on(self.follower),
                self.follower,
                &self.subscription,
            )
            .await?
            .is_some())
        })
    }

    fn stopped<'a>(&'a self, c: &'a Clients) -> Fut<'a, bool> {
        Box::pin(async move {
            Ok(replication::subscription_info(
                c.on(self.follower),
                self.follower,
                &self.subscription,
            )
            .await?
            .is_some_and(|s| !s.enabled))
        })
    }

    fn check_can_start<'a>(&'a self, c: &'a Clients) -> Fut<'a, ()> {
        Box::pin(async move {
            replication::can_subscribe(c.on(self.follower), self.follower)
                .await
                .map_err(|err| {
                    SwitchError::Refused(format!(
                        "{err}; or pass --no-reverse to switch without replication back (a rollback would then lose the writes made after the switch)"
                    ))
                })
        })
    }

    fn prepares(&self) -> Option<String> {
        Some(format!(
            "create {} on the {} and, disabled, {} with its slot ({} -> {})",
            self.publication, self.origin, self.subscription, self.origin, self.follower
        ))
    }

    fn prepare<'a>(&'a self, c: &'a Clients, origin_tables: &'a [Table]) -> Fut<'a, ()> {
        Box::pin(async move {
            // The slot is made now (the slow part of starting replication), so that inside the
            // pause starting it is a position and a flag.
            let mut tables = origin_tables.to_vec();
            tables.push(marker::table());
            replication::prepare_replication(
                c.on(self.origin),
                self.origin,
                &self.origin_url,
                c.on(self.follower),
                self.follower,
                &self.publication,
                &self.subscription,
                &self.slot,
                &tables,
            )
            .await?;
            Ok(())
        })
    }

    fn take_over<'a>(
        &'a self,
        _c: &'a Clients,
        _origin_tables: &'a [Table],
        _follower_tables: &'a [Table],
    ) -> Fut<'a, bool> {
        Box::pin(async { Ok(false) })
    }

    fn hand_back<'a>(&'a self, _c: &'a Clients, _plan: &'a Plan) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn start<'a>(&'a self, c: &'a Clients, _origin_tables: &'a [Table]) -> Fut<'a, String> {
        Box::pin(async move {
            // Every change the new origin committed so far came from the old one (the old
            // direction applied them, and no client reached it yet): the new direction starts
            // after the last of them. Its slot keeps every later change; it is enabled after
            // the resume ([`Link::go`]), so that its start-up does not compete with the
            // transactions the resume releases.
            let start = fence::wal_position(c.on(self.origin), self.origin).await?;
            replication::set_start(
                c.on(self.follower),
                self.follower,
                &self.subscription,
                &start,
            )
            .await?;
            Ok(format!(
                "{} to start at {start} of the {}",
                self.subscription, self.origin
            ))
        })
    }

    fn go<'a>(&'a self, c: &'a Clients) -> Fut<'a, ()> {
        Box::pin(async move {
            // A no-op when there is none (--no-reverse) or it runs already.
            if let Some(sub) = replication::subscription_info(
                c.on(self.follower),
                self.follower,
                &self.subscription,
            )
            .await?
            {
                if !sub.enabled {
                    replication::set_enabled(
                        c.on(self.follower),
                        self.follower,
                        &self.subscription,
                        true,
                    )
                    .await?;
                }
            }
            Ok(())
        })
    }

    fn take_down<'a>(&'a self, c: &'a Clients, _plan: &'a Plan) -> Fut<'a, ()> {
        Box::pin(async move {
            replication::stop_subscription(c.on(self.follower), self.follower, &self.subscription)
                .await?;
            Ok(())
        })
    }
}

/// How long the preconditions wait for the old direction's apply worker to run.
const WORKER_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Trigger: the change log and capture triggers on the origin, cutover's applier and its
// position on the follower.

pub(super) struct Trigger {
    link: trigger::Link,
}

/// Changes waiting beyond which a trigger-mode switch does not start: the catch-up inside
/// the pause would be long.
const MAX_BACKLOG: i64 = 50_000;

impl Link for Trigger {
    fn origin(&self) -> Side {
        self.link.origin_side
    }
    fn follower(&self) -> Side {
        self.link.follower_side
    }
    fn name(&self) -> String {
        format!("link {}", self.link.name)
    }

    fn check_ready<'a>(&'a self, c: &'a Clients, _plan: &'a Plan) -> Fut<'a, ()> {
        Box::pin(async move {
            let follower = c.on(self.follower());
            if trigger::position(follower, self.follower(), &self.link.name)
                .await?
                .is_none()
            {
                return Err(SwitchError::Refused(match self.follower() {
                    Side::Target => format!(
                        "the target follows nothing yet (no position for {}); run `cutover db sync`",
                        self.link.name
                    ),
                    Side::Source => format!(
                        "the source does not follow the target (no position for {}); it is started by `cutover db switchover` (without --no-reverse)",
                        self.link.name
                    ),
                }));
            }
            let backlog = trigger::backlog(c.on(self.origin()), follower, &self.link).await?;
            if backlog.changes > MAX_BACKLOG {
                return Err(SwitchError::Refused(format!(
                    "{} changes wait to be applied to the {} (more than {MAX_BACKLOG}); let `cutover db follow` catch up first (`cutover db status`)",
                    backlog.changes,
                    self.follower()
                )));
            }
            Ok(())
        })
    }

    fn catch_up<'a>(
        &'a self,
        _c: &'a Clients,
        plan: &'a Plan,
        tables: &'a [Table],
        _marker_id: i64,
    ) -> Fut<'a, String> {
        Box::pin(async move {
            // One batch applies every change the old primary committed (its snapshot is taken
            // after the fence); the next must find none.
            let started = Instant::now();
            let timeout = plan.switchover.catch_up_timeout;
            let mut applier = trigger::Applier::open(&self.link, tables).await?;
            let mut applied = 0u64;
            loop {
                let Some(batch) = applier.apply_once().await? else {
                    return Err(SwitchError::Refused(format!(
                        "link {} was retired while the switch waited for it",
                        self.link.name
                    )));
                };
                if batch.changes == 0 {
                    return Ok(format!("{applied} changes applied after the fence"));
                }
                applied += batch.changes;
                if started.elapsed() > timeout {
                    return Err(SwitchError::Refused(format!(
                        "the {} did not apply the writes made before the fence within {}s",
                        self.follower(),
                        timeout.as_secs()
                    )));
                }
            }
        })
    }

    fn stop<'a>(&'a self, _c: &'a Clients) -> Fut<'a, bool> {
        // The old origin's capture stops with its triggers (the new link's take over); the
        // position stays until the link is retired after the switch.
        Box::pin(async { Ok(false) })
    }

    fn restart<'a>(&'a self, _c: &'a Clients) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn retire<'a>(&'a self, c: &'a Clients) -> Fut<'a, ()> {
        Box::pin(async move {
            // A running `db follow` notices and follows the other direction.
            trigger::retire(c.on(self.follower()), self.follower(), &self.link.name).await?;
            Ok(())
        })
    }

    fn exists<'a>(&'a self, c: &'a Clients) -> Fut<'a, bool> {
        Box::pin(async move {
            Ok(
                trigger::position(c.on(self.follower()), self.follower(), &self.link.name)
                    .await?
                    .is_some(),
            )
        })
    }

    fn stopped<'a>(&'a self, _c: &'a Clients) -> Fut<'a, bool> {
        Box::pin(async { Ok(false) })
    }

    fn check_can_start<'a>(&'a self, _c: &'a Clients) -> Fut<'a, ()> {
        // The table owner's role is all trigger mode needs, on both sides.
        Box::pin(async { Ok(()) })
    }

    fn prepares(&self) -> Option<String> {
        None
    }

    fn prepare<'a>(&'a self, _c: &'a Clients, _origin_tables: &'a [Table]) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn take_over<'a>(
        &'a self,
        c: &'a Clients,
        origin_tables: &'a [Table],
        follower_tables: &'a [Table],
    ) -> Fut<'a, bool> {
        Box::pin(async move {
            // The new primary's triggers fire (its capture among them); the old one's stop
            // (its applied rows are neither captured again nor the application's events).
            trigger::set_user_triggers(c.on(self.origin()), self.origin(), origin_tables, true)
                .await?;
            trigger::set_user_triggers(
                c.on(self.follower()),
                self.follower(),
                follower_tables,
                false,
            )
            .await?;
            Ok(true)
        })
    }

    fn hand_back<'a>(&'a self, c: &'a Clients, plan: &'a Plan) -> Fut<'a, ()> {
        Box::pin(async move {
            let (o, f) = (self.origin(), self.follower());
            let origin_tables = cutover_pg::inspect::tables(c.on(o), o, &plan.sync).await?;
            let follower_tables = cutover_pg::inspect::tables(c.on(f), f, &plan.sync).await?;
            trigger::set_user_triggers(c.on(o), o, &origin_tables, false).await?;
            trigger::set_user_triggers(c.on(f), f, &follower_tables, true).await?;
            Ok(())
        })
    }

    fn start<'a>(&'a self, c: &'a Clients, origin_tables: &'a [Table]) -> Fut<'a, String> {
        Box::pin(async move {
            trigger::start_link(
                c.on(self.origin()),
                c.on(self.follower()),
                &self.link,
                origin_tables,
            )
            .await?;
            Ok(format!(
                "capture on the {}, link {} started",
                self.origin(),
                self.link.name
            ))
        })
    }

    fn go<'a>(&'a self, _c: &'a Clients) -> Fut<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn take_down<'a>(&'a self, c: &'a Clients, _plan: &'a Plan) -> Fut<'a, ()> {
        Box::pin(async move {
            trigger::retire(c.on(self.follower()), self.follower(), &self.link.name).await?;
            Ok(())
        })
    }
}
