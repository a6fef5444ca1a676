//! The allocator's HTTP/JSON API (see `docs/allocator-api.md`): what a bot sends to get a seat,
//! what it gets back, and what gameservers report every second.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::valid_id;

/// Most regions a request may name.
pub const MAX_REGIONS: usize = 16;
/// Largest latency a request may report, in milliseconds.
pub const MAX_LATENCY_MS: f64 = 60_000.0;

/// How to pick among worlds with room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduling {
    /// The fullest world with a free seat on the fullest server: as few servers busy as possible.
    #[default]
    Packed,
    /// The least loaded server first: spread load over servers.
    Distributed,
}

/// `POST /v1/allocations`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationRequest {
    pub bot_id: String,
    /// Regions in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Measured round-trip times per region; lowest first. Used when `regions` is empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latencies_ms: BTreeMap<String, f64>,
    /// The bot's own world: routed to wherever it is live, or placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_id: Option<String>,
    #[serde(default)]
    pub scheduling: Scheduling,
}

/// A request field that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

fn field(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError { field, message: message.into() }
}

impl AllocationRequest {
    /// Check the fields and return the regions in preference order (empty: any region).
    pub fn validate(&self) -> Result<Vec<String>, FieldError> {
        if !valid_id(&self.bot_id) {
            return Err(field("bot_id", "1 to 64 characters of A-Z a-z 0-9 _ . : -"));
        }
        if let Some(w) = &self.world_id
            && !valid_id(w)
        {
            return Err(field("world_id", "1 to 64 characters of A-Z a-z 0-9 _ . : -"));
        }
        if self.regions.len() > MAX_REGIONS || self.latencies_ms.len() > MAX_REGIONS {
            return Err(field("regions", format!("at most {MAX_REGIONS} regions")));
        }
        if !self.regions.is_empty() && !self.latencies_ms.is_empty() {
            return Err(field("regions", "give either regions or latencies_ms, not both"));
        }
        for r in self.regions.iter().chain(self.latencies_ms.keys()) {
            if !valid_id(r) {
                return Err(field("regions", format!("{:?} is not a region name", truncate(r))));
            }
        }
        if !self.regions.is_empty() {
            let mut seen = std::collections::BTreeSet::new();
            if !self.regions.iter().all(|r| seen.insert(r)) {
                return Err(field("regions", "a region is listed twice"));
            }
            return Ok(self.regions.clone());
        }
        let mut by_latency: Vec<(&String, f64)> = Vec::with_capacity(self.latencies_ms.len());
        for (r, &ms) in &self.latencies_ms {
            if !ms.is_finite() || !(0.0..=MAX_LATENCY_MS).contains(&ms) {
                return Err(field("latencies_ms", format!("{r}: must be between 0 and {MAX_LATENCY_MS} ms")));
            }
            by_latency.push((r, ms));
        }
        by_latency.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
        Ok(by_latency.into_iter().map(|(r, _)| r.clone()).collect())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The WebSocket URL (`ws://` or `wss://`).
    pub ws: String,
    /// The QUIC endpoint, `quic://host:port`, when the server serves QUIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<String>,
    /// SHA-256 of the QUIC certificate's DER (64 lowercase hex digits), when the server made its
    /// own certificate at start: pin it instead of verifying a chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic_cert_sha256: Option<String>,
}

impl Endpoints {
    /// Only a WebSocket URL.
    pub fn websocket(ws: impl Into<String>) -> Self {
        Endpoints { ws: ws.into(), quic: None, quic_cert_sha256: None }
    }

    /// The QUIC endpoint's host and port (`quic://host:port`), if there is one.
    pub fn quic_host_port(&self) -> Option<(&str, u16)> {
        let rest = self.quic.as_deref()?.strip_prefix("quic://")?;
        let (host, port) = rest.rsplit_once(':')?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = port.parse().ok()?;
        (!host.is_empty() && port != 0).then_some((host, port))
    }

    fn validate(&self) -> Result<(), FieldError> {
        let ws = &self.ws;
        if ws.len() > 256 || !(ws.starts_with("ws://") || ws.starts_with("wss://")) {
            return Err(field("endpoints.ws", "a ws:// or wss:// URL of at most 256 bytes"));
        }
        if let Some(q) = &self.quic
            && (q.len() > 256 || self.quic_host_port().is_none())
        {
            return Err(field("endpoints.quic", "quic://host:port of at most 256 bytes"));
        }
        if let Some(h) = &self.quic_cert_sha256 {
            if self.quic.is_none() {
                return Err(field("endpoints.quic_cert_sha256", "given without endpoints.quic"));
            }
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(field("endpoints.quic_cert_sha256", "64 lowercase hex digits"));
            }
        }
        Ok(())
    }
}

/// `200` answer to `POST /v1/allocations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Names the reservation (`DELETE /v1/allocations/{allocation_id}` cancels it).
    pub allocation_id: String,
    /// The bot already held this seat (or a live reservation for it): the answer gives it back
    /// instead of a new one.
    #[serde(default)]
    pub existing: bool,
    pub world_id: String,
    pub region: String,
    pub server_id: String,
    pub endpoints: Endpoints,
    /// The join ticket for `join`.
    pub ticket: String,
    /// When the reservation and the ticket expire (Unix seconds).
    pub expires_at: u64,
    /// The world's placement generation (fencing token).
    pub fence: u64,
}

/// The body of every `4xx`/`5xx` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ApiErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// `bad_request`, `unauthorized`, `forbidden`, `rate_limited`, `no_capacity`,
    /// `world_unavailable`, `seat_elsewhere`, `payload_too_large`, `headers_too_large`,
    /// `timeout`, `not_found`, `method_not_allowed`, `unavailable`, `internal`.
    pub code: String,
    pub message: String,
    /// The offending request field, for `bad_request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A gameserver's readiness as the registry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Takes new worlds and bots.
    Ready,
    /// Shutting down: no new seats.
    Draining,
}

/// One region in `GET /v1/regions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionSummary {
    pub region: String,
    pub servers_ready: usize,
    pub servers: usize,
    pub worlds: u64,
    /// Worlds the ready servers may hold.
    pub world_capacity: u64,
    /// Seats occupied or reserved on ready servers.
    pub seats_used: u64,
    /// Seats of ready servers.
    pub seats: u64,
    /// Bots the ready servers can still take: free seats, bounded by each server's tick budget.
    pub room: u64,
    pub utilisation: f64,
}

/// One server in `GET /v1/servers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSummary {
    pub server_id: String,
    pub region: String,
    pub ws: String,
    /// Its QUIC endpoint, `quic://host:port`, if it serves QUIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<String>,
    pub state: ServerState,
    /// Heard from within the server timeout.
    pub alive: bool,
    pub last_seen_ms_ago: u64,
    pub worlds: u32,
    pub max_worlds: u32,
    pub world_capacity: u32,
    /// Seats occupied or reserved.
    pub seats_used: u32,
    /// Its measured load, as it last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<ServerLoad>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Most worlds a heartbeat may report.
pub const MAX_REPORTED_WORLDS: usize = 10_000;
/// Most joined reservations one world may report per heartbeat.
pub const MAX_JOINED_PER_REPORT: usize = 1_000;
/// Largest fence (placement generation) anyone may hold: 2^53 − 1, exact in every JSON and Lua
/// number.
pub const MAX_FENCE: u64 = (1 << 53) - 1;
/// Largest tick load a server may report (it is a ratio; 1.0 is its budget).
pub const MAX_TICK_LOAD: f32 = 100.0;

/// `POST /v1/servers/heartbeat`, every second from each gameserver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub server_id: String,
    pub region: String,
    pub endpoints: Endpoints,
    pub state: ServerState,
    /// Most worlds the server holds.
    pub max_worlds: u32,
    /// Seats per world.
    pub world_capacity: u32,
    pub worlds: Vec<WorldReport>,
    /// How busy the server is, measured; none from a server that does not measure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<ServerLoad>,
    /// The server's build or template version (the fleet rolls servers by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A server's measured load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLoad {
    /// The tick's use of its time budget: 1.0 is the most the server takes before its bots'
    /// latency suffers; past it, it takes no new bots.
    pub tick: f32,
    /// Bots connected now.
    pub bots: u32,
    /// Bots the server estimates it can still take within its tick budget (0 when past it).
    pub room: u32,
}

/// A ticket a server refused at `join` (it was past its tick budget, say): its reservation can
/// be freed at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusedTicket {
    /// The ticket's nonce (the reservation id).
    pub nonce: String,
    pub bot: String,
}

/// One live world in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldReport {
    pub world_id: String,
    /// The placement generation the server holds for it (0: not known yet).
    #[serde(default)]
    pub fence: u64,
    /// Seats taken (connected bots and bots within their resume grace).
    pub occupancy: u32,
    /// Reservations (ticket nonces) used to join since the last acknowledged heartbeat.
    #[serde(default)]
    pub joined: Vec<String>,
    /// Every bot holding a seat (connected or within its grace), when the server sends the
    /// list: after it changed, and every few seconds for each world.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bots: Option<Vec<String>>,
    /// Tickets refused at `join` since the last acknowledged heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedTicket>,
}

impl Heartbeat {
    pub fn validate(&self) -> Result<(), FieldError> {
        if !valid_id(&self.server_id) {
            return Err(field("server_id", "1 to 64 characters of A-Z a-z 0-9 _ . : -"));
        }
        if !valid_id(&self.region) {
            return Err(field("region", "1 to 64 characters of A-Z a-z 0-9 _ . : -"));
        }
        self.endpoints.validate()?;
        if self.max_worlds == 0 || self.max_worlds as usize > MAX_REPORTED_WORLDS {
            return Err(field("max_worlds", format!("1 to {MAX_REPORTED_WORLDS}")));
        }
        if !(1..=1000).contains(&self.world_capacity) {
            return Err(field("world_capacity", "1 to 1000"));
        }
        if self.worlds.len() > self.max_worlds as usize {
            return Err(field("worlds", "more worlds than max_worlds"));
        }
        if let Some(v) = &self.version
            && !valid_id(v)
        {
            return Err(field("version", "1 to 64 characters of A-Z a-z 0-9 _ . : -"));
        }
        if let Some(l) = &self.load
            && (!l.tick.is_finite() || !(0.0..=MAX_TICK_LOAD).contains(&l.tick))
        {
            return Err(field("load.tick", format!("a number from 0 to {MAX_TICK_LOAD}")));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.worlds.len());
        for w in &self.worlds {
            if !valid_id(&w.world_id) {
                return Err(field("worlds.world_id", "1 to 64 characters of A-Z a-z 0-9 _ . : -"));
            }
            if !seen.insert(w.world_id.as_str()) {
                return Err(field("worlds.world_id", format!("world {} is reported twice", w.world_id)));
            }
            if w.fence > MAX_FENCE {
                return Err(field("worlds.fence", format!("at most {MAX_FENCE}")));
            }
            if w.occupancy > self.world_capacity {
                return Err(field("worlds.occupancy", "more than world_capacity"));
            }
            let nonce_ok = |n: &str| !n.is_empty() && n.len() <= 64;
            if w.joined.len() > MAX_JOINED_PER_REPORT || !w.joined.iter().all(|n| nonce_ok(n)) {
                return Err(field("worlds.joined", format!("at most {MAX_JOINED_PER_REPORT} ids of 1 to 64 bytes")));
            }
            if w.refused.len() > MAX_JOINED_PER_REPORT
                || !w.refused.iter().all(|r| nonce_ok(&r.nonce) && valid_id(&r.bot))
            {
                return Err(field("worlds.refused", format!("at most {MAX_JOINED_PER_REPORT} tickets")));
            }
            if let Some(bots) = &w.bots
                && (bots.len() > self.world_capacity as usize || !bots.iter().all(|b| valid_id(b)))
            {
                return Err(field("worlds.bots", "at most world_capacity bot ids"));
            }
        }
        Ok(())
    }
}

/// The allocator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The placement generation of each reported world that is placed on this server.
    pub fences: BTreeMap<String, u64>,
    /// Reported worlds that are placed elsewhere now: the server must let them go.
    pub evict: Vec<String>,
    /// Worlds placed on this server that it did not report (placed, not loaded yet), with
    /// their fences: the only worlds besides `fences` it may load.
    #[serde(default)]
    pub placed: BTreeMap<String, u64>,
    /// The registry's newest fence when it answered: a world placed on this server after this
    /// answer has a larger fence.
    #[serde(default)]
    pub watermark: u64,
    /// How long after *sending* this heartbeat the server may keep serving its worlds without
    /// another acknowledged one (its lease). The allocator moves a silent server's worlds only
    /// after its server timeout, which is longer by a safety margin.
    #[serde(default)]
    pub lease_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> AllocationRequest {
        AllocationRequest { bot_id: "bot-1".into(), ..Default::default() }
    }

    #[test]
    fn regions_come_from_the_list_or_the_latencies() {
        assert_eq!(req().validate().unwrap(), Vec::<String>::new());
        let r = AllocationRequest { regions: vec!["eu".into(), "us".into()], ..req() };
        assert_eq!(r.validate().unwrap(), vec!["eu", "us"]);
        let l = AllocationRequest {
            latencies_ms: BTreeMap::from([("eu".into(), 140.0), ("us".into(), 23.5), ("ap".into(), 23.5)]),
            ..req()
        };
        assert_eq!(l.validate().unwrap(), vec!["ap", "us", "eu"]);
    }

    #[test]
    fn quic_endpoints_are_optional_and_checked() {
        let ok = |e: &Endpoints| e.validate().map_err(|f| f.field);
        let ws = Endpoints::websocket("ws://10.0.0.7:7000/ws");
        assert_eq!(ok(&ws), Ok(()));
        assert_eq!(
            serde_json::to_string(&ws).unwrap(),
            r#"{"ws":"ws://10.0.0.7:7000/ws"}"#,
            "old clients see no change"
        );
        let hash = "ab".repeat(32);
        let quic = |q: &str, h: Option<&str>| Endpoints {
            quic: Some(q.to_owned()),
            quic_cert_sha256: h.map(str::to_owned),
            ..ws.clone()
        };
        assert_eq!(ok(&quic("quic://10.0.0.7:7443", Some(&hash))), Ok(()));
        assert_eq!(quic("quic://[::1]:7443", None).quic_host_port(), Some(("::1", 7443)));
        assert_eq!(quic("quic://gs-1.example:443", None).quic_host_port(), Some(("gs-1.example", 443)));
        for bad in ["10.0.0.7:7443", "quic://10.0.0.7", "quic://:7443", "quic://h:0", "quic://h:99999", "https://h:1"] {
            assert_eq!(ok(&quic(bad, None)), Err("endpoints.quic"), "{bad}");
        }
        assert_eq!(ok(&quic(&format!("quic://{}:1", "h".repeat(260)), None)), Err("endpoints.quic"));
        for bad in ["AB".repeat(32), "ab".repeat(31), "zz".repeat(32)] {
            assert_eq!(ok(&quic("quic://h:1", Some(&bad))), Err("endpoints.quic_cert_sha256"), "{bad}");
        }
        let hash_alone = Endpoints { quic_cert_sha256: Some(hash), ..ws };
        assert_eq!(ok(&hash_alone), Err("endpoints.quic_cert_sha256"));
    }

    #[test]
    fn bad_fields_are_named() {
        let f = |r: AllocationRequest| r.validate().unwrap_err().field;
        assert_eq!(f(AllocationRequest { bot_id: "".into(), ..req() }), "bot_id");
        assert_eq!(f(AllocationRequest { world_id: Some("a b".into()), ..req() }), "world_id");
        assert_eq!(f(AllocationRequest { regions: vec!["x".into(), "x".into()], ..req() }), "regions");
        assert_eq!(f(AllocationRequest { regions: vec!["bad region".into()], ..req() }), "regions");
        for ms in [-1.0, 1e12, f64::NAN] {
            let r = AllocationRequest { latencies_ms: BTreeMap::from([("us".into(), ms)]), ..req() };
            assert_eq!(f(r), "latencies_ms");
        }
        assert_eq!(f(AllocationRequest { regions: vec!["r".to_string(); 17], ..req() }), "regions");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<AllocationRequest>(r#"{"bot_id":"b","color":"red"}"#).is_err());
        let ok: AllocationRequest = serde_json::from_str(r#"{"bot_id":"b","scheduling":"distributed"}"#).unwrap();
        assert_eq!(ok.scheduling, Scheduling::Distributed);
    }

    fn hb() -> Heartbeat {
        Heartbeat {
            server_id: "gs-1".into(),
            region: "us".into(),
            endpoints: Endpoints::websocket("ws://127.0.0.1:7000/ws"),
            state: ServerState::Ready,
            max_worlds: 2,
            world_capacity: 30,
            worlds: vec![WorldReport {
                world_id: "w".into(),
                fence: 1,
                occupancy: 3,
                joined: vec!["n".into()],
                bots: Some(vec!["a".into(), "b".into(), "c".into()]),
                refused: vec![],
            }],
            load: Some(ServerLoad { tick: 0.3, bots: 3, room: 100 }),
            version: Some("v1".into()),
        }
    }

    #[test]
    fn heartbeats_are_validated() {
        assert!(hb().validate().is_ok());
        let f = |h: Heartbeat| h.validate().unwrap_err().field;
        assert_eq!(f(Heartbeat { endpoints: Endpoints::websocket("http://x"), ..hb() }), "endpoints.ws");
        assert_eq!(f(Heartbeat { max_worlds: 0, ..hb() }), "max_worlds");
        let mut over = hb();
        over.worlds[0].occupancy = 31;
        assert_eq!(f(over), "worlds.occupancy");
        let mut many = hb();
        many.worlds = vec![many.worlds[0].clone(); 3];
        assert_eq!(f(many), "worlds");
        let mut twice = hb();
        twice.max_worlds = 5;
        twice.worlds = vec![twice.worlds[0].clone(); 2];
        assert_eq!(f(twice), "worlds.world_id");
        let mut huge = hb();
        huge.worlds[0].fence = MAX_FENCE + 1;
        assert_eq!(f(huge), "worlds.fence");
        let mut crowd = hb();
        crowd.worlds[0].bots = Some(vec!["x".into(); 31]);
        assert_eq!(f(crowd), "worlds.bots");
        for tick in [f32::NAN, -1.0, 1e9] {
            assert_eq!(f(Heartbeat { load: Some(ServerLoad { tick, bots: 0, room: 0 }), ..hb() }), "load.tick");
        }
        assert_eq!(f(Heartbeat { version: Some("v 1".into()), ..hb() }), "version");
    }
}
