//! The check `db sync` runs before it creates anything: a sync that would fail half-way
//! (missing privilege, wrong `wal_level`, a table that cannot be published) is refused while
//! both databases are still untouched.

use cutover_core::Plan;

use crate::error::PgError;
use crate::preflight::{self, Severity};

/// Findings that only hold before the first sync: on a resumed sync the target holds the
/// rows the first run copied, and the publication is ours.
const FRESH_ONLY: &[&str] = &["target-not-empty", "target-table-exists"];

/// Refuses with every blocking problem at once.
pub async fn gate(plan: &Plan, resumed: bool) -> Result<(), PgError> {
    let report = preflight::check(plan).await?;
    let blocking: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .filter(|f| !(resumed && FRESH_ONLY.contains(&f.code)))
        .map(|f| match &f.fix {
            Some(fix) => format!("{}: {}; {}", f.subject, f.message, fix),
            None => format!("{}: {}", f.subject, f.message),
        })
        .collect();
    if blocking.is_empty() {
        Ok(())
    } else {
        Err(PgError::Refused(blocking.join("\n")))
    }
}
