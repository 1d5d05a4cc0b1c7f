//! The parallel copy as a journaled step, restartable; and what the journal says of copies
//! made before.

use std::time::Duration;

use cutover_core::engine::Steps;
use cutover_core::Plan;
use cutover_pg::copy;
use cutover_pg::inspect::Table;
use cutover_pg::sync::*;
use cutover_pg::PgError;
use tokio_postgres::Client;

pub(super) fn copy_progress(
    tables: &[Table],
    counters: &[copy::TableCounters],
) -> Vec<TableProgress> {
    use std::sync::atomic::Ordering::Relaxed;
    tables
        .iter()
        .zip(counters)
        .map(|(t, c)| {
            let (rows, bytes, left) = (
                c.rows.load(Relaxed),
                c.bytes.load(Relaxed),
                c.parts_left.load(Relaxed),
            );
            TableProgress {
                table: t.display(),
                state: if left == 0 {
                    "copied"
                } else if bytes > 0 {
                    "copying"
                } else {
                    "queued"
                },
                rows_done: rows,
                rows_estimate: t.rows_estimate,
                bytes_done: bytes,
                bytes_estimate: t.bytes,
            }
        })
        .collect()
}

/// The parallel copy, restartable: a copy an earlier run finished is kept (its slot holds every
/// change since); one that died half-way is emptied and made again from a new slot.
pub(super) async fn parallel_copy(
    plan: &Plan,
    steps: &Steps<'_>,
    source: &Client,
    target: &Client,
    tables: &[Table],
    progress: &(dyn Fn(&[TableProgress]) + Send + Sync),
) -> Result<Vec<String>, PgError> {
    let slot = plan.sync.slot();
    if subscription_oid(target, &plan.sync.subscription())
        .await?
        .is_some()
    {
        steps.skip("copy", "the subscription runs already")?;
        return Ok(vec![]);
    }
    let location = plan.target.url.location();
    // Whether a copy was ever started into this very target, per the journal.
    let ours = copied_into(steps, &location)?;
    if slot_exists(source, &slot).await? {
        if let Some(rows) = finished_copy(steps, &location)? {
            if target_rows(target, tables).await? == rows {
                steps.skip(
                    "copy",
                    &format!("kept the copy of an earlier run: {rows} rows into {location}; slot {slot} holds every change since"),
                )?;
                return Ok(vec![]);
            }
        }
        if !ours {
            return Err(PgError::Refused(format!(
                "replication slot {slot} exists on the source, but this plan's journal shows no copy into {location}; \
                 run `cutover db cleanup` (it drops the slot) and then `cutover db sync`"
            )));
        }
        cutover_pg::cleanup::drop_slot(source, &slot).await?;
    }
    let counters = copy::TableCounters::for_tables(tables.len());
    let intent = format!(
        "copy {} tables from slot {slot}'s snapshot into {location}, {} parts at once",
        tables.len(),
        plan.sync.copy_jobs
    );
    let analyzed = std::sync::Mutex::new(vec![]);
    steps
        .run("copy", &intent, || async {
            // Rows a copy that died half-way left behind (only ever in this target of ours).
            if ours {
                copy::truncate(target, tables).await?;
            }
            let snapshot = copy::SnapshotSlot::create(&plan.source.url, &slot).await?;
            let stats = {
                // Shared through a queue on the target: `db sync --worker` processes help.
                let work = copy::copy_tables_shared(
                    &plan.source.url,
                    &plan.target.url,
                    &snapshot.snapshot,
                    tables,
                    &plan.sync,
                    &counters,
                );
                tokio::pin!(work);
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        r = &mut work => break r,
                        _ = tick.tick() => progress(&copy_progress(tables, &counters)),
                    }
                }
            };
            progress(&copy_progress(tables, &counters));
            let lsn = snapshot.consistent_lsn.clone();
            snapshot.release().await;
            let stats = stats?;
            let mut line = format!(
                "{} rows, {} bytes in {} parts, consistent at {lsn}",
                stats.rows, stats.bytes, stats.parts
            );
            if let Some(built) = &stats.built {
                line.push_str(&format!("; {}", built.summary()));
                *analyzed.lock().unwrap_or_else(|p| p.into_inner()) = built.analyzed.clone();
            }
            Ok::<_, PgError>(line)
        })
        .await?;
    Ok(analyzed.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Whether the last copy the journal shows started (whatever became of it) went into `location`.
pub(super) fn copied_into(steps: &Steps<'_>, location: &str) -> Result<bool, PgError> {
    let last = steps.journal().last("copy")?;
    Ok(last.is_some_and(|r| r.intent.contains(&format!(" into {location}"))))
}

/// Rows of the last copy into `location` that finished (or was kept), per the journal.
pub(super) fn finished_copy(steps: &Steps<'_>, location: &str) -> Result<Option<i64>, PgError> {
    use cutover_core::journal::Status;
    let Some(r) = steps.journal().last("copy")? else {
        return Ok(None);
    };
    let text = r.outcome.unwrap_or_default();
    let finished = matches!(r.status, Some(Status::Ok) | Some(Status::Skipped));
    if !finished
        || !(r.intent.contains(&format!(" into {location}"))
            || text.contains(&format!(" into {location}")))
    {
        return Ok(None);
    }
    // "<rows> rows, ..." or "kept the copy of an earlier run: <rows> rows into ..."
    let rows = text
        .split(" rows")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok());
    Ok(rows)
}
