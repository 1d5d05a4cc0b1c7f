//! `cutover db verify`: exit 0 when equal, 1 when not.

use cutover_pg::verify::VerifyReport;

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
        out!("{}", render(&report));
    }
    Ok(if report.equal { 0 } else { 1 })
}

pub async fn verify(
    plan: &cutover_core::Plan,
    args: &VerifyArgs,
) -> Result<VerifyReport, cutover_pg::PgError> {
    cutover_runbook::verify::verify(plan, &args.tables).await
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
