//! One client connection's socket and its bounded outbound queue.
//!
//! Every write — a world's update from the tick task, a welcome or error from the reader task,
//! tungstenite's automatic pong — goes through [`Conn::send`]: one non-blocking (vectored) write
//! of whole frames straight to the socket. Only when the socket would block are the unwritten
//! bytes queued, and a short-lived task waits for writability to flush them. The queue is capped:
//! a frame that would overflow it is refused ([`Delivery::Full`]) and the room resynchronises or
//! drops that client, so a slow client never grows server memory.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use arena_sdk::Encoding;
use arena_sdk::codec::encode;
use arena_sdk::protocol::ServerMsg;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::ws::frame;

/// What happened to a frame handed to [`Conn::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the socket.
    Sent,
    /// (Partly) queued behind a socket that would block.
    Queued,
    /// Refused: the queue is full. Nothing was written.
    Full,
    /// The connection is closing or broken. Nothing was written.
    Closed,
}

#[derive(Debug, Default)]
struct Outbound {
    /// Bytes the socket has not taken yet: always whole frames, or the tail of one.
    queued: Vec<u8>,
    /// A flush task is waiting for writability.
    flushing: bool,
    /// A close frame was queued: nothing more may be sent.
    closed: bool,
    /// The socket failed.
    broken: bool,
}

#[derive(Debug)]
pub struct Conn {
    id: u64,
    enc: Encoding,
    stream: TcpStream,
    out: Mutex<Outbound>,
    max_queued: usize,
    /// Wakes the reader task when the server closes the connection.
    closing: Notify,
    metrics: Arc<Metrics>,
}

impl Conn {
    pub fn new(id: u64, enc: Encoding, stream: TcpStream, max_queued: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Conn {
            id,
            enc,
            stream,
            out: Mutex::new(Outbound::default()),
            max_queued,
            closing: Notify::new(),
            metrics,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn encoding(&self) -> Encoding {
        self.enc
    }
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Nothing is queued: the client has taken everything sent so far (into its socket buffer).
    pub fn is_drained(&self) -> bool {
        self.out.lock().queued.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        let out = self.out.lock();
        out.closed || out.broken
    }

    /// Resolves when the server has closed this connection.
    pub async fn closed(&self) {
        self.closing.notified().await;
    }

    /// Send one or more whole frames given as consecutive byte slices.
    pub fn send(self: &Arc<Self>, parts: &[&[u8]]) -> Delivery {
        let mut out = self.out.lock();
        if out.closed || out.broken {
            return Delivery::Closed;
        }
        self.send_locked(&mut out, parts, false)
    }

    fn send_locked(self: &Arc<Self>, out: &mut Outbound, parts: &[&[u8]], force: bool) -> Delivery {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if !out.queued.is_empty() {
            if !force && out.queued.len() + total > self.max_queued {
                return Delivery::Full;
            }
            for p in parts {
                out.queued.extend_from_slice(p);
            }
            self.metrics.outbound_queued_bytes.inc_by(total as i64);
            return Delivery::Queued;
        }
        let attempt = if let [one] = parts {
            self.stream.try_write(one)
        } else {
            let slices: [IoSlice<'_>; 4] = std::array::from_fn(|i| IoSlice::new(parts.get(i).copied().unwrap_or(&[])));
            debug_assert!(parts.len() <= 4);
            self.stream.try_write_vectored(&slices[..parts.len().min(4)])
        };
        let written = match attempt {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.mark_broken(out);
                return Delivery::Closed;
            }
        };
        if written == total {
            return Delivery::Sent;
        }
        if written == 0 && !force && total > self.max_queued {
            return Delivery::Full;
        }
        // Part of a frame may be on the wire: the rest must follow, whatever the cap.
        let mut skip = written;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
            } else {
                out.queued.extend_from_slice(&p[skip..]);
                skip = 0;
            }
        }
        self.metrics.outbound_queued_bytes.inc_by((total - written) as i64);
        self.start_flush(out);
        Delivery::Queued
    }

    /// Encode and send one message (welcome, snapshot, error, pong).
    pub fn send_msg(self: &Arc<Self>, msg: &ServerMsg) -> Delivery {
        match encode(self.enc, msg) {
            Ok(payload) => self.send(&[&frame::data_frame(self.enc, &payload)]),
            Err(e) => {
                tracing::error!(error = %e, "could not encode a server message");
                Delivery::Closed
            }
        }
    }

    /// Queue a close frame (past the cap: it is small), refuse anything after it, shut the
    /// socket's write side once everything is flushed, and wake the reader.
    pub fn close(self: &Arc<Self>, code: u16, reason: &str) {
        let mut out = self.out.lock();
        if !out.closed && !out.broken {
            self.send_locked(&mut out, &[&frame::close_frame(code, reason)], true);
            out.closed = true;
            if out.queued.is_empty() {
                self.shutdown_write();
            }
        }
        drop(out);
        self.closing.notify_one();
    }

    /// Close the write side after the peer closed (no close frame of ours: tungstenite sent it).
    pub fn finish(&self) {
        let mut out = self.out.lock();
        out.closed = true;
        if out.queued.is_empty() {
            self.shutdown_write();
        }
    }

    fn shutdown_write(&self) {
        // The peer may already be gone; nothing to do about it then.
        let _ = socket2::SockRef::from(&self.stream).shutdown(Shutdown::Write);
    }

    fn mark_broken(&self, out: &mut Outbound) {
        out.broken = true;
        self.metrics.outbound_queued_bytes.dec_by(out.queued.len() as i64);
        out.queued = Vec::new();
        self.closing.notify_one();
    }

    fn start_flush(self: &Arc<Self>, out: &mut Outbound) {
        if out.flushing {
            return;
        }
        out.flushing = true;
        let me = Arc::clone(self);
        tokio::spawn(async move { me.flush_queued().await });
    }

    async fn flush_queued(self: Arc<Self>) {
        loop {
            if self.stream.writable().await.is_err() {
                let mut out = self.out.lock();
                out.flushing = false;
                self.mark_broken(&mut out);
                return;
            }
            let mut out = self.out.lock();
            if out.broken {
                out.flushing = false;
                return;
            }
            match self.stream.try_write(&out.queued) {
                Ok(n) => {
                    out.queued.drain(..n);
                    self.metrics.outbound_queued_bytes.dec_by(n as i64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => {
                    out.flushing = false;
                    self.mark_broken(&mut out);
                    return;
                }
            }
            if out.queued.is_empty() {
                out.flushing = false;
                // Give the memory back: a client that lagged once should not keep 64 KiB.
                out.queued = Vec::new();
                if out.closed {
                    self.shutdown_write();
                }
                return;
            }
        }
    }
}

/// tungstenite's view of a connection: reads from the socket, writes through [`Conn::send`]
/// (used for its automatic pong and close replies).
#[derive(Debug)]
pub struct ConnIo<'a>(pub &'a Arc<Conn>);

impl Read for ConnIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.stream.try_read(buf)
    }
}

impl Write for ConnIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.send(&[buf]) {
            Delivery::Sent | Delivery::Queued => Ok(buf.len()),
            // A reply after our own close is moot.
            Delivery::Closed => Ok(buf.len()),
            Delivery::Full => Err(io::Error::other("outbound queue full")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
