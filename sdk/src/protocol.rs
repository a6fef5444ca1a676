//! The messages of protocol `arena.v1`, shared by both encodings.
//!
//! Every message is a map with a `"type"` key; the JSON and MessagePack encodings carry the same
//! keys and values (see `docs/protocol.md`). Inputs are decoded into plain wire structs first and
//! validated afterwards ([`Input::command`]), so a well-formed frame with a bad value gets the
//! precise `invalid_input` error instead of a generic decode failure.

use serde::{Deserialize, Serialize};

/// WebSocket subprotocol for the MessagePack encoding (binary frames).
pub const SUBPROTOCOL_MSGPACK: &str = "arena.v1.msgpack";
/// WebSocket subprotocol for the JSON encoding (text frames).
pub const SUBPROTOCOL_JSON: &str = "arena.v1.json";

/// Largest client → server frame payload the server accepts, in bytes.
pub const MAX_CLIENT_FRAME_BYTES: usize = 4096;
/// Longest chat line, in Unicode scalar values.
pub const MAX_CHAT_CHARS: usize = 280;
/// Longest `act` action name, in bytes (`[a-z0-9_]`).
pub const MAX_ACTION_LEN: usize = 32;
/// Longest world or bot identifier, in bytes (`[A-Za-z0-9_.:-]`).
pub const MAX_ID_LEN: usize = 64;
/// Longest ticket or resume token a client may present, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;
/// How far one input's `seq` may jump past the previous one. Numbering must grow, and a seat
/// can never be locked out by a client that jumps to the top of the `u32` range.
pub const MAX_SEQ_STEP: u32 = 1_000_000;

/// A bot's id inside one world (assigned when it takes a seat).
pub type BotId = u32;
/// A world's tick counter.
pub type Tick = u64;

/// Client → server messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Take a seat with a signed join ticket. `world`, when given, must match the ticket.
    Join {
        ticket: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        world: Option<String>,
    },
    /// Take back a seat kept after a dropped connection.
    Resume { token: String },
    /// One game input; `seq` must grow with every input of a seat.
    Input(Input),
    /// Liveness probe; answered with `pong` carrying the same nonce.
    Ping {
        #[serde(default)]
        nonce: u64,
    },
    /// Ask for a fresh snapshot (after a detected gap).
    Resync,
}

/// The wire form of an input: `seq` plus exactly one of `move`, `say`, `act`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub seq: u32,
    #[serde(rename = "move", default, skip_serializing_if = "Option::is_none")]
    pub move_: Option<Move>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub say: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Act>,
}

/// Walk to a point, or by an offset from where the bot stands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Move {
    To([f32; 2]),
    By([f32; 2]),
}

/// An action: an emote (no target; becomes the bot's status) or an interaction with a target bot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Act {
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<BotId>,
}

/// A validated input command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Move(Move),
    Say(String),
    Act(Act),
}

/// Why an input was refused; maps onto an [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("an input needs exactly one of move, say, act")]
    NotExactlyOne,
    #[error("move coordinates must be finite numbers")]
    NonFinite,
    #[error("chat text is longer than {MAX_CHAT_CHARS} characters")]
    ChatTooLong,
    #[error("chat text must not be blank or hold control, format or line-separator characters")]
    BadChat,
    #[error("action must be 1 to {MAX_ACTION_LEN} characters of a-z, 0-9 and _")]
    BadAction,
}

impl InputError {
    pub fn code(&self) -> ErrorCode {
        match self {
            InputError::ChatTooLong => ErrorCode::ChatTooLong,
            _ => ErrorCode::InvalidInput,
        }
    }
}

impl Input {
    /// Build the wire form of a command.
    pub fn new(seq: u32, command: Command) -> Self {
        let mut input = Input { seq, move_: None, say: None, act: None };
        match command {
            Command::Move(m) => input.move_ = Some(m),
            Command::Say(s) => input.say = Some(s),
            Command::Act(a) => input.act = Some(a),
        }
        input
    }

    /// Validate the wire form and return the command it carries.
    pub fn command(&self) -> Result<Command, InputError> {
        match (&self.move_, &self.say, &self.act) {
            (Some(m), None, None) => {
                let [a, b] = match m {
                    Move::To(p) | Move::By(p) => *p,
                };
                if a.is_finite() && b.is_finite() { Ok(Command::Move(*m)) } else { Err(InputError::NonFinite) }
            }
            (None, Some(text), None) => {
                validate_chat(text)?;
                Ok(Command::Say(text.clone()))
            }
            (None, None, Some(act)) => {
                if valid_action(&act.action) {
                    Ok(Command::Act(act.clone()))
                } else {
                    Err(InputError::BadAction)
                }
            }
            _ => Err(InputError::NotExactlyOne),
        }
    }
}

fn validate_chat(text: &str) -> Result<(), InputError> {
    // Counting stops one past the limit, so a long line costs no more than a legal one.
    if text.chars().take(MAX_CHAT_CHARS + 1).count() > MAX_CHAT_CHARS {
        return Err(InputError::ChatTooLong);
    }
    if text.trim().is_empty() || text.chars().any(|c| !chat_char(c)) {
        return Err(InputError::BadChat);
    }
    Ok(())
}

/// Whether `c` may appear in a chat line. Refused, by Unicode general category: control
/// characters (Cc), format characters (Cf: bidirectional overrides and isolates such as U+202E,
/// zero-width spaces and joiners, the BOM, invisible tags) and line and paragraph separators
/// (Zl, Zp: U+2028, U+2029) — everything that can hide text or make a line render as something
/// else. One exception: U+200D ZERO WIDTH JOINER, which emoji sequences need.
pub fn chat_char(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    if c == '\u{200D}' {
        return true;
    }
    !matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

fn valid_action(action: &str) -> bool {
    !action.is_empty()
        && action.len() <= MAX_ACTION_LEN
        && action.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `id` is a valid world or bot identifier: 1 to 64 bytes of `[A-Za-z0-9_.:-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Server → client messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome(Welcome),
    Update(Update),
    Snapshot(Snapshot),
    Error(ErrorMsg),
    Pong {
        #[serde(default)]
        nonce: u64,
    },
}

/// The answer to a successful `join` or `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// Your bot's id in this world.
    pub bot: BotId,
    pub world: String,
    /// The tick the snapshot reflects; the next update carries `tick + 1`.
    pub tick: Tick,
    pub tick_hz: u32,
    /// The last input `seq` applied for this seat (0 when none).
    pub ack_seq: u32,
    /// Present with `resume` to take this seat back after a dropped connection.
    pub resume_token: String,
    /// How long the seat is kept after a dropped connection, in milliseconds.
    pub resume_grace_ms: u64,
    pub snapshot: WorldSnapshot,
}

/// A full copy of a world's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldSnapshot {
    pub width: f32,
    pub height: f32,
    pub bots: Vec<BotState>,
}

/// A bot as every client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotState {
    pub id: BotId,
    pub name: String,
    pub x: f32,
    pub y: f32,
    /// Where the bot is walking to (equal to `x`, `y` when it stands still).
    pub tx: f32,
    pub ty: f32,
    pub status: String,
    pub score: u32,
}

/// What changed in one bot since the previous tick: `id` plus the fields that changed.
/// A bot that is new to the world carries every field.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BotDelta {
    pub id: BotId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<u32>,
}

impl BotDelta {
    /// The delta that introduces a whole bot.
    pub fn full(bot: &BotState) -> Self {
        BotDelta {
            id: bot.id,
            name: Some(bot.name.clone()),
            x: Some(bot.x),
            y: Some(bot.y),
            tx: Some(bot.tx),
            ty: Some(bot.ty),
            status: Some(bot.status.clone()),
            score: Some(bot.score),
        }
    }

    /// Build the bot this delta describes, if it carries every field.
    pub fn to_state(&self) -> Option<BotState> {
        Some(BotState {
            id: self.id,
            name: self.name.clone()?,
            x: self.x?,
            y: self.y?,
            tx: self.tx?,
            ty: self.ty?,
            status: self.status.clone()?,
            score: self.score?,
        })
    }

    /// Overwrite the fields this delta carries.
    pub fn apply_to(&self, bot: &mut BotState) {
        if let Some(v) = &self.name {
            bot.name.clone_from(v);
        }
        if let Some(v) = self.x {
            bot.x = v;
        }
        if let Some(v) = self.y {
            bot.y = v;
        }
        if let Some(v) = self.tx {
            bot.tx = v;
        }
        if let Some(v) = self.ty {
            bot.ty = v;
        }
        if let Some(v) = &self.status {
            bot.status.clone_from(v);
        }
        if let Some(v) = self.score {
            bot.score = v;
        }
    }
}

/// One tick of a world: sent to every client of the world once per tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The last input `seq` of *this* client's seat that the world has applied.
    pub ack_seq: u32,
    pub tick: Tick,
    pub changed: Vec<BotDelta>,
    pub removed: Vec<BotId>,
    pub events: Vec<Event>,
}

/// A fresh snapshot, sent after `resync` or when the server resynchronises a slow client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub tick: Tick,
    pub ack_seq: u32,
    pub snapshot: WorldSnapshot,
    /// What happened in the ticks this snapshot replaces — since the last update the client was
    /// sent, up to this tick — so that no chat line or action is lost to a resync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// Events of those ticks were dropped because there were too many to keep (more than the
    /// server keeps per world); the client missed some.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub events_truncated: bool,
}

/// Something that happened in a world during a tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Joined {
        bot: BotId,
        name: String,
    },
    Left {
        bot: BotId,
    },
    Say {
        bot: BotId,
        text: String,
    },
    Act {
        bot: BotId,
        action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<BotId>,
        /// For an interaction: whether the target was in reach (both bots score).
        #[serde(default)]
        hit: bool,
    },
}

/// A refused request or a protocol violation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
}

/// Error codes sent in `error` messages (snake_case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON / MessagePack, or a field is missing or mistyped.
    Malformed,
    /// The `type` names no client message.
    UnknownType,
    /// A binary frame on the JSON subprotocol or a text frame on the MessagePack one.
    WrongFrameType,
    /// The frame is larger than the server accepts.
    FrameTooLarge,
    /// A field value is out of range.
    InvalidInput,
    ChatTooLong,
    /// More messages than the per-connection rate allows; the message was dropped.
    RateLimited,
    /// `input`, `resync` before a successful `join` or `resume`.
    NotJoined,
    AlreadyJoined,
    /// `seq` did not grow.
    BadSeq,
    /// The ticket is malformed, its key unknown or its signature wrong.
    TicketInvalid,
    TicketExpired,
    TicketReused,
    TicketWrongWorld,
    TicketWrongServer,
    /// The resume token is unknown, or its seat was freed.
    ResumeInvalid,
    WorldFull,
    /// The server holds as many worlds or connections as it may.
    ServerFull,
    /// The server is shutting down.
    Draining,
    /// The world's input queue is full; the input was dropped.
    Busy,
    /// A WebSocket protocol violation.
    ProtocolError,
    /// The world cannot be served here right now (its saved state cannot be loaded, or the
    /// server lost contact with the allocator): retry shortly, through the allocator.
    Unavailable,
    /// The server is past its tick budget and takes no new bots: ask the allocator again.
    Overloaded,
}

impl ErrorCode {
    /// The wire name, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::WrongFrameType => "wrong_frame_type",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::ChatTooLong => "chat_too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::BadSeq => "bad_seq",
            ErrorCode::TicketInvalid => "ticket_invalid",
            ErrorCode::TicketExpired => "ticket_expired",
            ErrorCode::TicketReused => "ticket_reused",
            ErrorCode::TicketWrongWorld => "ticket_wrong_world",
            ErrorCode::TicketWrongServer => "ticket_wrong_server",
            ErrorCode::ResumeInvalid => "resume_invalid",
            ErrorCode::WorldFull => "world_full",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::Draining => "draining",
            ErrorCode::Busy => "busy",
            ErrorCode::ProtocolError => "protocol_error",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Overloaded => "overloaded",
        }
    }
}

/// WebSocket close codes the server uses (besides the standard 1000, 1001, 1002, 1007, 1009, 1011).
pub mod close {
    /// Normal closure: the client left (its seat is freed at once).
    pub const NORMAL: u16 = 1000;
    /// The server is draining (shutting down or being replaced).
    pub const GOING_AWAY: u16 = 1001;
    /// The WebSocket framing was violated.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame was larger than the server accepts.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server failed.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The `join` or `resume` was refused (the `error` before it says why).
    pub const JOIN_REFUSED: u16 = 4001;
    /// Too many protocol violations.
    pub const POLICY_VIOLATION: u16 = 4002;
    /// No successful `join` or `resume` within the join timeout.
    pub const JOIN_TIMEOUT: u16 = 4003;
    /// The client did not read its updates fast enough.
    pub const SLOW_CONSUMER: u16 = 4004;
    /// Another connection resumed this seat.
    pub const REPLACED: u16 = 4005;
    /// The world moved to another server (it was placed elsewhere): ask the allocator again.
    pub const WORLD_MOVED: u16 = 4006;
    /// The server lost contact with the allocator for longer than its lease and stopped serving
    /// the world, so that it can be placed elsewhere: ask the allocator again.
    pub const LEASE_LOST: u16 = 4007;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> Input {
        match serde_json::from_str::<ClientMsg>(json).unwrap() {
            ClientMsg::Input(i) => i,
            other => panic!("not an input: {other:?}"),
        }
    }

    #[test]
    fn input_needs_exactly_one_command() {
        assert_eq!(input(r#"{"type":"input","seq":1}"#).command(), Err(InputError::NotExactlyOne));
        assert_eq!(
            input(r#"{"type":"input","seq":1,"say":"hi","move":{"to":[1,2]}}"#).command(),
            Err(InputError::NotExactlyOne)
        );
        assert_eq!(
            input(r#"{"type":"input","seq":1,"move":{"by":[1.5,-2]}}"#).command(),
            Ok(Command::Move(Move::By([1.5, -2.0])))
        );
    }

    #[test]
    fn chat_and_action_are_validated() {
        let long = "é".repeat(MAX_CHAT_CHARS + 1);
        let ok = "é".repeat(MAX_CHAT_CHARS);
        assert_eq!(Input::new(1, Command::Say(long)).command(), Err(InputError::ChatTooLong));
        assert!(Input::new(1, Command::Say(ok)).command().is_ok());
        assert_eq!(Input::new(1, Command::Say("a\u{7}b".into())).command(), Err(InputError::BadChat));
        assert_eq!(Input::new(1, Command::Say("  ".into())).command(), Err(InputError::BadChat));
        for sneaky in
            ["abc\u{202E}def", "zero\u{200B}width", "line\u{2028}sep", "para\u{2029}", "iso\u{2066}x", "\u{FEFF}bom"]
        {
            assert_eq!(Input::new(1, Command::Say(sneaky.into())).command(), Err(InputError::BadChat), "{sneaky:?}");
        }
        for fine in ["héllo wörld", "日本語", "family 👨\u{200D}👩\u{200D}👧", "❤\u{FE0F}"] {
            assert!(Input::new(1, Command::Say(fine.into())).command().is_ok(), "{fine:?}");
        }
        let act = |a: &str| Input::new(1, Command::Act(Act { action: a.into(), target: None })).command();
        assert!(act("wave_2").is_ok());
        assert_eq!(act("Wave"), Err(InputError::BadAction));
        assert_eq!(act(""), Err(InputError::BadAction));
        assert_eq!(act(&"a".repeat(MAX_ACTION_LEN + 1)), Err(InputError::BadAction));
    }

    #[test]
    fn ids_are_validated() {
        assert!(valid_id("world-1.eu:a_b"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
        assert!(!valid_id(&"a".repeat(MAX_ID_LEN + 1)));
    }

    #[test]
    fn delta_roundtrips_a_full_bot() {
        let bot =
            BotState { id: 3, name: "b".into(), x: 1.0, y: 2.0, tx: 3.0, ty: 4.0, status: "idle".into(), score: 9 };
        assert_eq!(BotDelta::full(&bot).to_state(), Some(bot.clone()));
        let partial = BotDelta { id: 3, x: Some(7.0), ..Default::default() };
        assert_eq!(partial.to_state(), None);
        let mut b = bot.clone();
        partial.apply_to(&mut b);
        assert_eq!(b.x, 7.0);
        assert_eq!(b.y, 2.0);
    }
}
