//! The checker's search: Wing & Gong's depth-first search over a key's [`Partition`] with
//! Lowe's memo (here: failed nodes, with subsumption over indeterminate ops), the reductions
//! argued in the parent module's notes, the step budget, and the explanation of a violation.

use super::model::{Partition, State};
use super::{CheckOptions, Nanos, Op, Verdict, Violation, TAIL};
use std::collections::HashMap;

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

pub(super) struct Search<'a> {
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
    pub(super) fn new(p: Partition<'a>, opts: CheckOptions) -> Self {
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

    pub(super) fn run(mut self) -> (Verdict, u64) {
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
