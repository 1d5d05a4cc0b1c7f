//! The parallel initial copy, from the replication slot's own snapshot.
//!
//! Creating the logical slot over a replication connection (`CREATE_REPLICATION_SLOT ...
//! (SNAPSHOT 'export')`) gives a snapshot that sees exactly the transactions committed before
//! the slot's consistent point, and the slot then streams exactly those committed after it.
//! Every copy worker imports that snapshot (`SET TRANSACTION SNAPSHOT`), so the parts it
//! copies, however many and in whatever order, add up to one consistent image, and the
//! subscription started afterwards on the same slot (`copy_data = false`) continues from the
//! very point the image stops: no change is lost and none is applied twice.
//!
//! Why copy ourselves rather than let the subscription do it: PostgreSQL gives a table one
//! copy worker, so the largest table sets the pace, and the table must carry its primary key
//! during that copy (its catch-up applies UPDATEs by key). Here a large table is split into
//! ranges of pages (`ctid` ranges, a TID range scan since PostgreSQL 14) copied at once, into
//! tables with no index yet; keys are built after, before the subscription starts.
//!
//! Rows travel in COPY's binary format when every column has a built-in type, text otherwise
//! (binary arrays and records carry type oids, which differ between servers for user types).
//!
//! The snapshot lives as long as the replication connection that exported it, which `psql`
//! holds open for us (the driver we use has no replication mode). If the process dies during
//! the copy, the snapshot is gone with it: the next `db sync` empties the copied tables, drops
//! the slot and copies again from a new one.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cutover_core::ConnString;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio_postgres::Client;

use crate::connect::{connect, ident, literal, qualified};
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::Table;

mod build;
mod queue;

pub use build::{validate_left, Built};

pub use queue::{copy_tables_shared, help_copy, WorkerReport};

/// A logical slot just created, and the snapshot it exported, held open.
pub struct SnapshotSlot {
    child: Child,
    stdin: Option<ChildStdin>,
    pub slot: String,
    /// The slot's consistent point: where the subscription will start.
    pub consistent_lsn: String,
    pub snapshot: String,
}

impl SnapshotSlot {
    /// Creates `slot` with pgoutput and keeps its exported snapshot alive until [`release`](SnapshotSlot::release).
    pub async fn create(source: &ConnString, slot: &str) -> Result<SnapshotSlot, PgError> {
        let mut cmd = crate::connect::client_program("psql", Some(source));
        // No timeout of the role's or database's may end the connection holding the snapshot.
        cmd.env("PGOPTIONS", "-c idle_in_transaction_session_timeout=0 -c statement_timeout=0 -c idle_session_timeout=0")
            .args(["-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "replication=database"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| crate::connect::cannot_run("psql", e))?;
        let mut stdin = child.stdin.take();
        // The older spelling of the option: every server from 10 on understands it.
        let command = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT;\n",
            ident(slot)
        );
        if let Some(s) = stdin.as_mut() {
            s.write_all(command.as_bytes())
                .await
                .map_err(|e| PgError::Io(e.to_string()))?;
            s.flush().await.map_err(|e| PgError::Io(e.to_string()))?;
        }
        let mut line = String::new();
        let mut timed_out = false;
        if let Some(out) = child.stdout.take() {
            let mut reader = BufReader::new(out);
            // Creating a slot waits for every transaction that holds an xid to end.
            timed_out = tokio::time::timeout(Duration::from_secs(300), reader.read_line(&mut line))
                .await
                .is_err();
        }
        let parts: Vec<&str> = line.trim().split('|').collect();
        if timed_out {
            let _ = child.kill().await;
            return Err(PgError::Refused(format!(
                "creating replication slot {slot} waited 5 minutes for transactions on the source to end; \
                 find them (SELECT pid, state, xact_start FROM pg_stat_activity WHERE backend_xid IS NOT NULL), end them, \
                 then run `cutover db sync` again"
            )));
        }
        if parts.len() < 3 || parts[2].is_empty() {
            drop(stdin);
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), e.read_to_string(&mut err)).await;
            }
            let _ = child.wait().await;
            let secrets: Vec<&cutover_core::Secret> = source.password().into_iter().collect();
            let first = err
                .lines()
                .next()
                .unwrap_or("no answer")
                .trim()
                .trim_start_matches("psql: ");
            return Err(PgError::Refused(format!(
                "cannot create replication slot {slot} on the source: {}",
                cutover_core::redact(first, secrets)
            )));
        }
        Ok(SnapshotSlot {
            slot: parts[0].to_string(),
            consistent_lsn: parts[1].to_string(),
            snapshot: parts[2].to_string(),
            child,
            stdin,
        })
    }

    /// Ends the replication connection; the snapshot goes, the slot stays.
    pub async fn release(mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"\\q\n").await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// One part of one table: a range of its pages, or all of it.
struct Part {
    /// Index into the tables being copied.
    table: usize,
    /// The relation rows are read from and written to (a leaf partition of a partitioned table).
    relation: String,
    columns: String,
    binary: bool,
    /// `[from, to)` pages; `to` None = to the end.
    pages: Option<(i64, Option<i64>)>,
}

/// Counters of one table's copy, shared by the workers.
pub struct TableCounters {
    pub rows: AtomicI64,
    pub bytes: AtomicI64,
    pub parts_left: AtomicI64,
}

impl TableCounters {
    /// One set per table, before the copy starts (parts not yet known: -1).
    pub fn for_tables(n: usize) -> Vec<TableCounters> {
        (0..n)
            .map(|_| TableCounters {
                rows: 0.into(),
                bytes: 0.into(),
                parts_left: (-1).into(),
            })
            .collect()
    }
}

/// What the copy did.
#[derive(Clone, Debug, Serialize)]
pub struct CopyStats {
    pub rows: i64,
    pub bytes: i64,
    pub parts: usize,
    /// What was built on the target as the tables landed (the shared copy, into tables it made).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built: Option<Built>,
}

/// Page ranges `[from, to)` (the last open) that split a table of `pages` pages for `jobs`
/// workers: about two parts per worker, each between 1 MiB and 128 MiB of table.
fn page_ranges(pages: i64, jobs: usize) -> Vec<(i64, Option<i64>)> {
    let size = (pages / (2 * jobs.max(1) as i64)).clamp(128, 16384);
    if pages <= size {
        return vec![(0, None)];
    }
    let mut out = vec![];
    let mut from = 0;
    while from < pages {
        let to = from + size;
        out.push((from, if to >= pages { None } else { Some(to) }));
        from = to;
    }
    out
}

/// Splits every table into parts, largest tables first so the long parts start early.
async fn plan_parts(
    source: &Client,
    tables: &[Table],
    split: bool,
    jobs: usize,
) -> Result<Vec<Part>, PgError> {
    let mut parts = vec![];
    for (i, t) in tables.iter().enumerate() {
        let rows = source
            .query(
                "SELECT n.nspname::text, c.relname::text, (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint,
                        (SELECT bool_and(a.atttypid < 16384) FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'r'
                    AND (c.oid = $1::oid OR c.oid IN (SELECT relid FROM pg_partition_tree($1::oid) WHERE isleaf))",
                &[&t.oid],
            )
            .await
            .ctx(Side::Source, "measure the tables")?;
        let generated: Vec<&String> = t.generated_columns.iter().collect();
        let columns: Vec<String> = t
            .columns
            .iter()
            .filter(|c| !generated.contains(c))
            .map(|c| ident(c))
            .collect();
        let columns = columns.join(", ");
        let table_pages: i64 = rows.iter().map(|r| r.get::<_, i64>(2)).sum();
        for r in rows {
            let relation = qualified(r.get::<_, &str>(0), r.get::<_, &str>(1));
            let pages: i64 = r.get(2);
            let binary: bool = r.get::<_, Option<bool>>(3).unwrap_or(false);
            let ranges = if split {
                page_ranges(pages, jobs)
            } else {
                vec![(0, None)]
            };
            let whole = ranges.len() == 1;
            for (from, to) in ranges {
                let range = (!whole).then_some((from, to));
                parts.push((
                    table_pages,
                    Part {
                        table: i,
                        relation: relation.clone(),
                        columns: columns.clone(),
                        binary,
                        pages: range,
                    },
                ));
            }
        }
    }
    // Table by table, largest first, so the long parts start early and each table lands (and
    // its indexes can be built) as soon as its own parts are done, not at the very end with
    // the small last part of every table.
    parts.sort_by_key(|(table_pages, p)| {
        std::cmp::Reverse((*table_pages, std::cmp::Reverse(p.table)))
    });
    Ok(parts.into_iter().map(|(_, p)| p).collect())
}

/// Copies one part: the source's rows as the snapshot sees them, into the target.
async fn copy_part(
    source: &Client,
    target: &Client,
    snapshot: &str,
    part: &Part,
    counters: &TableCounters,
) -> Result<(i64, i64), PgError> {
    let filter = match part.pages {
        None => String::new(),
        Some((from, None)) => format!(" WHERE ctid >= '({from},0)'::tid"),
        Some((from, Some(to))) => {
            format!(" WHERE ctid >= '({from},0)'::tid AND ctid < '({to},0)'::tid")
        }
    };
    let format = if part.binary { " (FORMAT binary)" } else { "" };
    import_snapshot(source, snapshot).await?;
    let out = source
        .copy_out(&format!(
            "COPY (SELECT {} FROM ONLY {}{filter}) TO STDOUT{format}",
            part.columns, part.relation
        ))
        .await
        .ctx(Side::Source, &format!("read {}", part.relation))?;
    let sink = target
        .copy_in::<_, bytes::Bytes>(&format!(
            "COPY {} ({}) FROM STDIN{format}",
            part.relation, part.columns
        ))
        .await
        .ctx(Side::Target, &format!("write {}", part.relation))?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    // The source sends a message per row; they are gathered into large writes here, which
    // costs a copy of each row but saves the sink's own per-row work (and a counter update
    // per row).
    let mut bytes = 0i64;
    let mut batch = bytes::BytesMut::with_capacity(RELAY_BATCH * 2);
    while let Some(chunk) = out.next().await {
        let chunk = chunk.ctx(Side::Source, &format!("read {}", part.relation))?;
        batch.extend_from_slice(&chunk);
        if batch.len() >= RELAY_BATCH {
            bytes += batch.len() as i64;
            relay(&mut sink, &mut batch, counters, &part.relation).await?;
        }
    }
    bytes += batch.len() as i64;
    relay(&mut sink, &mut batch, counters, &part.relation).await?;
    let rows = sink
        .as_mut()
        .finish()
        .await
        .ctx(Side::Target, &format!("write {}", part.relation))?;
    source
        .batch_execute("COMMIT")
        .await
        .ctx(Side::Source, "end the copy transaction")?;
    counters.rows.fetch_add(rows as i64, Ordering::Relaxed);
    counters.parts_left.fetch_sub(1, Ordering::Relaxed);
    Ok((rows as i64, bytes))
}

/// Opens a read-only transaction on the source that sees exactly the copy's snapshot.
async fn import_snapshot(source: &Client, snapshot: &str) -> Result<(), PgError> {
    source
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
            literal(snapshot)
        ))
        .await
        .ctx(Side::Source, "import the copy snapshot")
}

/// Bytes gathered from the source's row messages before one write to the target.
const RELAY_BATCH: usize = 64 * 1024;

/// Writes what `batch` holds to the target's COPY, and counts it.
async fn relay(
    sink: &mut std::pin::Pin<&mut tokio_postgres::CopyInSink<bytes::Bytes>>,
    batch: &mut bytes::BytesMut,
    counters: &TableCounters,
    relation: &str,
) -> Result<(), PgError> {
    if batch.is_empty() {
        return Ok(());
    }
    counters
        .bytes
        .fetch_add(batch.len() as i64, Ordering::Relaxed);
    sink.feed(batch.split().freeze())
        .await
        .ctx(Side::Target, &format!("write {relation}"))
}

/// Settings that change how a value prints in text COPY, pinned alike on both sides, and no
/// timeout that could end a long part.
const COPY_SESSION: &str = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; \
     SET TimeZone = 'UTC'; SET bytea_output = 'hex'; SET statement_timeout = 0; SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0";

/// A copy worker: its own pair of connections, parts taken from the shared queue.
async fn worker(
    source_url: &ConnString,
    target_url: &ConnString,
    snapshot: &str,
    queue: &Mutex<VecDeque<Part>>,
    counters: &[TableCounters],
) -> Result<(), PgError> {
    let source = connect(source_url, Side::Source).await?;
    let target = connect(target_url, Side::Target).await?;
    source
        .batch_execute(COPY_SESSION)
        .await
        .ctx(Side::Source, "set up a copy session")?;
    target
        .batch_execute(COPY_SESSION)
        .await
        .ctx(Side::Target, "set up a copy session")?;
    loop {
        let part = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(part) = part else { return Ok(()) };
        copy_part(&source, &target, snapshot, &part, &counters[part.table]).await?;
    }
}

/// Copies every table from the snapshot with `jobs` workers. `counters` has one entry per
/// table and is updated as the copy goes, for progress.
pub async fn copy_tables(
    source_url: &ConnString,
    target_url: &ConnString,
    snapshot: &str,
    tables: &[Table],
    jobs: usize,
    counters: &[TableCounters],
) -> Result<CopyStats, PgError> {
    let (source, parts) = open_and_plan(source_url, snapshot, tables, jobs, counters).await?;
    let count = parts.len();
    let queue = Mutex::new(VecDeque::from(parts));
    let workers = (0..jobs.max(1).min(count.max(1)))
        .map(|_| worker(source_url, target_url, snapshot, &queue, counters));
    futures_util::future::try_join_all(workers).await?;
    source
        .batch_execute("COMMIT")
        .await
        .ctx(Side::Source, "end the copy")?;
    Ok(stats(counters, count))
}

/// The copy's own session on the source: the snapshot imported, every table locked for the
/// whole copy (ACCESS SHARE, as pg_dump does: a rewrite such as VACUUM FULL, CLUSTER or a
/// rewriting ALTER between two parts would move rows across the page ranges), and the
/// parts planned, each table's count in `counters`. The caller commits it at the end.
async fn open_and_plan(
    source_url: &ConnString,
    snapshot: &str,
    tables: &[Table],
    jobs: usize,
    counters: &[TableCounters],
) -> Result<(Client, Vec<Part>), PgError> {
    let source = connect(source_url, Side::Source).await?;
    source
        .batch_execute(COPY_SESSION)
        .await
        .ctx(Side::Source, "set up the copy")?;
    import_snapshot(&source, snapshot).await?;
    if !tables.is_empty() {
        let list: Vec<String> = tables.iter().map(Table::qualified).collect();
        source
            .batch_execute(&format!(
                "LOCK TABLE {} IN ACCESS SHARE MODE",
                list.join(", ")
            ))
            .await
            .ctx(Side::Source, "lock the tables for the copy")?;
    }
    let version: i32 = source
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .ctx(Side::Source, "read the server version")?
        .get(0);
    // TID range scans arrived in PostgreSQL 14; before that a page range would scan the table.
    let parts = plan_parts(&source, tables, version >= 140000, jobs).await?;
    for (i, c) in counters.iter().enumerate() {
        c.parts_left.store(
            parts.iter().filter(|p| p.table == i).count() as i64,
            Ordering::Relaxed,
        );
    }
    Ok((source, parts))
}

fn stats(counters: &[TableCounters], parts: usize) -> CopyStats {
    CopyStats {
        rows: counters
            .iter()
            .map(|c| c.rows.load(Ordering::Relaxed))
            .sum(),
        bytes: counters
            .iter()
            .map(|c| c.bytes.load(Ordering::Relaxed))
            .sum(),
        parts,
        built: None,
    }
}

/// Empties the target's copies of `tables`: a copy that died half-way is started again.
pub async fn truncate(target: &Client, tables: &[Table]) -> Result<(), PgError> {
    if tables.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = tables.iter().map(Table::qualified).collect();
    target
        .batch_execute(&format!("TRUNCATE {}", list.join(", ")))
        .await
        .ctx(Side::Target, "empty the half-copied tables")
}

#[cfg(test)]
mod tests {
    use super::page_ranges;

    #[test]
    fn ranges_cover_every_page_once_and_end_open() {
        assert_eq!(page_ranges(10, 4), vec![(0, None)]);
        assert_eq!(page_ranges(300, 1), vec![(0, Some(150)), (150, None)]);
        let r = page_ranges(100_000, 4);
        assert_eq!(r.len(), 8);
        assert_eq!(r[0], (0, Some(12_500)));
        assert_eq!(r.last(), Some(&(87_500, None)));
        for w in r.windows(2) {
            assert_eq!(w[0].1, Some(w[1].0));
        }
        // Big tables: parts of at most 16384 pages (128 MiB).
        let r = page_ranges(1_000_000, 2);
        assert!(r.iter().all(|(f, t)| t.unwrap_or(1_000_000) - f <= 16_384));
    }
}
