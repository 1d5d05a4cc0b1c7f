//! The switch's side of the fleet: every change is one update of the fleet row (with its
//! notification), then a wait until every proxy's lease shows it.
//!
//! Who must answer: every proxy whose lease was live when the pause began, and every one that
//! joins while it lasts. A proxy that leaves cleanly deletes its lease and is not waited for;
//! one that stops answering (frozen, cut off) makes the pause, the drain or the switch's
//! acknowledgement time out. Before the point of no return that stops the switch, undone;
//! the point of no return itself is the update that names the new backend: from then on
//! every proxy, now or when it comes back, follows it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_core::ConnString;
use cutover_pg::Side;
use tokio_postgres::Client;

use super::{exists, pg, read_leases, read_row, FleetRow, Lease, CHANNEL};
use crate::admin::AdminError;
use crate::proxy::{ErrorStats, PauseStats, Status, SwitchReport};
use crate::state::Backend;

/// How often a wait reads the leases again.
const POLL: Duration = Duration::from_millis(5);

/// The fleet as one proxy: the same requests as the admin API, made to every proxy at once.
#[derive(Clone)]
pub struct FleetClient {
    url: ConnString,
    ack_timeout: Duration,
    client: Arc<tokio::sync::Mutex<Option<Arc<Client>>>>,
    /// The proxies the current pause waits for.
    members: Arc<Mutex<BTreeSet<String>>>,
}

/// What had not answered when a wait ended.
struct Late {
    fleet: Option<Fleet>,
    behind: Vec<Lease>,
    /// The control database itself could not be read.
    error: Option<AdminError>,
}

/// The fleet row and every lease, read together.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fleet {
    pub row: FleetRow,
    pub proxies: Vec<Lease>,
}

impl Fleet {
    pub fn live(&self) -> impl Iterator<Item = &Lease> {
        self.proxies.iter().filter(|l| l.live())
    }

    /// The fleet as one proxy's status: the row's backend and epoch; paused and drained
    /// only if every live proxy is, at the row's generation; every session of every proxy.
    pub fn status(&self) -> Status {
        let live: Vec<&Lease> = self.live().collect();
        let at = |l: &Lease| l.generation >= self.row.generation;
        let all = |f: &dyn Fn(&Status) -> bool| {
            live.iter()
                .all(|l| at(l) && l.status.as_ref().is_some_and(f))
        };
        let mut pause = PauseStats::default();
        let mut errors = ErrorStats::default();
        let mut sessions = vec![];
        for l in &live {
            let Some(s) = &l.status else { continue };
            pause.pauses = pause.pauses.max(s.pause.pauses);
            pause.holds += s.pause.holds;
            pause.longest_hold_ms = pause.longest_hold_ms.max(s.pause.longest_hold_ms);
            pause.last_pause_longest_hold_ms = pause
                .last_pause_longest_hold_ms
                .max(s.pause.last_pause_longest_hold_ms);
            pause.last_pause_ms = match (pause.last_pause_ms, s.pause.last_pause_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            errors.server_errors += s.errors.server_errors;
            errors.server_logins_failed += s.errors.server_logins_failed;
            sessions.extend(s.sessions.iter().cloned());
        }
        Status {
            active: self.row.active,
            epoch: self.row.epoch,
            paused: self.row.paused && all(&|s| s.paused),
            drained: self.row.paused && all(&|s| s.drained),
            sessions,
            pause,
            errors,
            reach: None,
        }
    }

    /// Refused, naming each one, unless every live proxy reached `to` a moment ago.
    pub fn reaches(&self, to: Backend) -> Result<(), AdminError> {
        let mut cut_off = vec![];
        for l in self.live() {
            let why = match &l.status {
                Some(s) => {
                    let mut s = s.clone();
                    // The lease itself has an age: the check is that much older.
                    if let Some(r) = s.reach.as_mut() {
                        r.age_ms += (l.age_s * 1000.0) as u64;
                    }
                    s.reaches(to).err()
                }
                None => Some("has reported no status".into()),
            };
            if let Some(why) = why {
                cut_off.push(format!("{} {why}", l.describe()));
            }
        }
        if cut_off.is_empty() {
            Ok(())
        } else {
            Err(crate::admin::AdminError::cut_off(to, &cut_off))
        }
    }
}

impl FleetClient {
    pub fn new(url: ConnString, ack_timeout: Duration) -> FleetClient {
        FleetClient {
            url,
            ack_timeout,
            client: Arc::default(),
            members: Arc::default(),
        }
    }

    /// Where the fleet is coordinated, for messages.
    pub fn location(&self) -> String {
        self.url.location()
    }

    fn unreachable(&self, message: String) -> AdminError {
        AdminError::Control {
            location: self.url.location(),
            message,
        }
    }

    async fn client(&self) -> Result<Arc<Client>, AdminError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            cutover_pg::connect(&self.url, Side::Target)
                .await
                .map_err(|e| self.unreachable(e.to_string()))?,
        );
        if !exists(&c).await.map_err(|e| self.unreachable(e))? {
            return Err(refused(format!(
                "no cutover proxy has joined the control database {} yet (it has no cutover.proxy_fleet); start `cutover proxy`",
                self.url.location()
            )));
        }
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The fleet row and every lease.
    pub async fn fleet(&self) -> Result<Fleet, AdminError> {
        let c = self.client().await?;
        let row = read_row(&c).await.map_err(|e| self.unreachable(e))?;
        let proxies = read_leases(&c).await.map_err(|e| self.unreachable(e))?;
        Ok(Fleet { row, proxies })
    }

    /// The fleet as one proxy; refused when no proxy is running.
    pub async fn status(&self) -> Result<Status, AdminError> {
        let fleet = self.fleet().await?;
        if fleet.live().next().is_none() {
            return Err(refused(format!(
                "no cutover proxy is running: no lease in the control database {} was renewed in the last {}s; start `cutover proxy`",
                self.url.location(),
                super::LEASE_TTL.as_secs()
            )));
        }
        Ok(fleet.status())
    }

    /// One change of the fleet row, announced; returns the row after it (None when `set`
    /// matched nothing: the change was made already).
    async fn change(&self, set: &str) -> Result<Option<FleetRow>, AdminError> {
        let c = self.client().await?;
        let sql = format!(
            "WITH changed AS (
                UPDATE cutover.proxy_fleet SET {set}, generation = generation + 1, changed_at = now()
                 WHERE id = 1 RETURNING generation)
             SELECT pg_notify('{CHANNEL}', generation::text) FROM changed"
        );
        let n = c
            .query(&sql, &[])
            .await
            .map_err(|e| self.unreachable(pg(e)))?
            .len();
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(read_row(&c).await.map_err(|e| self.unreachable(e))?))
    }

    /// Waits until `done` holds for every proxy that must answer, at `generation` or later;
    /// returns the fleet then, or what was late after `timeout`.
    async fn wait(
        &self,
        generation: i64,
        timeout: Duration,
        done: impl Fn(&Status) -> bool,
    ) -> Result<Fleet, Late> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let fleet = match self.fleet().await {
                Ok(f) => f,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(Late {
                        fleet: None,
                        behind: vec![],
                        error: Some(e),
                    })
                }
                Err(_) => {
                    // The control connection was lost (a fence ends every session it does
                    // not know): read again on a new one.
                    *self.client.lock().await = None;
                    tokio::time::sleep(POLL * 10).await;
                    continue;
                }
            };
            let members = {
                let mut m = self.members.lock().unwrap();
                // Joined since: they answer too. Left (lease deleted): not waited for.
                m.extend(fleet.live().map(|l| l.id.clone()));
                m.retain(|id| fleet.proxies.iter().any(|l| &l.id == id));
                m.clone()
            };
            let behind: Vec<Lease> = fleet
                .proxies
                .iter()
                .filter(|l| members.contains(&l.id))
                .filter(|l| l.generation < generation || !l.status.as_ref().is_some_and(&done))
                .cloned()
                .collect();
            if behind.is_empty() {
                return Ok(fleet);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Late {
                    fleet: Some(fleet),
                    behind,
                    error: None,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn start_round(&self, fleet: &Fleet) {
        let mut m = self.members.lock().unwrap();
        *m = fleet.live().map(|l| l.id.clone()).collect();
    }

    /// Every proxy holds new transactions; refused (the caller resumes) if one does not say so
    /// within `proxy.ack_timeout`.
    pub async fn pause(&self) -> Result<Status, AdminError> {
        let before = self.fleet().await?;
        self.start_round(&before);
        let row = self
            .change("paused = true")
            .await?
            .ok_or_else(|| refused("the fleet row is gone".into()))?;
        match self
            .wait(row.generation, self.ack_timeout, |s| s.paused)
            .await
        {
            Ok(f) => Ok(f.status()),
            Err(Late { error: Some(e), .. }) => Err(e),
            Err(Late { behind, .. }) => Err(refused(format!(
                "{} did not acknowledge the pause within {}s: {}",
                plural(behind.len()),
                self.ack_timeout.as_secs_f64(),
                silent(&behind)
            ))),
        }
    }

    /// Waits until every proxy is paused and drained; refused with the blocking sessions of
    /// each proxy otherwise.
    pub async fn drain(&self, timeout: Duration) -> Result<Status, AdminError> {
        let row = self.fleet().await?.row;
        match self.wait(row.generation, timeout, |s| s.drained).await {
            Ok(f) => Ok(f.status()),
            Err(Late { error: Some(e), .. }) => Err(e),
            Err(Late { behind, .. }) => {
                let why: Vec<String> = behind
                    .iter()
                    .map(|l| match &l.status {
                        Some(s) if l.live() && l.generation >= row.generation => {
                            format!("{}: {}", l.describe(), s.blockers().join("; "))
                        }
                        _ => format!("{}: no answer ({})", l.describe(), age(l)),
                    })
                    .collect();
                Err(refused(format!(
                    "the proxies are not drained: {}",
                    why.join("; ")
                )))
            }
        }
    }

    /// Sessions log in to `to` ahead of the pause (best effort: a session without that login
    /// makes it when it moves).
    pub async fn prepare(&self, to: Backend) -> Result<Status, AdminError> {
        let Some(row) = self.change(&format!("prepare = '{to}'")).await? else {
            return self.status().await;
        };
        let prepared = |s: &Status| {
            s.sessions
                .iter()
                .all(|v| v.standby || v.backend == Some(to))
        };
        match self
            .wait(row.generation, Duration::from_secs(5), prepared)
            .await
        {
            Ok(f) | Err(Late { fleet: Some(f), .. }) => Ok(f.status()),
            Err(_) => self.status().await,
        }
    }

    /// The point of no return: the fleet row names `to` with the next epoch and ends the
    /// pause in the same update, once every live proxy has shown that it reaches `to` (a
    /// proxy cut off from it makes the switch stop before, undone). Then waits (`proxy.ack_timeout`) for every proxy to move its
    /// sessions; one that does not is listed in `failed`, and follows when it can.
    pub async fn switch_and_resume(&self, to: Backend) -> Result<SwitchReport, AdminError> {
        let fleet = self.fleet().await?;
        if fleet.row.active != to {
            fleet.reaches(to)?;
        }
        let c = self.client().await?;
        let sql = format!(
            "WITH changed AS (
                UPDATE cutover.proxy_fleet
                   SET active = $1, epoch = epoch + 1, paused = false, prepare = NULL,
                       generation = generation + 1, changed_at = now()
                 WHERE id = 1 AND active <> $1 RETURNING epoch, generation)
             SELECT epoch, generation, pg_notify('{CHANNEL}', generation::text) FROM changed"
        );
        let rows = c
            .query(&sql, &[&to.as_str()])
            .await
            .map_err(|e| self.unreachable(pg(e)))?;
        let Some(r) = rows.first() else {
            let s = self.fleet().await?.row;
            return Ok(SwitchReport {
                active: s.active,
                epoch: s.epoch,
                moved: 0,
                failed: vec![],
                already: true,
            });
        };
        let epoch = r.get::<_, i64>(0) as u64;
        let generation: i64 = r.get(1);
        let moved = |s: &Status| s.epoch >= epoch && s.sessions.iter().all(|v| v.epoch >= epoch);
        let (fleet, behind) = match self.wait(generation, self.ack_timeout, moved).await {
            Ok(f) => (Some(f), vec![]),
            Err(late) => (late.fleet, late.behind),
        };
        let sessions: usize = fleet
            .iter()
            .flat_map(|f| f.live())
            .filter_map(|l| l.status.as_ref())
            .map(|s| s.sessions.iter().filter(|v| v.epoch >= epoch).count())
            .sum();
        Ok(SwitchReport {
            active: to,
            epoch,
            moved: sessions,
            failed: behind
                .iter()
                .map(|l| {
                    format!(
                        "{} (not yet on the {to}; it follows when it can)",
                        l.describe()
                    )
                })
                .collect(),
            already: false,
        })
    }

    /// New transactions go on, on the backend the fleet row names. Done once the row says so:
    /// a proxy that does not answer now resumes when it reads it.
    pub async fn resume(&self) -> Result<Status, AdminError> {
        match self.change("paused = false, prepare = NULL").await? {
            Some(row) => match self
                .wait(row.generation, self.ack_timeout, |s| !s.paused)
                .await
            {
                Ok(f) | Err(Late { fleet: Some(f), .. }) => Ok(f.status()),
                Err(_) => Ok(self.fleet().await?.status()),
            },
            None => self.status().await,
        }
    }

    /// [`FleetClient::resume`] from synchronous code (a guard's `Drop`).
    pub fn resume_blocking(&self) -> Result<(), AdminError> {
        let me = self.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| AdminError::Protocol(e.to_string()))?;
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), me.resume())
                    .await
                    .map_err(|_| me.unreachable("timed out".into()))?
                    .map(|_| ())
            })
        })
        .join()
        .unwrap_or_else(|_| Err(AdminError::Protocol("the resume panicked".into())))
    }
}

fn refused(message: String) -> AdminError {
    AdminError::Refused {
        status: 409,
        message,
    }
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 proxy".into()
    } else {
        format!("{n} proxies")
    }
}

fn age(l: &Lease) -> String {
    format!("last heartbeat {:.1}s ago", l.age_s)
}

fn silent(behind: &[Lease]) -> String {
    behind
        .iter()
        .map(|l| format!("{} ({})", l.describe(), age(l)))
        .collect::<Vec<_>>()
        .join("; ")
}
