//! The memcached model of one key for the checker: a key's operations prepared for the
//! search (determinate ones first, sorted by call; values interned; value ↔ cas unique learned
//! from `gets`; unobserved indeterminate writes tokenized, their twins found) and the
//! transition function `step`.

use super::{CheckError, Input, Op, Output, Violation};
use std::collections::{HashMap, HashSet};

/// A value, interned per key.
pub(super) type Val = u32;
/// The model state: the item's value, or absent.
pub(super) type State = Option<Val>;

/// One key's operations, prepared: determinate ones first (sorted by call), then the
/// indeterminate writes (sorted by call); values interned.
pub(super) struct Partition<'a> {
    pub(super) key: &'a str,
    pub(super) ops: Vec<&'a Op>,
    /// Determinate operations are `0..det`.
    pub(super) det: usize,
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
    pub(super) twin_prev: Vec<Option<usize>>,
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
    pub(super) fn new(key: &'a str, all: &[&'a Op]) -> Result<Self, CheckError> {
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
    pub(super) fn unique_conflict(&mut self) -> Option<Violation> {
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
    pub(super) fn blind(&self, i: usize) -> bool {
        matches!(self.ops[i].input, Input::Set(_) | Input::Delete)
    }

    /// How many ways an operation can go when linearized now: 2 only for an indeterminate cas
    /// whose outcome the model cannot tell (branch 0 stores, branch 1 does not).
    pub(super) fn branches(&self, i: usize) -> u8 {
        if i >= self.det && matches!(self.ops[i].input, Input::Cas { .. }) {
            2
        } else {
            1
        }
    }

    /// The model: the state after linearizing op `i` (taking `branch`) in state `s`, or `None`
    /// when its recorded output is impossible there. Indeterminate ops accept any output.
    pub(super) fn step(&mut self, s: State, i: usize, branch: u8) -> Option<State> {
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

    pub(super) fn show(&self, s: State) -> Option<String> {
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
