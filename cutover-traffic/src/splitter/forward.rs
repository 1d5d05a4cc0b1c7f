//! Accepting clients and forwarding their requests.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::direct;
use super::route::{choose, roll, sticky_side, Side};
use super::upstream::Upstream;
use super::{InFlight, Shared};
use crate::http::{full, Body, BoxError};

/// A client connection on its way to a worker thread, with its X-Forwarded-For value.
type Accepted = (std::net::TcpStream, HeaderValue);

/// Takes client connections and deals them to the worker threads in turn.
pub(super) async fn accept(
    listener: TcpListener,
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
    stop: CancellationToken,
) {
    let mut next = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // X-Forwarded-For's value, made once per client connection.
        let peer = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        match stream.into_std() {
            Ok(s) => {
                let _ = workers[next].send((s, peer));
                next = (next + 1) % workers.len();
            }
            Err(e) => tracing::warn!("accept failed: {e}"),
        }
    }
}

/// Starts `n` worker threads, each with an event loop of its own, and returns the queues
/// that hand them client connections.
///
/// A client connection lives on one thread from its first byte to its last, and so do
/// the origin connections its requests use: a request and its response are moved by one
/// thread, with no hand-off between threads (which, on a busy machine, costs more CPU
/// than the forwarding itself). A worker ends when its queue closes (the splitter stops
/// accepting) and its connections are done, or at once on `kill`.
pub(super) fn start_workers(
    n: usize,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    kill: &CancellationToken,
) -> Result<Vec<mpsc::UnboundedSender<Accepted>>, String> {
    let mut queues = Vec::with_capacity(n);
    for worker in 0..n {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the splitter's worker threads: {e}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (shared, stop, kill) = (shared.clone(), stop.clone(), kill.clone());
        std::thread::Builder::new()
            .name(format!("splitter-{worker}"))
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = work(worker, rx, shared, stop) => {}
                        _ = kill.cancelled() => {}
                    }
                })
            })
            .map_err(|e| format!("cannot start the splitter's worker threads: {e}"))?;
        queues.push(tx);
    }
    Ok(queues)
}

async fn work(
    worker: usize,
    mut queue: mpsc::UnboundedReceiver<Accepted>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mine = TaskTracker::new();
    while let Some((stream, peer)) = queue.recv().await {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let serve = serve(worker, stream, peer, shared.clone(), stop.clone());
        mine.spawn(shared.tasks.track_future(serve));
    }
    mine.close();
    mine.wait().await;
}

/// One client connection, until it closes or the splitter stops: on the direct path while
/// its requests fit it, then through hyper.
async fn serve(
    worker: usize,
    mut stream: tokio::net::TcpStream,
    peer: HeaderValue,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let read = match direct::serve(worker, &mut stream, peer.as_bytes(), &shared, &stop).await {
        direct::Left::Done => return,
        direct::Left::Elsewhere(read) => read,
    };
    let io = direct::Prefixed { read, io: stream };
    let idle_timeout = shared.idle_timeout;
    let service = hyper::service::service_fn(move |req| {
        let (shared, peer) = (shared.clone(), peer.clone());
        async move { Ok::<_, Infallible>(handle(shared, worker, req, peer).await) }
    });
    // A response's head and body in one buffer and one write(): for the small messages
    // most requests are, copying the body is cheaper than a writev() of several pieces
    // (bench/RESULTS.md: 18.1 against 18.5-18.7 us of CPU per request).
    let conn = hyper::server::conn::http1::Builder::new()
        .writev(false)
        // From the wait for a request's head to its end: idle keep-alive time included.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            // Finish the request in progress, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Headers that belong to one connection, not to the request.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry no hop-by-hop header but Connection: keep-alive; one look at the
    // names they have is cheaper than a removal (a hash and a probe) per name they might
    // have.
    let mut present = [false; 8];
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // Headers Connection names go too; its keep-alive and close are not header names.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for (h, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        if keep_upgrade && (h == header::CONNECTION || h == header::UPGRADE) {
            continue;
        }
        headers.remove(h);
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn error_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The request as the origin `side` gets it: its Host, forwarding headers, origin-form
/// target. `peer` is the client's address as X-Forwarded-For carries it.
fn for_origin(
    shared: &Shared,
    side: Side,
    parts: &hyper::http::request::Parts,
    peer: &HeaderValue,
    upgrade: bool,
    body: Body,
) -> Request<Body> {
    let origin = shared.origin(side);
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers, upgrade);
    let client_host = parts.headers.get(header::HOST);
    if let Some(h) = origin
        .host_header
        .as_ref()
        .or(client_host)
        .or(origin.authority_header.as_ref())
    {
        headers.insert(header::HOST, h.clone());
    }
    // The client's address appended to the chain, which several lines make together
    // (RFC 9110 5.3), as on the direct path; lines that are not text are left out.
    let chain: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let xff = if chain.is_empty() {
        peer.clone()
    } else {
        let peer = peer.to_str().unwrap_or_default();
        HeaderValue::from_str(&format!("{}, {peer}", chain.join(", "))).unwrap_or_else(|_| {
            HeaderValue::from_str(peer).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        })
    };
    headers.insert(X_FORWARDED_FOR, xff);
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(h) = client_host {
        headers.entry(X_FORWARDED_HOST).or_insert_with(|| h.clone());
    }
    // Origin-form ("/path?query") as it came, or made from an absolute-form target.
    let uri = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        parts.uri.clone()
    } else {
        parts
            .uri
            .path_and_query()
            .map(|p| hyper::Uri::from(p.clone()))
            .unwrap_or_else(|| hyper::Uri::from_static("/"))
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = hyper::Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

enum Failure {
    /// The request never left: it can go again whatever it is.
    NotSent(Option<Box<Request<Body>>>, String),
    /// It may have reached the origin.
    Sent(String),
}

/// A connection to the origin: an idle one, or a new one.
async fn connection(shared: &Shared, side: Side, worker: usize) -> Result<Upstream, String> {
    let origin = shared.origin(side);
    match origin.idle.take(worker, |u| !u.is_closed()) {
        Some(u) => Ok(u),
        // Boxed: connecting (TLS included) is rare and its future large; every request's
        // future would otherwise be as large, and be copied that size.
        None => Box::pin(fresh(shared, side)).await,
    }
}

async fn fresh(shared: &Shared, side: Side) -> Result<Upstream, String> {
    let (sender, conn) = shared
        .origin(side)
        .target
        .open()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Upstream::new(sender, conn))
}

async fn send(
    shared: &Shared,
    side: Side,
    mut up: Upstream,
    req: Request<Body>,
) -> Result<(Response<Incoming>, Upstream), Failure> {
    let mut req = req;
    // A kept connection may have been closed by the origin meanwhile: hyper hands the
    // request back when it was not written, and a fresh connection takes it.
    for is_fresh in [false, true] {
        match up.send(req).await {
            Ok(resp) => return Ok((resp, up)),
            Err(mut e) => match e.take_message() {
                Some(back) if !is_fresh => {
                    req = back;
                    up = match Box::pin(fresh(shared, side)).await {
                        Ok(u) => u,
                        Err(err) => return Err(Failure::NotSent(Some(Box::new(req)), err)),
                    };
                }
                Some(back) => {
                    return Err(Failure::NotSent(
                        Some(Box::new(back)),
                        e.error().to_string(),
                    ))
                }
                None => return Err(Failure::Sent(e.error().to_string())),
            },
        }
    }
    unreachable!("the second attempt returns")
}

async fn handle(
    shared: Arc<Shared>,
    worker: usize,
    req: Request<Incoming>,
    peer: HeaderValue,
) -> Response<Body> {
    let sticky = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| sticky_side(c, &shared.sticky_cookie));
    let up = [
        shared.origin(Side::Old).is_up(),
        shared.origin(Side::New).is_up(),
    ];
    let mut side = choose(shared.new_percent(), sticky, up, roll());
    if is_upgrade(&req) {
        return Box::pin(upgrade(shared, req, &peer, side)).await;
    }
    let replayable = super::h1::idempotent(req.method().as_str()) && req.body().is_end_stream();
    let (parts, body) = req.into_parts();
    // The client's body goes to the first attempt; later attempts happen only when it was
    // handed back unsent, or when there is none.
    let mut body: Option<Body> = Some(body.map_err(BoxError::from).boxed());
    let mut attempts = 0;
    loop {
        let origin = shared.origin(side);
        let guard = InFlight::new(&shared, side);
        let started = Instant::now();
        let failure = match connection(&shared, side, worker).await {
            Err(reason) => Failure::NotSent(None, reason),
            Ok(up) => {
                let b = body.take().unwrap_or_else(crate::http::empty);
                let out = for_origin(&shared, side, &parts, &peer, false, b);
                match send(&shared, side, up, out).await {
                    Ok((resp, up)) => {
                        origin
                            .metrics
                            .record(Some(resp.status().as_u16()), started.elapsed());
                        return respond(&shared, side, worker, sticky, resp, up, guard);
                    }
                    Err(Failure::NotSent(back, reason)) => {
                        body = back.map(|r| r.into_body());
                        Failure::NotSent(None, reason)
                    }
                    Err(f) => f,
                }
            }
        };
        drop(guard);
        let next = match failure {
            Failure::NotSent(_, reason) => {
                let again = body.is_some() || replayable;
                shared.retry_after(side, true, again, &reason, &mut attempts, started)
            }
            Failure::Sent(reason) => {
                shared.retry_after(side, false, replayable, &reason, &mut attempts, started)
            }
        };
        match next {
            Some(s) => side = s,
            None => return error_response(StatusCode::BAD_GATEWAY, &side.no_answer()),
        }
    }
}

/// The origin's response, streamed back, with the sticky cookie when the user has none for
/// this side. The connection goes back to the idle list once the body has arrived whole.
fn respond(
    shared: &Arc<Shared>,
    side: Side,
    worker: usize,
    sticky: Option<Side>,
    resp: Response<Incoming>,
    up: Upstream,
    guard: InFlight,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    if sticky != Some(side) {
        if let Some(v) = &shared.origin(side).set_cookie {
            parts.headers.append(header::SET_COOKIE, v.clone());
        }
    }
    let body = Tracked {
        inner: body,
        upstream: Some(up),
        shared: shared.clone(),
        side,
        worker,
        _guard: guard,
    };
    Response::from_parts(parts, body.boxed())
}

/// A response body that holds its request's place in flight, drives its connection while
/// the body streams, and returns the connection to the idle list when the body has arrived
/// whole.
///
/// "Whole" is the origin's body reporting its end of stream, not a poll that returns None:
/// hyper's server stops polling a body once `is_end_stream` says so (a Content-Length
/// reached, or no body at all, as for HEAD, 204 and 304), and drops it unpolled. Keying the
/// return to that last poll closed the connection after nearly every response.
struct Tracked {
    inner: Incoming,
    upstream: Option<Upstream>,
    shared: Arc<Shared>,
    side: Side,
    worker: usize,
    _guard: InFlight,
}

impl Tracked {
    /// The response has arrived whole: its connection can carry another request.
    fn done(&mut self) {
        if let Some(u) = self.upstream.take() {
            self.shared.release(self.side, self.worker, u);
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // The connection first: the bytes it reads now are the frame polled next.
        if let Some(u) = &mut self.upstream {
            u.poll_conn(cx);
        }
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.done(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.done(),
            Poll::Ready(Some(Err(_))) => self.upstream = None,
            _ => {}
        }
        r.map(|o| o.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Dropped unpolled at its end (see above); cut short otherwise, and then the
        // connection, with the rest of a response on it, is closed.
        if self.inner.is_end_stream() {
            self.done();
        }
    }
}

/// WebSocket and other upgrades: a connection of their own, then bytes both ways.
async fn upgrade(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer: &HeaderValue,
    side: Side,
) -> Response<Body> {
    let origin = shared.origin(side);
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let out = for_origin(&shared, side, &parts, peer, true, crate::http::empty());
    let started = Instant::now();
    let mut sender = match origin.target.handshake().await {
        Ok(s) => s,
        Err(e) => {
            origin.mark_failed(&e.to_string());
            origin.metrics.record(None, started.elapsed());
            tracing::warn!(origin = side.as_str(), "upgrade failed: {e}");
            return error_response(StatusCode::BAD_GATEWAY, "the origin did not answer");
        }
    };
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => {
            origin.metrics.record(None, started.elapsed());
            tracing::warn!(origin = side.as_str(), "upgrade failed: {e}");
            return error_response(StatusCode::BAD_GATEWAY, "the origin did not answer");
        }
    };
    origin
        .metrics
        .record(Some(resp.status().as_u16()), started.elapsed());
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, body.map_err(BoxError::from).boxed());
    }
    let origin_upgrade = hyper::upgrade::on(&mut resp);
    let guard = InFlight::new(&shared, side);
    shared.tasks.spawn(async move {
        let _guard = guard;
        if let (Ok(client), Ok(server)) = (client_upgrade.await, origin_upgrade.await) {
            let mut client = TokioIo::new(client);
            let mut server = TokioIo::new(server);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, crate::http::empty())
}

#[cfg(test)]
mod tests {
    /// Both paths take out the same hop-by-hop headers: this path keeps them as header
    /// names, the direct one as text.
    #[test]
    fn both_paths_know_the_same_hop_by_hop_headers() {
        assert_eq!(
            super::HOP_BY_HOP.each_ref().map(|h| h.as_str()),
            super::super::h1::HOP_BY_HOP
        );
    }
}
