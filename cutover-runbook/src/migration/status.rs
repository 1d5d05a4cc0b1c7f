//! `cutover status`: where the migration is, read from the journal, and what the parts it
//! moves say now: the proxy's backend, the lag of the replication that protects the move,
//! the traffic split and the new app's error rate, the traffic still reaching the old origin,
//! and the rollback window left.

use std::time::Duration;

use cutover_core::journal::now_ms;
use cutover_core::{Journal, Plan};
use serde::Serialize;

use super::finish::rfc3339;
use super::lag::{self, Lag};
use super::lock;
use super::runbook::Runbook;
use super::state::{MigrationState, RunState};
use super::steps::done::old_origin_requests;
use super::steps::prepare::side_of;
use super::{MigrationError, Phase};

#[derive(Clone, Debug, Serialize)]
pub struct ProxyView {
    pub active: String,
    pub epoch: u64,
    pub paused: bool,
    pub sessions: usize,
    pub server_errors: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrafficView {
    /// Percent of new users the splitter sends to the new app.
    pub new_percent: u8,
    pub canary: Option<String>,
    /// Percent of the new app's answers that were not 5xx or errors, since the splitter started.
    pub new_success_rate: Option<f64>,
    pub new_requests: u64,
    /// Requests per second still reaching the old origin (the splitter in front of it).
    pub old_origin_rps: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    pub attempt: u32,
    pub order: &'static str,
    pub state: RunState,
    /// The command driving it now, if any ("cutover apply (pid 123)").
    pub driven_by: Option<String>,
    pub phase: Option<Phase>,
    pub step: Option<String>,
    pub reason: Option<String>,
    pub steps_done: usize,
    pub steps_total: usize,
    pub proxy: Option<ProxyView>,
    pub lag: Option<Lag>,
    pub traffic: Option<TrafficView>,
    /// When the move was done (RFC 3339); the rollback window starts there.
    pub done_at: Option<String>,
    pub rollback_window_ends: Option<String>,
    pub rollback_window_left_s: Option<i64>,
    /// What could not be read, one line each.
    pub unavailable: Vec<String>,
}

/// The migration's status, or None when none has started.
pub async fn status(plan: &Plan, journal: &Journal) -> Result<Option<StatusView>, MigrationError> {
    let Some(s) = MigrationState::load(journal)? else {
        return Ok(None);
    };
    let runbook = Runbook::of(plan);
    let mut unavailable = vec![];
    let proxy = match cutover_proxy::Proxies::from_plan(plan).ok() {
        Some(admin) => match admin.status().await {
            Ok(st) => Some(ProxyView {
                active: side_of(st.active).to_string(),
                epoch: st.epoch,
                paused: st.paused,
                sessions: st.sessions.len(),
                server_errors: st.errors.total(),
            }),
            Err(e) => {
                unavailable.push(format!("proxy: {e}"));
                None
            }
        },
        None => None,
    };
    let lag = if s.state == RunState::Finished {
        None
    } else {
        let primary = match &proxy {
            Some(p) if p.active == "target" => cutover_proxy::Backend::Target,
            _ => cutover_proxy::Backend::Source,
        };
        match lag::protecting(plan, primary).await {
            Ok(l) => Some(l),
            Err(e) => {
                unavailable.push(format!("replication: {e}"));
                None
            }
        }
    };
    let traffic = match plan.traffic.as_ref() {
        Some(t) => {
            let admin = cutover_traffic::splitter::admin::AdminClient::new(
                t.admin_listen,
                t.admin_token.clone(),
            );
            let read = async {
                let before = old_origin_requests(&admin).await?;
                let started = std::time::Instant::now();
                tokio::time::sleep(Duration::from_secs(1)).await;
                let st = admin.status().await.map_err(MigrationError::Refused)?;
                let after: u64 = st.origins.iter().map(|o| o.metrics.requests).sum();
                let rps = (after - before.min(after)) as f64 / started.elapsed().as_secs_f64();
                let new = st
                    .origins
                    .iter()
                    .find(|o| o.side == cutover_traffic::splitter::Side::New);
                let (requests, rate) = match new {
                    Some(o) if o.metrics.requests > 0 => {
                        let bad = o.metrics.classes[4] + o.metrics.classes[5];
                        (
                            o.metrics.requests,
                            Some(
                                100.0 * (o.metrics.requests - bad) as f64
                                    / o.metrics.requests as f64,
                            ),
                        )
                    }
                    Some(o) => (o.metrics.requests, None),
                    None => (0, None),
                };
                Ok::<_, MigrationError>(TrafficView {
                    new_percent: st.new_percent,
                    canary: cutover_traffic::canary::state(journal)?.map(|c| c.summary()),
                    new_success_rate: rate,
                    new_requests: requests,
                    old_origin_rps: rps,
                })
            };
            match read.await {
                Ok(v) => Some(v),
                Err(e) => {
                    unavailable.push(format!("splitter: {e}"));
                    None
                }
            }
        }
        None => None,
    };
    let ends = s
        .done_ms
        .map(|d| d + plan.migration.hold.as_millis() as i64);
    Ok(Some(StatusView {
        attempt: s.attempt,
        order: s.order.as_str(),
        state: s.state,
        driven_by: lock::Lock::held(&plan.path).then(|| lock::holder(&plan.path)),
        phase: s.phase,
        step: s.step.clone(),
        reason: s.reason.clone(),
        steps_done: s.done.len(),
        steps_total: runbook.steps.len(),
        proxy,
        lag,
        traffic,
        done_at: s.done_ms.map(rfc3339),
        rollback_window_ends: ends.map(rfc3339),
        rollback_window_left_s: ends
            .filter(|_| s.state != RunState::Finished)
            .map(|e| ((e - now_ms()) / 1000).max(0)),
        unavailable,
    }))
}
