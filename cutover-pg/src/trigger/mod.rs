//! Trigger mode: change capture for sources without logical replication (Heroku Postgres),
//! and the applier that follows it. The same engine runs in both directions.
//!
//! ## Capture
//!
//! The *origin* (the side being followed) gets a `cutover` schema with a change log,
//! `cutover.changes (xid, tbl, op, key, at)`, and on every moved table a row trigger
//! (INSERT, UPDATE, DELETE) that logs the changed row's primary key, and a statement trigger
//! that logs a TRUNCATE. The trigger functions are generated per table (the key columns are
//! written into them, no `to_jsonb(NEW)` of the whole row) and are `SECURITY DEFINER`, so
//! the applications' roles need no privilege on the log. All of it needs only what a table
//! owner has: ownership of the tables and CREATE on the database.
//!
//! The log has one index, on `xid`, and no key of its own: batches are chosen by transaction
//! visibility, never by order (see the rule below), so an id column would only add a
//! sequence and a second index to every write the applications make.
//!
//! ## The rule: which changes a batch applies
//!
//! Each log row carries the top-level transaction id that wrote it (`pg_current_xact_id()`).
//! A *position* is a snapshot of the origin (`pg_snapshot`): everything committed before it
//! has been applied. A batch:
//!
//! 1. opens a REPEATABLE READ transaction on the origin; its snapshot `S` is the new position;
//! 2. reads the log rows of the transactions visible in `S` but not in the previous
//!    position `P` (`NOT pg_visible_in_snapshot(xid, P)`; rows of transactions still running
//!    are not visible in `S` at all). Each transaction lands in exactly one batch: none lost,
//!    none applied twice. No watermark can pass an uncommitted change, because the set is
//!    decided by commit visibility, not by id or time order;
//! 3. reads, *in the same snapshot `S`*, the current rows of every changed key; keys with no
//!    row are deletions;
//! 4. on the follower, in one transaction: TRUNCATEs first, upserts parents before children,
//!    deletes children before parents (foreign keys stay satisfied), then the position `S`.
//!
//! Applying the state of each key as of `S` (not replaying statements) makes the order of
//! concurrent transactions that commit out of order irrelevant: the follower ends in exactly
//! the origin's state at `S` for every changed key. It also makes a batch idempotent: a killed
//! applier that applied a batch but did not record it (impossible here, the position is in the
//! same transaction) would only write the same state again.
//!
//! The initial copy uses the same rule: the copy's snapshot, exported by a transaction that
//! started after the triggers were in place, is the first position. Changes the copy saw are
//! visible in it and skipped; every later one is applied.
//!
//! ## The follower
//!
//! `cutover.applied (link, position, changes, batches, updated_at)` on the follower holds the
//! position, written in the same transaction as each batch. The log is pruned on the origin
//! below the position's xmin, which every earlier transaction is older than.

mod applier;
mod capture;
mod follow;
mod status;

pub use applier::Applier;
pub use capture::{
    install_capture, refuse_keyless, remove_capture, set_capture_enabled, whole_row,
    ExportedSnapshot,
};
pub use follow::{follow, FollowEvent};
pub use status::{status, TableState, TriggerStatus};

use cutover_core::ConnString;
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{PgError, Side, SqlContext};
use crate::inspect::Table;

/// The log and the position table; made on whichever side needs them.
const SCHEMA_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS cutover;
CREATE TABLE IF NOT EXISTS cutover.changes (
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tbl text NOT NULL,
    op \"char\" NOT NULL,
    key jsonb,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
DO $ddl$ BEGIN
  -- CREATE INDEX IF NOT EXISTS locks the log before it looks for the name: that lock would
  -- wait behind every write the capture logs, and deadlock with them.
  IF to_regclass('cutover.changes_by_xid') IS NULL THEN
    CREATE INDEX changes_by_xid ON cutover.changes (xid);
  END IF;
END $ddl$;
CREATE TABLE IF NOT EXISTS cutover.applied (
    link text PRIMARY KEY,
    position text NOT NULL,
    changes bigint NOT NULL DEFAULT 0,
    batches bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);";

/// The position table on the follower, and the position itself.
pub async fn set_position(
    follower: &Client,
    side: Side,
    link: &str,
    position: &str,
) -> Result<(), PgError> {
    follower
        .batch_execute(SCHEMA_DDL)
        .await
        .ctx(side, "create the position table")?;
    follower
        .execute(
            "INSERT INTO cutover.applied (link, position) VALUES ($1, $2)
             ON CONFLICT (link) DO UPDATE SET position = excluded.position, updated_at = now()",
            &[&link, &position],
        )
        .await
        .ctx(side, "record the position")?;
    Ok(())
}

pub async fn position(
    follower: &Client,
    side: Side,
    link: &str,
) -> Result<Option<String>, PgError> {
    let exists = follower
        .query_one("SELECT to_regclass('cutover.applied') IS NOT NULL", &[])
        .await
        .ctx(side, "look for the position table")?
        .get::<_, bool>(0);
    if !exists {
        return Ok(None);
    }
    Ok(follower
        .query_opt(
            "SELECT position FROM cutover.applied WHERE link = $1",
            &[&link],
        )
        .await
        .ctx(side, "read the position")?
        .map(|r| r.get(0)))
}

/// The `application_name` of the applier's sessions: a switchover knows them as
/// cutover's own, not as applications writing around the proxy.
pub const APPLIER_NAME: &str = "cutover-follow";

/// One direction of trigger-mode replication.
#[derive(Clone, Debug)]
pub struct Link {
    /// Names the position row on the follower.
    pub name: String,
    pub origin: ConnString,
    pub origin_side: Side,
    pub follower: ConnString,
    pub follower_side: Side,
    /// Keyless tables followed by whole-row identity (the plan's sync.whole_row_tables).
    pub whole_row_tables: Vec<(String, String)>,
}

/// What one batch did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Batch {
    pub changes: u64,
    pub keys: u64,
    pub truncates: u64,
}

/// How far the follower is behind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Backlog {
    /// Log rows of committed transactions not yet applied.
    pub changes: i64,
    /// Age of the oldest of them, in seconds.
    pub oldest_age_seconds: Option<f64>,
    /// Changes applied since the link started, as the follower counts them.
    pub applied_changes: i64,
}

/// The backlog of `link` as it stands.
pub async fn backlog(origin: &Client, follower: &Client, link: &Link) -> Result<Backlog, PgError> {
    let Some(position) = position(follower, link.follower_side, &link.name).await? else {
        return Err(PgError::Refused(format!(
            "the {} has no trigger-mode position {}; run `cutover db sync`",
            link.follower_side, link.name
        )));
    };
    let applied: i64 = follower
        .query_one(
            "SELECT changes FROM cutover.applied WHERE link = $1",
            &[&link.name],
        )
        .await
        .ctx(link.follower_side, "read the position")?
        .get(0);
    let row = origin
        .query_one(
            "SELECT count(*), extract(epoch FROM clock_timestamp() - min(at))::float8
               FROM cutover.changes
              WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
                AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)",
            &[&position],
        )
        .await
        .ctx(link.origin_side, "count the unapplied changes")?;
    Ok(Backlog {
        changes: row.get(0),
        oldest_age_seconds: row.get(1),
        applied_changes: applied,
    })
}

/// Whether user triggers (the capture triggers among them) fire on `tables`: off on the
/// side that follows, so applied rows are neither captured again nor fire the
/// application's own triggers a second time; on for the primary.
pub async fn set_user_triggers(
    client: &Client,
    side: Side,
    tables: &[Table],
    enabled: bool,
) -> Result<(), PgError> {
    let verb = if enabled { "ENABLE" } else { "DISABLE" };
    let sql: String = tables
        .iter()
        .map(|t| format!("ALTER TABLE {} {verb} TRIGGER USER;", t.qualified()))
        .collect();
    client
        .batch_execute(&format!("BEGIN;{sql}COMMIT;"))
        .await
        .ctx(side, "switch the tables' triggers")
}

/// Starts the link `origin` → `follower` with no copy: the capture on the origin (whose
/// tables hold what the follower holds, as after a fenced catch-up), and the position
/// taken now. Idempotent.
pub async fn start_link(
    origin: &Client,
    follower: &Client,
    link: &Link,
    origin_tables: &[Table],
) -> Result<(), PgError> {
    install_capture(
        origin,
        link.origin_side,
        origin_tables,
        &link.whole_row_tables,
    )
    .await?;
    let now: String = origin
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .ctx(link.origin_side, "read the position")?
        .get(0);
    if position(follower, link.follower_side, &link.name)
        .await?
        .is_none()
    {
        set_position(follower, link.follower_side, &link.name, &now).await?;
    }
    Ok(())
}

/// Ends a link: its position row goes, which a running applier notices and stops.
pub async fn retire(follower: &Client, side: Side, link: &str) -> Result<bool, PgError> {
    if position(follower, side, link).await?.is_none() {
        return Ok(false);
    }
    follower
        .execute("DELETE FROM cutover.applied WHERE link = $1", &[&link])
        .await
        .ctx(side, "retire the link")?;
    Ok(true)
}
