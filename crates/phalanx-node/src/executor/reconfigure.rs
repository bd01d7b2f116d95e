//! What a newly committed config changes on this node, for the resources running here (as the
//! replicated state records them): a primitive whose parameters changed is reloaded in place
//! when its agent can (`AgentMeta::reload_for`: OCF 1.1 `reload-agent` for reloadable
//! parameters, OCF 1.0 `reload` for non-unique ones, as Pacemaker decides from its parameter
//! digests), otherwise restarted here (stopped with the old definition, started with the new); a
//! primitive the new version no longer has is stopped with its old definition. Unchanged
//! primitives are not touched. Results go up like any other: a failed restart or reload is a
//! monitor failure, a stopped orphan a probe.

use super::outcome_of;
use super::{call_primitive, clone_meta};
use crate::agents::Runner;
use crate::node::Node;
use phalanx_core::config::Config;
use phalanx_core::ocf::AgentAction;
use phalanx_core::resources::{AgentSpec, Primitive};
use phalanx_core::scheduler::Role;
use phalanx_core::state::CallOutcome;
use phalanx_core::Command;
use std::time::Duration;

/// What to do with one instance running here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Reload(AgentAction),
    Restart,
    Remove,
}

/// What a switch from `old` to `new` will do to what runs, one line per instance and node, as
/// `config apply` previews it (`running`: (instance, node) as the state records them; with no
/// runner here, an OCF agent's reload is not known: a restart is shown).
pub(crate) async fn preview(
    runner: Option<&Runner>,
    old: &Config,
    new: &Config,
    running: &[(String, String)],
) -> Vec<String> {
    let mut out = Vec::new();
    for (instance, node) in running {
        let Some(old_prim) = old.resources.primitive_of(instance) else {
            continue;
        };
        let new_prim = new.resources.primitive_of(instance);
        let what = match runner {
            Some(r) => change(r, old_prim, new_prim).await,
            None => match new_prim {
                None => Some(Change::Remove),
                Some(p) if p.agent != old_prim.agent || p.params != old_prim.params => Some(Change::Restart),
                Some(_) => None,
            },
        };
        let changed = || -> String {
            let keys: Vec<&str> = new_prim.map(|p| changed_params(old_prim, p)).unwrap_or_default();
            if new_prim.is_some_and(|p| p.agent != old_prim.agent) {
                "its agent changed".to_string()
            } else {
                format!("params changed: {}", keys.join(", "))
            }
        };
        out.push(match what {
            None => continue,
            Some(Change::Reload(a)) => format!(
                "Reload {instance} on {node} ({}; `{}` applies them in place)",
                changed(),
                a.as_str()
            ),
            Some(Change::Restart) => format!("Restart {instance} on {node} ({})", changed()),
            Some(Change::Remove) => format!("Stop {instance} on {node} (no longer in the config)"),
        });
    }
    out
}

/// The params whose value differs between `old` and `new` (added, removed or changed), once each.
fn changed_params<'a>(old: &'a Primitive, new: &'a Primitive) -> Vec<&'a str> {
    let keys: std::collections::BTreeSet<&str> =
        old.params.keys().chain(new.params.keys()).map(String::as_str).collect();
    keys.into_iter()
        .filter(|k| old.params.get(*k) != new.params.get(*k))
        .collect()
}

/// How `old` → `new` applies to a running instance (None: untouched).
async fn change(runner: &Runner, old: &Primitive, new: Option<&Primitive>) -> Option<Change> {
    let Some(new) = new else { return Some(Change::Remove) };
    if old.agent != new.agent {
        return Some(Change::Restart);
    }
    let changed = changed_params(old, new);
    if changed.is_empty() {
        return None;
    }
    if !matches!(new.agent, AgentSpec::Ocf { .. }) {
        return Some(Change::Restart);
    }
    match runner.agent_meta(&new.agent).await {
        Some(Ok(meta)) => Some(
            meta.reload_for(changed.into_iter())
                .map_or(Change::Restart, Change::Reload),
        ),
        _ => Some(Change::Restart),
    }
}

/// Apply the switch from `old` to `new` to what runs here.
pub(super) async fn apply(node: &Node, runner: &Runner, old: &Config, new: &Config) {
    let here: Vec<(String, Role)> = node.with_state(|sm| {
        sm.cluster
            .resources
            .iter()
            .filter_map(|(id, r)| r.running.get(&node.name).map(|role| (id.clone(), *role)))
            .filter(|(_, role)| *role != Role::Failed)
            .collect()
    });
    for (instance, role) in here {
        let Some(old_prim) = old.resources.primitive_of(&instance) else {
            continue;
        };
        let new_prim = new.resources.primitive_of(&instance);
        let Some(what) = change(runner, old_prim, new_prim).await else {
            continue;
        };
        tracing::info!(rsc = %instance, change = ?what, "the new config changes it");
        let report = |outcome: CallOutcome, reason: String| Command::MonitorFailed {
            rsc: instance.clone(),
            node: node.name.clone(),
            outcome,
            at_ms: crate::mesh::unix_ms(),
            reason: Some(reason),
        };
        let done = match (&what, new_prim) {
            (Change::Reload(action), Some(_)) => format!("{instance} reloaded on {} ({})", node.name, action.as_str()),
            (Change::Restart, Some(_)) => format!("{instance} restarted on {} with the new config", node.name),
            _ => format!("{instance} stopped on {}: the config no longer has it", node.name),
        };
        let (old_meta, new_meta) = (clone_meta(node, old, &instance), clone_meta(node, new, &instance));
        let failure = match (what, new_prim) {
            (Change::Reload(action), Some(p)) => {
                let r = call_primitive(runner, p, &instance, action, None, &new_meta).await;
                (!r.succeeded()).then(|| report(outcome_of(&r), format!("{}: {}", action.as_str(), r.summary())))
            }
            (Change::Restart, Some(p)) => {
                let stop = call_primitive(runner, old_prim, &instance, AgentAction::Stop, None, &old_meta).await;
                if !stop.succeeded() {
                    Some(report(
                        CallOutcome::Hard,
                        format!("stop to restart with the new config: {}", stop.summary()),
                    ))
                } else {
                    let start = call_primitive(runner, p, &instance, AgentAction::Start, None, &new_meta).await;
                    if !start.succeeded() {
                        Some(report(
                            outcome_of(&start),
                            format!("start with the new config: {}", start.summary()),
                        ))
                    } else if role == Role::Promoted {
                        // Back as a replica: the scheduler promotes it again.
                        Some(Command::Probe {
                            rsc: instance.clone(),
                            node: node.name.clone(),
                            role: Some(Role::Started),
                        })
                    } else {
                        None
                    }
                }
            }
            _ => {
                let stop = call_primitive(runner, old_prim, &instance, AgentAction::Stop, None, &old_meta).await;
                Some(if stop.succeeded() {
                    Command::Probe {
                        rsc: instance.clone(),
                        node: node.name.clone(),
                        role: None,
                    }
                } else {
                    report(
                        CallOutcome::Hard,
                        format!("stop of a resource the config no longer has: {}", stop.summary()),
                    )
                })
            }
        };
        // A failure or a probe to report, else the event of what was done.
        let cmd = failure.unwrap_or_else(|| {
            Command::Note(phalanx_core::events::Note {
                kind: phalanx_core::events::EventKind::ResourceReloaded,
                node: node.name.clone(),
                summary: done,
                at_ms: crate::mesh::unix_ms(),
            })
        });
        // Reported until it lands (a leader change may drop one attempt).
        for _ in 0..20 {
            if node.write(cmd.clone()).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
