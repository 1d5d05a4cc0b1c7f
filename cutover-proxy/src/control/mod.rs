//! A fleet of proxies that switches as one, with Postgres as the coordinator.
//!
//! Every proxy of a plan, and every switch, shares two tables in the `cutover` schema of the
//! control database (`proxy.control_url`, by default the target):
//!
//! - `cutover.proxy_fleet`, one row: the active backend and its epoch (the truth every proxy
//!   follows), whether new transactions are held, the backend to log in to ahead of a
//!   switch, and a generation bumped by every change.
//! - `cutover.proxy_lease`, one row per proxy: its address and version, the generation it
//!   has applied, its whole status (sessions, drained, epoch), and a heartbeat the database's
//!   own clock stamps.
//!
//! A switch changes the fleet row and sends `NOTIFY cutover_proxy`; each proxy (`member.rs`)
//! reads the row on the notification, or on its own every second because a notification is
//! lost with the connection that carried it, brings its gate there, and writes its lease.
//! The switch (`fleet.rs`) waits until every proxy's lease shows the change. Each proxy keeps
//! the active backend on disk too: one that cannot reach the control database starts on it and
//! never changes backend on its own.

pub mod fleet;
pub(crate) mod member;

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use crate::proxy::Status;
use crate::state::Backend;

/// The channel a change of the fleet row is announced on.
pub const CHANNEL: &str = "cutover_proxy";

/// A proxy renews its lease this often.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A lease not renewed for this long belongs to a proxy that is gone (killed, or its host
/// lost): a switch does not wait for it. One frozen for less is waited for, and a switch
/// that it does not answer stops before its point of no return.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// A proxy held in a pause that loses its control database for this long resumes on its
/// current backend by itself: its clients then meet the fence, if there is one, rather than
/// wait forever. It never changes backend on its own.
pub const ORPHANED_PAUSE: Duration = Duration::from_secs(60);

const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS cutover;
CREATE TABLE IF NOT EXISTS cutover.proxy_fleet (
    id int PRIMARY KEY CHECK (id = 1),
    active text NOT NULL CHECK (active IN ('source', 'target')),
    epoch bigint NOT NULL,
    paused boolean NOT NULL DEFAULT false,
    prepare text CHECK (prepare IN ('source', 'target')),
    generation bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS cutover.proxy_lease (
    id text PRIMARY KEY,
    address text NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now(),
    generation bigint NOT NULL,
    status jsonb NOT NULL
);
";

/// The fleet row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FleetRow {
    pub active: Backend,
    pub epoch: u64,
    pub paused: bool,
    pub prepare: Option<Backend>,
    pub generation: i64,
}

/// One proxy's lease.
#[derive(Clone, Debug, Serialize)]
pub struct Lease {
    pub id: String,
    pub address: String,
    pub version: String,
    /// The fleet generation this proxy has applied.
    pub generation: i64,
    /// Seconds since its last heartbeat, by the control database's clock.
    pub age_s: f64,
    pub status: Option<Status>,
}

impl Lease {
    pub fn live(&self) -> bool {
        self.age_s < LEASE_TTL.as_secs_f64()
    }

    /// How this proxy is named in messages.
    pub fn describe(&self) -> String {
        format!("proxy {} at {}", self.id, self.address)
    }
}

fn backend(text: &str) -> Result<Backend, String> {
    match text {
        "source" => Ok(Backend::Source),
        "target" => Ok(Backend::Target),
        other => Err(format!(
            "cutover.proxy_fleet names backend {other:?}; it must be \"source\" or \"target\""
        )),
    }
}

fn pg(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Creates the tables if they are missing and the fleet row if there is none, at `start`;
/// a row behind `start` (a proxy whose disk has a later switch than the control database,
/// e.g. one that ran alone before) is brought forward: the fleet never goes back to an older
/// epoch. Serialized between proxies starting together.
pub(crate) async fn join(client: &Client, start: &crate::state::Durable) -> Result<(), String> {
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('cutover.proxy_fleet')); {SCHEMA}"
        ))
        .await
        .map_err(pg)?;
    let r = client
        .execute(
            "INSERT INTO cutover.proxy_fleet (id, active, epoch) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE
                SET active = EXCLUDED.active, epoch = EXCLUDED.epoch,
                    generation = cutover.proxy_fleet.generation + 1, changed_at = now()
              WHERE cutover.proxy_fleet.epoch < EXCLUDED.epoch",
            &[&start.active.as_str(), &(start.epoch as i64)],
        )
        .await;
    let r =
        match r {
            // Leases of proxies gone for an hour are only noise in `cutover proxy status`.
            Ok(_) => client
                .execute(
                    "DELETE FROM cutover.proxy_lease WHERE heartbeat < now() - interval '1 hour'",
                    &[],
                )
                .await,
            e => e,
        };
    match r {
        Ok(_) => client.batch_execute("COMMIT").await.map_err(pg),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(pg(e))
        }
    }
}

pub(crate) async fn read_row(client: &Client) -> Result<FleetRow, String> {
    let row = client
        .query_opt(
            "SELECT active, epoch, paused, prepare, generation FROM cutover.proxy_fleet WHERE id = 1",
            &[],
        )
        .await
        .map_err(pg)?
        .ok_or_else(|| {
            "cutover.proxy_fleet has no row; start a `cutover proxy`, which creates it".to_string()
        })?;
    Ok(FleetRow {
        active: backend(row.get(0))?,
        epoch: row.get::<_, i64>(1) as u64,
        paused: row.get(2),
        prepare: row.get::<_, Option<&str>>(3).map(backend).transpose()?,
        generation: row.get(4),
    })
}

pub(crate) async fn read_leases(client: &Client) -> Result<Vec<Lease>, String> {
    let rows = client
        .query(
            "SELECT id, address, version, generation, status::text,
                    extract(epoch FROM now() - heartbeat)::float8
               FROM cutover.proxy_lease ORDER BY started_at, id",
            &[],
        )
        .await
        .map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| Lease {
            id: r.get(0),
            address: r.get(1),
            version: r.get(2),
            generation: r.get(3),
            status: serde_json::from_str(r.get::<_, &str>(4)).ok(),
            age_s: r.get(5),
        })
        .collect())
}

/// Whether the control tables are there at all (a switch refuses clearly without them).
pub(crate) async fn exists(client: &Client) -> Result<bool, String> {
    let row = client
        .query_one("SELECT to_regclass('cutover.proxy_fleet') IS NOT NULL", &[])
        .await
        .map_err(pg)?;
    Ok(row.get(0))
}
