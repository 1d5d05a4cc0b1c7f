//! Reading a report's findings in the preflight tests.

#![allow(dead_code)]

use cutover_pg::preflight::{Finding, Severity};

pub fn of(report: &[Finding], severity: Severity) -> Vec<(&'static str, String)> {
    report
        .iter()
        .filter(|f| f.severity == severity)
        .map(|f| (f.code, f.subject.clone()))
        .collect()
}

pub fn pair_of(code: &'static str, subject: &str) -> (&'static str, String) {
    (code, subject.to_string())
}

pub fn one<'a>(findings: &'a [Finding], code: &str) -> &'a Finding {
    let found: Vec<_> = findings.iter().filter(|f| f.code == code).collect();
    assert_eq!(found.len(), 1, "one {code} finding expected: {findings:#?}");
    found[0]
}

pub fn texts(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            format!(
                "{} {} {}",
                f.message,
                f.fix.as_deref().unwrap_or(""),
                f.subject
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
