//! The splitter's direct HTTP/1.1 path byte by byte: responses framed every way RFC 9112
//! allows, pipelined requests, origins that answer what no proxy can pass on, and the
//! requests the direct path leaves to hyper.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Origin;
use cutover_core::Secret;
use cutover_traffic::splitter::admin::AdminClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An origin that answers each request with bytes chosen by its path, written as they are,
/// and notes which of its connections each request came on.
struct Scripted {
    addr: SocketAddr,
    /// (connection number, path) of every request but health checks.
    seen: Arc<Mutex<Vec<(u64, String)>>>,
}

/// The raw answer to `path`, and whether the origin closes the connection after it.
fn script(path: &str) -> (&'static [u8], bool) {
    match path {
        "/health" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/length" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nKeep-Alive: timeout=5\r\n\r\n",
            false,
        ),
        "/early" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/304" => (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
            false,
        ),
        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nthe body ends with the connection", true),
        "/conn-te" => (
            b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        "/posted" => (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nposted", false),
        "/extra" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK", false),
        "/big" => (BIG.as_slice(), false),
        "/cut" => (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", true),
        _ => (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", true),
    }
}

/// A 1 MiB response with a Content-Length: many reads on the way through.
static BIG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(&body);
    r
});

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(vec![]));
        let conns = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let id = conns.fetch_add(1, Ordering::SeqCst);
                let seen = s.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = find(&buf, b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        // The body, by its Content-Length; without one there is none.
                        let length = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        while buf.len() < length {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..length);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        if path != "/health" {
                            seen.lock().unwrap().push((id, path.clone()));
                        }
                        let (answer, close) = script(&path);
                        if stream.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Scripted { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<(u64, String)> {
        self.seen.lock().unwrap().clone()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A splitter whose old origin (weight 100%) is at `old_url`.
async fn splitter_to(old_url: String, new: &Origin) -> cutover_traffic::splitter::Running {
    let mut config = common::config(new, new);
    config.old.url = old_url;
    config.health_interval = Duration::from_secs(3600);
    cutover_traffic::splitter::start(config).await.unwrap()
}

/// The scripted origin as the old side (100% of users), a plain one as the new side, and
/// a splitter in front of both.
async fn scripted_splitter() -> (Scripted, Origin, cutover_traffic::splitter::Running) {
    let origin = Scripted::start().await;
    let new = Origin::start("new").await;
    let s = splitter_to(origin.url(), &new).await;
    (origin, new, s)
}

/// Writes `bytes` on a new connection and reads until the splitter closes it.
async fn transcript(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut out))
        .await
        .expect("the splitter closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn request(path: &str, method: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: app.example.test\r\nCookie: cutover_origin=old\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_pass_through_however_they_are_framed_and_pipelined_requests_keep_order() {
    let (origin, _new, s) = scripted_splitter().await;
    // Five requests in one write; the last response is delimited by the origin's close,
    // which the client then sees as the close of its own connection. A Content-Length
    // beside a Transfer-Encoding, and a 100 Continue nobody asked for, go no further.
    let all: String = [
        request("/chunked", "GET"),
        request("/length", "HEAD"),
        request("/early", "GET"),
        request("/304", "GET"),
        request("/until-close", "GET"),
    ]
    .concat();
    let got = transcript(s.addr, all.as_bytes()).await;
    assert_eq!(
        got,
        concat!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nthe body ends with the connection",
        )
    );
    // Every one of them on one origin connection: each response's end was found.
    let seen = origin.seen();
    let paths: Vec<&str> = seen.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["/chunked", "/length", "/early", "/304", "/until-close"]
    );
    assert!(seen.iter().all(|(c, _)| *c == seen[0].0), "{seen:?}");
    // The client asked to close: it is told so, and the connection ends.
    let got = transcript(
        s.addr,
        b"GET /chunked HTTP/1.1\r\nHost: a\r\nCookie: cutover_origin=old\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.contains("connection: close\r\n\r\n5\r\nhello"), "{got}");
    assert!(got.ends_with("0\r\nX-Trailer: t\r\n\r\n"), "{got}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_no_proxy_can_pass_on_is_a_502_and_a_connection_with_extra_bytes_is_not_kept() {
    let (origin, _new, s) = scripted_splitter().await;
    // A POST is not sent twice: the client gets the 502.
    let post = "POST /ssh HTTP/1.1\r\nHost: a\r\nCookie: cutover_origin=old\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let got = transcript(s.addr, post.as_bytes()).await;
    assert!(
        got.starts_with("HTTP/1.1 502 Bad Gateway\r\n")
            && got.ends_with("the old origin did not answer\n"),
        "{got}"
    );
    // A GET goes again, to the other origin, which answers.
    let get = request("/ssh", "GET").replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    let got = transcript(s.addr, get.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("x-origin: new\r\n"), "{got}");
    let status = AdminClient::new(s.admin_addr, Secret::new(common::TOKEN))
        .status()
        .await
        .unwrap();
    let old = &status.origins[0].metrics;
    assert_eq!((old.retries, old.classes[5]), (1, 1), "{old:?}");

    // A response with bytes after its end: the client gets the response, and the next
    // request goes on another connection.
    let got = transcript(
        s.addr,
        [request("/extra", "GET"), request("/until-close", "GET")]
            .concat()
            .as_bytes(),
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK"),
        "{got}"
    );
    let seen = origin.seen();
    let conn = |path: &str| seen.iter().find(|(_, p)| p == path).unwrap().0;
    assert_ne!(conn("/extra"), conn("/until-close"), "{seen:?}");

    // A response cut short by the origin: the client's connection is cut too, the only way
    // to tell it.
    let got = transcript(s.addr, request("/cut", "GET").as_bytes()).await;
    assert!(got.ends_with("\r\n\r\nonly part"), "{got}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_direct_path_does_not_take_go_through_hyper_whole() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let s = common::splitter(&old, &new).await;
    let cookie = "Cookie: cutover_origin=old\r\n";
    // A chunked upload, then a plain request on the same connection: hyper has it now.
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: a\r\n{cookie}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n\
         GET / HTTP/1.1\r\nHost: a\r\n{cookie}Connection: close\r\n\r\n"
    );
    let got = transcript(s.addr, chunked.as_bytes()).await;
    assert_eq!(got.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{got}");
    assert!(got.contains("old 7"), "{got}");
    assert!(got.ends_with("old 0"), "{got}");
    // HTTP/1.0.
    let got = transcript(
        s.addr,
        format!("GET / HTTP/1.0\r\nHost: a\r\n{cookie}\r\n").as_bytes(),
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.0 200 OK\r\n") && got.ends_with("old 0"),
        "{got}"
    );
    // Expect: 100-continue: the body is sent once the splitter says so.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        format!("PUT / HTTP/1.1\r\nHost: a\r\n{cookie}Expect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut first = [0u8; 25];
    c.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.starts_with("HTTP/1.1 200 OK\r\n") && rest.ends_with("old 5"),
        "{rest}"
    );
    // A body larger than the direct path buffers.
    let big = vec![b'x'; 300 * 1024];
    let g = common::get(s.addr, "POST", "/", Some("cutover_origin=old"), &big).await;
    assert_eq!((g.status, g.body.as_str()), (200, "old 307200"));
    // A small one, which the direct path buffers whole.
    let g = common::get(
        s.addr,
        "POST",
        "/",
        Some("cutover_origin=old"),
        &big[..1000],
    )
    .await;
    assert_eq!((g.status, g.body.as_str()), (200, "old 1000"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_copied_whole_and_its_connection_kept() {
    let (origin, _new, s) = scripted_splitter().await;
    let got = transcript(
        s.addr,
        [request("/big", "GET"), request("/until-close", "GET")]
            .concat()
            .as_bytes(),
    )
    .await;
    let expected = String::from_utf8_lossy(&BIG).into_owned();
    assert!(got.starts_with(&expected), "{} bytes", got.len());
    assert_eq!(
        &got[expected.len()..],
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nthe body ends with the connection"
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, seen[1].0, "{seen:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_header_cannot_unframe_a_message_in_either_direction() {
    let (origin, _new, s) = scripted_splitter().await;
    // A body that reads as a request of its own: were its length dropped on the way (the
    // client's Connection names Content-Length), the origin would run it.
    let inner = "GET /admin HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n";
    let smuggle = format!(
        "POST /posted HTTP/1.1\r\nHost: a\r\nCookie: cutover_origin=old\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    // The origin names Transfer-Encoding in its Connection header: the client must still
    // get the chunked framing, or the next response would read as part of this body.
    let all = [
        smuggle,
        request("/conn-te", "GET"),
        request("/until-close", "GET"),
    ]
    .concat();
    let got = transcript(s.addr, all.as_bytes()).await;
    assert_eq!(
        got,
        concat!(
            "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nposted",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nthe body ends with the connection",
        )
    );
    let paths: Vec<String> = origin.seen().into_iter().map(|(_, p)| p).collect();
    assert_eq!(paths, ["/posted", "/conn-te", "/until-close"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_to_head_has_no_body_and_the_connection_goes_on() {
    let origin = Scripted::start().await;
    let new = Origin::start("new").await;
    // Both sides are the origin that answers nonsense: the HEAD fails on each.
    let mut config = common::config(&new, &new);
    config.old.url = origin.url();
    config.new.url = origin.url();
    config.health_interval = Duration::from_secs(3600);
    let s = cutover_traffic::splitter::start(config).await.unwrap();
    let all = [request("/ssh", "HEAD"), request("/until-close", "GET")].concat();
    let got = transcript(s.addr, all.as_bytes()).await;
    assert_eq!(
        got,
        concat!(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 30\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nthe body ends with the connection",
        )
    );
    s.stop().await;
}

/// Reads what is left on `c` until the splitter closes it (an error counts as closed too).
async fn closed(c: &mut TcpStream) -> String {
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut rest))
        .await
        .expect("the splitter closes an idle connection");
    String::from_utf8_lossy(&rest).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_let_go_and_slow_answers_are_not() {
    let (old, new) = (Origin::start("old").await, Origin::start("new").await);
    let mut config = common::config(&old, &new);
    config.idle_timeout = Duration::from_millis(500);
    let s = cutover_traffic::splitter::start(config).await.unwrap();
    // A client that never sends anything.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    assert_eq!(closed(&mut silent).await, "");
    // One that stops halfway through a head.
    let mut halfway = TcpStream::connect(s.addr).await.unwrap();
    halfway
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    assert_eq!(closed(&mut halfway).await, "");
    // One that is answered, then keeps its connection without using it: on the direct
    // path, and on hyper's (after a chunked upload).
    for first in [
        "GET / HTTP/1.1\r\nHost: a\r\nCookie: cutover_origin=old\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nCookie: cutover_origin=old\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    ] {
        let mut kept = TcpStream::connect(s.addr).await.unwrap();
        kept.write_all(first.as_bytes()).await.unwrap();
        let answer = closed(&mut kept).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }
    // A response that takes longer than idle_timeout is no idle connection.
    let g = common::get(s.addr, "GET", "/slow", Some("cutover_origin=old"), b"").await;
    assert_eq!((g.status, g.body.as_str()), (200, "first,last"));
    s.stop().await;
}
