//! Active health checks as cluster state (issue 14, item 3). Every node runs one checker for
//! all the `[[balancer]]`s of the committed config, whether it runs a balancer or not. Each
//! backend is checked by one node at a time, the one `phalanx_core::lb::checker` names among
//! the online members (spread over the cluster: not N× the check traffic of N balancers), and
//! only a change of verdict goes through Raft (`Command::BackendHealth`). Every balancer adopts
//! the committed verdicts (see `pool`), so one that starts after a failover knows every backend
//! at once, and all nodes read one view. A check is `probe`'s (TCP or HTTP, and the agent's
//! line when the check has `agent_port`: its down, drain, maint and weight are part of the
//! verdict).
//!
//! A checker takes a backend over with the verdict in force (a new checker does not flip a
//! backend by starting from scratch), and adopts any verdict another node commits (a balancer
//! that saw live traffic fail): from down, `rise` passing checks bring it back. Checks run on
//! the daemon's runtime, not on the proxy's: a saturated proxy does not delay them.

use super::pool::Target;
use crate::node::Node;
use phalanx_core::config::CheckConfig;
use phalanx_core::lb::{AgentReply, CheckResult, Health, Verdict};
use phalanx_core::state::{BalancerRecord, Command, HealthRecord, Liveness};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A backend, as (balancer id, backend name).
type Key = (String, String);

/// One backend this node checks.
struct Slot {
    address: SocketAddr,
    check: CheckConfig,
    health: Health,
    /// The committed verdict's (by, at_ms) last adopted: a different one is adopted again.
    synced: Option<(String, u64)>,
    /// A check is running.
    checking: bool,
    /// The verdict proposed and not yet seen committed, and when (proposed again only after
    /// [`RETRY_MS`]: a write may fail, e.g. without quorum).
    proposed: Option<(Verdict, u64)>,
    /// The last check's detail.
    last: String,
}

/// A finished check.
struct Done {
    key: Key,
    address: SocketAddr,
    result: CheckResult,
    detail: String,
    /// The agent's reply, when the check has `agent_port` and it answered.
    agent: Option<AgentReply>,
}

/// How long a proposed verdict not yet committed waits before it is proposed again.
const RETRY_MS: u64 = 2000;

/// The longest the checker sleeps: new assignments and config changes are seen this fast.
const IDLE: Duration = Duration::from_millis(100);

/// What the checker needs of the replicated state, read at once.
struct View {
    /// The backends assigned to this node, with their address and check settings.
    mine: BTreeMap<Key, (Target, CheckConfig)>,
    records: BTreeMap<String, BalancerRecord>,
}

fn view(node: &Node) -> View {
    let config = node.config();
    node.with_state(|sm| {
        let online: Vec<&str> = sm
            .cluster
            .nodes
            .iter()
            .filter(|(_, r)| r.liveness == Liveness::Online)
            .map(|(n, _)| n.as_str())
            .collect();
        let mut mine = BTreeMap::new();
        for b in &config.balancers {
            for t in super::discovery::targets(b, &config, &sm.cluster.resources) {
                if phalanx_core::lb::checker(&b.id, &t.name, &online) == Some(node.name.as_str()) {
                    mine.insert((b.id.clone(), t.name.clone()), (t, b.check.clone()));
                }
            }
        }
        let records = config
            .balancers
            .iter()
            .filter_map(|b| sm.cluster.balancers.get(&b.id).map(|r| (b.id.clone(), r.clone())))
            .collect();
        View { mine, records }
    })
}

/// Run this node's checks until the node is gone.
pub async fn run(node: Weak<Node>) {
    let Some(mut applied) = node.upgrade().map(|n| n.applied()) else {
        return;
    };
    let epoch = Instant::now();
    let now_ms = || epoch.elapsed().as_millis() as u64;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut slots: BTreeMap<Key, Slot> = BTreeMap::new();
    let mut wait = IDLE;
    loop {
        tokio::select! {
            r = applied.changed() => if r.is_err() {
                // The state machine is gone: the node is stopping.
                tokio::time::sleep(IDLE).await;
            },
            Some(d) = done_rx.recv() => {
                let Some(n) = node.upgrade() else { return };
                record(&n, &mut slots, d, now_ms());
            }
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(n) = node.upgrade() else { return };
        let v = view(&n);
        let now = now_ms();
        slots.retain(|k, s| v.mine.get(k).is_some_and(|(t, _)| t.address == s.address));
        let mut next = now + IDLE.as_millis() as u64;
        for (key, (target, check)) in &v.mine {
            let rec = v.records.get(&key.0).and_then(|b| b.backends.get(&key.1));
            let committed = rec.and_then(|r| r.health.as_ref());
            let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
                address: target.address,
                check: check.clone(),
                health: Health::from_verdict(&rec.map(|r| r.verdict()).unwrap_or_default()),
                synced: None,
                checking: false,
                proposed: None,
                last: String::new(),
            });
            slot.check = check.clone();
            let stamp = committed.map(|h| (h.by.clone(), h.at_ms));
            if stamp != slot.synced {
                if let Some(h) = committed {
                    slot.health.adopt(&h.verdict, now);
                    if slot.proposed.is_some_and(|(v, _)| v == h.verdict) {
                        slot.proposed = None;
                    }
                }
                slot.synced = stamp;
            }
            if slot.checking {
                continue;
            }
            let due = slot.health.next_check_at(&slot.check.health, now);
            if due > now {
                next = next.min(due);
                continue;
            }
            slot.checking = true;
            let (key, address, check, tx) = (key.clone(), slot.address, slot.check.clone(), done_tx.clone());
            tokio::spawn(async move {
                let (result, detail, agent) = super::probe::probe(&check, address).await;
                let _ = tx.send(Done {
                    key,
                    address,
                    result,
                    detail,
                    agent,
                });
            });
        }
        wait = Duration::from_millis(next.saturating_sub(now_ms()).max(1));
    }
}

/// A check's result: fed to the slot's health; a verdict that differs from the committed one
/// is proposed (once).
fn record(node: &Arc<Node>, slots: &mut BTreeMap<Key, Slot>, d: Done, now: u64) {
    let Some(slot) = slots.get_mut(&d.key).filter(|s| s.address == d.address) else {
        return;
    };
    slot.checking = false;
    if let Some(reply) = &d.agent {
        slot.health.record_agent(reply, now);
    }
    slot.health.record_check(&slot.check.health, d.result, now);
    slot.last = d.detail;
    let verdict = slot.health.verdict();
    let committed = node.with_state(|sm| {
        sm.cluster
            .balancers
            .get(&d.key.0)
            .and_then(|b| b.backends.get(&d.key.1))
            .and_then(|r| r.health.as_ref().map(|h| h.verdict))
    });
    let pending = slot.proposed.is_some_and(|(v, at)| v == verdict && now < at + RETRY_MS);
    if committed == Some(verdict) || pending {
        return;
    }
    slot.proposed = Some((verdict, now));
    propose(node, &d.key.0, &d.key.1, verdict, slot.last.clone());
}

/// Commit `verdict` of a backend, by this node, in the background (a write that fails is
/// proposed again by the next check after [`RETRY_MS`] if the verdict still differs).
pub fn propose(node: &Arc<Node>, balancer: &str, backend: &str, verdict: Verdict, detail: String) {
    let cmd = Command::BackendHealth {
        balancer: balancer.to_string(),
        backend: backend.to_string(),
        health: HealthRecord {
            verdict,
            by: node.name.clone(),
            at_ms: crate::mesh::unix_ms(),
            detail,
        },
    };
    let n = node.clone();
    let (b, be) = (balancer.to_string(), backend.to_string());
    node.spawn(async move {
        if let Err(e) = n.write(cmd).await {
            tracing::warn!(balancer = %b, backend = %be, error = %e, "backend verdict not committed");
        }
    });
}
