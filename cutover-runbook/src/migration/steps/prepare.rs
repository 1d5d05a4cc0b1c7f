//! The prepare phase: check, lower the DNS TTL, sync, verify. Nothing a user sees changes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_core::{Mode, Plan};
use cutover_pg::{connect, Side};

use crate::migration::step::{Cx, Fut, Step};
use crate::migration::{MigrationError, Phase};

/// Both databases, the proxy and the splitter, every problem at once.
pub(crate) struct Check;

impl Step for Check {
    fn phase(&self) -> Phase {
        Phase::Prepare
    }
    fn name(&self) -> &'static str {
        "check"
    }
    fn does(&self, _plan: &Plan) -> String {
        "check both databases (versions, privileges, keys, extensions), the proxy and the splitter"
            .into()
    }
    fn changes(&self, _plan: &Plan) -> String {
        "nothing".into()
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let plan = cx.plan;
            let mut problems = vec![];
            // A sync made earlier (by `db sync`, or an earlier attempt) is ours: the target's
            // rows and the publication are no problem then.
            let resumed = sync_exists(plan).await?;
            if let Err(e) = cutover_pg::preflight_gate::gate(plan, resumed).await {
                problems.push(e.to_string());
            }
            let proxy = cx.proxy()?;
            let mut found = vec![];
            match proxy.status().await {
                Ok(s) => found.push(format!(
                    "the proxy is on the {} with {} sessions",
                    side_of(s.active),
                    s.sessions.len()
                )),
                Err(e) => problems.push(format!(
                    "the proxy does not answer ({e}); start it with `cutover proxy` next to the new database"
                )),
            }
            if let Some(splitter) = cx.splitter() {
                match splitter.status().await {
                    Ok(s) => found.push(format!(
                        "the splitter sends {}% of new users to the new app",
                        s.new_percent
                    )),
                    Err(e) => problems.push(format!(
                        "the splitter does not answer ({e}); start it with `cutover traffic serve` in front of the old app"
                    )),
                }
            }
            if let Some(dns) = &plan.dns {
                let answered = async {
                    let provider = cutover_traffic::dns::provider(dns)?;
                    provider.records(&dns.name, dns.record_type).await
                }
                .await;
                match answered {
                    Ok(sets) => {
                        found.push(format!("{} has {} record set(s)", dns.name, sets.len()))
                    }
                    Err(e) => problems.push(format!("the DNS provider: {e}")),
                }
            }
            if !problems.is_empty() {
                return Err(MigrationError::refused(problems.join("\n")));
            }
            Ok(format!(
                "both databases can be moved{}; {}",
                if resumed {
                    " (the sync is under way)"
                } else {
                    ""
                },
                found.join("; ")
            ))
        })
    }
}

pub(crate) fn side_of(b: cutover_proxy::Backend) -> Side {
    match b {
        cutover_proxy::Backend::Source => Side::Source,
        cutover_proxy::Backend::Target => Side::Target,
    }
}

/// True when a sync of this plan exists in either direction.
pub(crate) async fn sync_exists(plan: &Plan) -> Result<bool, MigrationError> {
    let source = connect(&plan.source.url, Side::Source).await?;
    let target = connect(&plan.target.url, Side::Target).await?;
    Ok(match plan.sync.mode {
        Mode::Native => {
            let s = &plan.sync;
            cutover_pg::replication::subscription_info(&target, Side::Target, &s.subscription())
                .await?
                .is_some()
                || cutover_pg::replication::subscription_info(
                    &source,
                    Side::Source,
                    &s.reverse_subscription(),
                )
                .await?
                .is_some()
        }
        Mode::Trigger => {
            let (f, r) = (
                cutover_pg::sync::forward_link(plan),
                cutover_pg::sync::reverse_link(plan),
            );
            cutover_pg::trigger::position(&target, Side::Target, &f.name)
                .await?
                .is_some()
                || cutover_pg::trigger::position(&source, Side::Source, &r.name)
                    .await?
                    .is_some()
        }
    })
}

/// The TTL lowered ahead of the move; the earliest safe change is recorded.
pub(crate) struct LowerTtl;

impl Step for LowerTtl {
    fn phase(&self) -> Phase {
        Phase::Prepare
    }
    fn name(&self) -> &'static str {
        "lower_ttl"
    }
    fn does(&self, plan: &Plan) -> String {
        match &plan.dns {
            Some(d) => format!(
                "lower the TTL of {} to {}s and record the earliest safe change",
                d.name,
                d.low_ttl.as_secs()
            ),
            None => String::new(),
        }
    }
    fn changes(&self, plan: &Plan) -> String {
        match &plan.dns {
            Some(d) => format!("the TTL of {} {} (its answers stay)", d.name, d.record_type),
            None => String::new(),
        }
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let settings = cx.plan.dns().map_err(MigrationError::Refused)?;
            let provider = cutover_traffic::dns::provider(settings)?;
            let lowered =
                cutover_traffic::dns::ops::lower_ttl(provider.as_ref(), settings, cx.steps).await?;
            for w in &lowered.warnings {
                cx.progress(format!("warning: {w}"));
            }
            Ok(format!(
                "TTL {}s (was {}s); the earliest safe DNS change is {}",
                settings.low_ttl.as_secs(),
                lowered.plan.old_ttl_s,
                lowered.earliest_safe
            ))
        })
    }
}

/// Schema, one consistent copy, and replication that follows every change.
pub(crate) struct Sync;

impl Step for Sync {
    fn phase(&self) -> Phase {
        Phase::Prepare
    }
    fn name(&self) -> &'static str {
        "sync"
    }
    fn does(&self, plan: &Plan) -> String {
        match plan.sync.mode {
            Mode::Native => "copy the schema and the data from one snapshot, then follow every change (logical replication)".into(),
            Mode::Trigger => "install the change capture, copy the schema and the data from one snapshot, then follow every change (trigger mode)".into(),
        }
    }
    fn changes(&self, plan: &Plan) -> String {
        match plan.sync.mode {
            Mode::Native => format!(
                "the target's tables; publication {} and slot {} on the source, subscription {} on the target",
                plan.sync.publication(),
                plan.sync.slot(),
                plan.sync.subscription()
            ),
            Mode::Trigger => "the target's tables; a cutover schema with a change log and row triggers on the source".into(),
        }
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let last = Mutex::new(Instant::now() - Duration::from_secs(10));
            let progress = |tables: &[cutover_pg::sync::TableProgress]| {
                let mut last = last.lock().unwrap();
                if last.elapsed() < Duration::from_secs(2) {
                    return;
                }
                *last = Instant::now();
                let (done, all): (i64, i64) = tables.iter().fold((0, 0), |(d, a), t| {
                    (d + t.bytes_done, a + t.bytes_estimate.max(t.bytes_done))
                });
                let ready = tables
                    .iter()
                    .filter(|t| matches!(t.state, "ready" | "synced" | "copied"))
                    .count();
                cx.progress(format!(
                    "copy: {ready} of {} tables, {} of {} MiB",
                    tables.len(),
                    done / (1024 * 1024),
                    all / (1024 * 1024)
                ));
            };
            let s = crate::sync::sync(cx.plan, cx.steps, &progress).await?;
            cx.follower.start();
            Ok(format!(
                "{} tables, ~{} rows, {} bytes{}; changes are followed",
                s.tables,
                s.rows_estimate,
                s.bytes,
                if s.resumed {
                    " (an earlier run had started it)"
                } else {
                    ""
                }
            ))
        })
    }
    fn took_effect<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, ()> {
        Box::pin(async move {
            if sync_exists(cx.plan).await? {
                Ok(())
            } else {
                Err(MigrationError::refused(
                    "the sync ended but nothing follows the source; run `cutover db status` to see why",
                ))
            }
        })
    }
}

/// Row counts and checksums, table by table.
pub(crate) struct Verify;

impl Step for Verify {
    fn phase(&self) -> Phase {
        Phase::Prepare
    }
    fn name(&self) -> &'static str {
        "verify"
    }
    fn does(&self, _plan: &Plan) -> String {
        "compare row counts and checksums of every table once replication has caught up".into()
    }
    fn changes(&self, _plan: &Plan) -> String {
        "nothing".into()
    }
    fn act<'a>(&'a self, cx: &'a Cx<'a>) -> Fut<'a, String> {
        Box::pin(async move {
            let report = crate::verify::verify(cx.plan, &[]).await?;
            let rows: i64 = report.tables.iter().map(|t| t.source_rows).sum();
            if report.equal {
                return Ok(format!(
                    "{} tables equal ({rows} rows)",
                    report.tables.len()
                ));
            }
            let differ: Vec<&str> = report
                .tables
                .iter()
                .filter(|t| !t.equal)
                .map(|t| t.table.as_str())
                .collect();
            Err(MigrationError::refused(format!(
                "{} of {} tables differ after the copy: {}; `cutover db verify` shows where, and nothing was moved",
                differ.len(),
                report.tables.len(),
                differ.join(", ")
            )))
        })
    }
}
