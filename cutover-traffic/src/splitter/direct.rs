//! The splitter's own forwarding path for plain HTTP/1.1 requests, the bulk of any web
//! app's traffic: heads are parsed in place and written again with only what the proxy
//! changes ([`h1`]), bodies are copied as they come, and origin connections are bare
//! streams kept per worker thread.
//!
//! Forwarding through hyper turns every message into a request object with a header map
//! on each of the two connections and encodes it again; that was most of the splitter's
//! CPU per request (bench/RESULTS.md). Here the work is two parses and two copies.
//!
//! Anything else takes the general path ([`super::forward`]) for the rest of the
//! connection, with the bytes already read: upgrades, `Expect`, chunked or large request
//! bodies, HTTP/1.0, heads httparse refuses. The same rules hold on both paths: weights,
//! stickiness, retries only when safe, draining, metrics.

use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::h1::{self, Framing};
use super::route::{choose, roll, Side};
use super::{InFlight, Shared};
use crate::http::Io;

/// Request heads larger than this go the general way (whose limit is larger).
const MAX_HEAD: usize = 16 * 1024;
/// Response heads larger than this are refused with a 502.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// What one read takes at most.
const READ: usize = 16 * 1024;

/// A kept-alive connection to an origin.
pub(super) struct Raw {
    io: Pin<Box<dyn Io>>,
    buf: BytesMut,
}

impl Raw {
    /// Whether the origin has left it open while it sat idle: one look at the socket, with
    /// no one to wake. A close (or bytes nobody asked for) shows as ready; an open, quiet
    /// connection as pending.
    pub(super) fn is_open(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.io.as_mut().poll_read(&mut cx, &mut buf), Poll::Pending)
    }
}

/// How a client connection left this path.
pub(super) enum Left {
    /// Closed, or to be closed.
    Done,
    /// For the general path, with the bytes read from it so far.
    Elsewhere(BytesMut),
}

/// Serves a client connection's requests while they fit this path.
pub(super) async fn serve(
    worker: usize,
    client: &mut TcpStream,
    peer: &[u8],
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) -> Left {
    let mut input = BytesMut::with_capacity(READ);
    let mut out = Vec::with_capacity(READ);
    // Made once: a stop ends the wait for a next request, never a request in progress.
    let mut stopped = pin!(stop.cancelled());
    // The client has `idle_timeout` to send each request whole. One timer per connection,
    // moved only when it fires early (it was set for an earlier request): a timer moved
    // for every request cost more than the rest of the wait.
    let timeout = shared.idle_timeout;
    let mut idle = pin!(tokio::time::sleep(timeout));
    loop {
        let since = tokio::time::Instant::now();
        // A whole request, head and body, in `input`. A stop ends the wait until its head
        // is whole; a body on its way is let in.
        let req = loop {
            let head_whole = match h1::request(&input, &shared.sticky_cookie) {
                h1::Request::Ready(r) if (input.len() as u64) >= r.head_len as u64 + r.body_len => {
                    break r
                }
                h1::Request::Ready(_) => true,
                h1::Request::Elsewhere => return Left::Elsewhere(input),
                h1::Request::Partial if input.len() >= MAX_HEAD => return Left::Elsewhere(input),
                h1::Request::Partial => false,
            };
            input.reserve(READ);
            let read = tokio::select! {
                r = client.read_buf(&mut input) => r,
                _ = stopped.as_mut(), if !head_whole => return Left::Done,
                _ = idle.as_mut() => {
                    let due = since + timeout;
                    if tokio::time::Instant::now() >= due {
                        return Left::Done;
                    }
                    idle.as_mut().reset(due);
                    continue;
                }
            };
            if !matches!(read, Ok(n) if n > 0) {
                return Left::Done;
            }
        };
        let whole = req.head_len + req.body_len as usize;
        let keep = exchange(
            worker,
            client,
            &input[..whole],
            &req,
            peer,
            shared,
            stop,
            &mut out,
        )
        .await;
        input.advance(whole);
        if !keep || req.close || stop.is_cancelled() {
            return Left::Done;
        }
    }
}

enum Failure {
    /// The request did not reach the origin whole: it can go again whatever it is.
    NotSent(String),
    /// It may have reached the origin.
    Sent(String),
}

/// One request and its response; `msg` is the whole request. False when the client
/// connection must close after it.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    worker: usize,
    client: &mut TcpStream,
    msg: &[u8],
    req: &h1::RequestInfo,
    peer: &[u8],
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    out: &mut Vec<u8>,
) -> bool {
    let up = [
        shared.origin(Side::Old).is_up(),
        shared.origin(Side::New).is_up(),
    ];
    let mut side = choose(shared.new_percent(), req.sticky, up, roll());
    let mut attempts = 0;
    loop {
        let origin = shared.origin(side);
        let guard = InFlight::new(shared, side);
        let started = Instant::now();
        out.clear();
        h1::origin_head(
            &msg[..req.head_len],
            &h1::Forwarding {
                host: origin.host_header.as_ref().map(|h| h.as_bytes()),
                authority: origin
                    .authority_header
                    .as_ref()
                    .map(|h| h.as_bytes())
                    .unwrap_or_default(),
                peer,
            },
            out,
        );
        out.extend_from_slice(&msg[req.head_len..]);
        let failure = match send(shared, side, worker, out).await {
            Err(f) => f,
            Ok(raw) => {
                match relay(shared, side, worker, client, req, raw, out, started, stop).await {
                    Ok(keep) => return keep,
                    Err(f) => f,
                }
            }
        };
        drop(guard);
        // The whole request is still in `msg`: one that did not reach the origin can go
        // again whatever it is.
        let next = match failure {
            Failure::NotSent(reason) => {
                shared.retry_after(side, true, true, &reason, &mut attempts, started)
            }
            Failure::Sent(reason) => {
                shared.retry_after(side, false, req.replayable, &reason, &mut attempts, started)
            }
        };
        match next {
            Some(s) => side = s,
            None => return bad_gateway(client, side, req, out).await,
        }
    }
}

/// Writes the request to a kept connection of `side`, or to a new one when none is kept
/// or the kept one turns out closed.
async fn send(shared: &Shared, side: Side, worker: usize, msg: &[u8]) -> Result<Raw, Failure> {
    let origin = shared.origin(side);
    if let Some(mut raw) = kept(origin, worker).await {
        // A write that fails did not deliver the request whole: the origin closed the
        // connection as it went idle, and a fresh one takes it.
        if write(&mut raw, msg).await.is_ok() {
            return Ok(raw);
        }
    }
    // Boxed: connecting (TLS included) is rare and its future large.
    let io = Box::pin(origin.target.connect())
        .await
        .map_err(|e| Failure::NotSent(e.to_string()))?;
    let mut raw = Raw {
        io,
        buf: BytesMut::new(),
    };
    match write(&mut raw, msg).await {
        Ok(()) => Ok(raw),
        Err(e) => Err(Failure::NotSent(format!(
            "{:?} closed the connection: {e}",
            origin.target
        ))),
    }
}

/// A kept connection of `origin` that is still open, if any.
async fn kept(origin: &super::Origin, worker: usize) -> Option<Raw> {
    while let Some(mut raw) = origin.raw.take(worker, |_| true) {
        // Outside the task's budget: a spent budget would make any socket look quiet.
        let open = tokio::task::unconstrained(std::future::poll_fn(|_| Poll::Ready(raw.is_open())));
        if open.await {
            return Some(raw);
        }
    }
    None
}

/// Writes a whole message to an origin. Flushed: a TLS stream keeps what it encrypted
/// until told to.
async fn write(raw: &mut Raw, msg: &[u8]) -> std::io::Result<()> {
    raw.io.write_all(msg).await?;
    raw.io.flush().await
}

/// Reads the origin's response and passes it on to the client as it comes. Ok(false):
/// the client connection must close (its response was cut, or it is delimited by the
/// close). Err only before the final response's head has gone to the client.
#[allow(clippy::too_many_arguments)]
async fn relay(
    shared: &Arc<Shared>,
    side: Side,
    worker: usize,
    client: &mut TcpStream,
    req: &h1::RequestInfo,
    mut raw: Raw,
    out: &mut Vec<u8>,
    started: Instant,
    stop: &CancellationToken,
) -> Result<bool, Failure> {
    let origin = shared.origin(side);
    let mut informational = false;
    let res = loop {
        let res = read_head(&mut raw, req.head_method, informational).await?;
        if res.status == 101 {
            return Err(Failure::Sent(
                "the origin switched protocols unasked".into(),
            ));
        }
        if res.status >= 200 {
            break res;
        }
        // 102 and 103 are passed on, and the response follows. 100 is not: the client
        // did not ask for it (a request with `Expect` goes the general way).
        if res.status == 100 {
            raw.buf.advance(res.head_len);
            continue;
        }
        out.clear();
        h1::client_head(&raw.buf[..res.head_len], None, false, out);
        raw.buf.advance(res.head_len);
        if client.write_all(out).await.is_err() {
            return Ok(false);
        }
        informational = true;
    };
    let mut body = Body::new(res.framing);
    // The body's first bytes go in the same write as the head; bytes that are not what
    // the head says fail the request while the client has been sent nothing.
    let (n, mut done) = body
        .take(&raw.buf[res.head_len..])
        .map_err(|why| Failure::Sent(format!("the origin's body is not {why}")))?;
    origin.metrics.record(Some(res.status), started.elapsed());
    // After a stop the client is told this response is the connection's last.
    let close = req.close || res.framing == Framing::UntilClose || stop.is_cancelled();
    let cookie = (req.sticky != Some(side))
        .then(|| origin.set_cookie.as_ref().map(|c| c.as_bytes()))
        .flatten();
    out.clear();
    h1::client_head(&raw.buf[..res.head_len], cookie, close, out);
    raw.buf.advance(res.head_len);
    out.extend_from_slice(&raw.buf[..n]);
    raw.buf.advance(n);
    if client.write_all(out).await.is_err() {
        return Ok(false);
    }
    while !done {
        raw.buf.clear();
        raw.buf.reserve(READ);
        let read = raw.io.read_buf(&mut raw.buf).await;
        if !matches!(read, Ok(n) if n > 0) {
            // The close ends a body delimited by it; any other body is cut short, and so
            // is the client's connection, the only way to tell it.
            return Ok(false);
        }
        let (n, end) = match body.take(&raw.buf) {
            Ok(x) => x,
            Err(_) => return Ok(false),
        };
        done = end;
        if client.write_all(&raw.buf[..n]).await.is_err() {
            return Ok(false);
        }
        raw.buf.advance(n);
    }
    // Bytes after the response are not ours to guess at: that connection goes.
    if res.keep_alive && raw.buf.is_empty() && side.share(shared.new_percent()) > 0 {
        raw.buf.clear();
        origin.raw.put(worker, raw);
    }
    Ok(!close)
}

/// Reads a response head into `raw.buf`.
async fn read_head(
    raw: &mut Raw,
    head_method: bool,
    informational: bool,
) -> Result<h1::ResponseInfo, Failure> {
    loop {
        if !raw.buf.is_empty() {
            match h1::response(&raw.buf, head_method) {
                h1::Response::Ready(r) => return Ok(r),
                h1::Response::Bad(why) => {
                    return Err(Failure::Sent(format!("the origin answered with {why}")))
                }
                h1::Response::Partial if raw.buf.len() >= MAX_RESPONSE_HEAD => {
                    return Err(Failure::Sent(
                        "the origin's response head is too large".into(),
                    ))
                }
                h1::Response::Partial => {}
            }
        }
        raw.buf.reserve(READ);
        match raw.io.read_buf(&mut raw.buf).await {
            Ok(0) if informational => {
                // Part of its answer has gone to the client: no other may follow.
                return Err(Failure::Sent("the origin closed after a 1xx".into()));
            }
            Ok(0) => {
                return Err(Failure::Sent(
                    "the origin closed the connection before it answered".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(Failure::Sent(format!("reading the origin's answer: {e}"))),
        }
    }
}

/// Where a response body ends, as its bytes go by.
enum Body {
    Left(u64),
    Chunks(h1::Chunks),
    UntilClose,
}

impl Body {
    fn new(framing: Framing) -> Body {
        match framing {
            Framing::Empty => Body::Left(0),
            Framing::Length(n) => Body::Left(n),
            Framing::Chunked => Body::Chunks(h1::Chunks::default()),
            Framing::UntilClose => Body::UntilClose,
        }
    }

    /// How many of `buf`'s bytes are the body's, and whether it ends with them.
    fn take(&mut self, buf: &[u8]) -> Result<(usize, bool), &'static str> {
        match self {
            Body::Left(left) => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                Ok((n as usize, *left == 0))
            }
            Body::Chunks(c) => c.scan(buf),
            Body::UntilClose => Ok((buf.len(), false)),
        }
    }
}

/// The answer when no origin could: 502, the same text as on the general path (its
/// length only, for HEAD).
async fn bad_gateway(
    client: &mut TcpStream,
    side: Side,
    req: &h1::RequestInfo,
    out: &mut Vec<u8>,
) -> bool {
    let text = format!("{}\n", side.no_answer());
    out.clear();
    out.extend_from_slice(
        b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\n",
    );
    if req.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", text.len()).as_bytes());
    if !req.head_method {
        out.extend_from_slice(text.as_bytes());
    }
    client.write_all(out).await.is_ok()
}

/// A client connection handed to the general path: the bytes already read come first.
pub(super) struct Prefixed {
    pub(super) read: BytesMut,
    pub(super) io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
