//! The writing side of one WebSocket connection: its socket and a bounded outbound queue.
//!
//! Every write — a world's update from the tick, a welcome or error from the connection task,
//! a pong, a close — goes through [`Conn`]: one non-blocking (vectored) write of a whole frame
//! straight to the socket. Only when the socket would block are the unwritten bytes queued, and
//! the connection's task (`reader.rs`) is woken to flush them when the socket is writable. The
//! queue is capped: a message that would overflow it is refused ([`Delivery::Full`]) and the
//! room resynchronises or drops that client, so a slow client never grows server memory. Once a
//! connection is closed, what it has not taken within the flush deadline is given up and the
//! socket closed hard.
//!
//! A `wss://` connection keeps its TLS state here too ([`tls::Session`]): each frame is
//! encrypted into the queue under the same lock, then written the same way.

use std::io;
use std::net::Shutdown;
use std::sync::Arc;

use arena_sdk::Encoding;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::link::{Delivery, Outgoing, Transport};
use crate::metrics::Metrics;
use crate::ws::frame;
use crate::ws::tls;

#[derive(Debug, Default)]
struct Outbound {
    /// Bytes the socket has not taken yet: always whole frames, or the tail of one.
    queued: Vec<u8>,
    /// A close frame was queued: nothing more may be sent.
    closed: bool,
    /// The socket failed, or the connection was closed hard.
    broken: bool,
    /// The connection's TLS state (`wss://`); `queued` then holds TLS records.
    tls: Option<Box<tls::Session>>,
}

/// Laid out in order (`repr(C)`): what the tick touches for every client — the queue's lock, the
/// encoding, the cap — shares the first cache line, then the socket. The fan-out is bound by
/// cache misses on connections, one per line.
#[derive(Debug)]
#[repr(C)]
pub struct Conn {
    out: Mutex<Outbound>,
    enc: Encoding,
    max_queued: usize,
    stream: TcpStream,
    id: u64,
    /// The connection speaks TLS (fixed at the handshake; read without the lock).
    tls: bool,
    /// Wakes the connection task: bytes were queued, or the server closed the connection.
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Conn {
    pub fn new(
        id: u64,
        enc: Encoding,
        stream: TcpStream,
        tls: Option<Box<tls::Session>>,
        max_queued: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Conn {
            id,
            tls: tls.is_some(),
            enc,
            stream,
            out: Mutex::new(Outbound { tls, ..Outbound::default() }),
            max_queued,
            wake: Notify::new(),
            metrics,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The server closed the connection (a close frame is queued or sent) or it broke.
    pub fn is_closed(&self) -> bool {
        let out = self.out.lock();
        out.closed || out.broken
    }

    pub fn is_broken(&self) -> bool {
        self.out.lock().broken
    }

    /// Bytes are waiting for the socket.
    pub fn wants_write(&self) -> bool {
        let out = self.out.lock();
        !out.queued.is_empty() && !out.broken
    }

    /// Resolves when the connection task should look again (bytes queued, or a close).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Send one whole frame: written as far as the socket takes it, the rest queued.
    fn send_bytes(&self, frame: &[u8], force: bool) -> Delivery {
        let mut out = self.out.lock();
        if out.broken || (out.closed && !force) {
            return Delivery::Closed;
        }
        let total = frame.len();
        if out.tls.is_some() {
            return self.send_sealed(&mut out, frame, force);
        }
        if !out.queued.is_empty() {
            if !force && out.queued.len() + total > self.max_queued {
                return Delivery::Full;
            }
            out.queued.extend_from_slice(frame);
            self.metrics.outbound_queued_bytes.inc_by(total as i64);
            return Delivery::Queued;
        }
        let written = match self.stream.try_write(frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.mark_broken(&mut out);
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
        out.queued.extend_from_slice(&frame[written..]);
        self.metrics.outbound_queued_bytes.inc_by((total - written) as i64);
        drop(out);
        self.wake.notify_one();
        Delivery::Queued
    }

    /// A TLS connection's send: the frame is encrypted into the queue (records cannot be taken
    /// back, so the cap is checked first), then the queue written as far as the socket takes it.
    /// Unlike a plain connection, whose frame larger than the cap is refused when the socket takes
    /// none of it, a TLS connection with an empty queue always takes the frame: its queue may
    /// hold one frame past the cap, as a plain connection's may when the socket took part of it.
    fn send_sealed(&self, out: &mut Outbound, frame: &[u8], force: bool) -> Delivery {
        let before = out.queued.len();
        if !force && before > 0 && before + frame.len() > self.max_queued {
            return Delivery::Full;
        }
        let Outbound { queued, tls, .. } = out;
        let sealed = tls.as_mut().map_or(Ok(()), |tls| tls.seal(frame, queued));
        if sealed.is_err() {
            self.mark_broken(out);
            return Delivery::Closed;
        }
        self.metrics.outbound_queued_bytes.inc_by((out.queued.len() - before) as i64);
        if self.write_queued(out).is_err() {
            return Delivery::Closed;
        }
        if out.queued.is_empty() {
            return Delivery::Sent;
        }
        self.wake.notify_one();
        Delivery::Queued
    }

    /// A TLS connection's read: `cipher` (read from the socket) is decrypted into `plain`.
    /// `Ok(true)` when the client sent close_notify. Plain connections append `cipher` as is.
    pub fn open(&self, cipher: &[u8], plain: &mut bytes::BytesMut) -> io::Result<bool> {
        let mut out = self.out.lock();
        let mut records = Vec::new();
        let opened = match out.tls.as_mut() {
            Some(tls) => tls.open(cipher, plain, &mut records),
            None => {
                plain.extend_from_slice(cipher);
                Ok(false)
            }
        };
        if !records.is_empty() && !out.broken {
            out.queued.extend_from_slice(&records);
            self.metrics.outbound_queued_bytes.inc_by(records.len() as i64);
            let _ = self.write_queued(&mut out);
        }
        if opened.is_err() {
            self.mark_broken(&mut out);
        }
        opened
    }

    /// Plaintext rustls already holds (read during the handshake), into `plain`.
    pub fn take_plaintext(&self, plain: &mut bytes::BytesMut) -> io::Result<bool> {
        match self.out.lock().tls.as_mut() {
            Some(tls) => tls.take_plaintext(plain),
            None => Ok(false),
        }
    }

    /// Whether the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Send a frame built by the caller (pong, close).
    pub fn send_frame(&self, frame: &[u8]) -> Delivery {
        self.send_bytes(frame, false)
    }

    /// Write what is queued, as far as the socket takes it. `Err` when the socket failed.
    pub fn flush(&self) -> io::Result<()> {
        let mut out = self.out.lock();
        self.write_queued(&mut out)
    }

    fn write_queued(&self, out: &mut Outbound) -> io::Result<()> {
        while !out.queued.is_empty() && !out.broken {
            match self.stream.try_write(&out.queued) {
                Ok(0) => {
                    self.mark_broken(out);
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => {
                    out.queued.drain(..n);
                    self.metrics.outbound_queued_bytes.dec_by(n as i64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    self.mark_broken(out);
                    return Err(e);
                }
            }
        }
        if out.queued.is_empty() {
            // Give the memory back: a client that lagged once should not keep 64 KiB.
            out.queued = Vec::new();
            if out.closed {
                shutdown_write(&self.stream);
            }
        }
        Ok(())
    }

    /// Queue a close frame (past the cap: it is small), refuse anything after it, shut the
    /// write side once everything is flushed, and wake the connection task.
    fn close_with_frame(&self, close: &[u8]) {
        let already = {
            let out = self.out.lock();
            out.closed || out.broken
        };
        if !already {
            self.send_bytes(close, true);
            let mut out = self.out.lock();
            out.closed = true;
            // TLS: close_notify follows the close frame, so the client knows nothing was cut.
            let Outbound { queued, tls, .. } = &mut *out;
            if let Some(tls) = tls.as_mut() {
                let before = queued.len();
                if tls.close_notify(queued).is_ok() {
                    self.metrics.outbound_queued_bytes.inc_by((queued.len() - before) as i64);
                    let _ = self.write_queued(&mut out);
                }
            }
            if out.queued.is_empty() {
                shutdown_write(&self.stream);
            }
        }
        self.wake.notify_one();
    }

    /// Answer the client's close frame with the same status code (RFC 6455 §5.5.1).
    pub fn echo_close(&self, code: Option<u16>) {
        let frame = match code {
            Some(code) => frame::close_frame(code, ""),
            None => frame::empty_close_frame(),
        };
        self.close_with_frame(&frame);
    }

    /// Close at once, without waiting for queued bytes: the client does not take them.
    pub fn close_hard(&self) {
        let mut out = self.out.lock();
        if !out.broken {
            self.mark_broken(&mut out);
        }
        let _ = socket2::SockRef::from(&self.stream).shutdown(Shutdown::Both);
    }

    fn mark_broken(&self, out: &mut Outbound) {
        out.broken = true;
        self.metrics.outbound_queued_bytes.dec_by(out.queued.len() as i64);
        out.queued = Vec::new();
        self.wake.notify_one();
    }
}

fn shutdown_write(stream: &TcpStream) {
    // The peer may already be gone; nothing to do about it then.
    let _ = socket2::SockRef::from(stream).shutdown(Shutdown::Write);
}

impl Transport for Conn {
    fn id(&self) -> u64 {
        self.id
    }

    fn encoding(&self) -> Encoding {
        self.enc
    }

    /// One message as one frame: the header goes into the message's headroom, and the two
    /// leave in one contiguous write.
    fn send(&self, message: &mut Outgoing<'_>) -> Delivery {
        let mut header = [0u8; 10];
        let n = frame::header_into(frame::data_opcode(self.enc), message.message().len(), &mut header);
        self.send_bytes(message.with_prefix(&header[..n]), false)
    }

    /// Nothing is queued: the client has taken everything sent so far (into its socket buffer).
    fn is_drained(&self) -> bool {
        self.out.lock().queued.is_empty()
    }

    fn close(&self, code: u16, reason: &str) {
        self.close_with_frame(&frame::close_frame(code, reason));
    }
}
