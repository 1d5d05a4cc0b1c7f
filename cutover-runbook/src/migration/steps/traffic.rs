//! The traffic phase: the canary (splitter weights or DNS weights, with the database among its
//! gates), then the DNS switch when the splitter did the canary.

use std::time::Duration;

use cutover_core::journal::now_ms;
use cutover_core::plan::WeightsVia;
use cutover_core::Plan;
use cutover_traffic::canary::{self, Canary, Phase as CanaryPhase};

use crate::canary::{Mover, MoverError};
use crate::migration::gates::DatabaseGates;
use crate::migration::step::{Cx, Fut, OnStop, Step};
use crate::migration::{MigrationError, Phase};

pub(crate) struct CanaryStep;

fn mover_error(e: MoverError) -> MigrationError {
    match e {
        MoverError::Plan(p) => MigrationError::Refused(p),
        MoverError::Dns(d) => MigrationError::Dns(d),
    }
}

/// Waits for the TTL planner's safe time before a DNS change; never guessed: without a
/// recorded plan the change itself refuses.
async fn wait_safe_time(cx: &Cx<'_>) -> Result<(), MigrationError> {
    let Some(ttl) = cutover_traffic::dns::ops::ttl_plan(cx.journal())? else {
        return Ok(());
    };
    let mut last = 0i64;
    loop {
        let left = ttl.earliest_safe_ms() - now_ms();
        if left <= 0 {
            return Ok(());
        }
        if last == 0 || last - left >= 30_000 {
            last = left;
            cx.progress(format!(
                "waiting until {} for caches of the old TTL to expire ({}s left)",
                ttl.earliest_safe(),
                left / 1000 + 1
            ));
        }
        tokio::time::sleep(Duration::from_millis(left.clamp(1, 1000) as u64)).await;
    }
}

impl Step for CanaryStep {
    fn phase(&self) -> Phase {
        Phase::Traffic
    }
    fn name(&self) -> &'static str {
        "canary"
    }
    fn does(&self, plan: &Plan) -> String {
        match &plan.traffic {
            Some(t) => format!(
                "move new users to the new app in steps {:?}%, {} each, rolling back by itself when a gate fails (the new app's success rate and p99, the replication that protects the rollback, the proxy's errors)",
                t.steps,
                humantime::format_duration(t.interval)
            ),
            None => String::new(),
        }
    }
    fn changes(&self, plan: &Plan) -> String {
        match plan.traffic.as_ref().map(|t| t.weights_via) {
            Some(WeightsVia::Dns) => "the DNS weights of the old and new answers".into(),
            _ => "the splitter's weight of the new app".into(),
        }
    }
    fn approval(&self, _plan: &Plan) -> Option<String> {
        Some("move users to the new app now, step by step?".into())
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let t = cx.plan.traffic().map_err(MigrationError::Refused)?;
            // Promoted by a run that stopped before it recorded the step: started again, the
            // canary would begin anew at its first step and send users back to the old app.
            // A rollback leaves it aborted, so a promotion here is this attempt's.
            if canary::state(cx.journal())?.is_some_and(|s| s.phase == CanaryPhase::Promoted) {
                return Ok(
                    "promoted: every new user goes to the new app (by an earlier run)".into(),
                );
            }
            if t.weights_via == WeightsVia::Dns {
                wait_safe_time(cx).await?;
            }
            let c = Canary::from_settings(t);
            let inner = crate::canary::gates(cx.plan).map_err(mover_error)?;
            let gates = DatabaseGates::new(inner, cx.plan, cx.proxy()?);
            let report = |line: &str| cx.progress(line.trim().to_string());
            let mover = Mover::of(cx.plan).map_err(mover_error)?;
            let weights = mover.weights(cx.plan, cx.steps, false);
            let out = canary::run(&c, weights.as_ref(), &gates, cx.steps, &report).await?;
            let reason = out.reason.clone().unwrap_or_default();
            match out.phase {
                CanaryPhase::Promoted => Ok("promoted: every new user goes to the new app".into()),
                CanaryPhase::Aborted if cx.stop_requested() => Err(MigrationError::Stopped(
                    "a rollback asked for it; the canary sent every user back to the old app"
                        .into(),
                )),
                CanaryPhase::RolledBack => Err(MigrationError::refused(format!(
                    "the canary rolled back to 0%: {reason}; users are on the old app. Fix the new app, then `cutover apply` runs the canary again (or `cutover rollback` moves the database back too)"
                ))),
                other => Err(MigrationError::refused(format!(
                    "the canary ended {} at {}%: {reason}; `cutover apply` runs it again",
                    other.as_str(),
                    out.new_percent
                ))),
            }
        })
    }
    fn took_effect<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, ()> {
        Box::pin(async move {
            if let (Some(s), Some(WeightsVia::Splitter)) = (
                cx.splitter(),
                cx.plan.traffic.as_ref().map(|t| t.weights_via),
            ) {
                let p = s
                    .status()
                    .await
                    .map_err(MigrationError::Refused)?
                    .new_percent;
                if p != 100 {
                    return Err(MigrationError::refused(format!(
                        "the canary was promoted but the splitter sends {p}% to the new app; `cutover traffic promote` sets it"
                    )));
                }
            }
            Ok(())
        })
    }
    fn undoes(&self, _plan: &Plan) -> Option<String> {
        Some("send every new user back to the old app (weight 0%)".into())
    }
    fn undo<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let mover = Mover::of(cx.plan).map_err(mover_error)?;
            let weights = mover.weights(cx.plan, cx.steps, false);
            let out = canary::abandon(
                cx.steps,
                weights.as_ref(),
                "rolled back by `cutover rollback`",
            )
            .await?;
            Ok(format!(
                "the new app gets {}% of new users",
                out.new_percent
            ))
        })
    }
    fn on_stop(&self) -> OnStop {
        OnStop::Own
    }
}

/// The DNS name switched to the new app in one change, after the splitter's canary.
pub(crate) struct DnsSwitch;

impl Step for DnsSwitch {
    fn phase(&self) -> Phase {
        Phase::Traffic
    }
    fn name(&self) -> &'static str {
        "dns"
    }
    fn does(&self, plan: &Plan) -> String {
        match &plan.dns {
            Some(d) => format!(
                "once the old TTL has expired everywhere, point {} at {}",
                d.name,
                d.new.join(", ")
            ),
            None => String::new(),
        }
    }
    fn changes(&self, plan: &Plan) -> String {
        match &plan.dns {
            Some(d) => format!("the {} records of {}", d.record_type, d.name),
            None => String::new(),
        }
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            wait_safe_time(cx).await?;
            let settings = cx.plan.dns().map_err(MigrationError::Refused)?;
            let provider = cutover_traffic::dns::provider(settings)?;
            cutover_traffic::dns::ops::set_split(provider.as_ref(), settings, 100, false, cx.steps)
                .await?;
            Ok(format!(
                "{} answers {}",
                settings.name,
                settings.new.join(", ")
            ))
        })
    }
    fn undoes(&self, plan: &Plan) -> Option<String> {
        plan.dns
            .as_ref()
            .map(|d| format!("point {} at {} again", d.name, d.old.join(", ")))
    }
    fn undo<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let settings = cx.plan.dns().map_err(MigrationError::Refused)?;
            let provider = cutover_traffic::dns::provider(settings)?;
            cutover_traffic::dns::ops::set_split(provider.as_ref(), settings, 0, true, cx.steps)
                .await?;
            Ok(format!(
                "{} answers {}",
                settings.name,
                settings.old.join(", ")
            ))
        })
    }
}
