//! The inserted stickiness cookie of HTTP mode, self-contained so that it needs no shared
//! table: its value names the backend (its [`BackendId`], the stable hash of its name, the same
//! on every node) and carries the first-seen and last-seen times (unix seconds), like HAProxy's
//! `cookie insert` with `maxidle`/`maxlife` date fields. Whichever node runs the balancer (after
//! a failover too) reads the backend and the expiry from the cookie alone.
//!
//! The value is `BACKEND.FIRST.LAST`: the id in 16 lower-case hex digits and the two times in
//! lower-case hex, e.g. `9f1c2d3e4a5b6c7d.674c5e10.674c6a2b`. Anything else is garbage and is
//! ignored (the client is picked for again and re-stuck); a client that edits its cookie can
//! only choose another backend of the same balancer, as with HAProxy's server cookies.
//! Pure: `now` is passed in.

use super::backend::{position, Backend, BackendId};
use serde::{Deserialize, Serialize};

/// How far in the future a cookie's times may be (clock skew between the nodes that may run
/// the balancer), in seconds; later ones are refused as forged or garbled.
pub const MAX_SKEW_S: u64 = 300;
/// The longest cookie value looked at (bytes).
pub const MAX_VALUE_LEN: usize = 64;

/// The cookie's settings (from `sticky = { … }`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CookieConfig {
    /// The cookie's name (an RFC 6265 token).
    pub name: String,
    /// Expire this long after the last request that carried it; None: never.
    pub max_idle_s: Option<u64>,
    /// Expire this long after it was first set; None: never.
    pub max_life_s: Option<u64>,
    pub secure: bool,
    pub httponly: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "PHALANXID".into(),
            max_idle_s: None,
            max_life_s: None,
            secure: false,
            httponly: true,
        }
    }
}

/// A decoded cookie value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StickyCookie {
    pub backend: BackendId,
    /// When the client was first stuck (unix seconds).
    pub first_s: u64,
    /// The last time the cookie was refreshed (unix seconds).
    pub last_s: u64,
}

/// Why a cookie value was ignored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("sticky cookie value of {len} bytes is longer than {MAX_VALUE_LEN}")]
    TooLong { len: usize },
    #[error("sticky cookie value is not BACKEND.FIRST.LAST in hex")]
    Malformed,
    #[error("sticky cookie times are out of order or in the future")]
    BadTimes,
}

impl StickyCookie {
    /// A new stickiness to `backend` at `now_s`.
    pub fn new(backend: BackendId, now_s: u64) -> Self {
        StickyCookie {
            backend,
            first_s: now_s,
            last_s: now_s,
        }
    }

    pub fn encode(&self) -> String {
        format!("{:016x}.{:x}.{:x}", self.backend.0, self.first_s, self.last_s)
    }

    /// Parse a value; times later than `now_s` + [`MAX_SKEW_S`], or a first after the last,
    /// are refused.
    pub fn decode(value: &str, now_s: u64) -> Result<StickyCookie, CookieError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(CookieError::TooLong { len: value.len() });
        }
        let mut parts = value.split('.');
        let mut hex = |max_len: usize| -> Result<u64, CookieError> {
            let p = parts.next().ok_or(CookieError::Malformed)?;
            let ok = !p.is_empty() && p.len() <= max_len && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !ok {
                return Err(CookieError::Malformed);
            }
            u64::from_str_radix(p, 16).map_err(|_| CookieError::Malformed)
        };
        let backend = hex(16)?;
        let first_s = hex(16)?;
        let last_s = hex(16)?;
        if parts.next().is_some() {
            return Err(CookieError::Malformed);
        }
        if first_s > last_s || last_s > now_s.saturating_add(MAX_SKEW_S) {
            return Err(CookieError::BadTimes);
        }
        Ok(StickyCookie {
            backend: BackendId(backend),
            first_s,
            last_s,
        })
    }

    /// Expired at `now_s`: idle for `max_idle` or older than `max_life` (at that instant).
    pub fn is_expired(&self, cfg: &CookieConfig, now_s: u64) -> bool {
        let idle = cfg.max_idle_s.is_some_and(|d| now_s >= self.last_s.saturating_add(d));
        let life = cfg.max_life_s.is_some_and(|d| now_s >= self.first_s.saturating_add(d));
        idle || life
    }

    /// Whether a response should carry a refreshed cookie: its idle time advanced by a quarter
    /// of `max_idle` (at least a second) since it was last set. Without `max_idle` the last-seen
    /// time matters to nobody and is never refreshed.
    pub fn needs_refresh(&self, cfg: &CookieConfig, now_s: u64) -> bool {
        cfg.max_idle_s
            .is_some_and(|d| now_s.saturating_sub(self.last_s) >= (d / 4).max(1))
    }
}

/// What a request's cookie says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to the backend at this index (it takes sticky traffic). `refresh`: set the
    /// cookie again with the last-seen time `now` on the response.
    Stick {
        index: usize,
        cookie: StickyCookie,
        refresh: bool,
    },
    /// Pick a backend and set a new cookie: no cookie, garbage, expired, or its backend is
    /// gone, down or in maintenance.
    Repick(Why),
}

/// Why a request is picked for again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    NoCookie,
    Garbage,
    Expired,
    Gone,
    Unavailable,
}

/// Judge a request's cookie value (None: it had none) against `backends` at `now_s`.
pub fn judge(value: Option<&str>, cfg: &CookieConfig, now_s: u64, backends: &[Backend]) -> Verdict {
    let Some(value) = value else {
        return Verdict::Repick(Why::NoCookie);
    };
    let Ok(cookie) = StickyCookie::decode(value, now_s) else {
        return Verdict::Repick(Why::Garbage);
    };
    if cookie.is_expired(cfg, now_s) {
        return Verdict::Repick(Why::Expired);
    }
    match position(backends, cookie.backend) {
        None => Verdict::Repick(Why::Gone),
        Some(i) if backends[i].takes_sticky() => Verdict::Stick {
            index: i,
            cookie,
            refresh: cookie.needs_refresh(cfg, now_s),
        },
        Some(_) => Verdict::Repick(Why::Unavailable),
    }
}

/// The `Set-Cookie` value for `cookie` (a session cookie; `Path=/`).
pub fn set_cookie(cfg: &CookieConfig, cookie: &StickyCookie) -> String {
    let mut s = format!("{}={}; Path=/", cfg.name, cookie.encode());
    if cfg.httponly {
        s.push_str("; HttpOnly");
    }
    if cfg.secure {
        s.push_str("; Secure");
    }
    s
}

/// The value of cookie `name` in a `Cookie` request header (`a=1; b=2`), if present.
pub fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The `Cookie` header without cookie `name` (the backend never sees the balancer's cookie);
/// None when nothing is left.
pub fn strip(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k.trim() != name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Whether `name` may be a cookie name (an RFC 6265 / RFC 9110 token).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::BackendState;

    fn cfg() -> CookieConfig {
        CookieConfig {
            max_idle_s: Some(1800),
            max_life_s: Some(8 * 3600),
            ..CookieConfig::default()
        }
    }

    fn backends() -> Vec<Backend> {
        ["a", "b", "c"]
            .iter()
            .map(|n| Backend::new(BackendId::of(n), 1))
            .collect()
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn a_cookie_round_trips_and_sticks_to_its_backend() {
        let c = StickyCookie::new(BackendId::of("b"), NOW);
        let v = c.encode();
        assert_eq!(v.split('.').count(), 3);
        assert_eq!(StickyCookie::decode(&v, NOW), Ok(c));
        match judge(Some(&v), &cfg(), NOW + 10, &backends()) {
            Verdict::Stick { index, refresh, .. } => {
                assert_eq!(index, 1);
                assert!(!refresh, "10 s is under a quarter of max_idle");
            }
            other => panic!("{other:?}"),
        }
        match judge(Some(&v), &cfg(), NOW + 450, &backends()) {
            Verdict::Stick { refresh, .. } => assert!(refresh, "a quarter of max_idle passed"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_is_exact_for_idle_and_life() {
        let c = StickyCookie {
            backend: BackendId::of("a"),
            first_s: NOW,
            last_s: NOW + 7 * 3600 + 1800,
        };
        let v = c.encode();
        let at = |t| judge(Some(&v), &cfg(), t, &backends());
        assert!(matches!(at(NOW + 8 * 3600 - 1), Verdict::Stick { .. }));
        assert_eq!(at(NOW + 8 * 3600), Verdict::Repick(Why::Expired), "max_life");
        let idle = StickyCookie::new(BackendId::of("a"), NOW).encode();
        let at = |t| judge(Some(&idle), &cfg(), t, &backends());
        assert!(matches!(at(NOW + 1799), Verdict::Stick { .. }));
        assert_eq!(at(NOW + 1800), Verdict::Repick(Why::Expired), "max_idle");
        let forever = CookieConfig::default();
        assert!(!StickyCookie::new(BackendId::of("a"), 0).is_expired(&forever, u64::MAX));
        assert!(!StickyCookie::new(BackendId::of("a"), 0).needs_refresh(&forever, u64::MAX));
    }

    #[test]
    fn garbage_and_tampered_values_are_picked_for_again() {
        let good = StickyCookie::new(BackendId::of("a"), NOW).encode();
        for bad in [
            "",
            "x",
            "..",
            "zz.1.2",
            "1.2",
            "1.2.3.4",
            "ABCDEF.1.2",
            "-1.1.2",
            "+1.1.2",
            "1 .1.2",
            "11111111111111111.1.2",
            "\u{0}.1.2",
            &"a".repeat(200),
            &good.replace('.', ";"),
        ] {
            assert_eq!(
                judge(Some(bad), &cfg(), NOW, &backends()),
                Verdict::Repick(Why::Garbage),
                "{bad:?}"
            );
        }
        // Times out of order, or far in the future: forged.
        let later_first = format!("{:016x}.{:x}.{:x}", BackendId::of("a").0, NOW + 5, NOW);
        assert_eq!(StickyCookie::decode(&later_first, NOW), Err(CookieError::BadTimes));
        let future = StickyCookie::new(BackendId::of("a"), NOW + MAX_SKEW_S + 1).encode();
        assert_eq!(StickyCookie::decode(&future, NOW), Err(CookieError::BadTimes));
        let skewed = StickyCookie::new(BackendId::of("a"), NOW + MAX_SKEW_S).encode();
        assert!(StickyCookie::decode(&skewed, NOW).is_ok(), "within the skew");
        // Another backend's id: the client only chose another backend.
        let other = StickyCookie::new(BackendId::of("c"), NOW).encode();
        assert!(matches!(
            judge(Some(&other), &cfg(), NOW, &backends()),
            Verdict::Stick { index: 2, .. }
        ));
        assert_eq!(judge(None, &cfg(), NOW, &backends()), Verdict::Repick(Why::NoCookie));
    }

    #[test]
    fn a_gone_or_down_backend_is_picked_for_again_a_draining_one_keeps_its_clients() {
        let v = StickyCookie::new(BackendId::of("gone"), NOW).encode();
        assert_eq!(judge(Some(&v), &cfg(), NOW, &backends()), Verdict::Repick(Why::Gone));
        let v = StickyCookie::new(BackendId::of("b"), NOW).encode();
        let mut bs = backends();
        bs[1].state = BackendState::Down;
        assert_eq!(judge(Some(&v), &cfg(), NOW, &bs), Verdict::Repick(Why::Unavailable));
        bs[1].state = BackendState::Maint;
        assert_eq!(judge(Some(&v), &cfg(), NOW, &bs), Verdict::Repick(Why::Unavailable));
        bs[1].state = BackendState::Drain;
        assert!(matches!(
            judge(Some(&v), &cfg(), NOW, &bs),
            Verdict::Stick { index: 1, .. }
        ));
    }

    #[test]
    fn cookie_headers_are_found_stripped_and_set() {
        let h = "a=1; PHALANXID=\"abc\";b=2";
        assert_eq!(find(h, "PHALANXID"), Some("abc"));
        assert_eq!(find(h, "PHALANX"), None);
        assert_eq!(find("PHALANXIDX=1", "PHALANXID"), None);
        assert_eq!(strip(h, "PHALANXID").as_deref(), Some("a=1; b=2"));
        assert_eq!(strip("PHALANXID=1", "PHALANXID"), None);
        assert_eq!(strip("flag; x=1", "PHALANXID").as_deref(), Some("flag; x=1"));
        let c = CookieConfig { secure: true, ..cfg() };
        let sc = set_cookie(&c, &StickyCookie::new(BackendId(0xab), 0x10));
        assert_eq!(sc, "PHALANXID=00000000000000ab.10.10; Path=/; HttpOnly; Secure");
        assert!(valid_name("PHALANXID") && valid_name("a_b-c"));
        assert!(!valid_name("") && !valid_name("a b") && !valid_name("a=b") && !valid_name("a;"));
    }
}
