//! The proxy phase: every application session on the source comes through the proxy. It is
//! measured, not trusted: a session that reaches the source by another way would keep writing
//! to it after the switch, which the fence would then cut.

use std::time::{Duration, Instant};

use cutover_core::Plan;
use cutover_pg::{connect, fence, Side};
use cutover_proxy::Backend;

use crate::migration::step::{Cx, Fut, Step};
use crate::migration::{MigrationError, Phase};

pub(crate) struct Sessions;

impl Step for Sessions {
    fn phase(&self) -> Phase {
        Phase::Proxy
    }
    fn name(&self) -> &'static str {
        "sessions"
    }
    fn does(&self, plan: &Plan) -> String {
        format!(
            "wait up to {} until every application session on the source comes through the proxy (pg_stat_activity)",
            humantime::format_duration(plan.migration.proxy_wait)
        )
    }
    fn changes(&self, _plan: &Plan) -> String {
        "nothing".into()
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let proxy = cx.proxy()?;
            let source = connect(&cx.plan.source.url, Side::Source).await?;
            let started = Instant::now();
            let mut last_report: Option<Instant> = None;
            loop {
                let status = proxy.status().await?;
                if status.active != Backend::Source {
                    return Ok("the proxy is already on the target".into());
                }
                let pids = status.server_pids(Backend::Source);
                let others: Vec<fence::SessionInfo> =
                    fence::other_sessions(&source, Side::Source, &pids)
                        .await?
                        .into_iter()
                        .filter(|s| !fence::is_cutover_session(s))
                        .collect();
                if others.is_empty() {
                    return Ok(format!(
                        "all {} application session(s) on the source come through the proxy",
                        pids.len()
                    ));
                }
                let list = others
                    .iter()
                    .map(|s| s.describe())
                    .collect::<Vec<_>>()
                    .join("; ");
                if started.elapsed() >= cx.plan.migration.proxy_wait {
                    return Err(MigrationError::refused(format!(
                        "{} session(s) on the source do not come through the proxy: {list}; point every app's DATABASE_URL at the proxy (on Heroku: attach the database under another name, set DATABASE_URL to the proxy, and restart with preboot), then run `cutover apply` again",
                        others.len()
                    )));
                }
                if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_report = Some(Instant::now());
                    cx.progress(format!(
                        "{} session(s) still reach the source without the proxy: {list}",
                        others.len()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}
