//! What `db sync` is made of (the procedure itself is cutover-runbook's `sync`): the
//! publication and the subscription, made only when missing; the waits for every table to be
//! ready and for the subscription to stream; the per-table progress; the trigger-mode links.
//!
//! Invariant: a table whose UPDATE/DELETE cannot be published (no primary key, default replica
//! identity) is never added to the publication: doing so would make the source's own UPDATEs
//! and DELETEs on it fail.

use std::time::{Duration, Instant};

use cutover_core::plan::CopyMethod;
use cutover_core::plan::SyncSettings;
use cutover_core::Plan;
use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::{connect, ident, literal};
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::{self, Table};

/// Where one table's initial copy stands.
#[derive(Clone, Debug, Serialize)]
pub struct TableProgress {
    pub table: String,
    /// init, copying, copied, synced, ready.
    pub state: &'static str,
    pub rows_done: i64,
    pub rows_estimate: i64,
    pub bytes_done: i64,
    pub bytes_estimate: i64,
}

/// What `db sync` did.
#[derive(Clone, Debug, Serialize)]
pub struct SyncSummary {
    pub tables: usize,
    pub rows_estimate: i64,
    pub bytes: i64,
    pub duration_ms: u64,
    /// True when an earlier run had already started the sync.
    pub resumed: bool,
}

pub fn state_name(code: &str) -> &'static str {
    match code {
        "i" => "init",
        "d" => "copying",
        "f" => "copied",
        "s" => "synced",
        "r" => "ready",
        _ => "unknown",
    }
}

/// Refuses, before anything is created, what the sync cannot do safely. Every problem at once.
pub fn refuse_unsafe(tables: &[Table]) -> Result<(), PgError> {
    let mut problems = vec![];
    if tables.is_empty() {
        problems.push(
            "no table to move; check sync.schemas and sync.exclude_tables in the plan".to_string(),
        );
    }
    for t in tables {
        if t.cannot_publish() {
            problems.push(format!(
                "table {} has no primary key and no usable replica identity, so publishing it would make its UPDATEs and DELETEs fail on the source; \
                 add a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL (or list it in sync.exclude_tables)",
                t.display(),
                t.qualified()
            ));
        }
        if t.unlogged {
            problems.push(format!(
                "table {} is UNLOGGED and cannot be replicated; run ALTER TABLE {} SET LOGGED (or list it in sync.exclude_tables)",
                t.display(),
                t.qualified()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PgError::Refused(problems.join("\n")))
    }
}

/// The oid of the subscription of this name in the target's current database, if any.
pub async fn subscription_oid(target: &Client, name: &str) -> Result<Option<u32>, PgError> {
    let row = target
        .query_opt(
            "SELECT oid FROM pg_subscription WHERE subname = $1
                AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
        .ctx(Side::Target, "look for the subscription")?;
    Ok(row.map(|r| r.get(0)))
}

/// Creates the publication, or checks that the one there covers the same tables.
pub async fn ensure_publication(
    source: &Client,
    sync: &SyncSettings,
    tables: &[Table],
) -> Result<String, PgError> {
    let name = sync.publication();
    let mut wanted: Vec<String> = tables.iter().map(Table::display).collect();
    wanted.sort();
    match crate::replication::publication_tables(source, Side::Source, &name).await? {
        Some(have) if have == wanted => Ok(format!("publication {name} already in place")),
        Some(_) => Err(PgError::Refused(format!(
            "publication {name} on the source covers other tables than the plan selects (the selection changed since the sync started); \
             run `cutover db cleanup` and then `cutover db sync` again"
        ))),
        None => {
            // ONLY: an inheritance child is a table of its own, in the publication only when
            // selected itself (a partitioned table always brings its partitions).
            let list: Vec<String> = tables
                .iter()
                .map(|t| if t.partitioned { t.qualified() } else { format!("ONLY {}", t.qualified()) })
                .collect();
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
                ident(&name),
                list.join(", ")
            );
            source.batch_execute(&sql).await.ctx(Side::Source, "create the publication")?;
            Ok(format!("publication {name} created for {} tables", tables.len()))
        }
    }
}

/// Creates the subscription (which starts the copy), unless it exists.
pub async fn ensure_subscription(
    plan: &Plan,
    source: &Client,
    target: &Client,
) -> Result<String, PgError> {
    let sync = &plan.sync;
    // With the parallel copy the slot exists already and the data is in place.
    let own_copy = sync.copy == CopyMethod::Subscription;
    let (sub, slot) = (sync.subscription(), sync.slot());
    if subscription_oid(target, &sub).await?.is_some() {
        target
            .batch_execute(&format!("ALTER SUBSCRIPTION {} ENABLE", ident(&sub)))
            .await
            .ctx(Side::Target, "enable the subscription")?;
        return Ok(format!("subscription {sub} already in place"));
    }
    if !own_copy {
        // The copy's slot must still hold every change since the copy's snapshot.
        let state = source
            .query_opt(
                "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ctx(Side::Source, "look for the copy's slot")?;
        match state.map(|r| r.get::<_, String>(0)) {
            Some(w) if w != "lost" => {}
            found => {
                return Err(PgError::Refused(format!(
                    "replication slot {slot} on the source {} since the copy, so the changes made meanwhile cannot be followed; \
                     run `cutover db sync` again: it copies again from a new slot",
                    if found.is_some() { "has lost WAL it needed" } else { "was dropped" }
                )))
            }
        }
    }
    // A CREATE SUBSCRIPTION killed after it made the slot leaves the slot behind.
    let orphan = if !own_copy {
        None
    } else {
        source
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ctx(Side::Source, "look for an orphaned slot")?
    };
    if let Some(row) = orphan {
        if row.get::<_, bool>(0) {
            return Err(PgError::Refused(format!(
                "replication slot {slot} on the source is in use by another client; stop it, or set another sync.name in the plan"
            )));
        }
        source
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .ctx(Side::Source, "drop the orphaned slot")?;
    }
    let conninfo = plan.source.replication_url.conninfo_with_password();
    let sql = format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (slot_name = {}, copy_data = {own_copy}, create_slot = {own_copy})",
        ident(&sub),
        literal(conninfo.expose()),
        ident(&sync.publication()),
        literal(&slot)
    );
    target.batch_execute(&sql).await.map_err(|e| {
        let err = PgError::sql(Side::Target, "create the subscription", e);
        PgError::Refused(cutover_core::redact(
            &err.to_string(),
            plan.secrets().iter(),
        ))
    })?;
    Ok(if own_copy {
        format!("subscription {sub} created; the copy has started")
    } else {
        format!("subscription {sub} created; it streams from slot {slot}")
    })
}

/// Per-table copy state of the subscription, from the target.
pub async fn table_progress(
    target: &Client,
    sub: &str,
    tables: &[Table],
) -> Result<Vec<TableProgress>, PgError> {
    let rows = target
        .query(
            "SELECT n.nspname || '.' || c.relname, sr.srsubstate::text,
                    coalesce(p.tuples_processed, 0), coalesce(p.bytes_processed, 0)
               FROM pg_subscription s
               JOIN pg_subscription_rel sr ON sr.srsubid = s.oid
               JOIN pg_class c ON c.oid = sr.srrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_stat_progress_copy p ON p.relid = sr.srrelid AND p.datid = s.subdbid
              WHERE s.subname = $1
                AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              ORDER BY 1",
            &[&sub],
        )
        .await
        .ctx(Side::Target, "read the copy progress")?;
    let mut out = vec![];
    for t in tables {
        let name = t.display();
        let row = rows.iter().find(|r| r.get::<_, String>(0) == name);
        let state = row
            .map(|r| state_name(&r.get::<_, String>(1)))
            .unwrap_or("init");
        let (mut rows_done, mut bytes_done) = row
            .map(|r| (r.get::<_, i64>(2), r.get::<_, i64>(3)))
            .unwrap_or((0, 0));
        if matches!(state, "copied" | "synced" | "ready") {
            rows_done = rows_done.max(t.rows_estimate);
            bytes_done = bytes_done.max(t.bytes);
        }
        out.push(TableProgress {
            table: name,
            state,
            rows_done,
            rows_estimate: t.rows_estimate,
            bytes_done,
            bytes_estimate: t.bytes,
        });
    }
    Ok(out)
}

/// Errors the subscription's workers have hit so far (sync + apply).
pub async fn worker_errors(target: &Client, sub: &str) -> Result<i64, PgError> {
    let row = target
        .query_opt(
            "SELECT sync_error_count + apply_error_count FROM pg_stat_subscription_stats WHERE subname = $1",
            &[&sub],
        )
        .await
        .ctx(Side::Target, "read the subscription's error count")?;
    Ok(row.map(|r| r.get(0)).unwrap_or(0))
}

/// Waits until every table is ready, reporting progress.
pub async fn wait_ready(
    plan: &Plan,
    target: &Client,
    tables: &[Table],
    progress: &(dyn Fn(&[TableProgress]) + Send + Sync),
) -> Result<String, PgError> {
    let sub = plan.sync.subscription();
    let started = Instant::now();
    let errors_at_start = worker_errors(target, &sub).await?;
    let mut last_change = Instant::now();
    let mut last_done = -1i64;
    loop {
        let snapshot = table_progress(target, &sub, tables).await?;
        progress(&snapshot);
        if snapshot.iter().all(|t| t.state == "ready") {
            return Ok(format!("{} tables ready", snapshot.len()));
        }
        let done: i64 = snapshot
            .iter()
            .map(|t| t.rows_done + t.bytes_done)
            .sum::<i64>()
            + snapshot.iter().filter(|t| t.state == "ready").count() as i64;
        if done != last_done {
            last_done = done;
            last_change = Instant::now();
        }
        let errors = worker_errors(target, &sub).await? - errors_at_start;
        if errors > 0 && last_change.elapsed() > Duration::from_secs(60) {
            return Err(PgError::Refused(format!(
                "the subscription's workers failed {errors} times and the copy has not moved for a minute; \
                 read the target server's log (often the target cannot reach the source: set source.replication_url to an address the target server can connect to)"
            )));
        }
        if started.elapsed() > plan.sync.ready_timeout {
            return Err(PgError::Refused(format!(
                "not every table is ready after {}; the copy goes on in the server: run `cutover db sync` again to keep waiting, or raise sync.ready_timeout",
                humanize(plan.sync.ready_timeout)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// 5400 s → "1h30m".
fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// The name of the forward trigger-mode link (its position row on the target).
pub fn forward_link(plan: &Plan) -> crate::trigger::Link {
    crate::trigger::Link {
        name: format!("{}_forward", plan.sync.name),
        origin: plan.source.url.clone(),
        origin_side: Side::Source,
        follower: plan.target.url.clone(),
        follower_side: Side::Target,
        whole_row_tables: plan.sync.whole_row_tables.clone(),
    }
}

/// The reverse trigger-mode link a switchover starts: the target followed... by the source.
pub fn reverse_link(plan: &Plan) -> crate::trigger::Link {
    crate::trigger::Link {
        name: format!("{}_reverse", plan.sync.name),
        origin: plan.target.url.clone(),
        origin_side: Side::Target,
        follower: plan.source.url.clone(),
        follower_side: Side::Source,
        whole_row_tables: plan.sync.whole_row_tables.clone(),
    }
}

/// The trigger-mode link in force: the reverse one while the source holds its position
/// (after a switchover), else the forward one.
pub async fn current_link(plan: &Plan) -> Result<crate::trigger::Link, PgError> {
    let reverse = reverse_link(plan);
    let source = connect(&plan.source.url, Side::Source).await?;
    if crate::trigger::position(&source, Side::Source, &reverse.name)
        .await?
        .is_some()
    {
        return Ok(reverse);
    }
    Ok(forward_link(plan))
}

/// Waits until the subscription has no worker left (its apply worker exits at the end of
/// the transaction it is applying once the subscription is disabled).
pub async fn wait_no_worker(target: &Client, sub: &str) -> Result<(), PgError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running: i64 = target
            .query_one(
                "SELECT count(*) FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL",
                &[&sub],
            )
            .await
            .ctx(Side::Target, "look for the subscription's workers")?
            .get(0);
        if running == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(PgError::Refused(format!(
                "the apply worker of subscription {sub} did not stop within 60 s of ALTER SUBSCRIPTION ... DISABLE; \
                 look for a long transaction it is applying (pg_stat_activity on the target), then run `cutover db sync` again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn slot_exists(source: &Client, slot: &str) -> Result<bool, PgError> {
    Ok(source
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(Side::Source, "look for the replication slot")?
        .is_some())
}

/// Rows now in the target's copies of `tables` (before the subscription applies anything,
/// exactly what the copy wrote).
pub async fn target_rows(target: &Client, tables: &[Table]) -> Result<i64, PgError> {
    if tables.is_empty() {
        return Ok(0);
    }
    let counts: Vec<String> = tables
        .iter()
        .map(|t| format!("SELECT count(*) AS n FROM {}", t.qualified()))
        .collect();
    let row = target
        .query_one(
            &format!(
                "SELECT coalesce(sum(n), 0)::bigint FROM ({}) c",
                counts.join(" UNION ALL ")
            ),
            &[],
        )
        .await
        .ctx(Side::Target, "count the copied rows")?;
    Ok(row.get(0))
}

/// Waits until the subscription's apply worker runs and streams from the slot.
pub async fn wait_streaming(
    plan: &Plan,
    source: &Client,
    target: &Client,
) -> Result<String, PgError> {
    let (sub, slot) = (plan.sync.subscription(), plan.sync.slot());
    let started = Instant::now();
    let errors_at_start = worker_errors(target, &sub).await?;
    loop {
        let worker = target
            .query_opt(
                "SELECT 1 FROM pg_stat_subscription w JOIN pg_subscription s ON s.oid = w.subid
                  WHERE s.subname = $1 AND w.relid IS NULL AND w.pid IS NOT NULL",
                &[&sub],
            )
            .await
            .ctx(Side::Target, "look for the apply worker")?
            .is_some();
        let active = source
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .ctx(Side::Source, "look at the slot")?
            .is_some();
        if worker && active {
            return Ok(format!("subscription {sub} streams from slot {slot}"));
        }
        let errors = worker_errors(target, &sub).await? - errors_at_start;
        if errors > 0 && started.elapsed() > Duration::from_secs(60)
            || started.elapsed() > plan.sync.ready_timeout
        {
            return Err(PgError::Refused(format!(
                "the subscription does not stream from slot {slot} ({errors} worker errors); read the target server's log, \
                 then run `cutover db sync` again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The same rules for every partition of a partitioned table (see [`inspect::PartitionIssue`]).
pub async fn refuse_unsafe_partitions(source: &Client, tables: &[Table]) -> Result<(), PgError> {
    let problems: Vec<String> = inspect::partition_issues(source, Side::Source, tables)
        .await?
        .iter()
        .flat_map(|p| p.problems())
        .map(|(_, message, fix)| format!("{message}; {fix}"))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PgError::Refused(problems.join("\n")))
    }
}
