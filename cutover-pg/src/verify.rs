//! `db verify`: are the target's tables the same as the source's?
//!
//! Each table is compared by row count and checksum over ranges of its key, the ranges
//! checked in parallel; a table with no key is compared as a whole. Why it is built so:
//!
//! - **Ranges of the key, not OFFSET pages.** The boundaries are every `chunk_rows`-th key
//!   of the source, read once. Each range is then an index range scan on both sides, so a
//!   chunk costs the same wherever it lies, chunks run in parallel, and a difference is
//!   pinned to a small range. The first range is open at the start and the last at the
//!   end, so rows written below the old minimum or above the old maximum are still seen.
//! - **Keys travel as text.** Boundaries are read as `key::text` and go back as
//!   `$1::text::<type>`, the type spelled by `format_type`. One code path serves integer,
//!   uuid, text, enum and composite keys, and mixed-case names (quoted with [`ident`]).
//! - **The checksum is a sum, not an ordered string.** Per row we take `md5` of the row's
//!   text over the source's column list, in that order, so the physical column order and
//!   extra columns on the target do not matter. The chunk's checksum is the sum of the two
//!   64-bit halves of those hashes (as `numeric`, so it cannot overflow). A sum needs no
//!   sort, does not depend on the order the server walks the rows in (which could differ
//!   with the servers' collations), counts duplicate rows of a table without a key
//!   correctly (XOR would cancel a pair), and has no 1 GB limit, which
//!   `string_agg(... ORDER BY ...)` over a whole table would hit at ~30 million rows.
//! - **The session is pinned.** A row's text depends on `TimeZone`, `DateStyle`,
//!   `IntervalStyle`, `extra_float_digits`, `bytea_output` and `lc_monetary`; every
//!   connection sets them identically so equal data prints equally on both servers.
//!   `search_path` is `pg_catalog` so no user function can stand in for `md5` and
//!   `format_type` names every user type with its schema. The sessions are read-only.
//! - **Live writes.** While replication runs, the target is a little behind, so a range
//!   that differs is first re-checked: read the source, take the WAL position after that
//!   read, wait until the slot's `confirmed_flush_lsn` (bytes, never a time column) has
//!   passed it, then read the target, which then holds at least what the source read saw.
//!   The position is `pg_current_wal_insert_lsn()`, not `pg_current_wal_lsn()`: with
//!   `synchronous_commit = off` a commit is visible before its record is written, and the
//!   write position can lag behind it, so a slot could "pass" it before the commit (seen in
//!   our tests). Only a difference that survives a few rounds is reported. When one wait times
//!   out, replication is taken as stalled and later ranges are reported without waiting,
//!   so a stopped subscription costs one timeout, not one per range.
//! - **First differing keys.** Only for a reported range: both sides' `(key, md5(row))` of
//!   the range are compared by key on this side, and the source server orders the keys
//!   that differ (it knows the types and collation; we do not) and returns the first few.
//!   For a table without a key, both sides' rows are grouped by hash and streamed in hash
//!   order (collation "C"), merged here and cut at the first few differences, so memory
//!   stays small however big the table is.
//! - **Errors.** Something wrong with one table (missing on the target, a column missing,
//!   a statement it refuses) goes into that table's report so the others are still
//!   checked; a connection failure or other transient error stops the run.
//!
//! Caveat: ranges follow the key's collation on each server. If the two servers sort text
//! differently (another glibc or ICU version), rows near a boundary of a text key can fall
//! into different ranges and be reported; the listed keys show which.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_core::ConnString;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::connect::{connect, ident};
use crate::error::{PgError, Retry, Side, SqlContext};
use crate::inspect::Table;

/// How a verification runs.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Rows per checked range (taken from the source; 0 counts as 1).
    pub chunk_rows: u64,
    /// Connections per side, and so ranges checked at once (0 counts as 1).
    pub parallel: usize,
    /// How long one re-check waits for replication to reach the source's position.
    pub catch_up_timeout: Duration,
}

/// How to wait for replication to reach a point. `None` where it is asked for means there
/// is no replication to wait for: compare once.
#[derive(Clone, Debug)]
pub enum CatchUp {
    /// The logical replication slot on the source that the target's subscription confirms
    /// through.
    Slot(String),
    /// Trigger mode: the link whose position (`cutover.applied` on the target) follows the
    /// source's change log.
    TriggerLink(String),
}

/// Progress, for a progress bar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum VerifyEvent {
    TableStarted { table: String, chunks: usize },
    ChunkDone { table: String },
    TableDone { table: String, equal: bool },
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// In the order the tables were given.
    pub tables: Vec<TableReport>,
    pub equal: bool,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableReport {
    /// `schema.name`.
    pub table: String,
    pub source_rows: i64,
    pub target_rows: i64,
    pub chunks: usize,
    pub equal: bool,
    /// "chunked" (by key ranges) or "whole" (a table without a key).
    pub method: &'static str,
    pub mismatches: Vec<RangeMismatch>,
    /// Why the table could not be compared, e.g. it is missing on the target.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RangeMismatch {
    /// Key values as text, inclusive; `None` from the start.
    pub from: Option<Vec<String>>,
    /// Key values as text, exclusive; `None` to the end.
    pub to: Option<Vec<String>>,
    /// The last range's end, inclusive: the largest key when the ranges were planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through: Option<Vec<String>>,
    pub source_rows: i64,
    pub target_rows: i64,
    /// The first few keys that differ, in key order (for a table without a key: the
    /// rows' text, cut at 200 characters).
    pub first_keys: Vec<KeyDiff>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyDiff {
    pub key: Vec<String>,
    /// "missing on target", "extra on target" or "different".
    pub kind: &'static str,
}

const MISSING: &str = "missing on target";
const EXTRA: &str = "extra on target";
const DIFFERENT: &str = "different";

/// Re-checks of a differing range while replication catches up, before it is reported.
const RECHECKS: usize = 3;
/// How often the slot is read while waiting.
const POLL: Duration = Duration::from_millis(200);
/// Differing keys listed per range.
const FIRST_KEYS: usize = 10;

const SESSION: &str = "SET search_path = pg_catalog, pg_temp; SET TimeZone = 'UTC';
    SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3;
    SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET statement_timeout = 0;
    SET default_transaction_read_only = on";

/// Compares `tables` (read from the source) between source and target.
pub async fn verify(
    source: &ConnString,
    target: &ConnString,
    tables: &[Table],
    options: &VerifyOptions,
    catch_up: Option<&CatchUp>,
    progress: &(dyn Fn(VerifyEvent) + Send + Sync),
) -> Result<VerifyReport, PgError> {
    let started = Instant::now();
    let parallel = options.parallel.max(1);
    let pool = Pool::open(source, target, parallel).await?;
    if let Some(CatchUp::Slot(slot)) = catch_up {
        let conn = pool.get().await;
        check_slot(&conn.source, slot).await?;
    }
    let run = Run {
        pool,
        options,
        catch_up,
        progress,
        stalled: AtomicBool::new(false),
    };
    let reports: Vec<TableReport> = stream::iter(tables)
        .map(|t| verify_table(&run, t))
        .buffered(parallel)
        .try_collect()
        .await?;
    Ok(VerifyReport {
        equal: reports.iter().all(|r| r.equal),
        tables: reports,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// What every table and range of one run shares.
struct Run<'a> {
    pool: Pool,
    options: &'a VerifyOptions,
    catch_up: Option<&'a CatchUp>,
    progress: &'a (dyn Fn(VerifyEvent) + Send + Sync),
    /// A wait for replication timed out: report later ranges without waiting.
    stalled: AtomicBool,
}

// ---------------------------------------------------------------------------------------
// Connections: `parallel` pairs, one pair per range being checked.

struct Conn {
    source: Client,
    target: Client,
}

impl Conn {
    async fn open(source: &ConnString, target: &ConnString) -> Result<Conn, PgError> {
        let (s, t) =
            tokio::try_join!(connect(source, Side::Source), connect(target, Side::Target))?;
        let context = "set up the verification session";
        tokio::try_join!(
            async { s.batch_execute(SESSION).await.ctx(Side::Source, context) },
            async { t.batch_execute(SESSION).await.ctx(Side::Target, context) },
        )?;
        Ok(Conn {
            source: s,
            target: t,
        })
    }

    fn client(&self, side: Side) -> &Client {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }
}

struct Pool {
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
}

impl Pool {
    async fn open(source: &ConnString, target: &ConnString, n: usize) -> Result<Pool, PgError> {
        let conns =
            futures_util::future::try_join_all((0..n).map(|_| Conn::open(source, target))).await?;
        Ok(Pool {
            permits: Semaphore::new(conns.len()),
            idle: Mutex::new(conns),
        })
    }

    async fn get(&self) -> Lease<'_> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        let conn = self
            .idle
            .lock()
            .expect("pool lock")
            .pop()
            .expect("a permit stands for an idle pair");
        Lease {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        }
    }
}

/// A connection pair on loan; goes back to the pool when dropped.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().expect("pool lock").push(conn);
        }
    }
}

// ---------------------------------------------------------------------------------------
// One table.

async fn verify_table(run: &Run<'_>, table: &Table) -> Result<TableReport, PgError> {
    let name = table.display();
    let emit = |e| (run.progress)(e);
    let planned = match plan_table(run, table).await {
        Ok(Ok(plan)) => Ok(plan),
        Ok(Err(problem)) => Err(problem),
        Err(e) if e.retry() == Retry::Definite => Err(e.to_string()),
        Err(e) => return Err(e),
    };
    let plan = match planned {
        Ok(plan) => plan,
        Err(problem) => {
            emit(VerifyEvent::TableStarted {
                table: name.clone(),
                chunks: 0,
            });
            emit(VerifyEvent::TableDone {
                table: name.clone(),
                equal: false,
            });
            return Ok(failed(table, problem));
        }
    };
    emit(VerifyEvent::TableStarted {
        table: name.clone(),
        chunks: plan.ranges.len(),
    });
    let results: Result<Vec<Chunk>, PgError> = stream::iter(0..plan.ranges.len())
        .map(|i| compare_chunk(run, &plan, i))
        .buffer_unordered(run.options.parallel.max(1))
        .try_collect()
        .await;
    let mut results = match results {
        Ok(r) => r,
        Err(e) if e.retry() == Retry::Definite => {
            emit(VerifyEvent::TableDone {
                table: name.clone(),
                equal: false,
            });
            return Ok(failed(table, e.to_string()));
        }
        Err(e) => return Err(e),
    };
    results.sort_by_key(|c| c.index);
    let mismatches: Vec<RangeMismatch> = results
        .iter_mut()
        .filter_map(|c| c.mismatch.take())
        .collect();
    let report = TableReport {
        table: name.clone(),
        source_rows: results.iter().map(|c| c.source_rows).sum(),
        target_rows: results.iter().map(|c| c.target_rows).sum(),
        chunks: plan.ranges.len(),
        equal: mismatches.is_empty(),
        method: method(table),
        mismatches,
        error: None,
    };
    emit(VerifyEvent::TableDone {
        table: name,
        equal: report.equal,
    });
    Ok(report)
}

fn method(table: &Table) -> &'static str {
    if table.key().is_empty() {
        "whole"
    } else {
        "chunked"
    }
}

fn failed(table: &Table, error: String) -> TableReport {
    TableReport {
        table: table.display(),
        source_rows: 0,
        target_rows: 0,
        chunks: 0,
        equal: false,
        method: method(table),
        mismatches: vec![],
        error: Some(error),
    }
}

/// A range of the key: `from` inclusive, `to` exclusive, `None` open; the last range ends at
/// `through`, inclusive, the largest key when the ranges were planned.
struct Range {
    from: Option<Vec<String>>,
    to: Option<Vec<String>>,
    through: Option<Vec<String>>,
}

/// How one side's table is read.
struct SideTable {
    /// `ONLY "s"."t"`, or `"s"."t"` for a partitioned table (its rows are in the partitions).
    from: String,
    /// `format_type` of each key column.
    key_types: Vec<String>,
}

struct TablePlan<'t> {
    table: &'t Table,
    /// Quoted key columns, in key order; empty for the whole-table method.
    key: Vec<String>,
    /// `md5(ROW(...)::text)` over the source's columns.
    row_hash: String,
    source: SideTable,
    target: SideTable,
    ranges: Vec<Range>,
}

/// Reads both sides' catalogs and the source's range boundaries. `Ok(Err(problem))` when
/// the table cannot be compared.
async fn plan_table<'t>(
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

const SIDE_TABLE: &str = "
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
async fn side_table(
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
async fn boundaries(
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
    fn side(&self, side: Side) -> &SideTable {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    /// ` WHERE (k1, k2) >= ($1::text::t1, $2::text::t2) AND (k1, k2) < (...)` and its values.
    fn filter<'r>(&self, side: Side, range: &'r Range) -> (String, Vec<&'r str>) {
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
    async fn checksum(&self, client: &Client, side: Side, range: &Range) -> Result<Sum, PgError> {
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

fn params<'v>(values: &'v [&'v str]) -> Vec<&'v (dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

#[derive(PartialEq, Eq)]
struct Sum {
    rows: i64,
    hash: String,
}

// ---------------------------------------------------------------------------------------
// One range.

struct Chunk {
    index: usize,
    source_rows: i64,
    target_rows: i64,
    mismatch: Option<RangeMismatch>,
}

async fn compare_chunk(
    run: &Run<'_>,
    plan: &TablePlan<'_>,
    index: usize,
) -> Result<Chunk, PgError> {
    let range = &plan.ranges[index];
    let conn = run.pool.get().await;
    let (mut s, mut t) = tokio::try_join!(
        plan.checksum(&conn.source, Side::Source, range),
        plan.checksum(&conn.target, Side::Target, range),
    )?;
    let mut round = 0;
    while s != t && round < RECHECKS {
        let Some(catch_up) = run.catch_up else { break };
        if run.stalled.load(Ordering::Relaxed) {
            break;
        }
        if round > 0 {
            s = plan.checksum(&conn.source, Side::Source, range).await?;
        }
        let caught_up = match catch_up {
            CatchUp::Slot(slot) => {
                // Taken after the source was read, so the target holds all the source read saw.
                let lsn: String = conn
                    .source
                    .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                    .await
                    .ctx(Side::Source, "read the WAL position")?
                    .get(0);
                wait_for_slot(&conn.source, slot, &lsn, run.options.catch_up_timeout).await?
            }
            CatchUp::TriggerLink(link) => {
                wait_for_link(
                    &conn.source,
                    &conn.target,
                    link,
                    run.options.catch_up_timeout,
                )
                .await?
            }
        };
        if !caught_up {
            run.stalled.store(true, Ordering::Relaxed);
            break;
        }
        t = plan.checksum(&conn.target, Side::Target, range).await?;
        round += 1;
    }
    let mismatch = if s == t {
        None
    } else {
        Some(RangeMismatch {
            from: range.from.clone(),
            to: range.to.clone(),
            through: range.through.clone(),
            source_rows: s.rows,
            target_rows: t.rows,
            first_keys: first_keys(&conn, plan, range).await?,
        })
    };
    (run.progress)(VerifyEvent::ChunkDone {
        table: plan.table.display(),
    });
    Ok(Chunk {
        index,
        source_rows: s.rows,
        target_rows: t.rows,
        mismatch,
    })
}

/// Refuses a slot that cannot be waited on, before any work.
async fn check_slot(client: &Client, slot: &str) -> Result<(), PgError> {
    let row = client
        .query_opt("SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name::text = $1", &[&slot])
        .await
        .ctx(Side::Source, "look up the replication slot")?;
    match row.map(|r| r.get::<_, bool>(0)) {
        None => Err(PgError::Refused(format!(
            "replication slot \"{slot}\" does not exist on the source; start replication first (`cutover db sync`) or verify without waiting for it"
        ))),
        Some(false) => Err(PgError::Refused(format!(
            "replication slot \"{slot}\" on the source is not a logical slot in use; give the slot of the target's subscription"
        ))),
        Some(true) => Ok(()),
    }
}

/// Waits until the slot has confirmed `lsn`; false when `timeout` passed first.
async fn wait_for_slot(
    client: &Client,
    slot: &str,
    lsn: &str,
    timeout: Duration,
) -> Result<bool, PgError> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = client
            .query_opt(
                "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false)
                   FROM pg_replication_slots WHERE slot_name::text = $1",
                &[&slot, &lsn],
            )
            .await
            .ctx(Side::Source, "read the replication slot")?;
        let Some(row) = row else {
            return Err(PgError::Refused(format!(
                "replication slot \"{slot}\" disappeared from the source during verify; check replication (`cutover db status`)"
            )));
        };
        if row.get::<_, bool>(0) {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

/// Trigger mode: waits until the target has applied every change the source had committed
/// when this is called (a snapshot taken now, after the source was read): none of the change
/// log's transactions visible in that snapshot may still be missing from the link's
/// position. Exact, like the slot test, and for the same reason: the position is a snapshot
/// and a batch commits with it. False on timeout; an error when the link has no position.
async fn wait_for_link(
    source: &Client,
    target: &Client,
    link: &str,
    timeout: Duration,
) -> Result<bool, PgError> {
    let deadline = Instant::now() + timeout;
    let seen: String = source
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .ctx(Side::Source, "read the current snapshot")?
        .get(0);
    loop {
        let position: Option<String> = target
            .query_opt(
                "SELECT position FROM cutover.applied WHERE link = $1",
                &[&link],
            )
            .await
            .ctx(Side::Target, "read the trigger-mode position")?
            .map(|r| r.get(0));
        let Some(position) = position else {
            return Err(PgError::Refused(format!(
                "the target has no position for link {link} (trigger mode); is `cutover db sync` or `cutover db follow` running?"
            )));
        };
        let missing: bool = source
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM cutover.changes
                   WHERE xid >= pg_snapshot_xmin($2::text::pg_snapshot)
                     AND pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
                     AND NOT pg_visible_in_snapshot(xid, $2::text::pg_snapshot))",
                &[&seen, &position],
            )
            .await
            .ctx(Side::Source, "compare the change log with the position")?
            .get(0);
        if !missing {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The first differing keys of a reported range.

async fn first_keys(
    conn: &Conn,
    plan: &TablePlan<'_>,
    range: &Range,
) -> Result<Vec<KeyDiff>, PgError> {
    if plan.key.is_empty() {
        return first_rows(conn, plan).await;
    }
    let (source, target) = tokio::try_join!(
        keyed_rows(&conn.source, Side::Source, plan, range),
        keyed_rows(&conn.target, Side::Target, plan, range),
    )?;
    let mut diffs: Vec<KeyDiff> = vec![];
    for (key, hash) in &source {
        match target.get(key) {
            None => diffs.push(KeyDiff {
                key: key.clone(),
                kind: MISSING,
            }),
            Some(h) if h != hash => diffs.push(KeyDiff {
                key: key.clone(),
                kind: DIFFERENT,
            }),
            Some(_) => {}
        }
    }
    for key in target.keys().filter(|k| !source.contains_key(*k)) {
        diffs.push(KeyDiff {
            key: key.clone(),
            kind: EXTRA,
        });
    }
    let order = key_order(&conn.source, plan, &diffs).await?;
    let mut diffs: Vec<Option<KeyDiff>> = diffs.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .filter_map(|i| diffs.get_mut(i).and_then(Option::take))
        .collect())
}

/// `key -> md5(row)` of a range on one side.
async fn keyed_rows(
    client: &Client,
    side: Side,
    plan: &TablePlan<'_>,
    range: &Range,
) -> Result<HashMap<Vec<String>, String>, PgError> {
    let (filter, values) = plan.filter(side, range);
    let keys: Vec<String> = plan.key.iter().map(|k| format!("{k}::text")).collect();
    let sql = format!(
        "SELECT {}, {} FROM {}{filter}",
        keys.join(", "),
        plan.row_hash,
        plan.side(side).from
    );
    let rows = client.query(&sql, &params(&values)).await.ctx(
        side,
        &format!(
            "read the keys of a differing range of {}",
            plan.table.display()
        ),
    )?;
    let n = plan.key.len();
    Ok(rows
        .iter()
        .map(|r| ((0..n).map(|i| r.get(i)).collect(), r.get(n)))
        .collect())
}

/// Indexes into `diffs` of the first [`FIRST_KEYS`] keys in the source's key order.
async fn key_order(
    client: &Client,
    plan: &TablePlan<'_>,
    diffs: &[KeyDiff],
) -> Result<Vec<usize>, PgError> {
    if diffs.len() <= 1 {
        return Ok((0..diffs.len()).collect());
    }
    let types = &plan.source.key_types;
    let columns: Vec<Vec<&str>> = (0..types.len())
        .map(|i| diffs.iter().map(|d| d.key[i].as_str()).collect())
        .collect();
    let arrays: Vec<String> = (1..=types.len()).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = (0..types.len()).map(|i| format!("c{i}")).collect();
    let casts: Vec<String> = aliases
        .iter()
        .zip(types)
        .map(|(a, t)| format!("{a}::{t}"))
        .collect();
    let sql = format!(
        "SELECT n FROM unnest({}) WITH ORDINALITY AS u({}, n) ORDER BY {} LIMIT {FIRST_KEYS}",
        arrays.join(", "),
        aliases.join(", "),
        casts.join(", "),
    );
    let values: Vec<&(dyn ToSql + Sync)> =
        columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&sql, &values).await.ctx(
        Side::Source,
        &format!("order the differing keys of {}", plan.table.display()),
    )?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, i64>(0) as usize - 1)
        .collect())
}

/// A table without a key: distinct rows with their counts, both sides streamed in hash
/// order and merged, up to the first [`FIRST_KEYS`] differences.
async fn first_rows(conn: &Conn, plan: &TablePlan<'_>) -> Result<Vec<KeyDiff>, PgError> {
    let columns: Vec<String> = plan.table.columns.iter().map(|c| ident(c)).collect();
    let open = |side: Side| {
        let sql = format!(
            "SELECT h, count(*), left(min(r), 200) FROM
               (SELECT md5(r) AS h, r FROM (SELECT ROW({})::text AS r FROM {}) x) y
              GROUP BY h ORDER BY h COLLATE \"C\"",
            columns.join(", "),
            plan.side(side).from,
        );
        let context = format!("read the rows of {}", plan.table.display());
        async move {
            let rows = conn
                .client(side)
                .query_raw(&sql, std::iter::empty::<&str>())
                .await
                .ctx(side, &context)?;
            Ok::<_, PgError>(rows.map_err(move |e| PgError::sql(side, context.clone(), e)))
        }
    };
    let (source, target) = tokio::try_join!(open(Side::Source), open(Side::Target))?;
    let (mut source, mut target) = (std::pin::pin!(source), std::pin::pin!(target));
    let group = |r: tokio_postgres::Row| {
        (
            r.get::<_, String>(0),
            r.get::<_, i64>(1),
            r.get::<_, String>(2),
        )
    };
    let (mut s, mut t) = (
        source.try_next().await?.map(group),
        target.try_next().await?.map(group),
    );
    let mut diffs = vec![];
    while diffs.len() < FIRST_KEYS {
        let (kind, row, next_s, next_t) = match (&s, &t) {
            (None, None) => break,
            (Some(a), None) => (MISSING, a.2.clone(), true, false),
            (None, Some(b)) => (EXTRA, b.2.clone(), false, true),
            (Some(a), Some(b)) if a.0 < b.0 => (MISSING, a.2.clone(), true, false),
            (Some(a), Some(b)) if a.0 > b.0 => (EXTRA, b.2.clone(), false, true),
            (Some(a), Some(b)) if a.1 == b.1 => ("", String::new(), true, true),
            (Some(a), Some(b)) => (
                if a.1 > b.1 { MISSING } else { EXTRA },
                a.2.clone(),
                true,
                true,
            ),
        };
        if !kind.is_empty() {
            diffs.push(KeyDiff {
                key: vec![row],
                kind,
            });
        }
        if next_s {
            s = source.try_next().await?.map(group);
        }
        if next_t {
            t = target.try_next().await?.map(group);
        }
    }
    Ok(diffs)
}
