//! Which entries of the state a command changed, so that a persisted state machine writes only
//! those (a write costs what it changes, not the size of the cluster). Applying marks what it
//! may have changed; marking more than changed is harmless (the entry is written as it is),
//! marking less would lose a change on restart, so a test checks every command family against
//! a before/after comparison.

use super::{ClusterState, Command};
use std::collections::BTreeSet;

/// The entries a batch of commands changed (see [`ClusterState::apply_touching`]). An entry is
/// written as it now is, or deleted when it no longer exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Node records (attributes aside), by name.
    pub nodes: BTreeSet<String>,
    /// Every attribute of these nodes (added or removed: rewrite them all).
    pub node_attrs: BTreeSet<String>,
    /// Single attributes, as (node, key).
    pub attrs: BTreeSet<(String, String)>,
    /// Resource records, by name.
    pub resources: BTreeSet<String>,
    /// Fence device health, by device.
    pub fence_devices: BTreeSet<String>,
    pub plan: bool,
    /// The operator's constraints and who made them (`operator`, `operator_origin`).
    pub operator: bool,
    /// The committed configuration's versions.
    pub configs: bool,
    /// `config_version`, `max_node_id` and the cluster-wide `maintenance` flag.
    pub scalars: bool,
    /// The event history (kept beside the state: `crate::events`).
    pub events: bool,
    /// The load balancers' records (`balancers`, one entry).
    pub balancers: bool,
    /// Stick-table entries, as (balancer, key).
    pub sticks: BTreeSet<(String, String)>,
    /// The API's tokens (`tokens`, one entry).
    pub tokens: bool,
    /// What the members trust (`trust`, one entry).
    pub trust: bool,
}

impl Touched {
    /// Nothing marked.
    pub fn is_empty(&self) -> bool {
        *self == Touched::default()
    }

    /// Mark the resources that record `node` as running (before a change that forgets it).
    pub(super) fn resources_on(&mut self, state: &ClusterState, node: &str) {
        for (name, r) in &state.resources {
            if r.running.contains_key(node) {
                self.resources.insert(name.clone());
            }
        }
    }

    /// Mark what `cmd` names directly; the families mark their side effects themselves.
    pub(super) fn named_by(&mut self, cmd: &Command) {
        match cmd {
            Command::Bootstrap { nodes } => {
                self.scalars = true;
                for n in nodes {
                    self.nodes.insert(n.name.clone());
                    self.node_attrs.insert(n.name.clone());
                }
            }
            Command::AddNode { name, .. } | Command::RemoveNode { name } => {
                self.scalars = true;
                self.nodes.insert(name.clone());
                self.node_attrs.insert(name.clone());
            }
            Command::SetStandby { name, .. } => {
                self.scalars = true;
                self.nodes.insert(name.clone());
            }
            Command::SetLiveness { name, .. } => {
                self.nodes.insert(name.clone());
            }
            Command::SetLeaving { name, .. } => {
                self.node_attrs.insert(name.clone());
                self.nodes.insert(name.clone());
            }
            Command::SetAttr { name, key, .. } => {
                self.attrs.insert((name.clone(), key.clone()));
            }
            Command::SetMaintenance { node, .. } => {
                self.scalars = true;
                self.nodes.extend(node.clone());
            }
            Command::SetPlan { .. }
            | Command::SetPlanAfter { .. }
            | Command::SetPlanNotify { .. }
            | Command::ClaimAction { .. }
            | Command::ActionResult { .. } => {
                self.plan = true;
            }
            Command::MonitorFailed { rsc, .. } | Command::Probe { rsc, .. } | Command::Cleanup { rsc } => {
                self.resources.insert(rsc.clone());
            }
            Command::DeviceHealth { device, .. } => {
                self.fence_devices.insert(device.clone());
            }
            Command::Operator { .. } | Command::OperatorBy { .. } => {
                self.scalars = true;
                self.operator = true;
            }
            Command::ClearOperator { .. } | Command::ClearOperators { .. } => {
                self.operator = true;
            }
            Command::ApplyConfig { .. } => {
                self.configs = true;
            }
            Command::Stamped { cmd, .. } => self.named_by(cmd),
            Command::Note(_) | Command::AlertsDelivered { .. } | Command::Drill(_) => {
                self.events = true;
            }
            Command::BackendHealth { .. } | Command::BackendAdmin { .. } => {
                self.balancers = true;
            }
            // The family marks the entries it merged and the ones it expired.
            Command::Stick { .. } => {}
            Command::CreateToken { .. } | Command::RevokeToken { .. } => {
                self.tokens = true;
            }
            Command::SetTrust { .. } => {
                self.trust = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{act, bootstrapped};
    use super::super::{CallOutcome, DeviceHealth, Liveness};
    use super::*;
    use crate::scheduler::{ActionKind, OperatorConstraint, Role};

    /// What really differs between two states, as entries.
    fn diff(a: &ClusterState, b: &ClusterState) -> Touched {
        let mut t = Touched {
            plan: a.plan != b.plan,
            operator: (&a.operator, &a.operator_origin) != (&b.operator, &b.operator_origin),
            configs: a.configs != b.configs,
            balancers: a.balancers != b.balancers,
            tokens: a.tokens != b.tokens,
            trust: a.trust != b.trust,
            scalars: (a.config_version, a.max_node_id, a.maintenance)
                != (b.config_version, b.max_node_id, b.maintenance),
            ..Touched::default()
        };
        let names: BTreeSet<&String> = a.nodes.keys().chain(b.nodes.keys()).collect();
        for n in names {
            let (x, y) = (a.nodes.get(n), b.nodes.get(n));
            let strip = |r: Option<&super::super::NodeRecord>| {
                r.map(|r| super::super::NodeRecord {
                    attrs: Default::default(),
                    ..r.clone()
                })
            };
            if strip(x) != strip(y) {
                t.nodes.insert(n.clone());
            }
            let empty = Default::default();
            let (ax, ay) = (x.map_or(&empty, |r| &r.attrs), y.map_or(&empty, |r| &r.attrs));
            for k in ax.keys().chain(ay.keys()) {
                if ax.get(k) != ay.get(k) {
                    t.attrs.insert((n.clone(), k.clone()));
                }
            }
        }
        let rs: BTreeSet<&String> = a.resources.keys().chain(b.resources.keys()).collect();
        for r in rs {
            if a.resources.get(r) != b.resources.get(r) {
                t.resources.insert(r.clone());
            }
        }
        let bs: BTreeSet<&String> = a.sticks.keys().chain(b.sticks.keys()).collect();
        for bal in bs {
            let empty = crate::lb::StickTable::new();
            let (x, y) = (a.sticks.get(bal).unwrap_or(&empty), b.sticks.get(bal).unwrap_or(&empty));
            let keys: BTreeSet<&str> = x.iter().chain(y.iter()).map(|(k, _)| k).collect();
            for k in keys {
                if x.get(k) != y.get(k) {
                    t.sticks.insert((bal.clone(), k.to_string()));
                }
            }
        }
        let ds: BTreeSet<&String> = a.fence_devices.keys().chain(b.fence_devices.keys()).collect();
        for d in ds {
            if a.fence_devices.get(d) != b.fence_devices.get(d) {
                t.fence_devices.insert(d.clone());
            }
        }
        t
    }

    /// Every real change is marked (an attribute counts as marked when its node's attributes
    /// are all marked).
    fn assert_covered(real: &Touched, marked: &Touched, cmd: &Command) {
        assert!(
            real.nodes.is_subset(&marked.nodes),
            "{cmd:?}: nodes {real:?} vs {marked:?}"
        );
        for (n, k) in &real.attrs {
            assert!(
                marked.attrs.contains(&(n.clone(), k.clone())) || marked.node_attrs.contains(n),
                "{cmd:?}: attr {n}/{k}"
            );
        }
        assert!(
            real.resources.is_subset(&marked.resources),
            "{cmd:?}: resources {real:?} vs {marked:?}"
        );
        assert!(real.fence_devices.is_subset(&marked.fence_devices), "{cmd:?}: devices");
        assert!(!real.plan || marked.plan, "{cmd:?}: plan");
        assert!(!real.operator || marked.operator, "{cmd:?}: operator");
        assert!(!real.scalars || marked.scalars, "{cmd:?}: scalars");
        assert!(!real.balancers || marked.balancers, "{cmd:?}: balancers");
        assert!(!real.tokens || marked.tokens, "{cmd:?}: tokens");
        assert!(!real.trust || marked.trust, "{cmd:?}: trust");
        assert!(real.sticks.is_subset(&marked.sticks), "{cmd:?}: sticks");
    }

    #[test]
    fn every_family_marks_what_it_changes() {
        let mut s = bootstrapped(&["n1", "n2", "n3"]);
        for (rsc, node) in [("web", "n1"), ("db", "n1"), ("ip", "n2")] {
            s.resources
                .entry(rsc.into())
                .or_default()
                .running
                .insert(node.into(), Role::Started);
        }
        let live = |n: &str, l: Liveness| Command::SetLiveness {
            name: n.into(),
            liveness: l,
            at_ms: 7,
        };
        let result = |a: crate::scheduler::Action, outcome: CallOutcome| Command::ActionResult {
            plan_id: 1,
            index: 0,
            action: a,
            outcome,
            at_ms: 9,
            reason: Some("why".into()),
        };
        let cmds = vec![
            Command::SetAttr {
                name: "n1".into(),
                key: "k".into(),
                value: Some("v".into()),
            },
            live("n1", Liveness::Online),
            live("n1", Liveness::Offline),
            live("n1", Liveness::Online),
            live("n2", Liveness::Online),
            Command::SetLeaving {
                name: "n2".into(),
                leaving: true,
                lock: false,
            },
            live("n2", Liveness::Stopped),
            live("n2", Liveness::Online),
            Command::Probe {
                rsc: "web".into(),
                node: "n1".into(),
                role: Some(Role::Started),
            },
            Command::SetPlan {
                actions: vec![act(ActionKind::Stop, "web", "n1")],
                edges: vec![],
            },
            Command::ClaimAction {
                plan_id: 1,
                indices: vec![0],
                node: "n1".into(),
                incarnation: 3,
            },
            result(act(ActionKind::Stop, "web", "n1"), CallOutcome::Soft),
            result(act(ActionKind::Start, "db", "n2"), CallOutcome::Ok),
            result(act(ActionKind::Promote, "db", "n3"), CallOutcome::Hard),
            result(act(ActionKind::Fence, "n2", "n1"), CallOutcome::Soft),
            result(act(ActionKind::Fence, "n2", "n1"), CallOutcome::Ok),
            Command::MonitorFailed {
                rsc: "db".into(),
                node: "n3".into(),
                outcome: CallOutcome::Fatal,
                at_ms: 10,
                reason: None,
            },
            Command::Cleanup { rsc: "db".into() },
            Command::DeviceHealth {
                device: "pdu".into(),
                health: DeviceHealth::default(),
            },
            Command::Operator {
                constraint: OperatorConstraint {
                    rsc: "web".into(),
                    node: "n3".into(),
                    prefer: true,
                    expires_ms: None,
                },
            },
            Command::ClearOperator { rsc: "web".into() },
            Command::OperatorBy {
                constraint: OperatorConstraint {
                    rsc: "web".into(),
                    node: "n2".into(),
                    prefer: true,
                    expires_ms: Some(99),
                },
                by: "alice@ops1".into(),
                at_ms: 9,
                unit: vec!["svc".into()],
            },
            Command::ClearOperators {
                rscs: vec!["svc".into(), "web".into()],
            },
            Command::SetMaintenance {
                node: Some("n3".into()),
                on: true,
            },
            Command::SetMaintenance { node: None, on: true },
            Command::BackendHealth {
                balancer: "lb".into(),
                backend: "web@n1".into(),
                health: super::super::HealthRecord {
                    verdict: crate::lb::Verdict::default(),
                    by: "n2".into(),
                    at_ms: 3,
                    detail: "pass".into(),
                },
            },
            Command::BackendAdmin {
                balancer: "lb".into(),
                backend: "web@n1".into(),
                change: super::super::BackendAdminChange {
                    admin: Some(crate::lb::AdminState::Drain),
                    weight: None,
                },
                by: None,
                at_ms: 4,
            },
            Command::Stick {
                balancer: "lb".into(),
                at_ms: 10,
                config: crate::lb::StickConfig {
                    max_idle_ms: Some(5),
                    max_life_ms: None,
                    capacity: 1,
                },
                entries: vec![(
                    "10.0.0.1".into(),
                    crate::lb::StickEntry {
                        backend: crate::lb::BackendId(1),
                        created_ms: 9,
                        last_seen_ms: 9,
                    },
                )],
            },
            Command::Stick {
                balancer: "lb".into(),
                at_ms: 11,
                config: crate::lb::StickConfig {
                    max_idle_ms: Some(5),
                    max_life_ms: None,
                    capacity: 1,
                },
                entries: vec![(
                    "10.0.0.2".into(),
                    crate::lb::StickEntry {
                        backend: crate::lb::BackendId(2),
                        created_ms: 11,
                        last_seen_ms: 11,
                    },
                )],
            },
            Command::SetStandby {
                name: "n2".into(),
                standby: true,
            },
            Command::SetAttr {
                name: "n3".into(),
                key: "a".into(),
                value: Some("1".into()),
            },
            Command::RemoveNode { name: "n3".into() },
            Command::AddNode {
                name: "n3".into(),
                id: None,
                links: vec!["127.0.0.1:99".into()],
                api: "127.0.0.1:98".into(),
            },
        ];
        for cmd in cmds {
            let before = s.clone();
            let mut marked = Touched::default();
            s.apply_touching(&cmd, &mut marked);
            assert_covered(&diff(&before, &s), &marked, &cmd);
        }
        let mut fresh = ClusterState::default();
        let boot = Command::Bootstrap {
            nodes: bootstrapped(&["a", "b"])
                .nodes
                .iter()
                .map(|(name, r)| super::super::NewNode {
                    name: name.clone(),
                    id: r.id,
                    links: r.links.clone(),
                    api: r.api.clone(),
                })
                .collect(),
        };
        let mut marked = Touched::default();
        fresh.apply_touching(&boot, &mut marked);
        assert_covered(&diff(&ClusterState::default(), &fresh), &marked, &boot);
    }
}
