//! The proxy as a whole: the listener, the registry of sessions, and the gate that pauses,
//! switches and resumes them.
//!
//! The gate is one value every session watches: `paused`, the `active` backend and an
//! `epoch` that every switch bumps. A paused gate holds a session at its next transaction
//! boundary (idle, nothing in flight); running transactions go on. A session whose epoch
//! is behind moves itself to the active backend the moment it is idle, before it forwards
//! anything else. Switching is only allowed while paused and drained, so every session is
//! idle when it moves and nothing in flight is ever cut.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_core::plan::ProxyUser;
use cutover_core::{ConnString, Plan, Secret};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::state::{self, Backend, Durable};

/// Everything the proxy needs to run.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token: Secret,
    pub users: Vec<ProxyUser>,
    pub source: ConnString,
    pub target: ConnString,
    /// Offered to clients that ask for TLS; without it they are told the proxy has none.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where the active backend is kept.
    pub state_path: PathBuf,
    /// Where `/live`, `/ready` and `/metrics` are served (no token: nothing there changes
    /// anything); None serves none.
    pub health_listen: Option<SocketAddr>,
    /// The control database this proxy follows with the rest of its fleet (see
    /// [`crate::control`]); None for a single proxy switched through its admin API.
    pub control: Option<ConnString>,
}

impl Config {
    /// The proxy of a plan. Fails with one line when the plan has no `[proxy]` section or its
    /// certificate cannot be read.
    pub fn from_plan(plan: &Plan) -> Result<Config, String> {
        let p = plan.proxy()?;
        let base = plan.path.parent().unwrap_or(std::path::Path::new("."));
        let tls = match (&p.tls_cert, &p.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(crate::tls::server_config(
                &base.join(cert),
                &base.join(key),
            )?)),
            _ => None,
        };
        Ok(Config {
            listen: p.listen,
            admin_listen: p.admin_listen,
            admin_token: p.admin_token.clone(),
            users: p.users.clone(),
            source: plan.source.url.clone(),
            target: plan.target.url.clone(),
            tls,
            state_path: plan.proxy_state_path(),
            health_listen: p.health_listen,
            control: plan.proxy_control(),
        })
    }

    pub fn backend(&self, b: Backend) -> &ConnString {
        match b {
            Backend::Source => &self.source,
            Backend::Target => &self.target,
        }
    }

    pub fn user(&self, name: &str) -> Option<&ProxyUser> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// What every session watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    pub paused: bool,
    pub active: Backend,
    pub epoch: u64,
    /// A switch to this backend is coming: sessions log in to it ahead of the pause, so
    /// the expensive part of a move (the login) is not paid while clients wait.
    pub prepare: Option<Backend>,
    /// The proxy is shutting down: every session ends at its next idle point (never inside
    /// a transaction), telling its client to connect again.
    pub closing: bool,
    /// The shutdown's drain time is over: sessions still there end now, wherever they are.
    pub cut: bool,
}

/// A session as the admin API shows it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SessionView {
    pub id: u64,
    pub user: String,
    pub client: String,
    pub backend: Option<Backend>,
    pub epoch: u64,
    /// The server process serving this session now.
    pub server_pid: i32,
    #[serde(skip)]
    pub server_key: i32,
    /// A transaction or a request is in flight.
    pub busy: bool,
    /// The transaction status of the last ReadyForQuery: I, T or E.
    pub tx: char,
    /// A request waits at the paused gate.
    pub held: bool,
    /// Checked while paused and idle: its state is known and can move.
    pub inspected: bool,
    /// Why this session cannot move (temporary tables, advisory locks, LISTEN, WITH HOLD
    /// cursors); it is let through the pause and must end before a switch.
    pub pinned: Option<String>,
    /// Named prepared statements.
    pub prepared: usize,
    /// Logged in to the backend a coming switch goes to (see [`Shared::prepare`]).
    #[serde(default)]
    pub standby: bool,
}

impl SessionView {
    fn drained(&self) -> bool {
        !self.busy && self.inspected && self.pinned.is_none()
    }
}

pub(crate) struct SessionCell {
    pub view: Mutex<SessionView>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct PauseStats {
    /// Pauses since the proxy started.
    pub pauses: u64,
    /// Requests that waited at the gate.
    pub holds: u64,
    /// The longest a request waited at the gate since the proxy started.
    pub longest_hold_ms: f64,
    /// The longest wait during the last pause.
    pub last_pause_longest_hold_ms: f64,
    /// How long the last pause lasted (from pause to resume).
    pub last_pause_ms: Option<f64>,
    #[serde(skip)]
    paused_at: Option<Instant>,
}

/// What went wrong on the server side since the proxy started: what a client sees as an
/// error the proxy could not hide. A migration's canary fails a step on a rise of it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ErrorStats {
    /// Sessions ended by their server connection (lost, refused, or an error the session
    /// could not go on after).
    pub server_errors: u64,
    /// Client logins the proxy could not complete on the server.
    pub server_logins_failed: u64,
}

impl ErrorStats {
    pub fn total(&self) -> u64 {
        self.server_errors + self.server_logins_failed
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Status {
    pub active: Backend,
    pub epoch: u64,
    pub paused: bool,
    /// Paused, and every session is idle, checked and free to move.
    pub drained: bool,
    pub sessions: Vec<SessionView>,
    pub pause: PauseStats,
    #[serde(default)]
    pub errors: ErrorStats,
    /// Whether this proxy reaches the backend a coming switch goes to (checked while a
    /// switch is prepared or paused).
    #[serde(default)]
    pub reach: Option<crate::reach::Reach>,
}

impl Status {
    /// Refused unless this proxy's last check reached `to` a moment ago.
    pub fn reaches(&self, to: Backend) -> Result<(), String> {
        crate::reach::verdict(self.reach.as_ref(), to)
    }

    /// Server pids of the proxy's sessions on `backend`.
    pub fn server_pids(&self, backend: Backend) -> Vec<i32> {
        self.sessions
            .iter()
            .filter(|s| s.backend == Some(backend) && s.server_pid != 0)
            .map(|s| s.server_pid)
            .collect()
    }

    /// One line per session that keeps the proxy from being drained.
    pub fn blockers(&self) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|s| !s.drained())
            .map(|s| {
                let why = match (&s.pinned, s.busy) {
                    (Some(p), _) => format!("holds {p} (it must end first)"),
                    (None, true) => format!("transaction in progress (status {})", s.tx),
                    (None, false) => "not yet checked".into(),
                };
                format!(
                    "session {} (user {}, from {}, server pid {}): {why}",
                    s.id, s.user, s.client, s.server_pid
                )
            })
            .collect()
    }
}

/// Why the gate refused.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Durable(String),
}

pub struct Shared {
    pub config: Config,
    gate: watch::Sender<Gate>,
    sessions: Mutex<HashMap<u64, Arc<SessionCell>>>,
    cancel_keys: Mutex<HashMap<(i32, i32), u64>>,
    next_id: AtomicU64,
    /// Woken whenever a session's view changes or a session ends.
    pub(crate) changed: Notify,
    pause: Mutex<PauseStats>,
    errors: Mutex<ErrorStats>,
    /// The last check of the path to the other backend.
    reach: Mutex<Option<crate::reach::Checked>>,
    switching: tokio::sync::Mutex<()>,
    /// SCRAM keys per user, derived once (4096 rounds of HMAC) and reused by every login.
    scram: Mutex<HashMap<String, crate::auth::ScramSecret>>,
    pub metrics: crate::metrics::Metrics,
    /// Takes new sessions (false while it drains, for `/ready`).
    ready: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(config: Config) -> Result<Arc<Shared>, String> {
        let durable = state::load(&config.state_path)?;
        let (gate, _) = watch::channel(Gate {
            paused: false,
            active: durable.active,
            epoch: durable.epoch,
            prepare: None,
            closing: false,
            cut: false,
        });
        Ok(Arc::new(Shared {
            config,
            gate,
            sessions: Mutex::new(HashMap::new()),
            cancel_keys: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            changed: Notify::new(),
            pause: Mutex::new(PauseStats::default()),
            errors: Mutex::new(ErrorStats::default()),
            reach: Mutex::new(None),
            switching: tokio::sync::Mutex::new(()),
            scram: Mutex::new(HashMap::new()),
            metrics: crate::metrics::Metrics::new(),
            ready: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    pub fn gate(&self) -> Gate {
        *self.gate.borrow()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Gate> {
        self.gate.subscribe()
    }

    pub(crate) fn register(&self, view: SessionView, cancel: (i32, i32)) -> Arc<SessionCell> {
        let id = view.id;
        let cell = Arc::new(SessionCell {
            view: Mutex::new(view),
        });
        self.sessions.lock().unwrap().insert(id, cell.clone());
        self.cancel_keys.lock().unwrap().insert(cancel, id);
        self.metrics.sessions.inc();
        self.metrics.sessions_opened.inc();
        self.changed.notify_waiters();
        cell
    }

    pub(crate) fn unregister(&self, id: u64, cancel: (i32, i32)) {
        if self.sessions.lock().unwrap().remove(&id).is_some() {
            self.metrics.sessions.dec();
        }
        self.cancel_keys.lock().unwrap().remove(&cancel);
        self.changed.notify_waiters();
    }

    pub(crate) fn scram_secret(&self, user: &str, password: &str) -> crate::auth::ScramSecret {
        self.scram
            .lock()
            .unwrap()
            .entry(user.to_string())
            .or_insert_with(|| crate::auth::ScramSecret::new(password))
            .clone()
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A session ended by its server side (`login`: the server login failed).
    pub(crate) fn record_server_error(&self, login: bool) {
        let mut e = self.errors.lock().unwrap();
        if login {
            e.server_logins_failed += 1;
            self.metrics.error(crate::metrics::ErrorKind::ServerLogin);
        } else {
            e.server_errors += 1;
            self.metrics.error(crate::metrics::ErrorKind::Server);
        }
    }

    pub(crate) fn record_hold(&self, waited: Duration) {
        let ms = waited.as_secs_f64() * 1000.0;
        self.metrics.hold_seconds.observe(waited.as_secs_f64());
        let mut p = self.pause.lock().unwrap();
        p.holds += 1;
        p.longest_hold_ms = p.longest_hold_ms.max(ms);
        p.last_pause_longest_hold_ms = p.last_pause_longest_hold_ms.max(ms);
    }

    /// Forwards a client's cancel request to the server its session is on now.
    pub(crate) async fn cancel(&self, pid: i32, key: i32) {
        let id = self.cancel_keys.lock().unwrap().get(&(pid, key)).copied();
        let Some(id) = id else { return };
        let cell = self.sessions.lock().unwrap().get(&id).cloned();
        let Some(cell) = cell else { return };
        let (backend, spid, skey) = {
            let v = cell.view.lock().unwrap();
            (v.backend, v.server_pid, v.server_key)
        };
        if let Some(b) = backend {
            if let Err(e) = crate::server::cancel(self.config.backend(b), spid, skey).await {
                tracing::warn!("cancel request for session {id}: {e}");
            }
        }
    }

    pub fn status(&self) -> Status {
        let gate = self.gate();
        let mut sessions: Vec<SessionView> = self
            .sessions
            .lock()
            .unwrap()
            .values()
            .map(|c| c.view.lock().unwrap().clone())
            .collect();
        sessions.sort_by_key(|s| s.id);
        let drained = gate.paused && sessions.iter().all(SessionView::drained);
        Status {
            active: gate.active,
            epoch: gate.epoch,
            paused: gate.paused,
            drained,
            sessions,
            pause: self.pause.lock().unwrap().clone(),
            errors: self.errors.lock().unwrap().clone(),
            reach: self
                .reach
                .lock()
                .unwrap()
                .as_ref()
                .map(crate::reach::Checked::report),
        }
    }

    /// Follows a fleet's control database: the gate is changed there, not here.
    pub fn in_fleet(&self) -> bool {
        self.config.control.is_some()
    }

    /// Whether the proxy takes new sessions.
    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The metrics as Prometheus reads them.
    pub fn prometheus(&self) -> String {
        let g = self.gate();
        self.metrics
            .render(g.active, g.epoch, g.paused, self.ready())
    }

    /// Client sessions now.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// Waits until no session is left, or `timeout`; returns how many are left.
    pub async fn wait_sessions_gone(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = self.session_count();
            if n == 0 || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.session_count();
            }
        }
    }

    /// Holds every session at its next transaction boundary.
    pub fn pause(&self) {
        let mut changed = false;
        self.gate.send_if_modified(|g| {
            changed = !g.paused;
            g.paused = true;
            changed
        });
        if changed {
            self.pause_started();
        }
    }

    fn pause_started(&self) {
        self.metrics.pauses.inc();
        let mut p = self.pause.lock().unwrap();
        p.pauses += 1;
        p.last_pause_longest_hold_ms = 0.0;
        p.paused_at = Some(Instant::now());
        p.last_pause_ms = None;
    }

    /// Brings the gate to what the fleet's control row says, in one change of it: a new
    /// backend (written to disk first, as a switch does), the pause, the backend to log in
    /// to ahead of a switch. Changes nothing when the gate is already there. Sessions behind
    /// the new epoch move at their next idle point before they forward anything; one inside a
    /// transaction on the old backend (a proxy that was cut off from its fleet during the
    /// switch) finishes it there, where the fence refuses its writes.
    pub(crate) fn follow(
        &self,
        to: Durable,
        paused: bool,
        prepare: Option<Backend>,
    ) -> Result<(), String> {
        let gate = self.gate();
        if to.epoch > gate.epoch {
            state::store(&self.config.state_path, &to)?;
        }
        let (mut started, mut ended) = (false, false);
        self.gate.send_if_modified(|g| {
            let mut next = *g;
            if to.epoch > g.epoch {
                next.active = to.active;
                next.epoch = to.epoch;
            }
            next.paused = paused;
            next.prepare = prepare.filter(|b| *b != next.active);
            started = next.paused && !g.paused;
            ended = !next.paused && g.paused;
            let changed = next != *g;
            *g = next;
            changed
        });
        if started {
            self.pause_started();
        }
        if ended {
            self.pause_ended();
        }
        Ok(())
    }

    /// Has every session log in to `to` ahead of a switch (nothing else changes).
    pub fn prepare(&self, to: Backend) {
        self.gate.send_if_modified(|g| {
            let changed = g.prepare != Some(to) && g.active != to;
            if changed {
                g.prepare = Some(to);
            }
            changed
        });
    }

    /// Waits until every session has its login to `to` (or `timeout`); best effort: a
    /// session without one logs in when it moves.
    pub async fn wait_prepared(&self, to: Backend, timeout: Duration) -> Status {
        self.wait_for(timeout, |status| {
            status
                .sessions
                .iter()
                .all(|s| s.standby || s.backend == Some(to))
        })
        .await
    }

    /// Waits until `done` holds for the status (re-checked whenever a session's view
    /// changes), or until `timeout`; returns the last status either way.
    async fn wait_for(&self, timeout: Duration, done: impl Fn(&Status) -> bool) -> Status {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let status = self.status();
            if done(&status) {
                return status;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.status();
            }
        }
    }

    /// Lets every held session go on.
    pub fn resume(&self) {
        let mut changed = false;
        self.gate.send_if_modified(|g| {
            changed = g.paused || g.prepare.is_some();
            g.paused = false;
            g.prepare = None;
            changed
        });
        if changed {
            self.pause_ended();
        }
    }

    fn pause_ended(&self) {
        let mut p = self.pause.lock().unwrap();
        if let Some(at) = p.paused_at.take() {
            let took = at.elapsed().as_secs_f64();
            self.metrics.pause_seconds.observe(took);
            p.last_pause_ms = Some(took * 1000.0);
        }
    }

    /// Waits until paused and drained, or until `timeout`; returns the last status.
    pub async fn wait_drained(&self, timeout: Duration) -> Status {
        self.wait_for(timeout, |status| status.drained || !status.paused)
            .await
    }

    /// Moves every session to `to`. Allowed only while paused and drained. The new backend
    /// is written to disk before any session moves: from here on a restarted proxy uses it.
    /// With `resume`, the same change of the gate also ends the pause: every session is idle,
    /// and an idle session whose epoch is behind moves before it forwards anything, so no
    /// request can reach the old backend, and the held requests go on without waiting for a
    /// second call. Returns once every session has moved (or failed to, and was closed).
    pub async fn switch(
        &self,
        to: Backend,
        timeout: Duration,
        resume: bool,
    ) -> Result<SwitchReport, GateError> {
        let _one = self.switching.lock().await;
        let gate = self.gate();
        if gate.active == to {
            return Ok(SwitchReport {
                active: to,
                epoch: gate.epoch,
                moved: 0,
                failed: vec![],
                already: true,
            });
        }
        let status = self.status();
        if !status.paused {
            return Err(GateError::Refused(
                "the proxy is not paused; pause it and wait for it to drain before a switch".into(),
            ));
        }
        if !status.drained {
            return Err(GateError::Refused(format!(
                "the proxy is not drained: {}",
                status.blockers().join("; ")
            )));
        }
        let next = Durable {
            active: to,
            epoch: gate.epoch + 1,
        };
        state::store(&self.config.state_path, &next).map_err(GateError::Durable)?;
        self.gate.send_modify(|g| {
            g.active = next.active;
            g.epoch = next.epoch;
            g.prepare = None;
            if resume {
                g.paused = false;
            }
        });
        if resume {
            self.pause_ended();
        }
        let status = self
            .wait_for(timeout, |status| {
                status.sessions.iter().all(|s| s.epoch == next.epoch)
            })
            .await;
        let failed: Vec<String> = status
            .sessions
            .iter()
            .filter(|s| s.epoch != next.epoch)
            .map(|s| format!("session {} (user {})", s.id, s.user))
            .collect();
        Ok(SwitchReport {
            active: to,
            epoch: next.epoch,
            moved: status.sessions.len() - failed.len(),
            failed,
            already: false,
        })
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SwitchReport {
    pub active: Backend,
    pub epoch: u64,
    /// Sessions now on the new backend.
    pub moved: usize,
    /// Sessions that had not moved when the wait ended; they move before their next request.
    pub failed: Vec<String>,
    /// The proxy was already on that backend; nothing was done.
    pub already: bool,
}

/// A running proxy, how it starts and how it stops.
mod lifecycle;
pub use lifecycle::{start, Running, Shutdown};

impl cutover_core::engine::Outcome for Status {
    fn summary(&self) -> String {
        format!("{} sessions idle", self.sessions.len())
    }
}

impl cutover_core::engine::Outcome for SwitchReport {
    fn summary(&self) -> String {
        if self.failed.is_empty() {
            format!("{} sessions moved to the {}", self.moved, self.active)
        } else {
            format!(
                "{} sessions moved to the {}; {} not yet: {}",
                self.moved,
                self.active,
                self.failed.len(),
                self.failed.join(", ")
            )
        }
    }
}
