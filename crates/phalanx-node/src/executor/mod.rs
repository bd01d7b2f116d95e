//! The executor: what every node does for the resources. It runs the actions of the committed
//! plan that are addressed to it once their predecessors are done, runs the recurring monitors of
//! what it hosts, probes every resource once at start-up, and reports each result through the
//! Raft log, where it updates the replicated state that the leader's scheduler reads. The plan
//! is `plan.rs`, the recurring monitors and fence device checks (each from its own deadline)
//! `monitors.rs`, the no-quorum policy `no_quorum.rs`.

mod monitors;
mod no_quorum;
mod plan;
pub(crate) mod reconfigure;

use crate::agents::{AgentCall, CallResult, Runner};
use crate::node::Node;
use phalanx_core::events::CallReport;
use phalanx_core::ocf::{AgentAction, Verdict};
use phalanx_core::scheduler::ActionKind;
use phalanx_core::state::CallOutcome;
use phalanx_core::Command;
use plan::{run_plan, PlanProgress};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// How a result is recorded. A start that timed out, was killed or answered an unknown code
/// bans the resource on that node, as exit 1 of a start does: Pacemaker counts a failed start
/// as INFINITY failures there (`start-failure-is-fatal`, true by default), so a start that
/// hangs on one node is tried on another instead of again and again where it hangs. A start
/// answering "not running" (7) stays a soft failure, tried again: the built-in `pgsql` agent
/// answers so when it has nothing to copy from yet.
pub fn outcome_of(r: &CallResult) -> CallOutcome {
    if r.succeeded() {
        return CallOutcome::Ok;
    }
    match r.verdict {
        Verdict::HardError => CallOutcome::Hard,
        Verdict::Fatal => CallOutcome::Fatal,
        Verdict::Timeout | Verdict::Unknown if r.action == AgentAction::Start => CallOutcome::Hard,
        _ => CallOutcome::Soft,
    }
}

fn agent_action(kind: ActionKind) -> AgentAction {
    match kind {
        // Never reaches an agent (see `run_action`); a stop is the closest meaning.
        ActionKind::Fence => AgentAction::Stop,
        ActionKind::Start => AgentAction::Start,
        ActionKind::Stop => AgentAction::Stop,
        ActionKind::Promote => AgentAction::Promote,
        ActionKind::Demote => AgentAction::Demote,
        ActionKind::Notify { .. } => AgentAction::Notify,
    }
}

/// Run one agent action for primitive `rsc` with the configured timeouts.
async fn call(
    node: &Node,
    runner: &Runner,
    rsc: &str,
    action: AgentAction,
    interval: Option<Duration>,
) -> Option<CallResult> {
    call_with(node, runner, rsc, action, interval, &BTreeMap::new()).await
}

/// `call`, the agent seeing the meta attributes `extra` too (a notify clone's lists).
async fn call_with(
    node: &Node,
    runner: &Runner,
    rsc: &str,
    action: AgentAction,
    interval: Option<Duration>,
    extra: &BTreeMap<String, String>,
) -> Option<CallResult> {
    // `rsc` may be one instance of a clone with clone_node_max > 1 ("web:1"): the agent then sees
    // that instance name (OCF_RESOURCE_INSTANCE), as under Pacemaker.
    let config = node.config();
    let prim = config.resources.primitive_of(rsc)?;
    let mut meta = clone_meta(node, &config, rsc);
    meta.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    if prim.agent == phalanx_core::resources::AgentSpec::Pgsql {
        meta.extend(pgsql_meta(node, &config, prim));
    }
    Some(call_primitive(runner, prim, rsc, action, interval, &meta).await)
}

/// The clone meta attributes agents of instance `rsc` see on `node` (none for a resource that
/// is not cloned; see `phalanx_core::resources::clone_meta`). The instance number is the one in
/// the name of an instanced clone ("web:1"), else the node's rank among the members by id.
pub(crate) fn clone_meta(node: &Node, config: &phalanx_core::Config, rsc: &str) -> BTreeMap<String, String> {
    let res = &config.resources;
    let (primitive, number) = match rsc.rsplit_once(':') {
        Some((base, i)) if res.instance_count(base).is_some() => (base, i.parse().ok()),
        _ => (rsc, None),
    };
    let Some(spec) = res.clone_running(primitive) else {
        return BTreeMap::new();
    };
    let (members, rank) = node.with_state(|sm| {
        let numbers = phalanx_core::notify::instance_numbers(sm.cluster.nodes.iter().map(|(n, r)| (r.id, n.as_str())));
        (numbers.len(), numbers.get(node.name.as_str()).copied().unwrap_or(0))
    });
    phalanx_core::resources::clone_meta(spec, members, number.unwrap_or(rank))
}

/// Where a replica on `me` streams from: the node being promoted, else another node running
/// the primary (this node's own may still be recorded too: a former primary found running by
/// its probe, about to be demoted, must follow the other); never `me`.
fn upstream_node(
    me: &str,
    promoting: Option<String>,
    running: &BTreeMap<String, phalanx_core::scheduler::Role>,
) -> Option<String> {
    promoting
        .or_else(|| {
            running
                .iter()
                .find(|(n, role)| **role == phalanx_core::scheduler::Role::Promoted && n.as_str() != me)
                .map(|(n, _)| n.clone())
        })
        .filter(|u| u != me)
}

/// What the `pgsql` agent learns from the cluster (see `crate::pgsql`): the synchronous
/// standby this node recorded (when it is the primary), and where a replica here streams
/// from: the node the current plan promotes, else the one running the primary (never this
/// node); its address is its `host` param, else its API address's IP, and its port its `port`
/// param.
fn pgsql_meta(
    node: &Node,
    config: &phalanx_core::Config,
    prim: &phalanx_core::resources::Primitive,
) -> BTreeMap<String, String> {
    use phalanx_core::scheduler::ActionKind;
    let mut meta = BTreeMap::new();
    let recorded = node.with_state(|sm| {
        sm.cluster
            .nodes
            .get(&node.name)
            .and_then(|n| n.attrs.get(&phalanx_core::pgsql::sync_attr(&prim.id)))
            .cloned()
    });
    if let Some(r) = recorded {
        meta.insert(crate::pgsql::SYNC_RECORDED.to_string(), r);
    }
    let up = node.with_state(|sm| {
        let plan = &sm.cluster.plan;
        let promoting = plan
            .actions
            .iter()
            .enumerate()
            .filter(|(i, a)| {
                a.kind == ActionKind::Promote && a.rsc == prim.id && !plan.done.contains(i) && !plan.failed.contains(i)
            })
            .map(|(_, a)| a.node.clone())
            .next();
        let running = sm
            .cluster
            .resources
            .get(&prim.id)
            .map(|r| r.running.clone())
            .unwrap_or_default();
        upstream_node(&node.name, promoting, &running)
    });
    let Some(up) = up else {
        return meta;
    };
    let Ok(p) = phalanx_core::pgsql::Params::parse(&phalanx_core::resources::params_on(&prim.params, &up)) else {
        return meta;
    };
    let host = p.host.or_else(|| {
        config
            .nodes
            .iter()
            .find(|n| n.name == up)
            .map(|n| n.api.ip().to_string())
    });
    let Some(host) = host else {
        return meta;
    };
    meta.insert(crate::pgsql::UPSTREAM_NODE.to_string(), up);
    meta.insert(crate::pgsql::UPSTREAM_HOST.to_string(), host);
    meta.insert(crate::pgsql::UPSTREAM_PORT.to_string(), p.port.to_string());
    meta
}

/// Run one agent action of instance `rsc` of `prim` (a definition of the config this node runs,
/// or of the one it ran before a switch) under the timeout configured for that action.
pub(crate) async fn call_primitive(
    runner: &Runner,
    prim: &phalanx_core::resources::Primitive,
    rsc: &str,
    action: AgentAction,
    interval: Option<Duration>,
    meta: &BTreeMap<String, String>,
) -> CallResult {
    let timeout = match action {
        AgentAction::Stop => prim.stop_timeout,
        AgentAction::Monitor => prim.monitor.map(|m| m.timeout).unwrap_or(Duration::from_secs(20)),
        _ => prim.start_timeout,
    };
    // A `name@node` param is this node's value of `name`.
    let params = phalanx_core::resources::params_on(&prim.params, &runner.node);
    runner
        .call(&AgentCall {
            agent: &prim.agent,
            instance: rsc,
            params: &params,
            meta,
            action,
            timeout,
            interval,
        })
        .await
}

/// What the event history keeps of an agent call: exit code, duration, the end of its stderr.
fn report(r: &CallResult) -> CallReport {
    CallReport::new(r.exit_code, r.elapsed_ms, &r.stderr)
}

/// Run the executor of `node` until the process ends.
pub async fn run(node: Arc<Node>, runner: Runner) {
    let runner = Arc::new(runner);
    let plans = Arc::new(PlanProgress::default());
    let in_flight = monitors::InFlight::default();
    let mut clock = monitors::MonitorClock::default();
    let mut probed = false;
    let mut was_offline = false;
    let (mut had_quorum, mut applied_policy) = (false, false);
    // Online members last seen: a change re-announces the VIPs held here.
    let mut members_seen: Option<BTreeSet<String>> = None;
    let tick = node.timings.executor_tick;
    let mut applied = node.applied();
    // The config this loop last acted on: a new committed version reloads or restarts what it
    // changed here.
    let mut ran = node.config();
    loop {
        // Every tick, at once when the state changes (a new plan, a finished predecessor), and
        // when a recurring check is due. A check that is overdue was not run last round (no
        // quorum, no leader, probing): it waits for the next tick, or this loop would spin
        // (found by the simulation: a node without quorum burnt a core here).
        let now = tokio::time::Instant::now();
        let wake = clock
            .next_deadline()
            .filter(|d| *d > now)
            .map(|d| d.min(now + tick))
            .unwrap_or(now + tick);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            r = applied.changed() => {
                if r.is_err() {
                    tokio::time::sleep(tick).await;
                }
            }
            _ = plans.wake.notified() => {}
        }
        let config = node.config();
        if !Arc::ptr_eq(&config, &ran) {
            reconfigure::apply(&node, &runner, &ran, &config).await;
            ran = config.clone();
        }
        if config.resources.is_empty() {
            continue;
        }
        let sm = node.cluster_state();
        // Quorum lost (after having had it): apply the no-quorum policy at once, and do nothing
        // else until quorum is back (this replica is stale; the majority decides).
        let quorate = node.quorate();
        if !quorate {
            if had_quorum && !applied_policy {
                applied_policy = true;
                no_quorum::apply_no_quorum_policy(&node, &runner, &sm, &plans.started_here()).await;
            }
            continue;
        }
        had_quorum = true;
        if applied_policy {
            // Back: report what actually runs here now.
            applied_policy = false;
            probed = false;
        }
        if sm.cluster.max_node_id == 0 || node.leader_api().is_none() {
            continue;
        }
        // Probe at start-up, and again whenever the cluster takes this node back after losing it
        // (a healed partition): what runs here already?
        let me_offline = sm
            .cluster
            .nodes
            .get(&node.name)
            .map(|r| {
                matches!(
                    r.liveness,
                    phalanx_core::Liveness::Offline | phalanx_core::Liveness::Stopped
                )
            })
            .unwrap_or(false);
        if was_offline && !me_offline {
            probed = false;
        }
        was_offline = me_offline;
        if !probed && !me_offline {
            probed = true;
            probe(&node, &runner, &sm).await;
            continue;
        }
        run_plan(&node, &runner, &sm.cluster.plan, &plans);
        reannounce_on_membership_change(&node, &sm, &mut members_seen);
        monitors::run_due(&node, &runner, &sm, &mut clock, &in_flight);
    }
}

/// Ask every resource's agent what runs here, and report what the state does not know.
/// Progress notes this node left (`progress_attr`: a clearing write lost when it stopped or was
/// cut off) are cleared first: no action of this node runs before its probe.
async fn probe(node: &Arc<Node>, runner: &Runner, sm: &crate::raft::store::SmData) {
    let stale: Vec<String> = sm
        .cluster
        .nodes
        .get(&node.name)
        .map(|r| {
            r.attrs
                .keys()
                .filter(|k| k.starts_with(phalanx_core::resources::PROGRESS_ATTR_PREFIX))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for key in stale {
        tracing::info!(%key, "clearing a progress note left from before");
        let _ = node
            .write(Command::SetAttr {
                name: node.name.clone(),
                key,
                value: None,
            })
            .await;
    }
    for (rsc, _) in node.config().resources.instances() {
        let Some(r) = call(node, runner, &rsc, AgentAction::Monitor, None).await else {
            continue;
        };
        // A timeout or an error is not "not running": it is recorded failed, and stopped here
        // before it runs anywhere else (`probed_role`).
        let role = phalanx_core::ocf::probed_role(r.verdict, r.exit_code);
        let known = sm
            .cluster
            .resources
            .get(&rsc)
            .and_then(|x| x.running.get(&node.name).copied());
        if role != known {
            tracing::info!(rsc = %rsc, node = %node.name, ?role, ?known, verdict = ?r.verdict, "probe: reporting what runs here");
            let _ = node
                .write(Command::Probe {
                    rsc: rsc.clone(),
                    node: node.name.clone(),
                    role,
                })
                .await;
        }
    }
}

/// A membership change (a node lost or back, a healed partition) re-announces every VIP held
/// here, so no client or switch stays on a stale MAC (a known keepalived failure).
fn reannounce_on_membership_change(
    node: &Node,
    sm: &crate::raft::store::SmData,
    members_seen: &mut Option<BTreeSet<String>>,
) {
    let online: BTreeSet<String> = sm
        .cluster
        .nodes
        .iter()
        .filter(|(_, r)| {
            !matches!(
                r.liveness,
                phalanx_core::Liveness::Offline | phalanx_core::Liveness::Stopped
            )
        })
        .map(|(n, _)| n.clone())
        .collect();
    if members_seen.as_ref().is_some_and(|m| *m != online) {
        let config = node.config();
        for (rsc, rec) in &sm.cluster.resources {
            let Some(p) = config.resources.primitive_of(rsc) else {
                continue;
            };
            if p.agent == phalanx_core::resources::AgentSpec::Vip && rec.running.contains_key(&node.name) {
                if let Ok(v) = crate::vip::Vip::from_params(&p.params) {
                    tokio::spawn(async move {
                        if let Err(e) = crate::vip::reannounce(&v).await {
                            tracing::warn!(address = %v.address, error = %e, "vip re-announcement failed");
                        }
                    });
                }
            }
        }
    }
    *members_seen = Some(online);
}

#[cfg(test)]
mod tests {
    use super::{outcome_of, upstream_node};
    use crate::agents::CallResult;
    use phalanx_core::ocf::{AgentAction, Verdict};
    use phalanx_core::scheduler::Role;
    use phalanx_core::state::CallOutcome;

    #[test]
    fn every_failed_start_bans_the_node_a_failed_monitor_does_not() {
        let r = |action, code: Option<i32>, timed_out| {
            outcome_of(&CallResult {
                verdict: Verdict::of(action, code, timed_out),
                exit_code: code,
                timed_out,
                ..CallResult::ours(action, 0, String::new(), std::time::Instant::now())
            })
        };
        use AgentAction::{Monitor, Start, Stop};
        assert_eq!(r(Start, Some(0), false), CallOutcome::Ok);
        // Timed out, killed by a signal, an unknown code, exit 1: banned there.
        for (code, timed_out) in [(None, true), (None, false), (Some(99), false), (Some(1), false)] {
            assert_eq!(
                r(Start, code, timed_out),
                CallOutcome::Hard,
                "start {code:?} {timed_out}"
            );
        }
        // "Not running": tried again (pgsql's replica with no primary to copy from yet).
        assert_eq!(r(Start, Some(7), false), CallOutcome::Soft);
        // A configuration error stays fatal everywhere.
        assert_eq!(r(Start, Some(6), false), CallOutcome::Fatal);
        // A monitor's timeout or exit 1 is recovered in place (Pacemaker's soft errors); a
        // stop's timeout has the node fenced whatever its outcome (`record_result`).
        assert_eq!(r(Monitor, None, true), CallOutcome::Soft);
        assert_eq!(r(Monitor, Some(1), false), CallOutcome::Soft);
        assert_eq!(r(Stop, None, true), CallOutcome::Soft);
    }

    #[test]
    fn a_replica_follows_the_node_promoted_or_another_primary_never_itself() {
        let running = |v: &[(&str, Role)]| v.iter().map(|(n, r)| (n.to_string(), *r)).collect();
        let both = running(&[("n1", Role::Promoted), ("n2", Role::Promoted), ("n3", Role::Started)]);
        // n1, a former primary found running beside n2's: it follows n2 (it got no upstream).
        assert_eq!(upstream_node("n1", None, &both), Some("n2".into()));
        assert_eq!(upstream_node("n3", None, &both), Some("n1".into()));
        assert_eq!(upstream_node("n1", Some("n3".into()), &both), Some("n3".into()));
        assert_eq!(upstream_node("n3", Some("n3".into()), &both), None);
        let alone = running(&[("n1", Role::Promoted)]);
        assert_eq!(upstream_node("n1", None, &alone), None);
    }
}
