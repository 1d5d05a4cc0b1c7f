//! Following a link: batches until stopped, reconnecting after either side goes away, and
//! the schema reconciled before every start of the applier (see [`crate::drift`]).

use std::time::{Duration, Instant};

use cutover_core::plan::SyncSettings;
use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::connect;
use crate::drift::{self, Change};
use crate::error::{PgError, SqlContext};
use crate::inspect::Table;
use crate::schema_change::{self, Sides};

use super::{position, Applier, Batch, Link};

/// How often the applier is started again, so that the schema is compared again even when
/// no changed row shows the difference (a new table, an index, a type change).
const RECHECK: Duration = Duration::from_secs(10);

/// While a change is held: how often it is looked at again.
const HELD_POLL: Duration = Duration::from_secs(2);

/// Applies batches until `stop` resolves, reconnecting after either side goes away.
/// `on_event` hears every batch that changed something, every schema change applied or
/// held, and every error it retries. The tables are the ones `sync` selects on the origin.
pub async fn follow(
    link: &Link,
    sync: &SyncSettings,
    poll: Duration,
    stop: tokio_util::sync::CancellationToken,
    on_event: &(dyn Fn(FollowEvent) + Send + Sync),
) -> Result<(), PgError> {
    let mut backoff = Duration::from_millis(200);
    let mut last_held: Vec<String> = vec![];
    while !stop.is_cancelled() {
        // A switchover may retire the link while it is reconnecting.
        if let Ok(f) = connect(&link.follower, link.follower_side).await {
            if position(&f, link.follower_side, &link.name).await.ok() == Some(None) {
                on_event(FollowEvent::Retired);
                return Ok(());
            }
        }
        let opened = match reconcile(link, sync, on_event).await {
            Ok(Reconciled::Ready(tables)) => {
                last_held.clear();
                Applier::open(link, &tables).await
            }
            Ok(Reconciled::Held(changes)) => {
                if changes != last_held {
                    on_event(FollowEvent::Held {
                        changes: changes.clone(),
                    });
                    last_held = changes;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(HELD_POLL) => {}
                }
                continue;
            }
            Err(e) => Err(e),
        };
        let mut applier = match opened {
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
        let started = Instant::now();
        loop {
            if started.elapsed() >= RECHECK {
                break;
            }
            let at = Instant::now();
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
                    ms: at.elapsed().as_secs_f64() * 1000.0,
                }),
                Ok(Some(_)) => {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                // Nothing of the batch was written: reconcile, then read it again.
                Err(PgError::SchemaChanged(what)) => {
                    on_event(FollowEvent::SchemaChanged { what });
                    break;
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

enum Reconciled {
    /// The follower's schema is the origin's: follow these tables.
    Ready(Vec<Table>),
    /// A change waits for `cutover db schema apply` (or a fix on the origin): these.
    Held(Vec<String>),
}

/// Brings the follower's schema to the origin's where that is safe and allowed, and copies
/// the tables that are new (or whose copy was cut short). Anything else holds the applier:
/// it applies nothing until the change is resolved, so nothing is written in a shape the
/// follower does not have, and nothing the log holds is lost.
async fn reconcile(
    link: &Link,
    sync: &SyncSettings,
    on_event: &(dyn Fn(FollowEvent) + Send + Sync),
) -> Result<Reconciled, PgError> {
    let origin = connect(&link.origin, link.origin_side).await?;
    let follower = connect(&link.follower, link.follower_side).await?;
    follower
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS cutover.copying (tbl text PRIMARY KEY, since timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .ctx(link.follower_side, "make the list of tables being copied")?;
    let (from, to) = tokio::try_join!(
        drift::shapes(&origin, link.origin_side, sync),
        drift::shapes(&follower, link.follower_side, sync)
    )?;
    let drifts = drift::compare(&from, &to);
    let held: Vec<String> = drifts
        .iter()
        .filter(|d| !d.additive || !sync.apply_schema_changes)
        .map(|d| d.describe.clone())
        .collect();
    if !held.is_empty() {
        return Ok(Reconciled::Held(held));
    }
    let sides = Sides {
        origin: &origin,
        origin_side: link.origin_side,
        origin_url: &link.origin,
        follower: &follower,
        follower_side: link.follower_side,
        follower_url: &link.follower,
    };
    let tables = crate::inspect::tables(&origin, link.origin_side, sync).await?;
    for d in &drifts {
        if d.change == Change::NewTable {
            // Listed before it exists here: a copy cut short is made again.
            mark_copying(&follower, link, &d.display_table(), true).await?;
        }
        let done = schema_change::apply_one(&sides, d, true).await?;
        on_event(FollowEvent::SchemaApplied { change: done });
    }
    let copying: Vec<String> = follower
        .query("SELECT tbl FROM cutover.copying ORDER BY 1", &[])
        .await
        .ctx(link.follower_side, "read the tables being copied")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in copying {
        let Some(t) = tables.iter().find(|t| t.display() == name) else {
            mark_copying(&follower, link, &name, false).await?;
            continue;
        };
        if let Err(e) = super::refuse_keyless(std::slice::from_ref(t), &sync.whole_row_tables) {
            return Ok(Reconciled::Held(vec![format!("new table {name}: {e}")]));
        }
        copy_new_table(link, sync, &origin, &follower, t).await?;
        mark_copying(&follower, link, &name, false).await?;
        on_event(FollowEvent::SchemaApplied {
            change: format!("new table {name} copied"),
        });
    }
    Ok(Reconciled::Ready(tables))
}

async fn mark_copying(
    follower: &Client,
    link: &Link,
    table: &str,
    on: bool,
) -> Result<(), PgError> {
    let sql = if on {
        "INSERT INTO cutover.copying (tbl) VALUES ($1) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM cutover.copying WHERE tbl = $1"
    };
    follower
        .execute(sql, &[&table])
        .await
        .ctx(link.follower_side, "note a table being copied")?;
    Ok(())
}

/// A table new on the origin: its capture first, then its rows from a snapshot exported
/// after it. The applier is not running, so its position is older than that snapshot: the
/// changes in between are applied again on top of the copy, as the state of their keys
/// (which is what the copy holds already or newer), and none is missed.
async fn copy_new_table(
    link: &Link,
    sync: &SyncSettings,
    origin: &Client,
    follower: &Client,
    t: &Table,
) -> Result<(), PgError> {
    let one = std::slice::from_ref(t);
    super::install_capture(origin, link.origin_side, one, &sync.whole_row_tables).await?;
    // What a copy cut short left (a new table has nothing else).
    follower
        .batch_execute(&format!("DELETE FROM {}", t.qualified()))
        .await
        .ctx(
            link.follower_side,
            &format!("empty {} before its copy", t.display()),
        )?;
    let snapshot = super::ExportedSnapshot::export(&link.origin, link.origin_side).await?;
    let counters = crate::copy::TableCounters::for_tables(1);
    let copied = crate::copy::copy_tables(
        &link.origin,
        &link.follower,
        &snapshot.name,
        one,
        sync.copy_jobs,
        &counters,
    )
    .await;
    snapshot.release().await;
    copied.map(|_| ())
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
    /// The origin's schema changed under a batch: nothing of it was applied; the schema is
    /// compared again.
    SchemaChanged {
        what: String,
    },
    /// A change to the origin's schema applied to the follower.
    SchemaApplied {
        change: String,
    },
    /// Changes to the origin's schema that wait for `cutover db schema apply`: the applier
    /// applies nothing meanwhile (the log keeps every change).
    Held {
        changes: Vec<String>,
    },
}
