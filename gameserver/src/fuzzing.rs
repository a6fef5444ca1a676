//! The checks behind the fuzz targets (`fuzz/`, cargo-fuzz with libFuzzer), which
//! `tests/fuzz_corpus.rs` also replays over the committed corpus on every test run. Each takes
//! any bytes and panics only on a defect: a parser that panics, a decoder that accepts a message
//! it cannot give back unchanged, a frame reader that hands out more than its limits, a session
//! that lets a client past its budgets.

use std::time::Duration;

use arena_sdk::Encoding;
use arena_sdk::codec::{decode_client, decode_server, encode};
use arena_sdk::protocol::{ClientMsg, MAX_CLIENT_FRAME_BYTES, MAX_SEQ_STEP, close, valid_id};
use arena_sdk::ticket::{TicketClaims, TicketKey, TicketVerifier, sign, sign_payload};
use bytes::BytesMut;

use crate::session::{Session, SessionLimits, Step};
use crate::ws::handshake::{Decision, Parsed, decide};
use crate::ws::inbound::{Decoder, Frame, MAX_CONTROL_PAYLOAD};

/// A target's check.
pub type Check = fn(&[u8]);

/// Every fuzz target by name, for the corpus replay.
pub const TARGETS: &[(&str, Check)] = &[
    ("client_message", client_message),
    ("server_message", server_message),
    ("handshake", handshake),
    ("frames", frames),
    ("ticket", ticket),
    ("session", session),
];

/// A client → server message in both encodings: decoding and validating never panic, and a
/// message the server accepts (an input only if it validates) encodes again and decodes to the
/// same bytes. (JSON numbers too large for an `f32` decode as infinite, which validation refuses:
/// `fuzz/regressions/client_message/`.)
pub fn client_message(data: &[u8]) {
    for enc in Encoding::ALL {
        let Ok(msg) = decode_client(enc, data) else { continue };
        if let ClientMsg::Input(input) = &msg
            && input.command().is_err()
        {
            continue;
        }
        let bytes = encode(enc, &msg).expect("a decoded client message encodes");
        let again = decode_client(enc, &bytes).expect("a re-encoded client message decodes");
        assert_eq!(encode(enc, &again).expect("encodes"), bytes, "{msg:?} does not survive a round trip");
    }
}

/// A server → client message, as the SDK decodes it: decoding never panics (a bot must not crash
/// on what a hostile or broken server sends), and what decodes encodes again; in MessagePack, to
/// the same message (JSON cannot carry the infinite numbers an overlong one decodes to).
pub fn server_message(data: &[u8]) {
    for enc in Encoding::ALL {
        let Ok(msg) = decode_server(enc, data) else { continue };
        let bytes = encode(enc, &msg).expect("a decoded server message encodes");
        if enc == Encoding::Json {
            continue;
        }
        let again = decode_server(enc, &bytes).expect("a re-encoded server message decodes");
        assert_eq!(encode(enc, &again).expect("encodes"), bytes, "{msg:?} does not survive a round trip");
    }
}

/// The upgrade request: any bytes get an answer that is a well-formed HTTP status line, and a
/// request is only complete within the bytes given.
pub fn handshake(data: &[u8]) {
    for draining in [false, true] {
        match decide(data, draining) {
            Parsed::Partial => {}
            Parsed::Complete { len, decision } => {
                assert!(len <= data.len(), "a request of {len} bytes in {} bytes", data.len());
                match decision {
                    Decision::Accept { response, .. } => {
                        assert!(!draining, "a draining server accepted an upgrade");
                        assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
                        assert!(response.ends_with(b"\r\n\r\n"));
                    }
                    Decision::Reject { status, response } => {
                        assert!((400..600).contains(&status), "status {status}");
                        assert!(response.starts_with(format!("HTTP/1.1 {status} ").as_bytes()));
                    }
                }
            }
        }
    }
}

/// The client frame reader, fed the bytes in chunks (the first byte picks the chunk size): it
/// never hands out a message over the limit or a control frame over 125 bytes, never buffers a
/// partial message past the limit, and stops at its first error.
pub fn frames(data: &[u8]) {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = Decoder::new(MAX_CLIENT_FRAME_BYTES);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(Frame::Message { binary, payload })) => {
                    assert!(payload.len() <= MAX_CLIENT_FRAME_BYTES);
                    if !binary {
                        assert!(std::str::from_utf8(payload).is_ok(), "a text message that is not UTF-8");
                    }
                }
                Ok(Some(Frame::Ping(payload))) => assert!(payload.len() <= MAX_CONTROL_PAYLOAD),
                Ok(Some(Frame::Close { reason, .. })) => assert!(reason.len() <= MAX_CONTROL_PAYLOAD),
                Ok(Some(Frame::Pong | Frame::Fragment)) => {}
                Err(_) => return,
            }
            assert!(decoder.partial_len() <= MAX_CLIENT_FRAME_BYTES);
        }
    }
}

/// Join tickets: any string is refused or accepted without a panic; and since a fuzzer cannot
/// forge a signature, the bytes are also signed as a ticket's payload, so the claims parser sees
/// them — what it accepts is a ticket the server can use.
pub fn ticket(data: &[u8]) {
    static VERIFIER: std::sync::LazyLock<TicketVerifier> = std::sync::LazyLock::new(|| {
        let other = TicketKey::new("k2", b"a second key, for a verifier that holds two").expect("key");
        TicketVerifier::new(vec![TicketKey::development(), other])
    });
    let (key, verifier) = (TicketKey::development(), &*VERIFIER);
    let now = 1_800_000_000;
    let _ = verifier.verify(&String::from_utf8_lossy(data), now);
    if let Ok(claims) = verifier.verify(&sign_payload(&key, data), now) {
        assert_accepted(&claims, now);
        // What was accepted signs again to a ticket that is accepted.
        assert_eq!(verifier.verify(&sign(&key, &claims), now).as_ref(), Ok(&claims));
    }
}

fn assert_accepted(claims: &TicketClaims, now: u64) {
    assert!(valid_id(&claims.world) && valid_id(&claims.bot), "{claims:?}");
    assert!(claims.server.as_deref().is_none_or(valid_id), "{claims:?}");
    assert!(claims.exp > now && claims.exp <= now + 3600, "{claims:?}");
}

/// A connection's session fed a stream of frames (a length byte, an opcode-and-time byte, the
/// payload): it never panics, a seq it passes always grows within the window, and once it closes
/// the connection the caller stops.
pub fn session(data: &[u8]) {
    for enc in Encoding::ALL {
        let mut session = Session::new(enc, SessionLimits::default(), Duration::ZERO);
        let mut now = Duration::ZERO;
        let mut last_seq = 0u32;
        let mut rest = data;
        while let [len, meta, tail @ ..] = rest {
            let (payload, next) = tail.split_at(usize::from(*len).min(tail.len()));
            rest = next;
            now += Duration::from_millis(u64::from(meta >> 2) * 10);
            let step = match meta & 3 {
                0 => session.on_frame(false, payload, now),
                1 => session.on_frame(true, payload, now),
                _ => match session.on_partial_frame(now) {
                    Some(step) => step,
                    None => continue,
                },
            };
            match step {
                Step::Join { .. } | Step::Resume { .. } => session.joined(last_seq),
                Step::Input { seq, .. } => {
                    assert!(session.is_joined(), "an input before a join");
                    assert!(seq > last_seq && seq - last_seq <= MAX_SEQ_STEP, "seq {seq} after {last_seq}");
                    last_seq = seq;
                }
                Step::Close { code, .. } => {
                    assert_eq!(code, close::POLICY_VIOLATION);
                    break;
                }
                Step::Resync | Step::Pong(_) | Step::Error(_) => {}
            }
        }
    }
}
