//! Who may connect and who may take a new seat.
//!
//! - **Connections**: at most `max_connections` at once; the permit is taken *before*
//!   `accept`, so past the cap connections wait in the listen backlog instead of costing a
//!   descriptor each.
//! - **Waiting to join**: a connection holds a *pending* slot from `accept` until it has joined
//!   (or resumed). At most `max_pending` of them in all, and `max_pending_per_ip` from one
//!   address. These limits apply only to connections that have not proven a ticket: a backend
//!   that hosts thousands of bots behind one address is never cut off once its bots are seated.
//!   Over a limit, a connection is answered at once with HTTP 503 and `Retry-After` — shed
//!   early, cleanly, never reset.
//! - **New seats**: past its tick budget (`load.rs`) the server takes no new bots (`overloaded`)
//!   until the load falls back below `resume_below` of the budget (hysteresis, so it does not
//!   flap). Bots taking back a seat they hold are always let in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_pending_per_ip: usize,
}

/// Why a new connection is turned away at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Too many connections are waiting to join.
    ServerBusy,
    /// Too many connections from this address are waiting to join.
    AddressBusy,
}

impl Shed {
    pub fn reason(self) -> &'static str {
        match self {
            Shed::ServerBusy => "too many connections are waiting to join; retry shortly",
            Shed::AddressBusy => "too many connections from your address are waiting to join; retry shortly",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Shed::ServerBusy => "pending_full",
            Shed::AddressBusy => "pending_per_ip",
        }
    }
}

#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    connections: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    overloaded: AtomicBool,
}

/// A connection's place among those waiting to join; given back when dropped (it joined, or
/// it ended).
#[derive(Debug)]
pub struct PendingSlot {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    admission: Arc<Admission>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut m = self.admission.per_ip.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Admission {
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            pending: Arc::new(Semaphore::new(limits.max_pending.max(1))),
            per_ip: Mutex::new(HashMap::new()),
            overloaded: AtomicBool::new(false),
            limits,
        })
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// A connection permit now, or `None` at the cap (QUIC refuses rather than queue: a queued
    /// connection attempt is stale by the time a permit frees).
    pub fn try_connection_permit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.connections).try_acquire_owned().ok()
    }

    /// Wait for room for one more connection (call before `accept`).
    pub async fn connection_permit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.connections)
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the connection semaphore is never closed"))
    }

    /// Connections open now (permits taken).
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections.max(1) - self.connections.available_permits()
    }

    /// Connections waiting to join now.
    pub fn pending(&self) -> usize {
        self.limits.max_pending.max(1) - self.pending.available_permits()
    }

    /// A pending slot for a new connection from `ip`, or why not.
    pub fn try_pending(self: &Arc<Self>, ip: IpAddr) -> Result<PendingSlot, Shed> {
        let mut m = self.per_ip.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= self.limits.max_pending_per_ip {
            if *n == 0 {
                m.remove(&ip);
            }
            return Err(Shed::AddressBusy);
        }
        let Ok(permit) = Arc::clone(&self.pending).try_acquire_owned() else {
            if *n == 0 {
                m.remove(&ip);
            }
            return Err(Shed::ServerBusy);
        };
        *n += 1;
        Ok(PendingSlot { _permit: permit, ip, admission: Arc::clone(self) })
    }

    /// Feed the latest load reading: past 1.0 no new bots; below `resume_below` they come again.
    pub fn set_load(&self, tick_load: f32, resume_below: f32) {
        let was = self.overloaded.load(Ordering::Relaxed);
        let now = if was { tick_load >= resume_below } else { tick_load >= 1.0 };
        if now != was {
            tracing::warn!(
                tick_load,
                overloaded = now,
                "tick budget: new bots are {}",
                if now { "refused" } else { "taken again" }
            );
        }
        self.overloaded.store(now, Ordering::Relaxed);
    }

    /// Past the tick budget: no new bots.
    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pending_slots_are_bounded_per_address_and_in_all() {
        let a = Admission::new(ConnectionLimits { max_connections: 10, max_pending: 3, max_pending_per_ip: 2 });
        let (x, y): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let s1 = a.try_pending(x).unwrap();
        let _s2 = a.try_pending(x).unwrap();
        assert_eq!(a.try_pending(x).unwrap_err(), Shed::AddressBusy);
        let _s3 = a.try_pending(y).unwrap();
        assert_eq!(a.try_pending(y).unwrap_err(), Shed::ServerBusy);
        assert_eq!(a.pending(), 3);
        drop(s1);
        assert!(a.try_pending(x).is_ok(), "a slot given back is free again");
        let _c = a.connection_permit().await;
        assert_eq!(a.open_connections(), 1);
    }

    #[test]
    fn overload_has_hysteresis() {
        let a = Admission::new(ConnectionLimits { max_connections: 1, max_pending: 1, max_pending_per_ip: 1 });
        a.set_load(0.95, 0.8);
        assert!(!a.overloaded());
        a.set_load(1.2, 0.8);
        assert!(a.overloaded());
        a.set_load(0.9, 0.8);
        assert!(a.overloaded(), "still refusing until well below budget");
        a.set_load(0.7, 0.8);
        assert!(!a.overloaded());
    }
}
