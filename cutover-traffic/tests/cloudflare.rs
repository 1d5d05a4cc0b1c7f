//! Cloudflare against our own fake of its API, which can refuse the token and rate-limit.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use cutover_core::plan::{DnsProviderSettings, DnsSettings, RecordKind};
use cutover_core::Secret;
use cutover_traffic::dns::cloudflare::Cloudflare;
use cutover_traffic::dns::{ops, DnsError, DnsProvider};
use serde_json::{json, Value};

const TOKEN: &str = "cf-token-test-8812";

#[derive(Default)]
struct Fake {
    records: Mutex<Vec<Value>>,
    pools: Mutex<Value>,
    limited: AtomicU32,
    next_id: AtomicU32,
    batches: AtomicU32,
}

fn check(f: &Fake, h: &HeaderMap) -> Option<Response> {
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return Some((StatusCode::FORBIDDEN, Json(json!({"success": false, "errors": [{"code": 10000, "message": "Authentication error"}]}))).into_response());
    }
    if f.limited.load(Ordering::SeqCst) > 0 {
        f.limited.fetch_sub(1, Ordering::SeqCst);
        return Some((StatusCode::TOO_MANY_REQUESTS, Json(json!({"success": false, "errors": [{"code": 971, "message": "Please wait and consider throttling your request speed"}]}))).into_response());
    }
    None
}

async fn list(State(f): State<Arc<Fake>>, h: HeaderMap) -> Response {
    if let Some(r) = check(&f, &h) {
        return r;
    }
    Json(json!({"success": true, "errors": [], "result": *f.records.lock().unwrap()}))
        .into_response()
}

async fn batch(State(f): State<Arc<Fake>>, h: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Some(r) = check(&f, &h) {
        return r;
    }
    let mut records = f.records.lock().unwrap();
    let ids: Vec<Value> = body["deletes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    records.retain(|r| !ids.contains(&r["id"]));
    for p in body["posts"].as_array().unwrap() {
        let mut r = p.clone();
        r["id"] = json!(format!("rec{}", f.next_id.fetch_add(1, Ordering::SeqCst)));
        records.push(r);
    }
    f.batches.fetch_add(1, Ordering::SeqCst);
    Json(json!({"success": true, "errors": [], "result": {}})).into_response()
}

async fn lb(
    State(f): State<Arc<Fake>>,
    h: HeaderMap,
    Path((_, id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = check(&f, &h) {
        return r;
    }
    assert_eq!(id, "lb1");
    *f.pools.lock().unwrap() = body["random_steering"]["pool_weights"].clone();
    Json(json!({"success": true, "errors": [], "result": {"id": id}})).into_response()
}

async fn fake() -> (Arc<Fake>, SocketAddr) {
    let f = Arc::new(Fake::default());
    f.records.lock().unwrap().push(json!({"id": "rec-old", "type": "A", "name": "www.example.com", "content": "192.0.2.10", "ttl": 3600, "proxied": false}));
    let app = Router::new()
        .route("/zones/{zone}/dns_records", get(list))
        .route("/zones/{zone}/dns_records/batch", post(batch))
        .route("/zones/{zone}/load_balancers/{id}", patch(lb))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (f, addr)
}

fn settings(addr: SocketAddr, token: &str, lb: bool) -> DnsSettings {
    common::dns_settings(DnsProviderSettings::Cloudflare {
        zone_id: "zone1".into(),
        api_token: Secret::new(token),
        load_balancer: lb.then(|| ("lb1".into(), "pool-old".into(), "pool-new".into())),
        endpoint: Some(format!("http://{addr}")),
    })
}

fn provider(s: &DnsSettings) -> Cloudflare {
    let mut p = Cloudflare::from_settings(s).unwrap();
    p.backoff = Duration::from_millis(10);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_switch_in_one_batch_and_weights_need_load_balancing() {
    let (f, addr) = fake().await;
    let s = settings(addr, TOKEN, false);
    let p = provider(&s);
    let before = p.records(&s.name, RecordKind::A).await.unwrap();
    assert_eq!(
        (before[0].ttl, before[0].values.clone()),
        (3600, vec!["192.0.2.10".to_string()])
    );
    let e = p
        .replace(
            &s.name,
            RecordKind::A,
            &ops::split_sets(&s, 10, true, false).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, DnsError::Unsupported(_)) && e.to_string().contains("load_balancer_id"),
        "{e}"
    );
    f.limited.store(2, Ordering::SeqCst);
    p.replace(
        &s.name,
        RecordKind::A,
        &ops::split_sets(&s, 100, false, false).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(f.batches.load(Ordering::SeqCst), 1);
    let after = p.records(&s.name, RecordKind::A).await.unwrap();
    assert_eq!(
        (after[0].ttl, after[0].values.clone()),
        (60, vec!["198.51.100.20".to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_load_balancing_a_split_sets_pool_weights() {
    let (f, addr) = fake().await;
    let s = settings(addr, TOKEN, true);
    let p = provider(&s);
    assert!(p.weighted());
    p.replace(
        &s.name,
        RecordKind::A,
        &ops::split_sets(&s, 25, true, false).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        *f.pools.lock().unwrap(),
        json!({"pool-old": 0.75, "pool-new": 0.25})
    );
    p.replace(
        &s.name,
        RecordKind::A,
        &ops::split_sets(&s, 0, true, false).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        *f.pools.lock().unwrap(),
        json!({"pool-old": 1.0, "pool-new": 0.0})
    );
    assert_eq!(f.batches.load(Ordering::SeqCst), 0, "records untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_clearly_and_never_shown() {
    let (f, addr) = fake().await;
    let wrong = "cf-wrong-token-0000";
    let s = settings(addr, wrong, false);
    let e = provider(&s)
        .replace(
            &s.name,
            RecordKind::A,
            &ops::split_sets(&s, 100, false, false).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DnsError::Auth(_)), "{e}");
    assert!(e.to_string().starts_with("Cloudflare refused to list records (HTTP 403 Forbidden: 10000 Authentication error); check the token"), "{e}");
    assert!(!e.to_string().contains(wrong));
    assert_eq!(f.batches.load(Ordering::SeqCst), 0);
}
