//! The proxies of a plan as a switch drives them: a fleet through its control database (the
//! default), or a single proxy through its admin API (`proxy.control_url = "none"`). Both
//! answer the same requests, so the switch is written once.

use std::time::Duration;

use cutover_core::Plan;

use crate::admin::{AdminClient, AdminError};
use crate::control::fleet::FleetClient;
use crate::proxy::{Status, SwitchReport};
use crate::state::Backend;

#[derive(Clone)]
pub enum Proxies {
    One(AdminClient),
    Fleet(FleetClient),
}

impl Proxies {
    /// The proxies of the plan; an error line when it has no `[proxy]` section.
    pub fn from_plan(plan: &Plan) -> Result<Proxies, String> {
        let p = plan.proxy()?;
        Ok(match plan.proxy_control() {
            Some(url) => Proxies::Fleet(FleetClient::new(url, p.ack_timeout)),
            None => Proxies::One(AdminClient::for_address(
                p.admin_listen,
                p.admin_token.clone(),
                p.admin_ca.as_deref(),
            )?),
        })
    }

    /// Where they are reached, for messages.
    pub fn describe(&self) -> String {
        match self {
            Proxies::One(a) => format!("the proxy's admin API at {}", a.addr),
            Proxies::Fleet(f) => format!("the proxies' control database {}", f.location()),
        }
    }

    pub async fn status(&self) -> Result<Status, AdminError> {
        match self {
            Proxies::One(a) => a.status().await,
            Proxies::Fleet(f) => f.status().await,
        }
    }

    pub async fn pause(&self) -> Result<Status, AdminError> {
        match self {
            Proxies::One(a) => a.pause().await,
            Proxies::Fleet(f) => f.pause().await,
        }
    }

    pub async fn resume(&self) -> Result<Status, AdminError> {
        match self {
            Proxies::One(a) => a.resume().await,
            Proxies::Fleet(f) => f.resume().await,
        }
    }

    pub async fn drain(&self, timeout: Duration) -> Result<Status, AdminError> {
        match self {
            Proxies::One(a) => a.drain(timeout).await,
            Proxies::Fleet(f) => f.drain(timeout).await,
        }
    }

    pub async fn prepare(&self, to: Backend) -> Result<Status, AdminError> {
        match self {
            Proxies::One(a) => a.prepare(to).await,
            Proxies::Fleet(f) => f.prepare(to).await,
        }
    }

    pub async fn switch_and_resume(&self, to: Backend) -> Result<SwitchReport, AdminError> {
        match self {
            Proxies::One(a) => {
                let s = a.status().await?;
                if s.active != to {
                    s.reaches(to).map_err(|why| {
                        crate::admin::AdminError::cut_off(to, &[format!("the proxy {why}")])
                    })?;
                }
                a.switch_and_resume(to).await
            }
            Proxies::Fleet(f) => f.switch_and_resume(to).await,
        }
    }

    pub fn resume_blocking(&self) -> Result<(), AdminError> {
        match self {
            Proxies::One(a) => a.resume_blocking(),
            Proxies::Fleet(f) => f.resume_blocking(),
        }
    }
}
