//! The PostgreSQL v3 wire protocol, with no IO.
//!
//! # Framing
//!
//! A connection opens with one *untagged* packet from the client: `len: i32` (counting
//! itself), `code: i32`, body. The code says what the packet is: a StartupMessage (protocol
//! 3.x; the body is NUL-terminated name/value pairs), an SSLRequest or GSSENCRequest (the
//! server answers with one bare byte, not a message, and the client then sends another
//! untagged packet), or a CancelRequest (alone on its own connection). Everything after the
//! StartupMessage, in both directions, is *tagged*: a type byte, `len: i32` (counting itself
//! but not the type byte), body.
//!
//! The decoders take the read buffer as it is and return `Ok(None)`, consuming nothing, until
//! it holds a whole message; then they consume exactly one. A declared length below the
//! minimum or above the limit ([`MAX_MESSAGE`], [`MAX_STARTUP`], the same limits as the
//! server's) is an error: the stream cannot be resynchronised and the connection must be
//! closed. On error nothing is consumed. No input makes a decoder or a parser panic.
//!
//! # What is parsed, and why the rest stays raw
//!
//! The proxy forwards almost every message unchanged, so a tagged message becomes a [`Frame`]
//! that keeps its original bytes (split off the read buffer without a copy) and is written
//! back as is. The typed views, [`parse_frontend`] and [`parse_backend`], borrow from a frame
//! and parse only what the proxy acts on: authentication, session parameters, the transaction
//! status in ReadyForQuery (a session may only move to another server between transactions),
//! statement and portal names (prepared statements must be re-created on the new server),
//! and errors. Rows, bind values and COPY data stay raw: parsing them costs time, and
//! re-encoding them could change bytes the proxy has no business touching.
//!
//! Text fields of the views are checked as UTF-8. A client whose `client_encoding` is not
//! UTF8 may send text that fails the check; that is [`CodecError::NotUtf8`], a failure of the
//! view only: the frame is sound and can still be forwarded. Error and notice fields are
//! decoded lossily instead, since they are only logged or re-sent.
//!
//! # Encoding
//!
//! Encoders append one message to a `&mut BytesMut`, so a reply of several messages is built
//! in one buffer and written once; [`Frame::new`] builds a single tagged message. Strings are
//! written as C strings and must not contain NUL (the peer would reject the message; framing
//! stays intact because it is by length). Encoders panic only if a message would be longer
//! than [`MAX_MESSAGE`], which no decoded input can cause.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version 3.0, the code of a StartupMessage.
pub const PROTOCOL_3: i32 = 196608;
/// Code of an SSLRequest packet.
pub const SSL_REQUEST: i32 = 80877103;
/// Code of a GSSENCRequest packet.
pub const GSSENC_REQUEST: i32 = 80877104;
/// Code of a CancelRequest packet.
pub const CANCEL_REQUEST: i32 = 80877102;
/// Largest declared length accepted for a tagged message (PostgreSQL's `PQ_LARGE_MESSAGE_LIMIT`).
pub const MAX_MESSAGE: usize = 1 << 30;
/// Largest declared length accepted for a startup packet (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP: usize = 10_000;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The declared length cannot even hold the length field (and code); the stream is lost.
    #[error("declared message length {len} is below the minimum of {min}: the peer does not speak PostgreSQL protocol 3 or the stream is corrupt; close the connection")]
    TooShort { len: i32, min: usize },
    /// The declared length is over the limit; the stream is lost.
    #[error("declared message length {len} exceeds the limit of {max} bytes: the peer sent an oversized or corrupt message; close the connection")]
    TooLong { len: usize, max: usize },
    /// A startup packet with a code other than protocol 3.x or a known request.
    #[error("unsupported protocol version {major}.{minor}: only protocol 3 is supported; upgrade the client driver")]
    UnsupportedProtocol { major: u16, minor: u16 },
    /// The body of a message does not match its type's layout.
    #[error("malformed {message} message: {reason}")]
    Malformed {
        message: &'static str,
        reason: &'static str,
    },
    /// A text field is not UTF-8; the frame itself is fine and can be forwarded raw.
    #[error("{message} message has a text field that is not UTF-8 (client_encoding is not UTF8?); forward the frame raw instead of parsing it")]
    NotUtf8 { message: &'static str },
}

/// The first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    /// SSLRequest: answer `S` and start TLS, or `N`; another startup packet follows.
    Ssl,
    /// GSSENCRequest: answer `G` or `N`; another startup packet follows.
    GssEnc,
    /// CancelRequest for the session with this BackendKeyData.
    Cancel { pid: i32, key: i32 },
    /// StartupMessage with protocol version 3.x (`version` holds major << 16 | minor).
    Params {
        version: i32,
        params: Vec<(String, String)>,
    },
}

/// Decodes the untagged packet that opens a connection (len, code, body).
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<Startup>, CodecError> {
    let Some(len) = peek_i32(buf, 0) else {
        return Ok(None);
    };
    let len = checked_len(len, 8, MAX_STARTUP)?;
    let Some(packet) = buf.get(..len) else {
        return Ok(None);
    };
    let mut r = Reader::new(packet, "startup");
    r.i32()?; // the length, already checked
    let startup = parse_startup(r)?;
    buf.advance(len);
    Ok(Some(startup))
}

fn parse_startup(mut r: Reader<'_>) -> Result<Startup, CodecError> {
    let code = r.i32()?;
    let startup = match code {
        SSL_REQUEST => Startup::Ssl,
        GSSENC_REQUEST => Startup::GssEnc,
        CANCEL_REQUEST => {
            r.message = "CancelRequest";
            Startup::Cancel {
                pid: r.i32()?,
                key: r.i32()?,
            }
        }
        version if version >> 16 == 3 => {
            r.message = "StartupMessage";
            let mut params = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                params.push((name.to_owned(), r.cstr()?.to_owned()));
            }
            Startup::Params { version, params }
        }
        other => {
            let [a, b, c, d] = other.to_be_bytes();
            return Err(CodecError::UnsupportedProtocol {
                major: u16::from_be_bytes([a, b]),
                minor: u16::from_be_bytes([c, d]),
            });
        }
    };
    r.finish()?;
    Ok(startup)
}

/// One tagged message, kept whole so it can be forwarded without re-encoding.
///
/// Invariant: `raw[0] == tag` and `raw` holds the tag, the length and the body. Frames from
/// [`decode_frame`] and [`Frame::new`] uphold it; [`Frame::body`] does not panic when a
/// hand-built frame does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// The whole frame, tag and length included.
    pub raw: Bytes,
}

impl Frame {
    /// The body, after the tag and the length.
    pub fn body(&self) -> &[u8] {
        self.raw.get(5..).unwrap_or_default()
    }

    /// Builds a frame from a tag and a body.
    ///
    /// # Panics
    /// If the body is longer than [`MAX_MESSAGE`] - 4 bytes.
    pub fn new(tag: u8, body: &[u8]) -> Frame {
        let mut buf = BytesMut::with_capacity(5 + body.len());
        tagged(&mut buf, tag, |b| b.put_slice(body));
        Frame {
            tag,
            raw: buf.freeze(),
        }
    }
}

/// Decodes one tagged message (tag, len, body), splitting it off `buf` without a copy.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
    let (Some(&tag), Some(len)) = (buf.first(), peek_i32(buf, 1)) else {
        return Ok(None);
    };
    let total = checked_len(len, 4, MAX_MESSAGE)? + 1;
    if buf.len() < total {
        return Ok(None);
    }
    let raw = buf.split_to(total).freeze();
    Ok(Some(Frame { tag, raw }))
}

/// A message from the client, as far as the proxy needs to understand it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frontend<'a> {
    /// `Q`: simple query.
    Query(&'a str),
    /// `P`: prepare a statement (empty name: the unnamed statement).
    Parse {
        name: &'a str,
        query: &'a str,
        param_types: Vec<u32>,
    },
    /// `B`: bind a statement to a portal; parameter values stay raw.
    Bind { portal: &'a str, statement: &'a str },
    /// `D`: describe a statement (`kind` `S`) or a portal (`P`).
    Describe { kind: u8, name: &'a str },
    /// `C`: close a statement (`kind` `S`) or a portal (`P`).
    Close { kind: u8, name: &'a str },
    /// `E`: execute a portal; the row limit is not exposed.
    Execute { portal: &'a str },
    /// `S`
    Sync,
    /// `H`
    Flush,
    /// `X`
    Terminate,
    /// `d`
    CopyData,
    /// `c`
    CopyDone,
    /// `f`
    CopyFail,
    /// `p`: the raw body of PasswordMessage (NUL-terminated), SASLInitialResponse (see
    /// [`parse_sasl_initial_response`]), SASLResponse or GSSResponse; which one depends on the
    /// authentication request the client answers.
    Password(&'a [u8]),
    /// `F`
    FunctionCall,
    /// Any other tag.
    Other(u8),
}

/// Parses a client message's body.
pub fn parse_frontend(frame: &Frame) -> Result<Frontend<'_>, CodecError> {
    let body = frame.body();
    let message = match frame.tag {
        b'Q' => {
            let mut r = Reader::new(body, "Query");
            let query = r.cstr()?;
            r.finish()?;
            Frontend::Query(query)
        }
        b'P' => {
            let mut r = Reader::new(body, "Parse");
            let name = r.cstr()?;
            let query = r.cstr()?;
            let count =
                usize::try_from(r.i16()?).map_err(|_| r.malformed("negative parameter count"))?;
            let param_types = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
            r.finish()?;
            Frontend::Parse {
                name,
                query,
                param_types,
            }
        }
        b'B' => {
            let mut r = Reader::new(body, "Bind");
            Frontend::Bind {
                portal: r.cstr()?,
                statement: r.cstr()?,
            }
        }
        b'D' => {
            let (kind, name) = kind_and_name(body, "Describe")?;
            Frontend::Describe { kind, name }
        }
        b'C' => {
            let (kind, name) = kind_and_name(body, "Close")?;
            Frontend::Close { kind, name }
        }
        b'E' => {
            let mut r = Reader::new(body, "Execute");
            let portal = r.cstr()?;
            r.i32()?;
            r.finish()?;
            Frontend::Execute { portal }
        }
        b'S' => empty(body, "Sync", Frontend::Sync)?,
        b'H' => empty(body, "Flush", Frontend::Flush)?,
        b'X' => empty(body, "Terminate", Frontend::Terminate)?,
        b'c' => empty(body, "CopyDone", Frontend::CopyDone)?,
        b'd' => Frontend::CopyData,
        b'f' => Frontend::CopyFail,
        b'p' => Frontend::Password(body),
        b'F' => Frontend::FunctionCall,
        other => Frontend::Other(other),
    };
    Ok(message)
}

fn kind_and_name<'a>(body: &'a [u8], message: &'static str) -> Result<(u8, &'a str), CodecError> {
    let mut r = Reader::new(body, message);
    let kind = r.u8()?;
    let name = r.cstr()?;
    r.finish()?;
    Ok((kind, name))
}

/// The parts of a SASLInitialResponse (`p`) body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    pub mechanism: &'a str,
    /// The client-first message; `None` when the client sent length -1.
    pub data: Option<&'a [u8]>,
}

/// Parses a SASLInitialResponse body: mechanism (C string), `len: i32`, data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<SaslInitialResponse<'_>, CodecError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.cstr()?;
    let data = match r.i32()? {
        -1 => None,
        len => {
            let len = usize::try_from(len).map_err(|_| r.malformed("negative data length"))?;
            Some(r.take(len)?)
        }
    };
    r.finish()?;
    Ok(SaslInitialResponse { mechanism, data })
}

/// A message from the server, as far as the proxy needs to understand it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend<'a> {
    /// `R`
    Auth(Auth<'a>),
    /// `S`
    ParameterStatus { name: &'a str, value: &'a str },
    /// `K`: protocol 3.0 keys only (4 bytes).
    BackendKeyData { pid: i32, key: i32 },
    /// `Z`: transaction status, `I` idle, `T` in a transaction, `E` in a failed one.
    ReadyForQuery(u8),
    /// `E`
    Error(ErrorFields),
    /// `N`
    Notice(ErrorFields),
    /// `1`
    ParseComplete,
    /// `2`
    BindComplete,
    /// `3`
    CloseComplete,
    /// `C`: the command tag, such as `INSERT 0 1`.
    CommandComplete(&'a str),
    /// `G`
    CopyInResponse,
    /// `H`
    CopyOutResponse,
    /// `W`
    CopyBothResponse,
    /// `A`
    NotificationResponse,
    /// Any other tag.
    Other(u8),
}

/// An authentication request (`R`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth<'a> {
    /// 0: AuthenticationOk.
    Ok,
    /// 3: AuthenticationCleartextPassword.
    Cleartext,
    /// 5: AuthenticationMD5Password.
    Md5 { salt: [u8; 4] },
    /// 10: AuthenticationSASL with the mechanisms the server offers.
    Sasl { mechanisms: Vec<&'a str> },
    /// 11: AuthenticationSASLContinue (server-first message).
    SaslContinue(&'a [u8]),
    /// 12: AuthenticationSASLFinal (server-final message).
    SaslFinal(&'a [u8]),
    /// Any other code (Kerberos, GSS, SSPI).
    Other(i32),
}

/// The fields of an ErrorResponse or NoticeResponse the proxy uses. Text is decoded lossily:
/// it is in the client's encoding, and only logged or re-sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFields {
    /// `V` (not localized) when present, else `S`.
    pub severity: String,
    /// `C`: the SQLSTATE.
    pub code: String,
    /// `M`
    pub message: String,
    /// `D`
    pub detail: Option<String>,
    /// `H`
    pub hint: Option<String>,
}

/// Parses a server message's body.
pub fn parse_backend(frame: &Frame) -> Result<Backend<'_>, CodecError> {
    let body = frame.body();
    let message = match frame.tag {
        b'R' => Backend::Auth(parse_auth(body)?),
        b'S' => {
            let mut r = Reader::new(body, "ParameterStatus");
            let name = r.cstr()?;
            let value = r.cstr()?;
            r.finish()?;
            Backend::ParameterStatus { name, value }
        }
        b'K' => {
            let mut r = Reader::new(body, "BackendKeyData");
            let pid = r.i32()?;
            let key = r.i32()?;
            r.finish()?;
            Backend::BackendKeyData { pid, key }
        }
        b'Z' => {
            let mut r = Reader::new(body, "ReadyForQuery");
            let status = r.u8()?;
            r.finish()?;
            Backend::ReadyForQuery(status)
        }
        b'E' => Backend::Error(parse_error_fields(body, "ErrorResponse")?),
        b'N' => Backend::Notice(parse_error_fields(body, "NoticeResponse")?),
        b'1' => empty(body, "ParseComplete", Backend::ParseComplete)?,
        b'2' => empty(body, "BindComplete", Backend::BindComplete)?,
        b'3' => empty(body, "CloseComplete", Backend::CloseComplete)?,
        b'C' => {
            let mut r = Reader::new(body, "CommandComplete");
            let tag = r.cstr()?;
            r.finish()?;
            Backend::CommandComplete(tag)
        }
        b'G' => Backend::CopyInResponse,
        b'H' => Backend::CopyOutResponse,
        b'W' => Backend::CopyBothResponse,
        b'A' => Backend::NotificationResponse,
        other => Backend::Other(other),
    };
    Ok(message)
}

fn parse_auth(body: &[u8]) -> Result<Auth<'_>, CodecError> {
    let mut r = Reader::new(body, "Authentication");
    let auth = match r.i32()? {
        0 => Auth::Ok,
        3 => Auth::Cleartext,
        5 => Auth::Md5 { salt: r.array()? },
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let mechanism = r.cstr()?;
                if mechanism.is_empty() {
                    break;
                }
                mechanisms.push(mechanism);
            }
            Auth::Sasl { mechanisms }
        }
        11 => Auth::SaslContinue(r.rest()),
        12 => Auth::SaslFinal(r.rest()),
        other => Auth::Other(other),
    };
    if !matches!(auth, Auth::Other(_)) {
        r.finish()?;
    }
    Ok(auth)
}

fn parse_error_fields(body: &[u8], message: &'static str) -> Result<ErrorFields, CodecError> {
    let mut r = Reader::new(body, message);
    let [mut s, mut v, mut c, mut m, mut d, mut h] = [None; 6];
    loop {
        let field = r.u8()?;
        if field == 0 {
            break;
        }
        let value = r.cstr_bytes()?;
        match field {
            b'S' => s = Some(value),
            b'V' => v = Some(value),
            b'C' => c = Some(value),
            b'M' => m = Some(value),
            b'D' => d = Some(value),
            b'H' => h = Some(value),
            _ => {}
        }
    }
    r.finish()?;
    let text = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
    let required = |value: Option<&[u8]>, reason| value.map(text).ok_or(r.malformed(reason));
    Ok(ErrorFields {
        severity: required(v.or(s), "no severity field (S)")?,
        code: required(c, "no SQLSTATE field (C)")?,
        message: required(m, "no message field (M)")?,
        detail: d.map(text),
        hint: h.map(text),
    })
}

// ---- Frontend encoders -------------------------------------------------------------------

/// StartupMessage, protocol 3.0.
pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
    length_prefixed(buf, |b| {
        b.put_i32(PROTOCOL_3);
        for (name, value) in params {
            put_cstr(b, name);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
}

/// SSLRequest.
pub fn ssl_request(buf: &mut BytesMut) {
    length_prefixed(buf, |b| b.put_i32(SSL_REQUEST));
}

/// GSSENCRequest.
pub fn gssenc_request(buf: &mut BytesMut) {
    length_prefixed(buf, |b| b.put_i32(GSSENC_REQUEST));
}

/// CancelRequest.
pub fn cancel_request(buf: &mut BytesMut, pid: i32, key: i32) {
    length_prefixed(buf, |b| {
        b.put_i32(CANCEL_REQUEST);
        b.put_i32(pid);
        b.put_i32(key);
    });
}

/// Query (`Q`).
pub fn query(buf: &mut BytesMut, sql: &str) {
    tagged(buf, b'Q', |b| put_cstr(b, sql));
}

/// Parse (`P`).
///
/// # Panics
/// If there are more than `i16::MAX` parameter types (the protocol cannot carry them).
pub fn parse(buf: &mut BytesMut, name: &str, sql: &str, param_types: &[u32]) {
    let count = i16::try_from(param_types.len()).expect("at most i16::MAX parameter types");
    tagged(buf, b'P', |b| {
        put_cstr(b, name);
        put_cstr(b, sql);
        b.put_i16(count);
        param_types.iter().for_each(|&oid| b.put_u32(oid));
    });
}

/// Sync (`S`).
pub fn sync(buf: &mut BytesMut) {
    tagged(buf, b'S', |_| {});
}

/// Flush (`H`).
pub fn flush(buf: &mut BytesMut) {
    tagged(buf, b'H', |_| {});
}

/// Terminate (`X`).
pub fn terminate(buf: &mut BytesMut) {
    tagged(buf, b'X', |_| {});
}

/// PasswordMessage (`p`): the password or md5 response, NUL-terminated here.
pub fn password(buf: &mut BytesMut, password: &[u8]) {
    tagged(buf, b'p', |b| {
        b.put_slice(password);
        b.put_u8(0);
    });
}

/// SASLInitialResponse (`p`): mechanism, then the client-first message.
pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    tagged(buf, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(body_len(data.len()));
        b.put_slice(data);
    });
}

/// SASLResponse (`p`): the client-final message.
pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    tagged(buf, b'p', |b| b.put_slice(data));
}

// ---- Backend encoders --------------------------------------------------------------------

fn auth(buf: &mut BytesMut, code: i32, rest: impl FnOnce(&mut BytesMut)) {
    tagged(buf, b'R', |b| {
        b.put_i32(code);
        rest(b);
    });
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    auth(buf, 0, |_| {});
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext(buf: &mut BytesMut) {
    auth(buf, 3, |_| {});
}

/// AuthenticationMD5Password.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    auth(buf, 5, |b| b.put_slice(&salt));
}

/// AuthenticationSASL offering `mechanisms`.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    auth(buf, 10, |b| {
        mechanisms.iter().for_each(|m| put_cstr(b, m));
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue carrying the server-first message.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 11, |b| b.put_slice(data));
}

/// AuthenticationSASLFinal carrying the server-final message.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 12, |b| b.put_slice(data));
}

/// ParameterStatus (`S`).
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    tagged(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// BackendKeyData (`K`).
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, key: i32) {
    tagged(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(key);
    });
}

/// ReadyForQuery (`Z`) with transaction status `I`, `T` or `E`.
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    tagged(buf, b'Z', |b| b.put_u8(status));
}

/// ErrorResponse (`E`) with fields S and V (`severity`, e.g. `FATAL`), C (`code`, the
/// SQLSTATE) and M.
pub fn error_response(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
    error_fields(buf, b'E', severity, code, message);
}

/// NoticeResponse (`N`), fields as in [`error_response`].
pub fn notice_response(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
    error_fields(buf, b'N', severity, code, message);
}

fn error_fields(buf: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    tagged(buf, tag, |b| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
        ] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
}

// ---- Helpers -----------------------------------------------------------------------------

fn peek_i32(buf: &[u8], at: usize) -> Option<i32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(i32::from_be_bytes(bytes.try_into().ok()?))
}

fn checked_len(len: i32, min: usize, max: usize) -> Result<usize, CodecError> {
    match usize::try_from(len) {
        Ok(n) if n < min => Err(CodecError::TooShort { len, min }),
        Err(_) => Err(CodecError::TooShort { len, min }),
        Ok(n) if n > max => Err(CodecError::TooLong { len: n, max }),
        Ok(n) => Ok(n),
    }
}

fn empty<T>(body: &[u8], message: &'static str, value: T) -> Result<T, CodecError> {
    Reader::new(body, message).finish()?;
    Ok(value)
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

fn body_len(len: usize) -> i32 {
    match i32::try_from(len) {
        Ok(len) if len as usize <= MAX_MESSAGE => len,
        _ => panic!("message of {len} bytes exceeds the protocol limit of {MAX_MESSAGE}"),
    }
}

/// Writes `len: i32` (counting itself) and then what `body` writes.
fn length_prefixed(buf: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = body_len(buf.len() - start).to_be_bytes();
    buf[start..start + 4].copy_from_slice(&len);
}

fn tagged(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    length_prefixed(buf, body);
}

/// Reads the fields of one message body; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Reader { buf, message }
    }

    fn malformed(&self, reason: &'static str) -> CodecError {
        CodecError::Malformed {
            message: self.message,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(self.malformed("body ends inside a field"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(self.malformed("body ends inside a field"))?;
        self.buf = tail;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn i16(&mut self) -> Result<i16, CodecError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, CodecError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn cstr_bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let nul = (self.buf.iter().position(|&b| b == 0))
            .ok_or(self.malformed("string without NUL terminator"))?;
        let s = self.take(nul)?;
        self.take(1)?;
        Ok(s)
    }

    fn cstr(&mut self) -> Result<&'a str, CodecError> {
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| CodecError::NotUtf8 {
            message: self.message,
        })
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn finish(&self) -> Result<(), CodecError> {
        match self.buf.is_empty() {
            true => Ok(()),
            false => Err(self.malformed("trailing bytes after the last field")),
        }
    }
}
