//! One proxy's side of the fleet: it joins, follows the fleet row and renews its lease, and
//! leaves (its lease deleted) when it stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_core::ConnString;
use cutover_pg::Side;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{join, pg, read_row, FleetRow, CHANNEL, HEARTBEAT, ORPHANED_PAUSE};
use crate::proxy::Shared;
use crate::state::Durable;

/// Who this proxy is in the lease table.
#[derive(Clone, Debug)]
pub(crate) struct Me {
    pub id: String,
    pub address: String,
}

impl Me {
    /// A fresh id (host name, process, a random part: a restarted proxy is a new member) and
    /// the address its clients reach it at.
    pub fn new(listen: std::net::SocketAddr) -> Me {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "proxy".into());
        let id = format!(
            "{host}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        let address = if listen.ip().is_unspecified() {
            format!("{host}:{}", listen.port())
        } else {
            listen.to_string()
        };
        Me { id, address }
    }
}

/// A connection to the control database that has joined the fleet, its notifications
/// listened to.
pub(crate) struct Joined {
    client: Client,
    notes: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
}

/// Connects, joins (see [`join`]), brings the gate to the fleet row and writes the lease.
pub(crate) async fn connect(shared: &Shared, url: &ConnString, me: &Me) -> Result<Joined, String> {
    let (client, notes) = cutover_pg::connect_listening(url, Side::Target)
        .await
        .map_err(|e| e.to_string())?;
    let gate = shared.gate();
    join(
        &client,
        &Durable {
            active: gate.active,
            epoch: gate.epoch,
        },
    )
    .await?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(pg)?;
    let row = read_row(&client).await?;
    apply(shared, &row)?;
    let status = serde_json::to_string(&shared.status()).expect("a status serializes");
    write_lease(&client, me, row.generation, &status).await?;
    Ok(Joined { client, notes })
}

/// Follows the fleet until `stop`, from `first` (the connection made at start) if there is
/// one; reconnects after any loss, and meanwhile serves the backend it last knew. The lease
/// is deleted on the way out.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    url: ConnString,
    me: Me,
    first: Option<Joined>,
    stop: CancellationToken,
) {
    let mut first = first;
    let mut down_since: Option<Instant> = if first.is_some() {
        None
    } else {
        Some(Instant::now())
    };
    let mut said = first.is_none();
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = match first.take() {
            Some(j) => follow(&shared, &url, &me, j, &stop, &mut down_since).await,
            None => match connect(&shared, &url, &me).await {
                Ok(j) => follow(&shared, &url, &me, j, &stop, &mut down_since).await,
                Err(e) => Err(e),
            },
        };
        shared.metrics.control_up.set(0);
        match result {
            Ok(()) => return,
            Err(e) => {
                if down_since.is_none() {
                    // It had joined: a new outage, said anew, retried quickly.
                    said = false;
                    backoff = Duration::from_millis(100);
                }
                if !said {
                    tracing::warn!(
                        "control database {}: {e}; serving the {} until it is back",
                        url.location(),
                        shared.gate().active
                    );
                    said = true;
                }
            }
        }
        let since = *down_since.get_or_insert_with(Instant::now);
        if shared.gate().paused && since.elapsed() >= ORPHANED_PAUSE {
            tracing::warn!(
                "paused and cut off from the control database for {}s: resuming on the {}",
                ORPHANED_PAUSE.as_secs(),
                shared.gate().active
            );
            shared.resume();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn follow(
    shared: &Arc<Shared>,
    url: &ConnString,
    me: &Me,
    joined: Joined,
    stop: &CancellationToken,
    down_since: &mut Option<Instant>,
) -> Result<(), String> {
    let Joined { client, mut notes } = joined;
    tracing::info!(
        "in the fleet of {} as {} ({})",
        url.location(),
        me.id,
        me.address
    );
    shared.metrics.control_up.set(1);
    *down_since = None;
    let mut beat = Instant::now() - HEARTBEAT;
    let mut last_written = (i64::MIN, String::new());
    loop {
        let row = read_row(&client).await?;
        apply(shared, &row)?;
        let now = shared.status();
        // Sessions still to move to the backend of a switch: each one that moves is reported
        // at once, so that the switch's wait for every proxy ends when the last one has.
        let moving = now.sessions.iter().any(|s| s.epoch < now.epoch);
        let status = serde_json::to_string(&now).expect("a status serializes");
        let due = beat.elapsed() >= HEARTBEAT;
        if due || last_written != (row.generation, status.clone()) {
            write_lease(&client, me, row.generation, &status).await?;
            last_written = (row.generation, status);
            beat = Instant::now();
        }
        // While a switch is on (and until every session has moved), every change of a session
        // (a transaction ending, a session checked or moved) is reported at once; otherwise
        // once a heartbeat.
        let busy = row.paused || row.prepare.is_some() || shared.gate().paused || moving;
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = client
                    .execute("DELETE FROM cutover.proxy_lease WHERE id = $1", &[&me.id])
                    .await;
                return Ok(());
            }
            n = notes.recv() => {
                if n.is_none() {
                    return Err("the connection to the control database was lost".into());
                }
                while notes.try_recv().is_ok() {}
            }
            _ = changed, if busy => {
                // Several sessions tend to change together: one report for them.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            _ = tokio::time::sleep(HEARTBEAT.saturating_sub(beat.elapsed())) => {}
        }
    }
}

/// Brings the gate to the fleet row. An epoch behind this proxy's own is never followed (a
/// control database restored from an old backup): the proxy says so and stays.
fn apply(shared: &Shared, row: &FleetRow) -> Result<(), String> {
    let gate = shared.gate();
    if row.epoch < gate.epoch {
        tracing::error!(
            "the control database says epoch {} ({}), this proxy is at epoch {} ({}); staying",
            row.epoch,
            row.active,
            gate.epoch,
            gate.active
        );
        return Ok(());
    }
    if row.epoch > gate.epoch {
        tracing::info!(
            "following the fleet to the {} (epoch {})",
            row.active,
            row.epoch
        );
    }
    shared.follow(
        Durable {
            active: row.active,
            epoch: row.epoch,
        },
        row.paused,
        row.prepare,
    )
}

async fn write_lease(
    client: &Client,
    me: &Me,
    generation: i64,
    status: &str,
) -> Result<(), String> {
    client
        .execute(
            "INSERT INTO cutover.proxy_lease (id, address, version, generation, status)
             VALUES ($1, $2, $3, $4, ($5::text)::jsonb)
             ON CONFLICT (id) DO UPDATE
                SET generation = EXCLUDED.generation, status = EXCLUDED.status, heartbeat = now()",
            &[
                &me.id,
                &me.address,
                &env!("CARGO_PKG_VERSION"),
                &generation,
                &status,
            ],
        )
        .await
        .map_err(pg)?;
    Ok(())
}
