//! Fuzzes the codec with arbitrary streams: the decoders and the typed parsers must never
//! panic, and how the input is chunked must not change what is decoded.
//!
//! The first byte picks where the stream starts (startup packets or tagged frames) and where
//! it is cut in two; the rest is the stream.

#![no_main]

use bytes::BytesMut;
use cutover_proxy::codec::{self, CodecError, Frame, Startup};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Msg {
    Startup(Startup),
    Frame(Frame),
}

/// Decodes `chunks` fed one after the other; stops at the first error.
fn decode(chunks: &[&[u8]], mut in_startup: bool) -> (Vec<Msg>, Option<CodecError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let next = if in_startup {
                codec::decode_startup(&mut buf).map(|s| s.map(Msg::Startup))
            } else {
                codec::decode_frame(&mut buf).map(|f| f.map(Msg::Frame))
            };
            match next {
                Ok(Some(msg)) => {
                    if let Msg::Startup(s) = &msg {
                        in_startup = matches!(s, Startup::Ssl | Startup::GssEnc);
                    }
                    out.push(msg);
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let in_startup = control & 1 == 1;
    let cut = usize::from(control >> 1) * stream.len() / 127;
    let (head, tail) = stream.split_at(cut.min(stream.len()));

    let whole = decode(&[stream], in_startup);
    let split = decode(&[head, tail], in_startup);
    assert_eq!(whole, split, "chunking changed the result");

    for msg in &whole.0 {
        if let Msg::Frame(frame) = msg {
            assert_eq!(frame.raw.len(), frame.body().len() + 5);
            let _ = codec::parse_frontend(frame);
            let _ = codec::parse_backend(frame);
            let _ = codec::parse_sasl_initial_response(frame.body());
        }
    }
});
