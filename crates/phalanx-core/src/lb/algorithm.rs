//! Balancing algorithms as a config names them: `roundrobin`, `weighted`, `leastconn`, `p2c`
//! (the default), and the hashes `source`, `uri`, `header:NAME`, `cookie:NAME`, each modulo or
//! (with the `consistent` flag) rendezvous. Parsing refuses anything else with an error that
//! lists what is accepted.

use std::fmt;

/// What a hashing balancer hashes. The caller extracts the bytes (the client address, the
/// request path, a header's or a cookie's value) and passes them to `pick`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashKey {
    /// The client's address (its octets, IPv4-mapped IPv6 normalised to IPv4).
    Source,
    /// The request URI (path and query as received).
    Uri,
    /// A request header's value; the name is stored lowercase (header names ignore case).
    Header(String),
    /// A cookie's value; the name is case-sensitive.
    Cookie(String),
}

/// A hashing balancer: what it hashes, and whether placement is consistent (bounded movement
/// when a backend leaves) or modulo (even spread, but most keys move on any change).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashSpec {
    pub key: HashKey,
    pub consistent: bool,
}

/// A balancing algorithm.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    /// Each eligible backend in turn, weights ignored (except 0: never picked).
    RoundRobin,
    /// Smooth weighted round robin (nginx): picks in proportion to weight, interleaved.
    Weighted,
    /// Fewest in-flight requests relative to weight; ties in round-robin order.
    LeastConn,
    /// Power of two random choices (weighted draws) on in-flight requests.
    #[default]
    P2c,
    /// Hash a request key onto a backend.
    Hash(HashSpec),
}

/// Why an algorithm name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AlgorithmError {
    #[error(
        "unknown balancing algorithm {name:?}: expected roundrobin, weighted, leastconn, p2c, source, uri, header:NAME or cookie:NAME"
    )]
    Unknown { name: String },
    #[error("{kind}: needs a name after the colon, e.g. \"{kind}:{example}\"")]
    MissingName { kind: &'static str, example: &'static str },
    #[error("{kind}:{name:?}: a {kind} name is a token (letters, digits and !#$%&'*+-.^_`|~)")]
    BadName { kind: &'static str, name: String },
    #[error("consistent hashing applies to source, uri, header:NAME and cookie:NAME, not to {algorithm}")]
    ConsistentNotHash { algorithm: String },
}

/// RFC 9110 `tchar`: what a header or cookie name may contain.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn token(kind: &'static str, example: &'static str, name: &str) -> Result<(), AlgorithmError> {
    if name.is_empty() {
        return Err(AlgorithmError::MissingName { kind, example });
    }
    if !name.bytes().all(is_tchar) {
        return Err(AlgorithmError::BadName {
            kind,
            name: name.to_string(),
        });
    }
    Ok(())
}

impl Algorithm {
    /// Parse a config's `balance` value and its `consistent` flag.
    pub fn parse(name: &str, consistent: bool) -> Result<Self, AlgorithmError> {
        let hash = |key| Ok(Algorithm::Hash(HashSpec { key, consistent }));
        let plain = match name {
            "roundrobin" => Algorithm::RoundRobin,
            "weighted" => Algorithm::Weighted,
            "leastconn" => Algorithm::LeastConn,
            "p2c" => Algorithm::P2c,
            "source" => return hash(HashKey::Source),
            "uri" => return hash(HashKey::Uri),
            _ => {
                if let Some(h) = name.strip_prefix("header:") {
                    token("header", "X-User", h)?;
                    return hash(HashKey::Header(h.to_ascii_lowercase()));
                }
                if let Some(c) = name.strip_prefix("cookie:") {
                    token("cookie", "SESSION", c)?;
                    return hash(HashKey::Cookie(c.to_string()));
                }
                return Err(AlgorithmError::Unknown { name: name.to_string() });
            }
        };
        if consistent {
            return Err(AlgorithmError::ConsistentNotHash {
                algorithm: name.to_string(),
            });
        }
        Ok(plain)
    }

    /// The hash spec, if this is a hashing algorithm.
    pub fn hash(&self) -> Option<&HashSpec> {
        match self {
            Algorithm::Hash(spec) => Some(spec),
            _ => None,
        }
    }
}

/// The name as a config writes it (without the `consistent` flag).
impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Algorithm::RoundRobin => f.write_str("roundrobin"),
            Algorithm::Weighted => f.write_str("weighted"),
            Algorithm::LeastConn => f.write_str("leastconn"),
            Algorithm::P2c => f.write_str("p2c"),
            Algorithm::Hash(spec) => match &spec.key {
                HashKey::Source => f.write_str("source"),
                HashKey::Uri => f.write_str("uri"),
                HashKey::Header(h) => write!(f, "header:{h}"),
                HashKey::Cookie(c) => write!(f, "cookie:{c}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_name_and_round_trips() {
        for name in [
            "roundrobin",
            "weighted",
            "leastconn",
            "p2c",
            "source",
            "uri",
            "header:x-user",
            "cookie:SESSION",
        ] {
            let a = Algorithm::parse(name, false).unwrap();
            assert_eq!(a.to_string(), name);
        }
        assert_eq!(Algorithm::default(), Algorithm::P2c);
    }

    #[test]
    fn header_names_ignore_case_cookie_names_do_not() {
        let h = Algorithm::parse("header:X-User", true).unwrap();
        assert_eq!(
            h,
            Algorithm::Hash(HashSpec {
                key: HashKey::Header("x-user".into()),
                consistent: true
            })
        );
        let c = Algorithm::parse("cookie:SESSION", false).unwrap();
        assert_eq!(c.hash().unwrap().key, HashKey::Cookie("SESSION".into()));
        assert!(!c.hash().unwrap().consistent);
    }

    #[test]
    fn refuses_bad_names_clearly() {
        let err = |n: &str, c| Algorithm::parse(n, c).unwrap_err();
        assert_eq!(err("random", false), AlgorithmError::Unknown { name: "random".into() });
        assert_eq!(
            err("RoundRobin", false),
            AlgorithmError::Unknown {
                name: "RoundRobin".into()
            }
        );
        assert_eq!(err("", false), AlgorithmError::Unknown { name: "".into() });
        assert_eq!(
            err("header:", false),
            AlgorithmError::MissingName {
                kind: "header",
                example: "X-User"
            }
        );
        assert_eq!(
            err("cookie:a b", false),
            AlgorithmError::BadName {
                kind: "cookie",
                name: "a b".into()
            }
        );
        assert_eq!(
            err("header:X:Y", false),
            AlgorithmError::BadName {
                kind: "header",
                name: "X:Y".into()
            }
        );
        assert_eq!(
            err("leastconn", true),
            AlgorithmError::ConsistentNotHash {
                algorithm: "leastconn".into()
            }
        );
        let msg = err("random", false).to_string();
        assert!(msg.contains("header:NAME") && msg.contains("\"random\""), "{msg}");
    }
}
