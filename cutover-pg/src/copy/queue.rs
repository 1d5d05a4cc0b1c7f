//! The shared copy: `db sync`'s parts in a queue on the target that `db sync --worker`
//! processes on other hosts share (`FOR UPDATE SKIP LOCKED`), and each table's keys built as
//! its last part lands.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cutover_core::ConnString;
use serde::Serialize;
use tokio_postgres::Client;

use super::{copy_part, open_and_plan, stats, CopyStats, Part, TableCounters, COPY_SESSION};
use crate::connect::connect;
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::Table;

/// The shared copy's queue, in the target's `cutover` schema: the job (its snapshot, the
/// source it reads) and its parts. Any process may take a part: `FOR UPDATE SKIP LOCKED` in
/// the transaction that writes the part's rows and marks it done, so a worker that dies
/// gives its part back with nothing written, and no two take the same one.
const QUEUE_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS cutover;
CREATE TABLE IF NOT EXISTS cutover.copy_job (
    name text PRIMARY KEY,
    snapshot text NOT NULL,
    source text NOT NULL,
    state text NOT NULL,
    started timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS cutover.copy_part (
    job text NOT NULL,
    id int NOT NULL,
    tbl int NOT NULL,
    relation text NOT NULL,
    columns text NOT NULL,
    is_binary bool NOT NULL,
    page_from bigint,
    page_to bigint,
    done bool NOT NULL DEFAULT false,
    worker text,
    rows bigint,
    bytes bigint,
    PRIMARY KEY (job, id)
);";

/// Who a worker is, in the queue: host and process.
fn worker_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    format!("{host}:{}", std::process::id())
}

/// Takes parts of `job` until none is left to take (done, or taken by another worker), each
/// copied and marked done in one target transaction. Returns the parts this worker copied.
async fn take_parts(
    source_url: &ConnString,
    target_url: &ConnString,
    job: &str,
    me: &str,
    counters: &[TableCounters],
) -> Result<usize, PgError> {
    let source = connect(source_url, Side::Source).await?;
    let target = connect(target_url, Side::Target).await?;
    for (c, side) in [(&source, Side::Source), (&target, Side::Target)] {
        c.batch_execute(COPY_SESSION)
            .await
            .ctx(side, "set up a copy session")?;
    }
    let snapshot: String = target
        .query_one(
            "SELECT snapshot FROM cutover.copy_job WHERE name = $1",
            &[&job],
        )
        .await
        .ctx(Side::Target, "read the copy job")?
        .get(0);
    let mut copied = 0;
    loop {
        target
            .batch_execute("BEGIN")
            .await
            .ctx(Side::Target, "begin a part")?;
        let row = target
            .query_opt(
                "SELECT id, tbl, relation, columns, is_binary, page_from, page_to
                   FROM cutover.copy_part WHERE job = $1 AND NOT done
                  ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[&job],
            )
            .await
            .ctx(Side::Target, "take a part of the copy")?;
        let Some(row) = row else {
            let _ = target.batch_execute("ROLLBACK").await;
            return Ok(copied);
        };
        let id: i32 = row.get(0);
        let table = row.get::<_, i32>(1) as usize;
        let pages = row
            .get::<_, Option<i64>>(5)
            .map(|from| (from, row.get::<_, Option<i64>>(6)));
        let part = Part {
            table,
            relation: row.get(2),
            columns: row.get(3),
            binary: row.get(4),
            pages,
        };
        let spare = TableCounters::for_tables(1);
        let counter = counters.get(table).unwrap_or(&spare[0]);
        let done = async {
            let (rows, bytes) = copy_part(&source, &target, &snapshot, &part, counter).await?;
            target
                .execute(
                    "UPDATE cutover.copy_part SET done = true, worker = $3, rows = $4, bytes = $5
                      WHERE job = $1 AND id = $2",
                    &[&job, &id, &me, &rows, &bytes],
                )
                .await
                .ctx(Side::Target, "mark a part done")?;
            target
                .batch_execute("COMMIT")
                .await
                .ctx(Side::Target, "commit a part")
        }
        .await;
        if let Err(e) = done {
            let _ = target.batch_execute("ROLLBACK").await;
            return Err(e);
        }
        tracing::debug!(part = id, table, "part copied");
        copied += 1;
    }
}

/// [`copy_tables`](super::copy_tables), with its parts in a queue on the target (named after the sync) that other
/// processes share: `cutover db sync --worker`, on any host that reaches both databases,
/// imports the same snapshot and takes parts too. Returns once every part is done, by
/// whichever worker.
pub async fn copy_tables_shared(
    source_url: &ConnString,
    target_url: &ConnString,
    snapshot: &str,
    tables: &[Table],
    sync: &cutover_core::plan::SyncSettings,
    counters: &[TableCounters],
) -> Result<CopyStats, PgError> {
    // The queue is named after the sync; keys are built early only where cutover made the
    // tables (with the schema copied by hand they are the user's).
    let (job, jobs, keys) = (sync.name.as_str(), sync.copy_jobs, sync.copy_schema);
    let (source, parts) = open_and_plan(source_url, snapshot, tables, jobs, counters).await?;
    let count = parts.len();
    let mut target = connect(target_url, Side::Target).await?;
    target
        .batch_execute(QUEUE_DDL)
        .await
        .ctx(Side::Target, "make the copy's queue")?;
    {
        let tx = target
            .transaction()
            .await
            .ctx(Side::Target, "begin the queue")?;
        tx.execute("DELETE FROM cutover.copy_part WHERE job = $1", &[&job])
            .await
            .ctx(Side::Target, "empty the queue")?;
        tx.execute(
            "INSERT INTO cutover.copy_job (name, snapshot, source, state) VALUES ($1, $2, $3, 'copying')
             ON CONFLICT (name) DO UPDATE SET snapshot = excluded.snapshot, source = excluded.source,
                                              state = 'copying', started = now()",
            &[&job, &snapshot, &source_url.location()],
        )
        .await
        .ctx(Side::Target, "publish the copy job")?;
        for (id, p) in parts.iter().enumerate() {
            let (from, to) = match p.pages {
                Some((f, t)) => (Some(f), t),
                None => (None, None),
            };
            tx.execute(
                "INSERT INTO cutover.copy_part (job, id, tbl, relation, columns, is_binary, page_from, page_to)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &job,
                    &(id as i32),
                    &(p.table as i32),
                    &p.relation,
                    &p.columns,
                    &p.binary,
                    &from,
                    &to,
                ],
            )
            .await
            .ctx(Side::Target, "queue a part")?;
        }
        tx.commit().await.ctx(Side::Target, "publish the queue")?;
    }
    let me = worker_name();
    let mut others_seen = std::collections::HashSet::new();
    let copy = async {
        'copy: loop {
            let workers = (0..jobs.max(1).min(count.max(1)))
                .map(|_| take_parts(source_url, target_url, job, &me, counters));
            futures_util::future::try_join_all(workers).await?;
            // The rest is being copied by other workers: their progress, until every part
            // is done, or one comes free again (a worker that dies gives its part back).
            loop {
                if queue_state(&target, job, &me, counters, &mut others_seen).await? == 0 {
                    break 'copy;
                }
                if takeable(&target, job).await? {
                    continue 'copy;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok::<_, PgError>(())
    };
    // A table's indexes, keys, foreign keys and statistics are built as soon as its last part
    // lands, while the others copy. With a partitioned table among them the schema's steps
    // build them all after (its partitions' indexes are attached by name, as pg_dump made them).
    let built = if keys && !tables.iter().any(|t| t.partitioned) {
        let build = super::build::build_as_tables_land(source_url, target_url, job, tables, jobs);
        Some(tokio::try_join!(copy, build)?.1)
    } else {
        copy.await?;
        None
    };
    target
        .execute(
            "UPDATE cutover.copy_job SET state = 'done' WHERE name = $1",
            &[&job],
        )
        .await
        .ctx(Side::Target, "close the copy job")?;
    source
        .batch_execute("COMMIT")
        .await
        .ctx(Side::Source, "end the copy")?;
    Ok(CopyStats {
        built,
        ..stats(counters, count)
    })
}

/// Whether a part of `job` is free to take now.
async fn takeable(target: &Client, job: &str) -> Result<bool, PgError> {
    target
        .batch_execute("BEGIN")
        .await
        .ctx(Side::Target, "look at the queue")?;
    let row = target
        .query_opt(
            "SELECT id FROM cutover.copy_part WHERE job = $1 AND NOT done LIMIT 1 FOR UPDATE SKIP LOCKED",
            &[&job],
        )
        .await;
    let _ = target.batch_execute("ROLLBACK").await;
    Ok(row.ctx(Side::Target, "look at the queue")?.is_some())
}

/// The parts of `job` not done yet; what other workers copied is added to `counters` once.
async fn queue_state(
    target: &Client,
    job: &str,
    me: &str,
    counters: &[TableCounters],
    others_seen: &mut std::collections::HashSet<i32>,
) -> Result<usize, PgError> {
    {
        let rows = target
            .query(
                "SELECT id, tbl, done, coalesce(worker, ''), coalesce(rows, 0), coalesce(bytes, 0)
                   FROM cutover.copy_part WHERE job = $1",
                &[&job],
            )
            .await
            .ctx(Side::Target, "read the queue")?;
        let mut left = 0;
        for r in &rows {
            let (id, tbl, done, worker): (i32, i32, bool, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if !done {
                left += 1;
            } else if worker != me && others_seen.insert(id) {
                if let Some(c) = counters.get(tbl as usize) {
                    c.rows.fetch_add(r.get(4), Ordering::Relaxed);
                    c.bytes.fetch_add(r.get(5), Ordering::Relaxed);
                    c.parts_left.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        Ok(left)
    }
}

/// What one `cutover db sync --worker` did.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerReport {
    pub job: String,
    pub parts: usize,
    pub rows: i64,
    pub bytes: i64,
}

/// `cutover db sync --worker`: takes parts of the copy `job` in progress into `target_url`,
/// `jobs` at once, until none is left. Refuses, changing nothing, when there is no such copy,
/// when it is finished, or when it reads another source than `source_url`.
pub async fn help_copy(
    source_url: &ConnString,
    target_url: &ConnString,
    job: &str,
    jobs: usize,
) -> Result<WorkerReport, PgError> {
    let target = connect(target_url, Side::Target).await?;
    let location = target_url.location();
    let found = match target
        .query_opt(
            "SELECT source, state FROM cutover.copy_job WHERE name = $1",
            &[&job],
        )
        .await
    {
        Ok(row) => row.map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))),
        Err(e)
            if e.code()
                .is_some_and(|c| ["42P01", "3F000"].contains(&c.code())) =>
        {
            None
        }
        Err(e) => return Err(PgError::sql(Side::Target, "read the copy job", e)),
    };
    let Some((source, state)) = found else {
        return Err(PgError::Refused(format!(
            "no copy {job} to help with in {location}: start `cutover db sync` first, then the workers"
        )));
    };
    if state != "copying" {
        return Err(PgError::Refused(format!(
            "the copy {job} into {location} is finished; there is nothing left to take"
        )));
    }
    if source != source_url.location() {
        return Err(PgError::Refused(format!(
            "this plan's source is {}, but the copy {job} in progress reads {source}; run the worker with the plan of that sync",
            source_url.location()
        )));
    }
    let me = worker_name();
    let counters = TableCounters::for_tables(0);
    let workers = (0..jobs.max(1)).map(|_| take_parts(source_url, target_url, job, &me, &counters));
    let parts: usize = futures_util::future::try_join_all(workers)
        .await?
        .into_iter()
        .sum();
    let row = target
        .query_one(
            "SELECT coalesce(sum(rows), 0)::bigint, coalesce(sum(bytes), 0)::bigint
               FROM cutover.copy_part WHERE job = $1 AND worker = $2",
            &[&job, &me],
        )
        .await
        .ctx(Side::Target, "read what this worker copied")?;
    Ok(WorkerReport {
        job: job.to_string(),
        parts,
        rows: row.get(0),
        bytes: row.get(1),
    })
}
