//! The done phase: the move is done when the traffic still reaching the old origin stays
//! under `migration.done_threshold` for `migration.done_window`, measured at the splitter
//! that stands in front of the old app (the old platform's web process), not by a timer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use cutover_core::journal::now_ms;
use cutover_core::Plan;

use crate::migration::step::{Cx, Fut, Step};
use crate::migration::{MigrationError, Phase};

pub(crate) struct Residual;

/// Requests the splitter has seen, both origins together.
pub(crate) async fn old_origin_requests(
    admin: &cutover_traffic::splitter::admin::AdminClient,
) -> Result<u64, MigrationError> {
    let s = admin.status().await.map_err(MigrationError::Refused)?;
    Ok(s.origins.iter().map(|o| o.metrics.requests).sum())
}

impl Step for Residual {
    fn phase(&self) -> Phase {
        Phase::Done
    }
    fn name(&self) -> &'static str {
        "residual"
    }
    fn does(&self, plan: &Plan) -> String {
        format!(
            "wait until the traffic still reaching the old origin stays under {} requests/s for {}",
            plan.migration.done_threshold,
            humantime::format_duration(plan.migration.done_window)
        )
    }
    fn changes(&self, _plan: &Plan) -> String {
        "nothing".into()
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let admin = cx
                .splitter()
                .ok_or_else(|| MigrationError::refused("the plan has no [traffic]"))?;
            let (window, threshold) = (
                cx.plan.migration.done_window,
                cx.plan.migration.done_threshold,
            );
            let tick = (window / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
            let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
            let mut last_report = Instant::now() - Duration::from_secs(60);
            loop {
                let now = Instant::now();
                samples.push_back((now, old_origin_requests(&admin).await?));
                // Keep one sample at or before the window's start.
                while samples.len() > 2 && now.duration_since(samples[1].0) >= window {
                    samples.pop_front();
                }
                let (t0, n0) = samples[0];
                let (_, n1) = *samples.back().expect("a sample was just pushed");
                let span = now.duration_since(t0);
                let rate = (n1 - n0) as f64 / span.as_secs_f64().max(0.001);
                if span >= window && rate < threshold {
                    let mut s = cx.state.lock().unwrap();
                    s.done_ms.get_or_insert(now_ms());
                    return Ok(format!(
                        "{rate:.2} requests/s reached the old origin over the last {} (under {threshold})",
                        humantime::format_duration(Duration::from_secs(span.as_secs()))
                    ));
                }
                if last_report.elapsed() >= Duration::from_secs(5).min(window) {
                    last_report = Instant::now();
                    cx.progress(format!(
                        "{rate:.2} requests/s at the old origin over the last {:.0}s (done under {threshold} for {})",
                        span.as_secs_f64(),
                        humantime::format_duration(window)
                    ));
                }
                tokio::time::sleep(tick).await;
            }
        })
    }
}
