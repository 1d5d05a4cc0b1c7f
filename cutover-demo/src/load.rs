//! Users of the shop: HTTP clients that place orders and read them back, for the whole move.
//!
//! Each client keeps one connection alive, sends at a steady pace, and records every request:
//! when it started, how long it took, whether it failed. A write counts as *acknowledged*
//! when the app answered 201 with the order's id; the move loses nothing when every
//! acknowledged id is on the final primary. A read asks for an acknowledged order, so an
//! answer of 404 is a lost write seen by a user, and counts as a failure.
//!
//! Where a client sends is what its DNS told it: a [`Resolver`] holds the answer, and when it
//! changes each client moves at a moment of its own within the TTL, as caches expire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The answer clients resolve to, and how long they may keep an old one.
#[derive(Clone)]
pub struct Resolver {
    answer: watch::Sender<String>,
    ttl: Duration,
}

impl Resolver {
    /// `base`: "http://host:port".
    pub fn new(base: &str, ttl: Duration) -> Resolver {
        Resolver {
            answer: watch::Sender::new(base.trim_end_matches('/').to_string()),
            ttl,
        }
    }

    /// A new answer: each client moves to it within the TTL. The same answer again changes
    /// nothing (it does not restart the clients' wait).
    pub fn set(&self, base: &str) {
        let base = base.trim_end_matches('/');
        self.answer.send_if_modified(|a| {
            if a == base {
                false
            } else {
                *a = base.to_string();
                true
            }
        });
    }

    pub fn current(&self) -> String {
        self.answer.borrow().clone()
    }
}

#[derive(Clone)]
pub struct LoadConfig {
    pub clients: usize,
    /// Requests per second, all clients together.
    pub rate: f64,
    /// Share of requests that place an order (the rest read one back).
    pub write_share: f64,
    pub resolver: Resolver,
}

/// One request.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Unix milliseconds when it was sent.
    pub at_ms: i64,
    /// How long until the answer.
    pub ms: f64,
    pub ok: bool,
    pub write: bool,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    failed: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    acknowledged: Mutex<Vec<i64>>,
    failures: Mutex<Vec<String>>,
}

/// What the load saw, at the end.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub sent: u64,
    pub failed: u64,
    /// The first failures, each with its reason.
    pub failures: Vec<String>,
    /// Ids of the orders the app acknowledged.
    pub acknowledged: Vec<i64>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

impl LoadReport {
    /// The longest request that was in flight at any moment of `[from_ms, to_ms]`.
    pub fn longest_between(&self, from_ms: i64, to_ms: i64) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| s.at_ms <= to_ms && s.at_ms as f64 + s.ms >= from_ms as f64)
            .map(|s| s.ms)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    }

    pub fn requests_per_second(&self) -> f64 {
        let (Some(first), Some(last)) = (
            self.samples.iter().map(|s| s.at_ms).min(),
            self.samples.iter().map(|s| s.at_ms).max(),
        ) else {
            return 0.0;
        };
        let secs = (last - first) as f64 / 1000.0;
        if secs <= 0.0 {
            0.0
        } else {
            self.samples.len() as f64 / secs
        }
    }
}

/// A running load.
pub struct Load {
    tally: Arc<Tally>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const KEEP_FAILURES: usize = 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Load {
    pub fn start(config: LoadConfig) -> Load {
        let tally = Arc::new(Tally::default());
        let stop = CancellationToken::new();
        let clients = config.clients.max(1);
        let every = Duration::from_secs_f64(clients as f64 / config.rate.max(0.1));
        let tasks = (0..clients)
            .map(|i| {
                let (tally, stop, config) = (tally.clone(), stop.clone(), config.clone());
                tokio::spawn(async move { client(i, config, every, tally, stop).await })
            })
            .collect();
        Load { tally, stop, tasks }
    }

    /// Requests sent and failed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.tally.sent.load(Ordering::Relaxed),
            self.tally.failed.load(Ordering::Relaxed),
        )
    }

    /// Stops sending; requests in flight finish first.
    pub async fn stop(self) -> LoadReport {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let t = &self.tally;
        LoadReport {
            sent: t.sent.load(Ordering::Relaxed),
            failed: t.failed.load(Ordering::Relaxed),
            failures: t.failures.lock().unwrap().clone(),
            acknowledged: t.acknowledged.lock().unwrap().clone(),
            samples: std::mem::take(&mut *t.samples.lock().unwrap()),
        }
    }
}

/// One user: a kept connection, a steady pace, and its own moment to follow a new DNS answer.
async fn client(
    index: usize,
    config: LoadConfig,
    every: Duration,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut answers = config.resolver.answer.subscribe();
    let mut base = answers.borrow_and_update().clone();
    // When this client's cache of the old answer expires.
    let mut move_at: Option<Instant> = None;
    let mut conn: Option<(String, http1::SendRequest<Full<Bytes>>)> = None;
    // Spread the clients over one period, so they do not send in step.
    let offset = every.mul_f64(index as f64 / config.clients.max(1) as f64);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if answers.has_changed().unwrap_or(false) {
            answers.borrow_and_update();
            let ttl = config.resolver.ttl.as_secs_f64();
            let wait = rand::random_range(0.0..=ttl.max(0.001));
            move_at = Some(Instant::now() + Duration::from_secs_f64(wait));
        }
        if move_at.is_some_and(|t| Instant::now() >= t) {
            base = config.resolver.current();
            move_at = None;
        }
        let write = {
            let acked = tally.acknowledged.lock().unwrap().len();
            acked == 0 || rand::random_bool(config.write_share.clamp(0.0, 1.0))
        };
        let (method, path, body) = if write {
            let customer = rand::random_range(1..=5000);
            let cents = rand::random_range(100..100_000);
            (
                hyper::Method::POST,
                "/orders".to_string(),
                format!(
                    "{{\"customer\": {customer}, \"total\": \"{}.{:02}\"}}",
                    cents / 100,
                    cents % 100
                ),
            )
        } else {
            let id = {
                let acked = tally.acknowledged.lock().unwrap();
                acked[rand::random_range(0..acked.len())]
            };
            (hyper::Method::GET, format!("/orders/{id}"), String::new())
        };
        let at_ms = now_ms();
        let started = Instant::now();
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let result =
            tokio::time::timeout(REQUEST_TIMEOUT, send(&mut conn, &base, method, &path, body))
                .await
                .unwrap_or_else(|_| {
                    Err(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))
                });
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let verdict = match result {
            Ok((status, bytes)) => judge(write, status, &bytes, &tally),
            Err(e) => {
                conn = None;
                Err(e)
            }
        };
        let ok = verdict.is_ok();
        if let Err(why) = verdict {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            let mut f = tally.failures.lock().unwrap();
            if f.len() < KEEP_FAILURES {
                f.push(format!(
                    "{} {base}{path}: {why}",
                    if write { "POST" } else { "GET" }
                ));
            }
        }
        tally.samples.lock().unwrap().push(Sample {
            at_ms,
            ms,
            ok,
            write,
        });
    }
}

/// Whether an answer is what a user expects; an acknowledged write is remembered.
fn judge(write: bool, status: u16, body: &[u8], tally: &Tally) -> Result<(), String> {
    let expected = if write { 201 } else { 200 };
    if status != expected {
        let text = String::from_utf8_lossy(body);
        return Err(format!(
            "status {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    if write {
        let id = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["id"].as_i64())
            .ok_or_else(|| "201 without an order id".to_string())?;
        tally.acknowledged.lock().unwrap().push(id);
    }
    Ok(())
}

/// Sends one request on the kept connection to `base`, opening one when there is none (or
/// when `base` changed).
async fn send(
    conn: &mut Option<(String, http1::SendRequest<Full<Bytes>>)>,
    base: &str,
    method: hyper::Method,
    path: &str,
    body: String,
) -> Result<(u16, Bytes), String> {
    let reusable = matches!(conn, Some((b, s)) if b == base && !s.is_closed());
    if !reusable {
        *conn = Some((base.to_string(), open(base).await?));
    }
    let (_, sender) = conn.as_mut().expect("a connection was just made");
    sender.ready().await.map_err(|e| e.to_string())?;
    let authority = base.trim_start_matches("http://");
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes))
}

async fn open(base: &str) -> Result<http1::SendRequest<Full<Bytes>>, String> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("{base} is not an http:// address"))?;
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect to {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, driver) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    // The connection's driver ends with the connection.
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Ok(sender)
}
