//! Durations as configs write them ("100ms", "2s", "1.5s", "5m", "1h"): parsing, formatting, the
//! checked forms a config section uses (a bad value is reported at its span), and the serde
//! helpers that store a duration as whole milliseconds in the replicated config.

use crate::diag::Checker;
use std::time::Duration;
use toml::Spanned;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration: write a number and a unit, e.g. \"100ms\", \"2s\", \"1.5s\", \"5m\", \"1h\"")]
pub struct DurationError(pub String);

/// Parse "100ms", "2s", "1.5s", "5m", "1h" (also "us"). A bare number is refused: the unit
/// is what makes a config readable.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_string());
    let t = s.trim();
    let split = t.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).ok_or_else(err)?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1 {
        return Err(err());
    }
    let factor_ns: f64 = match unit.trim() {
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        _ => return Err(err()),
    };
    let v: f64 = num.parse().map_err(|_| err())?;
    let ns = v * factor_ns;
    if !ns.is_finite() || ns > 1e18 {
        return Err(err());
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

/// Format a duration the way configs write them ("100ms", "2s", "1.5s").
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}us", d.as_micros())
    } else if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

/// A written duration, or None after reporting `what: why` at its span.
pub(crate) fn checked(c: &mut Checker, what: &str, s: &Spanned<String>) -> Option<Duration> {
    match parse_duration(s.get_ref()) {
        Ok(d) => Some(d),
        Err(e) => {
            c.error(s.span(), format!("{what}: {e}"));
            None
        }
    }
}

/// An optional duration key: `default` when absent, and after reporting a bad value.
pub(crate) fn checked_or(c: &mut Checker, what: &str, v: &Option<Spanned<String>>, default: Duration) -> Duration {
    v.as_ref().and_then(|s| checked(c, what, s)).unwrap_or(default)
}

/// Serde: a `Duration` as whole milliseconds.
pub(crate) mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Serde: an `Option<Duration>` as whole milliseconds.
pub(crate) mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}
