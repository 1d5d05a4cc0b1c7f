//! `db verify` as a procedure: which side is the primary now (the one the other follows), and
//! the comparison with replication's catch-up in between.

use cutover_core::Plan;
use cutover_pg::verify::{CatchUp, VerifyEvent, VerifyOptions, VerifyReport};
use cutover_pg::{PgError, Side};

/// Compares the plan's tables (or only `only`, as schema.table) between the two sides.
pub async fn verify(plan: &Plan, only: &[String]) -> Result<VerifyReport, PgError> {
    let source = cutover_pg::connect(&plan.source.url, Side::Source).await?;
    let mut tables = cutover_pg::inspect::tables(&source, Side::Source, &plan.sync).await?;
    if !only.is_empty() {
        let unknown: Vec<&str> = only
            .iter()
            .filter(|a| !tables.iter().any(|t| &t.display() == *a))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(PgError::Refused(format!(
                "--table {} is not among the plan's tables; write it as schema.table",
                unknown.join(", ")
            )));
        }
        tables.retain(|t| only.contains(&t.display()));
    }
    let options = VerifyOptions {
        chunk_rows: plan.verify.chunk_rows,
        parallel: plan.verify.parallel,
        catch_up_timeout: plan.verify.catch_up_timeout,
    };
    let progress = |e: VerifyEvent| {
        if let VerifyEvent::TableDone { table, equal } = e {
            tracing::info!(table, equal, "verified");
        }
    };
    if plan.sync.mode == cutover_core::Mode::Trigger {
        // The link in force says which side is followed: differences are re-checked once
        // the follower's position covers what the other side had committed.
        let link = cutover_pg::sync::current_link(plan).await?;
        let catch_up = CatchUp::TriggerLink(link.name.clone());
        return cutover_pg::verify::verify(
            &link.origin,
            &link.follower,
            &tables,
            &options,
            Some(&catch_up),
            &progress,
        )
        .await;
    }
    let slot = plan.sync.slot();
    let has_slot = source
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::sql(Side::Source, "look for the slot", e))?
        .is_some();
    // After a switchover the target is the primary and the source follows it through the
    // reverse slot on the target: compare from the target then.
    let target = cutover_pg::connect(&plan.target.url, Side::Target).await?;
    let reverse = plan.sync.reverse_slot();
    let reversed = !has_slot
        && target
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&reverse],
            )
            .await
            .map_err(|e| PgError::sql(Side::Target, "look for the slot", e))?
            .is_some();
    let catch_up = if reversed {
        Some(CatchUp::Slot(reverse))
    } else {
        has_slot.then(|| CatchUp::Slot(slot.clone()))
    };
    let (writer, follower) = if reversed {
        tracing::info!("the target is the primary: comparing from it");
        (&plan.target.url, &plan.source.url)
    } else {
        (&plan.source.url, &plan.target.url)
    };
    cutover_pg::verify::verify(
        writer,
        follower,
        &tables,
        &options,
        catch_up.as_ref(),
        &progress,
    )
    .await
}
