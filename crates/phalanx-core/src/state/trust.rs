//! What the members trust, in the replicated state, so that `phalanx ca rotate` and `phalanx
//! key rotate` change it for every node at one point of the log: the CA certificates a node
//! trusts and which of them issues node certificates, and the heartbeat keys a node accepts and
//! the one it signs with. Each rotation runs three commits (trust or accept both → issue or send
//! with the new → drop the old); the record carries no secret (certificates are public, keys
//! are named by an id derived from them). Empty (a cluster that never rotated): every node
//! trusts its `ca.crt` and uses its key file.

use super::{Applied, ClusterState, Outcome, RejectReason};
use serde::{Deserialize, Serialize};

/// At most this many CAs or keys at once (old and new, with room for a rotation redone).
pub const MAX_TRUSTED: usize = 4;

/// See the module's documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    /// The CA certificates (PEM) every member trusts; empty: each node's `ca.crt`.
    pub cas: Vec<String>,
    /// Which of `cas` issues node certificates (an index into it).
    pub issuer: usize,
    /// The ids of the heartbeat keys every member accepts (`ClusterKey::id`); empty: the key
    /// file's alone.
    pub keys: Vec<String>,
    /// Which of `keys` members sign heartbeats and node requests with (an index into it).
    pub send_key: usize,
}

impl Trust {
    /// The CA that issues node certificates now (None: each node's `ca.crt`).
    pub fn issuer_pem(&self) -> Option<&str> {
        self.cas.get(self.issuer).map(String::as_str)
    }

    /// The heartbeat key members send with (None: the key file's).
    pub fn send_key_id(&self) -> Option<&str> {
        self.keys.get(self.send_key).map(String::as_str)
    }

    /// In a few words, for the event log: how many CAs and keys, which issues and which signs.
    pub fn describe(&self) -> String {
        let cas = match self.cas.len() {
            0 => "each node's ca.crt".to_string(),
            n => format!("{n} CA(s), issuing with #{}", self.issuer + 1),
        };
        let keys = match self.send_key_id() {
            None => "each node's key file".to_string(),
            Some(id) => format!("{} key(s), sending with {id}", self.keys.len()),
        };
        format!("{cas}; {keys}")
    }

    /// Why this record cannot be the cluster's (None: it can).
    pub fn invalid(&self) -> Option<String> {
        if self.cas.len() > MAX_TRUSTED || self.keys.len() > MAX_TRUSTED {
            return Some(format!("at most {MAX_TRUSTED} CAs and {MAX_TRUSTED} keys"));
        }
        if !self.cas.is_empty() && self.issuer >= self.cas.len() {
            return Some("the issuing CA must be one of the trusted".into());
        }
        if !self.keys.is_empty() && self.send_key >= self.keys.len() {
            return Some("the sending key must be one of the accepted".into());
        }
        if self.cas.iter().any(|c| !c.contains("BEGIN CERTIFICATE")) {
            return Some("a trusted CA is not a PEM certificate".into());
        }
        if self.keys.iter().any(|k| k.is_empty() || k.len() > 64) {
            return Some("a key id must be 1 to 64 characters".into());
        }
        None
    }
}

impl ClusterState {
    pub(super) fn set_trust(&mut self, expected: &Trust, trust: &Trust) -> Applied {
        if let Some(why) = trust.invalid() {
            return Err(Outcome::Rejected(RejectReason::BadTrust { why }));
        }
        if &self.trust == trust {
            return Ok(Outcome::Unchanged);
        }
        if &self.trust != expected {
            return Err(Outcome::Rejected(RejectReason::TrustChanged));
        }
        self.trust = trust.clone();
        Ok(Outcome::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::bootstrapped;
    use super::super::Command;
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_trust_record_names_its_issuer_and_sending_key_among_its_own() {
        let mut s = bootstrapped(&["n1"]);
        let both = Trust {
            cas: vec![PEM.into(), PEM.replace("MA", "MQ")],
            issuer: 0,
            keys: vec!["a".into(), "b".into()],
            send_key: 1,
        };
        let set = |trust: &Trust| Command::SetTrust {
            expected: Trust::default(),
            trust: trust.clone(),
        };
        assert_eq!(s.apply(&set(&both)), Outcome::Ok);
        assert_eq!(s.trust.send_key_id(), Some("b"));
        assert_eq!(s.trust.issuer_pem(), Some(PEM));
        assert_eq!(s.apply(&set(&both)), Outcome::Unchanged);
        // A second operator who read the record before the first one's step.
        let other = Trust {
            send_key: 0,
            ..both.clone()
        };
        assert_eq!(s.apply(&set(&other)), Outcome::Rejected(RejectReason::TrustChanged));
        let next = Command::SetTrust {
            expected: both.clone(),
            trust: other.clone(),
        };
        assert_eq!(s.apply(&next), Outcome::Ok);
        assert_eq!(
            s.apply(&Command::SetTrust {
                expected: other.clone(),
                trust: both.clone()
            }),
            Outcome::Ok
        );
        for bad in [
            Trust {
                issuer: 2,
                ..both.clone()
            },
            Trust {
                send_key: 2,
                ..both.clone()
            },
            Trust {
                cas: vec!["nope".into()],
                ..both.clone()
            },
            Trust {
                keys: vec![String::new()],
                send_key: 0,
                ..both.clone()
            },
            Trust {
                cas: vec![PEM.into(); MAX_TRUSTED + 1],
                ..both.clone()
            },
        ] {
            assert!(
                matches!(s.apply(&set(&bad)), Outcome::Rejected(RejectReason::BadTrust { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(s.trust, both);
        assert_eq!(Trust::default().issuer_pem(), None);
        assert_eq!(Trust::default().invalid(), None);
    }
}
