//! The proxy's metrics, served at `/metrics` on `proxy.health_listen` in the OpenMetrics
//! text format (which Prometheus reads). One registry per proxy, no global recorder; every
//! name and its help is written here, once, and listed in the README:
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `cutover_proxy_sessions` | gauge | | client sessions now |
//! | `cutover_proxy_sessions_opened_total` | counter | | client sessions logged in |
//! | `cutover_proxy_transactions_total` | counter | | transactions ended (a ReadyForQuery back to idle) |
//! | `cutover_proxy_client_bytes_total` | counter | | bytes read from clients |
//! | `cutover_proxy_server_bytes_total` | counter | | bytes read from servers |
//! | `cutover_proxy_errors_total` | counter | `kind`: `server`, `server_login` | sessions that lost their server; logins the server refused |
//! | `cutover_proxy_pauses_total` | counter | | pauses (switches and their attempts) |
//! | `cutover_proxy_pause_seconds` | histogram | | how long each pause lasted |
//! | `cutover_proxy_hold_seconds` | histogram | | how long each held request waited |
//! | `cutover_proxy_backend` | gauge | `backend`: `source`, `target` | 1 for the backend sessions go to |
//! | `cutover_proxy_epoch` | gauge | | the switch count of the active backend |
//! | `cutover_proxy_paused` | gauge | | 1 while new transactions are held |
//! | `cutover_proxy_ready` | gauge | | 1 while the proxy takes new sessions (0 while it drains) |
//! | `cutover_proxy_control_up` | gauge | | 1 while the proxy reaches its fleet's control database |

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::state::Backend;

type Label = [(&'static str, &'static str); 1];

pub struct Metrics {
    registry: Registry,
    pub sessions: Gauge,
    pub sessions_opened: Counter,
    pub transactions: Counter,
    pub client_bytes: Counter,
    pub server_bytes: Counter,
    errors: Family<Label, Counter>,
    pub pauses: Counter,
    pub pause_seconds: Histogram,
    pub hold_seconds: Histogram,
    backend: Family<Label, Gauge>,
    epoch: Gauge,
    paused: Gauge,
    ready: Gauge,
    pub control_up: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// What went wrong on the server side.
#[derive(Clone, Copy, Debug)]
pub enum ErrorKind {
    /// A session ended by its server connection.
    Server,
    /// A client's login the server refused or could not complete.
    ServerLogin,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cutover_proxy");
        let m = Metrics {
            registry: Registry::default(),
            sessions: Gauge::default(),
            sessions_opened: Counter::default(),
            transactions: Counter::default(),
            client_bytes: Counter::default(),
            server_bytes: Counter::default(),
            errors: Family::default(),
            pauses: Counter::default(),
            // 1 ms to about 16 s.
            pause_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            hold_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            backend: Family::default(),
            epoch: Gauge::default(),
            paused: Gauge::default(),
            ready: Gauge::default(),
            control_up: Gauge::default(),
        };
        registry.register("sessions", "Client sessions now", m.sessions.clone());
        registry.register(
            "sessions_opened",
            "Client sessions logged in",
            m.sessions_opened.clone(),
        );
        registry.register(
            "transactions",
            "Transactions ended (a ReadyForQuery back to idle)",
            m.transactions.clone(),
        );
        registry.register(
            "client_bytes",
            "Bytes read from clients",
            m.client_bytes.clone(),
        );
        registry.register(
            "server_bytes",
            "Bytes read from servers",
            m.server_bytes.clone(),
        );
        registry.register(
            "errors",
            "Sessions that lost their server (kind=server) and logins the server refused (kind=server_login)",
            m.errors.clone(),
        );
        registry.register("pauses", "Pauses of new transactions", m.pauses.clone());
        registry.register(
            "pause_seconds",
            "How long each pause lasted",
            m.pause_seconds.clone(),
        );
        registry.register(
            "hold_seconds",
            "How long each held request waited at the pause",
            m.hold_seconds.clone(),
        );
        registry.register(
            "backend",
            "1 for the backend sessions go to",
            m.backend.clone(),
        );
        registry.register(
            "epoch",
            "Switches of the active backend so far",
            m.epoch.clone(),
        );
        registry.register(
            "paused",
            "1 while new transactions are held",
            m.paused.clone(),
        );
        registry.register(
            "ready",
            "1 while the proxy takes new sessions, 0 while it drains",
            m.ready.clone(),
        );
        registry.register(
            "control_up",
            "1 while the proxy reaches its fleet's control database (0 without one, or cut off)",
            m.control_up.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn error(&self, kind: ErrorKind) {
        let k = match kind {
            ErrorKind::Server => "server",
            ErrorKind::ServerLogin => "server_login",
        };
        self.errors.get_or_create(&[("kind", k)]).inc();
    }

    /// The text Prometheus reads, with the gate's state as it is now.
    pub fn render(&self, active: Backend, epoch: u64, paused: bool, ready: bool) -> String {
        for (b, name) in [(Backend::Source, "source"), (Backend::Target, "target")] {
            self.backend
                .get_or_create(&[("backend", name)])
                .set(i64::from(b == active));
        }
        self.epoch.set(epoch as i64);
        self.paused.set(i64::from(paused));
        self.ready.set(i64::from(ready));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
