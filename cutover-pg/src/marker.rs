//! The fence marker: an exact and quick test that the new primary has applied everything
//! the old one wrote before its fence.
//!
//! `cutover.marker` is a one-row-per-switch table on both sides, published with the moved
//! tables. After the fence, a row is written on the old primary; logical replication applies
//! transactions in commit order, so the moment the row is visible on the other side, every
//! transaction committed before it is there too. Waiting for a slot's `confirmed_flush_lsn`
//! would also be exact, but it moves only when the subscriber flushes and reports (hundreds of
//! milliseconds with the subscription's default `synchronous_commit = off`), and every one of
//! those milliseconds is a pause the clients see.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::connect::ident;
use crate::error::{PgError, Side, SqlContext};
use crate::inspect::{ReplicaIdentity, Table, OWN_SCHEMA};

/// The marker table as a [`Table`], to publish it with the others.
pub fn table() -> Table {
    Table {
        oid: 0,
        schema: OWN_SCHEMA.into(),
        name: "marker".into(),
        owner: String::new(),
        partitioned: false,
        unlogged: false,
        rows_estimate: 0,
        bytes: 0,
        primary_key: vec!["id".into()],
        replica_identity: ReplicaIdentity::Default,
        identity_index: vec![],
        generated_columns: vec![],
        columns: vec!["id".into(), "fence_lsn".into(), "written_at".into()],
    }
}

/// Creates the marker table if missing.
pub async fn ensure(client: &Client, side: Side) -> Result<(), PgError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS cutover;
             CREATE TABLE IF NOT EXISTS cutover.marker (
                 id bigint PRIMARY KEY,
                 fence_lsn pg_lsn NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .ctx(side, "create the table cutover.marker")
}

/// Adds the marker to `publication` on the publisher and, when it was missing, has the
/// subscription learn it (no copy: the table is empty on both sides until a fence).
pub async fn publish(
    publisher: &Client,
    publisher_side: Side,
    publication: &str,
    subscriber: &Client,
    subscriber_side: Side,
    subscription: &str,
) -> Result<bool, PgError> {
    let member = publisher
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables
                             WHERE pubname = $1 AND schemaname = 'cutover' AND tablename = 'marker')",
            &[&publication],
        )
        .await
        .ctx(publisher_side, "look for the marker in the publication")?;
    if member.get::<_, bool>(0) {
        return Ok(false);
    }
    publisher
        .batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE ONLY cutover.marker",
            ident(publication)
        ))
        .await
        .ctx(publisher_side, "add cutover.marker to the publication")?;
    subscriber
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = false)",
            ident(subscription)
        ))
        .await
        .ctx(subscriber_side, "refresh the subscription's tables")?;
    Ok(true)
}

/// Writes marker `id` on the old primary, recording the WAL position of the fence. The
/// commit is flushed at once whatever the server's `synchronous_commit`: the WAL sender
/// sends only flushed WAL, and with `off` the flush could wait for the WAL writer
/// (`wal_writer_delay`, 200 ms by default) while the clients are paused.
pub async fn write(client: &Client, side: Side, id: i64) -> Result<String, PgError> {
    let sql = format!(
        "BEGIN;
         SET LOCAL synchronous_commit = on;
         INSERT INTO cutover.marker (id, fence_lsn) VALUES ({id}, pg_current_wal_insert_lsn())
             ON CONFLICT (id) DO UPDATE SET fence_lsn = excluded.fence_lsn;
         COMMIT;"
    );
    client
        .batch_execute(&sql)
        .await
        .ctx(side, "write the fence marker")?;
    let row = client
        .query_one(
            "SELECT fence_lsn::text FROM cutover.marker WHERE id = $1",
            &[&id],
        )
        .await
        .ctx(side, "read the fence marker")?;
    Ok(row.get(0))
}

/// Waits until marker `id` is visible on the new primary.
pub async fn wait(client: &Client, side: Side, id: i64, timeout: Duration) -> Result<(), PgError> {
    let started = Instant::now();
    loop {
        let seen = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM cutover.marker WHERE id = $1)",
                &[&id],
            )
            .await
            .ctx(side, "look for the fence marker")?;
        if seen.get::<_, bool>(0) {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(PgError::Refused(format!(
                "the {side} did not apply the writes made before the fence within {}s; check `cutover db status` (is the subscription running?)",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
