//! The executor: what every node does for the resources. It runs the actions of the committed
//! plan that are addressed to it once their predecessors are done, runs the recurring monitors of
//! what it hosts, probes every resource once at start-up, and reports each result through the
//! Raft log, where it updates the replicated state that the leader's scheduler reads.

use crate::agents::{AgentCall, CallResult, Runner};
use crate::mesh::unix_ms;
use crate::node::Node;
use phalanx_core::ocf::{AgentAction, Verdict};
use phalanx_core::scheduler::{Action, ActionKind, Role};
use phalanx_core::state::CallOutcome;
use phalanx_core::Command;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a result is recorded.
pub fn outcome_of(r: &CallResult) -> CallOutcome {
    if r.succeeded() {
        return CallOutcome::Ok;
    }
    match r.verdict {
        Verdict::HardError => CallOutcome::Hard,
        Verdict::Fatal => CallOutcome::Fatal,
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
    // `rsc` may be one instance of a clone with clone_node_max > 1 ("web:1"): the agent then sees
    // that instance name (OCF_RESOURCE_INSTANCE), as under Pacemaker.
    let prim = node.config.resources.primitive_of(rsc)?;
    let timeout = match action {
        AgentAction::Stop => prim.stop_timeout,
        AgentAction::Monitor => prim.monitor.map(|m| m.timeout).unwrap_or(Duration::from_secs(20)),
        _ => prim.start_timeout,
    };
    Some(
        runner
            .call(&AgentCall {
                agent: &prim.agent,
                instance: rsc,
                params: &prim.params,
                action,
                timeout,
                interval,
            })
            .await,
    )
}

/// The role a monitor result means (None: not running).
fn role_of(r: &CallResult) -> Option<Role> {
    match r.verdict {
        Verdict::Ok | Verdict::Degraded => Some(Role::Started),
        Verdict::Promoted { .. } => Some(Role::Promoted),
        _ => None,
    }
}

/// This node lost quorum: run the policy's actions (`quorum::no_quorum_actions`) on what it
/// holds. The calls go straight to the agents: without quorum nothing can be written to the log.
async fn apply_no_quorum_policy(node: &Node, runner: &Runner, sm: &crate::raft::store::SmData) {
    use phalanx_core::quorum::NoQuorumAction;
    let policy = node.config.cluster.no_quorum_policy;
    let here: Vec<(String, Role)> = node
        .config
        .resources
        .instances()
        .into_iter()
        .filter_map(|(id, _)| {
            let role = sm.cluster.resources.get(&id)?.running.get(&node.name).copied()?;
            Some((id, role))
        })
        .collect();
    tracing::warn!(?policy, holding = ?here, "quorum lost: applying the no-quorum policy");
    for (id, what) in phalanx_core::quorum::no_quorum_actions(policy, &node.config.resources, &here) {
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

/// What this node's executor knows of the plan beyond its replica.
#[derive(Default)]
struct PlanProgress {
    /// Actions whose claim was sent (in flight or accepted), as (plan id, index).
    claiming: Mutex<BTreeSet<(u64, usize)>>,
    /// Actions running here.
    running: Mutex<BTreeSet<(u64, usize)>>,
    /// Actions whose result this node has committed, and whether they succeeded (the replica
    /// may not have applied it yet).
    reported: Mutex<BTreeMap<(u64, usize), bool>>,
    /// Wakes the executor when an action of this node finishes.
    wake: tokio::sync::Notify,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Claim this node's open actions of the current plan (one write for all of them, as soon as
/// the plan appears), and run each claimed action whose predecessors are done. A result this
/// node committed counts as done at once, so its next action starts without waiting for the
/// replica to apply it: only hand-overs between nodes wait for the log.
fn run_plan(
    node: &Arc<Node>,
    runner: &Arc<Runner>,
    plan: &phalanx_core::state::PlanRecord,
    progress: &Arc<PlanProgress>,
) {
    let id = plan.id;
    locked(&progress.claiming).retain(|(p, _)| *p == id);
    let mut view = plan.clone();
    {
        let mut reported = locked(&progress.reported);
        reported.retain(|(p, _), _| *p == id);
        for ((_, i), ok) in reported.iter() {
            if *ok {
                view.done.insert(*i)
            } else {
                view.failed.insert(*i)
            };
        }
    }
    // Claim what is open and not claimed by this process yet.
    let open: Vec<usize> = (0..view.actions.len())
        .filter(|i| view.actions[*i].node == node.name && !view.done.contains(i) && !view.failed.contains(i))
        .filter(|i| view.claimed.get(i) != Some(&node.incarnation))
        .filter(|i| !locked(&progress.claiming).contains(&(id, *i)))
        .collect();
    if !open.is_empty() {
        locked(&progress.claiming).extend(open.iter().map(|i| (id, *i)));
        let (node2, progress2) = (node.clone(), progress.clone());
        tokio::spawn(async move {
            let claim = Command::ClaimAction {
                plan_id: id,
                indices: open.clone(),
                node: node2.name.clone(),
                incarnation: node2.incarnation,
            };
            if !matches!(node2.write(claim).await, Ok(phalanx_core::Outcome::Ok)) {
                // Replaced, finished or unreachable: look again at the next state.
                let mut c = locked(&progress2.claiming);
                for i in &open {
                    c.remove(&(id, *i));
                }
            }
        });
    }
    for i in view.runnable(&node.name) {
        if view.claimed.get(&i) != Some(&node.incarnation) || !locked(&progress.running).insert((id, i)) {
            continue;
        }
        let action: Action = view.actions[i].clone();
        let (node2, runner2, progress2) = (node.clone(), runner.clone(), progress.clone());
        tokio::spawn(async move {
            tracing::info!(rsc = %action.rsc, kind = ?action.kind, reason = %action.reason, "running plan action");
            let (outcome, reason) = run_action(&node2, &runner2, &action).await;
            if outcome != CallOutcome::Ok {
                tracing::warn!(rsc = %action.rsc, kind = ?action.kind, ?reason, "plan action failed");
            }
            let cmd = Command::ActionResult {
                plan_id: id,
                index: i,
                action,
                outcome,
                at_ms: unix_ms(),
                reason,
            };
            // Keep trying to report: the result is a fact the cluster must learn.
            for _ in 0..50 {
                if node2.write(cmd.clone()).await.is_ok() {
                    locked(&progress2.reported).insert((id, i), outcome == CallOutcome::Ok);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            locked(&progress2.running).remove(&(id, i));
            progress2.wake.notify_one();
        });
    }
}

/// Run one plan action: a fence through the fencing levels, anything else through its agent.
/// For a fence, the reason of a success names the level and devices that did it.
async fn run_action(node: &Node, runner: &Runner, action: &Action) -> (CallOutcome, Option<String>) {
    if action.kind == ActionKind::Fence {
        let delay = node
            .cluster_state()
            .cluster
            .fence_delay(&node.config.cluster, &action.rsc);
        if !delay.is_zero() {
            tracing::info!(target = %action.rsc, ?delay, "priority fence delay: the target runs resources");
            tokio::time::sleep(delay).await;
        }
        let seed = node.incarnation ^ unix_ms();
        return match node.fencer.fence(&action.rsc, seed).await {
            Ok(by) => (CallOutcome::Ok, Some(by)),
            Err(e) => (CallOutcome::Soft, Some(e.to_string())),
        };
    }
    match call(node, runner, &action.rsc, agent_action(action.kind), None).await {
        Some(r) => (outcome_of(&r), r.exit_reason.clone()),
        None => (
            CallOutcome::Fatal,
            Some(format!("{} is not in this node's config", action.rsc)),
        ),
    }
}

/// Run the executor of `node` until the process ends.
pub async fn run(node: Arc<Node>, runner: Runner) {
    if node.config.resources.is_empty() {
        return;
    }
    let runner = Arc::new(runner);
    let plans = Arc::new(PlanProgress::default());
    let monitoring: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut last_monitor: BTreeMap<String, Instant> = BTreeMap::new();
    let mut probed = false;
    let mut was_offline = false;
    let (mut had_quorum, mut applied_policy) = (false, false);
    // Online members last seen: a change re-announces the VIPs held here.
    let mut members_seen: Option<BTreeSet<String>> = None;
    let tick = node.config.cluster.heartbeat_interval;
    let mut applied = node.applied();
    loop {
        // Every tick, and at once when the state changes (a new plan, a finished predecessor).
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            r = applied.changed() => {
                if r.is_err() {
                    tokio::time::sleep(tick).await;
                }
            }
            _ = plans.wake.notified() => {}
        }
        let sm = node.cluster_state();
        // Quorum lost (after having had it): apply the no-quorum policy at once, and do nothing
        // else until quorum is back (this replica is stale; the majority decides).
        let quorate = node.quorate();
        if !quorate {
            if had_quorum && !applied_policy {
                applied_policy = true;
                apply_no_quorum_policy(&node, &runner, &sm).await;
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
            .map(|r| r.liveness == phalanx_core::Liveness::Offline)
            .unwrap_or(false);
        if was_offline && !me_offline {
            probed = false;
        }
        was_offline = me_offline;
        if !probed && !me_offline {
            probed = true;
            for (rsc, _) in node.config.resources.instances() {
                let rsc = &rsc;
                if let Some(r) = call(&node, &runner, rsc, AgentAction::Monitor, None).await {
                    let role = role_of(&r);
                    let known = sm
                        .cluster
                        .resources
                        .get(rsc)
                        .and_then(|x| x.running.get(&node.name).copied());
                    if role != known {
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
            continue;
        }
        run_plan(&node, &runner, &sm.cluster.plan, &plans);
        // Fence devices: the leader checks each at its monitor interval; a change of answer
        // goes to the log (status shows it on every node), a failure is logged as an event.
        if node.leader_name().as_deref() == Some(node.name.as_str()) {
            for d in &node.config.fence.devices {
                let key = format!("fence device {}", d.name);
                let due = last_monitor
                    .get(&key)
                    .map(|t| t.elapsed() >= d.monitor_interval)
                    .unwrap_or(true);
                if d.monitor_interval.is_zero()
                    || !due
                    || !monitoring.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone())
                {
                    continue;
                }
                last_monitor.insert(key.clone(), Instant::now());
                let (node2, monitoring2, d) = (node.clone(), monitoring.clone(), d.clone());
                tokio::spawn(async move {
                    let r = node2.fencer.monitor(&d).await;
                    let error = r.err().map(|e| e.to_string());
                    let known = node2.cluster_state().cluster.fence_devices.get(&d.name).cloned();
                    if known.is_none_or(|k| k.ok != error.is_none() || k.error != error) {
                        match &error {
                            Some(e) => tracing::error!(device = %d.name, error = %e, "fence device unreachable"),
                            None => tracing::info!(device = %d.name, "fence device ok"),
                        }
                        let health = phalanx_core::state::DeviceHealth {
                            ok: error.is_none(),
                            error,
                            since_ms: unix_ms(),
                            by: node2.name.clone(),
                        };
                        let _ = node2
                            .write(Command::DeviceHealth {
                                device: d.name.clone(),
                                health,
                            })
                            .await;
                    }
                    monitoring2.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                });
            }
        }
        // A membership change (a node lost or back, a healed partition) re-announces every VIP
        // held here, so no client or switch stays on a stale MAC (a known keepalived failure).
        let online: BTreeSet<String> = sm
            .cluster
            .nodes
            .iter()
            .filter(|(_, r)| r.liveness != phalanx_core::Liveness::Offline)
            .map(|(n, _)| n.clone())
            .collect();
        if members_seen.as_ref().is_some_and(|m| *m != online) {
            for (rsc, rec) in &sm.cluster.resources {
                let Some(p) = node.config.resources.primitive_of(rsc) else {
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
        members_seen = Some(online);
        // Recurring monitors of what runs here.
        for (rsc, rec) in &sm.cluster.resources {
            let Some(role) = rec.running.get(&node.name).copied() else {
                continue;
            };
            if role == Role::Failed {
                continue;
            }
            let Some(op) = node.config.resources.primitive_of(rsc).and_then(|p| p.monitor) else {
                continue;
            };
            let due = last_monitor
                .get(rsc)
                .map(|t| t.elapsed() >= op.interval)
                .unwrap_or(true);
            if !due || !monitoring.lock().unwrap_or_else(|p| p.into_inner()).insert(rsc.clone()) {
                continue;
            }
            last_monitor.insert(rsc.clone(), Instant::now());
            let (node2, runner2, monitoring2, rsc2) = (node.clone(), runner.clone(), monitoring.clone(), rsc.clone());
            tokio::spawn(async move {
                if let Some(r) = call(&node2, &runner2, &rsc2, AgentAction::Monitor, Some(op.interval)).await {
                    let healthy = match role {
                        Role::Promoted => matches!(r.verdict, Verdict::Promoted { .. }),
                        _ => r.succeeded(),
                    };
                    // Only report a failure of what the state still says runs here.
                    let still = node2
                        .cluster_state()
                        .cluster
                        .resources
                        .get(&rsc2)
                        .map(|x| x.running.get(&node2.name) == Some(&role))
                        .unwrap_or(false);
                    if !healthy && still {
                        let reason = r
                            .exit_reason
                            .clone()
                            .or_else(|| Some(format!("monitor: {:?}", r.verdict)));
                        tracing::warn!(rsc = %rsc2, ?reason, "monitor failed");
                        let outcome = match outcome_of(&r) {
                            CallOutcome::Ok => CallOutcome::Soft,
                            o => o,
                        };
                        let _ = node2
                            .write(Command::MonitorFailed {
                                rsc: rsc2.clone(),
                                node: node2.name.clone(),
                                outcome,
                                at_ms: unix_ms(),
                                reason,
                            })
                            .await;
                    }
                }
                monitoring2.lock().unwrap_or_else(|p| p.into_inner()).remove(&rsc2);
            });
        }
    }
}
