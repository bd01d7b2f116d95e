//! Fence first (DESIGN.md invariant 3): which unclean nodes are fenced in this plan and by
//! whom, which must wait (retry backoff, nobody to run the fence) and why, the view of the
//! input the rest of the plan works from (a node being fenced is down), and the edges that make
//! every start and promote wait for the fences.

use super::{Action, ActionKind, Input, NodeState, Plan};
use crate::config::Config;
use crate::model::{Fencing, Role};
use crate::resources::OnFail;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// The fences of a plan: target → (the node that runs it, why), and notices for those that
/// must wait.
pub(super) struct Fences {
    pub due: BTreeMap<String, (String, String)>,
    pub notes: Vec<String>,
}

impl Fences {
    pub(super) fn of(cfg: &Config, input: &Input) -> Fences {
        let (due, notes) = fences_due(cfg, input);
        Fences { due, notes }
    }

    /// The input as the rest of the plan sees it: every node fenced here is down, its resources
    /// recovered elsewhere once the fence is recorded.
    pub(super) fn view<'a>(&self, input: &'a Input) -> Cow<'a, Input> {
        if self.due.is_empty() {
            return Cow::Borrowed(input);
        }
        let mut v = input.clone();
        for target in self.due.keys() {
            let n = v.nodes.entry(target.clone()).or_default();
            n.online = false;
            n.unclean = false;
        }
        Cow::Owned(v)
    }

    /// The fence actions open the plan, one summary line each.
    pub(super) fn push_actions(&self, plan: &mut Plan) {
        for (target, (by, reason)) in &self.due {
            plan.summary.push(format!("Fence {target} (by {by}): {reason}"));
            plan.actions.push(Action {
                kind: ActionKind::Fence,
                rsc: target.clone(),
                node: by.clone(),
                reason: reason.clone(),
            });
        }
    }

    /// Every start and promote waits for every fence (the fences are the plan's first actions).
    pub(super) fn push_edges(&self, plan: &mut Plan) {
        let fence_count = self.due.len();
        for f in 0..fence_count {
            for i in fence_count..plan.actions.len() {
                if matches!(plan.actions[i].kind, ActionKind::Start | ActionKind::Promote) {
                    plan.edges.push((f, i));
                }
            }
        }
    }
}

/// Which unclean nodes are fenced in this plan — target → (the node that runs it, why) — and
/// notices for those that must wait. Only with `fencing = "required"` and a device for the
/// target; a fencer never fences itself (the coordinator's failed stop is fenced by the first
/// other online node).
fn fences_due(cfg: &Config, input: &Input) -> (BTreeMap<String, (String, String)>, Vec<String>) {
    let mut due = BTreeMap::new();
    let mut notes = Vec::new();
    if cfg.cluster.fencing != Fencing::Required {
        return (due, notes);
    }
    // A monitor failure of a resource with on_fail = "fence" makes its node unclean too.
    let mut monitor_fence: BTreeMap<&str, String> = BTreeMap::new();
    for (rsc, st) in &input.resources {
        let Some(p) = cfg.resources.primitive_of(rsc) else {
            continue;
        };
        if p.on_fail != OnFail::Fence {
            continue;
        }
        for (n, role) in &st.running {
            if *role == Role::Failed && input.nodes.get(n).is_none_or(|s| s.online) {
                monitor_fence
                    .entry(n.as_str())
                    .or_insert_with(|| format!("{rsc} failed on {n} (on_fail = fence)"));
            }
        }
    }
    let default_state = NodeState::default();
    let candidates: BTreeSet<&str> = input
        .nodes
        .iter()
        .filter(|(_, s)| s.unclean)
        .map(|(n, _)| n.as_str())
        .chain(monitor_fence.keys().copied())
        .collect();
    for target in candidates {
        let ns = input.nodes.get(target).unwrap_or(&default_state);
        if !cfg.fence.can_fence(target) {
            continue;
        }
        // The coordinator, unless it is the target or unusable; else the first usable node.
        let usable = |n: &str| {
            n != target
                && !monitor_fence.contains_key(n)
                && input.nodes.get(n).map(|s| s.online && !s.unclean).unwrap_or(true)
        };
        let by = input.fencer.clone().filter(|f| usable(f)).or_else(|| {
            super::context::members(cfg, input)
                .into_iter()
                .find(|n| usable(n))
                .map(str::to_string)
        });
        let failed = match (&ns.fence_error, ns.fence_failures) {
            (_, 0) => String::new(),
            (Some(e), n) => format!(" (after {n} failed attempt(s), the last: {e})"),
            (None, n) => format!(" (after {n} failed attempt(s))"),
        };
        if input.now_ms < ns.fence_retry_at_ms {
            notes.push(format!(
                "Wait: fencing {target} failed{failed}; next attempt in {} ms; what it held stays stopped",
                ns.fence_retry_at_ms - input.now_ms
            ));
            continue;
        }
        let Some(by) = by else {
            notes.push(format!(
                "Wait: {target} must be fenced but no node can run the fence now"
            ));
            continue;
        };
        let why = match (&ns.fence_reason, monitor_fence.get(target)) {
            (Some(r), _) | (None, Some(r)) => r.clone(),
            (None, None) => format!("{target} lost while it may hold resources"),
        };
        due.insert(target.to_string(), (by, format!("{why}{failed}")));
    }
    (due, notes)
}
