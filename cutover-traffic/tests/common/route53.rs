//! Our fake of Route 53's REST XML API: it keeps record sets, applies change batches
//! atomically, and can answer PENDING, throttle and refuse a batch, once or from some batch
//! on. Route 53 is a third-party service we cannot start locally, so it gets a fake that
//! can also fail.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cutover_core::plan::{DnsProviderSettings, DnsSettings};
use cutover_core::Secret;
use cutover_traffic::dns::route53::Route53;
use cutover_traffic::dns::{ops, RecordSet};

pub const NS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";
pub const ZONE_ID: &str = "ZFAKE123";
pub const SECRET_KEY: &str = "fake-secret-access-key-77";

/// (name, type, set id) → (ttl, weight, values)
pub type Sets = BTreeMap<(String, String, String), (u32, Option<u32>, Vec<String>)>;

#[derive(Default)]
pub struct Fake {
    pub sets: Mutex<Sets>,
    /// Requests answered with Throttling before the next is served.
    pub throttle: AtomicU32,
    /// GetChange answers PENDING this many times.
    pub pending: AtomicU32,
    /// The next change batch is refused.
    pub refuse: AtomicU32,
    /// Change batches from this one on (counting from 1, refused ones included) are
    /// refused; 0: none. A provider that breaks in the middle of a canary.
    pub refuse_from: AtomicU32,
    /// Change batches received, refused ones included.
    pub received: AtomicU32,
    /// Batches applied.
    pub batches: AtomicU32,
    pub polls: AtomicU32,
    pub throttled: AtomicU32,
    /// Every applied batch, in order.
    pub log: Mutex<Vec<Vec<Change>>>,
    /// The zone's sets after each applied batch.
    pub history: Mutex<Vec<Sets>>,
}

/// One change of an applied batch, as the fake read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub action: String,
    /// Empty for a plain (not weighted) set.
    pub set_id: String,
    pub weight: Option<u32>,
    pub ttl: u32,
    pub values: Vec<String>,
}

fn xml(code: StatusCode, body: String) -> Response {
    (
        code,
        [("content-type", "text/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}"),
    )
        .into_response()
}

fn error(code: &str, message: &str) -> Response {
    xml(
        StatusCode::BAD_REQUEST,
        format!("<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fake</RequestId></ErrorResponse>"),
    )
}

fn throttled(f: &Fake) -> Option<Response> {
    if f.throttle.load(Ordering::SeqCst) > 0 {
        f.throttle.fetch_sub(1, Ordering::SeqCst);
        f.throttled.fetch_add(1, Ordering::SeqCst);
        return Some(error("Throttling", "Rate exceeded"));
    }
    None
}

/// The text of every `<tag>` in `s`.
pub fn all<'a>(s: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = vec![];
    let mut rest = s;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

pub fn one<'a>(s: &'a str, tag: &str) -> Option<&'a str> {
    all(s, tag).into_iter().next()
}

async fn list(State(f): State<Arc<Fake>>, Path(zone): Path<String>, uri: Uri) -> Response {
    let q: BTreeMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%2E", ".").replace("%2e", ".")))
        .collect();
    if let Some(r) = throttled(&f) {
        return r;
    }
    if zone != ZONE_ID {
        return error("NoSuchHostedZone", "No hosted zone found");
    }
    let name = q.get("name").cloned().unwrap_or_default();
    let sets = f.sets.lock().unwrap();
    let mut body = String::new();
    for ((n, t, id), (ttl, weight, values)) in sets.iter() {
        if n < &name {
            continue;
        }
        body.push_str(&format!(
            "<ResourceRecordSet><Name>{n}</Name><Type>{t}</Type>"
        ));
        if !id.is_empty() {
            body.push_str(&format!(
                "<SetIdentifier>{id}</SetIdentifier><Weight>{}</Weight>",
                weight.unwrap_or(0)
            ));
        }
        body.push_str(&format!("<TTL>{ttl}</TTL><ResourceRecords>"));
        for v in values {
            body.push_str(&format!(
                "<ResourceRecord><Value>{v}</Value></ResourceRecord>"
            ));
        }
        body.push_str("</ResourceRecords></ResourceRecordSet>");
    }
    xml(
        StatusCode::OK,
        format!("<ListResourceRecordSetsResponse xmlns=\"{NS}\"><ResourceRecordSets>{body}</ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>300</MaxItems></ListResourceRecordSetsResponse>"),
    )
}

fn change_info(id: &str, status: &str) -> String {
    format!("<ChangeInfo><Id>/change/{id}</Id><Status>{status}</Status><SubmittedAt>2024-01-01T00:00:00.000Z</SubmittedAt></ChangeInfo>")
}

async fn change(State(f): State<Arc<Fake>>, Path(zone): Path<String>, body: String) -> Response {
    if let Some(r) = throttled(&f) {
        return r;
    }
    if zone != ZONE_ID {
        return error("NoSuchHostedZone", "No hosted zone found");
    }
    let number = f.received.fetch_add(1, Ordering::SeqCst) + 1;
    let from = f.refuse_from.load(Ordering::SeqCst);
    if from > 0 && number >= from {
        return error(
            "InvalidChangeBatch",
            "[RRSet with DNS name www.example.com. is not permitted in zone example.com.]",
        );
    }
    if f.refuse.load(Ordering::SeqCst) > 0 {
        f.refuse.fetch_sub(1, Ordering::SeqCst);
        return error(
            "InvalidChangeBatch",
            "[Tried to create resource record set but it already exists]",
        );
    }
    // Applied to a copy, kept only when the whole batch is valid: batches are atomic.
    let mut sets = f.sets.lock().unwrap();
    let mut next = sets.clone();
    let mut applied = vec![];
    for c in all(&body, "Change") {
        let key = (
            one(c, "Name").unwrap_or_default().to_string(),
            one(c, "Type").unwrap_or_default().to_string(),
            one(c, "SetIdentifier").unwrap_or_default().to_string(),
        );
        let value = (
            one(c, "TTL").and_then(|t| t.parse().ok()).unwrap_or(0),
            one(c, "Weight").and_then(|w| w.parse().ok()),
            all(c, "Value")
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>(),
        );
        applied.push(Change {
            action: one(c, "Action").unwrap_or_default().to_string(),
            set_id: key.2.clone(),
            weight: value.1,
            ttl: value.0,
            values: value.2.clone(),
        });
        match one(c, "Action") {
            Some("CREATE") if next.contains_key(&key) => {
                return error(
                    "InvalidChangeBatch",
                    "Tried to create resource record set but it already exists",
                )
            }
            Some("CREATE") | Some("UPSERT") => {
                next.insert(key, value);
            }
            Some("DELETE") => match next.get(&key) {
                Some(v) if *v == value => {
                    next.remove(&key);
                }
                _ => {
                    return error(
                        "InvalidChangeBatch",
                        "Tried to delete resource record set but it was not found",
                    )
                }
            },
            other => return error("InvalidInput", &format!("bad action {other:?}")),
        }
    }
    // Route 53 refuses plain and weighted sets side by side at one name and type.
    for ((n, t, id), _) in next.iter() {
        if id.is_empty()
            && next
                .keys()
                .any(|(n2, t2, id2)| n2 == n && t2 == t && !id2.is_empty())
        {
            return error(
                "InvalidChangeBatch",
                "a non-weighted set exists beside weighted ones",
            );
        }
    }
    f.history.lock().unwrap().push(next.clone());
    *sets = next;
    f.log.lock().unwrap().push(applied);
    let n = f.batches.fetch_add(1, Ordering::SeqCst) + 1;
    xml(
        StatusCode::OK,
        format!("<ChangeResourceRecordSetsResponse xmlns=\"{NS}\">{}</ChangeResourceRecordSetsResponse>", change_info(&format!("C{n}"), "PENDING")),
    )
}

async fn get_change(State(f): State<Arc<Fake>>, Path(id): Path<String>) -> Response {
    if let Some(r) = throttled(&f) {
        return r;
    }
    f.polls.fetch_add(1, Ordering::SeqCst);
    let status = if f.pending.load(Ordering::SeqCst) > 0 {
        f.pending.fetch_sub(1, Ordering::SeqCst);
        "PENDING"
    } else {
        "INSYNC"
    };
    xml(
        StatusCode::OK,
        format!(
            "<GetChangeResponse xmlns=\"{NS}\">{}</GetChangeResponse>",
            change_info(&id, status)
        ),
    )
}

pub async fn fake() -> (Arc<Fake>, SocketAddr) {
    let f = Arc::new(Fake::default());
    f.sets.lock().unwrap().insert(
        ("www.example.com.".into(), "A".into(), String::new()),
        (3600, None, vec!["192.0.2.10".into()]),
    );
    let app = Router::new()
        .route(
            "/2013-04-01/hostedzone/{zone}/rrset",
            post(change).get(list),
        )
        .route(
            "/2013-04-01/hostedzone/{zone}/rrset/",
            post(change).get(list),
        )
        .route("/2013-04-01/change/{id}", get(get_change))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (f, addr)
}

pub fn settings(endpoint: String, zone_id: &str) -> DnsSettings {
    super::dns_settings(DnsProviderSettings::Route53 {
        hosted_zone_id: zone_id.into(),
        access_key_id: Secret::new("AKIDFAKE"),
        secret_access_key: Secret::new(SECRET_KEY),
        session_token: None,
        region: "us-east-1".into(),
        endpoint: Some(endpoint),
    })
}

pub fn provider(s: &DnsSettings) -> Route53 {
    let mut p = Route53::from_settings(s).unwrap();
    p.poll = Duration::from_millis(20);
    p
}

pub fn weighted(s: &DnsSettings) -> Vec<RecordSet> {
    ops::split_sets(s, 10, true, false).unwrap()
}
