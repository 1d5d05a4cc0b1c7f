//! When is it safe to move a name?
//!
//! A resolver that fetched the old answer just before the TTL was lowered keeps it for the
//! whole *old* TTL; a resolver that asked for a name that did not exist yet keeps that
//! "no such name" for the zone's negative-caching TTL (RFC 2308: the lesser of the SOA's TTL
//! and its MINIMUM). So the earliest safe cutover is the moment the TTL was lowered plus the
//! larger of the two. Before it, a switch strands users on the old answer, and the planner
//! refuses unless forced.
//!
//! It also knows the cases where a weighted DNS split cannot work and says so: a Heroku
//! custom domain is a CNAME to `*.herokudns.com`, and a weighted split needs the same record
//! type on both sides, which an apex (no CNAME allowed) cannot offer against Heroku.

use cutover_core::plan::{DnsProviderSettings, DnsSettings, RecordKind};
use serde::{Deserialize, Serialize};

use crate::dns::{RecordSet, TtlError};

/// Journal fact that holds the [`TtlPlan`] of the plan's name.
pub const FACT: &str = "dns.ttl_lowered";

/// What `dns lower-ttl` did and when, kept in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlPlan {
    pub name: String,
    /// Unix milliseconds when the low TTL was published.
    pub lowered_at_ms: i64,
    /// The TTL the name had before, in seconds (0 when it had no record).
    pub old_ttl_s: u32,
    /// The zone's negative-caching TTL when the name had no record, in seconds.
    pub negative_ttl_s: Option<u32>,
    pub low_ttl_s: u32,
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl TtlPlan {
    /// The longest any resolver may still hold what it saw before the TTL was lowered.
    pub fn longest_cache_s(&self) -> u32 {
        self.old_ttl_s.max(self.negative_ttl_s.unwrap_or(0))
    }

    /// Unix milliseconds from which a cutover strands no cached answer.
    pub fn earliest_safe_ms(&self) -> i64 {
        self.lowered_at_ms + i64::from(self.longest_cache_s()) * 1000
    }

    pub fn earliest_safe(&self) -> String {
        rfc3339(self.earliest_safe_ms())
    }

    /// Ok when a cutover at `now_ms` is safe, or `force` says to go anyway.
    pub fn check(&self, now_ms: i64, force: bool) -> Result<(), TtlError> {
        let earliest = self.earliest_safe_ms();
        if now_ms >= earliest || force {
            return Ok(());
        }
        Err(TtlError::TooEarly {
            name: self.name.clone(),
            wait_s: (earliest - now_ms + 999) / 1000,
            old_ttl_s: self.longest_cache_s(),
            lowered_at: rfc3339(self.lowered_at_ms),
            earliest: rfc3339(earliest),
        })
    }
}

/// Checks a cutover of `name` against the journaled plan (`None`: never lowered).
pub fn check(plan: Option<&TtlPlan>, name: &str, now_ms: i64, force: bool) -> Result<(), TtlError> {
    match plan {
        Some(p) if p.name == name => p.check(now_ms, force),
        _ if force => Ok(()),
        _ => Err(TtlError::NotLowered {
            name: name.to_string(),
        }),
    }
}

/// The plan for a TTL lowered at `now_ms`, given what the name held before. An earlier plan
/// for the same name whose low TTL is already published is kept, so running `lower-ttl`
/// again does not move the safe time.
pub fn plan(
    settings: &DnsSettings,
    current: &[RecordSet],
    negative_ttl_s: Option<u32>,
    earlier: Option<TtlPlan>,
    now_ms: i64,
) -> TtlPlan {
    let low = settings.low_ttl.as_secs() as u32;
    let old = current.iter().map(|s| s.ttl).max().unwrap_or(0);
    if let Some(e) = earlier {
        if e.name == settings.name && old <= e.low_ttl_s.max(low) {
            return e;
        }
    }
    TtlPlan {
        name: settings.name.clone(),
        lowered_at_ms: now_ms,
        old_ttl_s: old,
        negative_ttl_s: if current.is_empty() {
            negative_ttl_s
        } else {
            None
        },
        low_ttl_s: low,
    }
}

/// What the user must know before moving this name, one line each.
pub fn warnings(settings: &DnsSettings, current: &[RecordSet]) -> Vec<String> {
    let mut out = vec![];
    let heroku = |v: &String| v.ends_with(".herokudns.com");
    let current_values: Vec<&String> = current.iter().flat_map(|s| s.values.iter()).collect();
    if settings.old.iter().any(heroku) || current_values.iter().any(|v| heroku(v)) {
        out.push(format!(
            "{} is a Heroku custom domain (a CNAME to *.herokudns.com): Heroku's routers answer behind it, so keep the domain on the Heroku app until the splitter there sees no traffic, and move the CNAME itself with a low TTL",
            settings.name
        ));
    }
    let route53 = matches!(settings.provider, DnsProviderSettings::Route53 { .. });
    if settings.is_apex() && route53 {
        out.push(format!(
            "{} is the zone apex: a weighted split needs the same record type on both sides and an apex cannot be a CNAME, so it cannot be split against a Heroku or ALB alias on Route 53; run the splitter (`cutover traffic serve`) in front of the old app, or switch in one step",
            settings.name
        ));
    }
    if settings.record_type == RecordKind::Cname && settings.is_apex() {
        out.push(format!(
            "{} is the zone apex and cannot be a CNAME",
            settings.name
        ));
    }
    if current.is_empty() {
        out.push(format!(
            "{} has no {} record yet: resolvers that asked before cache \"no such name\" for the zone's negative TTL",
            settings.name, settings.record_type
        ));
    }
    if current
        .iter()
        .any(|s| s.ttl > settings.low_ttl.as_secs() as u32 * 60)
    {
        out.push(format!(
            "{} had a long TTL; clients that ignore TTLs (some JVMs, browsers) may keep the old address longer: keep the old app or the splitter in front of it running until it sees no traffic",
            settings.name
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(old: u32, neg: Option<u32>) -> TtlPlan {
        TtlPlan {
            name: "www.example.com".into(),
            lowered_at_ms: 1_000_000,
            old_ttl_s: old,
            negative_ttl_s: neg,
            low_ttl_s: 60,
        }
    }

    #[test]
    fn earliest_is_lowered_at_plus_the_old_ttl() {
        let plan = p(3600, None);
        assert_eq!(plan.earliest_safe_ms(), 1_000_000 + 3_600_000);
        let err = plan.check(1_000_000 + 3_599_000, false).unwrap_err();
        match &err {
            TtlError::TooEarly { wait_s, .. } => assert_eq!(*wait_s, 1),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("pass --force"), "{err}");
        assert_eq!(plan.check(1_000_000 + 3_600_000, false), Ok(()));
        assert_eq!(plan.check(1_000_000, true), Ok(()));
    }

    #[test]
    fn a_new_name_waits_for_the_negative_ttl() {
        let plan = p(0, Some(900));
        assert_eq!(plan.earliest_safe_ms(), 1_000_000 + 900_000);
        assert!(plan.check(1_000_000 + 899_000, false).is_err());
    }

    #[test]
    fn never_lowered_is_refused_unless_forced() {
        let e = check(None, "www.example.com", 0, false).unwrap_err();
        assert!(e.to_string().contains("cutover dns lower-ttl"), "{e}");
        assert_eq!(check(None, "www.example.com", 0, true), Ok(()));
        let other = p(10, None);
        assert!(check(Some(&other), "api.example.com", i64::MAX, false).is_err());
    }
}
