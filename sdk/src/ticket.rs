//! Signed join tickets: minted by the allocator (or `arena-gameserver ticket`), checked by the
//! gameserver before it seats a bot.
//!
//! Format: `v1.<key id>.<payload>.<signature>`, where `payload` is base64url (no padding) of a
//! compact JSON object `{"w": world, "b": bot, "s": server?, "g": fence?, "exp": unix seconds,
//! "n": nonce}` and
//! `signature` is base64url of HMAC-SHA256 over `v1.<key id>.<payload>` with the key's secret.
//! The key id lets a verifier hold the current and the previous key while keys rotate. The nonce
//! makes each ticket distinct, so a server can refuse a second use.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::protocol::{MAX_TOKEN_LEN, valid_id};

type HmacSha256 = Hmac<Sha256>;

/// Longest lifetime a ticket may have, in seconds. Bounds how long a server remembers used ones.
pub const MAX_TICKET_TTL_SECS: u64 = 3600;
/// Shortest secret a key may have, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// The development key used when `ARENA_TICKET_KEY` is not set. Never for production.
pub const DEVELOPMENT_KEY: &str = "dev:arena-development-ticket-key-do-not-use-in-production";

/// A named HMAC-SHA256 key.
#[derive(Clone)]
pub struct TicketKey {
    id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A key specification that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a ticket key is written `<key id>:<secret>`")]
    NoSeparator,
    #[error("the key id must be 1 to 32 characters of A-Z, a-z, 0-9, _ and -")]
    BadId,
    #[error("the secret must be at least {MIN_SECRET_LEN} bytes")]
    ShortSecret,
}

impl TicketKey {
    pub fn new(id: &str, secret: &[u8]) -> Result<Self, KeyError> {
        let id_ok =
            !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(KeyError::BadId);
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::ShortSecret);
        }
        Ok(TicketKey { id: id.to_owned(), secret: secret.to_vec() })
    }

    /// Parse `<key id>:<secret>` (the form of `ARENA_TICKET_KEY`).
    pub fn parse(spec: &str) -> Result<Self, KeyError> {
        let (id, secret) = spec.trim().split_once(':').ok_or(KeyError::NoSeparator)?;
        TicketKey::new(id, secret.as_bytes())
    }

    /// The fixed development key.
    pub fn development() -> Self {
        TicketKey::parse(DEVELOPMENT_KEY).unwrap_or_else(|_| unreachable!("the development key is valid"))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this is the publicly known development key.
    pub fn is_development(&self) -> bool {
        let dev = TicketKey::parse(DEVELOPMENT_KEY).unwrap_or_else(|_| unreachable!("the development key is valid"));
        self.id == dev.id && self.secret == dev.secret
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }
}

/// What a ticket grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// The world the bot may join.
    #[serde(rename = "w")]
    pub world: String,
    /// The bot's identity (its name in the world).
    #[serde(rename = "b")]
    pub bot: String,
    /// The server the ticket is for; any server when absent.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The world's placement generation (fencing token) when the allocator placed it.
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// A random value that makes the ticket single-use.
    #[serde(rename = "n")]
    pub nonce: String,
}

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("ticket is malformed")]
    Malformed,
    #[error("ticket is signed with an unknown key")]
    UnknownKey,
    #[error("ticket signature does not match")]
    BadSignature,
    #[error("ticket has expired")]
    Expired,
    #[error("ticket lives longer than {MAX_TICKET_TTL_SECS} s")]
    TooLong,
    #[error("world or bot id is invalid")]
    BadClaims,
}

/// Sign `claims` with `key`.
pub fn sign(key: &TicketKey, claims: &TicketClaims) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_else(|_| unreachable!("claims are plain JSON"));
    sign_payload(key, &payload)
}

/// Sign any bytes as a ticket's payload (what [`sign`] does with the claims' JSON): for tests
/// and fuzzing of the claims parser behind a valid signature.
pub fn sign_payload(key: &TicketKey, payload: &[u8]) -> String {
    let mut ticket = format!("v1.{}.{}", key.id, B64.encode(payload));
    let mut mac = key.mac();
    mac.update(ticket.as_bytes());
    let sig = mac.finalize().into_bytes();
    ticket.push('.');
    ticket.push_str(&B64.encode(sig));
    ticket
}

/// A fresh random nonce (16 bytes, base64url).
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    // The OS random source failing is not recoverable for a security token.
    getrandom::fill(&mut bytes).unwrap_or_else(|e| panic!("OS random source failed: {e}"));
    B64.encode(bytes)
}

/// What a ticket grants, before it is minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant<'a> {
    pub world: &'a str,
    pub bot: &'a str,
    pub server: Option<&'a str>,
    pub fence: Option<u64>,
}

impl<'a> Grant<'a> {
    /// A ticket for `bot` in `world`, on any server.
    pub fn new(world: &'a str, bot: &'a str) -> Self {
        Grant { world, bot, server: None, fence: None }
    }
}

/// Mint a ticket for `grant`, valid for `ttl_secs` from `now_unix`, with a fresh nonce.
pub fn mint(
    key: &TicketKey,
    grant: &Grant<'_>,
    ttl_secs: u64,
    now_unix: u64,
) -> Result<(String, TicketClaims), TicketError> {
    mint_with_nonce(key, grant, ttl_secs, now_unix, new_nonce())
}

/// [`mint`] with a given nonce (the allocator uses its reservation id).
pub fn mint_with_nonce(
    key: &TicketKey,
    grant: &Grant<'_>,
    ttl_secs: u64,
    now_unix: u64,
    nonce: String,
) -> Result<(String, TicketClaims), TicketError> {
    if !valid_id(grant.world) || !valid_id(grant.bot) || grant.server.is_some_and(|s| !valid_id(s)) {
        return Err(TicketError::BadClaims);
    }
    if nonce.is_empty() || nonce.len() > 64 {
        return Err(TicketError::BadClaims);
    }
    if ttl_secs == 0 || ttl_secs > MAX_TICKET_TTL_SECS {
        return Err(TicketError::TooLong);
    }
    let claims = TicketClaims {
        world: grant.world.to_owned(),
        bot: grant.bot.to_owned(),
        server: grant.server.map(str::to_owned),
        fence: grant.fence,
        exp: now_unix + ttl_secs,
        nonce,
    };
    Ok((sign(key, &claims), claims))
}

/// Checks tickets against a set of keys (the current one and, while rotating, the previous one).
#[derive(Debug, Clone)]
pub struct TicketVerifier {
    keys: Vec<TicketKey>,
}

impl TicketVerifier {
    pub fn new(keys: Vec<TicketKey>) -> Self {
        TicketVerifier { keys }
    }

    pub fn keys(&self) -> &[TicketKey] {
        &self.keys
    }

    /// Check signature, expiry and claims. Single use is the caller's to enforce (by nonce).
    pub fn verify(&self, ticket: &str, now_unix: u64) -> Result<TicketClaims, TicketError> {
        if ticket.len() > MAX_TOKEN_LEN {
            return Err(TicketError::Malformed);
        }
        let mut parts = ticket.split('.');
        let (Some("v1"), Some(kid), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TicketError::Malformed);
        };
        let key = self.keys.iter().find(|k| k.id == kid).ok_or(TicketError::UnknownKey)?;
        let sig = B64.decode(sig).map_err(|_| TicketError::Malformed)?;
        let signed_len = ticket.len() - sig_len_b64(ticket) - 1;
        let mut mac = key.mac();
        mac.update(&ticket.as_bytes()[..signed_len]);
        mac.verify_slice(&sig).map_err(|_| TicketError::BadSignature)?;
        let payload = B64.decode(payload).map_err(|_| TicketError::Malformed)?;
        let claims: TicketClaims = serde_json::from_slice(&payload).map_err(|_| TicketError::Malformed)?;
        if !valid_id(&claims.world)
            || !valid_id(&claims.bot)
            || claims.server.as_deref().is_some_and(|s| !valid_id(s))
            || claims.nonce.is_empty()
            || claims.nonce.len() > 64
        {
            return Err(TicketError::BadClaims);
        }
        if claims.exp <= now_unix {
            return Err(TicketError::Expired);
        }
        if claims.exp > now_unix + MAX_TICKET_TTL_SECS {
            return Err(TicketError::TooLong);
        }
        Ok(claims)
    }
}

fn sig_len_b64(ticket: &str) -> usize {
    ticket.rsplit('.').next().map_or(0, str::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> TicketKey {
        TicketKey::new(id, &[7u8; 32]).unwrap()
    }

    #[test]
    fn minted_ticket_verifies() {
        let k = key("k1");
        let grant = Grant { server: Some("gs-1"), fence: Some(7), ..Grant::new("world-1", "bot-1") };
        let (t, claims) = mint(&k, &grant, 60, 1000).unwrap();
        assert_eq!(claims.fence, Some(7));
        let v = TicketVerifier::new(vec![k]);
        assert_eq!(v.verify(&t, 1000).unwrap(), claims);
        assert_eq!(claims.exp, 1060);
        assert_eq!(v.verify(&t, 1060), Err(TicketError::Expired));
    }

    #[test]
    fn forged_and_foreign_tickets_are_refused() {
        let k = key("k1");
        let (t, _) = mint(&k, &Grant::new("w", "b"), 60, 0).unwrap();
        let v = TicketVerifier::new(vec![k.clone()]);
        // Another secret under the same key id.
        let other = TicketKey::new("k1", &[8u8; 32]).unwrap();
        let (forged, _) = mint(&other, &Grant::new("w", "b"), 60, 0).unwrap();
        assert_eq!(v.verify(&forged, 0), Err(TicketError::BadSignature));
        // A changed payload with the old signature.
        let parts: Vec<&str> = t.split('.').collect();
        let claims = TicketClaims {
            world: "other".into(),
            bot: "b".into(),
            server: None,
            fence: None,
            exp: 60,
            nonce: "n".into(),
        };
        let tampered = format!("v1.k1.{}.{}", B64.encode(serde_json::to_vec(&claims).unwrap()), parts[3]);
        assert_eq!(v.verify(&tampered, 0), Err(TicketError::BadSignature));
        let (unknown, _) = mint(&key("k9"), &Grant::new("w", "b"), 60, 0).unwrap();
        assert_eq!(v.verify(&unknown, 0), Err(TicketError::UnknownKey));
        for junk in ["", "v1", "v1.k1.a.b.c", "v2.k1.a.b", "v1.k1.!!.??", &"v1.k1.".repeat(500)] {
            assert!(v.verify(junk, 0).is_err(), "{junk}");
        }
    }

    #[test]
    fn rotation_accepts_previous_key() {
        let old = key("old");
        let new = TicketKey::new("new", &[9u8; 40]).unwrap();
        let (t_old, _) = mint(&old, &Grant::new("w", "b"), 60, 0).unwrap();
        let (t_new, _) = mint(&new, &Grant::new("w", "b"), 60, 0).unwrap();
        let v = TicketVerifier::new(vec![new, old]);
        assert!(v.verify(&t_old, 1).is_ok());
        assert!(v.verify(&t_new, 1).is_ok());
    }

    #[test]
    fn claims_and_ttl_are_bounded() {
        let k = key("k");
        assert_eq!(mint(&k, &Grant::new("bad world", "b"), 60, 0).unwrap_err(), TicketError::BadClaims);
        assert_eq!(mint(&k, &Grant::new("w", "b"), MAX_TICKET_TTL_SECS + 1, 0).unwrap_err(), TicketError::TooLong);
        let claims = TicketClaims {
            world: "w".into(),
            bot: "b".into(),
            server: None,
            fence: None,
            exp: 10_000,
            nonce: "n".into(),
        };
        let t = sign(&k, &claims);
        assert_eq!(TicketVerifier::new(vec![k]).verify(&t, 0), Err(TicketError::TooLong));
    }

    #[test]
    fn key_specs_are_checked() {
        assert_eq!(TicketKey::parse("nokey").unwrap_err(), KeyError::NoSeparator);
        assert_eq!(TicketKey::parse("k:short").unwrap_err(), KeyError::ShortSecret);
        assert_eq!(TicketKey::parse("bad id:0123456789abcdef0123456789abcdef").unwrap_err(), KeyError::BadId);
        assert!(TicketKey::development().is_development());
        assert!(!key("dev").is_development());
    }
}
