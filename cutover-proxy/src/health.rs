//! `/live`, `/ready` and `/metrics`, on `proxy.health_listen`, for a load balancer's health
//! checks and for Prometheus. No token: nothing here changes anything, and nothing here says
//! more than the metrics do.
//!
//! - `/live`: 200 while the process serves at all.
//! - `/ready`: 200 while the proxy takes new sessions; 503 from the moment it starts to drain
//!   (SIGTERM), so the load balancer sends new connections elsewhere first.
//! - `/metrics`: see [`crate::metrics`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::proxy::Shared;

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: tokio_util::sync::CancellationToken,
) {
    let app = Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!("health listener: {e}");
    }
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.prometheus(),
    )
}
