//! Read `ack_seq` and `tick` from the front of an `update` without decoding the rest.
//!
//! A bot receives 20 updates a second and needs two numbers from each. The gameserver writes
//! `type`, `ack_seq` and `tick` as the first three keys (see `arena_sdk::codec::encode_update`);
//! anything else — another message type, or a server that orders keys differently — makes
//! [`peek_update`] return `None`, and the caller decodes the message fully instead.

use arena_sdk::Encoding;

/// The two numbers a bot needs from an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateHead {
    pub ack_seq: u32,
    pub tick: u64,
}

pub fn peek_update(enc: Encoding, payload: &[u8]) -> Option<UpdateHead> {
    match enc {
        Encoding::MsgPack => peek_msgpack(payload),
        Encoding::Json => peek_json(payload),
    }
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.i)?;
        self.i += 1;
        Some(v)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.i..self.i + n)?;
        self.i += n;
        Some(s)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn str(&mut self) -> Option<&'a [u8]> {
        let m = self.byte()?;
        let len = match m {
            0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => usize::from(self.byte()?),
            0xda => self.be(2)? as usize,
            _ => return None,
        };
        self.take(len)
    }

    fn uint(&mut self) -> Option<u64> {
        let m = self.byte()?;
        match m {
            0x00..=0x7f => Some(u64::from(m)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }
}

fn peek_msgpack(payload: &[u8]) -> Option<UpdateHead> {
    let mut r = Reader { b: payload, i: 0 };
    let entries = match r.byte()? {
        m @ 0x80..=0x8f => usize::from(m & 0x0f),
        0xde => r.be(2)? as usize,
        _ => return None,
    };
    let (mut is_update, mut ack, mut tick) = (false, None, None);
    for _ in 0..entries.min(3) {
        match r.str()? {
            b"type" => is_update = r.str()? == b"update",
            b"ack_seq" => ack = Some(u32::try_from(r.uint()?).ok()?),
            b"tick" => tick = Some(r.uint()?),
            _ => return None,
        }
    }
    match (is_update, ack, tick) {
        (true, Some(ack_seq), Some(tick)) => Some(UpdateHead { ack_seq, tick }),
        _ => None,
    }
}

fn json_uint(b: &[u8], mut i: usize) -> Option<(u64, usize)> {
    let start = i;
    let mut v: u64 = 0;
    while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    (i > start).then_some((v, i))
}

fn peek_json(payload: &[u8]) -> Option<UpdateHead> {
    const PREFIX: &[u8] = br#"{"type":"update","ack_seq":"#;
    const TICK: &[u8] = br#","tick":"#;
    let rest = payload.strip_prefix(PREFIX)?;
    let (ack, mut i) = json_uint(rest, 0)?;
    while rest.get(i) == Some(&b' ') {
        i += 1;
    }
    let after = rest.get(i..)?.strip_prefix(TICK)?;
    let (tick, _) = json_uint(after, 0)?;
    Some(UpdateHead { ack_seq: u32::try_from(ack).ok()?, tick })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arena_sdk::codec::{ack_bytes, encode, encode_update};
    use arena_sdk::protocol::{BotDelta, Event, ServerMsg};

    fn spliced(enc: Encoding, tick: u64, ack: u32) -> Vec<u8> {
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        let changed = vec![BotDelta { id: 1, x: Some(2.0), ..Default::default() }];
        let events = vec![Event::Say { bot: 1, text: "hi".into() }];
        encode_update(enc, tick, &changed, &[3], &events, &mut head, &mut tail).unwrap();
        let mut buf = [0u8; 10];
        head.extend_from_slice(ack_bytes(enc, ack, &mut buf));
        head.extend_from_slice(&tail);
        head
    }

    #[test]
    fn reads_what_the_server_writes() {
        for enc in Encoding::ALL {
            for (tick, ack) in [(0u64, 0u32), (1, 1), (127, 128), (70_000, 65_536), (u64::MAX, u32::MAX)] {
                assert_eq!(peek_update(enc, &spliced(enc, tick, ack)), Some(UpdateHead { ack_seq: ack, tick }));
            }
        }
    }

    #[test]
    fn other_messages_and_junk_fall_back() {
        for enc in Encoding::ALL {
            let pong = encode(enc, &ServerMsg::Pong { nonce: 1 }).unwrap();
            assert_eq!(peek_update(enc, &pong), None);
            let full = spliced(enc, 5, 6);
            for cut in 0..full.len().min(40) {
                let _ = peek_update(enc, &full[..cut]);
            }
            assert_eq!(peek_update(enc, b""), None);
            assert_eq!(peek_update(enc, b"\xde\xff\xff"), None);
        }
    }
}
