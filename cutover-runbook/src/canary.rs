//! Driving the canary: what moves the weight (the splitter's admin API, or the DNS provider's
//! weighted records) and where its gates read (the splitter's own metrics, or Prometheus), as
//! the plan says. `cutover traffic canary` runs it alone; a migration's traffic phase runs it
//! with the database among its gates.

use cutover_core::engine::Steps;
use cutover_core::plan::{GateSource, WeightsVia};
use cutover_core::Plan;
use cutover_traffic::canary::gates::{Gates, PrometheusGates, SplitterGates};
use cutover_traffic::canary::{DnsWeights, Weights};
use cutover_traffic::dns::{DnsError, DnsProvider};
use cutover_traffic::splitter::admin::AdminClient;

/// What moves the weight, made once per run.
pub struct Mover {
    splitter: Option<AdminClient>,
    dns: Option<Box<dyn DnsProvider>>,
}

#[derive(Debug, thiserror::Error)]
pub enum MoverError {
    /// The plan lacks a section (the message says which and how to add it).
    #[error("{0}")]
    Plan(String),
    #[error(transparent)]
    Dns(#[from] DnsError),
}

impl Mover {
    pub fn of(plan: &Plan) -> Result<Mover, MoverError> {
        let t = plan.traffic().map_err(MoverError::Plan)?;
        Ok(match t.weights_via {
            WeightsVia::Splitter => Mover {
                splitter: Some(AdminClient::new(t.admin_listen, t.admin_token.clone())),
                dns: None,
            },
            WeightsVia::Dns => Mover {
                splitter: None,
                dns: Some(cutover_traffic::dns::provider(
                    plan.dns().map_err(MoverError::Plan)?,
                )?),
            },
        })
    }

    /// The weights, for one run of the canary. With DNS weights each change is a journaled
    /// step of `steps`, refused before the TTL planner's safe time unless `force`.
    pub fn weights<'a>(
        &'a self,
        plan: &'a Plan,
        steps: &'a Steps<'a>,
        force: bool,
    ) -> Box<dyn Weights + 'a> {
        match (&self.splitter, &self.dns, &plan.dns) {
            (Some(s), _, _) => Box::new(s.clone()),
            (None, Some(provider), Some(settings)) => Box::new(DnsWeights {
                provider: provider.as_ref(),
                settings,
                steps,
                force,
            }),
            _ => unreachable!("Mover::of made one of the two"),
        }
    }
}

/// Where the gates read, as the plan's `[traffic]` says.
pub fn gates(plan: &Plan) -> Result<Box<dyn Gates>, MoverError> {
    let t = plan.traffic().map_err(MoverError::Plan)?;
    Ok(match &t.metrics {
        GateSource::Splitter => Box::new(SplitterGates::new(AdminClient::new(
            t.admin_listen,
            t.admin_token.clone(),
        ))),
        GateSource::Prometheus {
            url,
            success_rate_query,
            p99_query,
            requests_query,
            auth,
        } => Box::new(PrometheusGates {
            url: url.clone(),
            success_rate_query: success_rate_query.clone(),
            p99_query: p99_query.clone(),
            requests_query: requests_query.clone(),
            auth: auth.clone(),
        }),
    })
}
