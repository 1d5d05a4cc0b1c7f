//! A new primary ready for production traffic before anyone is switched to it.
//!
//! A copy made with COPY has rows but no planner statistics, so the first minutes on the new
//! primary would run on guessed plans; and `pg_dump --schema-only` creates every materialized
//! view `WITH NO DATA` (the refresh entries belong to the data section), so a view populated
//! on the old primary arrives empty and every read of it fails with "has not been populated"
//! after the switch. `db sync` ends with [`prepare`], and a switch runs it again before its
//! pause, on whichever side is about to become the primary.

use serde::Serialize;
use tokio_postgres::Client;

use crate::connect::qualified;
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::Table;

/// What [`prepare`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Readiness {
    /// Tables analyzed.
    pub analyzed: usize,
    /// Materialized views refreshed, `schema.name`.
    pub refreshed: Vec<String>,
    /// Views populated on the old primary that could not be refreshed here, with why. Only
    /// ones that are already populated here: an empty one is an error, never a note.
    pub stale: Vec<String>,
    /// What else was done alongside, for the journal.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl cutover_core::engine::Outcome for Readiness {
    fn summary(&self) -> String {
        let mut s = format!(
            "{} tables analyzed, {} materialized views refreshed",
            self.analyzed,
            self.refreshed.len()
        );
        for note in &self.notes {
            s.push_str(&format!("; {note}"));
        }
        if !self.stale.is_empty() {
            s.push_str(&format!(
                "; left as they were (already populated): {}",
                self.stale.join("; ")
            ));
        }
        s
    }
}

/// A materialized view of the selected schemas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatView {
    pub schema: String,
    pub name: String,
    pub populated: bool,
}

impl MatView {
    fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// The materialized views in `schemas` (all but the system's when empty), oldest first:
/// `pg_restore` creates them in dependency order, so that is an order to refresh them in.
pub async fn matviews(
    client: &Client,
    side: Side,
    schemas: &[String],
) -> Result<Vec<MatView>, PgError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relispopulated
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'm'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cutover')
                AND (cardinality($1::text[]) = 0 OR n.nspname = ANY($1::text[]))
                AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
              ORDER BY c.oid",
            &[&schemas],
        )
        .await
        .ctx(side, "list materialized views")?;
    Ok(rows
        .iter()
        .map(|r| MatView {
            schema: r.get(0),
            name: r.get(1),
            populated: r.get(2),
        })
        .collect())
}

/// The tables of `tables` that hold rows but have no planner statistics on this side
/// (`reltuples` is -1 until the first ANALYZE or VACUUM, PostgreSQL 14 on).
pub async fn unanalyzed(
    client: &Client,
    side: Side,
    tables: &[Table],
) -> Result<Vec<Table>, PgError> {
    let names: Vec<String> = tables.iter().map(Table::qualified).collect();
    let rows = client
        .query(
            "SELECT q FROM unnest($1::text[]) q
              WHERE EXISTS (SELECT 1 FROM pg_partition_tree(q::regclass) t JOIN pg_class c ON c.oid = t.relid
                             WHERE t.isleaf AND c.reltuples < 0 AND pg_relation_size(c.oid) > 0)",
            &[&names],
        )
        .await
        .ctx(side, "look for tables without statistics")?;
    let missing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    Ok(tables
        .iter()
        .filter(|t| missing.contains(&t.qualified()))
        .cloned()
        .collect())
}

/// ANALYZE every table of `tables` on this side.
pub async fn analyze(client: &Client, side: Side, tables: &[Table]) -> Result<usize, PgError> {
    for t in tables {
        client
            .batch_execute(&format!("ANALYZE {}", t.qualified()))
            .await
            .ctx(side, &format!("analyze {}", t.display()))?;
    }
    Ok(tables.len())
}

/// Makes `to` ready to be the primary: ANALYZE the tables (`all_tables`: every one; else only
/// those without statistics), and refresh every materialized view that is populated on
/// `from`. A view empty on `to` that cannot be refreshed is an error: every read of it would
/// fail after the switch. One already populated that cannot be refreshed (its owner is
/// another role) is kept as it is and named in [`Readiness::stale`].
pub async fn prepare(
    from: (&Client, Side),
    to: (&Client, Side),
    tables: &[Table],
    schemas: &[String],
    all_tables: bool,
) -> Result<Readiness, PgError> {
    let (to, side) = to;
    let analyze_these = if all_tables {
        tables.to_vec()
    } else {
        unanalyzed(to, side, tables).await?
    };
    let analyzed = analyze(to, side, &analyze_these).await?;
    let wanted: Vec<MatView> = matviews(from.0, from.1, schemas)
        .await?
        .into_iter()
        .filter(|m| m.populated)
        .collect();
    let here = matviews(to, side, schemas).await?;
    let mut out = Readiness {
        analyzed,
        ..Readiness::default()
    };
    let missing: Vec<String> = wanted
        .iter()
        .filter(|w| {
            !here
                .iter()
                .any(|h| h.schema == w.schema && h.name == w.name)
        })
        .map(MatView::display)
        .collect();
    if !missing.is_empty() {
        return Err(PgError::Refused(format!(
            "materialized view(s) {} exist on the {} but not on the {side}; create them there (pg_dump --schema-only --table=... from the {}), or run `cutover db sync` with sync.copy_schema = true",
            missing.join(", "),
            from.1,
            from.1
        )));
    }
    // In the order they were created on this side, which is their dependency order; a view
    // that reads another one not populated yet is tried again after it.
    let mut todo: Vec<MatView> = here
        .into_iter()
        .filter(|h| {
            wanted
                .iter()
                .any(|w| w.schema == h.schema && w.name == h.name)
        })
        .collect();
    let mut empty_failed = vec![];
    while !todo.is_empty() {
        let mut again = vec![];
        let before = todo.len();
        for m in todo {
            let sql = format!(
                "REFRESH MATERIALIZED VIEW {}",
                qualified(&m.schema, &m.name)
            );
            match to.batch_execute(&sql).await {
                Ok(()) => out.refreshed.push(m.display()),
                // 55000: it reads a view that is not populated yet.
                Err(e) if e.code().is_some_and(|c| c.code() == "55000") => again.push((m, e)),
                Err(e) => {
                    let why = crate::error::db_message(&e);
                    if m.populated {
                        out.stale.push(format!("{}: {why}", m.display()));
                    } else {
                        empty_failed.push(format!("{}: {why}", m.display()));
                    }
                }
            }
        }
        if again.len() == before {
            for (m, e) in again {
                empty_failed.push(format!("{}: {}", m.display(), crate::error::db_message(&e)));
            }
            break;
        }
        todo = again.into_iter().map(|(m, _)| m).collect();
    }
    if !empty_failed.is_empty() {
        return Err(PgError::Refused(format!(
            "materialized view(s) populated on the {} stay empty on the {side}, so every read of them would fail after the switch: {}; \
             refresh them there as their owner (REFRESH MATERIALIZED VIEW ...), or connect as their owner in the plan's URL",
            from.1,
            empty_failed.join("; ")
        )));
    }
    Ok(out)
}
