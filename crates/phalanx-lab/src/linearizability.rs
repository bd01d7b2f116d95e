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

use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
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

/// A value, interned per key.
type Val = u32;
/// The model state: the item's value, or absent.
type State = Option<Val>;

/// One key's operations, prepared: determinate ones first (sorted by call), then the
/// indeterminate writes (sorted by call); values interned.
struct Partition<'a> {
    key: &'a str,
    ops: Vec<&'a Op>,
    /// Determinate operations are `0..det`.
    det: usize,
    vals: Interner,
    /// Per op: its input's written value and its output's value, interned.
    input_val: Vec<Option<Val>>,
    output_val: Vec<Option<Val>>,
    unique_of: HashMap<Val, u64>,
    value_of_unique: HashMap<u64, Val>,
    /// Stand-ins for values never observed (numeric or not; see `tokenize`).
    token_num: Val,
    token_text: Val,
    /// Per indeterminate op (index − det): the previous indeterminate op with exactly the
    /// same effect, if any. Of such twins only the first not yet linearized is ever tried.
    twin_prev: Vec<Option<usize>>,
}

const TOKEN_NUM: &[u8] = b"\0(a number never read)";
const TOKEN_TEXT: &[u8] = b"\0(a value never read)";

#[derive(Default)]
struct Interner {
    ids: HashMap<Vec<u8>, Val>,
    bytes: Vec<Vec<u8>>,
}

impl Interner {
    fn id(&mut self, b: &[u8]) -> Val {
        if let Some(&id) = self.ids.get(b) {
            return id;
        }
        let id = self.bytes.len() as Val;
        self.bytes.push(b.to_vec());
        self.ids.insert(b.to_vec(), id);
        id
    }
}

impl<'a> Partition<'a> {
    fn new(key: &'a str, all: &[&'a Op]) -> Result<Self, CheckError> {
        let mut written = HashSet::new();
        for op in all {
            if let Some(ret) = op.ret {
                if ret < op.call {
                    return Err(CheckError::ReturnBeforeCall {
                        key: key.to_string(),
                        call: op.call,
                        ret,
                    });
                }
            }
            if let Some(v) = op.input.written() {
                if !written.insert(v) {
                    return Err(CheckError::DuplicateValue {
                        key: key.to_string(),
                        value: String::from_utf8_lossy(v).into_owned(),
                    });
                }
            }
        }
        let mut det: Vec<&Op> = all.iter().copied().filter(|o| o.ret.is_some()).collect();
        det.sort_by_key(|o| (o.call, o.ret));
        let mut indet: Vec<&Op> = all
            .iter()
            .copied()
            .filter(|o| o.ret.is_none() && !o.input.is_read())
            .collect();
        indet.sort_by_key(|o| o.call);
        let ndet = det.len();
        let mut ops = det;
        ops.extend(indet);
        let mut vals = Interner::default();
        let mut input_val = Vec::with_capacity(ops.len());
        let mut output_val = Vec::with_capacity(ops.len());
        for op in &ops {
            input_val.push(op.input.written().map(|v| vals.id(v)));
            output_val.push(match &op.output {
                Output::Value(Some(v)) | Output::ValueCas(Some((v, _))) if op.ret.is_some() => Some(vals.id(v)),
                _ => None,
            });
        }
        let token_num = vals.id(TOKEN_NUM);
        let token_text = vals.id(TOKEN_TEXT);
        let mut p = Partition {
            key,
            ops,
            det: ndet,
            vals,
            input_val,
            output_val,
            unique_of: HashMap::new(),
            value_of_unique: HashMap::new(),
            token_num,
            token_text,
            twin_prev: Vec::new(),
        };
        p.tokenize();
        Ok(p)
    }

    /// Replaces the value of every indeterminate write whose value no determinate op could
    /// have observed (no read returned it, no number read or returned by incr lies within
    /// 2^32 above it) by a token: such writes differ only in presence, so they become
    /// interchangeable (`twin_prev`) instead of multiplying the search's states.
    fn tokenize(&mut self) {
        let num = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|t| t.trim_end_matches(' ').parse::<u64>().ok())
        };
        let mut observed: HashSet<Val> = self.output_val[..self.det].iter().flatten().copied().collect();
        let mut written: Vec<(u64, Val)> = self
            .input_val
            .iter()
            .flatten()
            .filter_map(|&v| num(&self.vals.bytes[v as usize]).map(|n| (n, v)))
            .collect();
        written.sort_unstable();
        let mut seen_nums: Vec<u64> = observed
            .iter()
            .filter_map(|&v| num(&self.vals.bytes[v as usize]))
            .collect();
        seen_nums.extend(self.ops[..self.det].iter().filter_map(|o| match o.output {
            Output::Number(n) => Some(n),
            _ => None,
        }));
        for r in seen_nums {
            let lo = written.partition_point(|&(n, _)| n <= r.saturating_sub(1 << 32));
            for &(n, v) in &written[lo..] {
                if n > r {
                    break;
                }
                observed.insert(v);
            }
        }
        let mut last: HashMap<(u8, u64, u64), usize> = HashMap::new();
        for i in self.det..self.ops.len() {
            if let Some(v) = self.input_val[i] {
                if !observed.contains(&v) {
                    let t = if num(&self.vals.bytes[v as usize]).is_some() {
                        self.token_num
                    } else {
                        self.token_text
                    };
                    self.input_val[i] = Some(t);
                }
            }
            let tok = |v: Option<Val>| v.filter(|&v| v == self.token_num || v == self.token_text);
            let class = match &self.ops[i].input {
                Input::Set(_) => tok(self.input_val[i]).map(|t| (0, u64::from(t), 0)),
                Input::Add(_) => tok(self.input_val[i]).map(|t| (1, u64::from(t), 0)),
                Input::Cas { unique, .. } => tok(self.input_val[i]).map(|t| (2, u64::from(t), *unique)),
                Input::Incr(d) => Some((3, *d, 0)),
                Input::Delete => Some((4, 0, 0)),
                Input::Get | Input::Gets => None,
            };
            self.twin_prev.push(class.and_then(|c| last.insert(c, i)));
        }
    }

    /// Learns value ↔ unique from the `gets` outputs; a conflict is a violation on its own.
    fn unique_conflict(&mut self) -> Option<Violation> {
        let mut first_by_val: HashMap<Val, usize> = HashMap::new();
        let mut first_by_unique: HashMap<u64, usize> = HashMap::new();
        for i in 0..self.det {
            let Output::ValueCas(Some((_, c))) = &self.ops[i].output else {
                continue;
            };
            let Some(v) = self.output_val[i] else { continue };
            let c = *c;
            if let Some(&j) = first_by_val.get(&v) {
                if self.unique_of.get(&v) != Some(&c) {
                    return Some(self.pair_violation(j, i, "one value observed with two different cas uniques"));
                }
            }
            if let Some(&j) = first_by_unique.get(&c) {
                if self.value_of_unique.get(&c) != Some(&v) {
                    return Some(self.pair_violation(j, i, "one cas unique observed on two different values"));
                }
            }
            first_by_val.entry(v).or_insert(i);
            first_by_unique.entry(c).or_insert(i);
            self.unique_of.insert(v, c);
            self.value_of_unique.insert(c, v);
        }
        None
    }

    fn pair_violation(&self, a: usize, b: usize, reason: &str) -> Violation {
        Violation {
            key: self.key.to_string(),
            reason: reason.to_string(),
            linearized: 0,
            prefix_tail: Vec::new(),
            state: None,
            stuck: vec![self.ops[a].clone(), self.ops[b].clone()],
        }
    }

    /// Whether `cas(expected)` succeeds on the current value: `None` when the model cannot tell.
    fn cas_matches(&self, cur: Val, expected: u64) -> Option<bool> {
        match self.unique_of.get(&cur) {
            Some(&u) => Some(u == expected),
            None if self.value_of_unique.contains_key(&expected) => Some(false),
            None => None,
        }
    }

    /// Whether op `i`, when indeterminate, leaves the same state whatever the state before.
    fn blind(&self, i: usize) -> bool {
        matches!(self.ops[i].input, Input::Set(_) | Input::Delete)
    }

    /// How many ways an operation can go when linearized now: 2 only for an indeterminate cas
    /// whose outcome the model cannot tell (branch 0 stores, branch 1 does not).
    fn branches(&self, i: usize) -> u8 {
        if i >= self.det && matches!(self.ops[i].input, Input::Cas { .. }) {
            2
        } else {
            1
        }
    }

    /// The model: the state after linearizing op `i` (taking `branch`) in state `s`, or `None`
    /// when its recorded output is impossible there. Indeterminate ops accept any output.
    fn step(&mut self, s: State, i: usize, branch: u8) -> Option<State> {
        let op = self.ops[i];
        let indet = i >= self.det;
        let out = &op.output;
        // `want(x)`: the recorded output is `x` (anything goes for an indeterminate op).
        let want = |x: &Output| indet || out == x;
        match &op.input {
            Input::Get => match out {
                Output::Value(_) => (self.output_val[i] == s).then_some(s),
                _ => None,
            },
            Input::Gets => match out {
                Output::ValueCas(_) => (self.output_val[i] == s).then_some(s),
                _ => None,
            },
            Input::Set(_) => want(&Output::Stored).then_some(self.input_val[i]),
            Input::Add(_) => match s {
                None => want(&Output::Stored).then_some(self.input_val[i]),
                Some(_) => want(&Output::NotStored).then_some(s),
            },
            Input::Cas { unique, .. } => {
                let Some(cur) = s else {
                    return want(&Output::NotFound).then_some(None);
                };
                let stores = match (indet, self.cas_matches(cur, *unique)) {
                    (false, Some(m)) => m,
                    (false, None) => *out == Output::Stored,
                    (true, Some(m)) => m,
                    (true, None) => branch == 0,
                };
                if stores {
                    want(&Output::Stored).then_some(self.input_val[i])
                } else {
                    want(&Output::Exists).then_some(s)
                }
            }
            Input::Incr(delta) => {
                let Some(cur) = s else {
                    return want(&Output::NotFound).then_some(None);
                };
                if cur == self.token_num {
                    // What incr makes of an unobserved number is unobserved too (and a
                    // determinate answer would have observed it).
                    return indet.then_some(s);
                }
                let n = std::str::from_utf8(&self.vals.bytes[cur as usize])
                    .ok()
                    .and_then(|t| t.trim_end_matches(' ').parse::<u64>().ok());
                match n {
                    None => want(&Output::NonNumeric).then_some(s),
                    Some(n) => {
                        let next = n.wrapping_add(*delta);
                        if want(&Output::Number(next)) {
                            Some(Some(self.vals.id(next.to_string().as_bytes())))
                        } else {
                            None
                        }
                    }
                }
            }
            Input::Delete => match s {
                None => want(&Output::NotFound).then_some(None),
                Some(_) => want(&Output::Deleted).then_some(None),
            },
        }
    }

    fn show(&self, s: State) -> Option<String> {
        s.map(|v| {
            String::from_utf8_lossy(
                self.vals.bytes[v as usize]
                    .strip_prefix(b"\0")
                    .unwrap_or(&self.vals.bytes[v as usize]),
            )
            .into_owned()
        })
    }
}

/// A node of the search: the op that led here, the state here, and a cursor over the moves
/// to try from here (computed lazily: the linearized set is the same whenever this node is
/// on top of the stack).
struct Frame {
    applied: Option<usize>,
    state: State,
    /// First not-yet-linearized determinate op.
    lo: usize,
    /// Determinate ops linearized so far.
    depth: usize,
    /// The earliest return among the not-yet-linearized determinate ops: only ops called by
    /// then may go next.
    min_ret: Nanos,
    /// The next op to try (determinate ops from `lo`, then indeterminate ones) and branch.
    cursor: usize,
    branch: u8,
    /// A determinate op that may go next and leaves the state as it is (a read of the
    /// current value, a failed add/cas/incr/delete): the node's only move (see `frame`).
    forced: Option<usize>,
}

struct Search<'a> {
    p: Partition<'a>,
    opts: CheckOptions,
    lin: Vec<bool>,
    /// Zobrist hash of the linearized determinate ops.
    hash: u128,
    /// The linearized indeterminate ops, in path order.
    indet_path: Vec<u32>,
    /// Nodes fully explored without success: (determinate set, state) → the indeterminate
    /// sets they had (sorted).
    failed: HashMap<(u128, State), Vec<Vec<u32>>>,
    stack: Vec<Frame>,
    best: Option<Violation>,
    best_depth: Option<usize>,
}

impl<'a> Search<'a> {
    fn new(p: Partition<'a>, opts: CheckOptions) -> Self {
        let n = p.ops.len();
        Search {
            p,
            opts,
            lin: vec![false; n],
            hash: 0,
            indet_path: Vec::new(),
            failed: HashMap::new(),
            stack: Vec::new(),
            best: None,
            best_depth: None,
        }
    }

    fn run(mut self) -> (Verdict, u64) {
        if self.p.det == 0 {
            return (Verdict::Ok, 0);
        }
        let root = self.frame(None, None, 0, 0);
        self.stack.push(root);
        let mut steps = 0u64;
        loop {
            let Some((i, branch)) = self.next_move() else {
                if self.stack.is_empty() {
                    let v = self.best.take().unwrap_or_else(|| Violation {
                        key: self.p.key.to_string(),
                        reason: "no linearization".into(),
                        linearized: 0,
                        prefix_tail: Vec::new(),
                        state: None,
                        stuck: Vec::new(),
                    });
                    return (Verdict::Violation(v), steps);
                }
                continue;
            };
            let Some(top) = self.stack.last() else { continue };
            let (state, lo, depth) = (top.state, top.lo, top.depth);
            // An indeterminate blind write (set, delete) right after an indeterminate op makes
            // that op pointless: the same node without it is reachable from the parent.
            if i >= self.p.det && top.applied.is_some_and(|a| a >= self.p.det) && self.p.blind(i) {
                continue;
            }
            steps += 1;
            if steps > self.opts.max_steps {
                return (Verdict::Unknown { steps: steps - 1 }, steps - 1);
            }
            let Some(next) = self.p.step(state, i, branch) else {
                continue;
            };
            // An indeterminate op that changes nothing now is as good as never taking effect.
            if i >= self.p.det && next == state {
                continue;
            }
            self.set(i, true);
            let depth = depth + usize::from(i < self.p.det);
            if depth == self.p.det {
                return (Verdict::Ok, steps);
            }
            if self.subsumed(next) {
                self.set(i, false);
                continue;
            }
            let mut lo = lo;
            while lo < self.p.det && self.lin[lo] {
                lo += 1;
            }
            let f = self.frame(Some(i), next, lo, depth);
            self.stack.push(f);
        }
    }

    fn set(&mut self, i: usize, on: bool) {
        self.lin[i] = on;
        if i < self.p.det {
            self.hash ^= zobrist(i);
        } else if on {
            self.indet_path.push(i as u32);
        } else {
            self.indet_path.pop();
        }
    }

    fn indet_set(&self) -> Vec<u32> {
        let mut u = self.indet_path.clone();
        u.sort_unstable();
        u
    }

    /// Whether the current node (with state `s`) cannot succeed because a node that failed
    /// had the same determinate ops and state and a subset of its indeterminate ops: from
    /// there every completion of this node was possible too (the extra indeterminate ops
    /// simply never take effect), so this one fails as well. Equal sets are Lowe's memo.
    fn subsumed(&self, s: State) -> bool {
        let Some(sets) = self.failed.get(&(self.hash, s)) else {
            return false;
        };
        let u = self.indet_set();
        sets.iter().any(|f| is_subset(f, &u))
    }

    /// Builds a node; its moves are the not-yet-linearized ops called no later than the
    /// earliest return among the not-yet-linearized determinate ops.
    ///
    /// Partial-order reduction: when one of them is determinate and leaves the state as it is
    /// (its output matches it), it is the node's only move. Complete: in any linearization
    /// from this node, that op can be moved to the front — it changes no state the others
    /// see, and no op still to be linearized returned before its call (it is a candidate).
    /// Without this, k concurrent reads of one value cost 2^k nodes on every backtrack.
    fn frame(&mut self, applied: Option<usize>, state: State, lo: usize, depth: usize) -> Frame {
        let det = self.p.det;
        let mut min_ret = Nanos::MAX;
        let mut i = lo;
        while i < det && self.p.ops[i].call <= min_ret {
            if !self.lin[i] {
                min_ret = min_ret.min(self.p.ops[i].ret.unwrap_or(Nanos::MAX));
            }
            i += 1;
        }
        let mut forced = None;
        let mut i = lo;
        while i < det && self.p.ops[i].call <= min_ret {
            if !self.lin[i] && self.p.step(state, i, 0) == Some(state) {
                forced = Some(i);
                break;
            }
            i += 1;
        }
        Frame {
            applied,
            state,
            lo,
            depth,
            min_ret,
            cursor: lo,
            branch: 0,
            forced,
        }
    }

    /// The top frame's next move (op, branch); pops the frame when it has none left.
    fn next_move(&mut self) -> Option<(usize, u8)> {
        let p = &self.p;
        let f = self.stack.last_mut()?;
        if let Some(i) = f.forced {
            if f.branch == 0 {
                f.branch = 1;
                return Some((i, 0));
            }
            self.backtrack();
            return None;
        }
        loop {
            let i = f.cursor;
            if i < p.det && p.ops[i].call > f.min_ret {
                f.cursor = p.det;
                continue;
            }
            if i >= p.ops.len() || p.ops[i].call > f.min_ret {
                self.backtrack();
                return None;
            }
            if self.lin[i] || (i >= p.det && p.twin_prev[i - p.det].is_some_and(|t| !self.lin[t])) {
                f.cursor += 1;
                continue;
            }
            let b = f.branch;
            if b + 1 < p.branches(i) {
                f.branch += 1;
            } else {
                f.branch = 0;
                f.cursor += 1;
            }
            return Some((i, b));
        }
    }

    /// Pops the exhausted top frame, remembering it when it is the deepest dead end so far.
    fn backtrack(&mut self) {
        let Some(f) = self.stack.pop() else { return };
        if self.best_depth.is_none_or(|d| f.depth > d) {
            self.best_depth = Some(f.depth);
            self.best = Some(self.explain(&f));
        }
        let u = self.indet_set();
        self.failed.entry((self.hash, f.state)).or_default().push(u);
        if let Some(i) = f.applied {
            self.set(i, false);
        }
    }

    fn explain(&self, f: &Frame) -> Violation {
        let p = &self.p;
        let mut tail: Vec<Op> = self
            .stack
            .iter()
            .chain(std::iter::once(f))
            .rev()
            .filter_map(|fr| fr.applied)
            .take(TAIL)
            .map(|i| p.ops[i].clone())
            .collect();
        tail.reverse();
        let stuck = (f.lo..p.det)
            .take_while(|&i| p.ops[i].call <= f.min_ret)
            .filter(|&i| !self.lin[i])
            .map(|i| p.ops[i].clone())
            .collect();
        Violation {
            key: p.key.to_string(),
            reason: "no operation can be linearized next".into(),
            linearized: f.depth,
            prefix_tail: tail,
            state: p.show(f.state),
            stuck,
        }
    }
}

/// Whether sorted `a` ⊆ sorted `b`.
fn is_subset(a: &[u32], b: &[u32]) -> bool {
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j == b.len() || b[j] != x {
            return false;
        }
        j += 1;
    }
    true
}

/// Two independent 64-bit mixes of the op's index (splitmix64's finalizer).
fn zobrist(i: usize) -> u128 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let i = i as u64;
    let a = mix(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let b = mix(i
        .wrapping_add(0x5851_f42d_4c95_7f2d)
        .wrapping_mul(0xd1b5_4a32_d192_ed03));
    (u128::from(a) << 64) | u128::from(b)
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
