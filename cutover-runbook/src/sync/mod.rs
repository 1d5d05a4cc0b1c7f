//! `db sync`: schema, one consistent copy, then continuous replication; the steps in order,
//! each journaled, every one idempotent so that a killed or interrupted sync is simply run
//! again.
//!
//! Native mode (default `sync.copy = "parallel"`): pre-data, publication, a slot with its
//! exported snapshot and the parallel copy from it, keys, the subscription on that slot with
//! `copy_data = false`, the rest of the schema. With `sync.copy = "subscription"`: pre-data,
//! keys, publication, the subscription with `copy_data = true` (PostgreSQL's table
//! synchronisation copies each table from a snapshot tied to the slot and catches up from
//! exactly there), a wait until every table is ready, the rest of the schema. Either way the
//! subscription keeps following after `db sync` returns. Last, the target is made ready for
//! production: statistics and materialized views ([`cutover_pg::ready`]). Trigger mode is in
//! `trigger`.
//!
//! Every step is idempotent: the schema parts are restored in single transactions and skipped
//! when already in place, the publication and subscription are made only when missing, a slot
//! orphaned by a `CREATE SUBSCRIPTION` that died half-way is dropped first, and a copy that
//! died half-way is made again from a new slot.

mod copy_step;
mod schema_steps;
mod trigger;

use std::time::Instant;

use cutover_core::engine::Steps;
use cutover_core::plan::CopyMethod;
use cutover_core::{Mode, Plan};
use cutover_pg::inspect::{self};
use cutover_pg::schema;
use cutover_pg::sync::*;
use cutover_pg::{connect, PgError, Side};

use copy_step::{copied_into, parallel_copy};
use schema_steps::{schema_after_copy, schema_keys, schema_pre_data, target_ready, watch_ddl};

/// Runs `db sync`: check, schema, publication, subscription, copy, the rest of the schema.
pub async fn sync(
    plan: &Plan,
    steps: &Steps<'_>,
    progress: &(dyn Fn(&[TableProgress]) + Send + Sync),
) -> Result<SyncSummary, PgError> {
    let started = Instant::now();
    if plan.sync.mode == Mode::Trigger {
        return trigger::sync(plan, steps, progress, started).await;
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
    cutover_pg::preflight_gate::gate(plan, resumed).await?;
    if !resumed {
        cutover_pg::preflight_gate::probe_replication_link(plan, &target).await?;
    }

    watch_ddl(steps, &source).await?;
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
    let analyzed = if parallel {
        parallel_copy(plan, steps, &source, &target, &tables, progress).await?
    } else {
        vec![]
    };
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
    target_ready(plan, steps, &source, &target, &tables, &analyzed).await?;
    Ok(SyncSummary {
        tables: tables.len(),
        rows_estimate: tables.iter().map(|t| t.rows_estimate).sum(),
        bytes: tables.iter().map(|t| t.bytes).sum(),
        duration_ms: started.elapsed().as_millis() as u64,
        resumed,
    })
}
