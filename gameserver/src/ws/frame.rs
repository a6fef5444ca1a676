//! Server → client WebSocket frames. Server frames are never masked (RFC 6455 §5.1): a frame is
//! a small header followed by the message, so a world's update message — encoded once per tick
//! and shared by its clients — goes out with a header of a few bytes per client, in one
//! vectored write.

use arena_sdk::Encoding;

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PONG: u8 = 0xA;

/// The data opcode of an encoding.
pub fn data_opcode(enc: Encoding) -> u8 {
    if enc.is_binary() { OP_BINARY } else { OP_TEXT }
}

/// Append a final, unmasked frame header for a payload of `len` bytes.
pub fn write_header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Write a final, unmasked frame header for a payload of `len` bytes into `out`; its length.
pub fn header_into(opcode: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A pong answering a ping's payload (at most 125 bytes, as the ping's).
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + payload.len());
    write_header(OP_PONG, payload.len(), &mut out);
    out.extend_from_slice(payload);
    out
}

/// A close frame without a status code.
pub fn empty_close_frame() -> Vec<u8> {
    vec![0x80 | OP_CLOSE, 0]
}

/// A whole data frame carrying `payload`.
pub fn data_frame(enc: Encoding, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    write_header(data_opcode(enc), payload.len(), &mut out);
    out.extend_from_slice(payload);
    out
}

/// A close frame with a status code and a reason (cut to the 123 bytes a control frame allows).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = Vec::with_capacity(4 + cut);
    write_header(OP_CLOSE, 2 + cut, &mut out);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..cut]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::FrameHeader;

    fn parse(bytes: &[u8]) -> (FrameHeader, u64) {
        FrameHeader::parse(&mut Cursor::new(bytes)).unwrap().unwrap()
    }

    #[test]
    fn headers_match_tungstenites_parser() {
        for len in [0usize, 125, 126, 65_535, 65_536, 200_000] {
            let mut out = Vec::new();
            write_header(OP_BINARY, len, &mut out);
            let (h, parsed_len) = parse(&out);
            assert!(h.is_final);
            assert!(h.mask.is_none());
            assert_eq!(parsed_len, len as u64);
            let mut fixed = [0u8; 10];
            let n = header_into(OP_BINARY, len, &mut fixed);
            assert_eq!(&fixed[..n], &out[..]);
        }
    }

    #[test]
    fn close_reason_is_bounded() {
        let f = close_frame(4002, &"é".repeat(100));
        let (_, len) = parse(&f);
        assert!(len <= 125);
        assert_eq!(&f[2..4], &4002u16.to_be_bytes());
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
