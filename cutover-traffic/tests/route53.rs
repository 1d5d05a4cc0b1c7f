//! Route 53 against our own fake of its REST XML API (which can answer PENDING, throttle and
//! refuse a batch), and a smoke test against moto_server when it is installed.

#![cfg(feature = "route53")]

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
use cutover_core::plan::{DnsProviderSettings, DnsSettings, RecordKind};
use cutover_core::Secret;
use cutover_traffic::dns::route53::Route53;
use cutover_traffic::dns::{ops, DnsError, DnsProvider, RecordSet, NEW_SET, OLD_SET};

const NS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";
const ZONE_ID: &str = "ZFAKE123";
const SECRET_KEY: &str = "fake-secret-access-key-77";

/// (name, type, set id) → (ttl, weight, values)
type Sets = BTreeMap<(String, String, String), (u32, Option<u32>, Vec<String>)>;

#[derive(Default)]
struct Fake {
    sets: Mutex<Sets>,
    /// Requests answered with Throttling before the next is served.
    throttle: AtomicU32,
    /// GetChange answers PENDING this many times.
    pending: AtomicU32,
    /// The next change batch is refused.
    refuse: AtomicU32,
    batches: AtomicU32,
    polls: AtomicU32,
    throttled: AtomicU32,
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
fn all<'a>(s: &'a str, tag: &str) -> Vec<&'a str> {
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

fn one<'a>(s: &'a str, tag: &str) -> Option<&'a str> {
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
    *sets = next;
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

async fn fake() -> (Arc<Fake>, SocketAddr) {
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

fn settings(endpoint: String, zone_id: &str) -> DnsSettings {
    DnsSettings {
        zone: "example.com".into(),
        name: "www.example.com".into(),
        record_type: RecordKind::A,
        old: vec!["192.0.2.10".into()],
        new: vec!["198.51.100.20".into()],
        low_ttl: Duration::from_secs(60),
        authoritative: vec![],
        resolvers: vec![],
        provider: DnsProviderSettings::Route53 {
            hosted_zone_id: zone_id.into(),
            access_key_id: Secret::new("AKIDFAKE"),
            secret_access_key: Secret::new(SECRET_KEY),
            session_token: None,
            region: "us-east-1".into(),
            endpoint: Some(endpoint),
        },
    }
}

fn provider(s: &DnsSettings) -> Route53 {
    let mut p = Route53::from_settings(s).unwrap();
    p.poll = Duration::from_millis(20);
    p
}

fn weighted(s: &DnsSettings) -> Vec<RecordSet> {
    ops::split_sets(s, 10, true).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_is_one_batch_and_waits_for_insync() {
    let (f, addr) = fake().await;
    let s = settings(format!("http://{addr}"), ZONE_ID);
    let p = provider(&s);
    f.pending.store(3, Ordering::SeqCst);
    p.replace(&s.name, RecordKind::A, &weighted(&s))
        .await
        .unwrap();
    assert_eq!(
        f.batches.load(Ordering::SeqCst),
        1,
        "plain → weighted in one batch"
    );
    assert_eq!(
        f.polls.load(Ordering::SeqCst),
        4,
        "three PENDING, then INSYNC"
    );
    let sets = p.records(&s.name, RecordKind::A).await.unwrap();
    let shares: Vec<_> = sets
        .iter()
        .map(|s| (s.weight.clone().unwrap(), s.values.clone()))
        .collect();
    assert_eq!(
        shares,
        [
            ((NEW_SET.to_string(), 10), vec!["198.51.100.20".to_string()]),
            ((OLD_SET.to_string(), 90), vec!["192.0.2.10".to_string()]),
        ]
    );
    // 10% → 50%: both weights change in one batch of UPSERTs.
    p.replace(
        &s.name,
        RecordKind::A,
        &ops::split_sets(&s, 50, true).unwrap(),
    )
    .await
    .unwrap();
    // 100%: back to one plain record.
    p.replace(
        &s.name,
        RecordKind::A,
        &ops::split_sets(&s, 100, true).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(f.batches.load(Ordering::SeqCst), 3);
    let sets = p.records(&s.name, RecordKind::A).await.unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(
        (sets[0].weight.clone(), sets[0].values.clone(), sets[0].ttl),
        (None, vec!["198.51.100.20".to_string()], 60)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_backoff() {
    let (f, addr) = fake().await;
    let s = settings(format!("http://{addr}"), ZONE_ID);
    let p = provider(&s);
    f.throttle.store(3, Ordering::SeqCst);
    p.replace(&s.name, RecordKind::A, &weighted(&s))
        .await
        .unwrap();
    assert_eq!(f.throttled.load(Ordering::SeqCst), 3);
    assert_eq!(f.batches.load(Ordering::SeqCst), 1);

    // Throttled beyond the retries: a clear error, nothing half-done.
    f.throttle.store(100, Ordering::SeqCst);
    let e = p
        .replace(
            &s.name,
            RecordKind::A,
            &ops::split_sets(&s, 100, true).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("Throttling"), "{e}");
    assert!(!e.to_string().contains(SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_changes_nothing_and_says_why() {
    let (f, addr) = fake().await;
    let s = settings(format!("http://{addr}"), ZONE_ID);
    let p = provider(&s);
    f.refuse.store(1, Ordering::SeqCst);
    let e = p
        .replace(&s.name, RecordKind::A, &weighted(&s))
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::Refused(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("Route 53 refused to change www.example.com (InvalidChangeBatch:"),
        "{e}"
    );
    assert_eq!(f.batches.load(Ordering::SeqCst), 0);
    let sets = p.records(&s.name, RecordKind::A).await.unwrap();
    assert_eq!((sets.len(), sets[0].weight.clone()), (1, None));

    let wrong_zone = settings(format!("http://{addr}"), "ZNOPE");
    let e = provider(&wrong_zone)
        .records("www.example.com", RecordKind::A)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("NoSuchHostedZone")
            && e.to_string().contains("dns.route53.hosted_zone_id"),
        "{e}"
    );
}

/// Request shapes against moto's Route 53 (`pip install 'moto[server]'`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_server_accepts_our_requests() {
    let Some(moto) = which("moto_server") else {
        println!("skipped: moto_server is not installed (pip install 'moto[server]')");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);
    {
        let base = format!("http://127.0.0.1:{port}");
        let mut zone_id = None;
        for _ in 0..300 {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CreateHostedZoneRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Name>example.com.</Name><CallerReference>cutover-test</CallerReference></CreateHostedZoneRequest>";
            if let Ok((code, text)) = cutover_traffic::http::request(
                hyper::Method::POST,
                &format!("{base}/2013-04-01/hostedzone"),
                &[
                    ("content-type", "text/xml".into()),
                    // moto tells services apart by the signature's scope.
                    ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDFAKE/20240101/us-east-1/route53/aws4_request, SignedHeaders=host, Signature=0".into()),
                ],
                Some(body.as_bytes().to_vec()),
                Duration::from_secs(5),
            )
            .await
            {
                let text = String::from_utf8_lossy(&text).into_owned();
                assert!(code.is_success(), "{code}: {text}");
                zone_id = one(&text, "Id").map(|i| i.trim_start_matches("/hostedzone/").to_string());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let zone_id = zone_id.expect("moto_server answered");
        let s = settings(base, &zone_id);
        let p = provider(&s);
        p.replace(
            &s.name,
            RecordKind::A,
            &ops::split_sets(&s, 0, true).unwrap(),
        )
        .await
        .unwrap();
        p.replace(&s.name, RecordKind::A, &weighted(&s))
            .await
            .unwrap();
        let sets = p.records(&s.name, RecordKind::A).await.unwrap();
        let mut weights: Vec<_> = sets.iter().filter_map(|s| s.weight.clone()).collect();
        weights.sort();
        assert_eq!(
            weights,
            [(NEW_SET.to_string(), 10), (OLD_SET.to_string(), 90)]
        );
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}
