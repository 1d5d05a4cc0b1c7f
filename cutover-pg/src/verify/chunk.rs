//! One range compared, re-checked after replication catches up, and its first different keys.

use crate::connect::ident;
use crate::error::{PgError, Side, SqlContext};
use futures_util::TryStreamExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::plan::*;
use super::pool::*;
use super::*;

// ---------------------------------------------------------------------------------------
// One range.

pub(super) struct Chunk {
    pub(super) index: usize,
    pub(super) source_rows: i64,
    pub(super) target_rows: i64,
    pub(super) mismatch: Option<RangeMismatch>,
}

pub(super) async fn compare_chunk(
    run: &Run<'_>,
    plan: &TablePlan<'_>,
    index: usize,
) -> Result<Chunk, PgError> {
    let range = &plan.ranges[index];
    let conn = run.pool.get().await;
    let (mut s, mut t) = tokio::try_join!(
        plan.checksum(&conn.source, Side::Source, range),
        plan.checksum(&conn.target, Side::Target, range),
    )?;
    let mut round = 0;
    while s != t && round < RECHECKS {
        let Some(catch_up) = run.catch_up else { break };
        if run.stalled.load(Ordering::Relaxed) {
            break;
        }
        if round > 0 {
            s = plan.checksum(&conn.source, Side::Source, range).await?;
        }
        let caught_up = match catch_up {
            CatchUp::Slot(slot) => {
                // Taken after the source was read, so the target holds all the source read saw.
                let lsn: String = conn
                    .source
                    .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                    .await
                    .ctx(Side::Source, "read the WAL position")?
                    .get(0);
                wait_for_slot(&conn.source, slot, &lsn, run.options.catch_up_timeout).await?
            }
            CatchUp::TriggerLink(link) => {
                wait_for_link(
                    &conn.source,
                    &conn.target,
                    link,
                    run.options.catch_up_timeout,
                )
                .await?
            }
        };
        if !caught_up {
            run.stalled.store(true, Ordering::Relaxed);
            break;
        }
        t = plan.checksum(&conn.target, Side::Target, range).await?;
        round += 1;
    }
    let mismatch = if s == t {
        None
    } else {
        Some(RangeMismatch {
            from: range.from.clone(),
            to: range.to.clone(),
            through: range.through.clone(),
            source_rows: s.rows,
            target_rows: t.rows,
            first_keys: first_keys(&conn, plan, range).await?,
        })
    };
    (run.progress)(VerifyEvent::ChunkDone {
        table: plan.table.display(),
    });
    Ok(Chunk {
        index,
        source_rows: s.rows,
        target_rows: t.rows,
        mismatch,
    })
}

/// Refuses a slot that cannot be waited on, before any work.
pub(super) async fn check_slot(client: &Client, slot: &str) -> Result<(), PgError> {
    let row = client
        .query_opt("SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name::text = $1", &[&slot])
        .await
        .ctx(Side::Source, "look up the replication slot")?;
    match row.map(|r| r.get::<_, bool>(0)) {
        None => Err(PgError::Refused(format!(
            "replication slot \"{slot}\" does not exist on the source; start replication first (`cutover db sync`) or verify without waiting for it"
        ))),
        Some(false) => Err(PgError::Refused(format!(
            "replication slot \"{slot}\" on the source is not a logical slot in use; give the slot of the target's subscription"
        ))),
        Some(true) => Ok(()),
    }
}

/// Waits until the slot has confirmed `lsn`; false when `timeout` passed first.
pub(super) async fn wait_for_slot(
    client: &Client,
    slot: &str,
    lsn: &str,
    timeout: Duration,
) -> Result<bool, PgError> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = client
            .query_opt(
                "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false)
                   FROM pg_replication_slots WHERE slot_name::text = $1",
                &[&slot, &lsn],
            )
            .await
            .ctx(Side::Source, "read the replication slot")?;
        let Some(row) = row else {
            return Err(PgError::Refused(format!(
                "replication slot \"{slot}\" disappeared from the source during verify; check replication (`cutover db status`)"
            )));
        };
        if row.get::<_, bool>(0) {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

/// Trigger mode: waits until the target has applied every change the source had committed
/// when this is called (a snapshot taken now, after the source was read): none of the change
/// log's transactions visible in that snapshot may still be missing from the link's
/// position. Exact, like the slot test, and for the same reason: the position is a snapshot
/// and a batch commits with it. False on timeout; an error when the link has no position.
pub(super) async fn wait_for_link(
    source: &Client,
    target: &Client,
    link: &str,
    timeout: Duration,
) -> Result<bool, PgError> {
    let deadline = Instant::now() + timeout;
    let seen: String = source
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .ctx(Side::Source, "read the current snapshot")?
        .get(0);
    loop {
        let position: Option<String> = target
            .query_opt(
                "SELECT position FROM cutover.applied WHERE link = $1",
                &[&link],
            )
            .await
            .ctx(Side::Target, "read the trigger-mode position")?
            .map(|r| r.get(0));
        let Some(position) = position else {
            return Err(PgError::Refused(format!(
                "the target has no position for link {link} (trigger mode); is `cutover db sync` or `cutover db follow` running?"
            )));
        };
        let missing: bool = source
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM cutover.changes
                   WHERE xid >= pg_snapshot_xmin($2::text::pg_snapshot)
                     AND pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
                     AND NOT pg_visible_in_snapshot(xid, $2::text::pg_snapshot))",
                &[&seen, &position],
            )
            .await
            .ctx(Side::Source, "compare the change log with the position")?
            .get(0);
        if !missing {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The first differing keys of a reported range.

pub(super) async fn first_keys(
    conn: &Conn,
    plan: &TablePlan<'_>,
    range: &Range,
) -> Result<Vec<KeyDiff>, PgError> {
    if plan.key.is_empty() {
        return first_rows(conn, plan).await;
    }
    let (source, target) = tokio::try_join!(
        keyed_rows(&conn.source, Side::Source, plan, range),
        keyed_rows(&conn.target, Side::Target, plan, range),
    )?;
    let mut diffs: Vec<KeyDiff> = vec![];
    for (key, hash) in &source {
        match target.get(key) {
            None => diffs.push(KeyDiff {
                key: key.clone(),
                kind: MISSING,
            }),
            Some(h) if h != hash => diffs.push(KeyDiff {
                key: key.clone(),
                kind: DIFFERENT,
            }),
            Some(_) => {}
        }
    }
    for key in target.keys().filter(|k| !source.contains_key(*k)) {
        diffs.push(KeyDiff {
            key: key.clone(),
            kind: EXTRA,
        });
    }
    let order = key_order(&conn.source, plan, &diffs).await?;
    let mut diffs: Vec<Option<KeyDiff>> = diffs.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .filter_map(|i| diffs.get_mut(i).and_then(Option::take))
        .collect())
}

/// `key -> md5(row)` of a range on one side.
pub(super) async fn keyed_rows(
    client: &Client,
    side: Side,
    plan: &TablePlan<'_>,
    range: &Range,
) -> Result<HashMap<Vec<String>, String>, PgError> {
    let (filter, values) = plan.filter(side, range);
    let keys: Vec<String> = plan.key.iter().map(|k| format!("{k}::text")).collect();
    let sql = format!(
        "SELECT {}, {} FROM {}{filter}",
        keys.join(", "),
        plan.row_hash,
        plan.side(side).from
    );
    let rows = client.query(&sql, &params(&values)).await.ctx(
        side,
        &format!(
            "read the keys of a differing range of {}",
            plan.table.display()
        ),
    )?;
    let n = plan.key.len();
    Ok(rows
        .iter()
        .map(|r| ((0..n).map(|i| r.get(i)).collect(), r.get(n)))
        .collect())
}

/// Indexes into `diffs` of the first [`FIRST_KEYS`] keys in the source's key order.
pub(super) async fn key_order(
    client: &Client,
    plan: &TablePlan<'_>,
    diffs: &[KeyDiff],
) -> Result<Vec<usize>, PgError> {
    if diffs.len() <= 1 {
        return Ok((0..diffs.len()).collect());
    }
    let types = &plan.source.key_types;
    let columns: Vec<Vec<&str>> = (0..types.len())
        .map(|i| diffs.iter().map(|d| d.key[i].as_str()).collect())
        .collect();
    let arrays: Vec<String> = (1..=types.len()).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..types.len()).map(|i| format!("c{i}")).collect();
    let casts: Vec<String> = aliases
        .iter()
        .zip(types)
        .map(|(a, t)| format!("{a}::{t}"))
        .collect();
    let sql = format!(
        "SELECT n FROM unnest({}) WITH ORDINALITY AS u({}, n) ORDER BY {} LIMIT {FIRST_KEYS}",
        arrays.join(", "),
        aliases.join(", "),
        casts.join(", "),
    );
    let values: Vec<&(dyn ToSql + Sync)> =
        columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&sql, &values).await.ctx(
        Side::Source,
        &format!("order the differing keys of {}", plan.table.display()),
    )?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, i64>(0) as usize - 1)
        .collect())
}

/// A table without a key: distinct rows with their counts, both sides streamed in hash
/// order and merged, up to the first [`FIRST_KEYS`] differences.
pub(super) async fn first_rows(conn: &Conn, plan: &TablePlan<'_>) -> Result<Vec<KeyDiff>, PgError> {
    let columns: Vec<String> = plan.table.columns.iter().map(|c| ident(c)).collect();
    let open = |side: Side| {
        let sql = format!(
            "SELECT h, count(*), left(min(r), 200) FROM
               (SELECT md5(r) AS h, r FROM (SELECT ROW({})::text AS r FROM {}) x) y
              GROUP BY h ORDER BY h COLLATE \"C\"",
            columns.join(", "),
            plan.side(side).from,
        );
        let context = format!("read the rows of {}", plan.table.display());
        async move {
            let rows = conn
                .client(side)
                .query_raw(&sql, std::iter::empty::<&str>())
                .await
                .ctx(side, &context)?;
            Ok::<_, PgError>(rows.map_err(move |e| PgError::sql(side, context.clone(), e)))
        }
    };
    let (source, target) = tokio::try_join!(open(Side::Source), open(Side::Target))?;
    let (mut source, mut target) = (std::pin::pin!(source), std::pin::pin!(target));
    let group = |r: tokio_postgres::Row| {
        (
            r.get::<_, String>(0),
            r.get::<_, i64>(1),
            r.get::<_, String>(2),
        )
    };
    let (mut s, mut t) = (
        source.try_next().await?.map(group),
        target.try_next().await?.map(group),
    );
    let mut diffs = vec![];
    while diffs.len() < FIRST_KEYS {
        let (kind, row, next_s, next_t) = match (&s, &t) {
            (None, None) => break,
            (Some(a), None) => (MISSING, a.2.clone(), true, false),
            (None, Some(b)) => (EXTRA, b.2.clone(), false, true),
            (Some(a), Some(b)) if a.0 < b.0 => (MISSING, a.2.clone(), true, false),
            (Some(a), Some(b)) if a.0 > b.0 => (EXTRA, b.2.clone(), false, true),
            (Some(a), Some(b)) if a.1 == b.1 => ("", String::new(), true, true),
            (Some(a), Some(b)) => (
                if a.1 > b.1 { MISSING } else { EXTRA },
                a.2.clone(),
                true,
                true,
            ),
        };
        if !kind.is_empty() {
            diffs.push(KeyDiff {
                key: vec![row],
                kind,
            });
        }
        if next_s {
            s = source.try_next().await?.map(group);
        }
        if next_t {
            t = target.try_next().await?.map(group);
        }
    }
    Ok(diffs)
}
