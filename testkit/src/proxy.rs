//! A TCP proxy with faults on demand: pass traffic, black-hole it (connections stay open, nothing
//! gets through either way — a partition), refuse new connections, or cut the open ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forward both ways.
    Pass = 0,
    /// Accept and hold connections, forward nothing (open connections stop too).
    Blackhole = 1,
    /// Close new connections at once.
    Refuse = 2,
}

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    upstream: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    conns: Arc<Mutex<JoinSet<()>>>,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let p = Self::unbound().await;
        p.set_upstream(upstream);
        p
    }

    /// A proxy whose upstream is told later ([`set_upstream`](Self::set_upstream)): for a
    /// server that must know the proxy's address before it starts. Until then it refuses.
    pub async fn unbound() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let upstream: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::new(std::sync::Mutex::new(None));
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let (m, up, set) = (Arc::clone(&mode), Arc::clone(&upstream), Arc::clone(&conns));
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let target = *up.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let Some(target) = target.filter(|_| m.load(Ordering::SeqCst) != Mode::Refuse as u8) else {
                    drop(down);
                    continue;
                };
                let m = Arc::clone(&m);
                set.lock().await.spawn(relay(down, target, m));
            }
        });
        Proxy { addr, mode, upstream, conns, accept }
    }

    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(upstream);
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Drop every open connection (both sides see a reset or EOF).
    pub async fn cut(&self) {
        self.conns.lock().await.abort_all();
    }
}

async fn relay(mut down: TcpStream, upstream: SocketAddr, mode: Arc<AtomicU8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blackholed = || mode.load(Ordering::SeqCst) == Mode::Blackhole as u8;
    // A black-holed connection is held, never forwarded.
    while blackholed() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let Ok(mut up) = TcpStream::connect(upstream).await else { return };
    let (mut dr, mut dw) = down.split();
    let (mut ur, mut uw) = up.split();
    let mut a = [0u8; 16 * 1024];
    let mut b = [0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = dr.read(&mut a) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    while blackholed() { tokio::time::sleep(std::time::Duration::from_millis(10)).await; }
                    if uw.write_all(&a[..n]).await.is_err() { return }
                }
            },
            n = ur.read(&mut b) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    while blackholed() { tokio::time::sleep(std::time::Duration::from_millis(10)).await; }
                    if dw.write_all(&b[..n]).await.is_err() { return }
                }
            },
        }
    }
}
