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

/// The name of the throw-away subscription [`probe_replication_link`] makes.
pub fn probe_name(plan: &Plan) -> String {
    format!("{}_probe", plan.sync.name)
}

/// Proves that the *target server* can reach the source for replication with the plan's
/// `source.replication_url` (address, credentials, REPLICATION privilege, TLS): it creates a
/// subscription that never runs and has no slot, then drops it. Without this, a source the
/// target cannot reach would be found only after the schema and the publication were made.
pub async fn probe_replication_link(
    plan: &Plan,
    target: &tokio_postgres::Client,
) -> Result<(), PgError> {
    use crate::connect::{ident, literal};
    let probe = ident(&probe_name(plan));
    let conninfo = plan.source.replication_url.conninfo_with_password();
    let _ = target
        .batch_execute(&format!("DROP SUBSCRIPTION IF EXISTS {probe}"))
        .await;
    let create = format!(
        "CREATE SUBSCRIPTION {probe} CONNECTION {} PUBLICATION {probe} \
         WITH (enabled = false, create_slot = false, slot_name = NONE, copy_data = false)",
        literal(conninfo.expose())
    );
    let made = target.batch_execute(&create).await;
    let dropped = target
        .batch_execute(&format!("DROP SUBSCRIPTION IF EXISTS {probe}"))
        .await;
    match made {
        Ok(()) => {
            dropped.map_err(|e| PgError::sql(crate::Side::Target, "drop the probe subscription", e))
        }
        Err(e) => {
            let why = match e.as_db_error() {
                Some(db) => db.message().to_string(),
                None => e.to_string(),
            };
            let why = cutover_core::redact(&why, plan.secrets().iter());
            let why = why
                .trim_start_matches("could not connect to the publisher: ")
                .replace('\n', " ");
            Err(PgError::Refused(format!(
                "the target server cannot connect to the source for replication ({}); set source.replication_url to an address, user and password the target server can use (the role needs REPLICATION)",
                why.trim()
            )))
        }
    }
}
