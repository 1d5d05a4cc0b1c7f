//! `db sync` in native mode: schema, one consistent copy, then continuous replication.
//!
//! The copy and the follow are PostgreSQL's own: a publication on the source and a
//! subscription on the target with `copy_data = true`. The subscription's table
//! synchronisation copies each table from a snapshot tied to the slot and then catches up from
//! exactly that point, so no change is lost or applied twice, and the subscription keeps
//! following after `db sync` returns.
//!
//! Every step is idempotent so a killed or interrupted sync can simply be run again: the schema
//! parts are restored in single transactions and skipped when already in place, the
//! publication and subscription are created only when missing, a slot orphaned by a
//! `CREATE SUBSCRIPTION` that died half-way is dropped first, and a table copy that was under
//! way is finished by the server itself (it never depended on this process).
//!
//! Invariant: a table whose UPDATE/DELETE cannot be published (no primary key, default replica
//! identity) is never added to the publication: doing so would make the source's own UPDATEs
//! and DELETEs on it fail.

use std::time::{Duration, Instant};

use cutover_core::engine::Steps;
use cutover_core::plan::CopyMethod;
use cutover_core::plan::SyncSettings;
use cutover_core::{Mode, Plan};
use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::{connect, ident, literal};
use crate::copy;
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::{self, Table};
use crate::schema;

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
async fn ensure_publication(
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
async fn ensure_subscription(
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
async fn worker_errors(target: &Client, sub: &str) -> Result<i64, PgError> {
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
async fn wait_ready(
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

/// Runs `db sync`: check, schema, publication, subscription, copy, the rest of the schema.
pub async fn sync(
    plan: &Plan,
    steps: &Steps<'_>,
    progress: &(dyn Fn(&[TableProgress]) + Send + Sync),
) -> Result<SyncSummary, PgError> {
    let started = Instant::now();
    if plan.sync.mode == Mode::Trigger {
        return trigger_sync(plan, steps, progress, started).await;
    }
    let source = connect(&plan.source.url, Side::Source).await?;
    let target = connect(&plan.target.url, Side::Target).await?;
    let tables = inspect::tables(&source, Side::Source, &plan.sync).await?;
    refuse_unsafe(&tables)?;
    refuse_unsafe_partitions(&source, &tables).await?;
    let parallel = plan.sync.copy == CopyMethod::Parallel;
    let has_sub = subscription_oid(&target, &plan.sync.subscription())
        .await?
        .is_some();
    let has_slot = parallel && slot_exists(&source, &plan.sync.slot()).await?;
    let ours = parallel && copied_into(steps, &plan.target.url.location())?;
    let resumed = has_sub || has_slot || ours;
    if has_slot && !has_sub && !ours {
        return Err(PgError::Refused(format!(
            "replication slot {} exists on the source, but this plan's journal shows no copy into {}; \
             run `cutover db cleanup` (it drops the slot) and then `cutover db sync`",
            plan.sync.slot(),
            plan.target.url.location()
        )));
    }
    crate::preflight_gate::gate(plan, resumed).await?;
    if !resumed {
        crate::preflight_gate::probe_replication_link(plan, &target).await?;
    }

    let dump = steps
        .run("schema.dump", "pg_dump --schema-only of the source", || {
            schema::dump(&plan.source.url, &source, &plan.sync)
        })
        .await?;
    schema_pre_data(plan, steps, &target, &tables, &dump).await?;
    // Before the slot: changes are decoded with the catalog as it was when they were made,
    // and the publication must exist in it.
    steps
        .run(
            "publication",
            "create the publication on the source",
            || ensure_publication(&source, &plan.sync, &tables),
        )
        .await?;
    // Keys exist before the subscription applies anything: after our own copy, or before the
    // subscription's copy (whose catch-up applies changes).
    if parallel {
        parallel_copy(plan, steps, &source, &target, &tables, progress).await?;
    }
    schema_keys(plan, steps, &source, &target, &tables, &dump).await?;
    let intent = if parallel {
        "create the subscription on the target, on the copy's slot"
    } else {
        "create the subscription on the target (starts the copy)"
    };
    steps
        .run("subscription", intent, || {
            ensure_subscription(plan, &source, &target)
        })
        .await?;
    if parallel {
        steps
            .run(
                "stream",
                "wait until the subscription streams from the slot",
                || wait_streaming(plan, &source, &target),
            )
            .await?;
    } else {
        steps
            .run("copy", "wait until every table is copied and ready", || {
                wait_ready(plan, &target, &tables, progress)
            })
            .await?;
    }
    schema_after_copy(plan, steps, &source, &target, &tables, &dump).await?;
    Ok(SyncSummary {
        tables: tables.len(),
        rows_estimate: tables.iter().map(|t| t.rows_estimate).sum(),
        bytes: tables.iter().map(|t| t.bytes).sum(),
        duration_ms: started.elapsed().as_millis() as u64,
        resumed,
    })
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

/// `db sync` in trigger mode: schema, capture triggers, the copy from one exported snapshot
/// (its snapshot is the applier's first position), keys, the rest of the schema. The
/// caller then follows with [`crate::trigger::follow`].
async fn trigger_sync(
    plan: &Plan,
    steps: &Steps<'_>,
    progress: &(dyn Fn(&[TableProgress]) + Send + Sync),
    started: Instant,
) -> Result<SyncSummary, PgError> {
    use crate::trigger;
    let source = connect(&plan.source.url, Side::Source).await?;
    let target = connect(&plan.target.url, Side::Target).await?;
    let tables = inspect::tables(&source, Side::Source, &plan.sync).await?;
    if tables.is_empty() {
        return Err(PgError::Refused(
            "no table to move; check sync.schemas and sync.exclude_tables in the plan".into(),
        ));
    }
    trigger::refuse_keyless(&tables, &plan.sync.whole_row_tables)?;
    let link = forward_link(plan);
    let copied = trigger::position(&target, Side::Target, &link.name)
        .await?
        .is_some();
    let location = plan.target.url.location();
    let ours = copied_into(steps, &location)?;
    crate::preflight_gate::gate(plan, copied || ours).await?;
    let dump = steps
        .run("schema.dump", "pg_dump --schema-only of the source", || {
            schema::dump(&plan.source.url, &source, &plan.sync)
        })
        .await?;
    schema_pre_data(plan, steps, &target, &tables, &dump).await?;
    steps
        .run(
            "capture",
            &format!(
                "install the change log and capture triggers on {} source tables",
                tables.len()
            ),
            || async {
                trigger::install_capture(
                    &source,
                    Side::Source,
                    &tables,
                    &plan.sync.whole_row_tables,
                )
                .await?;
                Ok::<_, PgError>(format!("capture on {} tables", tables.len()))
            },
        )
        .await?;
    if copied {
        steps.skip(
            "copy",
            "the copy is done; the applier's position is on the target",
        )?;
    } else {
        let counters = copy::TableCounters::for_tables(tables.len());
        let intent = format!(
            "copy {} tables from one exported snapshot into {location}, {} parts at once",
            tables.len(),
            plan.sync.copy_jobs
        );
        steps
            .run("copy", &intent, || async {
                if ours {
                    copy::truncate(&target, &tables).await?;
                }
                // Exported after the triggers exist: every change the copy does not see is in the log.
                let snapshot = trigger::ExportedSnapshot::export(&plan.source.url, Side::Source).await?;
                let stats = {
                    let work = copy::copy_tables(
                        &plan.source.url,
                        &plan.target.url,
                        &snapshot.name,
                        &tables,
                        plan.sync.copy_jobs,
                        &counters,
                    );
                    tokio::pin!(work);
                    loop {
                        tokio::select! {
                            r = &mut work => break r,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => progress(&copy_progress(&tables, &counters)),
                        }
                    }
                }?;
                progress(&copy_progress(&tables, &counters));
                trigger::set_position(&target, Side::Target, &link.name, &snapshot.position).await?;
                snapshot.release().await;
                Ok::<_, PgError>(format!("{} rows into {location}", stats.rows))
            })
            .await?;
    }
    schema_keys(plan, steps, &source, &target, &tables, &dump).await?;
    schema_after_copy(plan, steps, &source, &target, &tables, &dump).await?;
    // The target's own triggers would fire again for every applied row (and write twice
    // what the source's already wrote); the applier's writes are replication, not events.
    steps
        .run(
            "triggers.follower",
            "disable the target's user triggers while it follows",
            || async {
                let mut sql = String::new();
                for t in &tables {
                    sql.push_str(&format!(
                        "ALTER TABLE {} DISABLE TRIGGER USER;",
                        t.qualified()
                    ));
                }
                target
                    .batch_execute(&sql)
                    .await
                    .ctx(Side::Target, "disable the target's triggers")?;
                Ok::<_, PgError>(())
            },
        )
        .await?;
    Ok(SyncSummary {
        tables: tables.len(),
        rows_estimate: tables.iter().map(|t| t.rows_estimate).sum(),
        bytes: tables.iter().map(|t| t.bytes).sum(),
        duration_ms: started.elapsed().as_millis() as u64,
        resumed: copied || ours,
    })
}

async fn schema_pre_data(
    plan: &Plan,
    steps: &Steps<'_>,
    target: &Client,
    tables: &[Table],
    dump: &schema::SchemaDump,
) -> Result<(), PgError> {
    if !plan.sync.copy_schema {
        steps.skip("schema.pre_data", "sync.copy_schema = false")?;
        return Ok(());
    }
    let present = schema::tables_present(target, tables).await?;
    if present == tables.len() {
        steps.skip(
            "schema.pre_data",
            "every table already exists on the target",
        )?;
    } else if present > 0 {
        return Err(PgError::Refused(format!(
            "{present} of the {} tables already exist on the target, the others do not; drop them on the target, or create them all and set sync.copy_schema = false",
            tables.len()
        )));
    } else {
        restore_step(
            plan,
            steps,
            "schema.pre_data",
            "restore types, tables and functions on the target",
            dump,
            &dump.pre_data,
            dump.counts.0,
        )
        .await?;
    }
    Ok(())
}

/// Primary keys and replica identity indexes: before the subscription applies anything.
async fn schema_keys(
    plan: &Plan,
    steps: &Steps<'_>,
    source: &Client,
    target: &Client,
    tables: &[Table],
    dump: &schema::SchemaDump,
) -> Result<(), PgError> {
    if !plan.sync.copy_schema {
        steps.skip("schema.keys", "sync.copy_schema = false")?;
        return Ok(());
    }
    let (src_keys, ..) = schema::object_counts(source, Side::Source, tables).await?;
    let (dst_keys, ..) = schema::object_counts(target, Side::Target, tables).await?;
    if dst_keys >= src_keys {
        steps.skip("schema.keys", "primary keys already in place")?;
        return Ok(());
    }
    restore_step(
        plan,
        steps,
        "schema.keys",
        "create primary keys and replica identity indexes",
        dump,
        &dump.keys,
        dump.counts.1,
    )
    .await
}

async fn schema_after_copy(
    plan: &Plan,
    steps: &Steps<'_>,
    source: &Client,
    target: &Client,
    tables: &[Table],
    dump: &schema::SchemaDump,
) -> Result<(), PgError> {
    if !plan.sync.copy_schema {
        steps.skip("schema.post_data", "sync.copy_schema = false")?;
        return Ok(());
    }
    let (_, si, sc, st) = schema::object_counts(source, Side::Source, tables).await?;
    let (_, ti, tc, tt) = schema::object_counts(target, Side::Target, tables).await?;
    // Restored in one transaction: when an earlier run tried it and every object is there, it landed.
    let tried = steps.journal().last("schema.post_data")?.is_some();
    if dump.counts.2 == 0 || (tried && ti >= si && tc >= sc && tt >= st) {
        steps.skip(
            "schema.post_data",
            "indexes, constraints and triggers already in place",
        )?;
        return Ok(());
    }
    // The restore is one transaction that locks tables in its own order (an index on one
    // table, then a foreign key across two), while the subscription's transactions lock them
    // in theirs: each can end up waiting for the other, and PostgreSQL then ends one of them
    // as a deadlock (seen under load). So the subscription is paused for the restore, and
    // its apply worker gone before it starts; the slot keeps every change meanwhile, and the
    // subscription starts again after it whatever the outcome. A run killed in between
    // leaves it paused; the next `db sync` enables it (see `ensure_subscription`).
    let sub = plan.sync.subscription();
    let paused =
        crate::replication::subscription_enabled(target, Side::Target, &sub).await? == Some(true);
    if paused {
        crate::replication::set_enabled(target, Side::Target, &sub, false).await?;
        if let Err(e) = wait_no_worker(target, &sub).await {
            let _ = crate::replication::set_enabled(target, Side::Target, &sub, true).await;
            return Err(e);
        }
    }
    let restored = restore_step(
        plan,
        steps,
        "schema.post_data",
        "create indexes, constraints and triggers on the target",
        dump,
        &dump.post_data,
        dump.counts.2,
    )
    .await;
    if paused {
        let resumed = crate::replication::set_enabled(target, Side::Target, &sub, true).await;
        restored?;
        resumed?;
        // `db sync` returns once changes are followed again: the launcher starts the apply
        // worker of a subscription enabled again within `wal_retrieve_retry_interval`.
        wait_streaming(plan, source, target).await?;
        return Ok(());
    }
    restored
}

/// Waits until the subscription has no worker left (its apply worker exits at the end of
/// the transaction it is applying once the subscription is disabled).
async fn wait_no_worker(target: &Client, sub: &str) -> Result<(), PgError> {
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

async fn slot_exists(source: &Client, slot: &str) -> Result<bool, PgError> {
    Ok(source
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(Side::Source, "look for the replication slot")?
        .is_some())
}

fn copy_progress(tables: &[Table], counters: &[copy::TableCounters]) -> Vec<TableProgress> {
    use std::sync::atomic::Ordering::Relaxed;
    tables
        .iter()
        .zip(counters)
        .map(|(t, c)| {
            let (rows, bytes, left) = (
                c.rows.load(Relaxed),
                c.bytes.load(Relaxed),
                c.parts_left.load(Relaxed),
            );
            TableProgress {
                table: t.display(),
                state: if left == 0 {
                    "copied"
                } else if bytes > 0 {
                    "copying"
                } else {
                    "queued"
                },
                rows_done: rows,
                rows_estimate: t.rows_estimate,
                bytes_done: bytes,
                bytes_estimate: t.bytes,
            }
        })
        .collect()
}

/// The parallel copy, restartable: a copy an earlier run finished is kept (its slot holds every
/// change since); one that died half-way is emptied and made again from a new slot.
async fn parallel_copy(
    plan: &Plan,
    steps: &Steps<'_>,
    source: &Client,
    target: &Client,
    tables: &[Table],
    progress: &(dyn Fn(&[TableProgress]) + Send + Sync),
) -> Result<(), PgError> {
    let slot = plan.sync.slot();
    if subscription_oid(target, &plan.sync.subscription())
        .await?
        .is_some()
    {
        return Ok(steps.skip("copy", "the subscription runs already")?);
    }
    let location = plan.target.url.location();
    // Whether a copy was ever started into this very target, per the journal.
    let ours = copied_into(steps, &location)?;
    if slot_exists(source, &slot).await? {
        if let Some(rows) = finished_copy(steps, &location)? {
            if target_rows(target, tables).await? == rows {
                return Ok(steps.skip(
                    "copy",
                    &format!("kept the copy of an earlier run: {rows} rows into {location}; slot {slot} holds every change since"),
                )?);
            }
        }
        if !ours {
            return Err(PgError::Refused(format!(
                "replication slot {slot} exists on the source, but this plan's journal shows no copy into {location}; \
                 run `cutover db cleanup` (it drops the slot) and then `cutover db sync`"
            )));
        }
        crate::cleanup::drop_slot(source, &slot).await?;
    }
    let counters = copy::TableCounters::for_tables(tables.len());
    let intent = format!(
        "copy {} tables from slot {slot}'s snapshot into {location}, {} parts at once",
        tables.len(),
        plan.sync.copy_jobs
    );
    steps
        .run("copy", &intent, || async {
            // Rows a copy that died half-way left behind (only ever in this target of ours).
            if ours {
                copy::truncate(target, tables).await?;
            }
            let snapshot = copy::SnapshotSlot::create(&plan.source.url, &slot).await?;
            let stats = {
                let work = copy::copy_tables(
                    &plan.source.url,
                    &plan.target.url,
                    &snapshot.snapshot,
                    tables,
                    plan.sync.copy_jobs,
                    &counters,
                );
                tokio::pin!(work);
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        r = &mut work => break r,
                        _ = tick.tick() => progress(&copy_progress(tables, &counters)),
                    }
                }
            };
            progress(&copy_progress(tables, &counters));
            let lsn = snapshot.consistent_lsn.clone();
            snapshot.release().await;
            let stats = stats?;
            Ok::<_, PgError>(format!(
                "{} rows, {} bytes in {} parts, consistent at {lsn}",
                stats.rows, stats.bytes, stats.parts
            ))
        })
        .await
        .map(|_| ())
}

/// Restores one part of the schema as a journaled step.
async fn restore_step(
    plan: &Plan,
    steps: &Steps<'_>,
    step: &str,
    intent: &str,
    dump: &schema::SchemaDump,
    part: &std::path::Path,
    entries: usize,
) -> Result<(), PgError> {
    steps
        .run(step, intent, || async {
            schema::restore(dump, part, &plan.target.url).await?;
            Ok::<_, PgError>(format!("{entries} entries"))
        })
        .await
        .map(|_| ())
}

/// Whether the last copy the journal shows started (whatever became of it) went into `location`.
fn copied_into(steps: &Steps<'_>, location: &str) -> Result<bool, PgError> {
    let last = steps.journal().last("copy")?;
    Ok(last.is_some_and(|r| r.intent.contains(&format!(" into {location}"))))
}

/// Rows of the last copy into `location` that finished (or was kept), per the journal.
fn finished_copy(steps: &Steps<'_>, location: &str) -> Result<Option<i64>, PgError> {
    use cutover_core::journal::Status;
    let Some(r) = steps.journal().last("copy")? else {
        return Ok(None);
    };
    let text = r.outcome.unwrap_or_default();
    let finished = matches!(r.status, Some(Status::Ok) | Some(Status::Skipped));
    if !finished
        || !(r.intent.contains(&format!(" into {location}"))
            || text.contains(&format!(" into {location}")))
    {
        return Ok(None);
    }
    // "<rows> rows, ..." or "kept the copy of an earlier run: <rows> rows into ..."
    let rows = text
        .split(" rows")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok());
    Ok(rows)
}

/// Rows now in the target's copies of `tables` (before the subscription applies anything,
/// exactly what the copy wrote).
async fn target_rows(target: &Client, tables: &[Table]) -> Result<i64, PgError> {
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
async fn wait_streaming(plan: &Plan, source: &Client, target: &Client) -> Result<String, PgError> {
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
async fn refuse_unsafe_partitions(source: &Client, tables: &[Table]) -> Result<(), PgError> {
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
