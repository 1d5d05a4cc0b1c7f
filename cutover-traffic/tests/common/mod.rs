//! Real servers for the tests: HTTP origins that can fail or die, BIND, Prometheus, a steady
//! load of users, and our fake of Route 53.

#![allow(dead_code)]

pub mod prometheus;
#[cfg(feature = "route53")]
pub mod route53;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cutover_core::plan::{DnsProviderSettings, DnsSettings, RecordKind};
use cutover_core::Secret;
use cutover_traffic::canary::Weights;
use cutover_traffic::http::{full, Body};
use cutover_traffic::splitter::admin::AdminClient;
use cutover_traffic::splitter::{self, Config, OriginConfig};
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An HTTP origin: answers with its name, can be told to fail, or be killed.
///
/// `/health` fails along with the app; `/live` always passes, like a liveness probe that
/// does not touch what broke (the canary's gates, not the health checks, must catch that).
pub struct Origin {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub failing: Arc<AtomicBool>,
    /// Requests, health checks aside.
    pub hits: Arc<AtomicU64>,
    /// Connections accepted.
    pub conns: Arc<AtomicU64>,
    cut: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start(name: &'static str) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let failing = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (f, h, c, cut2) = (failing.clone(), hits.clone(), conns.clone(), cut.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task closes every one of them.
            let mut open = JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(_) => continue,
                    },
                    _ = cut2.notified() => {
                        open.abort_all();
                        continue;
                    }
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (f, h) = (f.clone(), h.clone());
                open.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (f, h) = (f.clone(), h.clone());
                        async move { Ok::<_, Infallible>(answer(name, req, &f, &h).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
                while open.try_join_next().is_some() {}
            }
        });
        Origin {
            name,
            addr,
            failing,
            hits,
            conns,
            cut,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn fail(&self, yes: bool) {
        self.failing.store(yes, Ordering::SeqCst);
    }

    /// Closes every connection it has, as a server does with connections idle for too
    /// long, and goes on listening.
    pub fn close_connections(&self) {
        self.cut.notify_one();
    }

    /// Stops listening and cuts every connection.
    pub fn kill(&self) {
        self.task.abort();
    }
}

async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
    failing: &AtomicBool,
    hits: &AtomicU64,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let forwarded = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
        .map(|h| {
            req.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        })
        .join(" | ");
    let private = req
        .headers()
        .get("x-private")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let fail = failing.load(Ordering::SeqCst);
    if path == "/health" {
        let code = if fail { 503 } else { 200 };
        return with(name, code, full("health"), &host);
    }
    if path == "/live" {
        return with(name, 200, full("live"), &host);
    }
    hits.fetch_add(1, Ordering::SeqCst);
    if path == "/ws" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(cutover_traffic::http::empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut().insert("upgrade", "echo".parse().unwrap());
        r.headers_mut().insert("x-origin", name.parse().unwrap());
        return r;
    }
    if fail {
        return with(name, 500, full("failing"), &host);
    }
    if path == "/slow" {
        // Streams two chunks a while apart: a request that is in flight for that long.
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, cutover_traffic::http::BoxError>>(2);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"first,"))))
                .await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"last")))).await;
        });
        let stream = tokio_stream_from(rx);
        return with(name, 200, StreamBody::new(stream).boxed(), &host);
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut r = with(name, 200, full(format!("{name} {}", body.len())), &host);
    if let Ok(v) = forwarded.parse() {
        r.headers_mut().insert("x-seen-forwarded", v);
    }
    if let Ok(v) = private.parse() {
        r.headers_mut().insert("x-seen-private", v);
    }
    r
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn with(name: &str, code: u16, body: Body, host: &str) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r.headers_mut().insert("x-origin", name.parse().unwrap());
    r.headers_mut().insert(
        "x-seen-host",
        host.parse().unwrap_or_else(|_| "?".parse().unwrap()),
    );
    r
}

pub const TOKEN: &str = "test-admin-token-5d1";

pub fn config(old: &Origin, new: &Origin) -> Config {
    let origin = |o: &Origin| OriginConfig {
        url: o.url(),
        host: None,
        sni: None,
        ca_file: None,
    };
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Secret::new(TOKEN),
        old: origin(old),
        new: origin(new),
        sticky_cookie: "cutover_origin".into(),
        health_path: "/health".into(),
        health_interval: Duration::from_millis(200),
        unhealthy_after: 2,
        healthy_after: 2,
        drain_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(75),
        retries: 2,
        state_path: None,
    }
}

/// A response as the tests look at it.
pub struct Got {
    pub status: u16,
    pub origin: String,
    pub body: String,
    pub set_cookie: Option<String>,
    pub seen_host: String,
    /// X-Forwarded-For, -Proto and -Host as the origin saw them, joined by " | ".
    pub seen_forwarded: String,
    /// X-Private as the origin saw it, "-" for none.
    pub seen_private: String,
}

/// One request through a new connection, like a new user.
pub async fn get(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &[u8],
) -> Got {
    match cookie {
        Some(c) => get_with(addr, method, path, &[("cookie", c)], body).await,
        None => get_with(addr, method, path, &[], body).await,
    }
}

/// The same with any headers (Host is app.example.test).
pub async fn get_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Got {
    let target = cutover_traffic::http::Target::new(&format!("http://{addr}"), None, None).unwrap();
    let mut sender = target.handshake().await.expect("connect to the splitter");
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app.example.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(full(body.to_vec())).unwrap())
        .await
        .expect("a response from the splitter");
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (origin, set_cookie, seen_host, seen_forwarded, seen_private) = (
        h("x-origin").unwrap_or_default(),
        h("set-cookie"),
        h("x-seen-host").unwrap_or_default(),
        h("x-seen-forwarded").unwrap_or_default(),
        h("x-seen-private").unwrap_or_default(),
    );
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Got {
        status,
        origin,
        body: String::from_utf8_lossy(&body).into_owned(),
        set_cookie,
        seen_host,
        seen_forwarded,
        seen_private,
    }
}

pub async fn splitter(old: &Origin, new: &Origin) -> splitter::Running {
    splitter::start(config(old, new)).await.unwrap()
}

/// Waits (bounded generously) until `f` holds.
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting: {what}");
}

/// Requests without cookies until dropped, like a stream of new users.
pub struct Load(Arc<AtomicBool>);

impl Load {
    pub fn start(addr: SocketAddr) -> Load {
        Load::users(addr, 2, None)
    }

    /// `workers` users sending requests one after the other, with `cookie` if any.
    pub fn users(addr: SocketAddr, workers: usize, cookie: Option<&'static str>) -> Load {
        Load::paced(addr, workers, cookie, Duration::from_millis(2))
    }

    /// The same with `pause` between a user's requests.
    pub fn paced(
        addr: SocketAddr,
        workers: usize,
        cookie: Option<&'static str>,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..workers {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    get(addr, "GET", "/", cookie, b"").await;
                    tokio::time::sleep(pause).await;
                }
            });
        }
        Load(stop)
    }
}

/// A splitter in front of `old` and `new` whose health checks use `/live`, which keeps
/// passing when the app fails: the canary's gates, not the health checks, must catch a
/// failing app.
pub async fn live_splitter(old: &Origin, new: &Origin) -> splitter::Running {
    let mut config = config(old, new);
    config.health_path = "/live".into();
    splitter::start(config).await.unwrap()
}

/// The splitter's admin client, remembering every weight the canary asked it to set.
pub struct Recording(pub AdminClient, pub Mutex<Vec<u8>>);

impl Recording {
    pub fn new(admin: &AdminClient) -> Recording {
        Recording(admin.clone(), Mutex::new(vec![]))
    }
}

impl Weights for Recording {
    fn set(&self, p: u8) -> BoxFuture<'_, Result<(), String>> {
        self.1.lock().unwrap().push(p);
        self.0.set(p)
    }
}

/// The canary report's check lines ("check passed at 10%", ...).
pub fn checks(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l.trim_start())
        .filter(|l| l.starts_with("check "))
        .collect()
}

/// www.example.com A in example.com, moving from 192.0.2.10 to 198.51.100.20, through
/// `provider`.
pub fn dns_settings(provider: DnsProviderSettings) -> DnsSettings {
    DnsSettings {
        zone: "example.com".into(),
        name: "www.example.com".into(),
        record_type: RecordKind::A,
        old: vec!["192.0.2.10".into()],
        new: vec!["198.51.100.20".into()],
        low_ttl: Duration::from_secs(60),
        authoritative: vec![],
        resolvers: vec![],
        provider,
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub use cutover_testkit::free_port;
