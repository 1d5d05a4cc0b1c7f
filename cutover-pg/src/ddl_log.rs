//! The source's DDL as it ran, where the role may create event triggers (a superuser;
//! Heroku gives none): `cutover.ddl_log` gets one row per DDL statement (its text, command
//! tag and the objects it touched, in order). Detecting drift never depends on it (that is
//! the catalog comparison in [`crate::drift`]); it tells the person reviewing a held change
//! what the team ran, and in which order.
//!
//! The trigger function swallows its own errors: a broken log must never make the
//! application's migrations fail on the source.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{PgError, Side, SqlContext};

const DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS cutover;
CREATE TABLE IF NOT EXISTS cutover.ddl_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tag text NOT NULL,
    objects text,
    statement text
);
CREATE OR REPLACE FUNCTION cutover.log_ddl() RETURNS event_trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  BEGIN
    IF TG_EVENT = 'sql_drop' THEN
      INSERT INTO cutover.ddl_log (tag, objects, statement)
        SELECT TG_TAG, string_agg(object_identity, ', '), current_query()
          FROM pg_event_trigger_dropped_objects()
         WHERE schema_name IS DISTINCT FROM 'cutover' AND object_type IN ('table', 'table column', 'index', 'table constraint')
        HAVING count(*) > 0;
    ELSE
      INSERT INTO cutover.ddl_log (tag, objects, statement)
        SELECT TG_TAG, string_agg(object_identity, ', '), current_query()
          FROM pg_event_trigger_ddl_commands()
         WHERE schema_name IS DISTINCT FROM 'cutover'
        HAVING count(*) > 0;
    END IF;
  EXCEPTION WHEN OTHERS THEN
    NULL;
  END;
END $fn$;
DO $do$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'cutover_ddl') THEN
    CREATE EVENT TRIGGER cutover_ddl ON ddl_command_end EXECUTE FUNCTION cutover.log_ddl();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'cutover_ddl_drop') THEN
    CREATE EVENT TRIGGER cutover_ddl_drop ON sql_drop EXECUTE FUNCTION cutover.log_ddl();
  END IF;
END $do$;
"#;

/// One DDL statement the source ran.
#[derive(Clone, Debug, Serialize)]
pub struct Statement {
    pub id: i64,
    pub at: String,
    pub tag: String,
    pub objects: Option<String>,
    pub statement: Option<String>,
}

/// Installs the log where the role may (a superuser). Returns whether it is in place.
pub async fn install(client: &Client, side: Side) -> Result<bool, PgError> {
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .ctx(side, "read the role")?
        .get(0);
    if !superuser {
        return Ok(false);
    }
    client
        .batch_execute(DDL)
        .await
        .ctx(side, "install the DDL log")?;
    Ok(true)
}

/// The statements logged so far, oldest first; none when there is no log.
pub async fn statements(client: &Client, side: Side) -> Result<Vec<Statement>, PgError> {
    let rows = client
        .query(
            "SELECT id, at::text, tag, objects, statement FROM cutover.ddl_log ORDER BY id",
            &[],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        // No log on this side (42P01), or one this role may not read (42501).
        Err(e)
            if e.code()
                .is_some_and(|c| ["42P01", "42501"].contains(&c.code())) =>
        {
            return Ok(vec![])
        }
        Err(e) => return Err(PgError::sql(side, "read the DDL log", e)),
    };
    Ok(rows
        .iter()
        .map(|r| Statement {
            id: r.get(0),
            at: r.get(1),
            tag: r.get(2),
            objects: r.get(3),
            statement: r.get(4),
        })
        .collect())
}

/// Forgets the statements up to `id` (applied to the follower, or reviewed).
pub async fn forget(client: &Client, side: Side, id: i64) -> Result<(), PgError> {
    client
        .execute("DELETE FROM cutover.ddl_log WHERE id <= $1", &[&id])
        .await
        .ctx(side, "trim the DDL log")?;
    Ok(())
}

/// Whether the log's event triggers are on this side.
pub async fn present(client: &Client, side: Side) -> Result<bool, PgError> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname IN ('cutover_ddl', 'cutover_ddl_drop'))
                 OR to_regclass('cutover.ddl_log') IS NOT NULL",
            &[],
        )
        .await
        .ctx(side, "look for the DDL log")?
        .get(0))
}

/// Removes the event triggers, their function and the log.
pub async fn remove(client: &Client, side: Side) -> Result<(), PgError> {
    client
        .batch_execute(
            "DROP EVENT TRIGGER IF EXISTS cutover_ddl; DROP EVENT TRIGGER IF EXISTS cutover_ddl_drop;
             DROP FUNCTION IF EXISTS cutover.log_ddl(); DROP TABLE IF EXISTS cutover.ddl_log;",
        )
        .await
        .ctx(side, "remove the DDL log")
}
