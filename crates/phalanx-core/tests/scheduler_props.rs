//! The scheduler's safety invariants over random states (DESIGN §3): whatever the input, the
//! plan is deterministic; applying it never leaves a non-clone resource active on two nodes or
//! more than `promoted_max` primaries; nothing starts on a lost, standby or maintenance node;
//! group members end on one node; and every stop of a resource precedes its starts.

use phalanx_core::model::Role;
use phalanx_core::scheduler::{schedule, ActionKind, Input, NodeState, OperatorConstraint, ResourceState};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const NODES: [&str; 4] = ["n1", "n2", "n3", "n4"];

fn config() -> phalanx_core::Config {
    let mut src = String::from("[cluster]\nname = \"p\"\n");
    // One fence device for every node (no host_map).
    src += "[[fence_device]]\nname = \"pdu\"\nagent = \"fence_dummy\"\n";
    for (i, n) in NODES.iter().enumerate() {
        src += &format!(
            "[[node]]\nname = \"{n}\"\nlinks = [\"127.0.0.1:{}\"]\napi = \"127.0.0.1:{}\"\n",
            1000 + i,
            2000 + i
        );
    }
    src += r#"
[[resource]]
id = "ip"
agent = "vip"
[[resource]]
id = "web"
agent = "ocf:heartbeat:Dummy"
migration_threshold = 2
[[group]]
id = "stack"
members = ["ip", "web"]
[[resource]]
id = "batch"
agent = "exec"
stickiness = 50
failback = "delayed:10s"
[[resource]]
id = "pg"
agent = "ocf:heartbeat:Stateful"
[[clone]]
id = "db"
resource = "pg"
clone_max = 3
promotable = true
promoted_max = 1
notify = true
[[constraint]]
location = "stack"
node = "n1"
score = 100
[[constraint]]
colocate = "batch"
with = "stack"
score = -50
[[constraint]]
order = ["db", "stack"]
"#;
    phalanx_core::config::parse(&src).unwrap()
}

fn node_state() -> impl Strategy<Value = NodeState> {
    (
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
        0u64..20_000,
        prop::bool::weighted(0.5),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(online, standby, maintenance, since, unclean, stop_failed, backoff)| NodeState {
                id: 0,
                online,
                standby,
                // Some online nodes are stopping (the tuple is full: drawn from `since`).
                leaving: online && since % 10 == 0,
                locked: BTreeSet::new(),
                maintenance,
                online_since_ms: since,
                missing_agents: BTreeSet::new(),
                // A lost node not yet confirmed down, or an online one where a stop failed.
                unclean: (unclean && !online) || (stop_failed && online),
                fence_failures: backoff as u32,
                // Some nodes wait out a retry backoff (now is 20,000).
                fence_retry_at_ms: if backoff { 30_000 } else { 0 },
                fence_error: backoff.then(|| "pdu: timed out".into()),
                fence_reason: (stop_failed && online).then(|| "stop of web failed".into()),
                attrs: BTreeMap::new(),
            },
        )
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![4 => Just(Role::Started), 1 => Just(Role::Promoted), 1 => Just(Role::Failed)]
}

fn rsc_state() -> impl Strategy<Value = ResourceState> {
    (
        prop::collection::btree_map(
            prop::sample::select(NODES.to_vec()).prop_map(String::from),
            role(),
            0..3,
        ),
        prop::collection::btree_map(
            prop::sample::select(NODES.to_vec()).prop_map(String::from),
            prop::collection::vec(0u64..20_000, 0..3),
            0..2,
        ),
    )
        .prop_map(|(running, failures)| ResourceState {
            running,
            failures,
            banned: Default::default(),
            fatal: false,
            maintenance: false,
        })
}

fn input() -> impl Strategy<Value = Input> {
    (
        prop::collection::vec(node_state(), 4),
        prop::collection::vec(rsc_state(), 4),
        prop::option::of((prop::sample::select(NODES.to_vec()), any::<bool>())),
        prop::option::of(prop::sample::select(NODES.to_vec())),
    )
        .prop_map(|(nodes, rscs, op, fencer)| Input {
            now_ms: 20_000,
            nodes: NODES.iter().map(|n| n.to_string()).zip(nodes).collect(),
            resources: ["ip", "web", "batch", "pg"]
                .iter()
                .map(|r| r.to_string())
                .zip(rscs)
                .collect(),
            operator: op
                .map(|(n, prefer)| {
                    vec![OperatorConstraint {
                        rsc: "stack".into(),
                        node: n.into(),
                        prefer,
                        expires_ms: None,
                    }]
                })
                .unwrap_or_default(),
            maintenance: false,
            fencer: fencer.map(String::from),
            members_only: true,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]
    #[test]
    fn invariants_hold(input in input()) {
        let cfg = config();
        let plan = schedule(&cfg, &input);
        prop_assert_eq!(&plan, &schedule(&cfg, &input), "not deterministic");
        // The edges leave an order to run the actions in (no cycle: a plan that waits for
        // itself never finishes).
        let mut indegree = vec![0usize; plan.actions.len()];
        for (_, b) in &plan.edges {
            indegree[*b] += 1;
        }
        let mut ready: Vec<usize> = (0..plan.actions.len()).filter(|i| indegree[*i] == 0).collect();
        let mut ran = 0;
        while let Some(i) = ready.pop() {
            ran += 1;
            for (a, b) in &plan.edges {
                if *a == i {
                    indegree[*b] -= 1;
                    if indegree[*b] == 0 {
                        ready.push(*b);
                    }
                }
            }
        }
        prop_assert_eq!(ran, plan.actions.len(), "the plan's edges have a cycle\n{}", plan.render());

        // Apply the plan to what runs on reachable nodes.
        let mut after: BTreeMap<String, BTreeMap<String, Role>> = BTreeMap::new();
        for (r, st) in &input.resources {
            let live: BTreeMap<String, Role> = st.running.iter()
                .filter(|(n, _)| input.nodes[*n].online)
                .map(|(n, role)| (n.clone(), *role)).collect();
            after.insert(r.clone(), live);
        }
        // Fenced in this plan, before action `i` (an edge from its Fence action to `i`).
        let fenced_before = |n: &str, i: usize| {
            plan.actions.iter().enumerate().any(|(f, a)| a.kind == ActionKind::Fence && a.rsc == n && plan.edges.contains(&(f, i)))
        };
        let fenced = |n: &str| plan.actions.iter().any(|a| a.kind == ActionKind::Fence && a.rsc == n);
        for (i, a) in plan.actions.iter().enumerate() {
            let node = &input.nodes[&a.node];
            if a.kind == ActionKind::Fence {
                prop_assert!(input.nodes[&a.rsc].unclean, "fence of a clean node: {:?}", a);
                prop_assert!(a.node != a.rsc && node.online && !node.unclean, "fence run by the wrong node: {:?}", a);
                prop_assert!(input.nodes[&a.rsc].fence_retry_at_ms <= input.now_ms, "fence during its backoff: {:?}", a);
                for m in after.values_mut() {
                    m.remove(&a.rsc);
                }
                continue;
            }
            let m = after.entry(a.rsc.clone()).or_default();
            prop_assert!(!fenced(&a.node), "an action on a node being fenced: {:?}", a);
            match a.kind {
                ActionKind::Fence => {}
                ActionKind::Stop => { m.remove(&a.node); }
                ActionKind::Start => {
                    prop_assert!(node.online && !node.standby, "start on an unusable node: {:?}", a);
                    // DESIGN.md invariant 3: nothing held by a lost node not yet confirmed down
                    // starts elsewhere (a group or clone is held whole) before its recorded fence.
                    let held = |r: &str| input.resources.get(r).is_some_and(|st| st.running.keys().any(|n| input.nodes[n].unclean && !fenced_before(n, i)));
                    let unit: Vec<&str> = match a.rsc.as_str() {
                        "ip" | "web" => vec!["ip", "web"],
                        other => vec![other],
                    };
                    prop_assert!(!unit.iter().any(|r| held(r)), "start of {:?} while held by an unclean node\n{}", a, plan.render());
                    prop_assert!(!node.maintenance || input.resources[&a.rsc].running.contains_key(&a.node), "new start on a maintenance node: {:?}", a);
                    m.insert(a.node.clone(), Role::Started);
                }
                ActionKind::Promote => { m.insert(a.node.clone(), Role::Promoted); }
                ActionKind::Demote => { m.insert(a.node.clone(), Role::Started); }
                ActionKind::Notify { .. } => {
                    prop_assert!(node.online, "a notification to a node that cannot take it: {:?}", a);
                    prop_assert_eq!(a.rsc.as_str(), "pg", "a notification of a clone without notify");
                }
            }
        }
        // Hands off anything running on a node in maintenance (unmanaged), whatever it was.
        // (maintenance is per unit: one group member on such a node leaves the whole group alone)
        // Likewise a unit held by a lost node not yet confirmed down: no action touches it.
        let on_maint = |r: &str| {
            input.resources[r]
                .running
                .keys()
                .any(|n| input.nodes[n].maintenance || (input.nodes[n].unclean && !fenced(n)))
        };
        let unmanaged_rsc = |r: &str| match r {
            "ip" | "web" => on_maint("ip") || on_maint("web"),
            r => on_maint(r),
        };
        for r in ["ip", "web", "batch"] {
            if !unmanaged_rsc(r) {
                prop_assert!(after[r].len() <= 1, "{r} active on {:?}\n{}", after[r], plan.render());
            }
        }
        let primaries = after["pg"].values().filter(|r| **r == Role::Promoted).count();
        if !unmanaged_rsc("pg") {
            prop_assert!(primaries <= 1, "{primaries} primaries\n{}", plan.render());
        }
        prop_assert!(after["pg"].len() <= 3);
        // Group members end together (unless the group is unmanaged: a member on a node in
        // maintenance means hands off, whatever the input was).
        let ip: BTreeSet<_> = after["ip"].keys().collect();
        let web: BTreeSet<_> = after["web"].keys().collect();
        let unmanaged = unmanaged_rsc("ip") || unmanaged_rsc("web");
        if !ip.is_empty() && !web.is_empty() && !unmanaged {
            prop_assert_eq!(ip, web, "group split\n{}", plan.render());
        }
        // Every stop of a resource is ordered before each of its starts.
        for (i, a) in plan.actions.iter().enumerate() {
            for (j, b) in plan.actions.iter().enumerate() {
                if a.rsc == b.rsc && a.kind == ActionKind::Stop && b.kind == ActionKind::Start && a.rsc != "pg" {
                    prop_assert!(plan.edges.contains(&(i, j)), "stop {:?} not before start {:?}\n{}", a, b, plan.render());
                }
            }
        }
    }
}
