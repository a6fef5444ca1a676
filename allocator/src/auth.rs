//! Bearer API keys: one list for callers (bots and their backends), one for gameservers.
//!
//! A server key is bound to the server ids it may report for: `ARENA_SERVER_KEYS` entries are
//! `<server id pattern>=<key>`, the pattern an exact id, a prefix ending in `*` (`gs-eu-*`), or
//! `*` for any. A heartbeat whose `server_id` its key does not cover is refused with `403`, so a
//! leaked key for one fleet cannot rewrite another server's endpoint or report it gone.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

/// The development key, accepted for both roles when no keys are configured (loopback only).
pub const DEVELOPMENT_KEY: &str = "arena-dev-key";

/// Who a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Allocates seats and reads the fleet's state.
    Client,
    /// Reports heartbeats.
    Server,
}

/// A server key and the ids it may report for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerKey {
    pattern: String,
    key: String,
}

impl ServerKey {
    fn covers(&self, server_id: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => server_id.starts_with(prefix),
            None => self.pattern == server_id,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Keys {
    client: Vec<String>,
    server: Vec<ServerKey>,
}

/// A key list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "server key {0:?} is not bound to server ids: write ARENA_SERVER_KEYS entries as <server id pattern>=<key> (e.g. gs-eu-*=secret, or *=secret for any)"
    )]
    Unbound(String),
    #[error("server key entry {0:?} has an empty pattern or key")]
    Empty(String),
}

fn eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Keys {
    /// Caller keys, and server keys written `<pattern>=<key>`; with none at all, the development
    /// key serves both roles, for any server id.
    pub fn new(client: Vec<String>, server: Vec<String>) -> Result<Self, KeyError> {
        if client.is_empty() && server.is_empty() {
            return Ok(Self::development());
        }
        let server = server
            .into_iter()
            .map(|entry| {
                let (pattern, key) = entry
                    .split_once('=')
                    .ok_or_else(|| KeyError::Unbound(entry.chars().take(4).chain("…".chars()).collect()))?;
                if pattern.is_empty() || key.is_empty() {
                    return Err(KeyError::Empty(pattern.to_owned()));
                }
                Ok(ServerKey { pattern: pattern.to_owned(), key: key.to_owned() })
            })
            .collect::<Result<_, _>>()?;
        Ok(Keys { client, server })
    }

    /// The development key for both roles and every server id.
    pub fn development() -> Self {
        Keys {
            client: vec![DEVELOPMENT_KEY.into()],
            server: vec![ServerKey { pattern: "*".into(), key: DEVELOPMENT_KEY.into() }],
        }
    }

    pub fn is_development(&self) -> bool {
        self.client.iter().chain(self.server.iter().map(|s| &s.key)).any(|k| k == DEVELOPMENT_KEY)
    }

    /// The bearer token of a request, if any.
    pub fn bearer(headers: &HeaderMap) -> Option<&str> {
        let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty() && t.len() <= 256)
    }

    /// Whether `token` holds any of `roles`. Every key is compared, so timing does not tell
    /// which one nearly matched.
    pub fn allows(&self, token: &str, roles: &[Role]) -> bool {
        roles.iter().any(|role| match role {
            Role::Client => self.client.iter().fold(false, |found, k| found | eq(k, token)),
            Role::Server => self.server.iter().fold(false, |found, k| found | eq(&k.key, token)),
        })
    }

    /// Whether `token`, a server key, may report for `server_id`.
    pub fn may_report(&self, token: &str, server_id: &str) -> bool {
        self.server.iter().fold(false, |found, k| found | (eq(&k.key, token) && k.covers(server_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_separate_and_server_keys_bound() {
        let k = Keys::new(vec!["c1".into(), "c2".into()], vec!["gs-eu-*=s1".into(), "gs-us-1=s2".into()]).unwrap();
        assert!(k.allows("c2", &[Role::Client]));
        assert!(!k.allows("c2", &[Role::Server]));
        assert!(k.allows("s1", &[Role::Client, Role::Server]));
        assert!(!k.allows("nope", &[Role::Client, Role::Server]));
        assert!(!k.is_development());
        assert!(k.may_report("s1", "gs-eu-7"));
        assert!(!k.may_report("s1", "gs-us-1"), "bound to its pattern");
        assert!(k.may_report("s2", "gs-us-1") && !k.may_report("s2", "gs-us-10"), "an exact id is exact");
        assert!(!k.may_report("c1", "gs-eu-7"), "a caller key reports nothing");
        let dev = Keys::new(vec![], vec![]).unwrap();
        assert!(dev.allows(DEVELOPMENT_KEY, &[Role::Server]) && dev.may_report(DEVELOPMENT_KEY, "anything"));
        assert!(matches!(Keys::new(vec![], vec!["bare-key".into()]), Err(KeyError::Unbound(_))));
        assert!(matches!(Keys::new(vec![], vec!["=k".into()]), Err(KeyError::Empty(_))));
        let any = Keys::new(vec![], vec!["*=k".into()]).unwrap();
        assert!(any.may_report("k", "gs-whatever"));
    }

    #[test]
    fn bearer_tokens_are_parsed() {
        let mut h = HeaderMap::new();
        assert_eq!(Keys::bearer(&h), None);
        h.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(Keys::bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(Keys::bearer(&h), None);
        h.insert(AUTHORIZATION, "bearer ".parse().unwrap());
        assert_eq!(Keys::bearer(&h), None);
    }
}
