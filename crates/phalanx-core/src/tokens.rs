//! API tokens for people and scripts (issue 17): each has a name, a role (`read` < `operate` <
//! `admin`) and an optional expiry, and is kept in the replicated state as the SHA-256 of its
//! secret only (the CLI that made the secret shows it once). This module says which role each
//! API route needs ([`required`]) and who a presented token is ([`authorize`]). Pure: the
//! secret's hash and the time are passed in.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a token may do; each role may do what the roles below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Status, events, metrics, availability, drills and balancers as they are.
    Read,
    /// Also standby, move, ban, clear, cleanup, maintenance, drains, weights, drills.
    Operate,
    /// Also config applies, adding and removing nodes, tokens, the full state.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Read, Role::Operate, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One token as the state keeps it (by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub role: Role,
    /// SHA-256 of the secret, lowercase hex.
    pub hash: String,
    /// When it was made (unix ms, the node that took the request) and by whom.
    pub created_ms: u64,
    pub created_by: String,
    /// None: it never expires.
    pub expires_ms: Option<u64>,
}

impl TokenRecord {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}

/// The most tokens a cluster keeps, and the longest name.
pub const MAX_TOKENS: usize = 1000;
pub const MAX_NAME: usize = 64;

/// A token name: 1 to [`MAX_NAME`] of letters, digits, `.`, `_`, `-`, `@`.
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// A SHA-256 in lowercase hex.
pub fn hash_ok(hash: &str) -> bool {
    hash.len() == 64 && hash.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Why a presented token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("unknown or revoked token")]
    Unknown,
    #[error("token {name} expired at unix ms {at_ms}")]
    Expired { name: String, at_ms: u64 },
    #[error(
        "the cluster key's token is disabled since an admin token exists: use a token (PHALANX_TOKEN, or `phalanx token create … --save` by an admin)"
    )]
    KeyTokenDisabled,
    #[error("{what} needs the {needed} role; {who} has {has}")]
    Forbidden {
        what: String,
        needed: Role,
        who: String,
        has: Role,
    },
}

/// Whether a live admin token exists: then the cluster key's token no longer opens the
/// operator API (it was there to make the first one).
pub fn key_token_disabled(tokens: &BTreeMap<String, TokenRecord>, now_ms: u64) -> bool {
    tokens.values().any(|t| t.role == Role::Admin && !t.expired(now_ms))
}

/// Who the token whose secret hashes to `hash` is: its name and role.
pub fn authorize<'a>(
    tokens: &'a BTreeMap<String, TokenRecord>,
    hash: &str,
    now_ms: u64,
) -> Result<(&'a str, Role), Denied> {
    let (name, t) = tokens.iter().find(|(_, t)| t.hash == hash).ok_or(Denied::Unknown)?;
    match t.expires_ms {
        Some(at_ms) if now_ms >= at_ms => Err(Denied::Expired {
            name: name.clone(),
            at_ms,
        }),
        _ => Ok((name.as_str(), t.role)),
    }
}

/// The role an operator-API request needs: admin for config applies, adding and removing
/// nodes, tokens, trust (CAs and keys) and the full state; read for every other look; operate for every other
/// change.
pub fn required(method: &str, path: &str) -> Role {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let admin = match (method, segments.as_slice()) {
        (_, ["", "v1", "tokens" | "trust", ..]) | (_, ["", "v1", "state"]) => true,
        ("GET" | "HEAD", _) => false,
        (_, ["", "v1", "config"]) | ("POST", ["", "v1", "nodes"]) | ("DELETE", ["", "v1", "nodes", _]) => true,
        _ => false,
    };
    if admin {
        Role::Admin
    } else if matches!(method, "GET" | "HEAD") {
        Role::Read
    } else {
        Role::Operate
    }
}

/// Check that `has` may do `method path`.
pub fn allow(method: &str, path: &str, who: &str, has: Role) -> Result<(), Denied> {
    let needed = required(method, path);
    if has >= needed {
        Ok(())
    } else {
        Err(Denied::Forbidden {
            what: format!("{method} {path}"),
            needed,
            who: who.to_string(),
            has,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(role: Role, hash: &str, expires_ms: Option<u64>) -> TokenRecord {
        TokenRecord {
            role,
            hash: hash.into(),
            created_ms: 0,
            created_by: "alice@ops".into(),
            expires_ms,
        }
    }

    #[test]
    fn routes_need_the_roles_the_readme_lists() {
        for (m, p, want) in [
            ("GET", "/v1/status", Role::Read),
            ("GET", "/v1/events", Role::Read),
            ("GET", "/metrics", Role::Read),
            ("GET", "/v1/config", Role::Read),
            ("GET", "/v1/nodes", Role::Read),
            ("POST", "/v1/nodes/n1/standby", Role::Operate),
            ("POST", "/v1/resources/web/move", Role::Operate),
            ("POST", "/v1/balancers/lb/backends/b1", Role::Operate),
            ("POST", "/v1/drills/7", Role::Operate),
            ("POST", "/v1/maintenance", Role::Operate),
            ("DELETE", "/v1/nodes/n1/attrs/rack", Role::Operate),
            ("POST", "/v1/config", Role::Admin),
            ("POST", "/v1/nodes", Role::Admin),
            ("DELETE", "/v1/nodes/n3", Role::Admin),
            ("DELETE", "/v1/nodes/n3/", Role::Admin),
            ("GET", "/v1/tokens", Role::Admin),
            ("POST", "/v1/tokens", Role::Admin),
            ("DELETE", "/v1/tokens/ci", Role::Admin),
            ("GET", "/v1/state", Role::Admin),
            ("GET", "/v1/trust", Role::Admin),
            ("POST", "/v1/trust", Role::Admin),
            ("PUT", "/v1/trust/ca-next", Role::Admin),
        ] {
            assert_eq!(required(m, p), want, "{m} {p}");
        }
        assert!(allow("POST", "/v1/config", "ci", Role::Admin).is_ok());
        let e = allow("POST", "/v1/config", "token ro", Role::Read).unwrap_err();
        assert_eq!(e.to_string(), "POST /v1/config needs the admin role; token ro has read");
    }

    #[test]
    fn a_token_is_known_by_its_hash_until_it_expires() {
        let h1 = "a".repeat(64);
        let h2 = "b".repeat(64);
        let tokens = BTreeMap::from([
            ("ro".to_string(), rec(Role::Read, &h1, None)),
            ("ops".to_string(), rec(Role::Operate, &h2, Some(1_000))),
        ]);
        assert_eq!(authorize(&tokens, &h1, 5_000), Ok(("ro", Role::Read)));
        assert_eq!(authorize(&tokens, &h2, 999), Ok(("ops", Role::Operate)));
        assert_eq!(
            authorize(&tokens, &h2, 1_000),
            Err(Denied::Expired {
                name: "ops".into(),
                at_ms: 1_000
            })
        );
        assert_eq!(authorize(&tokens, &"c".repeat(64), 0), Err(Denied::Unknown));
        // The key's token opens the API until a live admin token exists.
        assert!(!key_token_disabled(&tokens, 0));
        let mut with_admin = tokens.clone();
        with_admin.insert("root".into(), rec(Role::Admin, &"d".repeat(64), Some(2_000)));
        assert!(key_token_disabled(&with_admin, 1_999));
        assert!(
            !key_token_disabled(&with_admin, 2_000),
            "an expired admin token opens nothing"
        );
    }

    #[test]
    fn names_and_hashes_are_checked() {
        assert!(name_ok("ci-deploy_2@ops.example"));
        assert!(!name_ok(""));
        assert!(!name_ok("has space"));
        assert!(!name_ok(&"x".repeat(65)));
        assert!(hash_ok(&"0123456789abcdef".repeat(4)));
        assert!(!hash_ok(&"0123456789ABCDEF".repeat(4)));
        assert!(!hash_ok("abc"));
        assert_eq!(Role::parse("operate"), Some(Role::Operate));
        assert_eq!(Role::parse("root"), None);
        assert!(Role::Admin > Role::Operate && Role::Operate > Role::Read);
    }
}
