//! A lean WebSocket client for the swarm: an HTTP upgrade, masked frames out, frames parsed in
//! place from one small buffer.
//!
//! The load tester shares two cores with the servers it measures, so a bot must cost as little as
//! possible: no per-connection writer task, no message objects for the 20 updates a second a bot
//! receives (see `peek.rs`), one read buffer that only grows for an unusually large frame.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const READ_CHUNK: usize = 4096;
/// Largest server frame accepted (a snapshot of a full world is a few KiB).
const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("handshake refused: {0}")]
    Refused(String),
    #[error("server closed the connection (code {0})")]
    Closed(u16),
    #[error("connection lost")]
    Eof,
    #[error("bad frame from server: {0}")]
    BadFrame(&'static str),
}

/// One received frame: its opcode and where its payload sits in the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    pub opcode: u8,
    start: usize,
    end: usize,
}

/// Received bytes and the frames in them, parsed in place.
#[derive(Debug)]
pub struct FrameBuf {
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[pos..len]`.
    pos: usize,
    len: usize,
}

impl FrameBuf {
    pub fn new() -> Self {
        FrameBuf { buf: vec![0; READ_CHUNK], pos: 0, len: 0 }
    }

    /// The payload of a frame returned by [`next_frame`](Self::next_frame).
    pub fn payload(&self, f: FrameRef) -> &[u8] {
        &self.buf[f.start..f.end]
    }

    /// The next complete frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Result<Option<FrameRef>, WsError> {
        let b = &self.buf[self.pos..self.len];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[0] & 0x80 == 0 {
            return Err(WsError::BadFrame("fragmented frames are not used by arena.v1"));
        }
        if b[1] & 0x80 != 0 {
            return Err(WsError::BadFrame("masked frame from server"));
        }
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(l) as usize, 10)
            }
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if len > MAX_FRAME {
            return Err(WsError::BadFrame("frame too large"));
        }
        if b.len() < header + len {
            return Ok(None);
        }
        let start = self.pos + header;
        let frame = FrameRef { opcode: b[0] & 0x0f, start, end: start + len };
        self.pos = start + len;
        Ok(Some(frame))
    }

    /// Room to read into: the unparsed tail moves to the front, and the buffer grows only for a
    /// frame bigger than it.
    pub fn space(&mut self) -> &mut [u8] {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        &mut self.buf[self.len..]
    }

    /// `n` bytes were read into [`space`](Self::space).
    pub fn filled(&mut self, n: usize) {
        self.len += n;
    }
}

impl Default for FrameBuf {
    fn default() -> Self {
        Self::new()
    }
}

/// Masked frames to send.
#[derive(Debug)]
pub struct FrameOut {
    mask_seed: u32,
    out: Vec<u8>,
}

impl FrameOut {
    pub fn new(seed: u32) -> Self {
        FrameOut { mask_seed: seed | 1, out: Vec::with_capacity(256) }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masks need not be secret here, only vary (RFC 6455 §5.3).
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        x.to_be_bytes()
    }

    /// The bytes of one masked frame.
    pub fn frame(&mut self, opcode: u8, payload: &[u8]) -> &[u8] {
        let mask = self.next_mask();
        self.out.clear();
        write_client_frame(opcode, payload, mask, &mut self.out);
        &self.out
    }
}

/// A connection during the join: async, on tokio.
#[derive(Debug)]
pub struct WsConn {
    stream: TcpStream,
    inbuf: FrameBuf,
    outbuf: FrameOut,
}

impl WsConn {
    /// Connect to `addr`, upgrade on `path` asking for `subprotocol`.
    pub async fn connect(addr: SocketAddr, path: &str, subprotocol: &str, timeout: Duration) -> Result<Self, WsError> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, path, subprotocol))
            .await
            .map_err(|_| WsError::Io(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
    }

    async fn connect_inner(addr: SocketAddr, path: &str, subprotocol: &str) -> Result<Self, WsError> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        let mut stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let seed = seed_from(&stream);
        let key = base64_16(seed);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut inbuf = FrameBuf::new();
        let head_end = loop {
            if inbuf.len == inbuf.buf.len() {
                return Err(WsError::Refused("response headers too large".into()));
            }
            let n = stream.read(&mut inbuf.buf[inbuf.len..]).await?;
            if n == 0 {
                return Err(WsError::Eof);
            }
            inbuf.len += n;
            if let Some(i) = inbuf.buf[..inbuf.len].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&inbuf.buf[..head_end]).to_string();
        if !head.starts_with("HTTP/1.1 101") {
            let status = head.lines().next().unwrap_or("").to_owned();
            let body = String::from_utf8_lossy(&inbuf.buf[head_end..inbuf.len]).trim().to_owned();
            return Err(WsError::Refused(format!("{status}: {body}")));
        }
        let agreed = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-protocol")))
            .map(|(_, v)| v.trim().to_owned());
        if agreed.as_deref() != Some(subprotocol) {
            return Err(WsError::Refused(format!("server chose subprotocol {agreed:?}")));
        }
        inbuf.pos = head_end;
        Ok(WsConn { stream, inbuf, outbuf: FrameOut::new(seed) })
    }

    /// Send one masked frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), WsError> {
        let bytes = self.outbuf.frame(opcode, payload);
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Send a close frame with `code`.
    pub async fn close(&mut self, code: u16) -> Result<(), WsError> {
        self.send(OP_CLOSE, &code.to_be_bytes()).await
    }

    /// The payload of a frame returned by [`read_frame`](Self::read_frame).
    pub fn payload(&self, f: FrameRef) -> &[u8] {
        self.inbuf.payload(f)
    }

    /// Wait for the next data frame (answering pings, reporting closes). Cancel-safe: bytes read
    /// stay in the buffer.
    pub async fn read_frame(&mut self) -> Result<FrameRef, WsError> {
        loop {
            while let Some(frame) = self.inbuf.next_frame()? {
                match frame.opcode {
                    OP_TEXT | OP_BINARY => return Ok(frame),
                    OP_CLOSE => return Err(WsError::Closed(close_code(self.inbuf.payload(frame)))),
                    OP_PING => {
                        let data = self.inbuf.payload(frame).to_vec();
                        self.send(OP_PONG, &data).await?;
                    }
                    _ => {}
                }
            }
            let n = self.stream.read(self.inbuf.space()).await?;
            if n == 0 {
                return Err(WsError::Eof);
            }
            self.inbuf.filled(n);
        }
    }

    /// Hand the connection over (to the play engine): the socket, what was read but not parsed,
    /// and the masking state.
    pub fn into_parts(self) -> io::Result<(std::net::TcpStream, FrameBuf, FrameOut)> {
        Ok((self.stream.into_std()?, self.inbuf, self.outbuf))
    }
}

/// The status code of a close frame's payload.
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 }
}

/// Append a masked client frame.
pub fn write_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

fn seed_from(stream: &TcpStream) -> u32 {
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(1);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (u32::from(port) << 16) ^ nanos ^ 0x9e37_79b9
}

fn base64_16(seed: u32) -> String {
    use base64::Engine;
    let mut key = [0u8; 16];
    for (i, chunk) in key.chunks_mut(4).enumerate() {
        chunk.copy_from_slice(&(seed.rotate_left(i as u32 * 7) ^ 0x5bd1_e995).to_be_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_unmask_to_the_payload() {
        let mut out = Vec::new();
        let payload: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        write_client_frame(OP_BINARY, &payload, [9, 8, 7, 6], &mut out);
        assert_eq!(out[0], 0x82);
        assert_eq!(out[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 300);
        let mask = &out[4..8];
        let unmasked: Vec<u8> = out[8..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        assert_eq!(unmasked, payload);
    }

    #[test]
    fn keys_are_16_bytes_of_base64() {
        use base64::Engine;
        let k = base64_16(12345);
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(k).unwrap().len(), 16);
    }
}
