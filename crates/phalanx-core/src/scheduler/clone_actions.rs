//! From placement to actions for clones: instances started and stopped where the target
//! differs from where they run, failed ones restarted, primaries promoted and demoted (every
//! demote before any promote: never two primaries at once), and for a clone with several
//! instances per node ("web:0", "web:1", …), instances matched to the target's slots.

use super::actions::UnitActions;
use super::context::Ctx;
use super::explain::{reason_for, why_not};
use super::{ActionKind, Explain};
use crate::model::Role;
use crate::resources::OnFail;
use std::collections::BTreeMap;

/// A clone with clone_node_max > 1: match its instances ("web:0", ...) to the target slots (a
/// node once per instance it should hold). An instance whose node still has a slot stays; the
/// others stop; instances not running start in the free slots, in slot order.
pub(super) fn instance_diff(
    ctx: &Ctx,
    p: &str,
    count: u32,
    on_fail: OnFail,
    slots: &[(String, Role)],
    explain: &Explain,
    acts: &mut UnitActions,
) {
    let mut free: BTreeMap<&str, usize> = BTreeMap::new();
    for (n, _) in slots {
        *free.entry(n.as_str()).or_default() += 1;
    }
    let mut idle: Vec<String> = Vec::new();
    for i in 0..count {
        let id = format!("{p}:{i}");
        let mut kept = false;
        for (n, role) in &ctx.state(&id).running {
            match free.get_mut(n.as_str()).filter(|c| **c > 0 && !kept) {
                Some(c) => {
                    *c -= 1;
                    kept = true;
                    if *role == Role::Failed && on_fail != OnFail::Ignore {
                        let reason = "monitor failed";
                        acts.say(format!("Restart {id} on {n}: {reason}"));
                        acts.restart(&id, n, reason);
                    }
                }
                None if ctx.node(n).online => {
                    let reason = why_not(explain, n);
                    acts.say(format!("Stop {id} on {n}: {reason}"));
                    acts.stop(&id, n, &reason);
                }
                None => acts.say(format!("Lost {id} on {n}: {n} lost")),
            }
        }
        if !kept {
            idle.push(id);
        }
    }
    let mut idle = idle.into_iter();
    for (n, _) in slots {
        let Some(c) = free.get_mut(n.as_str()).filter(|c| **c > 0) else {
            continue;
        };
        let Some(id) = idle.next() else { break };
        *c -= 1;
        let reason = reason_for(explain, n);
        acts.say(format!("Start {id} on {n}: {reason}"));
        acts.start(&id, n, &reason);
    }
}

/// A clone with one instance per node: stop (demoting first) where it no longer belongs, start
/// or restart where it should run, promote and demote to match the target's roles.
pub(super) fn clone_diff(ctx: &Ctx, p: &str, tgt: &BTreeMap<String, Role>, explain: &Explain, acts: &mut UnitActions) {
    let cur = &ctx.state(p).running;
    let promoted_max = ctx.cfg.resources.clone_of(p).map(|c| c.promoted_max).unwrap_or(1);
    let mut demotes = Vec::new();
    let mut promotes = Vec::new();
    // Stops of failed instances: a failed one may have been the primary (a hung monitor says
    // nothing of its role), so it is stopped before any promote (found by the simulation: a
    // hung primary and a new one promoted beside it).
    let mut failed_stops = Vec::new();
    for (n, role) in cur {
        if !tgt.contains_key(n) {
            if ctx.node(n).online {
                let reason = why_not(explain, n);
                if *role == Role::Promoted {
                    acts.say(format!("Demote {p} on {n}: {reason}"));
                    demotes.push(acts.push(ActionKind::Demote, p, n, &reason));
                }
                acts.say(format!("Stop {p} on {n}: {reason}"));
                let s = acts.push(ActionKind::Stop, p, n, &reason);
                if let Some(d) = demotes.last() {
                    acts.plan.edges.push((*d, s));
                }
                if *role == Role::Failed {
                    failed_stops.push(s);
                }
                acts.stops.push(s);
            } else {
                acts.say(format!("Lost {p} on {n}: {n} lost"));
            }
        }
    }
    for (n, role) in tgt {
        let now = cur.get(n).copied();
        let failed = now == Some(Role::Failed);
        if now.is_none() || failed {
            let reason = if failed {
                "monitor failed".to_string()
            } else {
                reason_for(explain, n)
            };
            let verb = if failed { "Restart" } else { "Start" };
            acts.say(format!("{verb} {p} on {n}: {reason}"));
            let st = acts.push(ActionKind::Start, p, n, &reason);
            if failed {
                let s = acts.push(ActionKind::Stop, p, n, &reason);
                acts.plan.edges.push((s, st));
                acts.stops.push(s);
                failed_stops.push(s);
            }
            acts.starts.push(st);
            if *role == Role::Promoted {
                acts.say(format!(
                    "Promote {p} on {n}: chosen as primary (promoted_max {promoted_max})"
                ));
                let pr = acts.push(ActionKind::Promote, p, n, &reason);
                acts.plan.edges.push((st, pr));
                promotes.push(pr);
            }
        } else if now == Some(Role::Started) && *role == Role::Promoted {
            let reason = format!("chosen as primary (promoted_max {promoted_max})");
            acts.say(format!("Promote {p} on {n}: {reason}"));
            promotes.push(acts.push(ActionKind::Promote, p, n, &reason));
        } else if now == Some(Role::Promoted) && *role == Role::Started {
            let reason = "another instance is preferred as primary".to_string();
            acts.say(format!("Demote {p} on {n}: {reason}"));
            demotes.push(acts.push(ActionKind::Demote, p, n, &reason));
        }
    }
    // Demote (and stop what failed) before promote: never two primaries at once.
    for d in demotes.iter().chain(&failed_stops) {
        for pr in &promotes {
            acts.plan.edges.push((*d, *pr));
        }
    }
}
