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
