//! The schema's three parts as journaled steps: pre-data before the copy, the keys before
//! anything is applied, the rest after the copy.

use cutover_core::engine::Steps;
use cutover_core::Plan;
use cutover_pg::inspect::Table;
use cutover_pg::schema;
use cutover_pg::sync::*;
use cutover_pg::{PgError, Side};
use tokio_postgres::Client;

pub(super) async fn schema_pre_data(
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
pub(super) async fn schema_keys(
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

pub(super) async fn schema_after_copy(
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
    // A foreign key the copy added but did not get to validate (the run died in between).
    let validated = cutover_pg::copy::validate_left(source, target, tables).await?;
    let done = |what: &str| {
        if validated > 0 {
            format!("{what}; {validated} foreign keys left NOT VALID validated")
        } else {
            what.to_string()
        }
    };
    if dump.counts.2 == 0 || (tried && ti >= si && tc >= sc && tt >= st) {
        steps.skip(
            "schema.post_data",
            &done("indexes, constraints and triggers already in place"),
        )?;
        return Ok(());
    }
    // What the copy built as the tables landed (or an earlier run made) is left out.
    let (list, left) = schema::remaining(dump, source, target).await?;
    if left == 0 {
        steps.skip(
            "schema.post_data",
            &done(&format!(
                "the {} indexes, constraints and triggers were built as the tables landed",
                dump.counts.2
            )),
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
    let paused = cutover_pg::replication::subscription_enabled(target, Side::Target, &sub).await?
        == Some(true);
    if paused {
        cutover_pg::replication::set_enabled(target, Side::Target, &sub, false).await?;
        if let Err(e) = wait_no_worker(target, &sub).await {
            let _ = cutover_pg::replication::set_enabled(target, Side::Target, &sub, true).await;
            return Err(e);
        }
    }
    let restored = restore_step(
        plan,
        steps,
        "schema.post_data",
        "create indexes, constraints and triggers on the target",
        dump,
        &list,
        left,
    )
    .await;
    if paused {
        let resumed = cutover_pg::replication::set_enabled(target, Side::Target, &sub, true).await;
        restored?;
        resumed?;
        // `db sync` returns once changes are followed again: the launcher starts the apply
        // worker of a subscription enabled again within `wal_retrieve_retry_interval`.
        wait_streaming(plan, source, target).await?;
        return Ok(());
    }
    restored
}

/// Restores one part of the schema as a journaled step.
pub(super) async fn restore_step(
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

/// The target ready for production before anyone switches to it: planner statistics for every
/// copied table (a COPY leaves none) and every materialized view populated on the source
/// populated here too (`pg_dump --schema-only` creates them empty). Run on every `db sync`,
/// resumed or not: it only reads the source and refreshes the target's statistics and views.
/// `analyzed` are the tables the copy analyzed as they landed, in this very run.
pub(super) async fn target_ready(
    plan: &Plan,
    steps: &Steps<'_>,
    source: &Client,
    target: &Client,
    tables: &[Table],
    analyzed: &[String],
) -> Result<(), PgError> {
    // Large objects are not replicated in either mode: copied by comparison, here and again
    // at the switch (`cutover_pg::large_objects`).
    let (count, _) = cutover_pg::large_objects::volume(source, Side::Source).await?;
    let (there, _) = cutover_pg::large_objects::volume(target, Side::Target).await?;
    if count + there == 0 {
        steps.skip("large_objects", "the source has no large objects")?;
    } else {
        steps
            .run(
                "large_objects",
                &format!("copy the source's {count} large objects to the target"),
                || cutover_pg::large_objects::copy((source, Side::Source), (target, Side::Target)),
            )
            .await?;
    }
    steps
        .run(
            "target.ready",
            "ANALYZE the copied tables and populate the materialized views on the target",
            || async {
                let rest: Vec<Table> = tables
                    .iter()
                    .filter(|t| !analyzed.contains(&t.qualified()))
                    .cloned()
                    .collect();
                let mut ready = cutover_pg::ready::prepare(
                    (source, Side::Source),
                    (target, Side::Target),
                    &rest,
                    &plan.sync.schemas,
                    true,
                )
                .await?;
                if !analyzed.is_empty() {
                    ready.notes.push(format!(
                        "{} tables analyzed by the copy as they landed",
                        analyzed.len()
                    ));
                }
                Ok::<_, PgError>(ready)
            },
        )
        .await
        .map(|_| ())
}

/// The source's DDL logged as it runs, where the role may create event triggers; the schema
/// is compared by its catalog either way (`cutover_pg::drift`).
pub(super) async fn watch_ddl(steps: &Steps<'_>, source: &Client) -> Result<(), PgError> {
    steps
        .run(
            "schema.watch",
            "log the source's DDL with an event trigger (superusers only; the catalogs are compared either way)",
            || async {
                Ok::<_, PgError>(
                    if cutover_pg::ddl_log::install(source, Side::Source).await? {
                        "event triggers cutover_ddl and cutover_ddl_drop log every DDL statement"
                    } else {
                        "not a superuser: no event trigger; schema changes are found by comparing the catalogs"
                    }
                    .to_string(),
                )
            },
        )
        .await
        .map(|_| ())
}
