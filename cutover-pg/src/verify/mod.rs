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
//!   uuid, text, enum and composite keys, and mixed-case names (quoted with `connect::ident`).
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

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use cutover_core::ConnString;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{PgError, Retry};
use crate::inspect::Table;

mod chunk;
mod plan;
mod pool;

use chunk::{check_slot, compare_chunk, Chunk};
use plan::plan_table;
use pool::Pool;

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
