//! The admin API: HTTP/JSON, every request carrying the plan's token as `Authorization:
//! Bearer ...`; on a loopback address, or beyond it only over TLS (the proxy's certificate).
//!
//! | request | does |
//! |---|---|
//! | `GET /status` | sessions, active backend, epoch, paused, drained, pause figures |
//! | `POST /pause` | holds new transactions; running ones go on |
//! | `POST /drain` `{"timeout_ms": N}` | waits until paused and drained; 409 with the blockers if not in time |
//! | `POST /prepare` `{"to": "target"}` | sessions log in to that backend ahead of a switch |
//! | `POST /switch` `{"to": "target", "resume": false}` | writes the new backend to disk, then moves every session (and with `resume`, ends the pause in the same step); 409 unless paused and drained |
//! | `POST /resume` | lets held sessions go on |
//!
//! [`AdminClient`] is the other end, used by `db switchover` and `db rollback`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use cutover_core::Secret;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::proxy::{GateError, Shared, Status, SwitchReport};
use crate::state::Backend;

/// How long a switch waits for every session to move.
const MOVE_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: tokio_util::sync::CancellationToken,
) {
    let tls = match listener.local_addr() {
        Ok(a) if !a.ip().is_loopback() => shared.config.tls.clone(),
        _ => None,
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/drain", post(drain))
        .route("/switch", post(switch))
        .route("/prepare", post(prepare))
        .with_state(shared);
    let served = match tls {
        Some(config) => {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            axum::serve(TlsListener::new(listener, Arc::new(config)), app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    };
    if let Err(e) = served {
        tracing::error!("admin API: {e}");
    }
}

/// How long a client of the admin API may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and hands on those whose TLS handshake succeeded; each handshake
/// runs on its own, so a slow or silent client holds up no other.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    done_tx: tokio::sync::mpsc::Sender<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    done_rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
}

impl TlsListener {
    fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> TlsListener {
        let (done_tx, done_rx) = tokio::sync::mpsc::channel(16);
        TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            done_tx,
            done_rx,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                Some(done) = self.done_rx.recv() => return done,
                r = self.tcp.accept() => match r {
                    Ok((tcp, peer)) => {
                        let acceptor = self.acceptor.clone();
                        let done = self.done_tx.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => {
                                    let _ = done.send((tls, peer)).await;
                                }
                                Ok(Err(e)) => tracing::debug!("admin API: TLS handshake with {peer}: {e}"),
                                Err(_) => tracing::debug!("admin API: TLS handshake with {peer} timed out"),
                            }
                        });
                    }
                    // Out of file descriptors and the like: wait, then go on.
                    Err(e) => {
                        tracing::warn!("admin API: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let want = shared.config.admin_token.expose();
    let same = given.len() == want.len()
        && given
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "missing or wrong admin token; send Authorization: Bearer <proxy.admin_token>"})),
            )
                .into_response(),
        ))
    }
}

/// A request that changes the gate: authorized, and only for a proxy without a fleet (a
/// fleet's proxies follow their control database, which a switch changes for all at once).
fn may_change(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    authorized(shared, headers)?;
    if shared.in_fleet() {
        return Err(Box::new(
            (
                StatusCode::CONFLICT,
                Json(json!({"error": "this proxy follows its fleet's control database (proxy.control_url); switch with `cutover db switchover`, which moves every proxy or none"})),
            )
                .into_response(),
        ));
    }
    Ok(())
}

async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&shared, &headers) {
        return *r;
    }
    Json(shared.status()).into_response()
}

async fn pause(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = may_change(&shared, &headers) {
        return *r;
    }
    shared.pause();
    tracing::info!("paused");
    Json(shared.status()).into_response()
}

async fn resume(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = may_change(&shared, &headers) {
        return *r;
    }
    shared.resume();
    tracing::info!("resumed");
    Json(shared.status()).into_response()
}

#[derive(Deserialize, Serialize)]
struct DrainRequest {
    timeout_ms: u64,
}

async fn drain(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(req): Json<DrainRequest>,
) -> Response {
    if let Err(r) = authorized(&shared, &headers) {
        return *r;
    }
    let status = shared
        .wait_drained(Duration::from_millis(req.timeout_ms))
        .await;
    if status.drained {
        Json(status).into_response()
    } else {
        let why = if status.paused {
            status.blockers().join("; ")
        } else {
            "the proxy is not paused".to_string()
        };
        (
            StatusCode::CONFLICT,
            Json(json!({"error": format!("not drained: {why}"), "status": status})),
        )
            .into_response()
    }
}

async fn prepare(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(req): Json<SwitchRequest>,
) -> Response {
    if let Err(r) = may_change(&shared, &headers) {
        return *r;
    }
    shared.prepare(req.to);
    Json(shared.wait_prepared(req.to, Duration::from_secs(5)).await).into_response()
}

#[derive(Deserialize, Serialize)]
struct SwitchRequest {
    to: Backend,
    /// End the pause in the same step (see [`Shared::switch`]).
    #[serde(default)]
    resume: bool,
}

async fn switch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(req): Json<SwitchRequest>,
) -> Response {
    if let Err(r) = may_change(&shared, &headers) {
        return *r;
    }
    match shared.switch(req.to, MOVE_TIMEOUT, req.resume).await {
        Ok(report) => {
            tracing::info!("switched to the {} (epoch {})", report.active, report.epoch);
            Json(report).into_response()
        }
        Err(GateError::Refused(m)) => {
            (StatusCode::CONFLICT, Json(json!({"error": m}))).into_response()
        }
        Err(GateError::Durable(m)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": m}))).into_response()
        }
    }
}

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the cutover proxy's admin API at {addr}: {message}; start it with `cutover proxy` or fix proxy.admin_listen")]
    Unreachable { addr: SocketAddr, message: String },
    /// The proxy answered with an error; the message is its own.
    #[error("the cutover proxy refused: {message}")]
    Refused { status: u16, message: String },
    #[error("the cutover proxy's answer is not understood: {0}")]
    Protocol(String),
    /// The proxies' control database could not be read or written.
    #[error("the proxies' control database {location}: {message}; check proxy.control_url (by default the target's URL)")]
    Control { location: String, message: String },
}

impl AdminError {
    /// The switch's refusal when some proxies do not reach `to`: each one named, with why.
    pub fn cut_off(to: crate::Backend, cut_off: &[String]) -> AdminError {
        AdminError::Refused {
            status: 409,
            message: format!(
                "not every proxy reaches the {to}, so the switch stops before its point of no return: {}",
                cut_off.join("; ")
            ),
        }
    }
}

/// The client side of the admin API.
#[derive(Clone)]
pub struct AdminClient {
    pub addr: SocketAddr,
    token: Secret,
    /// Beyond loopback the admin API speaks TLS, its certificate checked.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl AdminClient {
    /// A client of the admin API at `addr`: plain on loopback, TLS beyond it, checked
    /// against `ca` (PEM) or the system's trusted roots; the error is one line.
    pub fn for_address(
        addr: SocketAddr,
        token: Secret,
        ca: Option<&std::path::Path>,
    ) -> Result<AdminClient, String> {
        let tls = if addr.ip().is_loopback() {
            None
        } else {
            let config = crate::tls::admin_client_config(ca)?;
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        };
        Ok(AdminClient { addr, token, tls })
    }

    /// A client of an admin API on loopback.
    pub fn new(addr: SocketAddr, token: Secret) -> AdminClient {
        AdminClient {
            addr,
            token,
            tls: None,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        let unreachable = |message: String| AdminError::Unreachable {
            addr: self.addr,
            message,
        };
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let io: crate::server::BoxStream = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
                let tls =
                    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
                        .await
                        .map_err(|_| unreachable("the TLS handshake timed out".into()))?
                        .map_err(|e| unreachable(format!("TLS: {e}")))?;
                Box::new(tls)
            }
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {}", self.token.expose()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let code = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| AdminError::Protocol(format!("{e} (HTTP {code})")))?;
        if code >= 300 {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_string();
            return Err(AdminError::Refused {
                status: code,
                message,
            });
        }
        Ok(value)
    }

    fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, AdminError> {
        serde_json::from_value(v).map_err(|e| AdminError::Protocol(e.to_string()))
    }

    pub async fn status(&self) -> Result<Status, AdminError> {
        Self::parse(self.call("GET", "/status", None).await?)
    }
    pub async fn pause(&self) -> Result<Status, AdminError> {
        Self::parse(self.call("POST", "/pause", None).await?)
    }
    pub async fn resume(&self) -> Result<Status, AdminError> {
        Self::parse(self.call("POST", "/resume", None).await?)
    }
    /// Waits (in the proxy) until paused and drained; a refusal lists the blocking sessions.
    pub async fn drain(&self, timeout: Duration) -> Result<Status, AdminError> {
        let body = json!({"timeout_ms": timeout.as_millis() as u64});
        Self::parse(self.call("POST", "/drain", Some(body)).await?)
    }
    /// Sessions log in to `to` ahead of the pause; a resume cancels it.
    pub async fn prepare(&self, to: Backend) -> Result<Status, AdminError> {
        Self::parse(
            self.call("POST", "/prepare", Some(json!({"to": to})))
                .await?,
        )
    }
    pub async fn switch(&self, to: Backend) -> Result<SwitchReport, AdminError> {
        Self::parse(
            self.call("POST", "/switch", Some(json!({"to": to})))
                .await?,
        )
    }

    /// Switches and ends the pause in one step: the held requests go on at once, on `to`.
    pub async fn switch_and_resume(&self, to: Backend) -> Result<SwitchReport, AdminError> {
        Self::parse(
            self.call("POST", "/switch", Some(json!({"to": to, "resume": true})))
                .await?,
        )
    }

    /// Resumes from synchronous code (a `Drop`): its own thread and runtime, bounded wait.
    pub fn resume_blocking(&self) -> Result<(), AdminError> {
        let me = self.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| AdminError::Protocol(e.to_string()))?;
            rt.block_on(async { me.resume().await.map(|_| ()) })
        });
        handle
            .join()
            .unwrap_or_else(|_| Err(AdminError::Protocol("resume thread panicked".into())))
    }
}
