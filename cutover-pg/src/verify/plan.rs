//! How a table is split into ranges of its key, and how one side of a range is summed.

use crate::connect::ident;
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::Table;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::*;

/// A range of the key: `from` inclusive, `to` exclusive, `None` open; the last range ends at
/// `through`, inclusive, the largest key when the ranges were planned.
pub(super) struct Range {
    pub(super) from: Option<Vec<String>>,
    pub(super) to: Option<Vec<String>>,
    pub(super) through: Option<Vec<String>>,
}

/// How one side's table is read.
pub(super) struct SideTable {
    /// `ONLY "s"."t"`, or `"s"."t"` for a partitioned table (its rows are in the partitions).
    pub(super) from: String,
    /// `format_type` of each key column.
    pub(super) key_types: Vec<String>,
}

pub(super) struct TablePlan<'t> {
    pub(super) table: &'t Table,
    /// Quoted key columns, in key order; empty for the whole-table method.
    pub(super) key: Vec<String>,
    /// `md5(ROW(...)::text)` over the source's columns.
    pub(super) row_hash: String,
    pub(super) source: SideTable,
    pub(super) target: SideTable,
    pub(super) ranges: Vec<Range>,
}

/// Reads both sides' catalogs and the source's range boundaries. `Ok(Err(problem))` when
/// the table cannot be compared.
pub(super) async fn plan_table<'t>(
    run: &Run<'_>,
    table: &'t Table,
) -> Result<Result<TablePlan<'t>, String>, PgError> {
    let conn = run.pool.get().await;
    let (source, target) = tokio::try_join!(
        side_table(&conn.source, Side::Source, table),
        side_table(&conn.target, Side::Target, table),
    )?;
    let (source, target) = match (source, target) {
        (Err(problem), _) | (_, Err(problem)) => return Ok(Err(problem)),
        (Ok(s), Ok(t)) => (s, t),
    };
    let columns: Vec<String> = table.columns.iter().map(|c| ident(c)).collect();
    let mut plan = TablePlan {
        table,
        key: table.key().iter().map(|c| ident(c)).collect(),
        row_hash: format!("md5(ROW({})::text)", columns.join(", ")),
        source,
        target,
        ranges: vec![],
    };
    plan.ranges = boundaries(&conn.source, &plan, run.options.chunk_rows.max(1)).await?;
    Ok(Ok(plan))
}

pub(super) const SIDE_TABLE: &str = "
SELECT c.relkind = 'p',
       array(SELECT format_type(a.atttypid, a.atttypmod)
               FROM unnest($3::text[]) WITH ORDINALITY AS k(name, i)
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname::text = k.name
                                  AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY k.i),
       array(SELECT k.name FROM unnest($4::text[]) WITH ORDINALITY AS k(name, i)
              WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                                 WHERE a.attrelid = c.oid AND a.attname::text = k.name
                                   AND a.attnum > 0 AND NOT a.attisdropped)
              ORDER BY k.i)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname::text = $1 AND c.relname::text = $2 AND c.relkind IN ('r', 'p')";

/// One side's view of the table; `Err(problem)` when it is missing or lacks columns.
pub(super) async fn side_table(
    client: &Client,
    side: Side,
    table: &Table,
) -> Result<Result<SideTable, String>, PgError> {
    let row = client
        .query_opt(
            SIDE_TABLE,
            &[&table.schema, &table.name, &table.key(), &table.columns],
        )
        .await
        .ctx(side, &format!("look up {}", table.display()))?;
    let Some(row) = row else {
        return Ok(Err(match side {
            Side::Target => "missing on target; run `cutover db sync`".to_string(),
            Side::Source => {
                "missing on source (dropped since the table list was read); run verify again"
                    .to_string()
            }
        }));
    };
    let missing: Vec<String> = row.get(2);
    if !missing.is_empty() {
        return Ok(Err(format!(
            "column(s) {} missing on {side}; the schemas differ: make the {side}'s table match and verify again",
            missing.join(", ")
        )));
    }
    let partitioned: bool = row.get(0);
    let only = if partitioned { "" } else { "ONLY " };
    Ok(Ok(SideTable {
        from: format!("{only}{}", table.qualified()),
        key_types: row.get(1),
    }))
}

/// The ranges: every `chunk_rows`-th key of the source starts one, the first range open
/// at the start. The last one ends at the largest key the source holds now: rows written
/// later with larger keys (an orders table under load) arrived after the verification began,
/// and replication carries them; an open end would never agree while they keep coming. One
/// range without a key.
pub(super) async fn boundaries(
    client: &Client,
    plan: &TablePlan<'_>,
    chunk_rows: u64,
) -> Result<Vec<Range>, PgError> {
    if plan.key.is_empty() {
        return Ok(vec![Range {
            from: None,
            to: None,
            through: None,
        }]);
    }
    let aliases: Vec<String> = (0..plan.key.len()).map(|i| format!("c{i}")).collect();
    let sql = format!(
        "SELECT {} FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS n FROM {}) s
          WHERE n % $1 = 1 AND n > 1 ORDER BY n",
        aliases
            .iter()
            .map(|a| format!("{a}::text"))
            .collect::<Vec<_>>()
            .join(", "),
        plan.key
            .iter()
            .zip(&aliases)
            .map(|(k, a)| format!("{k} AS {a}"))
            .collect::<Vec<_>>()
            .join(", "),
        plan.key.join(", "),
        plan.source.from,
    );
    let chunk_rows = i64::try_from(chunk_rows).unwrap_or(i64::MAX);
    let rows = client.query(&sql, &[&chunk_rows]).await.ctx(
        Side::Source,
        &format!("split {} into ranges", plan.table.display()),
    )?;
    let mut starts: Vec<Option<Vec<String>>> = vec![None];
    starts.extend(
        rows.iter()
            .map(|r| Some((0..plan.key.len()).map(|i| r.get(i)).collect())),
    );
    let last = client
        .query_opt(
            &format!(
                "SELECT {} FROM {} ORDER BY {} LIMIT 1",
                // Named apart from the key columns: ORDER BY would take an output column of
                // the same name (text) before the table's.
                plan.key
                    .iter()
                    .enumerate()
                    .map(|(i, k)| format!("{k}::text AS last_{i}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                plan.source.from,
                plan.key
                    .iter()
                    .map(|k| format!("{k} DESC"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[],
        )
        .await
        .ctx(
            Side::Source,
            &format!("read the largest key of {}", plan.table.display()),
        )?
        .map(|r| {
            (0..plan.key.len())
                .map(|i| r.get(i))
                .collect::<Vec<String>>()
        });
    let mut ranges = Vec::with_capacity(starts.len());
    for (i, from) in starts.iter().enumerate() {
        let to = starts.get(i + 1).cloned().flatten();
        ranges.push(Range {
            from: from.clone(),
            through: if to.is_none() { last.clone() } else { None },
            to,
        });
    }
    Ok(ranges)
}

impl TablePlan<'_> {
    pub(super) fn side(&self, side: Side) -> &SideTable {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    /// ` WHERE (k1, k2) >= ($1::text::t1, $2::text::t2) AND (k1, k2) < (...)` and its values.
    pub(super) fn filter<'r>(&self, side: Side, range: &'r Range) -> (String, Vec<&'r str>) {
        let types = &self.side(side).key_types;
        let cols = self.key.join(", ");
        let tuple = |first: usize| {
            let casts: Vec<String> = types
                .iter()
                .enumerate()
                .map(|(i, t)| format!("${}::text::{t}", first + i))
                .collect();
            casts.join(", ")
        };
        let mut parts = vec![];
        let mut next = 1;
        if range.from.is_some() {
            parts.push(format!("({cols}) >= ({})", tuple(next)));
            next += self.key.len();
        }
        if range.to.is_some() {
            parts.push(format!("({cols}) < ({})", tuple(next)));
            next += self.key.len();
        }
        if range.through.is_some() {
            parts.push(format!("({cols}) <= ({})", tuple(next)));
        }
        let values = range
            .from
            .iter()
            .chain(range.to.iter())
            .chain(range.through.iter())
            .flatten()
            .map(String::as_str)
            .collect();
        let sql = if parts.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", parts.join(" AND "))
        };
        (sql, values)
    }

    /// Row count and checksum of a range on one side.
    pub(super) async fn checksum(
        &self,
        client: &Client,
        side: Side,
        range: &Range,
    ) -> Result<Sum, PgError> {
        let (filter, values) = self.filter(side, range);
        let half =
            |f: &str| format!("coalesce(sum(('x' || {f}(h, 16))::bit(64)::bigint), 0)::text");
        let sql = format!(
            "SELECT count(*), {} || ':' || {} FROM (SELECT {} AS h FROM {}{filter}) s",
            half("left"),
            half("right"),
            self.row_hash,
            self.side(side).from,
        );
        let row = client
            .query_one(&sql, &params(&values))
            .await
            .ctx(side, &format!("checksum {}", self.table.display()))?;
        Ok(Sum {
            rows: row.get(0),
            hash: row.get(1),
        })
    }
}

pub(super) fn params<'v>(values: &'v [&'v str]) -> Vec<&'v (dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

#[derive(PartialEq, Eq)]
pub(super) struct Sum {
    pub(super) rows: i64,
    pub(super) hash: String,
}
