//! `db sync` in trigger mode: schema, the capture triggers, the copy from one snapshot
//! exported after them (its snapshot is the applier's first position), keys, the rest of the
//! schema, and the target's own triggers off while it follows. The caller then follows with
//! `cutover_pg::trigger::follow`.

use std::time::{Duration, Instant};

use cutover_core::engine::Steps;
use cutover_core::Plan;
use cutover_pg::copy;
use cutover_pg::error::SqlContext;
use cutover_pg::inspect::{self};
use cutover_pg::schema;
use cutover_pg::sync::*;
use cutover_pg::{connect, PgError, Side};

use super::copy_step::{copied_into, copy_progress};
use super::schema_steps::{
    schema_after_copy, schema_keys, schema_pre_data, target_ready, watch_ddl,
};

/// `db sync` in trigger mode: schema, capture triggers, the copy from one exported snapshot
/// (its snapshot is the applier's first position), keys, the rest of the schema. The
/// caller then follows with [`crate::trigger::follow`].
pub(super) async fn sync(
    plan: &Plan,
    steps: &Steps<'_>,
    progress: &(dyn Fn(&[TableProgress]) + Send + Sync),
    started: Instant,
) -> Result<SyncSummary, PgError> {
    use cutover_pg::trigger;
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
    cutover_pg::preflight_gate::gate(plan, copied || ours).await?;
    watch_ddl(steps, &source).await?;
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
    let analyzed = std::sync::Mutex::new(vec![]);
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
                    let work = copy::copy_tables_shared(
                        &plan.source.url,
                        &plan.target.url,
                        &snapshot.name,
                        &tables,
                        &plan.sync,
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
                if let Some(built) = &stats.built {
                    *analyzed.lock().unwrap_or_else(|p| p.into_inner()) = built.analyzed.clone();
                    return Ok::<_, PgError>(format!("{} rows into {location}; {}", stats.rows, built.summary()));
                }
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
    let analyzed = analyzed.into_inner().unwrap_or_else(|p| p.into_inner());
    target_ready(plan, steps, &source, &target, &tables, &analyzed).await?;
    Ok(SyncSummary {
        tables: tables.len(),
        rows_estimate: tables.iter().map(|t| t.rows_estimate).sum(),
        bytes: tables.iter().map(|t| t.bytes).sum(),
        duration_ms: started.elapsed().as_millis() as u64,
        resumed: copied || ours,
    })
}
