//! The splitter's admin API (loopback only): `GET /metrics` (Prometheus text), `GET /status`
//! (JSON: weight, origins, cumulative metrics) and `PUT /weight` (bearer token) that the
//! canary and `cutover traffic promote|abort` use.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::{Json, Router};
use cutover_core::Secret;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Shared, Status};

#[derive(Serialize, Deserialize)]
pub struct WeightBody {
    /// Percent of new users sent to the new origin.
    pub new_percent: u8,
}

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/weight", put(weight))
        .with_state(shared);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
}

async fn metrics(State(shared): State<Arc<Shared>>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        shared.prometheus(),
    )
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Status> {
    Json(shared.status())
}

async fn weight(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<WeightBody>,
) -> Result<Json<Status>, (StatusCode, String)> {
    let expected = format!("Bearer {}", shared.admin_token.expose());
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token; use traffic.admin_token".into(),
        ));
    }
    if body.new_percent > 100 {
        return Err((StatusCode::BAD_REQUEST, "new_percent is 0 to 100".into()));
    }
    shared
        .set_new_percent(body.new_percent)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(shared.status()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Talks to a running splitter's admin API.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: Secret,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl AdminClient {
    pub fn new(addr: std::net::SocketAddr, token: Secret) -> AdminClient {
        AdminClient {
            base: format!("http://{addr}"),
            token,
        }
    }

    fn unreachable(&self, e: String) -> String {
        format!(
            "cannot reach the splitter's admin API at {} ({e}); start it with `cutover traffic serve`",
            self.base
        )
    }

    pub async fn status(&self) -> Result<Status, String> {
        let (code, body) = crate::http::request(
            hyper::Method::GET,
            &format!("{}/status", self.base),
            &[],
            None,
            TIMEOUT,
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        if !code.is_success() {
            return Err(format!("the splitter answered {code} to /status"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("the splitter's /status: {e}"))
    }

    pub async fn set_new_percent(&self, p: u8) -> Result<Status, String> {
        let body = serde_json::to_vec(&WeightBody { new_percent: p }).unwrap_or_default();
        let (code, body) = crate::http::request(
            hyper::Method::PUT,
            &format!("{}/weight", self.base),
            &[
                ("authorization", format!("Bearer {}", self.token.expose())),
                ("content-type", "application/json".into()),
            ],
            Some(body),
            TIMEOUT,
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        if !code.is_success() {
            return Err(format!(
                "the splitter refused the weight ({code}): {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("the splitter's /weight: {e}"))
    }
}
