//! Join tickets on the server side: verify them, and refuse a second use. A ticket is
//! *consumed* only when its join succeeds; while its join is in progress it is held (a second
//! join with it is refused), and a join that fails gives it back — so a refusal the client can
//! retry (the world could not be loaded, the server was busy) does not burn the ticket.
//!
//! Used tickets are remembered until they expire (a ticket lives at most an hour), at most
//! `capacity` of them. Time is passed in.

use std::collections::{HashMap, HashSet};

use arena_sdk::protocol::{ErrorCode, ErrorMsg};
use arena_sdk::ticket::{TicketClaims, TicketError, TicketKey, TicketVerifier};

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
    ErrorMsg { code, message: message.into() }
}

#[derive(Debug)]
pub struct TicketBook {
    verifier: TicketVerifier,
    server_id: String,
    /// Consumed nonces and when their tickets expire (Unix seconds).
    used: HashMap<String, u64>,
    /// Nonces whose join is in progress.
    in_flight: HashSet<String>,
    capacity: usize,
}

impl TicketBook {
    pub fn new(keys: Vec<TicketKey>, server_id: &str, capacity: usize) -> Self {
        TicketBook {
            verifier: TicketVerifier::new(keys),
            server_id: server_id.to_owned(),
            used: HashMap::new(),
            in_flight: HashSet::new(),
            capacity,
        }
    }

    /// Check a ticket — signature, expiry, world and server binding, not used nor in use — and
    /// hold it for a join. Follow with [`commit`](Self::commit) or [`abort`](Self::abort).
    pub fn begin(&mut self, ticket: &str, world_hint: Option<&str>, now_unix: u64) -> Result<TicketClaims, ErrorMsg> {
        let claims = self.verifier.verify(ticket, now_unix).map_err(|e| match e {
            TicketError::Expired => err(ErrorCode::TicketExpired, "ticket has expired; allocate again"),
            other => err(ErrorCode::TicketInvalid, other.to_string()),
        })?;
        if let Some(w) = world_hint
            && w != claims.world
        {
            return Err(err(ErrorCode::TicketWrongWorld, format!("ticket is for world {:?}, not {w:?}", claims.world)));
        }
        if let Some(s) = &claims.server
            && *s != self.server_id
        {
            return Err(err(ErrorCode::TicketWrongServer, format!("ticket is for server {s:?}")));
        }
        if self.used.contains_key(&claims.nonce) || self.in_flight.contains(&claims.nonce) {
            return Err(err(ErrorCode::TicketReused, "ticket was already used"));
        }
        if self.used.len() + self.in_flight.len() >= self.capacity {
            self.prune(now_unix);
            if self.used.len() + self.in_flight.len() >= self.capacity {
                return Err(err(ErrorCode::ServerFull, "too many joins in flight; retry shortly"));
            }
        }
        self.in_flight.insert(claims.nonce.clone());
        Ok(claims)
    }

    /// The join succeeded: the ticket is used.
    pub fn commit(&mut self, claims: &TicketClaims) {
        self.in_flight.remove(&claims.nonce);
        self.used.insert(claims.nonce.clone(), claims.exp);
    }

    /// The join failed: the ticket may be used again.
    pub fn abort(&mut self, claims: &TicketClaims) {
        self.in_flight.remove(&claims.nonce);
    }

    /// Forget used tickets that have expired; how many are remembered.
    pub fn prune(&mut self, now_unix: u64) -> usize {
        self.used.retain(|_, exp| *exp > now_unix);
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arena_sdk::ticket::{Grant, mint};

    const NOW: u64 = 1_800_000_000;

    fn ticket(world: &str, server: Option<&str>, ttl: u64) -> String {
        ticket_at(world, server, ttl, NOW)
    }

    fn ticket_at(world: &str, server: Option<&str>, ttl: u64, now: u64) -> String {
        mint(&TicketKey::development(), &Grant { server, ..Grant::new(world, "bot") }, ttl, now).unwrap().0
    }

    fn code(r: Result<TicketClaims, ErrorMsg>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn a_ticket_is_consumed_only_by_a_successful_join() {
        let mut book = TicketBook::new(vec![TicketKey::development()], "gs-1", 100);
        let t = ticket("w", Some("gs-1"), 60);
        let claims = book.begin(&t, Some("w"), NOW).unwrap();
        assert_eq!(code(book.begin(&t, None, NOW)), ErrorCode::TicketReused, "held while its join runs");
        book.abort(&claims);
        let claims = book.begin(&t, None, NOW).expect("a failed join gives the ticket back");
        book.commit(&claims);
        assert_eq!(code(book.begin(&t, None, NOW)), ErrorCode::TicketReused);
        assert_eq!(book.prune(NOW + 61), 0, "forgotten once expired");
    }

    #[test]
    fn bindings_and_expiry_are_checked() {
        let mut book = TicketBook::new(vec![TicketKey::development()], "gs-1", 100);
        assert_eq!(code(book.begin(&ticket("w", Some("gs-2"), 60), None, NOW)), ErrorCode::TicketWrongServer);
        assert_eq!(code(book.begin(&ticket("w", None, 60), Some("v"), NOW)), ErrorCode::TicketWrongWorld);
        assert_eq!(code(book.begin(&ticket("w", None, 60), None, NOW + 61)), ErrorCode::TicketExpired);
        assert_eq!(code(book.begin("v1.dev.garbage.sig", None, NOW)), ErrorCode::TicketInvalid);
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = TicketBook::new(vec![TicketKey::development()], "gs-1", 2);
        for _ in 0..2 {
            let c = book.begin(&ticket("w", None, 60), None, NOW).unwrap();
            book.commit(&c);
        }
        assert_eq!(code(book.begin(&ticket("w", None, 60), None, NOW)), ErrorCode::ServerFull);
        let later = ticket_at("w", None, 60, NOW + 61);
        assert!(book.begin(&later, None, NOW + 61).is_ok(), "room again once they expired");
    }
}
