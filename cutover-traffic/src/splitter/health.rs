//! Active health checks: GET `health_path` on each origin at every interval, with the
//! origin's Host header; 2xx and 3xx pass. `unhealthy_after` failures in a row mark it down,
//! `healthy_after` passes mark it up again.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header;
use tokio_util::sync::CancellationToken;

use super::{Shared, Side};

pub(super) async fn check_loop(
    shared: Arc<Shared>,
    side: Side,
    path: String,
    interval: Duration,
    healthy_after: u32,
    unhealthy_after: u32,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = check(&shared, side, &path, interval.max(Duration::from_secs(1))).await;
        let origin = shared.origin(side);
        if let Some(up) = origin.checked(result, healthy_after, unhealthy_after) {
            if up {
                tracing::info!(
                    origin = side.as_str(),
                    "origin passes its health checks: up"
                );
            } else {
                tracing::warn!(
                    origin = side.as_str(),
                    "origin fails its health checks, marked down: {}",
                    origin.last_error().unwrap_or_default()
                );
            }
        }
    }
}

/// One check: Ok, or why it failed.
async fn check(shared: &Shared, side: Side, path: &str, timeout: Duration) -> Result<(), String> {
    let origin = shared.origin(side);
    let host = origin
        .host
        .clone()
        .unwrap_or_else(|| origin.target.authority());
    let work = async {
        let mut sender = origin.target.handshake().await.map_err(|e| e.to_string())?;
        let req = hyper::Request::get(path)
            .header(header::HOST, host)
            .header(header::USER_AGENT, "cutover-health-check")
            .header(header::CONNECTION, "close")
            .body(crate::http::empty())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("health check GET {path}: {e}"))?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!(
                "health check GET {path} answered {status}; it passes with 2xx or 3xx (traffic.health_path)"
            ))
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        format!(
            "health check GET {path} had no answer within {}s",
            timeout.as_secs()
        )
    })?
}
