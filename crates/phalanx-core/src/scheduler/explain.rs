//! Why a unit is where it is: the explanation kept per unit (each node's score and what made
//! it, the verdict), and the reasons actions and summary lines quote from it.

use crate::model::score_str;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How one unit's placement was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Explain {
    /// Per node that anything scored: the final score and each contribution to it (a node not
    /// listed scores 0: nothing constrains it).
    pub scores: BTreeMap<String, (i64, Vec<String>)>,
    pub placed: Vec<String>,
    /// Why it is where it is (or nowhere).
    pub verdict: String,
    /// No action at all touches it: in maintenance, or held because something of it may still
    /// run on a lost node not yet confirmed down.
    pub unmanaged: bool,
}

/// The first -INFINITY reason of each node, for "cannot run anywhere" messages.
pub(super) fn blockers(explain: &Explain) -> String {
    let mut out = Vec::new();
    for (n, (s, parts)) in &explain.scores {
        let why = parts
            .iter()
            .find(|p| p.ends_with("-INFINITY"))
            .map(|p| p.trim_end_matches(": -INFINITY").to_string())
            .unwrap_or_else(|| format!("{n} score {}", score_str(*s)));
        let why = match why.find(" (not on ") {
            Some(i) => format!("{}, which runs nowhere", &why[..i]),
            None => why,
        };
        if !out.contains(&why) {
            out.push(why);
        }
    }
    out.join(", ")
}

/// Why a unit does not (or no longer) run on `n`: the node's first -INFINITY reason, else the
/// verdict.
pub(super) fn why_not(explain: &Explain, n: &str) -> String {
    explain
        .scores
        .get(n)
        .and_then(|(_, parts)| parts.iter().find(|x| x.ends_with("-INFINITY")))
        .map(|x| x.trim_end_matches(": -INFINITY").to_string())
        .unwrap_or_else(|| explain.verdict.clone())
}

/// Why a unit goes to `n`: every positive contribution to its score there.
pub(super) fn reason_for(explain: &Explain, n: &str) -> String {
    let unscored = "no preference, least loaded allowed node (score 0)".to_string();
    explain
        .scores
        .get(n)
        .map(|(s, parts)| {
            let pos: Vec<&String> = parts.iter().filter(|x| !x.ends_with("-INFINITY")).collect();
            if pos.is_empty() {
                format!("no preference, least loaded allowed node (score {})", score_str(*s))
            } else {
                pos.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
            }
        })
        .unwrap_or_else(|| unscored.clone())
}
