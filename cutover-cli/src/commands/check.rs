//! `cutover check`: every problem at once, each with its fix.

use cutover_pg::preflight::{Report, Severity};

use crate::cli::Global;
use crate::output;

pub async fn run(g: &Global) -> anyhow::Result<i32> {
    let plan = super::load_plan(&g.plan)?;
    let report = cutover_pg::preflight::check(&plan).await?;
    if g.json {
        output::json(&report)?;
    } else {
        out!("{}", render(&report));
    }
    Ok(report.exit_code())
}

fn identity(t: &cutover_pg::inspect::Table) -> String {
    format!("{:?}", t.replica_identity).to_lowercase()
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    for (side, s) in [("source", &r.source), ("target", &r.target)] {
        let role = if s.superuser {
            "superuser".to_string()
        } else if let Some(admin) = &s.cloud_admin {
            format!("member of {admin}")
        } else if s.replication {
            "replication".to_string()
        } else {
            "no special privilege".to_string()
        };
        out.push_str(&format!(
            "{side}  PostgreSQL {}  wal_level={}  role {} ({role})  database {} ({})\n",
            s.version,
            s.wal_level,
            s.role,
            s.database,
            output::bytes(s.database_bytes)
        ));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = r
        .tables
        .iter()
        .map(|t| {
            let mut notes = vec![];
            if t.partitioned {
                notes.push("partitioned".to_string());
            }
            if t.unlogged {
                notes.push("unlogged".to_string());
            }
            if !t.generated_columns.is_empty() {
                notes.push(format!("generated: {}", t.generated_columns.join(",")));
            }
            vec![
                t.display(),
                t.rows_estimate.to_string(),
                output::bytes(t.bytes),
                if t.primary_key.is_empty() {
                    "-".into()
                } else {
                    t.primary_key.join(",")
                },
                identity(t),
                notes.join("; "),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &["TABLE", "ROWS~", "SIZE", "PRIMARY KEY", "IDENTITY", "NOTES"],
        &rows,
    ));
    if !r.sequences.is_empty() {
        let owned = r.sequences.iter().filter(|s| s.owned_by.is_some()).count();
        out.push_str(&format!(
            "{} sequences ({owned} owned by a column)\n",
            r.sequences.len()
        ));
    }
    out.push('\n');
    let mut findings: Vec<_> = r.findings.iter().collect();
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for f in findings {
        let label = match f.severity {
            Severity::Error => "ERROR  ",
            Severity::Warning => "WARNING",
            Severity::Info => "info   ",
        };
        out.push_str(&format!(
            "{label} {} [{}]: {}\n",
            f.subject, f.code, f.message
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("        fix: {fix}\n"));
        }
    }
    let errors = r.errors().count();
    let warnings = r.warnings().count();
    out.push_str(&format!(
        "\n{errors} blocking problem{}, {warnings} warning{}\n",
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" }
    ));
    out
}
