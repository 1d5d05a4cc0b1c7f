//! `cutover db verify`: exit 0 when equal, 1 when not.

use cutover_pg::verify::{CatchUp, VerifyEvent, VerifyOptions, VerifyReport};
use cutover_pg::Side;

use crate::cli::{Global, VerifyArgs};
use crate::output;

pub async fn run(g: &Global, args: VerifyArgs) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let journal = super::open_journal(&plan)?;
    let run = journal.begin_run("db verify")?;
    let steps = cutover_core::engine::Steps::new(&journal, run, &crate::progress::step_printer);
    let result = steps
        .run(
            "verify",
            "compare row counts and checksums table by table",
            || async { verify(&plan, &args).await.map(Verified) },
        )
        .await
        .map(|v| v.0);
    journal.end_run(run, if result.is_ok() { "ok" } else { "failed" })?;
    let report = result?;
    if g.json {
        output::json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.equal { 0 } else { 1 })
}

pub async fn verify(
    plan: &cutover_core::Plan,
    args: &VerifyArgs,
) -> Result<VerifyReport, cutover_pg::PgError> {
    let source = cutover_pg::connect(&plan.source.url, Side::Source).await?;
    let mut tables = cutover_pg::inspect::tables(&source, Side::Source, &plan.sync).await?;
    if !args.tables.is_empty() {
        let unknown: Vec<&String> = args
            .tables
            .iter()
            .filter(|a| !tables.iter().any(|t| &t.display() == *a))
            .collect();
        if !unknown.is_empty() {
            let names: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
            return Err(cutover_pg::PgError::Refused(format!(
                "--table {} is not among the plan's tables; write it as schema.table",
                names.join(", ")
            )));
        }
        tables.retain(|t| args.tables.contains(&t.display()));
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
        .map_err(|e| cutover_pg::PgError::sql(Side::Source, "look for the slot", e))?
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
            .map_err(|e| cutover_pg::PgError::sql(Side::Target, "look for the slot", e))?
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

/// A report as the journal records it: one line.
pub struct Verified(pub VerifyReport);

impl cutover_core::engine::Outcome for Verified {
    fn summary(&self) -> String {
        let differ = self.0.tables.iter().filter(|t| !t.equal).count();
        if self.0.equal {
            format!("{} tables equal", self.0.tables.len())
        } else {
            format!("{differ} of {} tables differ", self.0.tables.len())
        }
    }
}

pub fn render(r: &VerifyReport) -> String {
    let rows: Vec<Vec<String>> = r
        .tables
        .iter()
        .map(|t| {
            vec![
                t.table.clone(),
                t.source_rows.to_string(),
                t.target_rows.to_string(),
                format!("{} ({})", t.chunks, t.method),
                if t.equal {
                    "equal".into()
                } else {
                    "DIFFERENT".into()
                },
            ]
        })
        .collect();
    let mut out = output::table(
        &["TABLE", "SOURCE ROWS", "TARGET ROWS", "CHUNKS", "RESULT"],
        &rows,
    );
    for t in r.tables.iter().filter(|t| !t.equal) {
        if let Some(e) = &t.error {
            out.push_str(&format!("{}: {e}\n", t.table));
        }
        for m in &t.mismatches {
            let from = m
                .from
                .as_ref()
                .map(|k| format!("({})", k.join(", ")))
                .unwrap_or_else(|| "start".into());
            let to =
                m.to.as_ref()
                    .map(|k| format!("({})", k.join(", ")))
                    .unwrap_or_else(|| "end".into());
            out.push_str(&format!(
                "{}: keys {from} to {to}: {} rows on the source, {} on the target\n",
                t.table, m.source_rows, m.target_rows
            ));
            for k in &m.first_keys {
                out.push_str(&format!("    ({}) {}\n", k.key.join(", "), k.kind));
            }
        }
    }
    let differ = r.tables.iter().filter(|t| !t.equal).count();
    out.push_str(&if r.equal {
        format!(
            "\nall {} tables equal ({})\n",
            r.tables.len(),
            output::millis(r.duration_ms)
        )
    } else {
        format!("\n{differ} of {} tables differ\n", r.tables.len())
    });
    out
}
