//! The admin API: HTTP/JSON on a loopback address, every request carrying the plan's token
//! as `Authorization: Bearer ...`.
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
    let app = Router::new()
        .route("/status", get(status))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/drain", post(drain))
        .route("/switch", post(switch))
        .route("/prepare", post(prepare))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!("admin API: {e}");
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

/// The client side of the admin API.
#[derive(Clone)]
pub struct AdminClient {
    pub addr: SocketAddr,
    token: Secret,
}

impl AdminClient {
    pub fn new(addr: SocketAddr, token: Secret) -> AdminClient {
        AdminClient { addr, token }
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
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
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
