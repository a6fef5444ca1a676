//! The two encodings of `arena.v1` and the shared-update encoder.
//!
//! An update is encoded once per world per tick and sent to every client of the world. Only its
//! `ack_seq` differs per client, so [`encode_update`] splits the message around a fixed-width
//! `ack_seq` value: `head ++ ack_bytes(seq) ++ tail` is a complete, standard message in either
//! encoding, and the server writes the three parts with one vectored write.

use serde::{Deserialize, Serialize};

use crate::protocol::{BotDelta, BotId, ClientMsg, Event, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, ServerMsg, Tick};

/// The encoding negotiated by WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `arena.v1.msgpack`: MessagePack maps in binary frames.
    MsgPack,
    /// `arena.v1.json`: JSON objects in text frames.
    Json,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::MsgPack, Encoding::Json];

    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::MsgPack => SUBPROTOCOL_MSGPACK,
            Encoding::Json => SUBPROTOCOL_JSON,
        }
    }

    pub fn from_subprotocol(name: &str) -> Option<Self> {
        Encoding::ALL.into_iter().find(|e| e.subprotocol() == name)
    }

    /// Whether messages travel in binary (MessagePack) or text (JSON) frames.
    pub fn is_binary(self) -> bool {
        matches!(self, Encoding::MsgPack)
    }

    /// A small index for per-encoding arrays.
    pub fn index(self) -> usize {
        match self {
            Encoding::MsgPack => 0,
            Encoding::Json => 1,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON / MessagePack, or a field missing or of the wrong type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Well-formed, but its `type` names no message.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
}

/// Encoding failed; only possible for values outside the protocol's data model.
#[derive(Debug, thiserror::Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(String);

const CLIENT_TYPES: [&str; 5] = ["join", "resume", "input", "ping", "resync"];
const SERVER_TYPES: [&str; 5] = ["welcome", "update", "snapshot", "error", "pong"];
/// Error details are cut to this many bytes; serde messages may quote client data.
const MAX_DETAIL: usize = 160;

/// Append the encoding of `msg` to `out`.
pub fn encode_into<T: Serialize>(enc: Encoding, msg: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match enc {
        Encoding::MsgPack => rmp_serde::encode::write_named(out, msg).map_err(|e| EncodeError(e.to_string())),
        Encoding::Json => serde_json::to_writer(out, msg).map_err(|e| EncodeError(e.to_string())),
    }
}

/// Encode `msg` into a new buffer.
pub fn encode<T: Serialize>(enc: Encoding, msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(128);
    encode_into(enc, msg, &mut out)?;
    Ok(out)
}

/// Decode a client → server message.
pub fn decode_client(enc: Encoding, bytes: &[u8]) -> Result<ClientMsg, DecodeError> {
    decode_tagged(enc, bytes, &CLIENT_TYPES)
}

/// Decode a server → client message.
pub fn decode_server(enc: Encoding, bytes: &[u8]) -> Result<ServerMsg, DecodeError> {
    decode_tagged(enc, bytes, &SERVER_TYPES)
}

#[derive(Deserialize)]
struct TypeProbe {
    #[serde(rename = "type")]
    ty: String,
}

/// Deepest nesting a message may have. `arena.v1` needs 6 levels; a hostile frame of a few KiB
/// could otherwise nest thousands deep and exhaust the decoding thread's stack.
pub const MAX_NESTING: usize = 16;

fn decode_raw<'a, T: Deserialize<'a>>(enc: Encoding, bytes: &'a [u8]) -> Result<T, String> {
    match enc {
        Encoding::MsgPack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
            de.set_max_depth(MAX_NESTING);
            T::deserialize(&mut de).map_err(|e| e.to_string())
        }
        // serde_json stops at 128 levels by itself.
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

fn decode_tagged<'a, T: Deserialize<'a>>(enc: Encoding, bytes: &'a [u8], known: &[&str]) -> Result<T, DecodeError> {
    decode_raw(enc, bytes).map_err(|detail| {
        // Only on failure: find out whether the frame was well-formed with an unknown type.
        match decode_raw::<TypeProbe>(enc, bytes) {
            Ok(probe) if !known.contains(&probe.ty.as_str()) => DecodeError::UnknownType(truncate(probe.ty)),
            _ => DecodeError::Malformed(truncate(detail)),
        }
    })
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Width of the `ack_seq` value inside a spliced update.
pub fn ack_len(enc: Encoding) -> usize {
    match enc {
        // 0xce + u32 big-endian: MessagePack's uint 32, valid for every value.
        Encoding::MsgPack => 5,
        // Up to ten decimal digits, right-padded with spaces (JSON whitespace).
        Encoding::Json => 10,
    }
}

/// The fixed-width `ack_seq` value for a spliced update; returns the bytes to send.
pub fn ack_bytes(enc: Encoding, seq: u32, buf: &mut [u8; 10]) -> &[u8] {
    match enc {
        Encoding::MsgPack => {
            buf[0] = 0xce;
            buf[1..5].copy_from_slice(&seq.to_be_bytes());
            &buf[..5]
        }
        Encoding::Json => {
            *buf = [b' '; 10];
            let mut digits = [0u8; 10];
            let mut n = seq;
            let mut len = 0;
            loop {
                digits[len] = b'0' + (n % 10) as u8;
                len += 1;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for i in 0..len {
                buf[i] = digits[len - 1 - i];
            }
            &buf[..10]
        }
    }
}

#[derive(Serialize)]
struct UpdateBody<'a> {
    tick: Tick,
    changed: &'a [BotDelta],
    removed: &'a [BotId],
    events: &'a [Event],
}

/// Encode one tick's update for all clients of a world.
///
/// Appends to `head` the message up to the `ack_seq` value and to `tail` everything after it;
/// `head ++ ack_bytes(enc, seq) ++ tail` is the `update` message for a client whose last applied
/// input is `seq`.
pub fn encode_update(
    enc: Encoding,
    tick: Tick,
    changed: &[BotDelta],
    removed: &[BotId],
    events: &[Event],
    head: &mut Vec<u8>,
    tail: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let body = UpdateBody { tick, changed, removed, events };
    let start = tail.len();
    match enc {
        Encoding::MsgPack => {
            // fixmap of 6: type, ack_seq, then the body's 4 entries.
            head.push(0x86);
            write_msgpack_str(head, "type");
            write_msgpack_str(head, "update");
            write_msgpack_str(head, "ack_seq");
            encode_into(enc, &body, tail)?;
            // Drop the body's own fixmap header (0x84).
            debug_assert_eq!(tail[start], 0x84);
            tail.remove(start);
        }
        Encoding::Json => {
            head.extend_from_slice(br#"{"type":"update","ack_seq":"#);
            encode_into(enc, &body, tail)?;
            // `{"tick":...}` becomes `,"tick":...}`.
            debug_assert_eq!(tail[start], b'{');
            tail[start] = b',';
        }
    }
    Ok(())
}

fn write_msgpack_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() < 32);
    out.push(0xa0 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, ErrorMsg, Update};

    fn sample_update(ack: u32) -> Update {
        Update {
            ack_seq: ack,
            tick: 77,
            changed: vec![BotDelta { id: 2, x: Some(1.5), y: Some(2.25), ..Default::default() }],
            removed: vec![9],
            events: vec![Event::Say { bot: 2, text: "hi \"there\"".into() }],
        }
    }

    #[test]
    fn spliced_update_decodes_with_each_clients_ack() {
        for enc in Encoding::ALL {
            let u = sample_update(0);
            let (mut head, mut tail) = (Vec::new(), Vec::new());
            encode_update(enc, u.tick, &u.changed, &u.removed, &u.events, &mut head, &mut tail).unwrap();
            for ack in [0, 7, 10, 99_999, u32::MAX] {
                let mut buf = [0; 10];
                let mut msg = head.clone();
                msg.extend_from_slice(ack_bytes(enc, ack, &mut buf));
                msg.extend_from_slice(&tail);
                assert_eq!(msg.len(), head.len() + ack_len(enc) + tail.len());
                let decoded = decode_server(enc, &msg).unwrap();
                assert_eq!(decoded, ServerMsg::Update(sample_update(ack)), "{enc:?} ack {ack}");
            }
        }
    }

    #[test]
    fn json_update_is_plain_json() {
        let u = sample_update(0);
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        encode_update(Encoding::Json, u.tick, &u.changed, &u.removed, &u.events, &mut head, &mut tail).unwrap();
        let mut buf = [0; 10];
        head.extend_from_slice(ack_bytes(Encoding::Json, 42, &mut buf));
        head.extend_from_slice(&tail);
        let v: serde_json::Value = serde_json::from_slice(&head).unwrap();
        assert_eq!(v["type"], "update");
        assert_eq!(v["ack_seq"], 42);
        assert_eq!(v["changed"][0]["x"], 1.5);
    }

    #[test]
    fn unknown_type_is_told_apart_from_malformed() {
        for enc in Encoding::ALL {
            let unknown = encode(enc, &serde_json::json!({"type": "dance", "x": 1})).unwrap();
            assert_eq!(decode_client(enc, &unknown), Err(DecodeError::UnknownType("dance".into())));
            let missing = encode(enc, &serde_json::json!({"type": "input"})).unwrap();
            assert!(matches!(decode_client(enc, &missing), Err(DecodeError::Malformed(_))));
            assert!(matches!(decode_client(enc, b"\xc1garbage{"), Err(DecodeError::Malformed(_))));
            let wrong = encode(enc, &serde_json::json!({"type": "ping", "nonce": "x"})).unwrap();
            assert!(matches!(decode_client(enc, &wrong), Err(DecodeError::Malformed(_))));
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut deep = vec![0x91u8; 5_000];
        deep.push(0xc0);
        assert!(matches!(decode_client(Encoding::MsgPack, &deep), Err(DecodeError::Malformed(_))));
        let mut json = "[".repeat(5_000);
        json.push_str(&"]".repeat(5_000));
        assert!(matches!(decode_client(Encoding::Json, json.as_bytes()), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn long_unknown_types_are_truncated() {
        let ty = "x".repeat(2000);
        let bytes = encode(Encoding::Json, &serde_json::json!({ "type": ty })).unwrap();
        match decode_client(Encoding::Json, &bytes) {
            Err(DecodeError::UnknownType(t)) => assert!(t.len() <= MAX_DETAIL + 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_client_message_roundtrips() {
        use crate::protocol::{Act, Command, Input, Move};
        let msgs = vec![
            ClientMsg::Join { ticket: "t".into(), world: Some("w".into()) },
            ClientMsg::Join { ticket: "t".into(), world: None },
            ClientMsg::Resume { token: "r".into() },
            ClientMsg::Input(Input::new(3, Command::Move(Move::To([1.0, 2.0])))),
            ClientMsg::Input(Input::new(4, Command::Say("hello".into()))),
            ClientMsg::Input(Input::new(5, Command::Act(Act { action: "wave".into(), target: Some(2) }))),
            ClientMsg::Ping { nonce: 12 },
            ClientMsg::Resync,
        ];
        for enc in Encoding::ALL {
            for m in &msgs {
                assert_eq!(&decode_client(enc, &encode(enc, m).unwrap()).unwrap(), m);
            }
        }
        let err = ServerMsg::Error(ErrorMsg { code: ErrorCode::TicketReused, message: "m".into() });
        let json = String::from_utf8(encode(Encoding::Json, &err).unwrap()).unwrap();
        assert_eq!(json, r#"{"type":"error","code":"ticket_reused","message":"m"}"#);
    }
}

/// What `docs/protocol.md` §2 promises about MessagePack numbers from clients.
#[cfg(test)]
mod msgpack_widths {
    use super::*;
    use crate::protocol::{Command, Move};

    /// `{"type":"input","seq":<seq>,"move":{"to":[<x>,<y>]}}` with the given raw encodings.
    fn input(seq: &[u8], x: &[u8], y: &[u8]) -> Vec<u8> {
        let mut m = vec![0x83, 0xa4];
        m.extend_from_slice(b"type");
        m.push(0xa5);
        m.extend_from_slice(b"input");
        m.push(0xa3);
        m.extend_from_slice(b"seq");
        m.extend_from_slice(seq);
        m.push(0xa4);
        m.extend_from_slice(b"move");
        m.extend_from_slice(&[0x81, 0xa2]);
        m.extend_from_slice(b"to");
        m.push(0x92);
        m.extend_from_slice(x);
        m.extend_from_slice(y);
        m
    }

    fn decoded(bytes: &[u8]) -> Option<(u32, [f32; 2])> {
        match decode_client(Encoding::MsgPack, bytes).ok()? {
            ClientMsg::Input(i) => match i.command().ok()? {
                Command::Move(Move::To(p)) => Some((i.seq, p)),
                _ => None,
            },
            _ => None,
        }
    }

    #[test]
    fn integers_of_any_width_and_both_float_widths_are_accepted() {
        let f32_5 = [&[0xca][..], &5.0f32.to_be_bytes()].concat();
        let f64_7 = [&[0xcb][..], &7.0f64.to_be_bytes()].concat();
        for seq in [&[0x07][..], &[0xcc, 7], &[0xcd, 0, 7], &[0xce, 0, 0, 0, 7], &[0xcf, 0, 0, 0, 0, 0, 0, 0, 7]] {
            assert_eq!(decoded(&input(seq, &f32_5, &f64_7)), Some((7, [5.0, 7.0])), "seq as {seq:x?}");
        }
        // Coordinates given as integers are numbers too.
        assert_eq!(decoded(&input(&[0x01], &[0x05], &[0xcd, 0x01, 0x00])), Some((1, [5.0, 256.0])));
        // A value, not a width, decides: a seq past u32 or a negative one is refused.
        assert_eq!(decoded(&input(&[0xcf, 0, 0, 0, 1, 0, 0, 0, 0], &f32_5, &f32_5)), None);
        assert_eq!(decoded(&input(&[0xff], &f32_5, &f32_5)), None);
    }
}
