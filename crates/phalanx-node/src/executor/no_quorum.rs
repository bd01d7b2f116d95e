//! The no-quorum policy, acted on: when this node loses quorum it stops or demotes what it holds
//! (`quorum::no_quorum_actions`) straight through the agents, since nothing can be written to
//! the log without quorum.

use super::call;
use crate::agents::Runner;
use crate::node::Node;
use phalanx_core::ocf::AgentAction;
use phalanx_core::scheduler::Role;
use std::collections::BTreeMap;

/// This node lost quorum: run the policy's actions (`quorum::no_quorum_actions`) on what it
/// holds: what its replica records here, and what its own plan actions left running here
/// (`started_here`), which the replica may not have learned yet (found by the simulation, seed
/// 113: a node that lost quorum 0.4 s after starting `web` did not stop it, since its start
/// result had not reached its replica, and `web` was started elsewhere too). The calls go
/// straight to the agents: without quorum nothing can be written to the log.
pub(super) async fn apply_no_quorum_policy(
    node: &Node,
    runner: &Runner,
    sm: &crate::raft::store::SmData,
    started_here: &BTreeMap<String, Role>,
) {
    use phalanx_core::quorum::NoQuorumAction;
    let config = node.config();
    let policy = config.cluster.no_quorum_policy;
    let here: Vec<(String, Role)> = config
        .resources
        .instances()
        .into_iter()
        .filter_map(|(id, _)| {
            let recorded = sm.cluster.resources.get(&id).and_then(|r| r.running.get(&node.name));
            let role = recorded.or_else(|| started_here.get(&id)).copied()?;
            Some((id, role))
        })
        .collect();
    tracing::warn!(?policy, holding = ?here, "quorum lost: applying the no-quorum policy");
    for (id, what) in phalanx_core::quorum::no_quorum_actions(policy, &config.resources, &here) {
        let action = match what {
            NoQuorumAction::Stop => AgentAction::Stop,
            NoQuorumAction::Demote => AgentAction::Demote,
        };
        match call(node, runner, &id, action, None).await {
            Some(res) if res.succeeded() => tracing::warn!(rsc = %id, ?what, "done: no quorum"),
            other => tracing::error!(rsc = %id, ?what, result = ?other.map(|r| r.exit_reason), "failed without quorum"),
        }
    }
}
