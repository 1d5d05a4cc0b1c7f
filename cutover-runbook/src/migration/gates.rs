//! The canary's gates during a migration: the new app's numbers (the splitter's or
//! Prometheus'), and the database under it. A window fails when the replication that protects
//! the rollback fell behind, or when the proxy saw server errors: users would not see either
//! in the new app's success rate until it was too late to go back cheaply.

use std::sync::Mutex;

use cutover_core::Plan;
use cutover_traffic::canary::gates::{Gates, Measured};
use futures_util::future::BoxFuture;

pub(crate) struct DatabaseGates<'a> {
    pub inner: Box<dyn Gates + 'a>,
    pub plan: &'a Plan,
    pub proxy: cutover_proxy::Proxies,
    errors_at_begin: Mutex<Option<u64>>,
}

impl<'a> DatabaseGates<'a> {
    pub fn new(inner: Box<dyn Gates + 'a>, plan: &'a Plan, proxy: cutover_proxy::Proxies) -> Self {
        DatabaseGates {
            inner,
            plan,
            proxy,
            errors_at_begin: Mutex::new(None),
        }
    }
}

impl Gates for DatabaseGates<'_> {
    fn begin(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let errors = self
                .proxy
                .status()
                .await
                .map_err(|e| format!("the proxy: {e}"))?
                .errors
                .total();
            *self.errors_at_begin.lock().unwrap() = Some(errors);
            self.inner.begin().await
        })
    }

    fn measure(&self) -> BoxFuture<'_, Result<Measured, String>> {
        Box::pin(async move {
            let mut m = self.inner.measure().await?;
            let status = self
                .proxy
                .status()
                .await
                .map_err(|e| format!("the proxy: {e}"))?;
            let before = self.errors_at_begin.lock().unwrap().unwrap_or(0);
            let errors = status.errors.total().saturating_sub(before);
            if errors > 0 {
                m.failed = Some(format!(
                    "the proxy saw {errors} server error(s) in the window (sessions that lost their database)"
                ));
                return Ok(m);
            }
            let lag = super::lag::protecting(self.plan, status.active)
                .await
                .map_err(|e| format!("the replication's lag: {e}"))?;
            if let Some(why) = lag.too_far(self.plan) {
                m.failed = Some(why);
            }
            Ok(m)
        })
    }
}
