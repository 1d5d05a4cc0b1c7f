//! The weighted HTTP splitter: `cutover traffic serve`.
//!
//! A reverse proxy with two origins, old and new. Each request is routed by [`route::choose`]
//! (weight, sticky cookie, health); the weight is moved by the admin API (the canary) and kept
//! in a file beside the plan, so a restarted splitter goes on with the weight it had.
//!
//! - Retries: a request is sent again, to the other origin when it is up, only after a
//!   connection failure, and only when that is safe: the request was provably never sent
//!   (the connection could not be made, or the request was not written whole), or it is
//!   idempotent with no body.
//! - Client connections that wait for their next request, or take to send one, longer
//!   than `idle_timeout` are closed.
//! - Draining: requests in flight are never cut. When an origin's weight drops to 0 its idle
//!   connections are closed; those in use finish, and `/status` shows the origin as
//!   draining until none is left. At shutdown the splitter stops accepting and waits up to
//!   `drain_timeout` for requests in flight.
//! - Two paths: plain HTTP/1.1 requests take the direct one (`direct`), which rewrites
//!   heads in place and copies bodies as they come; a connection's first request it does not
//!   take (an upgrade, `Expect`, a chunked or large upload, HTTP/1.0) hands the connection
//!   to hyper (`forward`) for the rest of its life. The rules above and below hold on
//!   both.
//! - Upgrades (WebSocket) get a connection of their own and are copied both ways; response
//!   bodies are streamed, never buffered; request bodies are buffered only on the direct
//!   path, up to 64 KiB.
//! - Connections to the origins are kept alive: one goes back to its origin's idle list
//!   as soon as the origin's response has arrived whole (hyper stops polling a body whose
//!   length is reached, so "whole" is the body's own end-of-stream, not a last poll), once
//!   hyper says it can take the next request.
//! - Threads: client connections are dealt to worker threads, one per CPU, each with an
//!   event loop of its own and its own idle connections to the origins. A request and its
//!   response are moved by the one thread its client connection lives on, and the origin
//!   connection is driven by the request that uses it (`upstream`), not by a task of its
//!   own: no request is handed from task to task or from thread to thread.
//! - An origin that cannot be reached is marked down at once with the reason, shown in
//!   `/status` as `last_error` until it is up again; health checks bring it back.

pub mod admin;
mod direct;
mod forward;
mod h1;
mod health;
pub mod metrics;
pub mod route;
pub mod state;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_core::{Plan, Secret};
use hyper::header::HeaderValue;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::Target;
use metrics::{OriginMetrics, Snapshot};
pub use route::Side;
use upstream::Upstream;

/// One origin as configured.
#[derive(Clone, Debug)]
pub struct OriginConfig {
    /// "http(s)://host:port".
    pub url: String,
    /// Host header to send. Default: the client's.
    pub host: Option<String>,
    /// TLS server name. Default: the URL's host.
    pub sni: Option<String>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token: Secret,
    pub old: OriginConfig,
    pub new: OriginConfig,
    pub sticky_cookie: String,
    pub health_path: String,
    pub health_interval: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    pub drain_timeout: Duration,
    /// How long a client connection may wait for, or take to send, its next request.
    pub idle_timeout: Duration,
    pub retries: u32,
    /// Where the weight is kept; None keeps it in memory only.
    pub state_path: Option<PathBuf>,
}

impl Config {
    /// The plan's `[traffic]` section.
    pub fn from_plan(plan: &Plan) -> Result<Config, String> {
        let t = plan.traffic()?;
        let origin = |o: &cutover_core::plan::OriginSettings| OriginConfig {
            url: o.url.clone(),
            host: o.host.clone(),
            sni: o.sni.clone(),
            ca_file: o.ca_file.clone(),
        };
        Ok(Config {
            listen: t.listen,
            admin_listen: t.admin_listen,
            admin_token: t.admin_token.clone(),
            old: origin(&t.old),
            new: origin(&t.new),
            sticky_cookie: t.sticky_cookie.clone(),
            health_path: t.health_path.clone(),
            health_interval: t.health_interval,
            unhealthy_after: t.unhealthy_after,
            healthy_after: t.healthy_after,
            drain_timeout: t.drain_timeout,
            idle_timeout: t.idle_timeout,
            retries: t.retries,
            state_path: Some(plan.traffic_state_path()),
        })
    }
}

/// An origin while the splitter runs.
pub struct Origin {
    pub side: Side,
    pub url: String,
    pub target: Target,
    pub host: Option<String>,
    up: AtomicBool,
    in_flight: AtomicU64,
    /// Idle connections of the general path and of the direct one.
    idle: Idle<Upstream>,
    raw: Idle<direct::Raw>,
    pub metrics: OriginMetrics,
    /// Health check streaks: passed, failed.
    streak: Mutex<(u32, u32)>,
    /// The last failure to reach it (a request's connection or a health check); cleared by
    /// a passing check once it is up.
    last_error: Mutex<Option<String>>,
    /// The sticky cookie that keeps a user on this side, ready to send.
    set_cookie: Option<HeaderValue>,
    /// `host` as a header; and the URL's authority, the Host when the client sent none.
    host_header: Option<HeaderValue>,
    authority_header: Option<HeaderValue>,
}

impl Origin {
    fn new(
        side: Side,
        c: &OriginConfig,
        sticky_cookie: &str,
        workers: usize,
    ) -> Result<Origin, String> {
        let target = Target::new(&c.url, c.sni.as_deref(), c.ca_file.as_deref())
            .map_err(|e| format!("traffic.{}: {e}", side.as_str()))?;
        let host_header = match &c.host {
            Some(h) => Some(HeaderValue::from_str(h).map_err(|_| {
                format!(
                    "traffic.{}.host: \"{h}\" is not a valid Host header",
                    side.as_str()
                )
            })?),
            None => None,
        };
        Ok(Origin {
            side,
            url: c.url.clone(),
            authority_header: HeaderValue::from_str(&target.authority()).ok(),
            host_header,
            target,
            host: c.host.clone(),
            up: AtomicBool::new(true),
            in_flight: AtomicU64::new(0),
            idle: Idle::new(workers),
            raw: Idle::new(workers),
            metrics: OriginMetrics::default(),
            streak: Mutex::new((0, 0)),
            last_error: Mutex::new(None),
            set_cookie: HeaderValue::from_str(&format!(
                "{sticky_cookie}={}; Path=/; HttpOnly; SameSite=Lax",
                side.as_str()
            ))
            .ok(),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request failed to reach this origin: down at once; health checks bring it back.
    fn mark_failed(&self, reason: &str) {
        let reason = self.explain(reason);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                origin = self.side.as_str(),
                "origin unreachable, marked down: {reason}"
            );
        }
        *lock(&self.last_error) = Some(reason);
        *lock(&self.streak) = (0, 0);
        self.close_idle();
    }

    /// The reason with what to check when it is the origin's TLS that failed.
    fn explain(&self, reason: &str) -> String {
        if self.target.https && reason.contains("TLS: ") {
            let side = self.side.as_str();
            format!("{reason} (check traffic.{side}.ca_file and traffic.{side}.sni)")
        } else {
            reason.to_string()
        }
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// A health check's result; returns the new state when it changed.
    fn checked(
        &self,
        result: Result<(), String>,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<bool> {
        let mut s = lock(&self.streak);
        match &result {
            Ok(()) => *s = (s.0.saturating_add(1), 0),
            Err(e) => {
                *s = (0, s.1.saturating_add(1));
                *lock(&self.last_error) = Some(self.explain(e));
            }
        }
        let up = self.is_up();
        if !up && s.0 >= healthy_after {
            self.up.store(true, Ordering::Relaxed);
            *lock(&self.last_error) = None;
            return Some(true);
        }
        if up && result.is_ok() {
            *lock(&self.last_error) = None;
        }
        if up && s.1 >= unhealthy_after {
            self.up.store(false, Ordering::Relaxed);
            self.close_idle();
            return Some(false);
        }
        None
    }

    /// Closes the idle connections (those in use finish their request).
    fn close_idle(&self) {
        self.idle.clear();
        self.raw.clear();
    }
}

/// Idle connections to one origin, one list per worker thread: a connection is registered
/// with the event loop of the thread that opened it, and only that thread's requests take
/// it.
struct Idle<T> {
    lists: Box<[Mutex<Vec<T>>]>,
}

/// Idle connections kept per origin and worker.
const MAX_IDLE: usize = 256;

impl<T> Idle<T> {
    fn new(workers: usize) -> Idle<T> {
        Idle {
            lists: (0..workers).map(|_| Mutex::new(vec![])).collect(),
        }
    }

    /// A kept connection that `open` finds still open: the last one put back, whose origin
    /// is the least likely to have closed it meanwhile.
    fn take(&self, worker: usize, mut open: impl FnMut(&mut T) -> bool) -> Option<T> {
        let mut idle = lock(&self.lists[worker]);
        while let Some(mut c) = idle.pop() {
            if open(&mut c) {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, worker: usize, c: T) {
        let mut idle = lock(&self.lists[worker]);
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    fn clear(&self) {
        for idle in self.lists.iter() {
            lock(idle).clear();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a request (or upgraded connection) in flight at an origin until dropped.
pub(crate) struct InFlight(Arc<Shared>, Side);

impl InFlight {
    fn new(shared: &Arc<Shared>, side: Side) -> InFlight {
        shared
            .origin(side)
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight(shared.clone(), side)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .origin(self.1)
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// State every connection and the admin API share.
pub struct Shared {
    origins: [Origin; 2],
    weight: watch::Sender<u8>,
    sticky_cookie: String,
    retries: u32,
    idle_timeout: Duration,
    admin_token: Secret,
    state_path: Option<PathBuf>,
    tasks: TaskTracker,
}

/// One origin in `/status`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct OriginStatus {
    pub side: Side,
    pub url: String,
    pub up: bool,
    /// Share of new users, percent.
    pub weight: u8,
    pub in_flight: u64,
    /// Weight 0 and requests still in flight.
    pub draining: bool,
    /// Why it is down or failing health checks: the last failure to reach it (a request's
    /// connection or a health check), one line; None once a check passes and it is up.
    #[serde(default)]
    pub last_error: Option<String>,
    pub metrics: Snapshot,
}

/// `GET /status`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Status {
    /// Percent of new users sent to the new origin.
    pub new_percent: u8,
    pub origins: Vec<OriginStatus>,
}

impl Shared {
    pub fn origin(&self, side: Side) -> &Origin {
        &self.origins[side.index()]
    }

    pub fn new_percent(&self) -> u8 {
        *self.weight.borrow()
    }

    /// After a failed attempt at `side`, the same on both paths: an origin that could not
    /// be reached (`not_sent`) is marked down; then, when the request may go again
    /// (`again`) and retries are left, the retry is counted and the side to try next is
    /// returned (the other one when it is up); else the failure is counted and logged.
    fn retry_after(
        &self,
        side: Side,
        not_sent: bool,
        again: bool,
        reason: &str,
        attempts: &mut u32,
        started: std::time::Instant,
    ) -> Option<Side> {
        let origin = self.origin(side);
        if not_sent {
            origin.mark_failed(reason);
        }
        *attempts += 1;
        if !again || *attempts > self.retries {
            origin.metrics.record(None, started.elapsed());
            tracing::warn!(origin = side.as_str(), "request failed: {reason}");
            return None;
        }
        origin.metrics.retried();
        Some(if self.origin(side.other()).is_up() {
            side.other()
        } else {
            side
        })
    }

    /// Hands a connection whose response has arrived whole back to `side`'s idle list for
    /// the next request: now when hyper is ready for one, else once it is (it may still be
    /// sending a request body the origin answered early; no request waits for that). Not
    /// while the side is draining: then the connection closes.
    fn release(self: &Arc<Shared>, side: Side, worker: usize, mut up: Upstream) {
        if side.share(self.new_percent()) == 0 {
            return;
        }
        up.settle();
        if up.sender.is_ready() {
            if !up.is_closed() {
                self.origin(side).idle.put(worker, up);
            }
            return;
        }
        let shared = self.clone();
        self.tasks.spawn(async move {
            if up.ready().await.is_ok() && side.share(shared.new_percent()) > 0 && !up.is_closed() {
                shared.origin(side).idle.put(worker, up);
            }
        });
    }

    /// Moves the weight, keeps it on disk first, and closes idle connections of an origin
    /// that no longer gets new users.
    pub fn set_new_percent(&self, p: u8) -> Result<(), String> {
        let p = p.min(100);
        if let Some(path) = &self.state_path {
            state::save(path, p)?;
        }
        self.weight.send_replace(p);
        for side in Side::BOTH {
            if side.share(p) == 0 {
                self.origin(side).close_idle();
            }
        }
        tracing::info!(new_percent = p, "weight changed");
        Ok(())
    }

    pub fn status(&self) -> Status {
        let p = self.new_percent();
        Status {
            new_percent: p,
            origins: Side::BOTH
                .iter()
                .map(|s| {
                    let o = self.origin(*s);
                    OriginStatus {
                        side: *s,
                        url: o.url.clone(),
                        up: o.is_up(),
                        weight: s.share(p),
                        in_flight: o.in_flight(),
                        draining: s.share(p) == 0 && o.in_flight() > 0,
                        last_error: o.last_error(),
                        metrics: o.metrics.snapshot(),
                    }
                })
                .collect(),
        }
    }

    pub fn prometheus(&self) -> String {
        let p = self.new_percent();
        let rows: Vec<_> = Side::BOTH
            .iter()
            .map(|s| {
                let o = self.origin(*s);
                (
                    metrics::Gauges {
                        origin: s.as_str(),
                        up: o.is_up(),
                        weight: s.share(p),
                        in_flight: o.in_flight(),
                    },
                    o.metrics.snapshot(),
                )
            })
            .collect();
        metrics::render(&rows)
    }
}

/// A running splitter.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: CancellationToken,
    /// Ends the worker threads, with whatever they still run.
    kill: CancellationToken,
    drain_timeout: Duration,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (up to `drain_timeout`), and returns
    /// how many were still running when it gave up.
    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        self.shared.tasks.close();
        let _ = tokio::time::timeout(self.drain_timeout, self.shared.tasks.wait()).await;
        Side::BOTH
            .iter()
            .map(|s| self.shared.origin(*s).in_flight())
            .sum()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        self.kill.cancel();
    }
}

/// Worker threads: one per CPU, or TOKIO_WORKER_THREADS as for tokio's own runtime.
fn worker_count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// Binds both listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, String> {
    let weight = match &config.state_path {
        Some(path) => state::load(path)?.unwrap_or(0),
        None => 0,
    };
    let workers = worker_count();
    let shared = Arc::new(Shared {
        origins: [
            Origin::new(Side::Old, &config.old, &config.sticky_cookie, workers)?,
            Origin::new(Side::New, &config.new, &config.sticky_cookie, workers)?,
        ],
        weight: watch::Sender::new(weight),
        sticky_cookie: config.sticky_cookie.clone(),
        retries: config.retries,
        idle_timeout: config.idle_timeout,
        admin_token: config.admin_token.clone(),
        state_path: config.state_path.clone(),
        tasks: TaskTracker::new(),
    });
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        format!(
            "cannot listen on {} ({e}); set traffic.listen to a free address",
            config.listen
        )
    })?;
    let admin_listener = TcpListener::bind(config.admin_listen).await.map_err(|e| {
        format!(
            "cannot listen on {} ({e}); set traffic.admin_listen to a free address",
            config.admin_listen
        )
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let kill = CancellationToken::new();
    let queues = forward::start_workers(workers, &shared, &stop, &kill)?;
    let tasks = shared.tasks.clone();
    tasks.spawn(forward::accept(listener, queues, stop.clone()));
    tasks.spawn(admin::serve(admin_listener, shared.clone(), stop.clone()));
    for side in Side::BOTH {
        tasks.spawn(health::check_loop(
            shared.clone(),
            side,
            config.health_path.clone(),
            config.health_interval,
            config.healthy_after,
            config.unhealthy_after,
            stop.clone(),
        ));
    }
    Ok(Running {
        addr,
        admin_addr,
        shared,
        stop,
        kill,
        drain_timeout: config.drain_timeout,
    })
}
