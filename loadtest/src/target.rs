//! Where a bot plays: a ticket and a gameserver address for each bot.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arena_sdk::allocator_api::{Allocation, AllocationRequest, ApiError};
use arena_sdk::ticket::{Grant, TicketKey, mint};

/// A gameserver endpoint and a ticket for it.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The WebSocket address and path.
    pub addr: SocketAddr,
    pub path: String,
    /// The QUIC address and its certificate's SHA-256 (hex), when the server serves QUIC.
    pub quic: Option<(SocketAddr, String)>,
    pub world: String,
    pub ticket: String,
    /// Time spent getting the ticket.
    pub took: Duration,
}

/// A gameserver addressed directly.
#[derive(Debug, Clone)]
pub struct DirectServer {
    /// Its WebSocket address and path (unused for QUIC bots).
    pub addr: SocketAddr,
    pub path: String,
    /// Its id, to bind tickets to it.
    pub id: Option<String>,
    /// Its QUIC address and certificate SHA-256 (hex), for QUIC bots.
    pub quic: Option<(SocketAddr, String)>,
}

/// Gameservers addressed directly, with tickets minted here (the swarm holds the ticket key).
#[derive(Debug, Clone)]
pub struct Direct {
    /// World `w` lives on server `w % servers.len()`.
    pub servers: Vec<DirectServer>,
    pub key: TicketKey,
    pub bots_per_world: usize,
}

/// An allocator hands out seats (the full stack).
#[derive(Debug, Clone)]
pub struct ViaAllocator {
    pub url: String,
    pub key: String,
    pub http: reqwest::Client,
}

#[derive(Debug, Clone)]
pub enum Target {
    Direct(Direct),
    Allocator(ViaAllocator),
}

/// The world and bot names of bot `idx` in a swarm of worlds of `per_world` bots.
pub fn names(idx: usize, per_world: usize) -> (usize, String, String) {
    let world = idx / per_world.max(1);
    (world, format!("lt-{world:04}"), format!("lt-bot-{idx:05}"))
}

impl Target {
    /// Get a place for bot `idx`.
    pub async fn assign(&self, idx: usize) -> Result<Assignment, String> {
        match self {
            Target::Direct(d) => {
                let started = Instant::now();
                let (w, world, bot) = names(idx, d.bots_per_world);
                let s = &d.servers[w % d.servers.len()];
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
                let (ticket, _) =
                    mint(&d.key, &Grant { server: s.id.as_deref(), ..Grant::new(&world, &bot) }, 300, now)
                        .map_err(|e| format!("mint: {e}"))?;
                Ok(Assignment {
                    addr: s.addr,
                    path: s.path.clone(),
                    quic: s.quic.clone(),
                    world,
                    ticket,
                    took: started.elapsed(),
                })
            }
            Target::Allocator(a) => {
                let started = Instant::now();
                let (_, _, bot) = names(idx, 1);
                let req = AllocationRequest { bot_id: bot, ..AllocationRequest::default() };
                let resp = a
                    .http
                    .post(format!("{}/v1/allocations", a.url))
                    .bearer_auth(&a.key)
                    .json(&req)
                    .send()
                    .await
                    .map_err(|e| format!("http:{}", if e.is_timeout() { "timeout" } else { "connect" }))?;
                let status = resp.status();
                if !status.is_success() {
                    let code =
                        resp.json::<ApiError>().await.map(|e| e.error.code).unwrap_or_else(|_| status.to_string());
                    return Err(format!("refused:{code}"));
                }
                let alloc: Allocation = resp.json().await.map_err(|_| "bad_answer".to_owned())?;
                let (addr, path) = parse_ws_url(&alloc.endpoints.ws)?;
                let quic = match (&alloc.endpoints.quic, &alloc.endpoints.quic_cert_sha256) {
                    (Some(url), Some(pin)) => Some((crate::quicplay::parse_quic_url(url)?, pin.clone())),
                    _ => None,
                };
                Ok(Assignment {
                    addr,
                    path,
                    quic,
                    world: alloc.world_id,
                    ticket: alloc.ticket,
                    took: started.elapsed(),
                })
            }
        }
    }
}

/// Split `ws://host:port/path` into a socket address and a path (loopback or IP hosts).
pub fn parse_ws_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/ws".to_owned()),
    };
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    Ok((addr, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names() {
        assert_eq!(parse_ws_url("ws://127.0.0.1:7000/ws").unwrap(), ("127.0.0.1:7000".parse().unwrap(), "/ws".into()));
        assert_eq!(parse_ws_url("ws://127.0.0.1:7000").unwrap().1, "/ws");
        assert!(parse_ws_url("http://x").is_err());
        assert_eq!(names(31, 30), (1, "lt-0001".into(), "lt-bot-00031".into()));
    }

    #[tokio::test]
    async fn direct_mints_verifiable_tickets() {
        let key = TicketKey::development();
        let t = Target::Direct(Direct {
            servers: ["a", "b"]
                .iter()
                .enumerate()
                .map(|(i, id)| DirectServer {
                    addr: SocketAddr::from(([127, 0, 0, 1], i as u16 + 1)),
                    path: "/ws".into(),
                    id: Some((*id).into()),
                    quic: None,
                })
                .collect(),
            key: key.clone(),
            bots_per_world: 30,
        });
        let a = t.assign(45).await.unwrap();
        assert_eq!(a.world, "lt-0001");
        assert_eq!(a.addr.port(), 2, "world 1 lives on the second server");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = arena_sdk::ticket::TicketVerifier::new(vec![key]).verify(&a.ticket, now).unwrap();
        assert_eq!((claims.bot.as_str(), claims.server.as_deref()), ("lt-bot-00045", Some("b")));
    }
}
