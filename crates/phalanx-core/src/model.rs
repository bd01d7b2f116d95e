//! The nouns several core modules share, so that none of them has to import them from a
//! neighbour higher up: the role a resource instance runs in, the cluster's fencing mode,
//! Pacemaker's saturating scores, and the rule every name and id in a config follows. Plain
//! data and arithmetic; no parsing, no validation.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The role of a running resource instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Started,
    Promoted,
    /// Its monitor failed; it needs recovery (per its on_fail).
    Failed,
}

/// Whether lost nodes must be fenced before recovery (acted on once fencing exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fencing {
    #[default]
    Required,
    Watchdog,
    Off,
}

impl fmt::Display for Fencing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fencing::Required => "required",
            Fencing::Watchdog => "watchdog",
            Fencing::Off => "off",
        })
    }
}

/// Pacemaker's INFINITY: scores saturate at ±this value.
pub const INFINITY: i64 = 1_000_000;

/// Add scores the way Pacemaker does: saturating at ±INFINITY, and -INFINITY wins over +INFINITY.
pub fn add_scores(a: i64, b: i64) -> i64 {
    if a <= -INFINITY || b <= -INFINITY {
        -INFINITY
    } else if a >= INFINITY || b >= INFINITY {
        INFINITY
    } else {
        (a + b).clamp(-INFINITY, INFINITY)
    }
}

/// Render a score ("INFINITY", "-INFINITY" or the number).
pub fn score_str(s: i64) -> String {
    match s {
        s if s >= INFINITY => "INFINITY".into(),
        s if s <= -INFINITY => "-INFINITY".into(),
        s => s.to_string(),
    }
}

/// Read a score the way Pacemaker writes one: a number (saturated at ±INFINITY), or
/// `INFINITY`, `+INFINITY`, `-INFINITY` (any case); None if it is neither.
pub fn parse_score(s: &str) -> Option<i64> {
    let s = s.trim();
    match s.to_ascii_uppercase().as_str() {
        "INFINITY" | "+INFINITY" => Some(INFINITY),
        "-INFINITY" => Some(-INFINITY),
        _ => s.parse::<i64>().ok().map(|v| v.clamp(-INFINITY, INFINITY)),
    }
}

/// A valid cluster, node or resource name: 1-63 characters of A-Z a-z 0-9 - _ .
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}
