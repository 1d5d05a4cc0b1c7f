//! HTTP/1.1 messages as the splitter's own forwarding path ([`super::direct`]) reads and
//! rewrites them: heads parsed in place (httparse) and written again with only what the
//! proxy changes, bodies framed but copied as they are.
//!
//! Everything here is pure: bytes in, bytes out, tested without any IO.

use super::route::{sticky_side, Side};

/// Headers parsed at most, as many as hyper takes: a request with more goes the general
/// way (which refuses it), a response with more is refused.
pub(super) const MAX_HEADERS: usize = 100;

/// How a body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    Empty,
    /// Content-Length.
    Length(u64),
    /// Transfer-Encoding ending in chunked: copied as it is, chunk by chunk.
    Chunked,
    /// Until the sender closes the connection (a response without a length).
    UntilClose,
}

/// Methods that may be sent twice with the effect of once (RFC 9110 9.2.2): the only ones
/// retried after a failure that may have reached the origin, on either path.
pub(super) fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Headers that belong to one connection, not to the message (RFC 9110 7.6.1), lowercase.
pub(super) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The comma-separated tokens of every header `name`.
fn tokens<'h, 'b: 'h>(
    headers: &'h [httparse::Header<'b>],
    name: &'static str,
) -> impl Iterator<Item = &'b [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(trim)
        .filter(|t| !t.is_empty())
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Room for a message's headers, left uninitialised: httparse fills what it uses, and a
/// head has a few of the hundred.
fn slots<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// The headers a message's Connection header names: they are this connection's only. Read
/// once per message (most name none).
struct Named<'b>(Vec<&'b [u8]>);

impl<'b> Named<'b> {
    fn of(headers: &[httparse::Header<'b>]) -> Named<'b> {
        Named(
            tokens(headers, "connection")
                .filter(|t| {
                    !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close")
                })
                .collect(),
        )
    }

    /// Whether `name` is one of them. Never the headers that frame the message: a
    /// Connection that names them would leave the body this proxy forwards without its
    /// length, for the next hop to read as another message.
    fn has(&self, name: &str) -> bool {
        !self.0.is_empty()
            && !name.eq_ignore_ascii_case("content-length")
            && !name.eq_ignore_ascii_case("transfer-encoding")
            && self
                .0
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// The single Content-Length, if any; Err when there are several that differ or one is not
/// a number (a message no proxy may guess at).
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ()> {
    let mut found = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for t in h.value.split(|b| *b == b',').map(trim) {
            if t.is_empty() || !t.iter().all(u8::is_ascii_digit) || t.len() > 18 {
                return Err(());
            }
            let n: u64 = std::str::from_utf8(t)
                .map_err(|_| ())?
                .parse()
                .map_err(|_| ())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// What the splitter needs of a client's request, read from its head.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RequestInfo {
    /// Bytes of the head, the blank line included.
    pub head_len: usize,
    /// The request body's length (requests taken here have none or a Content-Length).
    pub body_len: u64,
    /// HEAD: the response has no body whatever its headers say.
    pub head_method: bool,
    /// Safe to send again after a connection failure: idempotent, no body.
    pub replayable: bool,
    /// The client asked to close the connection after this response.
    pub close: bool,
    /// The side the user's sticky cookie names.
    pub sticky: Option<Side>,
}

/// The outcome of reading a client's buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Request {
    /// The head is not whole yet.
    Partial,
    /// Not for this path: hyper takes the connection from here, with these same bytes
    /// (an upgrade, `Expect`, a chunked or large body, HTTP/1.0, a head it cannot parse).
    Elsewhere,
    Ready(RequestInfo),
}

/// Request bodies larger than this go the general way, which sends and receives at once;
/// this path sends the body whole before it reads the response.
pub(super) const MAX_BODY: u64 = 64 * 1024;

/// Reads a request head from the start of `buf`.
pub(super) fn request(buf: &[u8], sticky_cookie: &str) -> Request {
    let mut slots = slots();
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Request::Partial,
        Err(_) => return Request::Elsewhere,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Request::Elsewhere;
    };
    let h = &*req.headers;
    if method == "CONNECT" || !path.starts_with('/') {
        return Request::Elsewhere;
    }
    let elsewhere = ["upgrade", "expect", "transfer-encoding"];
    if h.iter()
        .any(|x| elsewhere.iter().any(|e| x.name.eq_ignore_ascii_case(e)))
    {
        return Request::Elsewhere;
    }
    let body_len = match content_length(h) {
        Ok(n) => n.unwrap_or(0),
        Err(()) => return Request::Elsewhere,
    };
    if body_len > MAX_BODY {
        return Request::Elsewhere;
    }
    let sticky = h
        .iter()
        .filter(|x| x.name.eq_ignore_ascii_case("cookie"))
        .filter_map(|x| std::str::from_utf8(x.value).ok())
        .find_map(|c| sticky_side(c, sticky_cookie));
    let close = tokens(h, "connection").any(|t| t.eq_ignore_ascii_case(b"close"));
    Request::Ready(RequestInfo {
        head_len,
        body_len,
        head_method: method == "HEAD",
        replayable: idempotent(method) && body_len == 0,
        close,
        sticky,
    })
}

/// What the head sent to an origin adds to the client's.
pub(super) struct Forwarding<'a> {
    /// The origin's configured Host, if any.
    pub host: Option<&'a [u8]>,
    /// The origin's authority, the Host when neither the origin nor the client sets one.
    pub authority: &'a [u8],
    /// The client's address, for X-Forwarded-For.
    pub peer: &'a [u8],
}

/// Writes the head of a request already read by [`request`] (`head` is its bytes) as the
/// origin gets it: hop-by-hop headers out, Host set, forwarding headers added; the same
/// rules as the general path's.
pub(super) fn origin_head(head: &[u8], f: &Forwarding<'_>, out: &mut Vec<u8>) {
    let mut slots = slots();
    let mut req = httparse::Request::new(&mut []);
    // The head was parsed whole before; nothing else reaches here.
    if !matches!(
        req.parse_with_uninit_headers(head, &mut slots),
        Ok(httparse::Status::Complete(_))
    ) {
        debug_assert!(false, "origin_head on a head that does not parse");
        return;
    }
    let h = &*req.headers;
    let named = Named::of(h);
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut client_host = None;
    let mut xff: Option<Vec<u8>> = None;
    let (mut proto, mut fwd_host) = (false, false);
    // The body's length as this proxy framed it, written once by the proxy: never lost to
    // a Connection header, and `2, 2` becomes `2`.
    if let Ok(Some(n)) = content_length(h) {
        header(out, b"content-length", n.to_string().as_bytes());
    }
    for x in h {
        let name = x.name;
        if name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            client_host.get_or_insert(x.value);
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            // Several lines are one list (RFC 9110 5.3).
            let chain = xff.get_or_insert_with(Vec::new);
            if !chain.is_empty() {
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(x.value);
            continue;
        }
        if is_hop_by_hop(name) || named.has(name) {
            continue;
        }
        proto |= name.eq_ignore_ascii_case("x-forwarded-proto");
        fwd_host |= name.eq_ignore_ascii_case("x-forwarded-host");
        header(out, name.as_bytes(), x.value);
    }
    let host = f.host.or(client_host).unwrap_or(f.authority);
    header(out, b"host", host);
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(chain) = xff.filter(|c| !c.is_empty()) {
        out.extend_from_slice(&chain);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(f.peer);
    out.extend_from_slice(b"\r\n");
    if !proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
    if let (Some(h), false) = (client_host, fwd_host) {
        header(out, b"x-forwarded-host", h);
    }
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the splitter needs of an origin's response head.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ResponseInfo {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The origin keeps the connection for another request.
    pub keep_alive: bool,
}

/// The outcome of reading an origin's buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Response {
    Partial,
    /// Not HTTP/1.x as a proxy can pass on: the reason.
    Bad(&'static str),
    Ready(ResponseInfo),
}

/// Reads a response head from the start of `buf`; `head_method`: the request was HEAD.
pub(super) fn response(buf: &[u8], head_method: bool) -> Response {
    let mut slots = slots();
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Response::Partial,
        Err(httparse::Error::TooManyHeaders) => return Response::Bad("too many headers"),
        Err(_) => return Response::Bad("not an HTTP/1 response"),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Response::Bad("not an HTTP/1 response");
    };
    if !(100..600).contains(&status) {
        return Response::Bad("a status code outside 100-599");
    }
    let h = &*resp.headers;
    let close = tokens(h, "connection").any(|t| t.eq_ignore_ascii_case(b"close"));
    let keep = tokens(h, "connection").any(|t| t.eq_ignore_ascii_case(b"keep-alive"));
    let chunked_last = h
        .iter()
        .filter(|x| x.name.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|x| x.value.split(|b| *b == b','))
        .map(trim)
        .rfind(|t| !t.is_empty())
        .map(|t| t.eq_ignore_ascii_case(b"chunked"));
    let framing = if head_method || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match chunked_last {
            Some(true) => Framing::Chunked,
            // A transfer coding without chunked last: it ends with the connection.
            Some(false) => Framing::UntilClose,
            None => match content_length(h) {
                Ok(Some(0)) => Framing::Empty,
                Ok(Some(n)) => Framing::Length(n),
                Ok(None) => Framing::UntilClose,
                Err(()) => return Response::Bad("an invalid Content-Length"),
            },
        }
    };
    Response::Ready(ResponseInfo {
        head_len,
        status,
        keep_alive: framing != Framing::UntilClose && !close && (version == 1 || keep),
        framing,
    })
}

/// Writes a response head already read by [`response`] as the client gets it: HTTP/1.1,
/// hop-by-hop headers out (Transfer-Encoding stays: the body is passed on as it came),
/// the sticky cookie when given, and `Connection: close` when the connection to the client
/// ends after it.
pub(super) fn client_head(head: &[u8], set_cookie: Option<&[u8]>, close: bool, out: &mut Vec<u8>) {
    let mut slots = slots();
    let mut resp = httparse::Response::new(&mut []);
    if !matches!(
        httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, head, &mut slots),
        Ok(httparse::Status::Complete(_))
    ) {
        debug_assert!(false, "client_head on a head that does not parse");
        return;
    }
    let h = &*resp.headers;
    let named = Named::of(h);
    out.extend_from_slice(b"HTTP/1.1 ");
    // Three digits: `response` refused any code outside 100-599.
    let code = resp.code.unwrap_or(502);
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // With a Transfer-Encoding, a Content-Length is wrong, and passed on beside it would
    // let the client frame the body otherwise than this proxy did (RFC 9112 6.3).
    let encoded = h
        .iter()
        .any(|x| x.name.eq_ignore_ascii_case("transfer-encoding"));
    for x in h {
        if is_hop_by_hop(x.name)
            || named.has(x.name)
            || (encoded && x.name.eq_ignore_ascii_case("content-length"))
        {
            continue;
        }
        header(out, x.name.as_bytes(), x.value);
    }
    if let Some(c) = set_cookie {
        header(out, b"set-cookie", c);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Follows a chunked body through the bytes that carry it, to find where it ends; the
/// bytes themselves are passed on unchanged.
#[derive(Debug, Default)]
pub(super) struct Chunks {
    state: State,
    /// The chunk size being read, then what is left of the chunk's data.
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    /// Whitespace after the size: only more of it, `;` or CR may follow.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunks {
    /// Reads `buf`, the next bytes of the body: how many of them belong to it (all, or up
    /// to its end), and whether it has ended. Err when they are not chunked encoding.
    pub(super) fn scan(&mut self, buf: &[u8]) -> Result<(usize, bool), &'static str> {
        let mut i = 0;
        while i < buf.len() && self.state != State::Done {
            if self.state == State::Data {
                let take = self.size.min((buf.len() - i) as u64);
                self.size -= take;
                i += take as usize;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = buf[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits >= 15 {
                        return Err("a chunk size too large");
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + (b as char).to_digit(16).unwrap_or(0) as u64;
                    State::Size
                }
                (State::Size, b' ' | b'\t') if self.digits > 0 => State::SizeSpace,
                (State::Size | State::SizeSpace, b';') if self.digits > 0 => State::Extension,
                (State::Size | State::SizeSpace, b'\r') if self.digits > 0 => State::SizeLf,
                (State::SizeSpace, b' ' | b'\t') => State::SizeSpace,
                (State::Extension, b'\r') => State::SizeLf,
                (State::Extension, b'\n') => return Err("a bare LF in a chunk extension"),
                (State::Extension, _) => State::Extension,
                (State::SizeLf, b'\n') if self.size == 0 => State::TrailerStart,
                (State::SizeLf, b'\n') => State::Data,
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => {
                    self.digits = 0;
                    State::Size
                }
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart | State::Trailer, b'\n') => {
                    return Err("a bare LF in a trailer")
                }
                (State::Trailer, b'\r') => State::TrailerLf,
                (State::TrailerStart | State::Trailer, _) => State::Trailer,
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::EndLf, b'\n') => State::Done,
                _ => return Err("not chunked encoding"),
            };
        }
        Ok((i, self.state == State::Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(r: Request) -> RequestInfo {
        match r {
            Request::Ready(i) => i,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_requests_are_taken_and_the_rest_goes_elsewhere() {
        let get = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nCookie: a=1; cutover_origin=new\r\n\r\nGET";
        let i = ready(request(get, "cutover_origin"));
        assert_eq!(i.head_len, get.len() - 3);
        assert_eq!(
            (i.body_len, i.replayable, i.close, i.sticky),
            (0, true, false, Some(Side::New))
        );
        let post = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let i = ready(request(post, "cutover_origin"));
        assert_eq!((i.body_len, i.replayable, i.close), (5, false, true));
        assert_eq!(request(b"GET / HTTP/1.1\r\nHost:", "c"), Request::Partial);
        for other in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert_eq!(
                request(other, "c"),
                Request::Elsewhere,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        // The same length twice is one length.
        let twice = b"PUT / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nok";
        assert_eq!(ready(request(twice, "c")).body_len, 2);
        assert!(forwarded(&twice[..twice.len() - 2], None)
            .starts_with("PUT / HTTP/1.1\r\ncontent-length: 2\r\nhost:"));
    }

    fn forwarded(head: &[u8], host: Option<&[u8]>) -> String {
        let mut out = vec![];
        let f = Forwarding {
            host,
            authority: b"origin:8080",
            peer: b"10.0.0.9",
        };
        origin_head(head, &f, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_origin_gets_host_and_forwarding_headers_and_no_hop_by_hop_ones() {
        let head = b"GET /p HTTP/1.1\r\nHost: app.example\r\nConnection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nAccept: */*\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n";
        assert_eq!(
            forwarded(head, None),
            "GET /p HTTP/1.1\r\nAccept: */*\r\nhost: app.example\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: app.example\r\n\r\n"
        );
        // The origin's own Host wins; the client's stays in X-Forwarded-Host, which a
        // client's own value keeps, as X-Forwarded-Proto does.
        let head = b"POST /p HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: front\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            forwarded(head, Some(b"new.internal")),
            "POST /p HTTP/1.1\r\ncontent-length: 0\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: front\r\nhost: new.internal\r\nx-forwarded-for: 10.0.0.9\r\n\r\n"
        );
        // A Connection header cannot take the body's length away: the origin would read
        // the body as a request of its own.
        let smuggle = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 14\r\n\r\n";
        let out = forwarded(smuggle, None);
        assert!(
            out.starts_with("POST / HTTP/1.1\r\ncontent-length: 14\r\nhost: a\r\n"),
            "{out}"
        );
        // No Host anywhere: the origin's authority.
        assert_eq!(
            forwarded(b"GET / HTTP/1.1\r\n\r\n", None),
            "GET / HTTP/1.1\r\nhost: origin:8080\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    fn info(r: Response) -> ResponseInfo {
        match r {
            Response::Ready(i) => i,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn responses_are_framed_as_rfc_9112_says() {
        let r = |head: &str, head_method: bool| info(response(head.as_bytes(), head_method));
        let ok = r("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", false);
        assert_eq!((ok.framing, ok.keep_alive), (Framing::Length(12), true));
        assert_eq!(
            r("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", true).framing,
            Framing::Empty
        );
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let h = format!("HTTP/1.1 {status}\r\nContent-Length: 12\r\n\r\n");
            assert_eq!(r(&h, false).framing, Framing::Empty, "{status}");
        }
        let c = r(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!((c.framing, c.keep_alive), (Framing::Chunked, true));
        let u = r("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((u.framing, u.keep_alive), (Framing::UntilClose, false));
        let closing = r(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(!closing.keep_alive);
        let old = r("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!old.keep_alive);
        let kept = r(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(kept.keep_alive);
        // An empty list element is no coding (RFC 9110 5.6.1); a coding without chunked
        // last ends with the connection.
        assert_eq!(
            r(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, \r\n\r\n",
                false
            )
            .framing,
            Framing::Chunked
        );
        assert_eq!(
            r(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false
            )
            .framing,
            Framing::UntilClose
        );
        assert!(matches!(
            response(b"HTTP/1.1 099 Odd\r\n\r\n", false),
            Response::Bad(_)
        ));
        assert!(matches!(
            response(b"HTTP/1.1 600 Odd\r\n\r\n", false),
            Response::Bad(_)
        ));
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\nA: b", false),
            Response::Partial
        );
        assert!(matches!(
            response(b"SSH-2.0-OpenSSH\r\n\r\n", false),
            Response::Bad(_)
        ));
        assert!(matches!(
            response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Response::Bad(_)
        ));
    }

    #[test]
    fn the_client_gets_the_response_without_hop_by_hop_headers() {
        let head = b"HTTP/1.1 201 Created\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 12\r\nX-Origin: new\r\n\r\n";
        let mut out = vec![];
        client_head(head, Some(b"cutover_origin=new; Path=/"), true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-Origin: new\r\nset-cookie: cutover_origin=new; Path=/\r\nconnection: close\r\n\r\n"
        );
        // A Connection header cannot take the framing away from the client either.
        for (head, framing) in [
            (
                &b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                "Transfer-Encoding: chunked\r\n",
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n",
                "Content-Length: 5\r\n",
            ),
        ] {
            let mut out = vec![];
            client_head(head, None, false, &mut out);
            let out = String::from_utf8(out).unwrap();
            assert!(out.contains(framing), "{out}");
        }
    }

    #[test]
    fn chunked_bodies_end_where_they_end_however_they_are_split() {
        let body =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let next = b"HTTP/1.1 200 OK\r\n";
        let mut all = body.to_vec();
        all.extend_from_slice(next);
        // Whole, then cut at every point into two reads.
        let (n, done) = Chunks::default().scan(&all).unwrap();
        assert_eq!((n, done), (body.len(), true));
        for cut in 0..all.len() {
            let mut c = Chunks::default();
            let (a, done_a) = c.scan(&all[..cut]).unwrap();
            if done_a {
                assert_eq!(a, body.len());
                continue;
            }
            assert_eq!(a, cut);
            let (b, done_b) = c.scan(&all[cut..]).unwrap();
            assert!(done_b, "cut at {cut}");
            assert_eq!(a + b, body.len(), "cut at {cut}");
        }
        // Byte by byte.
        let mut c = Chunks::default();
        let ends: Vec<bool> = body.iter().map(|b| c.scan(&[*b]).unwrap().1).collect();
        assert_eq!(ends.iter().position(|d| *d), Some(body.len() - 1));
        assert_eq!(Chunks::default().scan(b"0\r\n\r\n").unwrap(), (5, true));
        assert_eq!(
            Chunks::default().scan(b"0 \t;e\r\n\r\n").unwrap(),
            (9, true)
        );
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"1234567890abcdef0\r\n",
            b"5 garbage\r\n",
            b"5\t\x00\r\n",
            b"5;ext\n",
        ] {
            assert!(Chunks::default().scan(bad).is_err(), "{bad:?}");
        }
    }
}
