//! `db status`: how far the target is behind, measured in bytes of WAL.
//!
//! Lag is `pg_current_wal_lsn()` on the source minus the slot's `confirmed_flush_lsn`: the
//! position up to which the target has confirmed it applied and flushed every change. It is
//! exact and it does not go NULL or stand still when replication stalls, unlike time columns
//! such as `replay_lag`, so it is what gates decisions. The WAL the slot retains
//! (`restart_lsn`) is shown too: a stalled subscription makes the source keep WAL until its
//! disk fills, which is the main risk of a slot.
//!
//! Rates come from two samples: the apply rate is how fast `confirmed_flush_lsn` moves (or,
//! where the role may read it, the subscription's replication origin, which moves with every
//! applied commit while the confirmed position moves only when the target reports), the
//! source rate how fast the source writes WAL. The ETA is what is left to apply divided by
//! their difference, and there is none while the target is not gaining.

use std::time::{Duration, Instant};

use cutover_core::Plan;
use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::connect;
use crate::error::{PgError, Side, SqlContext};
use crate::inspect;
use crate::sync::{table_progress, TableProgress};

/// The slot as the source sees it.
#[derive(Clone, Debug, Serialize)]
pub struct SlotState {
    pub name: String,
    pub active: bool,
    /// reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
    pub confirmed_flush_lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub retained_bytes: Option<i64>,
}

/// The subscription as the target sees it.
#[derive(Clone, Debug, Serialize)]
pub struct SubscriptionState {
    pub name: String,
    pub enabled: bool,
    /// Whether its apply worker is running now.
    pub worker_running: bool,
    pub errors: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// "forward" (the target follows the source) or, after a switchover, "reverse" (the
    /// source follows the target; then "source" in the fields below means the primary, the
    /// target).
    pub direction: &'static str,
    pub source_lsn: String,
    pub slot: Option<SlotState>,
    pub subscription: Option<SubscriptionState>,
    pub tables: Vec<TableProgress>,
    /// Bytes per second the target confirms.
    pub apply_rate_bps: Option<f64>,
    /// Bytes per second the source writes.
    pub source_rate_bps: Option<f64>,
    /// Seconds until the lag is gone at the current rates; None when not gaining.
    pub eta_seconds: Option<f64>,
    /// Where the follower's schema differs from the primary's ([`crate::drift`]).
    pub schema: Vec<crate::drift::Drift>,
    pub warnings: Vec<String>,
}

struct Sample {
    at: Instant,
    current: i64,
    confirmed: Option<i64>,
    /// Where the follower's apply stands: the end of the last source commit it applied (its
    /// replication origin's `remote_lsn`). It moves with every commit, while the slot's
    /// confirmed position moves only when the follower reports, which a busy apply worker may
    /// not do for many seconds. None where the role may not read it.
    applied: Option<i64>,
}

/// The follower's replication origin for subscription `name`: its last applied source
/// commit, as a byte offset.
async fn applied_position(follower: &Client, name: &str) -> Option<i64> {
    follower
        .query_opt(
            "SELECT pg_wal_lsn_diff(o.remote_lsn, '0/0')::bigint
               FROM pg_replication_origin_status o, pg_subscription s
              WHERE s.subname = $1
                AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND o.external_id = 'pg_' || s.oid",
            &[&name],
        )
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get(0))
}

/// Reads positions as byte offsets from 0/0, so two samples can be subtracted.
async fn sample(
    source: &Client,
    slot: &str,
) -> Result<(Sample, String, Option<SlotState>), PgError> {
    let row = source
        .query_one(
            "SELECT pg_current_wal_lsn()::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
                    s.active, s.wal_status, s.confirmed_flush_lsn::text,
                    pg_wal_lsn_diff(s.confirmed_flush_lsn, '0/0')::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
                    s.slot_name IS NOT NULL
               FROM (SELECT 1) one
               LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(Side::Source, "read the replication slot")?;
    let found: bool = row.get(8);
    let state = found.then(|| SlotState {
        name: slot.to_string(),
        active: row.get::<_, Option<bool>>(2).unwrap_or(false),
        wal_status: row.get(3),
        confirmed_flush_lsn: row.get(4),
        lag_bytes: row.get(6),
        retained_bytes: row.get(7),
    });
    let s = Sample {
        at: Instant::now(),
        current: row.get(1),
        confirmed: row.get(5),
        applied: None,
    };
    Ok((s, row.get(0), state))
}

async fn subscription(target: &Client, name: &str) -> Result<Option<SubscriptionState>, PgError> {
    let row = target
        .query_opt(
            "SELECT s.subenabled,
                    EXISTS (SELECT 1 FROM pg_stat_subscription w WHERE w.subid = s.oid AND w.relid IS NULL AND w.pid IS NOT NULL),
                    coalesce((SELECT sync_error_count + apply_error_count FROM pg_stat_subscription_stats st WHERE st.subid = s.oid), 0)
               FROM pg_subscription s
              WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
        .ctx(Side::Target, "read the subscription")?;
    Ok(row.map(|r| SubscriptionState {
        name: name.to_string(),
        enabled: r.get(0),
        worker_running: r.get(1),
        errors: r.get(2),
    }))
}

/// Reads the state once, taking two slot samples `interval` apart for the rates.
pub async fn status(plan: &Plan, interval: Duration) -> Result<Status, PgError> {
    let source = connect(&plan.source.url, Side::Source).await?;
    let target = connect(&plan.target.url, Side::Target).await?;
    // After a switchover the source follows the target through the reverse slot.
    let forward = source
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&plan.sync.slot()],
        )
        .await
        .ctx(Side::Source, "look for the replication slot")?
        .is_some();
    let reverse = !forward
        && target
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&plan.sync.reverse_slot()],
            )
            .await
            .ctx(Side::Target, "look for the reverse replication slot")?
            .is_some();
    let (primary, follower, slot, sub_name, primary_side) = if reverse {
        (
            &target,
            &source,
            plan.sync.reverse_slot(),
            plan.sync.reverse_subscription(),
            Side::Target,
        )
    } else {
        (
            &source,
            &target,
            plan.sync.slot(),
            plan.sync.subscription(),
            Side::Source,
        )
    };
    let (mut first, _, _) = sample(primary, &slot).await?;
    first.applied = applied_position(follower, &sub_name).await;
    tokio::time::sleep(interval).await;
    let (mut second, lsn, slot_state) = sample(primary, &slot).await?;
    second.applied = applied_position(follower, &sub_name).await;
    let sub = subscription(follower, &sub_name).await?;
    let tables = inspect::tables(primary, primary_side, &plan.sync).await?;
    let progress = if sub.is_some() {
        table_progress(follower, &sub_name, &tables).await?
    } else {
        vec![]
    };
    let mut status = assemble(plan, &first, &second, lsn, slot_state, sub, progress);
    let follower_side = if reverse { Side::Source } else { Side::Target };
    status.schema = crate::drift::drift_between(
        (primary, primary_side),
        (follower, follower_side),
        &plan.sync,
    )
    .await?;
    status.warnings.extend(schema_warnings(&status.schema));
    if reverse {
        status.direction = "reverse";
        status
            .warnings
            .retain(|w| !w.contains("run `cutover db sync`"));
    }
    Ok(status)
}

/// Seconds until `behind` is gone when the follower works it off at `apply` per second
/// while the primary adds `incoming` per second: 0 when nothing is behind, none while the
/// follower is not gaining. Both modes: bytes of WAL in native mode, changes in trigger mode.
pub fn eta(behind: f64, apply: Option<f64>, incoming: f64) -> Option<f64> {
    if behind <= 0.0 {
        return Some(0.0);
    }
    match apply {
        Some(a) if a > incoming => Some(behind / (a - incoming)),
        _ => None,
    }
}

/// One line per schema difference that stops the move until someone acts.
pub fn schema_warnings(drifts: &[crate::drift::Drift]) -> Vec<String> {
    let held: Vec<&str> = drifts
        .iter()
        .filter(|d| !d.additive)
        .map(|d| d.describe.as_str())
        .collect();
    let pending = drifts.len() - held.len();
    let mut out = vec![];
    if !held.is_empty() {
        out.push(format!(
            "schema change held, replication of it waits and switchover refuses: {}; review, then run `cutover db schema apply`",
            held.join("; ")
        ));
    }
    if pending > 0 {
        out.push(format!(
            "{pending} additive schema change(s) not on the follower yet; `cutover db follow` applies them as they come, or run `cutover db schema apply`"
        ));
    }
    out
}

fn assemble(
    plan: &Plan,
    first: &Sample,
    second: &Sample,
    source_lsn: String,
    slot: Option<SlotState>,
    subscription: Option<SubscriptionState>,
    tables: Vec<TableProgress>,
) -> Status {
    let dt = second.at.duration_since(first.at).as_secs_f64().max(1e-3);
    let source_rate = (second.current - first.current) as f64 / dt;
    let rate = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => Some((b - a) as f64 / dt),
        _ => None,
    };
    // The faster of the two measures of the apply, and the nearer of the two positions: the
    // origin's moves with every commit, the slot's also past WAL with nothing to apply.
    let apply_rate = match (
        rate(first.confirmed, second.confirmed),
        rate(first.applied, second.applied),
    ) {
        (Some(c), Some(a)) => Some(c.max(a)),
        (c, a) => c.or(a),
    };
    let lag = slot.as_ref().and_then(|s| s.lag_bytes);
    let behind = match (lag, second.applied) {
        (Some(l), Some(a)) => Some(l.min((second.current - a).max(0))),
        (l, _) => l,
    };
    let eta = behind.and_then(|l| eta(l as f64, apply_rate, source_rate));
    let mut warnings = vec![];
    match (&slot, &subscription) {
        (None, None) => warnings.push("no sync in place; run `cutover db sync`".to_string()),
        (None, Some(_)) => warnings.push(format!(
            "the subscription exists but the source has no slot {}; replication cannot run: run `cutover db cleanup` and sync again",
            plan.sync.slot()
        )),
        (Some(_), None) => warnings.push(format!(
            "the source keeps slot {} but the target has no subscription yet: either `cutover db sync` is still copying, \
             or a sync stopped half-way and the slot retains WAL (run `cutover db sync` to continue, or `cutover db cleanup`)",
            plan.sync.slot()
        )),
        (Some(s), Some(sub)) => {
            if !sub.enabled {
                warnings.push("the subscription is disabled; run `cutover db sync` to enable it".to_string());
            } else if !s.active {
                warnings.push("no walsender is streaming from the slot; the target is not following (read the target server's log)".to_string());
            }
            if s.wal_status.as_deref() == Some("lost") {
                warnings.push("the slot has lost WAL it needed; the target can no longer follow: cleanup and sync again".to_string());
            }
        }
    }
    if let Some(r) = slot.as_ref().and_then(|s| s.retained_bytes) {
        if r as u64 > plan.status.retained_wal_warn_bytes {
            warnings.push(format!(
                "the slot retains {} MiB of WAL on the source (warning above {} MiB); if the target stays behind, the source's disk fills",
                r / (1024 * 1024),
                plan.status.retained_wal_warn_bytes / (1024 * 1024)
            ));
        }
    }
    Status {
        direction: "forward",
        source_lsn,
        slot,
        subscription,
        tables,
        apply_rate_bps: apply_rate,
        source_rate_bps: Some(source_rate),
        eta_seconds: eta,
        schema: vec![],
        warnings,
    }
}

/// Waits until the target has confirmed everything the source had written when this was
/// called. Returns the lag in bytes seen last.
pub async fn wait_caught_up(plan: &Plan, timeout: Duration) -> Result<i64, PgError> {
    let source = connect(&plan.source.url, Side::Source).await?;
    let row = source
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .ctx(Side::Source, "read the WAL position")?;
    let goal: String = row.get(0);
    let deadline = Instant::now() + timeout;
    loop {
        let row = source
            .query_one(
                "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false),
                        coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, -1)
                   FROM (SELECT 1) one LEFT JOIN pg_replication_slots ON slot_name = $1",
                &[&plan.sync.slot(), &goal],
            )
            .await
            .ctx(Side::Source, "read the replication slot")?;
        let (reached, lag): (bool, i64) = (row.get(0), row.get(1));
        if reached {
            return Ok(lag.max(0));
        }
        if lag < 0 {
            return Err(PgError::Refused(format!(
                "the source has no replication slot {}; nothing follows it: run `cutover db sync`",
                plan.sync.slot()
            )));
        }
        if Instant::now() > deadline {
            return Err(PgError::Refused(format!(
                "the target did not catch up within {}s ({} bytes behind); check `cutover db status`",
                timeout.as_secs(),
                lag
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod eta_tests {
    use super::eta;

    #[test]
    fn the_eta_is_the_backlog_over_what_the_follower_gains() {
        assert_eq!(eta(0.0, None, 5.0), Some(0.0), "nothing behind: caught up");
        assert_eq!(eta(1000.0, Some(300.0), 100.0), Some(5.0));
        assert_eq!(eta(1000.0, Some(100.0), 100.0), None, "not gaining");
        assert_eq!(eta(1000.0, Some(50.0), 100.0), None, "falling behind");
        assert_eq!(eta(1000.0, None, 0.0), None, "no apply rate measured");
    }
}
