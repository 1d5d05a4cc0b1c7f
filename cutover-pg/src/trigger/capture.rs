//! The capture on the origin: the change log, a trigger function per table, and the
//! snapshot the copy and the applier's first position share.

use cutover_core::ConnString;
use tokio_postgres::Client;

use crate::connect::{connect, ident, literal};
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::Table;

use super::SCHEMA_DDL;

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
///
/// The origin is in production while this runs, and on a second run its writes already go
/// through the capture. So no step holds a lock on one table while it waits for another:
/// the log is made without locking it when it exists, the functions lock no table, and each
/// table's triggers are made in a transaction of their own (`lock_each`), skipped when
/// they are already there and enabled.
pub async fn install_capture(
    client: &Client,
    side: Side,
    tables: &[Table],
    whole_row_tables: &[(String, String)],
) -> Result<(), PgError> {
    refuse_keyless(tables, whole_row_tables)?;
    client
        .batch_execute(SCHEMA_DDL)
        .await
        .map_err(|e| install_error(side, e))?;
    let armed = armed_tables(client, side).await?;
    let mut functions = String::new();
    let mut triggers = Vec::new();
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
        functions.push_str(&format!(
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
             END $fn$;"
        ));
        if !armed.contains(&(t.schema.clone(), t.name.clone())) {
            triggers.push((
                t.display(),
                format!(
                    "CREATE OR REPLACE TRIGGER cutover_capture AFTER INSERT OR UPDATE OR DELETE ON {q}
                       FOR EACH ROW EXECUTE FUNCTION cutover.{f}();
                     CREATE OR REPLACE TRIGGER cutover_capture_truncate AFTER TRUNCATE ON {q}
                       FOR EACH STATEMENT EXECUTE FUNCTION cutover.{f}();",
                    q = t.qualified()
                ),
            ));
        }
    }
    client
        .batch_execute(&format!("BEGIN;{functions}COMMIT;"))
        .await
        .map_err(|e| install_error(side, e))?;
    lock_each(client, side, "install the change capture", &triggers)
        .await
        .map_err(|e| not_permitted(side, e))
}

/// The tables whose two capture triggers exist and fire, as (schema, name).
async fn armed_tables(
    client: &Client,
    side: Side,
) -> Result<std::collections::HashSet<(String, String)>, PgError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text
               FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE g.tgname IN ('cutover_capture', 'cutover_capture_truncate')
                AND NOT g.tgisinternal AND g.tgenabled = 'O'
              GROUP BY 1, 2 HAVING count(*) = 2",
            &[],
        )
        .await
        .ctx(side, "look for the capture triggers")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// How long one table's DDL waits for its lock before it lets the application's writes
/// pass and tries again, and how many times it tries.
const LOCK_WAIT: &str = "2s";
const LOCK_TRIES: u32 = 15;

/// Runs each `(table, sql)` in a transaction of its own that waits at most [`LOCK_WAIT`]
/// for its lock. A waiting lock holds up every later write to its table, so a lock not
/// granted in time (or a deadlock) rolls back, lets those writes through and tries again.
async fn lock_each(
    client: &Client,
    side: Side,
    what: &str,
    each: &[(String, String)],
) -> Result<(), PgError> {
    for (table, sql) in each {
        let mut tries = 0;
        loop {
            tries += 1;
            let r = client
                .batch_execute(&format!(
                    "BEGIN; SET LOCAL lock_timeout = '{LOCK_WAIT}'; {sql} COMMIT;"
                ))
                .await;
            match r {
                Ok(()) => break,
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    let busy = e
                        .code()
                        .is_some_and(|c| matches!(c.code(), "55P03" | "40P01"));
                    if !busy {
                        return Err(PgError::sql(side, format!("{what} on {table}"), e));
                    }
                    if tries >= LOCK_TRIES {
                        return Err(PgError::Refused(format!(
                            "{side}: could not {what} on {table}: its lock was not granted in {tries} tries of {LOCK_WAIT} (a long transaction holds the table; end it, see pg_stat_activity, and run the command again)"
                        )));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }
    Ok(())
}

fn install_error(side: Side, e: tokio_postgres::Error) -> PgError {
    not_permitted(side, PgError::sql(side, "install the change capture", e))
}

/// A permission error while installing says what the role needs.
fn not_permitted(side: Side, err: PgError) -> PgError {
    match err {
        PgError::Sql { code: Some(c), message, .. } if c == "42501" => PgError::Refused(format!(
            "the {side} role may not install the change capture ({message}); trigger mode needs a role that owns the tables and may CREATE in the database"
        )),
        err => err,
    }
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
    // The side may be in production: each table's triggers go in a transaction of their
    // own, then the log, which nothing writes any more.
    let triggers: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            let q: String = r.get(0);
            let sql = format!(
                "DROP TRIGGER IF EXISTS cutover_capture ON {q}; DROP TRIGGER IF EXISTS cutover_capture_truncate ON {q};"
            );
            (q, sql)
        })
        .collect();
    lock_each(client, side, "remove the change capture", &triggers).await?;
    if schema {
        let log = "DROP TABLE IF EXISTS cutover.changes; DROP TABLE IF EXISTS cutover.applied;
             DROP TABLE IF EXISTS cutover.copying;
             DO $$ DECLARE f regprocedure; BEGIN
               FOR f IN SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                         WHERE n.nspname = 'cutover' AND p.proname LIKE 'capture\\_%' LOOP
                 EXECUTE 'DROP FUNCTION ' || f;
               END LOOP; END $$;";
        lock_each(
            client,
            side,
            "remove the change capture",
            &[("the change log".to_string(), log.to_string())],
        )
        .await?;
    }
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
