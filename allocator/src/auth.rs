//! Bearer API keys: one list for callers (bots and their backends), one for gameservers.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

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

#[derive(Debug, Clone, Default)]
pub struct Keys {
    client: Vec<String>,
    server: Vec<String>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Keys {
    /// Keys for each role; with none at all, the development key serves both.
    pub fn new(client: Vec<String>, server: Vec<String>) -> Self {
        if client.is_empty() && server.is_empty() {
            return Keys { client: vec![DEVELOPMENT_KEY.into()], server: vec![DEVELOPMENT_KEY.into()] };
        }
        Keys { client, server }
    }

    pub fn is_development(&self) -> bool {
        self.client.iter().chain(&self.server).any(|k| k == DEVELOPMENT_KEY)
    }

    /// The bearer token of a request, if any.
    pub fn bearer(headers: &HeaderMap) -> Option<&str> {
        let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty() && t.len() <= 256)
    }

    /// Whether `token` holds any of `roles`.
    pub fn allows(&self, token: &str, roles: &[Role]) -> bool {
        roles.iter().any(|role| {
            let list = match role {
                Role::Client => &self.client,
                Role::Server => &self.server,
            };
            // Check every key, so timing does not tell which one nearly matched.
            list.iter().fold(false, |found, k| found | constant_time_eq(k.as_bytes(), token.as_bytes()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_separate() {
        let k = Keys::new(vec!["c1".into(), "c2".into()], vec!["s1".into()]);
        assert!(k.allows("c2", &[Role::Client]));
        assert!(!k.allows("c2", &[Role::Server]));
        assert!(k.allows("s1", &[Role::Client, Role::Server]));
        assert!(!k.allows("nope", &[Role::Client, Role::Server]));
        assert!(!k.is_development());
        assert!(Keys::new(vec![], vec![]).allows(DEVELOPMENT_KEY, &[Role::Server]));
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
