//! What the tick and the join path need from a client connection, whatever carries it: hand it
//! an encoded message without waiting, ask whether its queue drained, close it.
//!
//! A message comes as an [`Outgoing`]: free room in front of the bytes, where a transport puts
//! its frame header, so header and message leave in one contiguous write (one `send`, not a
//! `writev`: measured cheaper per client per tick, see `docs/benchmarks.md`).
//!
//! A transport implements [`Transport`] (the WebSocket one: `ws::writer::Conn`); the worlds hold
//! [`ClientLink`]s, so they never name a transport. The worlds and the tick are generic over
//! [`Link`], which the simulation harness implements with in-memory clients.

use std::sync::Arc;

use arena_sdk::Encoding;
use arena_sdk::codec::encode_into;
use arena_sdk::protocol::ServerMsg;

/// Bytes kept free in front of every [`Outgoing`] message: a server's WebSocket frame header
/// (unmasked) is at most 10 bytes.
pub const HEADROOM: usize = 10;

/// An encoded message with [`HEADROOM`] free bytes in front of it.
#[derive(Debug)]
pub struct Outgoing<'a> {
    buf: &'a mut [u8],
}

impl<'a> Outgoing<'a> {
    /// `buf` is `HEADROOM` bytes of room and then the message. `None` when it is shorter.
    pub fn new(buf: &'a mut [u8]) -> Option<Self> {
        (buf.len() >= HEADROOM).then_some(Outgoing { buf })
    }

    /// The message.
    pub fn message(&self) -> &[u8] {
        &self.buf[HEADROOM..]
    }

    /// Put `prefix` (at most `HEADROOM` bytes) right in front of the message; the two together.
    pub fn with_prefix(&mut self, prefix: &[u8]) -> &[u8] {
        let start = HEADROOM - prefix.len().min(HEADROOM);
        self.buf[start..HEADROOM].copy_from_slice(&prefix[prefix.len() - (HEADROOM - start)..]);
        &self.buf[start..]
    }
}

/// What happened to a message handed to [`Link::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the socket.
    Sent,
    /// (Partly) queued behind a socket that would block.
    Queued,
    /// Refused: the connection's queue is full. Nothing was written.
    Full,
    /// The connection is closing or broken. Nothing was written.
    Closed,
}

impl Delivery {
    /// Handed over (written or queued).
    pub fn accepted(self) -> bool {
        matches!(self, Delivery::Sent | Delivery::Queued)
    }
}

/// A client connection of some transport.
pub trait Transport: Send + Sync + std::fmt::Debug {
    fn id(&self) -> u64;
    fn encoding(&self) -> Encoding;
    fn send(&self, message: &mut Outgoing<'_>) -> Delivery;
    fn is_drained(&self) -> bool;
    fn close(&self, code: u16, reason: &str);
}

/// A connection of any transport, as the server's worlds hold it.
pub type ClientLink = Arc<dyn Transport>;

impl<T: Transport + ?Sized + 'static> Link for Arc<T> {
    fn id(&self) -> u64 {
        (**self).id()
    }
    fn encoding(&self) -> Encoding {
        (**self).encoding()
    }
    fn send(&self, message: &mut Outgoing<'_>) -> Delivery {
        (**self).send(message)
    }
    fn is_drained(&self) -> bool {
        (**self).is_drained()
    }
    fn close(&self, code: u16, reason: &str) {
        (**self).close(code, reason)
    }
}

/// One client connection, as the worlds see it.
pub trait Link: Clone + Send + Sync + 'static {
    /// Unique per connection within the process.
    fn id(&self) -> u64;
    /// The encoding the client chose.
    fn encoding(&self) -> Encoding;
    /// Hand one encoded message (a whole `arena.v1` message) to the connection without waiting.
    fn send(&self, message: &mut Outgoing<'_>) -> Delivery;
    /// Nothing is queued: the client took everything sent so far.
    fn is_drained(&self) -> bool;
    /// Close with a code and a reason; nothing more is sent after it.
    fn close(&self, code: u16, reason: &str);
}

/// Encode `msg` in the link's encoding and send it.
pub fn send_msg<L: Link>(link: &L, msg: &ServerMsg) -> Delivery {
    let mut buf = vec![0; HEADROOM];
    match encode_into(link.encoding(), msg, &mut buf) {
        Ok(()) => link.send(&mut Outgoing { buf: &mut buf }),
        Err(error) => {
            tracing::error!(%error, "could not encode a server message");
            Delivery::Closed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_lands_right_before_the_message() {
        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(b"hello");
        let mut out = Outgoing::new(&mut buf).unwrap();
        assert_eq!(out.message(), b"hello");
        assert_eq!(out.with_prefix(&[0x82, 5]), b"\x82\x05hello");
        assert_eq!(out.with_prefix(&[]), b"hello");
        assert_eq!(out.with_prefix(&[7; HEADROOM]), [&[7u8; HEADROOM][..], b"hello"].concat());
        assert!(Outgoing::new(&mut [0u8; HEADROOM - 1]).is_none());
    }
}
