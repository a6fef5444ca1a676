//! A bot that takes care of itself: it asks the allocator for a seat, connects, joins, keeps a
//! mirror of its world, and when the connection drops it resumes its seat — or, when the seat is
//! gone, allocates afresh — with exponential backoff and jitter. It plays over WebSocket, or,
//! with the `quic` feature and [`Transport::Quic`], over QUIC wherever its server serves it.
//!
//! ```no_run
//! use arena_sdk::bot::{Bot, BotEvent, BotOptions};
//!
//! # async fn run() -> Result<(), arena_sdk::bot::BotError> {
//! let mut bot = Bot::connect("http://127.0.0.1:7100", BotOptions::new("my-bot", "arena-dev-key")).await?;
//! bot.say("hello, world").await?;
//! while let Some(event) = bot.next_event().await {
//!     if let BotEvent::Update(update) = event {
//!         if let Some(me) = bot.with_world(|w| w.bot(w.me()).cloned()).flatten() {
//!             bot.move_to(1000.0 - me.x, 1000.0 - me.y).await?;
//!         }
//!         let _ = update;
//!     }
//! }
//! bot.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::allocator_api::{Allocation, AllocationRequest, ApiError, Endpoints, Scheduling};
use crate::client::{Client, ClientError, Received};
use crate::codec::Encoding;
use crate::mirror::{Mirror, SessionEvent};
use crate::protocol::{Act, BotId, Command, ErrorMsg, Event, Move, ServerMsg, Update, Welcome, close};
#[cfg(feature = "quic")]
use crate::quic::{QuicClient, Trust};

/// What a bot plays over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// The allocation's `endpoints.ws` (`ws://` or `wss://`).
    #[default]
    WebSocket,
    /// The allocation's `endpoints.quic` when it has one (its certificate pinned by
    /// `endpoints.quic_cert_sha256`, else verified against [`BotOptions::tls_roots`] or the
    /// system's roots), else WebSocket.
    #[cfg(feature = "quic")]
    Quic,
}

/// One connection to a gameserver, over either transport.
#[derive(Debug)]
enum Conn {
    Ws(Box<Client>),
    #[cfg(feature = "quic")]
    Quic(Box<QuicClient>),
}

impl Conn {
    fn transport(&self) -> Transport {
        match self {
            Conn::Ws(_) => Transport::WebSocket,
            #[cfg(feature = "quic")]
            Conn::Quic(_) => Transport::Quic,
        }
    }

    fn mirror(&self) -> Option<&Mirror> {
        match self {
            Conn::Ws(c) => c.mirror(),
            #[cfg(feature = "quic")]
            Conn::Quic(c) => c.mirror(),
        }
    }

    async fn join(&mut self, ticket: &str, world: &str) -> Result<Welcome, ClientError> {
        match self {
            Conn::Ws(c) => c.join(ticket, Some(world)).await,
            #[cfg(feature = "quic")]
            Conn::Quic(c) => c.join(ticket, Some(world)).await,
        }
    }

    async fn resume(&mut self, token: &str) -> Result<Welcome, ClientError> {
        match self {
            Conn::Ws(c) => c.resume(token).await,
            #[cfg(feature = "quic")]
            Conn::Quic(c) => c.resume(token).await,
        }
    }

    async fn input(&mut self, command: Command) -> Result<u32, ClientError> {
        match self {
            Conn::Ws(c) => c.input(command).await,
            #[cfg(feature = "quic")]
            Conn::Quic(c) => c.input(command).await,
        }
    }

    async fn recv(&mut self) -> Result<Received, ClientError> {
        match self {
            Conn::Ws(c) => c.recv().await,
            #[cfg(feature = "quic")]
            Conn::Quic(c) => c.recv().await,
        }
    }

    /// Close with 1000: the seat is freed at once.
    async fn leave(self) {
        match self {
            Conn::Ws(c) => {
                let _ = c.leave().await;
            }
            #[cfg(feature = "quic")]
            Conn::Quic(c) => c.leave().await,
        }
    }
}

/// How long to wait between reconnection attempts: `initial`, doubling up to `max`; with
/// `jitter` each wait grows by a random share of itself (up to double), so that a fleet of bots
/// that lost the same server does not come back in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5), jitter: true }
    }
}

impl Backoff {
    /// The waits, one per retry, for ever.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        use backon::BackoffBuilder;
        let b = backon::ExponentialBuilder::new()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times();
        if self.jitter { b.with_jitter().build() } else { b.build() }
    }
}

/// Everything [`Bot::connect`] needs besides the allocator's URL.
#[derive(Debug, Clone)]
pub struct BotOptions {
    /// The bot's identity (1–64 of `A-Z a-z 0-9 _ . : -`).
    pub bot_id: String,
    /// The allocator API key.
    pub api_key: String,
    /// Regions in order of preference (empty: any).
    pub regions: Vec<String>,
    /// The bot's own world, if it has one.
    pub world_id: Option<String>,
    pub scheduling: Scheduling,
    pub encoding: Encoding,
    pub backoff: Backoff,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
    /// Limit for each allocation request, connection and join.
    pub timeout: Duration,
    /// A server that sends nothing for this long is taken for gone (it sends 20 updates a
    /// second), and the bot reconnects.
    pub silence_timeout: Duration,
    /// Roots a gameserver's certificate (`wss://`, or QUIC without a published hash) is
    /// verified against (`None`: the system's).
    pub tls_roots: Option<std::sync::Arc<rustls::RootCertStore>>,
    pub transport: Transport,
}

impl BotOptions {
    pub fn new(bot_id: impl Into<String>, api_key: impl Into<String>) -> Self {
        BotOptions {
            bot_id: bot_id.into(),
            api_key: api_key.into(),
            regions: Vec::new(),
            world_id: None,
            scheduling: Scheduling::Packed,
            encoding: Encoding::MsgPack,
            backoff: Backoff::default(),
            max_attempts: Some(20),
            timeout: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(5),
            tls_roots: None,
            transport: Transport::default(),
        }
    }
}

/// Where the bot is playing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    pub world_id: String,
    pub bot: BotId,
    pub server_id: String,
    pub region: String,
    /// True when the seat was resumed rather than newly allocated.
    pub resumed: bool,
    /// What the bot plays over on this seat.
    pub transport: Transport,
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum BotEvent {
    /// Seated (first join, resume, or a fresh allocation after losing the seat).
    Joined(Seat),
    /// A tick of the world, already applied to the mirror.
    Update(Update),
    /// The mirror was replaced by a fresh snapshot; `events` are what happened in the ticks it
    /// replaced (chat lines, actions), so none is lost.
    Resynced { events: Vec<Event> },
    /// The server refused something the bot sent.
    Error(ErrorMsg),
    /// The connection dropped; the bot is getting its seat back.
    Reconnecting { attempt: u32, reason: String },
    /// The caller did not read events fast enough; this many were dropped.
    Lagged(u64),
    /// The bot stopped: shut down, replaced by another connection, or out of attempts.
    Stopped { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum BotError {
    #[error("allocation refused: {} ({})", .0.error.message, .0.error.code)]
    Refused(ApiError),
    /// The allocator refused for now, asking to retry after this long.
    #[error("allocation refused for now: {} ({}); retry after {:?}", .0.error.message, .0.error.code, .1)]
    RetryAfter(ApiError, Duration),
    #[error("allocator unreachable: {0}")]
    Http(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("not connected at the moment (reconnecting)")]
    NotConnected,
    #[error("the bot has stopped")]
    Stopped,
}

impl BotError {
    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        use crate::protocol::ErrorCode as C;
        match self {
            BotError::RetryAfter(..) | BotError::Http(_) => true,
            BotError::Refused(e) => {
                matches!(e.error.code.as_str(), "unavailable" | "no_capacity" | "world_unavailable")
            }
            BotError::Client(ClientError::Refused(e)) => matches!(
                e.code,
                C::Unavailable
                    | C::Overloaded
                    | C::Draining
                    | C::ServerFull
                    | C::WorldFull
                    | C::TicketWrongServer
                    | C::TicketExpired
            ),
            BotError::Client(ClientError::Closed { code, .. }) => *code != close::POLICY_VIOLATION,
            BotError::Client(ClientError::WebSocket(_) | ClientError::Quic(_) | ClientError::Timeout(_)) => true,
            _ => false,
        }
    }

    /// How long the allocator asked to wait (zero when it did not say).
    pub fn retry_after(&self) -> Duration {
        match self {
            BotError::RetryAfter(_, d) => *d,
            _ => Duration::ZERO,
        }
    }
}

enum Request {
    Input(Command, oneshot::Sender<Result<u32, BotError>>),
    Shutdown(oneshot::Sender<()>),
}

const EVENT_BUFFER: usize = 1024;
/// Resume attempts before asking the allocator for a seat again.
const RESUME_ATTEMPTS: u32 = 3;

/// A connected bot. Dropping it stops it (without the goodbye that [`Bot::shutdown`] sends).
#[derive(Debug)]
pub struct Bot {
    requests: mpsc::Sender<Request>,
    events: mpsc::Receiver<BotEvent>,
    mirror: Arc<Mutex<Option<Mirror>>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Bot {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Bot {
    /// Allocate a seat through the allocator at `allocator_url`, connect and join. Returns once
    /// seated; the first event is the [`BotEvent::Joined`]. Refusals that say "retry" (`429`,
    /// `503`, a server that is busy, draining or not serving the world yet) and unreachable
    /// servers are retried with backoff, waiting at least the allocator's `Retry-After`, up to
    /// `max_attempts`; other refusals are returned at once.
    pub async fn connect(allocator_url: &str, options: BotOptions) -> Result<Bot, BotError> {
        let http =
            reqwest::Client::builder().timeout(options.timeout).build().map_err(|e| BotError::Http(e.to_string()))?;
        let mut driver = Driver {
            allocator: allocator_url.trim_end_matches('/').to_owned(),
            http,
            options,
            mirror: Arc::new(Mutex::new(None)),
            endpoint: None,
            token: None,
            events_dropped: 0,
            failures: 0,
            seated_at: None,
        };
        let mut delays = driver.options.backoff.delays();
        let mut attempt = 0u32;
        let (client, seat) = loop {
            match driver.allocate_and_join().await {
                Ok(joined) => break joined,
                Err(e) => {
                    attempt += 1;
                    let out_of_attempts = driver.options.max_attempts.is_some_and(|max| attempt >= max);
                    if !e.retryable() || out_of_attempts {
                        return Err(e);
                    }
                    let wait = delays.next().unwrap_or(driver.options.backoff.max).max(e.retry_after());
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let (req_tx, req_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_BUFFER);
        let mirror = Arc::clone(&driver.mirror);
        let _ = ev_tx.try_send(BotEvent::Joined(seat));
        let task = tokio::spawn(driver.run(client, req_rx, ev_tx));
        Ok(Bot { requests: req_tx, events: ev_rx, mirror, task: Some(task) })
    }

    /// The next event; `None` once the bot has stopped and every event was read.
    pub async fn next_event(&mut self) -> Option<BotEvent> {
        self.events.recv().await
    }

    /// Look at the world as the bot last saw it (`None` before the first join).
    pub fn with_world<T>(&self, f: impl FnOnce(&Mirror) -> T) -> Option<T> {
        self.mirror.lock().ok()?.as_ref().map(f)
    }

    async fn input(&self, command: Command) -> Result<u32, BotError> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Input(command, tx)).await.map_err(|_| BotError::Stopped)?;
        rx.await.map_err(|_| BotError::Stopped)?
    }

    /// Walk to `(x, y)`; returns the input's `seq`.
    pub async fn move_to(&self, x: f32, y: f32) -> Result<u32, BotError> {
        self.input(Command::Move(Move::To([x, y]))).await
    }

    /// Walk by `(dx, dy)` from where the bot stands.
    pub async fn move_by(&self, dx: f32, dy: f32) -> Result<u32, BotError> {
        self.input(Command::Move(Move::By([dx, dy]))).await
    }

    /// Say something to the world.
    pub async fn say(&self, text: impl Into<String>) -> Result<u32, BotError> {
        self.input(Command::Say(text.into())).await
    }

    /// Emote (no target) or interact with another bot.
    pub async fn act(&self, action: impl Into<String>, target: Option<BotId>) -> Result<u32, BotError> {
        self.input(Command::Act(Act { action: action.into(), target })).await
    }

    /// Leave the world (close 1000: the seat is freed at once) and stop.
    pub async fn shutdown(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// The task behind a [`Bot`]: owns the connection and reconnects.
struct Driver {
    allocator: String,
    http: reqwest::Client,
    options: BotOptions,
    mirror: Arc<Mutex<Option<Mirror>>>,
    /// The server of the current seat, for resuming.
    endpoint: Option<(Endpoints, Seat)>,
    token: Option<String>,
    events_dropped: u64,
    /// Failed attempts in a row; reset only once a seat was held for a while, so that a seat
    /// that is lost right after each join still backs off and runs out of attempts.
    failures: u32,
    seated_at: Option<tokio::time::Instant>,
}

/// A seat held this long counts as a success: the attempt count starts over.
const STABLE_SEAT: Duration = Duration::from_secs(10);

/// Why a connection ended, and what that means for the seat.
enum Lost {
    /// Try to resume the seat.
    Resume(String),
    /// The seat is gone: allocate again.
    Reallocate(String),
    /// Stop for good.
    Stop(String),
}

fn classify(e: &ClientError) -> Lost {
    match e {
        ClientError::Closed { code, reason } => match *code {
            close::REPLACED => Lost::Stop(format!("another connection took the seat: {reason}")),
            close::POLICY_VIOLATION => Lost::Stop(format!("closed for protocol violations: {reason}")),
            close::GOING_AWAY | close::WORLD_MOVED | close::LEASE_LOST | close::JOIN_REFUSED => {
                Lost::Reallocate(format!("closed {code}: {reason}"))
            }
            _ => Lost::Resume(format!("closed {code}: {reason}")),
        },
        other => Lost::Resume(other.to_string()),
    }
}

impl Driver {
    fn emit(&mut self, tx: &mpsc::Sender<BotEvent>, event: BotEvent) {
        if self.events_dropped > 0 && tx.try_send(BotEvent::Lagged(self.events_dropped)).is_ok() {
            self.events_dropped = 0;
        }
        if tx.try_send(event).is_err() {
            self.events_dropped += 1;
        }
    }

    fn set_mirror(&self, client: &Conn) {
        if let Ok(mut m) = self.mirror.lock() {
            *m = client.mirror().cloned();
        }
    }

    async fn allocate(&self) -> Result<Allocation, BotError> {
        let req = AllocationRequest {
            bot_id: self.options.bot_id.clone(),
            regions: self.options.regions.clone(),
            world_id: self.options.world_id.clone(),
            scheduling: self.options.scheduling,
            ..AllocationRequest::default()
        };
        let resp = self
            .http
            .post(format!("{}/v1/allocations", self.allocator))
            .bearer_auth(&self.options.api_key)
            .json(&req)
            .send()
            .await
            .map_err(|e| BotError::Http(e.to_string()))?;
        if resp.status().is_success() {
            resp.json().await.map_err(|e| BotError::Http(e.to_string()))
        } else {
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(60)));
            match (resp.json::<ApiError>().await, retry_after) {
                (Ok(e), Some(after)) => Err(BotError::RetryAfter(e, after)),
                (Ok(e), None) => Err(BotError::Refused(e)),
                (Err(_), _) => Err(BotError::Http(format!("allocator answered {status}"))),
            }
        }
    }

    /// Connect to the seat's server over the transport the options ask for, as it serves it.
    async fn connect(&self, endpoints: &Endpoints) -> Result<Conn, ClientError> {
        #[cfg(feature = "quic")]
        if self.options.transport == Transport::Quic
            && let Some((host, port)) = endpoints.quic_host_port()
        {
            let trust = match &endpoints.quic_cert_sha256 {
                Some(hex) => {
                    Trust::pinned_hex(hex).ok_or_else(|| ClientError::Url(format!("bad certificate hash {hex}")))?
                }
                None => Trust::Roots(self.options.tls_roots.clone().unwrap_or_else(crate::client::system_roots)),
            };
            let addr = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| ClientError::Url(format!("{host}: {e}")))?
                .next()
                .ok_or_else(|| ClientError::Url(format!("{host}: no address")))?;
            let client = QuicClient::connect(addr, host, self.options.encoding, &trust).await?;
            return Ok(Conn::Quic(Box::new(client)));
        }
        let url = &endpoints.ws;
        let client = match &self.options.tls_roots {
            Some(roots) => Client::connect_with_roots(url, self.options.encoding, Arc::clone(roots)).await?,
            None => Client::connect(url, self.options.encoding).await?,
        };
        Ok(Conn::Ws(Box::new(client)))
    }

    async fn allocate_and_join(&mut self) -> Result<(Conn, Seat), BotError> {
        let a = self.allocate().await?;
        let timeout = self.options.timeout;
        let mut client = tokio::time::timeout(timeout, self.connect(&a.endpoints))
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        let w = tokio::time::timeout(timeout, client.join(&a.ticket, &a.world_id))
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        let seat = Seat {
            world_id: a.world_id,
            bot: w.bot,
            server_id: a.server_id,
            region: a.region,
            resumed: false,
            transport: client.transport(),
        };
        self.token = Some(w.resume_token);
        self.endpoint = Some((a.endpoints, seat.clone()));
        self.set_mirror(&client);
        Ok((client, seat))
    }

    async fn resume(&mut self, token: &str) -> Result<(Conn, Seat), ClientError> {
        let Some((endpoints, seat)) = self.endpoint.clone() else {
            return Err(ClientError::Url("no endpoint to resume on".into()));
        };
        let timeout = self.options.timeout;
        let mut client = tokio::time::timeout(timeout, self.connect(&endpoints))
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        let w =
            tokio::time::timeout(timeout, client.resume(token)).await.map_err(|_| ClientError::Timeout(timeout))??;
        self.token = Some(w.resume_token);
        self.set_mirror(&client);
        let transport = client.transport();
        Ok((client, Seat { bot: w.bot, resumed: true, transport, ..seat }))
    }

    /// Get a seat back: resume while the seat may exist, allocate afresh once it is gone.
    async fn reconnect(&mut self, mut lost: Lost, events: &mpsc::Sender<BotEvent>) -> Option<Conn> {
        if self.seated_at.is_some_and(|t| t.elapsed() >= STABLE_SEAT) {
            self.failures = 0;
        }
        let mut resumes = 0u32;
        let mut delays = self.options.backoff.delays();
        // Retries after the first carry on the doubling where the last failures left it.
        for _ in 1..self.failures {
            delays.next();
        }
        loop {
            // A server that cannot be reached a few times in a row may be gone for good: ask the
            // allocator, which places the world elsewhere once the server stops reporting.
            if let Lost::Resume(r) = &lost
                && resumes >= RESUME_ATTEMPTS
            {
                lost = Lost::Reallocate(format!("{r} (resume failed {resumes} times)"));
            }
            let reason = match &lost {
                Lost::Stop(reason) => {
                    self.emit(events, BotEvent::Stopped { reason: reason.clone() });
                    return None;
                }
                Lost::Resume(r) | Lost::Reallocate(r) => r.clone(),
            };
            let attempt = self.failures;
            if let Some(max) = self.options.max_attempts
                && attempt >= max
            {
                self.emit(events, BotEvent::Stopped { reason: format!("gave up after {attempt} attempts: {reason}") });
                return None;
            }
            self.emit(events, BotEvent::Reconnecting { attempt, reason });
            // The first try after a stable seat goes at once; later ones back off.
            if attempt > 0
                && let Some(wait) = delays.next()
            {
                tokio::time::sleep(wait).await;
            }
            self.failures += 1;
            let outcome = match (&lost, self.token.clone()) {
                (Lost::Resume(_), Some(token)) => {
                    resumes += 1;
                    match self.resume(&token).await {
                        Ok(ok) => Ok(ok),
                        Err(ClientError::Refused(e)) => {
                            // The seat is gone, or its server is draining: allocate afresh.
                            self.token = None;
                            Err(Lost::Reallocate(format!("resume refused: {}", e.message)))
                        }
                        Err(e) => Err(classify(&e)),
                    }
                }
                _ => self.allocate_and_join().await.map_err(|e| match e {
                    BotError::Client(c) => classify_retry(c),
                    other => Lost::Reallocate(other.to_string()),
                }),
            };
            match outcome {
                Ok((client, seat)) => {
                    self.seated_at = Some(tokio::time::Instant::now());
                    self.emit(events, BotEvent::Joined(seat));
                    return Some(client);
                }
                Err(next) => lost = next,
            }
        }
    }

    async fn run(mut self, mut client: Conn, mut requests: mpsc::Receiver<Request>, events: mpsc::Sender<BotEvent>) {
        self.seated_at = Some(tokio::time::Instant::now());
        // Only what the server sends proves it alive; sending does not.
        let mut heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                req = requests.recv() => match req {
                    Some(Request::Input(command, reply)) => {
                        let timeout = self.options.timeout;
                        let r = match tokio::time::timeout(timeout, client.input(command)).await {
                            Ok(r) => r.map_err(BotError::from),
                            Err(_) => Err(BotError::Client(ClientError::Timeout(timeout))),
                        };
                        let failed = r.is_err();
                        let _ = reply.send(r);
                        if failed {
                            let Some(c) = self.reconnect(Lost::Resume("send failed".into()), &events).await else { return };
                            client = c;
                            heard = tokio::time::Instant::now();
                        }
                    }
                    Some(Request::Shutdown(done)) => {
                        client.leave().await;
                        self.emit(&events, BotEvent::Stopped { reason: "shut down".into() });
                        let _ = done.send(());
                        return;
                    }
                    // The Bot was dropped.
                    None => return,
                },
                received = tokio::time::timeout_at(heard + self.options.silence_timeout, client.recv()) => match received {
                    Err(_) => {
                        let reason = format!("no message for {:?}", self.options.silence_timeout);
                        let Some(c) = self.reconnect(Lost::Resume(reason), &events).await else { return };
                        client = c;
                        heard = tokio::time::Instant::now();
                    }
                    Ok(Ok(r)) => {
                        heard = tokio::time::Instant::now();
                        let event = match (r.msg, r.event) {
                            (ServerMsg::Update(u), SessionEvent::Updated) => Some(BotEvent::Update(u)),
                            (ServerMsg::Snapshot(s), SessionEvent::Resynced) => Some(BotEvent::Resynced { events: s.events }),
                            (_, SessionEvent::Resynced | SessionEvent::Welcomed) => Some(BotEvent::Resynced { events: Vec::new() }),
                            (ServerMsg::Error(e), _) => Some(BotEvent::Error(e)),
                            _ => None,
                        };
                        self.set_mirror(&client);
                        if let Some(e) = event {
                            self.emit(&events, e);
                        }
                    }
                    Ok(Err(e)) => {
                        let Some(c) = self.reconnect(classify(&e), &events).await else { return };
                        client = c;
                        heard = tokio::time::Instant::now();
                    }
                },
            }
        }
    }
}

/// A failed join after a fresh allocation: try again with another allocation unless told to stop.
fn classify_retry(e: ClientError) -> Lost {
    match classify(&e) {
        Lost::Stop(r) => Lost::Stop(r),
        Lost::Resume(r) | Lost::Reallocate(r) => Lost::Reallocate(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let plain = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), jitter: false };
        let waits: Vec<u64> = plain.delays().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        let jittered = Backoff { jitter: true, ..plain };
        for (w, base) in jittered.delays().zip([100u64, 200, 400, 800, 1000, 1000]) {
            assert!((base..2 * base).contains(&(w.as_millis() as u64)), "{w:?} for {base}");
        }
    }

    #[test]
    fn close_codes_decide_what_comes_next() {
        let closed = |code| ClientError::Closed { code, reason: String::new() };
        assert!(matches!(classify(&closed(close::REPLACED)), Lost::Stop(_)));
        assert!(matches!(classify(&closed(close::GOING_AWAY)), Lost::Reallocate(_)));
        assert!(matches!(classify(&closed(close::WORLD_MOVED)), Lost::Reallocate(_)));
        assert!(matches!(classify(&closed(close::LEASE_LOST)), Lost::Reallocate(_)));
        assert!(matches!(classify(&closed(close::SLOW_CONSUMER)), Lost::Resume(_)));
        assert!(matches!(classify(&closed(1006)), Lost::Resume(_)));
    }
}
