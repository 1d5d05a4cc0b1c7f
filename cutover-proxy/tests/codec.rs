//! The codec: every encoder through the decoders, streams split at every byte, and random
//! streams and random bytes (proptest).

use bytes::{BufMut, BytesMut};
use cutover_proxy::codec::{self, *};
use proptest::prelude::*;

/// One decoded message of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Msg {
    Startup(Startup),
    Frame(Frame),
}

/// Decodes a stream the way a session does: untagged packets until a StartupMessage or a
/// CancelRequest, tagged frames afterwards.
struct Decoder {
    buf: BytesMut,
    in_startup: bool,
    out: Vec<Msg>,
}

impl Decoder {
    fn new(in_startup: bool) -> Self {
        Decoder {
            buf: BytesMut::new(),
            in_startup,
            out: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), CodecError> {
        self.buf.extend_from_slice(chunk);
        loop {
            if self.in_startup {
                let Some(startup) = decode_startup(&mut self.buf)? else {
                    return Ok(());
                };
                self.in_startup = matches!(startup, Startup::Ssl | Startup::GssEnc);
                self.out.push(Msg::Startup(startup));
            } else {
                let Some(frame) = decode_frame(&mut self.buf)? else {
                    return Ok(());
                };
                self.out.push(Msg::Frame(frame));
            }
        }
    }

    /// The messages, once the whole stream has been fed and nothing is left over.
    fn finish(self) -> Vec<Msg> {
        assert!(self.buf.is_empty(), "bytes left over: {:?}", self.buf);
        self.out
    }
}

fn decode_all(bytes: &[u8], in_startup: bool) -> Vec<Msg> {
    let mut decoder = Decoder::new(in_startup);
    decoder.feed(bytes).unwrap();
    decoder.finish()
}

fn one_frame(encode: impl FnOnce(&mut BytesMut)) -> Frame {
    let mut buf = BytesMut::new();
    encode(&mut buf);
    let frame = decode_frame(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    frame
}

fn one_startup(encode: impl FnOnce(&mut BytesMut)) -> Startup {
    let mut buf = BytesMut::new();
    encode(&mut buf);
    let startup = decode_startup(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    startup
}

#[test]
fn startup_encoders_round_trip() {
    let params = [
        ("user", "app"),
        ("database", "shop"),
        ("application_name", ""),
    ];
    assert_eq!(
        one_startup(|b| startup_message(b, &params)),
        Startup::Params {
            version: PROTOCOL_3,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    );
    assert_eq!(
        one_startup(|b| startup_message(b, &[])),
        Startup::Params {
            version: PROTOCOL_3,
            params: vec![]
        }
    );
    assert_eq!(one_startup(ssl_request), Startup::Ssl);
    assert_eq!(one_startup(gssenc_request), Startup::GssEnc);
    assert_eq!(
        one_startup(|b| cancel_request(b, 4242, -7)),
        Startup::Cancel { pid: 4242, key: -7 }
    );
}

#[test]
fn frontend_encoders_round_trip() {
    let check = |encode: &dyn Fn(&mut BytesMut), expected: Frontend<'_>| {
        let frame = one_frame(encode);
        assert_eq!(parse_frontend(&frame).unwrap(), expected);
    };
    check(&|b| query(b, "SELECT 1"), Frontend::Query("SELECT 1"));
    check(&|b| query(b, ""), Frontend::Query(""));
    check(
        &|b| parse(b, "s1", "SELECT $1, $2", &[23, 25]),
        Frontend::Parse {
            name: "s1",
            query: "SELECT $1, $2",
            param_types: vec![23, 25],
        },
    );
    check(
        &|b| parse(b, "", "SELECT 1", &[]),
        Frontend::Parse {
            name: "",
            query: "SELECT 1",
            param_types: vec![],
        },
    );
    check(&sync, Frontend::Sync);
    check(&flush, Frontend::Flush);
    check(&terminate, Frontend::Terminate);
    check(&|b| password(b, b"md5abc"), Frontend::Password(b"md5abc\0"));
    check(
        &|b| sasl_response(b, b"c=biws,r=x,p=y"),
        Frontend::Password(b"c=biws,r=x,p=y"),
    );

    let frame = one_frame(|b| sasl_initial_response(b, "SCRAM-SHA-256", b"n,,n=,r=abc"));
    let Frontend::Password(body) = parse_frontend(&frame).unwrap() else {
        panic!("not a 'p' message");
    };
    assert_eq!(
        parse_sasl_initial_response(body).unwrap(),
        SaslInitialResponse {
            mechanism: "SCRAM-SHA-256",
            data: Some(b"n,,n=,r=abc")
        }
    );
}

#[test]
fn frontend_views_of_hand_built_frames() {
    let bind = Frame::new(b'B', b"portal\0stmt\0\0\0\0\0\0\0");
    assert_eq!(
        parse_frontend(&bind).unwrap(),
        Frontend::Bind {
            portal: "portal",
            statement: "stmt"
        }
    );
    assert_eq!(
        parse_frontend(&Frame::new(b'D', b"Sname\0")).unwrap(),
        Frontend::Describe {
            kind: b'S',
            name: "name"
        }
    );
    assert_eq!(
        parse_frontend(&Frame::new(b'C', b"P\0")).unwrap(),
        Frontend::Close {
            kind: b'P',
            name: ""
        }
    );
    assert_eq!(
        parse_frontend(&Frame::new(b'E', b"p\0\0\0\0\x0a")).unwrap(),
        Frontend::Execute { portal: "p" }
    );
    for (tag, expected) in [
        (b'd', Frontend::CopyData),
        (b'c', Frontend::CopyDone),
        (b'f', Frontend::CopyFail),
        (b'F', Frontend::FunctionCall),
        (b'?', Frontend::Other(b'?')),
    ] {
        let body: &[u8] = if tag == b'c' { b"" } else { b"abc\0" };
        assert_eq!(parse_frontend(&Frame::new(tag, body)).unwrap(), expected);
    }
    let sasl_no_data = [b"SCRAM-SHA-256\0".as_slice(), &(-1i32).to_be_bytes()].concat();
    assert_eq!(
        parse_sasl_initial_response(&sasl_no_data).unwrap(),
        SaslInitialResponse {
            mechanism: "SCRAM-SHA-256",
            data: None
        }
    );
}

#[test]
fn backend_encoders_round_trip() {
    let check = |encode: &dyn Fn(&mut BytesMut), expected: Backend<'_>| {
        let frame = one_frame(encode);
        assert_eq!(parse_backend(&frame).unwrap(), expected);
    };
    check(&auth_ok, Backend::Auth(Auth::Ok));
    check(&auth_cleartext, Backend::Auth(Auth::Cleartext));
    check(
        &|b| auth_md5(b, [1, 2, 3, 4]),
        Backend::Auth(Auth::Md5 { salt: [1, 2, 3, 4] }),
    );
    check(
        &|b| auth_sasl(b, &["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]),
        Backend::Auth(Auth::Sasl {
            mechanisms: vec!["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"],
        }),
    );
    check(
        &|b| auth_sasl_continue(b, b"r=a,s=b,i=4096"),
        Backend::Auth(Auth::SaslContinue(b"r=a,s=b,i=4096")),
    );
    check(
        &|b| auth_sasl_final(b, b"v=abc"),
        Backend::Auth(Auth::SaslFinal(b"v=abc")),
    );
    check(
        &|b| parameter_status(b, "server_version", "17.2"),
        Backend::ParameterStatus {
            name: "server_version",
            value: "17.2",
        },
    );
    check(
        &|b| backend_key_data(b, 77, i32::MIN),
        Backend::BackendKeyData {
            pid: 77,
            key: i32::MIN,
        },
    );
    check(&|b| ready_for_query(b, b'T'), Backend::ReadyForQuery(b'T'));
    let fields = ErrorFields {
        severity: "FATAL".into(),
        code: "57P01".into(),
        message: "terminating connection".into(),
        detail: None,
        hint: None,
    };
    check(
        &|b| error_response(b, "FATAL", "57P01", "terminating connection"),
        Backend::Error(fields.clone()),
    );
    check(
        &|b| notice_response(b, "FATAL", "57P01", "terminating connection"),
        Backend::Notice(fields),
    );
}

#[test]
fn backend_views_of_hand_built_frames() {
    let error = Frame::new(
        b'E',
        b"SERREUR\0VERROR\0C42P01\0Mrelation \"t\" does not exist\0Ddetail\0Hhint\0P15\0\0",
    );
    assert_eq!(
        parse_backend(&error).unwrap(),
        Backend::Error(ErrorFields {
            severity: "ERROR".into(),
            code: "42P01".into(),
            message: "relation \"t\" does not exist".into(),
            detail: Some("detail".into()),
            hint: Some("hint".into()),
        })
    );
    let latin1 = Frame::new(b'N', b"SNOTICE\0C00000\0Mcaf\xe9\0\0");
    let Backend::Notice(fields) = parse_backend(&latin1).unwrap() else {
        panic!("not a notice");
    };
    assert_eq!(fields.severity, "NOTICE");
    assert_eq!(fields.message, "caf\u{fffd}");
    assert_eq!(
        parse_backend(&Frame::new(b'C', b"INSERT 0 1\0")).unwrap(),
        Backend::CommandComplete("INSERT 0 1")
    );
    for (tag, expected) in [
        (b'1', Backend::ParseComplete),
        (b'2', Backend::BindComplete),
        (b'3', Backend::CloseComplete),
    ] {
        assert_eq!(parse_backend(&Frame::new(tag, b"")).unwrap(), expected);
    }
    for (tag, expected) in [
        (b'G', Backend::CopyInResponse),
        (b'H', Backend::CopyOutResponse),
        (b'W', Backend::CopyBothResponse),
        (b'A', Backend::NotificationResponse),
        (b'D', Backend::Other(b'D')),
    ] {
        assert_eq!(
            parse_backend(&Frame::new(tag, b"\0\0\0\x01x\0")).unwrap(),
            expected
        );
    }
    assert_eq!(
        parse_backend(&Frame::new(b'R', &7i32.to_be_bytes())).unwrap(),
        Backend::Auth(Auth::Other(7))
    );
}

#[test]
fn frame_new_matches_encoders_and_body() {
    let frame = one_frame(|b| query(b, "SELECT 1"));
    assert_eq!(frame, Frame::new(b'Q', b"SELECT 1\0"));
    assert_eq!(frame.tag, b'Q');
    assert_eq!(frame.body(), b"SELECT 1\0");
    assert_eq!(&frame.raw[..5], &[b'Q', 0, 0, 0, 13]);
    let hand_built = Frame {
        tag: b'Q',
        raw: bytes::Bytes::from_static(b"Q\0"),
    };
    assert_eq!(hand_built.body(), b"");
}

/// A client's side of a connection, with every kind of message the codec knows.
fn frontend_stream() -> (Vec<u8>, Vec<String>) {
    let mut buf = BytesMut::new();
    ssl_request(&mut buf);
    gssenc_request(&mut buf);
    startup_message(
        &mut buf,
        &[("user", "app"), ("database", "shop"), ("options", "-c x=é")],
    );
    let mut frames = BytesMut::new();
    sasl_initial_response(&mut frames, "SCRAM-SHA-256", b"n,,n=,r=nonce");
    sasl_response(&mut frames, b"c=biws,r=nonce+server,p=proof");
    password(&mut frames, b"md5deadbeef");
    query(&mut frames, "SELECT 1; SELECT 'é'");
    parse(&mut frames, "stmt", "SELECT $1::int", &[23]);
    frames.extend_from_slice(&Frame::new(b'B', b"\0stmt\0\0\0\0\x01\0\0\0\x011\0\0").raw);
    frames.extend_from_slice(&Frame::new(b'D', b"P\0").raw);
    frames.extend_from_slice(&Frame::new(b'E', b"\0\0\0\0\0").raw);
    frames.extend_from_slice(&Frame::new(b'C', b"Sstmt\0").raw);
    flush(&mut frames);
    sync(&mut frames);
    frames.extend_from_slice(&Frame::new(b'd', &[7; 300]).raw);
    frames.extend_from_slice(&Frame::new(b'c', b"").raw);
    frames.extend_from_slice(&Frame::new(b'f', b"gave up\0").raw);
    frames.extend_from_slice(&Frame::new(b'F', b"\0\0\0\x01").raw);
    terminate(&mut frames);
    let views = decode_all(&frames, false)
        .iter()
        .map(|m| match m {
            Msg::Frame(f) => format!("{:?}", parse_frontend(f).unwrap()),
            Msg::Startup(s) => panic!("startup in frames: {s:?}"),
        })
        .collect();
    buf.extend_from_slice(&frames);
    (buf.to_vec(), views)
}

/// A server's side of a connection.
fn backend_stream() -> Vec<u8> {
    let mut buf = BytesMut::new();
    auth_sasl(&mut buf, &["SCRAM-SHA-256"]);
    auth_sasl_continue(&mut buf, b"r=abc,s=c2FsdA==,i=4096");
    auth_sasl_final(&mut buf, b"v=xyz");
    auth_md5(&mut buf, [9, 8, 7, 6]);
    auth_cleartext(&mut buf);
    auth_ok(&mut buf);
    parameter_status(&mut buf, "client_encoding", "UTF8");
    backend_key_data(&mut buf, 1234, 5678);
    ready_for_query(&mut buf, b'I');
    buf.extend_from_slice(&Frame::new(b'1', b"").raw);
    buf.extend_from_slice(&Frame::new(b'2', b"").raw);
    buf.extend_from_slice(&Frame::new(b'D', &[0, 1, 0, 0, 0, 1, b'1']).raw);
    buf.extend_from_slice(&Frame::new(b'C', b"SELECT 1\0").raw);
    buf.extend_from_slice(&Frame::new(b'3', b"").raw);
    notice_response(&mut buf, "WARNING", "01000", "careful");
    error_response(&mut buf, "ERROR", "42601", "syntax error");
    buf.extend_from_slice(&Frame::new(b'H', &[0, 0, 0]).raw);
    buf.extend_from_slice(&Frame::new(b'd', &[1; 1000]).raw);
    ready_for_query(&mut buf, b'E');
    buf.to_vec()
}

fn cancel_stream() -> Vec<u8> {
    let mut buf = BytesMut::new();
    cancel_request(&mut buf, 99, 12345);
    buf.to_vec()
}

/// Feeds `bytes` cut at every offset into two pieces, then one byte at a time, and checks
/// that every way gives the messages of the whole stream at once.
fn assert_split_invariant(bytes: &[u8], in_startup: bool) -> Vec<Msg> {
    let whole = decode_all(bytes, in_startup);
    for cut in 0..=bytes.len() {
        let mut decoder = Decoder::new(in_startup);
        decoder.feed(&bytes[..cut]).unwrap();
        let so_far = decoder.out.len();
        assert_eq!(decoder.out, whole[..so_far], "prefix at cut {cut}");
        decoder.feed(&bytes[cut..]).unwrap();
        assert_eq!(decoder.finish(), whole, "cut at {cut}");
    }
    let mut decoder = Decoder::new(in_startup);
    for byte in bytes.chunks(1) {
        decoder.feed(byte).unwrap();
    }
    assert_eq!(decoder.finish(), whole, "one byte at a time");
    whole
}

#[test]
fn frontend_stream_split_at_every_byte() {
    let (bytes, views) = frontend_stream();
    let messages = assert_split_invariant(&bytes, true);
    assert_eq!(messages.len(), 3 + views.len());
    assert_eq!(messages[0], Msg::Startup(Startup::Ssl));
    assert_eq!(messages[1], Msg::Startup(Startup::GssEnc));
    let Msg::Startup(Startup::Params { params, .. }) = &messages[2] else {
        panic!("no StartupMessage: {:?}", messages[2]);
    };
    assert_eq!(params[2], ("options".to_string(), "-c x=é".to_string()));
    let parsed: Vec<String> = messages[3..]
        .iter()
        .map(|m| match m {
            Msg::Frame(f) => format!("{:?}", parse_frontend(f).unwrap()),
            Msg::Startup(s) => panic!("startup among frames: {s:?}"),
        })
        .collect();
    assert_eq!(parsed, views);
    assert_eq!(parsed[3], r#"Query("SELECT 1; SELECT 'é'")"#);
    assert_eq!(parsed.last().unwrap(), "Terminate");
}

#[test]
fn backend_stream_split_at_every_byte() {
    let bytes = backend_stream();
    let messages = assert_split_invariant(&bytes, false);
    let parsed: Vec<Backend<'_>> = messages
        .iter()
        .map(|m| match m {
            Msg::Frame(f) => parse_backend(f).unwrap(),
            Msg::Startup(s) => panic!("startup in a backend stream: {s:?}"),
        })
        .collect();
    assert_eq!(parsed.len(), 19);
    assert_eq!(
        parsed[0],
        Backend::Auth(Auth::Sasl {
            mechanisms: vec!["SCRAM-SHA-256"]
        })
    );
    assert_eq!(
        parsed[7],
        Backend::BackendKeyData {
            pid: 1234,
            key: 5678
        }
    );
    assert_eq!(parsed[11], Backend::Other(b'D'));
    assert_eq!(parsed[18], Backend::ReadyForQuery(b'E'));
}

#[test]
fn cancel_request_split_at_every_byte() {
    let messages = assert_split_invariant(&cancel_stream(), true);
    assert_eq!(
        messages,
        [Msg::Startup(Startup::Cancel {
            pid: 99,
            key: 12345
        })]
    );
}

#[test]
fn incomplete_input_consumes_nothing() {
    let mut whole = BytesMut::new();
    query(&mut whole, "SELECT 1");
    for len in 0..whole.len() {
        let mut buf = BytesMut::from(&whole[..len]);
        assert_eq!(decode_frame(&mut buf), Ok(None));
        assert_eq!(buf.len(), len);
    }
    let mut whole = BytesMut::new();
    startup_message(&mut whole, &[("user", "u")]);
    for len in 0..whole.len() {
        let mut buf = BytesMut::from(&whole[..len]);
        assert_eq!(decode_startup(&mut buf), Ok(None));
        assert_eq!(buf.len(), len);
    }
}

fn frame_with_len(len: i32) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(b'Q');
    buf.put_i32(len);
    buf
}

fn startup_with_len(len: i32, code: i32, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_i32(len);
    buf.put_i32(code);
    buf.put_slice(body);
    buf
}

#[test]
fn bad_lengths_are_errors_and_consume_nothing() {
    for len in [i32::MIN, -1, 0, 3] {
        let mut buf = frame_with_len(len);
        assert_eq!(
            decode_frame(&mut buf),
            Err(CodecError::TooShort { len, min: 4 })
        );
        assert_eq!(buf.len(), 5);
    }
    let mut buf = frame_with_len(MAX_MESSAGE as i32 + 1);
    assert_eq!(
        decode_frame(&mut buf),
        Err(CodecError::TooLong {
            len: MAX_MESSAGE + 1,
            max: MAX_MESSAGE
        })
    );
    assert_eq!(
        decode_frame(&mut buf).unwrap_err().to_string(),
        "declared message length 1073741825 exceeds the limit of 1073741824 bytes: \
         the peer sent an oversized or corrupt message; close the connection"
    );
    // A length of exactly 4 is an empty body, and the largest allowed length just waits.
    assert!(decode_frame(&mut frame_with_len(4)).unwrap().is_some());
    assert_eq!(
        decode_frame(&mut frame_with_len(MAX_MESSAGE as i32)),
        Ok(None)
    );

    for len in [-5, 0, 4, 7] {
        let mut buf = startup_with_len(len, PROTOCOL_3, b"");
        assert_eq!(
            decode_startup(&mut buf),
            Err(CodecError::TooShort { len, min: 8 })
        );
        assert_eq!(buf.len(), 8);
    }
    let mut buf = startup_with_len(10_001, PROTOCOL_3, b"");
    assert_eq!(
        decode_startup(&mut buf),
        Err(CodecError::TooLong {
            len: 10_001,
            max: MAX_STARTUP
        })
    );
    assert_eq!(buf.len(), 8);
}

#[test]
fn malformed_startup_packets_are_errors() {
    let unsupported = |code: i32| decode_startup(&mut startup_with_len(8, code, b""));
    assert_eq!(
        unsupported(0x0002_0000),
        Err(CodecError::UnsupportedProtocol { major: 2, minor: 0 })
    );
    assert_eq!(
        unsupported(80877105).unwrap_err().to_string(),
        "unsupported protocol version 1234.5681: only protocol 3 is supported; upgrade the client driver"
    );
    let malformed = |message, reason| Err(CodecError::Malformed { message, reason });
    let cases: [(BytesMut, Result<Option<Startup>, CodecError>); 5] = [
        (
            startup_with_len(12, SSL_REQUEST, b"\0\0\0\0"),
            malformed("startup", "trailing bytes after the last field"),
        ),
        (
            startup_with_len(12, CANCEL_REQUEST, b"\0\0\0\x01"),
            malformed("CancelRequest", "body ends inside a field"),
        ),
        (
            startup_with_len(13, PROTOCOL_3, b"user\0"),
            malformed("StartupMessage", "string without NUL terminator"),
        ),
        (
            startup_with_len(15, PROTOCOL_3, b"user\0u\0"),
            malformed("StartupMessage", "string without NUL terminator"),
        ),
        (
            startup_with_len(17, PROTOCOL_3, b"user\0u\0\0x"),
            malformed("StartupMessage", "trailing bytes after the last field"),
        ),
    ];
    for (mut buf, expected) in cases {
        let len = buf.len();
        assert_eq!(decode_startup(&mut buf), expected);
        assert_eq!(buf.len(), len, "nothing consumed on error");
    }
    assert_eq!(
        decode_startup(&mut startup_with_len(13, PROTOCOL_3, b"u\0\xff\0\0")),
        Err(CodecError::NotUtf8 {
            message: "StartupMessage"
        })
    );
    // Protocol 3.2 is parsed; negotiating it down is the caller's business.
    assert_eq!(
        decode_startup(&mut startup_with_len(9, 0x0003_0002, b"\0")),
        Ok(Some(Startup::Params {
            version: 0x0003_0002,
            params: vec![]
        }))
    );
}

#[test]
fn malformed_bodies_are_errors() {
    let malformed = |message, reason| CodecError::Malformed { message, reason };
    let front = |tag, body: &[u8]| parse_frontend(&Frame::new(tag, body)).unwrap_err();
    assert_eq!(
        front(b'Q', b"SELECT 1"),
        malformed("Query", "string without NUL terminator")
    );
    assert_eq!(
        front(b'Q', b"SELECT 1\0x"),
        malformed("Query", "trailing bytes after the last field")
    );
    assert_eq!(
        front(b'Q', b"SELECT '\xe9'\0"),
        CodecError::NotUtf8 { message: "Query" }
    );
    assert_eq!(
        front(b'P', b"\0SELECT 1\0\xff\xff"),
        malformed("Parse", "negative parameter count")
    );
    assert_eq!(
        front(b'P', b"\0SELECT 1\0\0\x02\0\0\0\x17"),
        malformed("Parse", "body ends inside a field")
    );
    assert_eq!(
        front(b'B', b"portal\0"),
        malformed("Bind", "string without NUL terminator")
    );
    assert_eq!(
        front(b'D', b""),
        malformed("Describe", "body ends inside a field")
    );
    assert_eq!(
        front(b'E', b"\0\0\0"),
        malformed("Execute", "body ends inside a field")
    );
    assert_eq!(
        front(b'S', b"\0"),
        malformed("Sync", "trailing bytes after the last field")
    );
    assert_eq!(
        front(b'X', b"x"),
        malformed("Terminate", "trailing bytes after the last field")
    );
    assert_eq!(
        front(b'Q', b"\xe9\0").to_string(),
        "Query message has a text field that is not UTF-8 (client_encoding is not UTF8?); \
         forward the frame raw instead of parsing it"
    );

    let sasl = |body: &[u8]| parse_sasl_initial_response(body).unwrap_err();
    assert_eq!(
        sasl(b"SCRAM-SHA-256\0\xff\xff\xff\xfe"),
        malformed("SASLInitialResponse", "negative data length")
    );
    assert_eq!(
        sasl(b"SCRAM-SHA-256\0\0\0\0\x05abc"),
        malformed("SASLInitialResponse", "body ends inside a field")
    );
    assert_eq!(
        sasl(b"SCRAM-SHA-256\0\0\0\0\x01ab"),
        malformed("SASLInitialResponse", "trailing bytes after the last field")
    );

    let back = |tag, body: &[u8]| parse_backend(&Frame::new(tag, body)).unwrap_err();
    assert_eq!(
        back(b'R', b"\0\0"),
        malformed("Authentication", "body ends inside a field")
    );
    assert_eq!(
        back(b'R', b"\0\0\0\0x"),
        malformed("Authentication", "trailing bytes after the last field")
    );
    assert_eq!(
        back(b'R', b"\0\0\0\x05\x01\x02"),
        malformed("Authentication", "body ends inside a field")
    );
    assert_eq!(
        back(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0"),
        malformed("Authentication", "string without NUL terminator")
    );
    assert_eq!(
        back(b'K', b"\0\0\0\x01\0\0\0\x02\0\0"),
        malformed("BackendKeyData", "trailing bytes after the last field")
    );
    assert_eq!(
        back(b'Z', b""),
        malformed("ReadyForQuery", "body ends inside a field")
    );
    assert_eq!(
        back(b'S', b"name\0"),
        malformed("ParameterStatus", "string without NUL terminator")
    );
    assert_eq!(
        back(b'E', b"SERROR\0C42601\0\0"),
        malformed("ErrorResponse", "no message field (M)")
    );
    assert_eq!(
        back(b'E', b"SERROR\0C42601\0Mx\0"),
        malformed("ErrorResponse", "body ends inside a field")
    );
    assert_eq!(
        back(b'N', b"C0\0Mx\0\0"),
        malformed("NoticeResponse", "no severity field (S)")
    );
    assert_eq!(
        back(b'1', b"x"),
        malformed("ParseComplete", "trailing bytes after the last field")
    );
}

/// Any message a peer could send: a random tag and a random body.
fn any_frame() -> impl Strategy<Value = Frame> {
    let tags = prop_oneof![
        prop::sample::select(b"QPBDCESHXdcfpFRKZEN123CGHWA".to_vec()),
        any::<u8>(),
    ];
    (tags, prop::collection::vec(any::<u8>(), 0..300))
        .prop_map(|(tag, body)| Frame::new(tag, &body))
}

/// Cuts `bytes` into chunks at the given (unsorted, possibly repeated) offsets.
fn chunks<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut offsets: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    offsets.push(0);
    offsets.push(bytes.len());
    offsets.sort_unstable();
    offsets.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_streams_decode_to_what_was_encoded(
        params in prop::collection::vec(("[a-z_]{1,12}", "\\PC{0,20}"), 0..5),
        frames in prop::collection::vec(any_frame(), 0..20),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut bytes = BytesMut::new();
        startup_message(&mut bytes, &params);
        frames.iter().for_each(|f| bytes.extend_from_slice(&f.raw));

        let mut decoder = Decoder::new(true);
        for chunk in chunks(&bytes, &cuts) {
            decoder.feed(chunk).unwrap();
        }
        let mut expected = vec![Msg::Startup(Startup::Params {
            version: PROTOCOL_3,
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })];
        expected.extend(frames.into_iter().map(Msg::Frame));
        prop_assert_eq!(decoder.finish(), expected);
    }

    #[test]
    fn random_bytes_never_panic_the_decoders(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        in_startup: bool,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut decoder = Decoder::new(in_startup);
        for chunk in chunks(&bytes, &cuts) {
            if decoder.feed(chunk).is_err() {
                break;
            }
        }
        for message in &decoder.out {
            if let Msg::Frame(frame) = message {
                let _ = parse_frontend(frame);
                let _ = parse_backend(frame);
                let _ = parse_sasl_initial_response(frame.body());
            }
        }
    }

    #[test]
    fn random_bodies_never_panic_the_typed_parsers(frame in any_frame()) {
        let _ = parse_frontend(&frame);
        let _ = parse_backend(&frame);
        let _ = parse_sasl_initial_response(frame.body());
    }

    #[test]
    fn random_startup_bodies_never_panic(
        code in prop_oneof![
            Just(PROTOCOL_3), Just(SSL_REQUEST), Just(GSSENC_REQUEST), Just(CANCEL_REQUEST), any::<i32>()
        ],
        body in prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..100),
    ) {
        let mut buf = startup_with_len(8 + body.len() as i32, code, &body);
        let len = buf.len();
        match codec::decode_startup(&mut buf) {
            Ok(Some(_)) => prop_assert!(buf.is_empty()),
            Ok(None) => prop_assert!(false, "a whole packet must decode or fail"),
            Err(_) => prop_assert_eq!(buf.len(), len),
        }
    }
}
