//! The session store's linearizability checker: pure (no IO, no clock, no randomness), it
//! decides whether a recorded history of memcached operations could have come from one
//! memcached server executing them atomically, each at some instant between its call and its
//! return. It owns the history's types ([`Op`], [`Input`], [`Output`]), the memcached model of
//! one key, and the search.
//!
//! **Partitioning.** Every operation touches one key and memcached keys are independent, so the
//! history is checked key by key (P-compositionality: a history is linearizable iff each key's
//! sub-history is). Each key starts absent.
//!
//! **Search.** Wing & Gong's depth-first search with Lowe's memoization, as in Porcupine: from a
//! node (the set of operations already linearized, the model state), any operation whose call
//! precedes the earliest return among the not-yet-linearized determinate operations may go
//! next if the model accepts its recorded output; a node already explored (same set, same state)
//! is not explored again. The determinate part of the set is keyed by a 128-bit Zobrist hash,
//! updated in O(1) per step instead of copying a bitset: a collision could only make the
//! search skip a node it has not explored, i.e. at worst report a violation that is not one,
//! never hide one (odds around 2^-90 at the step budget). Two reductions keep it polynomial
//! on real histories, both complete (argued at `Search::frame` and `Search::subsumed`): a
//! determinate op that may go next without changing the state is a node's only move (reads
//! of the current value commute), and a node is pruned when a failed one had the same
//! determinate ops and state and a subset of its indeterminate ops. Determinate candidates are
//! tried before indeterminate ones. A step budget per key turns a search that would take too
//! long into [`Verdict::Unknown`].
//!
//! **Indeterminate operations** (`ret: None`: a timeout, a lost connection, SERVER_ERROR) may
//! take effect at any instant after their call, or never: they have no return to precede, any
//! output is acceptable, and the search succeeds as soon as every determinate operation is
//! linearized (the rest "take effect at the end", which nobody observes, i.e. never).
//! Indeterminate reads change nothing and are dropped. Pending indeterminate ops are what
//! makes the search expensive (each may or may not have happened, anywhere), so: an
//! indeterminate write whose value no determinate op could have observed is modelled by a
//! token (it can matter only through presence: add NOT_STORED, delete DELETED, cas EXISTS),
//! indeterminate ops with the same effect are interchangeable (only the first pending one is
//! tried), one that changes nothing is skipped, and a blind one (set, delete) is never
//! stacked on another indeterminate one.
//!
//! **CAS uniques.** memcached gives every successful write (set, add, cas, incr) a new unique
//! that the model cannot predict. The model relies on the workload's promise that every write
//! to a key writes a value never written to it before (and that incr chains never meet another
//! written value: the workload spaces its numbers 2^32 apart), so a value names one version of
//! the item, and the uniques the history's `gets` observed give a function value → unique
//! (learned from the whole history; a version's unique does not depend on when it is read).
//! Two checks need no search: one value seen with two uniques, or one unique seen on two values,
//! is a violation. Then `cas(expected)` on the current value `v`:
//! - `v`'s unique was observed: STORED iff it equals `expected`, else EXISTS;
//! - it was not, but `expected` was observed on another value: EXISTS (uniques are distinct);
//! - neither was observed: both outcomes are possible (the model cannot tell).
//!
//! Two writes of the same value to one key are refused ([`CheckError::DuplicateValue`]).
//! incr follows memcached: a decimal value (trailing spaces allowed) plus delta, wrapping at
//! 2^64, stored as its decimal digits (the space padding of an in-place shrink is not
//! modelled); a non-numeric value gives CLIENT_ERROR.
//!
//! **Violations** come with an explanation: the key, the longest linearizable prefix found
//! (its length and last operations, the model state after it) and the operations that could not
//! be placed next.

mod model;
mod search;

use model::Partition;
use search::Search;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Nanoseconds since the start of the run (one monotonic clock for the whole history).
pub type Nanos = u64;

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    Get,
    Gets,
    Set(Vec<u8>),
    Add(Vec<u8>),
    Cas { value: Vec<u8>, unique: u64 },
    Incr(u64),
    Delete,
}

impl Input {
    fn is_read(&self) -> bool {
        matches!(self, Input::Get | Input::Gets)
    }

    /// The value this operation writes, if it writes a client-chosen value.
    fn written(&self) -> Option<&[u8]> {
        match self {
            Input::Set(v) | Input::Add(v) | Input::Cas { value: v, .. } => Some(v.as_slice()),
            _ => None,
        }
    }
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// `get`: the value, or `None` on a miss.
    Value(Option<Vec<u8>>),
    /// `gets`: the value and its cas unique, or `None` on a miss.
    ValueCas(Option<(Vec<u8>, u64)>),
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    /// `incr`'s new value.
    Number(u64),
    /// `incr` on a non-numeric value (CLIENT_ERROR).
    NonNumeric,
    /// No definite answer; goes with `ret: None`.
    Indeterminate,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub call: Nanos,
    /// `None`: indeterminate (it may take effect at any time after `call`, or never, and its
    /// output is ignored).
    pub ret: Option<Nanos>,
    pub input: Input,
    pub output: Output,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("key {key:?}: a returned operation has ret {ret} before its call {call}")]
    ReturnBeforeCall { key: String, call: Nanos, ret: Nanos },
    #[error("key {key:?}: the value {value:?} is written twice (the model needs distinct written values)")]
    DuplicateValue { key: String, value: String },
}

#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Candidate moves tried per key before the verdict is [`Verdict::Unknown`].
    pub max_steps: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { max_steps: 5_000_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Violation(Violation),
    /// The step budget ran out before the search decided.
    Unknown {
        steps: u64,
    },
}

/// Why a key's history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub key: String,
    pub reason: String,
    /// Determinate operations in the longest linearizable prefix the search found.
    pub linearized: usize,
    /// The last operations of that prefix, in linearization order (at most [`TAIL`]).
    pub prefix_tail: Vec<Op>,
    /// The model's value after that prefix (`None`: absent), lossily as text.
    pub state: Option<String>,
    /// The determinate operations that could not be placed next.
    pub stuck: Vec<Op>,
}

/// How many of the prefix's last operations a [`Violation`] shows.
pub const TAIL: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyResult {
    pub key: String,
    pub ops: usize,
    pub steps: u64,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub ops: usize,
    /// Sorted by key.
    pub keys: Vec<KeyResult>,
}

impl CheckResult {
    pub fn violations(&self) -> impl Iterator<Item = &Violation> {
        self.keys.iter().filter_map(|k| match &k.verdict {
            Verdict::Violation(v) => Some(v),
            _ => None,
        })
    }

    pub fn unknown(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::Unknown { .. }))
            .count()
    }
}

/// Checks a whole history, key by key.
pub fn check(history: &[Op], opts: CheckOptions) -> Result<CheckResult, CheckError> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys = Vec::with_capacity(by_key.len());
    for (key, ops) in by_key {
        let (verdict, steps) = check_key(key, &ops, opts)?;
        keys.push(KeyResult {
            key: key.to_string(),
            ops: ops.len(),
            steps,
            verdict,
        });
    }
    Ok(CheckResult {
        ops: history.len(),
        keys,
    })
}

/// Checks one key's operations (all with this key); returns the verdict and the steps spent.
pub fn check_key(key: &str, ops: &[&Op], opts: CheckOptions) -> Result<(Verdict, u64), CheckError> {
    let mut p = Partition::new(key, ops)?;
    if let Some(v) = p.unique_conflict() {
        return Ok((Verdict::Violation(v), 0));
    }
    Ok(Search::new(p, opts).run())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |n: Nanos| n as f64 / 1e6;
        let ret = match self.ret {
            Some(r) => format!("{:.3}", t(r)),
            None => "?".into(),
        };
        let s = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let input = match &self.input {
            Input::Get => "get".to_string(),
            Input::Gets => "gets".to_string(),
            Input::Set(v) => format!("set {}", s(v)),
            Input::Add(v) => format!("add {}", s(v)),
            Input::Cas { value, unique } => format!("cas {} unique {unique}", s(value)),
            Input::Incr(d) => format!("incr {d}"),
            Input::Delete => "delete".to_string(),
        };
        let output = match &self.output {
            Output::Value(None) | Output::ValueCas(None) => "miss".to_string(),
            Output::Value(Some(v)) => s(v),
            Output::ValueCas(Some((v, c))) => format!("{} unique {c}", s(v)),
            Output::Stored => "STORED".into(),
            Output::NotStored => "NOT_STORED".into(),
            Output::Exists => "EXISTS".into(),
            Output::NotFound => "NOT_FOUND".into(),
            Output::Deleted => "DELETED".into(),
            Output::Number(n) => n.to_string(),
            Output::NonNumeric => "CLIENT_ERROR non-numeric".into(),
            Output::Indeterminate => "indeterminate".into(),
        };
        write!(
            f,
            "client {} [{:.3} ms, {} ms] {} {} -> {}",
            self.client,
            t(self.call),
            ret,
            input,
            self.key,
            output
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {}: {}", self.key, self.reason)?;
        if !self.prefix_tail.is_empty() || self.linearized > 0 {
            writeln!(
                f,
                "  longest linearizable prefix: {} operations, ending with:",
                self.linearized
            )?;
            for op in &self.prefix_tail {
                writeln!(f, "    {op}")?;
            }
            writeln!(f, "  value then: {}", self.state.as_deref().unwrap_or("(absent)"))?;
        }
        writeln!(f, "  cannot be placed next:")?;
        for op in &self.stuck {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "linearizability_tests.rs"]
mod tests;
