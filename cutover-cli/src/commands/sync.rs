//! `cutover db sync`.

use cutover_core::engine::Steps;
use cutover_pg::sync::SyncSummary;

use crate::cli::{Global, SyncArgs};
use crate::output;
use crate::progress::{step_printer, CopyProgress};

pub async fn run(g: &Global, args: SyncArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    if args.dry_run {
        return dry_run(g, &plan).await;
    }
    if args.worker {
        let r = cutover_pg::copy::help_copy(
            &plan.source.url,
            &plan.target.url,
            &plan.sync.name,
            plan.sync.copy_jobs,
        )
        .await?;
        if g.json {
            output::json(&r)?;
        } else {
            outln!(
                "copied {} parts of copy {}: {} rows, {}",
                r.parts,
                r.job,
                r.rows,
                output::bytes(r.bytes)
            );
        }
        return Ok(0);
    }
    let journal = super::open_journal(&plan)?;
    let run = journal.begin_run("db sync")?;
    let steps = Steps::new(&journal, run, &step_printer);
    let bars = CopyProgress::new(false);
    let show = |t: &[cutover_pg::sync::TableProgress]| bars.update(t);
    let result = tokio::select! {
        r = cutover_runbook::sync::sync(&plan, &steps, &show) => r,
        _ = tokio::signal::ctrl_c() => {
            bars.finish();
            journal.end_run(run, "interrupted")?;
            eprintln!("interrupted: what was made stays; run `cutover db sync` again to continue (a copy cut short is made again), or `cutover db cleanup` to remove it");
            return Ok(130);
        }
    };
    bars.finish();
    journal.end_run(run, if result.is_ok() { "ok" } else { "failed" })?;
    let summary = result?;
    print_summary(g, &plan, &summary)?;
    if plan.sync.mode == cutover_core::Mode::Trigger && !args.no_follow {
        return super::follow::follow_until_stopped(g, &plan, None).await;
    }
    Ok(0)
}

fn print_summary(g: &Global, plan: &cutover_core::Plan, s: &SyncSummary) -> anyhow::Result<()> {
    if g.json {
        return output::json(s);
    }
    outln!(
        "synced: {} tables, ~{} rows, {} in {}{}",
        s.tables,
        s.rows_estimate,
        output::bytes(s.bytes),
        output::millis(s.duration_ms),
        if s.resumed {
            " (resumed an earlier run)"
        } else {
            ""
        }
    );
    if plan.sync.mode == cutover_core::Mode::Trigger {
        outln!("the copy is done; the source's changes are applied from here on (`cutover db follow` continues after a stop)");
    } else {
        outln!(
            "subscription {} keeps following the source; watch it with `cutover db status --watch`",
            plan.sync.subscription()
        );
    }
    Ok(())
}

async fn dry_run(g: &Global, plan: &cutover_core::Plan) -> anyhow::Result<i32> {
    let report = cutover_pg::preflight::check(plan).await?;
    let errors: Vec<_> = report.errors().collect();
    let (pubname, sub, slot, n) = (
        plan.sync.publication(),
        plan.sync.subscription(),
        plan.sync.slot(),
        report.tables.len(),
    );
    let mut steps = vec![
        (
            "schema.watch",
            "log the source's DDL with an event trigger (superusers only)".to_string(),
        ),
        (
            "schema.dump",
            "pg_dump --schema-only of the source".to_string(),
        ),
        (
            "schema.pre_data",
            "restore types, tables and functions on the target".to_string(),
        ),
        (
            "publication",
            format!("CREATE PUBLICATION {pubname} for {n} tables"),
        ),
    ];
    let keys = (
        "schema.keys",
        "create primary keys and replica identity indexes on the target".to_string(),
    );
    if plan.sync.mode == cutover_core::Mode::Trigger {
        steps.pop();
        steps.push((
            "capture",
            format!("install the change log and capture triggers on {n} source tables"),
        ));
        steps.push((
            "copy",
            format!(
                "copy every table from one snapshot exported after the triggers, {} parts at once; each table's indexes, keys, foreign keys and statistics built as it lands",
                plan.sync.copy_jobs
            ),
        ));
        steps.push(keys);
    } else if plan.sync.copy == cutover_core::plan::CopyMethod::Parallel {
        steps.push((
            "copy",
            format!(
                "create slot {slot} and copy every table from its snapshot, {} parts at once; each table's indexes, keys, foreign keys and statistics built as it lands",
                plan.sync.copy_jobs
            ),
        ));
        steps.push(keys);
        steps.push((
            "subscription",
            format!("CREATE SUBSCRIPTION {sub} on slot {slot}, copy_data = false"),
        ));
        steps.push((
            "stream",
            "wait until the subscription follows every table".to_string(),
        ));
    } else {
        steps.push(keys);
        steps.push((
            "subscription",
            format!("CREATE SUBSCRIPTION {sub} with slot {slot} (starts the copy)"),
        ));
        steps.push((
            "copy",
            "wait until every table is copied and ready".to_string(),
        ));
    }
    steps.push((
        "schema.post_data",
        "create the indexes, constraints and triggers the copy did not build".to_string(),
    ));
    if plan.sync.mode == cutover_core::Mode::Trigger {
        steps.push((
            "triggers.follower",
            "disable the target's user triggers while it follows".to_string(),
        ));
    }
    steps.push((
        "large_objects",
        "copy the source's large objects (none: skipped)".to_string(),
    ));
    steps.push((
        "target.ready",
        "ANALYZE the copied tables and populate the materialized views".to_string(),
    ));
    if g.json {
        output::json(&serde_json::json!({
            "dry_run": true,
            "blocking": errors,
            "steps": steps.iter().map(|(s, d)| serde_json::json!({"step": s, "does": d})).collect::<Vec<_>>(),
            "tables": report.tables.iter().map(|t| t.display()).collect::<Vec<_>>(),
        }))?;
    } else {
        outln!("db sync would, on {} tables:", report.tables.len());
        for (s, d) in &steps {
            outln!("  {s:<17} {d}");
        }
        for e in &errors {
            outln!(
                "blocked: {}: {}{}",
                e.subject,
                e.message,
                e.fix.as_ref().map(|f| format!("; {f}")).unwrap_or_default()
            );
        }
        outln!("nothing was changed (dry run)");
    }
    Ok(if errors.is_empty() { 0 } else { 1 })
}
