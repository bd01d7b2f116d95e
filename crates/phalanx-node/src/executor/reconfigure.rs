//! What a newly committed config changes on this node, for the resources running here (as the
//! replicated state records them): a primitive whose parameters changed is reloaded in place
//! when its agent can (`AgentMeta::reload_for`: OCF 1.1 `reload-agent` for reloadable
//! parameters, OCF 1.0 `reload` for non-unique ones, as Pacemaker decides from its parameter
//! digests), otherwise restarted here (stopped with the old definition, started with the new); a
//! primitive the new version no longer has is stopped with its old definition. Unchanged
//! primitives are not touched. Results go up like any other: a failed restart or reload is a
//! monitor failure, a stopped orphan a probe.

use super::outcome_of;
use crate::agents::{AgentCall, CallResult, Runner};
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

async fn run(runner: &Runner, prim: &Primitive, instance: &str, action: AgentAction) -> CallResult {
    let timeout = match action {
        AgentAction::Stop => prim.stop_timeout,
        _ => prim.start_timeout,
    };
    runner
        .call(&AgentCall {
            agent: &prim.agent,
            instance,
            params: &prim.params,
            action,
            timeout,
            interval: None,
        })
        .await
}

/// How `old` → `new` applies to a running instance (None: untouched).
async fn change(runner: &Runner, old: &Primitive, new: Option<&Primitive>) -> Option<Change> {
    let Some(new) = new else { return Some(Change::Remove) };
    if old.agent != new.agent {
        return Some(Change::Restart);
    }
    let changed: Vec<&str> = old
        .params
        .keys()
        .chain(new.params.keys())
        .filter(|k| old.params.get(*k) != new.params.get(*k))
        .map(String::as_str)
        .collect();
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
        let failure = match (what, new_prim) {
            (Change::Reload(action), Some(p)) => {
                let r = run(runner, p, &instance, action).await;
                (!r.succeeded()).then(|| report(outcome_of(&r), format!("{}: {}", action.as_str(), r.summary())))
            }
            (Change::Restart, Some(p)) => {
                let stop = run(runner, old_prim, &instance, AgentAction::Stop).await;
                if !stop.succeeded() {
                    Some(report(
                        CallOutcome::Hard,
                        format!("stop to restart with the new config: {}", stop.summary()),
                    ))
                } else {
                    let start = run(runner, p, &instance, AgentAction::Start).await;
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
                let stop = run(runner, old_prim, &instance, AgentAction::Stop).await;
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
        if let Some(cmd) = failure {
            // Reported until it lands (a leader change may drop one attempt).
            for _ in 0..20 {
                if node.write(cmd.clone()).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
