//! Client → server WebSocket frames (RFC 6455 §5), decoded one *frame* at a time, without I/O.
//!
//! A message-at-a-time reader loops until a message is complete; a client streaming empty,
//! never-final fragments would keep it looping without ever returning. This decoder returns
//! after every frame — a whole message, one fragment, a control frame — so the caller can
//! charge each one against its limits and yield between them. Sizes are checked from the header,
//! before the payload is waited for: a frame over the limit is refused without being buffered.

use bytes::{Buf, BytesMut};

/// Largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest frame header a client may send (2 + 8 length + 4 mask).
pub const MAX_HEADER: usize = 14;

/// What one frame meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole message: an unfragmented data frame, or the last fragment of one.
    Message {
        binary: bool,
        payload: &'a [u8],
    },
    /// A fragment that does not end its message.
    Fragment,
    Ping(&'a [u8]),
    Pong,
    /// The client closes; `code` is absent when its close frame carried none.
    Close {
        code: Option<u16>,
        reason: &'a str,
    },
}

/// A frame the connection cannot survive, with the close code it earns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("message of more than {0} bytes")]
    TooLarge(usize),
    #[error("text message is not UTF-8")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => arena_sdk::protocol::close::PROTOCOL_ERROR,
            FrameError::TooLarge(_) => arena_sdk::protocol::close::MESSAGE_TOO_BIG,
            FrameError::InvalidUtf8 => arena_sdk::protocol::close::INVALID_PAYLOAD,
        }
    }
}

/// A message being received in fragments.
#[derive(Debug)]
struct Partial {
    binary: bool,
    data: Vec<u8>,
}

#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    partial: Option<Partial>,
    /// The last frame's (unmasked) payload, or the last completed message.
    payload: Vec<u8>,
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

fn protocol(why: &'static str) -> FrameError {
    FrameError::Protocol(why)
}

/// Close codes a peer may send (RFC 6455 §7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

impl Decoder {
    /// A decoder for messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Decoder { max_message, partial: None, payload: Vec::new() }
    }

    /// Decode the frame at the front of `buf` and remove its bytes. `Ok(None)`: no whole frame
    /// yet — read more (a frame never needs more than `MAX_HEADER + max_message` bytes).
    pub fn decode<'a>(&'a mut self, buf: &mut BytesMut) -> Result<Option<Frame<'a>>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(protocol("reserved bits set (no extension was agreed)"));
        }
        let opcode = b0 & 0x0F;
        if b1 & 0x80 == 0 {
            return Err(protocol("client frames must be masked"));
        }
        let (len, ext) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 2)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let n = u64::from_be_bytes(b);
                if n >> 63 != 0 {
                    return Err(protocol("frame length has its top bit set"));
                }
                (n, 8)
            }
            n => (u64::from(n), 0),
        };
        let control = opcode & 0x8 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                let before = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
                if before + len > self.max_message as u64 {
                    return Err(FrameError::TooLarge(self.max_message));
                }
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(protocol("control frames must not be fragmented"));
                }
                if len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(protocol("control frame payload over 125 bytes"));
                }
            }
            _ => return Err(protocol("unknown opcode")),
        }
        let header = 2 + ext + 4;
        let len = len as usize;
        if buf.len() < header + len {
            return Ok(None);
        }
        let mask = [buf[header - 4], buf[header - 3], buf[header - 2], buf[header - 1]];
        buf.advance(header);
        self.payload.clear();
        self.payload.extend(buf[..len].iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        buf.advance(len);
        debug_assert!(!control || fin);

        match opcode {
            OP_CONTINUATION => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(protocol("continuation frame without a message to continue"));
                };
                partial.data.extend_from_slice(&self.payload);
                if !fin {
                    return Ok(Some(Frame::Fragment));
                }
                let Partial { binary, data } = self.partial.take().unwrap_or_else(|| unreachable!("checked above"));
                self.payload = data;
                self.message(binary)
            }
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(protocol("a new message started before the last one ended"));
                }
                let binary = opcode == OP_BINARY;
                if !fin {
                    self.partial = Some(Partial { binary, data: std::mem::take(&mut self.payload) });
                    return Ok(Some(Frame::Fragment));
                }
                self.message(binary)
            }
            OP_PING => Ok(Some(Frame::Ping(&self.payload))),
            OP_PONG => Ok(Some(Frame::Pong)),
            _ => {
                // Close.
                match self.payload.len() {
                    0 => Ok(Some(Frame::Close { code: None, reason: "" })),
                    1 => Err(protocol("close frame with a one-byte payload")),
                    _ => {
                        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
                        if !valid_close_code(code) {
                            return Err(protocol("invalid close code"));
                        }
                        let reason = std::str::from_utf8(&self.payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
                        Ok(Some(Frame::Close { code: Some(code), reason }))
                    }
                }
            }
        }
    }

    fn message(&self, binary: bool) -> Result<Option<Frame<'_>>, FrameError> {
        if !binary && std::str::from_utf8(&self.payload).is_err() {
            return Err(FrameError::InvalidUtf8);
        }
        Ok(Some(Frame::Message { binary, payload: &self.payload }))
    }

    /// Bytes held for a message still arriving in fragments.
    pub fn partial_len(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.data.len())
    }
}

/// A masked client frame (for tests and fuzzing seeds).
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: [u8; 4] = [1, 2, 3, 4];

    fn decode_all(bytes: &[u8], max: usize) -> Vec<Result<String, FrameError>> {
        let mut d = Decoder::new(max);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(f)) => out.push(Ok(format!("{f:?}"))),
                Err(e) => {
                    out.push(Err(e));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn frames_come_one_at_a_time() {
        let mut bytes = client_frame(false, OP_TEXT, b"hel", M);
        bytes.extend(client_frame(true, OP_PING, b"p", M));
        bytes.extend(client_frame(false, OP_CONTINUATION, b"", M));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"lo", M));
        bytes.extend(client_frame(true, OP_BINARY, &[0xff, 0], M));
        bytes.extend(client_frame(true, OP_CLOSE, &[0x03, 0xe8, b'b', b'y', b'e'], M));
        let got: Vec<String> = decode_all(&bytes, 4096).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            got,
            vec![
                "Fragment",
                "Ping([112])",
                "Fragment",
                "Message { binary: false, payload: [104, 101, 108, 108, 111] }",
                "Message { binary: true, payload: [255, 0] }",
                "Close { code: Some(1000), reason: \"bye\" }",
            ]
        );
    }

    #[test]
    fn partial_input_waits() {
        let frame = client_frame(true, OP_TEXT, b"hello", M);
        let mut d = Decoder::new(4096);
        let mut buf = BytesMut::new();
        for (i, b) in frame.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = d.decode(&mut buf).unwrap();
            assert_eq!(r.is_some(), i == frame.len() - 1);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn violations_are_typed() {
        let err = |bytes: Vec<u8>| decode_all(&bytes, 16).pop().unwrap().unwrap_err();
        let mut unmasked = client_frame(true, OP_TEXT, b"x", M);
        unmasked[1] &= 0x7F;
        assert_eq!(err(unmasked), protocol("client frames must be masked"));
        assert_eq!(err(vec![0xC1, 0x80, 0, 0, 0, 0]), protocol("reserved bits set (no extension was agreed)"));
        assert_eq!(err(client_frame(true, 0x3, b"", M)), protocol("unknown opcode"));
        assert_eq!(err(client_frame(false, OP_PING, b"", M)), protocol("control frames must not be fragmented"));
        assert_eq!(err(client_frame(true, OP_PING, &[0; 126], M)), protocol("control frame payload over 125 bytes"));
        assert_eq!(
            err(client_frame(true, OP_CONTINUATION, b"x", M)),
            protocol("continuation frame without a message to continue")
        );
        let mut two = client_frame(false, OP_TEXT, b"a", M);
        two.extend(client_frame(true, OP_TEXT, b"b", M));
        assert_eq!(err(two), protocol("a new message started before the last one ended"));
        assert_eq!(err(client_frame(true, OP_BINARY, &[0; 17], M)), FrameError::TooLarge(16));
        // Too large across fragments, refused from the header of the fragment that overflows.
        let mut frags = client_frame(false, OP_BINARY, &[0; 10], M);
        frags.extend(&client_frame(true, OP_CONTINUATION, &[0; 10], M)[..2]);
        assert_eq!(err(frags), FrameError::TooLarge(16));
        // A header announcing 2^62 bytes is refused before anything is buffered.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend((1u64 << 62).to_be_bytes());
        assert_eq!(err(huge), FrameError::TooLarge(16));
        assert_eq!(err(client_frame(true, OP_TEXT, &[0xff], M)), FrameError::InvalidUtf8);
        assert_eq!(err(client_frame(true, OP_CLOSE, &[0x03, 0xed], M)), protocol("invalid close code"));
        assert_eq!(err(client_frame(true, OP_CLOSE, &[0x03], M)), protocol("close frame with a one-byte payload"));
        assert_eq!(FrameError::TooLarge(1).close_code(), 1009);
    }

    #[test]
    fn empty_fragments_cannot_run_for_ever_unnoticed() {
        // Each empty fragment is one frame returned to the caller, which counts it.
        let mut bytes = client_frame(false, OP_TEXT, b"", M);
        for _ in 0..1000 {
            bytes.extend(client_frame(false, OP_CONTINUATION, b"", M));
        }
        let got = decode_all(&bytes, 16);
        assert_eq!(got.len(), 1001);
        assert!(got.iter().all(|f| f.as_deref() == Ok("Fragment")));
    }
}
