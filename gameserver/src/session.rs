//! One connection's protocol session, without I/O.
//!
//! It turns each received frame into one [`Step`] for the I/O layer: a request to carry out
//! (join, resume, input, resync, pong) or an error to send. It owns the per-connection limits,
//! which hold per *frame*, not per message: every frame — a whole message, each fragment of a
//! fragmented one, a ping or a pong — costs one token of the message rate (token bucket); input
//! sequence numbers must grow by at most [`MAX_SEQ_STEP`]; and every violation costs one of the
//! violation budget's tokens — the violation that spends the last one is answered with its error
//! and a close with `4002`.

use std::time::Duration;

use arena_sdk::codec::{DecodeError, Encoding, decode_client};
use arena_sdk::protocol::{ClientMsg, Command, ErrorCode, ErrorMsg, MAX_SEQ_STEP, close};

use arena_sdk::limit::TokenBucket;

/// Per-connection limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionLimits {
    /// Messages per second a client may send, sustained.
    pub messages_per_sec: f64,
    /// Messages a client may send in a burst.
    pub message_burst: f64,
    /// Violations tolerated in a burst before the connection is closed.
    pub violations: f64,
    /// Violations forgiven per second.
    pub violations_per_sec: f64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { messages_per_sec: 20.0, message_burst: 40.0, violations: 10.0, violations_per_sec: 0.1 }
    }
}

/// What the I/O layer must do with a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Join {
        ticket: String,
        world: Option<String>,
    },
    Resume {
        token: String,
    },
    Input {
        seq: u32,
        command: Command,
    },
    Resync,
    Pong(u64),
    /// Send this error; the connection stays open.
    Error(ErrorMsg),
    /// Send this error, then close with `code`.
    Close {
        error: ErrorMsg,
        code: u16,
    },
}

#[derive(Debug, Clone)]
pub struct Session {
    enc: Encoding,
    joined: bool,
    last_seq: u32,
    rate: TokenBucket,
    violations: TokenBucket,
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
    ErrorMsg { code, message: message.into() }
}

impl Session {
    pub fn new(enc: Encoding, limits: SessionLimits, now: Duration) -> Self {
        Session {
            enc,
            joined: false,
            last_seq: 0,
            rate: TokenBucket::new(limits.message_burst, limits.messages_per_sec, now),
            violations: TokenBucket::new(limits.violations, limits.violations_per_sec, now),
        }
    }

    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// The seat was taken; inputs must continue after `ack_seq`.
    pub fn joined(&mut self, ack_seq: u32) {
        self.joined = true;
        self.last_seq = ack_seq;
    }

    /// Report a violation: an error to send, or — for the one that spends the budget's last
    /// token — the error and a close.
    pub fn violation(&mut self, err: ErrorMsg, now: Duration) -> Step {
        if self.violations.try_take(now) && self.violations.available(now) >= 1.0 {
            Step::Error(err)
        } else {
            let err = ErrorMsg { message: format!("{} (too many violations, closing)", err.message), ..err };
            Step::Close { error: err, code: close::POLICY_VIOLATION }
        }
    }

    /// A join or resume was refused: tell the client and close.
    pub fn refuse(&mut self, err: ErrorMsg) -> Step {
        Step::Close { error: err, code: close::JOIN_REFUSED }
    }

    /// A frame that is not a whole message arrived — a ping, a pong, or one fragment of a
    /// fragmented message: it costs a token like any other frame. `None` when within the rate;
    /// otherwise the violation to report.
    pub fn on_partial_frame(&mut self, now: Duration) -> Option<Step> {
        if self.rate.try_take(now) {
            None
        } else {
            Some(self.violation(error(ErrorCode::RateLimited, "frame rate exceeded (every frame counts)"), now))
        }
    }

    /// Handle one data frame (`binary` tells its opcode).
    pub fn on_frame(&mut self, binary: bool, payload: &[u8], now: Duration) -> Step {
        if binary != self.enc.is_binary() {
            let expected = if self.enc.is_binary() { "binary" } else { "text" };
            let msg = format!("subprotocol {} carries {expected} frames", self.enc.subprotocol());
            return self.violation(error(ErrorCode::WrongFrameType, msg), now);
        }
        if !self.rate.try_take(now) {
            return self.violation(error(ErrorCode::RateLimited, "message rate exceeded; message dropped"), now);
        }
        let msg = match decode_client(self.enc, payload) {
            Ok(m) => m,
            Err(DecodeError::UnknownType(t)) => {
                return self.violation(error(ErrorCode::UnknownType, format!("unknown message type {t:?}")), now);
            }
            Err(DecodeError::Malformed(detail)) => {
                return self.violation(error(ErrorCode::Malformed, detail), now);
            }
        };
        match msg {
            ClientMsg::Join { .. } | ClientMsg::Resume { .. } if self.joined => {
                self.violation(error(ErrorCode::AlreadyJoined, "this connection already holds a seat"), now)
            }
            ClientMsg::Join { ticket, world } => Step::Join { ticket, world },
            ClientMsg::Resume { token } => Step::Resume { token },
            ClientMsg::Input(_) | ClientMsg::Resync if !self.joined => {
                self.violation(error(ErrorCode::NotJoined, "join or resume first"), now)
            }
            ClientMsg::Input(input) => {
                let command = match input.command() {
                    Ok(c) => c,
                    Err(e) => return self.violation(error(e.code(), e.to_string()), now),
                };
                if input.seq <= self.last_seq || input.seq - self.last_seq > MAX_SEQ_STEP {
                    let msg = format!(
                        "seq {} does not follow {} (it must be larger, by at most {MAX_SEQ_STEP})",
                        input.seq, self.last_seq
                    );
                    return self.violation(error(ErrorCode::BadSeq, msg), now);
                }
                self.last_seq = input.seq;
                Step::Input { seq: input.seq, command }
            }
            ClientMsg::Resync => Step::Resync,
            ClientMsg::Ping { nonce } => Step::Pong(nonce),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arena_sdk::codec::encode;
    use arena_sdk::protocol::{Input, Move};

    const T0: Duration = Duration::ZERO;

    fn session() -> Session {
        Session::new(Encoding::Json, SessionLimits::default(), T0)
    }

    fn frame(msg: &ClientMsg) -> Vec<u8> {
        encode(Encoding::Json, msg).unwrap()
    }

    fn code(step: &Step) -> Option<ErrorCode> {
        match step {
            Step::Error(e) | Step::Close { error: e, .. } => Some(e.code),
            _ => None,
        }
    }

    fn mv(seq: u32) -> Vec<u8> {
        frame(&ClientMsg::Input(Input::new(seq, Command::Move(Move::To([1.0, 2.0])))))
    }

    #[test]
    fn join_then_inputs_in_sequence() {
        let mut s = session();
        assert_eq!(code(&s.on_frame(false, &mv(1), T0)), Some(ErrorCode::NotJoined));
        let join = frame(&ClientMsg::Join { ticket: "t".into(), world: None });
        assert_eq!(s.on_frame(false, &join, T0), Step::Join { ticket: "t".into(), world: None });
        s.joined(5);
        assert_eq!(code(&s.on_frame(false, &join, T0)), Some(ErrorCode::AlreadyJoined));
        assert_eq!(code(&s.on_frame(false, &mv(5), T0)), Some(ErrorCode::BadSeq));
        assert!(matches!(s.on_frame(false, &mv(6), T0), Step::Input { seq: 6, .. }));
        assert_eq!(code(&s.on_frame(false, &mv(6), T0)), Some(ErrorCode::BadSeq));
        // A jump to the top of the range would lock the seat out of every later input: refused.
        assert_eq!(code(&s.on_frame(false, &mv(u32::MAX), T0)), Some(ErrorCode::BadSeq));
        assert!(matches!(s.on_frame(false, &mv(6 + MAX_SEQ_STEP), T0), Step::Input { .. }));
        assert!(matches!(s.on_frame(false, &mv(7 + MAX_SEQ_STEP), T0), Step::Input { .. }));
        assert_eq!(s.on_frame(false, &frame(&ClientMsg::Ping { nonce: 9 }), T0), Step::Pong(9));
    }

    #[test]
    fn bad_frames_get_typed_errors() {
        let mut s = session();
        assert_eq!(code(&s.on_frame(true, b"\x80", T0)), Some(ErrorCode::WrongFrameType));
        assert_eq!(code(&s.on_frame(false, b"{not json", T0)), Some(ErrorCode::Malformed));
        assert_eq!(code(&s.on_frame(false, br#"{"type":"fly"}"#, T0)), Some(ErrorCode::UnknownType));
        s.joined(0);
        let long = frame(&ClientMsg::Input(Input::new(1, Command::Say("x".repeat(300)))));
        assert_eq!(code(&s.on_frame(false, &long, T0)), Some(ErrorCode::ChatTooLong));
        let nan = br#"{"type":"input","seq":2,"move":{"to":[1e999,0]}}"#;
        assert!(code(&s.on_frame(false, nan, T0)).is_some());
    }

    #[test]
    fn flood_is_rate_limited_then_closed() {
        let mut s = session();
        s.joined(0);
        let mut steps = Vec::new();
        for seq in 1..=100 {
            steps.push(s.on_frame(false, &mv(seq), T0));
        }
        let accepted = steps.iter().filter(|s| matches!(s, Step::Input { .. })).count();
        assert_eq!(accepted, 40, "the burst");
        let limited = steps.iter().filter(|s| matches!(s, Step::Error(e) if e.code == ErrorCode::RateLimited)).count();
        assert_eq!(limited, 9, "nine errors, then the tenth violation closes");
        assert!(matches!(steps[49], Step::Close { code: close::POLICY_VIOLATION, .. }));
        // After a second the rate allows 20 more.
        let mut s = session();
        s.joined(0);
        for seq in 1..=40 {
            s.on_frame(false, &mv(seq), T0);
        }
        assert!(matches!(s.on_frame(false, &mv(41), Duration::from_millis(50)), Step::Input { .. }));
    }

    #[test]
    fn control_frames_and_fragments_count_against_the_rate() {
        let mut s = session();
        for _ in 0..40 {
            assert_eq!(s.on_partial_frame(T0), None);
        }
        let mut closed = false;
        for _ in 0..20 {
            if let Some(Step::Close { code, .. }) = s.on_partial_frame(T0) {
                assert_eq!(code, close::POLICY_VIOLATION);
                closed = true;
                break;
            }
        }
        assert!(closed, "a ping flood is closed like any flood");
    }

    #[test]
    fn violations_are_forgiven_over_time() {
        let mut s = session();
        for i in 0..9 {
            assert!(matches!(s.on_frame(false, b"x", Duration::from_secs(i)), Step::Error(_)));
        }
        // Nine spent; eleven seconds in, 1.1 tokens came back (2.1 left): one more violation is
        // answered with an error, the next spends the last token and closes.
        assert!(matches!(s.on_frame(false, b"x", Duration::from_secs(11)), Step::Error(_)));
        assert!(matches!(s.on_frame(false, b"x", Duration::from_secs(11)), Step::Close { .. }));
    }
}
