//! The DNS operations of a move, built on [`DnsProvider`]: lower the TTL ahead of time, then
//! split or switch. Each is a journaled step (intent before, outcome after).

use cutover_core::engine::Steps;
use cutover_core::journal::now_ms;
use cutover_core::plan::DnsSettings;
use serde::Serialize;

use super::{query, DnsError, DnsProvider, RecordSet, NEW_SET, OLD_SET};
use crate::ttl::{self, TtlPlan};

/// What `dns lower-ttl` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Lowered {
    /// The sets as they were.
    pub before: Vec<RecordSet>,
    /// The sets as they are now.
    pub after: Vec<RecordSet>,
    pub plan: TtlPlan,
    /// RFC 3339, UTC.
    pub earliest_safe: String,
    pub warnings: Vec<String>,
    /// False when the TTL was already low and nothing was written.
    pub changed: bool,
}

/// The TTL plan the journal holds, if any.
pub fn ttl_plan(journal: &cutover_core::Journal) -> Result<Option<TtlPlan>, DnsError> {
    Ok(journal
        .fact(ttl::FACT)?
        .and_then(|text| serde_json::from_str(&text).ok()))
}

/// Journal fact: whether the name had weighted records before cutover first changed it.
const WEIGHTED_AT_START: &str = "dns.weighted_at_start";

/// Whether the name's records were weighted before cutover changed anything (the ones
/// `cutover app terraform` writes): read once, at the first change, and kept in the journal.
/// Records cutover made weighted for a canary go back to one plain record at 0% or 100%;
/// records that were weighted from the start stay the same two records.
async fn weighted_at_start(
    provider: &dyn DnsProvider,
    settings: &DnsSettings,
    journal: &cutover_core::Journal,
) -> Result<bool, DnsError> {
    if let Some(v) = journal.fact(WEIGHTED_AT_START)? {
        return Ok(v == "true");
    }
    let weighted = provider
        .records(&settings.name, settings.record_type)
        .await?
        .iter()
        .any(|s| s.weight.is_some());
    journal.set_fact(
        WEIGHTED_AT_START,
        Some(if weighted { "true" } else { "false" }),
    )?;
    Ok(weighted)
}

/// Lowers the TTL of the plan's name to `dns.low_ttl`, keeping its answers, and records when.
pub async fn lower_ttl(
    provider: &dyn DnsProvider,
    settings: &DnsSettings,
    steps: &Steps<'_>,
) -> Result<Lowered, DnsError> {
    let before = provider
        .records(&settings.name, settings.record_type)
        .await?;
    let negative = if before.is_empty() {
        match settings.authoritative.first() {
            Some(server) => Some(query::negative_ttl(*server, &settings.zone).await?),
            None => {
                return Err(DnsError::Refused(format!(
                    "{} has no {} record yet, so its wait is the zone's negative TTL; set dns.authoritative to a server of the zone so it can be read",
                    settings.name, settings.record_type
                )))
            }
        }
    } else {
        None
    };
    weighted_at_start(provider, settings, steps.journal()).await?;
    let low = settings.low_ttl.as_secs() as u32;
    let earlier = ttl_plan(steps.journal())?;
    let plan = ttl::plan(settings, &before, negative, earlier, now_ms());
    let after: Vec<RecordSet> = before
        .iter()
        .map(|s| RecordSet {
            ttl: s.ttl.min(low),
            ..s.clone()
        })
        .collect();
    let changed = after != before;
    let intent = format!(
        "lower the TTL of {} {} to {low}s (was {}s)",
        settings.name, settings.record_type, plan.old_ttl_s
    );
    let fact = serde_json::to_string(&plan).unwrap_or_default();
    steps
        .run("dns.lower_ttl", &intent, || async {
            if changed {
                provider
                    .replace(&settings.name, settings.record_type, &after)
                    .await?;
            }
            steps.journal().set_fact(ttl::FACT, Some(&fact))?;
            Ok::<_, DnsError>(format!("earliest safe cutover {}", plan.earliest_safe()))
        })
        .await?;
    Ok(Lowered {
        warnings: ttl::warnings(settings, &before),
        earliest_safe: plan.earliest_safe(),
        before,
        after,
        plan,
        changed,
    })
}

/// The record sets that send `new_percent` of resolutions to the new answers. At 0% and 100%
/// that is one plain record, unless the name had weighted records before the move
/// (`keep_weighted`: the ones `cutover app terraform` writes): those stay the same two records
/// with weights 100 and 0, so that Terraform, which owns them, finds them as it made them.
pub fn split_sets(
    settings: &DnsSettings,
    new_percent: u8,
    weighted: bool,
    keep_weighted: bool,
) -> Result<Vec<RecordSet>, DnsError> {
    let ttl = settings.low_ttl.as_secs() as u32;
    let set = |values: &[String], weight: Option<(&str, u32)>| RecordSet {
        name: settings.name.clone(),
        kind: settings.record_type,
        ttl,
        values: values.to_vec(),
        weight: weight.map(|(id, w)| (id.to_string(), w)),
    };
    let both = |old: u32| {
        vec![
            set(&settings.old, Some((OLD_SET, old))),
            set(&settings.new, Some((NEW_SET, 100 - old))),
        ]
    };
    match new_percent {
        0 if weighted && keep_weighted => Ok(both(100)),
        100 if weighted && keep_weighted => Ok(both(0)),
        0 => Ok(vec![set(&settings.old, None)]),
        100 => Ok(vec![set(&settings.new, None)]),
        p if p > 100 => Err(DnsError::Refused(format!(
            "{p}% is not a weight; use 0 to 100"
        ))),
        p if weighted => Ok(vec![
            set(&settings.old, Some((OLD_SET, 100 - u32::from(p)))),
            set(&settings.new, Some((NEW_SET, u32::from(p)))),
        ]),
        p => Err(DnsError::Unsupported(format!(
            "this DNS provider cannot split by weight ({p}% asked); use the splitter (traffic.weights_via = \"splitter\") and switch DNS in one step"
        ))),
    }
}

/// Sends `new_percent` of resolutions to the new answers, in one change. Refused before the
/// TTL planner's safe time unless `force`.
pub async fn set_split(
    provider: &dyn DnsProvider,
    settings: &DnsSettings,
    new_percent: u8,
    force: bool,
    steps: &Steps<'_>,
) -> Result<Vec<RecordSet>, DnsError> {
    let plan = ttl_plan(steps.journal())?;
    if new_percent > 0 {
        ttl::check(plan.as_ref(), &settings.name, now_ms(), force)?;
    }
    let keep_weighted = weighted_at_start(provider, settings, steps.journal()).await?;
    let sets = split_sets(settings, new_percent, provider.weighted(), keep_weighted)?;
    let intent = format!(
        "send {new_percent}% of {} to the new answers ({})",
        settings.name,
        settings.new.join(",")
    );
    steps
        .run(&format!("dns.split.{new_percent}"), &intent, || async {
            provider
                .replace(&settings.name, settings.record_type, &sets)
                .await?;
            Ok::<_, DnsError>(format!("{} now at {new_percent}%", settings.name))
        })
        .await?;
    Ok(sets)
}
