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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cutover_core::ConnString;
use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::{connect, ident, literal};
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
CREATE INDEX IF NOT EXISTS changes_by_xid ON cutover.changes (xid);
CREATE TABLE IF NOT EXISTS cutover.applied (
    link text PRIMARY KEY,
    position text NOT NULL,
    changes bigint NOT NULL DEFAULT 0,
    batches bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);";

/// The name of a table's trigger function: stable across both sides.
fn function_name(t: &Table) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in t.display().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("capture_{h:016x}")
}

/// Whether `t` is followed by whole-row identity: no primary key, and the plan says so.
pub fn whole_row(t: &Table, whole_row_tables: &[(String, String)]) -> bool {
    t.primary_key.is_empty()
        && whole_row_tables
            .iter()
            .any(|(s, n)| s == &t.schema && n == &t.name)
}

/// Refuses tables the capture cannot follow: no primary key, unless the plan accepts
/// whole-row identity for them.
pub fn refuse_keyless(
    tables: &[Table],
    whole_row_tables: &[(String, String)],
) -> Result<(), PgError> {
    let keyless: Vec<String> = tables
        .iter()
        .filter(|t| t.primary_key.is_empty() && !whole_row(t, whole_row_tables))
        .map(|t| {
            format!(
                "table {} has no primary key, which trigger mode needs to find its rows; add one (ALTER TABLE {} ADD PRIMARY KEY (...), or ADD COLUMN id bigserial PRIMARY KEY), accept whole-row identity with whole_row_tables = [\"{}\"] in [sync], or list it in sync.exclude_tables",
                t.display(),
                t.qualified(),
                t.display()
            )
        })
        .collect();
    if keyless.is_empty() {
        Ok(())
    } else {
        Err(PgError::Refused(keyless.join("\n")))
    }
}

/// Installs the log and the triggers on `tables`. Idempotent. Tables in
/// `whole_row_tables` without a primary key log whole rows as their key.
pub async fn install_capture(
    client: &Client,
    side: Side,
    tables: &[Table],
    whole_row_tables: &[(String, String)],
) -> Result<(), PgError> {
    refuse_keyless(tables, whole_row_tables)?;
    let mut sql = String::from("BEGIN;");
    sql.push_str(SCHEMA_DDL);
    for t in tables {
        let f = function_name(t);
        let tbl = literal(&t.display());
        let key = |rec: &str| {
            let cols: Vec<String> = if t.primary_key.is_empty() {
                vec![rec.to_string()]
            } else {
                t.primary_key
                    .iter()
                    .map(|c| format!("{rec}.{}", ident(c)))
                    .collect()
            };
            (
                format!("jsonb_build_array({})", cols.join(", ")),
                format!("ROW({})", cols.join(", ")),
            )
        };
        let (mut new_key, new_row) = key("NEW");
        let (mut old_key, old_row) = key("OLD");
        if whole_row(t, whole_row_tables) {
            // The whole row is the key: an UPDATE logs the row it was and the row it is.
            new_key = "to_jsonb(NEW)".into();
            old_key = "to_jsonb(OLD)".into();
        }
        sql.push_str(&format!(
            "CREATE OR REPLACE FUNCTION cutover.{f}() RETURNS trigger
               LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
             BEGIN
               IF TG_OP = 'INSERT' THEN
                 INSERT INTO cutover.changes (tbl, op, key) VALUES ({tbl}, 'k', {new_key});
               ELSIF TG_OP = 'UPDATE' THEN
                 INSERT INTO cutover.changes (tbl, op, key) VALUES ({tbl}, 'k', {new_key});
                 IF {old_row} IS DISTINCT FROM {new_row} THEN
                   INSERT INTO cutover.changes (tbl, op, key) VALUES ({tbl}, 'k', {old_key});
                 END IF;
               ELSIF TG_OP = 'DELETE' THEN
                 INSERT INTO cutover.changes (tbl, op, key) VALUES ({tbl}, 'k', {old_key});
               ELSE
                 INSERT INTO cutover.changes (tbl, op) VALUES ({tbl}, 'T');
               END IF;
               RETURN NULL;
             END $fn$;
             CREATE OR REPLACE TRIGGER cutover_capture AFTER INSERT OR UPDATE OR DELETE ON {q}
               FOR EACH ROW EXECUTE FUNCTION cutover.{f}();
             CREATE OR REPLACE TRIGGER cutover_capture_truncate AFTER TRUNCATE ON {q}
               FOR EACH STATEMENT EXECUTE FUNCTION cutover.{f}();",
            q = t.qualified()
        ));
    }
    sql.push_str("COMMIT;");
    client.batch_execute(&sql).await.map_err(|e| {
        let err = PgError::sql(side, "install the change capture", e);
        match &err {
            PgError::Sql { code: Some(c), message, .. } if c == "42501" => PgError::Refused(format!(
                "the {side} role may not install the change capture ({message}); trigger mode needs a role that owns the tables and may CREATE in the database"
            )),
            _ => err,
        }
    })
}

/// Whether the capture triggers fire on `tables` (`enabled`), e.g. off on a side that only
/// follows, so that the changes the applier writes are not captured again.
pub async fn set_capture_enabled(
    client: &Client,
    side: Side,
    tables: &[Table],
    enabled: bool,
) -> Result<(), PgError> {
    let verb = if enabled { "ENABLE" } else { "DISABLE" };
    let mut sql = String::new();
    for t in tables {
        sql.push_str(&format!(
            "ALTER TABLE {q} {verb} TRIGGER cutover_capture; ALTER TABLE {q} {verb} TRIGGER cutover_capture_truncate;",
            q = t.qualified()
        ));
    }
    client
        .batch_execute(&sql)
        .await
        .ctx(side, "switch the capture triggers")
}

/// Removes the triggers, their functions and the `cutover` schema's log and position.
/// Idempotent. Returns whether anything was there.
pub async fn remove_capture(client: &Client, side: Side) -> Result<bool, PgError> {
    let rows = client
        .query(
            "SELECT DISTINCT format('%I.%I', n.nspname, c.relname)
               FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE g.tgname IN ('cutover_capture', 'cutover_capture_truncate') AND NOT g.tgisinternal",
            &[],
        )
        .await
        .ctx(side, "look for the capture triggers")?;
    let schema = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'cutover'", &[])
        .await
        .ctx(side, "look for the cutover schema")?
        .is_some();
    let mut sql = String::from("BEGIN;");
    for r in &rows {
        let q: String = r.get(0);
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS cutover_capture ON {q}; DROP TRIGGER IF EXISTS cutover_capture_truncate ON {q};"
        ));
    }
    if schema {
        sql.push_str(
            "DROP TABLE IF EXISTS cutover.changes; DROP TABLE IF EXISTS cutover.applied;
             DO $$ DECLARE f regprocedure; BEGIN
               FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                         WHERE n.nspname = 'cutover' AND p.proname LIKE 'capture\\_%' LOOP
                 EXECUTE 'DROP FUNCTION ' || f;
               END LOOP; END $$;",
        );
    }
    sql.push_str("COMMIT;");
    client
        .batch_execute(&sql)
        .await
        .ctx(side, "remove the change capture")?;
    Ok(!rows.is_empty() || schema)
}

/// A transaction on the origin that exports its snapshot for the copy workers and keeps
/// it alive until released; `position` is the same snapshot as a `pg_snapshot`, the first
/// position of the applier.
pub struct ExportedSnapshot {
    client: Client,
    pub name: String,
    pub position: String,
}

impl ExportedSnapshot {
    pub async fn export(origin: &ConnString, side: Side) -> Result<ExportedSnapshot, PgError> {
        let client = connect(origin, side).await?;
        client
            .batch_execute(
                "SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0;
                 BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            )
            .await
            .ctx(side, "open the snapshot transaction")?;
        let row = client
            .query_one(
                "SELECT pg_export_snapshot(), pg_current_snapshot()::text",
                &[],
            )
            .await
            .ctx(side, "export the snapshot")?;
        Ok(ExportedSnapshot {
            name: row.get(0),
            position: row.get(1),
            client,
        })
    }

    pub async fn release(self) {
        let _ = self.client.batch_execute("COMMIT").await;
    }
}

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

/// How a table is written on the follower.
#[derive(Clone, Debug)]
struct Shape {
    display: String,
    qualified: String,
    /// (column, type) of the primary key, in key order.
    key: Vec<(String, String)>,
    /// Columns that take a value (generated ones excluded).
    columns: Vec<String>,
    identity_always: bool,
}

async fn shapes(follower: &Client, side: Side, tables: &[Table]) -> Result<Vec<Shape>, PgError> {
    let mut out = vec![];
    for t in tables {
        let rows = follower
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', a.attidentity = 'a'
                   FROM pg_attribute a
                  WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&t.qualified()],
            )
            .await
            .ctx(side, "read the table's columns")?;
        if rows.is_empty() {
            return Err(PgError::Refused(format!(
                "table {} is missing on the {side}",
                t.display()
            )));
        }
        let types: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let key = t
            .primary_key
            .iter()
            .map(|c| {
                types
                    .get(c)
                    .map(|ty| (c.clone(), ty.clone()))
                    .ok_or_else(|| {
                        PgError::Refused(format!(
                            "column {c} of {} is missing on the {side}",
                            t.display()
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Shape {
            display: t.display(),
            qualified: t.qualified(),
            key,
            columns: rows
                .iter()
                .filter(|r| !r.get::<_, bool>(2))
                .map(|r| r.get(0))
                .collect(),
            identity_always: rows.iter().any(|r| r.get::<_, bool>(3)),
        });
    }
    Ok(out)
}

/// Tables ordered parents first (by foreign keys among them); cycles keep their given order.
/// The order in which a batch writes the tables (parents before children), and each table's
/// neighbours by foreign key (its parents and its children).
async fn parents_first(
    follower: &Client,
    side: Side,
    shapes: &[Shape],
) -> Result<(Vec<usize>, Vec<BTreeSet<usize>>), PgError> {
    let names: Vec<String> = shapes.iter().map(|s| s.qualified.clone()).collect();
    // Matched by the tables' oids, not their names' text: a regclass prints its name quoted
    // only where it must (shop."Customers"), which no name of ours is spelt as.
    let rows = follower
        .query(
            "SELECT ci.i, pi.i
               FROM pg_constraint c
               JOIN unnest($1::text[]) WITH ORDINALITY ci(n, i) ON c.conrelid = ci.n::regclass
               JOIN unnest($1::text[]) WITH ORDINALITY pi(n, i) ON c.confrelid = pi.n::regclass
              WHERE c.contype = 'f' AND c.conrelid <> c.confrelid",
            &[&names],
        )
        .await
        .ctx(side, "read the foreign keys")?;
    let mut parents: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); shapes.len()];
    let mut neighbours: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); shapes.len()];
    for r in rows {
        let (c, p): (i64, i64) = (r.get(0), r.get(1));
        let (c, p) = (c as usize - 1, p as usize - 1);
        parents[c].insert(p);
        neighbours[c].insert(p);
        neighbours[p].insert(c);
    }
    let mut order = vec![];
    let mut placed = vec![false; shapes.len()];
    while order.len() < shapes.len() {
        let ready: Vec<usize> = (0..shapes.len())
            .filter(|&i| !placed[i] && parents[i].iter().all(|&p| placed[p]))
            .collect();
        let next = if ready.is_empty() {
            (0..shapes.len()).filter(|&i| !placed[i]).collect()
        } else {
            ready
        };
        for i in next {
            placed[i] = true;
            order.push(i);
        }
    }
    Ok((order, neighbours))
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

/// What one read of the change log came to.
enum Applied {
    /// Applied, up to the new position.
    Batch(Batch, String),
    /// The link was retired: nothing applied.
    Retired,
    /// Another applier moved the position since it was read: nothing applied.
    Moved(String),
}

/// The applier of one link, with its connections and what it knows of the tables.
pub struct Applier {
    link: Link,
    origin: Client,
    follower: Client,
    shapes: Vec<Shape>,
    order: Vec<usize>,
    /// Per table, its neighbours by foreign key.
    neighbours: Vec<BTreeSet<usize>>,
    position: String,
    batches: u64,
}

impl Applier {
    /// Connects both sides and reads the position; `tables` as the origin lists them.
    pub async fn open(link: &Link, tables: &[Table]) -> Result<Applier, PgError> {
        let named = |c: &ConnString| {
            let mut c = c.clone();
            c.application_name = Some(APPLIER_NAME.into());
            c
        };
        let origin = connect(&named(&link.origin), link.origin_side).await?;
        let follower = connect(&named(&link.follower), link.follower_side).await?;
        for c in [&origin, &follower] {
            c.batch_execute("SET statement_timeout = 0; SET lock_timeout = '10s'")
                .await
                .ctx(link.origin_side, "set up the applier's session")?;
        }
        let Some(position) = position(&follower, link.follower_side, &link.name).await? else {
            return Err(PgError::Refused(format!(
                "the {} has no trigger-mode position {}: the initial copy has not finished; run `cutover db sync`",
                link.follower_side, link.name
            )));
        };
        let shapes = shapes(&follower, link.follower_side, tables).await?;
        let (order, neighbours) = parents_first(&follower, link.follower_side, &shapes).await?;
        Ok(Applier {
            link: link.clone(),
            origin,
            follower,
            shapes,
            order,
            neighbours,
            position,
            batches: 0,
        })
    }

    /// Applies every change committed since the position, in one follower transaction that
    /// also records the new position. `None` when the link was retired (its position row
    /// removed by a switchover): nothing is applied then.
    pub async fn apply_once(&mut self) -> Result<Option<Batch>, PgError> {
        let (os, fs) = (self.link.origin_side, self.link.follower_side);
        self.origin
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .ctx(os, "open the batch's snapshot")?;
        let result = self.apply_in_snapshot().await;
        let _ = self.origin.batch_execute("COMMIT").await;
        let (batch, next) = match result? {
            Applied::Batch(batch, next) => (batch, next),
            Applied::Retired => return Ok(None),
            Applied::Moved(position) => {
                // Another applier of this link committed a batch since this one read its
                // position: start again from where that one left off.
                self.position = position;
                return Box::pin(self.apply_once()).await;
            }
        };
        self.position = next;
        self.batches += 1;
        if self.batches.is_multiple_of(50) {
            self.prune().await?;
        }
        let _ = fs;
        Ok(Some(batch))
    }

    async fn apply_in_snapshot(&mut self) -> Result<Applied, PgError> {
        let (os, fs) = (self.link.origin_side, self.link.follower_side);
        let next: String = self
            .origin
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .ctx(os, "read the batch's snapshot")?
            .get(0);
        let rows = self
            .origin
            .query(
                "SELECT tbl, op::text, key::text FROM cutover.changes
                  WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
                    AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)",
                &[&self.position],
            )
            .await
            .ctx(os, "read the change log")?;
        let mut batch = Batch {
            changes: rows.len() as u64,
            ..Default::default()
        };
        if rows.is_empty() {
            // Nothing new: keep the position (writing it would cost a follower commit per
            // poll), but notice a retired link.
            if position(&self.follower, fs, &self.link.name)
                .await?
                .is_none()
            {
                return Ok(Applied::Retired);
            }
            return Ok(Applied::Batch(batch, self.position.clone()));
        }
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut truncated: BTreeSet<String> = BTreeSet::new();
        for r in &rows {
            let (tbl, op, key): (String, String, Option<String>) = (r.get(0), r.get(1), r.get(2));
            if op == "T" {
                truncated.insert(tbl);
            } else if let Some(k) = key {
                keys.entry(tbl).or_default().insert(k);
            }
        }
        batch.truncates = truncated.len() as u64;
        // The tables with changes, parents first, each with its keys as one JSON array.
        let mut changed: Vec<(usize, String)> = vec![];
        for &i in &self.order {
            if let Some(set) = keys.get(&self.shapes[i].display) {
                batch.keys += set.len() as u64;
                let json = format!("[{}]", set.iter().cloned().collect::<Vec<_>>().join(","));
                changed.push((i, json));
            }
        }
        // One follower transaction: truncates, upserts parents first, deletes children
        // first, the position. It runs alongside the reads of the origin: while table n's
        // rows are written to the follower, table n + 1's are read from the origin (two
        // servers, and the reads all share the batch's snapshot, so their order is free).
        let tx = self
            .follower
            .transaction()
            .await
            .ctx(fs, "begin the batch")?;
        // Two appliers of one link (a `db follow` service beside `cutover apply`'s own, or a
        // switchover's catch-up beside either) take turns: a batch holds the link's lock for
        // its transaction, and one whose position another applier moved since it was read
        // applies nothing and is read again from there. Without it the later of two batches
        // could write rows as of an older snapshot over a newer one's, and move on from a
        // position that no longer holds what it says.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('cutover.applied'), hashtext($1))",
            &[&self.link.name],
        )
        .await
        .ctx(fs, "take the link's lock")?;
        let current: Option<String> = tx
            .query_opt(
                "SELECT position FROM cutover.applied WHERE link = $1",
                &[&self.link.name],
            )
            .await
            .ctx(fs, "read the position")?
            .map(|r| r.get(0));
        match current {
            None => return Ok(Applied::Retired),
            Some(p) if p != self.position => return Ok(Applied::Moved(p)),
            Some(_) => {}
        }
        // A fenced follower (the old primary after a switchover, where the applications'
        // role, often the owner itself, lost its write privileges) is written by granting the
        // owner what it lacks inside this transaction and revoking it before the commit: no
        // other session ever sees the grant. The tables next to a written one by foreign key
        // are in it too: the key checks lock their rows (FOR KEY SHARE), which takes UPDATE
        // on them, as the owner.
        let mut touched_idx: BTreeSet<usize> = self
            .shapes
            .iter()
            .enumerate()
            .filter(|(_, s)| keys.contains_key(&s.display) || truncated.contains(&s.display))
            .map(|(i, _)| i)
            .collect();
        let adjacent: Vec<usize> = touched_idx
            .iter()
            .flat_map(|&i| self.neighbours[i].iter().copied())
            .collect();
        touched_idx.extend(adjacent);
        let touched: Vec<String> = touched_idx
            .iter()
            .map(|&i| self.shapes[i].qualified.clone())
            .collect();
        let lacking = tx
            .query(
                "SELECT t, p FROM unnest($1::text[]) t, unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p
                  WHERE NOT has_table_privilege(t, p)",
                &[&touched],
            )
            .await
            .ctx(fs, "check the applier's privileges")?;
        let lacking: Vec<(String, String)> = lacking.iter().map(|r| (r.get(0), r.get(1))).collect();
        for (t, p) in &lacking {
            tx.batch_execute(&format!("GRANT {p} ON {t} TO CURRENT_USER"))
                .await
                .ctx(fs, "lift the fence for the applier inside its transaction")?;
        }
        if !truncated.is_empty() {
            let list: Vec<String> = truncated
                .iter()
                .filter_map(|t| self.shapes.iter().find(|s| &s.display == t))
                .map(|s| s.qualified.clone())
                .collect();
            if !list.is_empty() {
                tx.batch_execute(&format!("TRUNCATE {}", list.join(", ")))
                    .await
                    .ctx(fs, "apply a TRUNCATE")?;
            }
        }
        // `written` trails `read` by one table; the last round only writes.
        let mut deletes: Vec<(usize, String)> = vec![];
        let mut pending: Option<(usize, State)> = None;
        let shapes = &self.shapes;
        for round in 0..=changed.len() {
            let read = async {
                match changed.get(round) {
                    Some((i, json)) => read_state(&self.origin, os, &shapes[*i], json)
                        .await
                        .map(|state| Some((*i, state))),
                    None => Ok(None),
                }
            };
            let write = async {
                match &pending {
                    Some((i, state)) => write_state(&tx, fs, &shapes[*i], state).await,
                    None => Ok(()),
                }
            };
            let (read, written) = tokio::join!(read, write);
            written?;
            pending = read?;
            if let Some((
                i,
                State {
                    gone: Some(gone), ..
                },
            )) = &pending
            {
                deletes.push((*i, gone.clone()));
            }
        }
        for (i, json) in deletes.iter().rev() {
            let s = &self.shapes[*i];
            tx.execute(
                &format!(
                    "DELETE FROM {q} t WHERE ({keyed}) IN (SELECT {tuple} FROM jsonb_array_elements($1::text::jsonb) e)",
                    q = s.qualified,
                    keyed = key_cols(s),
                    tuple = key_tuple(s)
                ),
                &[json],
            )
            .await
            .ctx(fs, "apply deletes")?;
        }
        for (t, p) in &lacking {
            tx.batch_execute(&format!("REVOKE {p} ON {t} FROM CURRENT_USER"))
                .await
                .ctx(fs, "restore the fence")?;
        }
        let updated = tx
            .execute(
                "UPDATE cutover.applied SET position = $2, changes = changes + $3,
                        batches = batches + 1, updated_at = now()
                  WHERE link = $1",
                &[&self.link.name, &next, &(batch.changes as i64)],
            )
            .await
            .ctx(fs, "record the position")?;
        if updated == 0 {
            // Retired while this batch ran: roll it back, the link is over.
            drop(tx);
            return Ok(Applied::Retired);
        }
        tx.commit().await.ctx(fs, "commit the batch")?;
        Ok(Applied::Batch(batch, next))
    }

    /// Drops log rows every transaction of which the follower has.
    async fn prune(&self) -> Result<(), PgError> {
        self.origin
            .execute(
                "DELETE FROM cutover.changes WHERE xid < pg_snapshot_xmin($1::text::pg_snapshot)",
                &[&self.position],
            )
            .await
            .ctx(self.link.origin_side, "prune the change log")?;
        Ok(())
    }
}

/// The state of a table's changed keys as of the batch's snapshot.
struct State {
    /// Keyed tables: the rows there now (JSON array), to upsert.
    present: Option<String>,
    /// Keyed tables: the keys with no row now, to delete.
    gone: Option<String>,
    /// Whole-row identity: each logged row with how many equal rows there are now.
    replace: Option<String>,
}

/// Reads, in the origin's open snapshot, the state of the keys in `json`.
async fn read_state(origin: &Client, os: Side, s: &Shape, json: &str) -> Result<State, PgError> {
    if s.key.is_empty() {
        // Whole-row identity: how many rows equal to each logged row there are now.
        let row = origin
            .query_one(
                &format!(
                    "WITH k AS (SELECT e AS key, jsonb_populate_record(NULL::{q}, e) AS r
                                  FROM jsonb_array_elements($1::text::jsonb) e)
                     SELECT coalesce(jsonb_agg(jsonb_build_array(k.key,
                                (SELECT count(*) FROM {q} t WHERE t::text = k.r::text))), '[]')::text
                       FROM k",
                    q = s.qualified
                ),
                &[&json],
            )
            .await
            .ctx(os, "read the changed rows")?;
        return Ok(State {
            present: None,
            gone: None,
            replace: Some(row.get(0)),
        });
    }
    let tuple = key_tuple(s);
    let keyed = key_cols(s);
    let row = origin
        .query_one(
            &format!(
                "WITH k AS (SELECT {tuple} FROM jsonb_array_elements($1::text::jsonb) e)
                 SELECT (SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]')::text FROM {q} t WHERE ({keyed}) IN (SELECT * FROM k)),
                        (SELECT coalesce(jsonb_agg(jsonb_build_array({kk})), '[]')::text FROM k
                          WHERE NOT EXISTS (SELECT 1 FROM {q} t WHERE ({keyed}) = ({kk})))",
                q = s.qualified,
                kk = (0..s.key.len()).map(|n| format!("k.k{n}")).collect::<Vec<_>>().join(", ")
            ),
            &[&json],
        )
        .await
        .ctx(os, "read the changed rows")?;
    let (present, gone): (String, String) = (row.get(0), row.get(1));
    Ok(State {
        present: (present != "[]").then_some(present),
        gone: (gone != "[]").then_some(gone),
        replace: None,
    })
}

/// Writes a table's inserts and updates (or whole-row replacements) in the follower's batch.
async fn write_state(
    tx: &tokio_postgres::Transaction<'_>,
    fs: Side,
    s: &Shape,
    state: &State,
) -> Result<(), PgError> {
    if let Some(json) = &state.present {
        tx.execute(&upsert_sql(s), &[json])
            .await
            .ctx(fs, "apply inserts and updates")?;
    }
    if let Some(json) = &state.replace {
        tx.execute(&replace_sql(s), &[json])
            .await
            .ctx(fs, "apply whole-row changes")?;
    }
    Ok(())
}

fn key_cols(s: &Shape) -> String {
    s.key
        .iter()
        .map(|(c, _)| format!("t.{}", ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(e->>0)::type AS k0, ...` for a key array `e`.
fn key_tuple(s: &Shape) -> String {
    s.key
        .iter()
        .enumerate()
        .map(|(n, (_, ty))| format!("(e->>{n})::{ty} AS k{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whole-row identity: every row equal to a logged one goes, and as many as the origin
/// has now come back.
fn replace_sql(s: &Shape) -> String {
    let cols: Vec<String> = s.columns.iter().map(|c| ident(c)).collect();
    let picked: Vec<String> = cols.iter().map(|c| format!("(k.r).{c}")).collect();
    format!(
        "WITH k AS (SELECT jsonb_populate_record(NULL::{q}, e->0) AS r, (e->>1)::int AS n
                      FROM jsonb_array_elements($1::text::jsonb) e),
              gone AS (DELETE FROM {q} t USING k WHERE t::text = k.r::text)
         INSERT INTO {q} ({list}) {overriding} SELECT {picked} FROM k, generate_series(1, k.n)",
        q = s.qualified,
        list = cols.join(", "),
        overriding = if s.identity_always {
            "OVERRIDING SYSTEM VALUE"
        } else {
            ""
        },
        picked = picked.join(", ")
    )
}

fn upsert_sql(s: &Shape) -> String {
    let cols: Vec<String> = s.columns.iter().map(|c| ident(c)).collect();
    let key: Vec<String> = s.key.iter().map(|(c, _)| ident(c)).collect();
    let rest: Vec<String> = cols
        .iter()
        .filter(|c| !key.contains(c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let conflict = if rest.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", rest.join(", "))
    };
    format!(
        "INSERT INTO {q} AS t ({list}) {overriding} SELECT {list} FROM jsonb_populate_recordset(NULL::{q}, $1::text::jsonb)
         ON CONFLICT ({key}) {conflict}",
        q = s.qualified,
        list = cols.join(", "),
        overriding = if s.identity_always { "OVERRIDING SYSTEM VALUE" } else { "" },
        key = key.join(", ")
    )
}

/// Applies batches until `stop` resolves, reconnecting after either side goes away.
/// `on_batch` hears every batch that changed something, and every error it retries.
pub async fn follow(
    link: &Link,
    tables: &[Table],
    poll: Duration,
    stop: tokio_util::sync::CancellationToken,
    on_event: &(dyn Fn(FollowEvent) + Send + Sync),
) -> Result<(), PgError> {
    let mut backoff = Duration::from_millis(200);
    while !stop.is_cancelled() {
        // A switchover may retire the link while it is reconnecting.
        if let Ok(f) = connect(&link.follower, link.follower_side).await {
            if position(&f, link.follower_side, &link.name).await.ok() == Some(None) {
                on_event(FollowEvent::Retired);
                return Ok(());
            }
        }
        let mut applier = match Applier::open(link, tables).await {
            Ok(a) => a,
            Err(e) if e.retry() == crate::Retry::Transient => {
                on_event(FollowEvent::Retrying {
                    error: e.to_string(),
                });
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(e),
        };
        backoff = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            let r = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = applier.apply_once() => r,
            };
            match r {
                Ok(None) => {
                    on_event(FollowEvent::Retired);
                    return Ok(());
                }
                Ok(Some(b)) if b.changes > 0 => on_event(FollowEvent::Applied {
                    batch: b,
                    ms: started.elapsed().as_secs_f64() * 1000.0,
                }),
                Ok(Some(_)) => {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Err(e) if e.retry() == crate::Retry::Transient || applier.closed() => {
                    on_event(FollowEvent::Retrying {
                        error: e.to_string(),
                    });
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

impl Applier {
    fn closed(&self) -> bool {
        self.origin.is_closed() || self.follower.is_closed()
    }
}

/// What [`follow`] reports.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FollowEvent {
    Applied {
        batch: Batch,
        ms: f64,
    },
    Retrying {
        error: String,
    },
    /// A switchover retired this link; the other direction takes over.
    Retired,
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
