//! The API's tokens in the replicated state (`phalanx token create|revoke`): a name, a role,
//! the secret's hash, who made it and when, its expiry. A name is made once (revoke it to
//! reuse it); a revoked token is gone from every node once the revocation is applied there.

use super::{Applied, ClusterState, Outcome, RejectReason};
use crate::tokens::{hash_ok, name_ok, TokenRecord, MAX_TOKENS};

impl ClusterState {
    pub(super) fn create_token(&mut self, name: &str, token: &TokenRecord) -> Applied {
        if !name_ok(name) || !hash_ok(&token.hash) {
            return Err(Outcome::Rejected(RejectReason::BadToken));
        }
        if self.tokens.contains_key(name) {
            return Err(Outcome::Rejected(RejectReason::TokenExists { name: name.into() }));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(Outcome::Rejected(RejectReason::TooManyTokens { max: MAX_TOKENS }));
        }
        self.tokens.insert(name.to_string(), token.clone());
        Ok(Outcome::Ok)
    }

    pub(super) fn revoke_token(&mut self, name: &str) -> Applied {
        match self.tokens.remove(name) {
            Some(_) => Ok(Outcome::Ok),
            None => Err(Outcome::Rejected(RejectReason::NoToken { name: name.into() })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::bootstrapped;
    use super::super::Command;
    use super::*;
    use crate::tokens::Role;

    fn token(hash: &str) -> TokenRecord {
        TokenRecord {
            role: Role::Operate,
            hash: hash.into(),
            created_ms: 10,
            created_by: "alice@ops".into(),
            expires_ms: None,
        }
    }

    #[test]
    fn a_token_is_created_once_and_revoked() {
        let mut s = bootstrapped(&["n1"]);
        let create = |name: &str, hash: &str| Command::CreateToken {
            name: name.into(),
            token: token(hash),
        };
        let h = "ab".repeat(32);
        assert_eq!(s.apply(&create("ci", &h)), Outcome::Ok);
        assert_eq!(
            s.apply(&create("ci", &h)),
            Outcome::Rejected(RejectReason::TokenExists { name: "ci".into() })
        );
        assert_eq!(
            s.apply(&create("bad name", &h)),
            Outcome::Rejected(RejectReason::BadToken)
        );
        assert_eq!(
            s.apply(&create("ok", "not-a-hash")),
            Outcome::Rejected(RejectReason::BadToken)
        );
        assert_eq!(s.tokens.len(), 1);
        assert_eq!(s.apply(&Command::RevokeToken { name: "ci".into() }), Outcome::Ok);
        assert_eq!(
            s.apply(&Command::RevokeToken { name: "ci".into() }),
            Outcome::Rejected(RejectReason::NoToken { name: "ci".into() })
        );
        assert!(s.tokens.is_empty());
    }
}
