//! Asking servers what a name answers: `cutover dns verify` and the TTL planner's SOA.
//!
//! Plain UDP queries without a signature, to authoritative servers (what is published) and
//! to recursive resolvers (what users get, caches included).

use std::net::SocketAddr;
use std::time::Duration;

use cutover_core::plan::{DnsSettings, RecordKind};
use hickory_client::client::{Client, ClientHandle};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{rdata, DNSClass, RData, Record, RecordType};
use hickory_proto::runtime::TokioRuntimeProvider;
use hickory_proto::udp::UdpClientStream;
use serde::Serialize;

use super::{DnsError, RecordSet};

const TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn record_type(kind: RecordKind) -> RecordType {
    match kind {
        RecordKind::A => RecordType::A,
        RecordKind::Aaaa => RecordType::AAAA,
        RecordKind::Cname => RecordType::CNAME,
    }
}

pub(crate) fn to_rdata(kind: RecordKind, value: &str) -> Result<RData, DnsError> {
    let bad = || DnsError::Refused(format!("\"{value}\" does not fit a {kind} record"));
    Ok(match kind {
        RecordKind::A => RData::A(rdata::A(value.parse().map_err(|_| bad())?)),
        RecordKind::Aaaa => RData::AAAA(rdata::AAAA(value.parse().map_err(|_| bad())?)),
        RecordKind::Cname => RData::CNAME(rdata::CNAME(parse_name(value)?)),
    })
}

fn value_of(data: &RData) -> Option<String> {
    match data {
        RData::A(a) => Some(a.0.to_string()),
        RData::AAAA(a) => Some(a.0.to_string()),
        RData::CNAME(c) => Some(c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
        _ => None,
    }
}

/// The records of `kind` among `answers`, as one set (None when there are none).
pub(crate) fn records_of(answers: &[Record], name: &str, kind: RecordKind) -> Option<RecordSet> {
    let wanted = record_type(kind);
    let mut ttl = u32::MAX;
    let mut values = vec![];
    for r in answers.iter().filter(|r| r.record_type() == wanted) {
        if let Some(v) = value_of(r.data()) {
            ttl = ttl.min(r.ttl());
            values.push(v);
        }
    }
    values.sort();
    (!values.is_empty()).then(|| RecordSet {
        name: name.to_string(),
        kind,
        ttl,
        values,
        weight: None,
    })
}

/// What one server answered.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    pub server: SocketAddr,
    /// "authoritative" or "resolver".
    pub role: &'static str,
    /// "new", "old", "both", "other", "none" (the name has no such record) or "error".
    pub verdict: &'static str,
    pub values: Vec<String>,
    pub ttl: Option<u32>,
    pub error: Option<String>,
}

async fn client(server: SocketAddr) -> Result<Client, DnsError> {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new())
        .with_timeout(Some(TIMEOUT))
        .build();
    let (client, background) = Client::connect(stream)
        .await
        .map_err(|e| DnsError::Unavailable(format!("cannot query {server}: {e}")))?;
    // Ends when the client is dropped.
    tokio::spawn(background);
    Ok(client)
}

/// Asks one server for `name`/`kind`.
pub async fn ask(
    server: SocketAddr,
    name: &str,
    kind: RecordKind,
) -> Result<Option<RecordSet>, DnsError> {
    let mut c = client(server).await?;
    let response = c
        .query(parse_name(name)?, DNSClass::IN, record_type(kind))
        .await
        .map_err(|e| DnsError::Unavailable(format!("{server} did not answer: {e}")))?;
    match response.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => {
            Ok(records_of(response.answers(), name, kind))
        }
        code => Err(DnsError::Unavailable(format!("{server} answered {code}"))),
    }
}

/// The negative-caching TTL of `zone` (RFC 2308: the lesser of the SOA's TTL and its MINIMUM),
/// as `server` publishes it.
pub async fn negative_ttl(server: SocketAddr, zone: &str) -> Result<u32, DnsError> {
    let mut c = client(server).await?;
    let response = c
        .query(parse_name(zone)?, DNSClass::IN, RecordType::SOA)
        .await
        .map_err(|e| DnsError::Unavailable(format!("{server} did not answer: {e}")))?;
    response
        .answers()
        .iter()
        .find_map(|r| match r.data() {
            RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
            _ => None,
        })
        .ok_or_else(|| {
            DnsError::Refused(format!(
                "{server} has no SOA for {zone}; check dns.zone and dns.authoritative"
            ))
        })
}

/// Classifies an answer against the plan's old and new values.
pub fn verdict(settings: &DnsSettings, values: &[String]) -> &'static str {
    if values.is_empty() {
        return "none";
    }
    let has = |list: &[String], v: &String| list.iter().any(|x| x == v);
    let old = values.iter().all(|v| has(&settings.old, v));
    let new = values.iter().all(|v| has(&settings.new, v));
    let some_old = values.iter().any(|v| has(&settings.old, v));
    let some_new = values.iter().any(|v| has(&settings.new, v));
    match (old, new, some_old && some_new) {
        (_, true, _) => "new",
        (true, _, _) => "old",
        (_, _, true) => "both",
        _ => "other",
    }
}

/// Asks every authoritative server and resolver of the plan.
pub async fn verify(settings: &DnsSettings) -> Vec<Answer> {
    let servers = settings
        .authoritative
        .iter()
        .map(|s| (*s, "authoritative"))
        .chain(settings.resolvers.iter().map(|s| (*s, "resolver")));
    let mut out = vec![];
    for (server, role) in servers {
        let answer = match ask(server, &settings.name, settings.record_type).await {
            Ok(set) => {
                let values = set.as_ref().map(|s| s.values.clone()).unwrap_or_default();
                Answer {
                    server,
                    role,
                    verdict: verdict(settings, &values),
                    ttl: set.map(|s| s.ttl),
                    values,
                    error: None,
                }
            }
            Err(e) => Answer {
                server,
                role,
                verdict: "error",
                values: vec![],
                ttl: None,
                error: Some(e.to_string()),
            },
        };
        out.push(answer);
    }
    out
}

/// A DNS name from its text, made absolute; a refusal that names it when it is not one.
pub(crate) fn parse_name(name: &str) -> Result<hickory_proto::rr::Name, super::DnsError> {
    hickory_proto::rr::Name::from_ascii(super::fqdn(name))
        .map_err(|_| super::DnsError::Refused(format!("\"{name}\" is not a DNS name")))
}
