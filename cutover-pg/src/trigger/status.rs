//! `db status` in trigger mode, reporting what native mode reports: the backlog, the rates
//! at which changes are captured and applied, the ETA, and each table's state.
//!
//! Both rates come from two samples `interval` apart, counted in log rows (one per changed
//! key, as the applier counts them): applied is how fast the follower's `changes` counter
//! moves, captured how fast applied + unapplied grows. The ETA is the backlog over their
//! difference, and there is none while the follower is not gaining.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::connect;
use crate::error::{PgError, SqlContext};

use super::{backlog, Backlog, Link, APPLIER_NAME};

/// One table as the follower follows it.
#[derive(Clone, Debug, Serialize)]
pub struct TableState {
    pub table: String,
    /// "following", "copying" (new on the origin, its copy not done), or "held" (its schema
    /// differs in a way that waits for `cutover db schema apply`).
    pub state: &'static str,
    /// Its unapplied log rows.
    pub backlog: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TriggerStatus {
    pub mode: &'static str,
    pub link: String,
    pub origin: String,
    pub follower: String,
    pub backlog: Backlog,
    /// Changes per second the follower applies.
    pub apply_rate: Option<f64>,
    /// Changes per second the origin's capture logs.
    pub capture_rate: Option<f64>,
    /// Seconds until the backlog is gone at these rates; None when not gaining.
    pub eta_seconds: Option<f64>,
    /// An applier session is connected to the follower (`cutover db follow`, `db sync`).
    pub applier_running: bool,
    pub tables: Vec<TableState>,
    pub schema: Vec<crate::drift::Drift>,
    pub warnings: Vec<String>,
}

async fn applied(follower: &Client, link: &Link) -> Result<i64, PgError> {
    Ok(follower
        .query_one(
            "SELECT changes FROM cutover.applied WHERE link = $1",
            &[&link.name],
        )
        .await
        .ctx(link.follower_side, "read the position")?
        .get(0))
}

/// The status of `link`, sampled over `interval`.
pub async fn status(
    link: &Link,
    sync: &cutover_core::plan::SyncSettings,
    interval: Duration,
) -> Result<TriggerStatus, PgError> {
    let origin = connect(&link.origin, link.origin_side).await?;
    let follower = connect(&link.follower, link.follower_side).await?;
    let first = backlog(&origin, &follower, link).await?;
    let at = Instant::now();
    tokio::time::sleep(interval).await;
    let b = backlog(&origin, &follower, link).await?;
    let now = applied(&follower, link).await?;
    let dt = at.elapsed().as_secs_f64().max(1e-3);
    // The backlog and the counter are read one after the other: a batch committing in
    // between can make a difference negative for an instant.
    let apply_rate = ((now - first.applied_changes) as f64 / dt).max(0.0);
    let capture_rate =
        (((now + b.changes) - (first.applied_changes + first.changes)) as f64 / dt).max(0.0);
    let eta_seconds = crate::status::eta(b.changes as f64, Some(apply_rate), capture_rate);
    let position = super::position(&follower, link.follower_side, &link.name)
        .await?
        .unwrap_or_default();
    let per_table: Vec<(String, i64)> = origin
        .query(
            "SELECT tbl, count(*) FROM cutover.changes
              WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
                AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
              GROUP BY tbl",
            &[&position],
        )
        .await
        .ctx(link.origin_side, "count the unapplied changes by table")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let copying: Vec<String> = follower
        .query(
            "SELECT tbl FROM cutover.copying WHERE to_regclass('cutover.copying') IS NOT NULL",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    let applier_running: bool = follower
        .query_one(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
            &[&APPLIER_NAME],
        )
        .await
        .ctx(link.follower_side, "look for the applier")?
        .get(0);
    let schema = crate::drift::drift_between(
        (&origin, link.origin_side),
        (&follower, link.follower_side),
        sync,
    )
    .await?;
    let tables = crate::inspect::tables(&origin, link.origin_side, sync)
        .await?
        .iter()
        .map(|t| {
            let name = t.display();
            let held = schema
                .iter()
                .any(|d| d.display_table() == name && (!d.additive || !sync.apply_schema_changes));
            TableState {
                state: if copying.contains(&name)
                    || schema.iter().any(|d| {
                        d.display_table() == name && d.change == crate::drift::Change::NewTable
                    }) {
                    "copying"
                } else if held {
                    "held"
                } else {
                    "following"
                },
                backlog: per_table
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(0, |(_, c)| *c),
                table: name,
            }
        })
        .collect();
    let mut warnings = crate::status::schema_warnings(&schema);
    if b.changes > 0 && !applier_running {
        warnings.push(
            "changes wait and no applier is connected to the follower; start `cutover db follow`"
                .into(),
        );
    } else if b.oldest_age_seconds.unwrap_or(0.0) > 60.0 {
        warnings
            .push("changes wait for more than a minute; is `cutover db follow` keeping up?".into());
    }
    Ok(TriggerStatus {
        mode: "trigger",
        link: link.name.clone(),
        origin: link.origin_side.to_string(),
        follower: link.follower_side.to_string(),
        backlog: b,
        apply_rate: Some(apply_rate),
        capture_rate: Some(capture_rate),
        eta_seconds,
        applier_running,
        tables,
        schema,
        warnings,
    })
}
