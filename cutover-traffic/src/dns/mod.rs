//! DNS providers behind one small trait, and the operations built on it.
//!
//! A provider knows how to read the record sets at a name and how to replace them, in one
//! change, with others. Everything else (lowering the TTL, a weighted split, a one-step
//! switch) is computed here from the plan and handed to [`DnsProvider::replace`], so each
//! provider stays a thin translation of its API.
//!
//! Weighted sets carry a set identifier: `cutover-old` and `cutover-new`. A provider without
//! weights (plain RFC 2136, Cloudflare DNS records without Load Balancing) refuses any split
//! other than 0% or 100%, and says to use the splitter instead.

pub mod cloudflare;
pub mod ops;
pub mod query;
pub mod rfc2136;
#[cfg(feature = "route53")]
pub mod route53;

use std::fmt;

use cutover_core::plan::{DnsProviderSettings, DnsSettings, RecordKind};
use futures_util::future::BoxFuture;
use serde::Serialize;

pub use cutover_core::plan::{NEW_SET, OLD_SET};

/// The records of one name and type (one weighted set, or the plain record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordSet {
    /// Lower-case, no trailing dot.
    pub name: String,
    pub kind: RecordKind,
    pub ttl: u32,
    /// Addresses, or one host name (no trailing dot) for a CNAME.
    pub values: Vec<String>,
    /// Set identifier and weight of a weighted record; None for a plain one.
    pub weight: Option<(String, u32)>,
}

/// What the caller must do about a failure.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The provider refused our credentials.
    #[error("{0}")]
    Auth(String),
    /// The request is wrong for this zone or provider; a person must change the plan.
    #[error("{0}")]
    Refused(String),
    /// Retried and still failing (throttled, unreachable, a server error).
    #[error("{0}")]
    Unavailable(String),
    /// The provider cannot do this (weights without weighted records).
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Journal(#[from] cutover_core::JournalError),
    /// The TTL planner says it is too early.
    #[error(transparent)]
    TooEarly(#[from] TtlError),
}

/// Why the TTL planner (`crate::ttl`) says a switch may not happen yet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TtlError {
    #[error("the TTL of {name} was never lowered with cutover; run `cutover dns lower-ttl` and wait out the old TTL, or pass --force to switch now and strand users who cache the old answer")]
    NotLowered { name: String },
    #[error("too early: resolvers may cache the old answer of {name} for {wait_s}s more (the TTL was {old_ttl_s}s when it was lowered at {lowered_at}); the earliest safe cutover is {earliest}; wait, or pass --force to strand them")]
    TooEarly {
        name: String,
        wait_s: i64,
        old_ttl_s: u32,
        lowered_at: String,
        earliest: String,
    },
}

/// A provider that serves the zone.
pub trait DnsProvider: Send + Sync {
    /// "rfc2136", "route53" or "cloudflare".
    fn name(&self) -> &'static str;
    /// True when it can split by weight.
    fn weighted(&self) -> bool;
    /// The record sets at `name` of `kind`, as the provider holds them.
    fn records<'a>(
        &'a self,
        name: &'a str,
        kind: RecordKind,
    ) -> BoxFuture<'a, Result<Vec<RecordSet>, DnsError>>;
    /// Makes the record sets at `name` of `kind` exactly `sets` in one change (no set: the
    /// name has no record of that type), and waits until the provider applied it.
    fn replace<'a>(
        &'a self,
        name: &'a str,
        kind: RecordKind,
        sets: &'a [RecordSet],
    ) -> BoxFuture<'a, Result<(), DnsError>>;
}

/// The provider the plan names.
pub fn provider(settings: &DnsSettings) -> Result<Box<dyn DnsProvider>, DnsError> {
    match &settings.provider {
        DnsProviderSettings::Rfc2136 {
            server,
            key_name,
            algorithm,
            secret,
        } => Ok(Box::new(rfc2136::Rfc2136::new(
            *server,
            &settings.zone,
            key_name,
            algorithm,
            secret,
        )?)),
        #[cfg(feature = "route53")]
        DnsProviderSettings::Route53 { .. } => {
            Ok(Box::new(route53::Route53::from_settings(settings)?))
        }
        #[cfg(not(feature = "route53"))]
        DnsProviderSettings::Route53 { .. } => Err(DnsError::Unsupported(
            "this cutover was built without Route 53 support; build it with the default features (`--features route53`)".into(),
        )),
        DnsProviderSettings::Cloudflare { .. } => {
            Ok(Box::new(cloudflare::Cloudflare::from_settings(settings)?))
        }
    }
}

impl fmt::Display for RecordSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.name,
            self.ttl,
            self.kind,
            self.values.join(",")
        )?;
        if let Some((id, w)) = &self.weight {
            write!(f, " (set {id}, weight {w})")?;
        }
        Ok(())
    }
}

/// Text from a provider with the credential taken out, should it echo it back.
pub(crate) fn redacted(text: &str, secret: &cutover_core::Secret) -> String {
    cutover_core::redact(text, [secret])
}

/// A name with its trailing dot, as DNS messages want it.
pub(crate) fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}
