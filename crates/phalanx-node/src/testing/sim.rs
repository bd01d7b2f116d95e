//! The seeded simulation's driver: 3 or 5 real [`Node`]s in one process on the fake network
//! ([`FakeNet`]), each with fake agents and a fake fence device backed by the [`World`], on
//! paused tokio time. It plays the seed's [`schedule`](super::schedule) step by step: crashes (a
//! power cut: the node's tasks aborted, Raft stopped; it boots again later on the same redb
//! database), pauses (off the network and its calls frozen, what it runs keeps running),
//! symmetric and one-way partitions, heartbeat loss, failing monitors, heals, and settles. A
//! fence powers its target off at once and the driver reboots it two seconds later.
//!
//! After every change it tells the world which machines are on a quorate side (the ground
//! truth: powered, not paused, reaching a majority of the voters both ways), and the world
//! checks invariants 2–4 at every agent call (see `world`). A settle step heals everything and
//! requires liveness within a bound of virtual time: every node up, one leader that all of them
//! name, no plan action pending, every resource placed in the world (the group together on one
//! node, the clones on every node, one primary) and the leader's state agreeing with the world.
//! A run stops at the first violation and reports the seed, the steps as they were resolved, and
//! the last events of the world: enough to replay it (`tests/sim/run --seed S --steps K`).
//!
//! `SIM_DEBUG=1` in the environment prints each step as it runs, and each settle poll.
//!
//! The schedule is a function of the seed; the interleaving inside a step is nearly so (one
//! thread, paused time, seeded loss), but tokio's `select!` draws its branch order from an
//! unseeded generator, so a replay may take a different path through a race.

use super::schedule::{self, Fault, Step, Target, Who};
use super::world::{Event, MonitorFailure, Violation, World};
use crate::fakenet::FakeNet;
use crate::node::{Node, NodeError, NodeOptions, Seams};
use crate::ClusterKey;
use phalanx_core::config::Config;
use phalanx_core::scheduler::Role;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the driver looks at the world between steps (fenced nodes, due boots, resumes).
const SLICE: Duration = Duration::from_millis(25);
/// A fenced machine boots again this long after its fence.
const REBOOT: Duration = Duration::from_secs(2);
/// How often a settle step looks whether the cluster is live.
const POLL: Duration = Duration::from_millis(100);

/// What can stop a run before its checks can (a harness failure, not a violation).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the simulation's config does not parse: {0}")]
    Config(String),
    #[error("opening node {node}'s in-memory database: {source}")]
    Store {
        node: String,
        source: Box<crate::raft::store::StoreError>,
    },
    #[error("starting node {node}: {source}")]
    Start { node: String, source: Box<NodeError> },
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub steps: usize,
    /// Cluster size (None: from the seed, `schedule::nodes_for`).
    pub nodes: Option<usize>,
    /// How long a settle step may take, in virtual time.
    pub settle_bound: Duration,
}

impl Options {
    pub fn new(seed: u64, steps: usize) -> Options {
        Options {
            seed,
            steps,
            nodes: None,
            settle_bound: Duration::from_secs(60),
        }
    }
}

/// What one seed's run found.
#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    pub seed: u64,
    pub nodes: usize,
    /// Steps run (all of them, or up to the first violation).
    pub steps: usize,
    pub virtual_ms: u64,
    /// Agent calls, fences, crashes, boots and injections recorded by the world.
    pub events: usize,
    pub violations: Vec<Violation>,
    /// The steps as they were resolved (what hit whom, when): the replay trace.
    pub trace: Vec<String>,
    /// On a violation: the world's last events before it.
    pub events_tail: Vec<Event>,
    /// The command that replays this run.
    pub replay: String,
}

impl SeedReport {
    /// One violation, with the seed, the replay command and the trace, as printed.
    pub fn details(&self) -> Vec<String> {
        self.violations
            .iter()
            .map(|v| {
                let mut s = format!(
                    "seed {} ({} nodes), invariant {} at {:.3} s: {}\n  replay: {}\n  steps:\n",
                    self.seed,
                    self.nodes,
                    v.invariant,
                    v.at_ms as f64 / 1000.0,
                    v.what,
                    self.replay
                );
                for t in &self.trace {
                    s += &format!("    {t}\n");
                }
                s += "  last events:\n";
                for e in &self.events_tail {
                    s += &format!("    {:>9.3} s {:<3} {}\n", e.at_ms as f64 / 1000.0, e.node, e.what);
                }
                s
            })
            .collect()
    }
}

/// Make wall-clock stamps (`mesh::unix_ms`) follow tokio's clock in this process, so that on
/// paused time failure timeouts and fence backoffs expire in virtual time. For test processes
/// and `phalanx-lab sim` only.
pub fn follow_tokio_clock() {
    crate::mesh::FOLLOW_TOKIO_CLOCK.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The simulated cluster's config: `nodes` nodes at a 100 ms heartbeat, fencing required
/// through one power switch (the world's), a group of two primitives (`vip`, `web`: web moves
/// after two failures, forgotten after 20 s), a clone on every node (`cache`), a promotable
/// clone with one primary (`db`).
pub fn config(nodes: usize) -> Result<Config, SimError> {
    let mut src = String::from("[cluster]\nname = \"sim\"\nheartbeat_interval = \"100ms\"\nfencing = \"required\"\n");
    let mut host_map = Vec::new();
    for i in 0..nodes {
        let n = i + 1;
        src += &format!(
            "[[node]]\nname = \"n{n}\"\nlinks = [\"127.0.1.{n}:7400\", \"127.0.2.{n}:7400\"]\napi = \"127.0.3.{n}:7480\"\n"
        );
        host_map.push(format!("n{n} = \"{n}\""));
    }
    src += &format!(
        "[[fence_device]]\nname = \"power\"\nagent = \"fence_sim\"\nhost_map = {{ {} }}\n",
        host_map.join(", ")
    );
    src += r#"
[[resource]]
id = "vip"
agent = "ocf:sim:Dummy"
monitor = { interval = "1s", timeout = "5s" }

[[resource]]
id = "web"
agent = "ocf:sim:Dummy"
monitor = { interval = "1s", timeout = "5s" }
migration_threshold = 2
failure_timeout = "20s"

[[group]]
id = "stack"
members = ["vip", "web"]

[[resource]]
id = "cache"
agent = "ocf:sim:Dummy"
monitor = { interval = "1s", timeout = "5s" }

[[clone]]
id = "caches"
resource = "cache"

[[resource]]
id = "db"
agent = "ocf:sim:Stateful"
monitor = { interval = "1s", timeout = "5s" }

[[clone]]
id = "dbs"
resource = "db"
promotable = true
promoted_max = 1
"#;
    phalanx_core::config::parse(&src).map_err(|e| SimError::Config(format!("{e:?}")))
}

/// One machine's node and its fate.
struct Slot {
    index: usize,
    /// Its disk: kept across crashes and reboots.
    db: Arc<redb::Database>,
    node: Option<Arc<Node>>,
    /// Down: boots again then.
    boot_at: Option<Instant>,
    /// Paused: resumes then.
    resume_at: Option<Instant>,
}

struct Sim {
    config: Config,
    key: ClusterKey,
    net: FakeNet,
    world: Arc<World>,
    slots: BTreeMap<String, Slot>,
    trace: Vec<String>,
}

/// Run one seed. Needs a current-thread tokio runtime with paused time (`start_paused`).
pub async fn run_seed(opts: &Options) -> Result<SeedReport, SimError> {
    follow_tokio_clock();
    let nodes = opts.nodes.unwrap_or_else(|| schedule::nodes_for(opts.seed));
    let steps = schedule::schedule(opts.seed, opts.steps, nodes);
    let config = config(nodes)?;
    let world = World::new(&config);
    let mut slots = BTreeMap::new();
    for (index, n) in config.nodes.iter().enumerate() {
        let db = crate::raft::store::open_in_memory().map_err(|source| SimError::Store {
            node: n.name.clone(),
            source: Box::new(source),
        })?;
        slots.insert(
            n.name.clone(),
            Slot {
                index,
                db,
                node: None,
                boot_at: None,
                resume_at: None,
            },
        );
    }
    let net = FakeNet::new(opts.seed);
    let off = net.clone();
    world.on_power_off(Box::new(move |name| off.set_down(name, true)));
    let mut sim = Sim {
        key: ClusterKey::from_bytes(&[7u8; 32]),
        net,
        world,
        slots,
        trace: Vec::new(),
        config,
    };
    let names: Vec<String> = sim.slots.keys().cloned().collect();
    for n in &names {
        sim.boot(n).await?;
        if std::env::var_os("SIM_DEBUG").is_some() {
            eprintln!("booted {n}");
        }
    }
    let mut ran = 0;
    for (k, step) in steps.iter().enumerate() {
        ran = k + 1;
        sim.step(k, step, opts.settle_bound).await?;
        if !sim.world.violations().is_empty() {
            break;
        }
    }
    if sim.world.violations().is_empty() {
        sim.check_event_histories();
    }
    let violations = sim.world.violations();
    let report = SeedReport {
        seed: opts.seed,
        nodes,
        steps: ran,
        virtual_ms: sim.world.now_ms(),
        events: sim.world.event_count(),
        events_tail: if violations.is_empty() {
            Vec::new()
        } else {
            sim.world.events_tail(events_shown())
        },
        violations,
        trace: std::mem::take(&mut sim.trace),
        replay: format!(
            "tests/sim/run --seed {} --steps {ran}{}",
            opts.seed,
            opts.nodes.map(|n| format!(" --nodes {n}")).unwrap_or_default()
        ),
    };
    for slot in sim.slots.values_mut() {
        if let Some(n) = slot.node.take() {
            n.crash().await;
        }
    }
    Ok(report)
}

impl Sim {
    /// Every node holds the same event history: where two nodes' kept histories overlap, the
    /// same events under the same numbers (it is derived from the log as it is applied).
    fn check_event_histories(&self) {
        let histories: Vec<(String, Vec<phalanx_core::events::Event>)> = self
            .slots
            .iter()
            .filter_map(|(name, s)| {
                let n = s.node.as_ref()?;
                Some((name.clone(), n.with_state(|sm| sm.events.since(0).cloned().collect())))
            })
            .collect();
        for (i, (a, ea)) in histories.iter().enumerate() {
            for (b, eb) in &histories[i + 1..] {
                let by_seq: BTreeMap<u64, &phalanx_core::events::Event> = eb.iter().map(|e| (e.seq, e)).collect();
                if let Some(e) = ea.iter().find(|e| by_seq.get(&e.seq).is_some_and(|o| *o != *e)) {
                    self.world.report(
                        "events",
                        format!(
                            "{a} and {b} hold different events #{}: {e:?} / {:?}",
                            e.seq, by_seq[&e.seq]
                        ),
                    );
                    return;
                }
            }
        }
    }

    fn name(&self, i: usize) -> String {
        self.config.nodes[i % self.config.nodes.len()].name.clone()
    }

    fn up(&self, name: &str) -> bool {
        self.slots
            .get(name)
            .is_some_and(|s| s.node.is_some() && s.resume_at.is_none())
    }

    /// Machines crashed or paused.
    fn faulty(&self) -> usize {
        self.slots
            .values()
            .filter(|s| s.node.is_none() || s.resume_at.is_some())
            .count()
    }

    /// Power `name` on and start its node on its own database.
    async fn boot(&mut self, name: &str) -> Result<(), SimError> {
        let handle = self.world.power_on(name);
        let slot = self.slots.get_mut(name).expect("a slot per configured node");
        slot.boot_at = None;
        slot.resume_at = None;
        let spec = &self.config.nodes[slot.index];
        let (out, rx) = self.net.attach(name, &spec.links);
        let node = Node::start(
            NodeOptions {
                config: self.config.clone(),
                config_text: None,
                name: name.to_string(),
                id: slot.index as u64 + 1,
                links: spec.links.clone(),
                api: spec.api,
                key: self.key.clone().into(),
                bootstrap: true,
                runner: Some(crate::agents::Runner::fake(name, handle.clone())),
                seams: Seams {
                    fence: Some(handle),
                    forward: Some(self.net.forwarder(name)),
                },
                mesh_runtime: None,
                sessions_store: None,
                tls: crate::transport::Tls::ephemeral(name),
                pki: None,
            },
            slot.db.clone(),
            self.net.raft_network(name),
            out,
            rx,
        )
        .await
        .map_err(|source| SimError::Start {
            node: name.to_string(),
            source: Box::new(source),
        })?;
        self.net.register_node(&node);
        self.net.set_down(name, false);
        slot.node = Some(node);
        self.refresh_quorum();
        Ok(())
    }

    /// Stop `name`'s node at once (it is off the network first).
    async fn kill(&mut self, name: &str) {
        self.net.set_down(name, true);
        let slot = self.slots.get_mut(name).expect("a slot per configured node");
        slot.resume_at = None;
        if let Some(n) = slot.node.take() {
            n.crash().await;
        }
    }

    fn resume(&mut self, name: &str) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.resume_at = None;
        }
        self.net.set_down(name, false);
        self.refresh_quorum();
        self.world.thaw(name);
    }

    /// The ground truth of quorum, to the world: a machine is on a quorate side when it is up
    /// and reaches a majority of the voters (itself included) both ways.
    fn refresh_quorum(&self) {
        let names: Vec<&String> = self.slots.keys().collect();
        let majority = names.len() / 2 + 1;
        let quorate: BTreeSet<String> = names
            .iter()
            .filter(|a| self.up(a) && !self.net.is_down(a))
            .filter(|a| {
                let peers = names
                    .iter()
                    .filter(|b| *b != *a && self.up(b) && self.net.can_reach(a, b) && self.net.can_reach(b, a))
                    .count();
                peers + 1 >= majority
            })
            .map(|a| a.to_string())
            .collect();
        self.world.set_quorate(&quorate);
    }

    /// Fenced machines go down (their node stops) and boot again after `REBOOT`; due boots and
    /// resumes happen.
    async fn housekeeping(&mut self) -> Result<(), SimError> {
        let now = Instant::now();
        for name in self.world.take_fenced() {
            self.kill(&name).await;
            if let Some(slot) = self.slots.get_mut(&name) {
                slot.boot_at = Some(now + REBOOT);
            }
        }
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| s.boot_at.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for n in due {
            self.boot(&n).await?;
        }
        let resumes: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| s.resume_at.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for n in resumes {
            self.resume(&n);
        }
        self.refresh_quorum();
        Ok(())
    }

    /// Let the cluster run for `d` (virtual), stopping early on a violation.
    async fn run_for(&mut self, d: Duration) -> Result<(), SimError> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            tokio::time::sleep(SLICE.min(until - Instant::now())).await;
            self.housekeeping().await?;
            if !self.world.violations().is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// The node running the group (its first member), if any.
    fn holder(&self) -> Option<String> {
        let first = self.config.resources.groups.values().next()?.members.first()?.clone();
        self.world.placement().get(&first)?.keys().next().cloned()
    }

    /// The leader most up nodes name.
    fn leader(&self) -> Option<String> {
        let mut votes: BTreeMap<String, usize> = BTreeMap::new();
        for s in self.slots.values() {
            if let Some(l) = s.node.as_ref().and_then(|n| n.status().leader) {
                *votes.entry(l).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, v)| *v).map(|(l, _)| l)
    }

    fn resolve(&self, who: Who) -> String {
        match who {
            Who::Node(i) => Some(self.name(i)),
            Who::Holder => self.holder(),
            Who::Leader => self.leader(),
        }
        .unwrap_or_else(|| self.name(0))
    }

    /// Apply one step, then let it run for its hold; a settle waits for liveness.
    async fn step(&mut self, k: usize, step: &Step, settle_bound: Duration) -> Result<(), SimError> {
        let at = self.world.now_ms() as f64 / 1000.0;
        let minority = (self.slots.len() - 1) / 2;
        let what = match &step.fault {
            Fault::Crash { who, down_ms } => {
                let t = self.resolve(*who);
                if !self.up(&t) || self.faulty() >= minority {
                    format!("crash {t}: skipped (down, paused, or a minority is already)")
                } else {
                    self.world.crash(&t);
                    self.kill(&t).await;
                    if let Some(s) = self.slots.get_mut(&t) {
                        s.boot_at = Some(Instant::now() + Duration::from_millis(*down_ms));
                    }
                    self.refresh_quorum();
                    format!("crash {t} ({who:?}), boots after {down_ms} ms")
                }
            }
            Fault::Pause { who, for_ms } => {
                let t = self.resolve(*who);
                if !self.up(&t) || self.faulty() >= minority {
                    format!("pause {t}: skipped (down, paused, or a minority is already)")
                } else {
                    self.world.freeze(&t);
                    self.net.set_down(&t, true);
                    if let Some(s) = self.slots.get_mut(&t) {
                        s.resume_at = Some(Instant::now() + Duration::from_millis(*for_ms));
                    }
                    self.refresh_quorum();
                    format!("pause {t} ({who:?}) for {for_ms} ms")
                }
            }
            Fault::Partition { who, size } => {
                let first = self.slots[&self.resolve(*who)].index;
                let side: Vec<String> = (0..*size).map(|i| self.name(first + i)).collect();
                let rest: Vec<String> = self.slots.keys().filter(|n| !side.contains(n)).cloned().collect();
                let a: Vec<&str> = side.iter().map(String::as_str).collect();
                let b: Vec<&str> = rest.iter().map(String::as_str).collect();
                self.net.partition(&[&a, &b]);
                self.refresh_quorum();
                format!("partition {side:?} | {rest:?} ({who:?})")
            }
            Fault::OneWay { who } => {
                let t = self.resolve(*who);
                for o in self.slots.keys().filter(|o| **o != t) {
                    self.net.cut_one_way(&t, o);
                }
                self.refresh_quorum();
                format!("one-way: nothing from {t} ({who:?}) reaches the others")
            }
            Fault::Loss { percent } => {
                self.net.set_loss_percent(*percent);
                format!("loss {percent}% of heartbeats")
            }
            Fault::MonitorFail { target, died } => {
                let rsc = match target {
                    Target::Group => "web",
                    Target::Clone => "cache",
                    Target::Primary => "db",
                };
                let how = if *died {
                    MonitorFailure::Died
                } else {
                    MonitorFailure::Hung
                };
                match self.world.fail_monitor(rsc, how) {
                    Some(n) => format!("monitor of {rsc} fails on {n} ({how:?})"),
                    None => format!("monitor of {rsc}: skipped (not running anywhere)"),
                }
            }
            Fault::Heal => {
                self.net.heal();
                self.net.set_loss_percent(0);
                self.refresh_quorum();
                "heal the network".to_string()
            }
            Fault::Settle => {
                self.net.heal();
                self.net.set_loss_percent(0);
                let names: Vec<String> = self.slots.keys().cloned().collect();
                for n in &names {
                    if self.slots[n].resume_at.is_some() {
                        self.resume(n);
                    }
                }
                for n in &names {
                    if self.slots[n].node.is_none() {
                        self.boot(n).await?;
                    }
                }
                self.refresh_quorum();
                "settle: heal everything, boot every machine".to_string()
            }
        };
        self.trace
            .push(format!("#{k} @{at:.1}s {what} (hold {} ms)", step.hold_ms));
        if std::env::var_os("SIM_DEBUG").is_some() {
            eprintln!("{}", self.trace.last().map(String::as_str).unwrap_or(""));
        }
        self.run_for(Duration::from_millis(step.hold_ms)).await?;
        if step.fault == Fault::Settle {
            self.settle(settle_bound).await?;
        }
        Ok(())
    }

    /// Wait until the cluster is live, or report why it is not after `bound`.
    async fn settle(&mut self, bound: Duration) -> Result<(), SimError> {
        let since = Instant::now();
        let deadline = since + bound;
        loop {
            let why = self.not_live();
            if std::env::var_os("SIM_DEBUG").is_some() {
                eprintln!("  settle @{:.1}s: {why:?}", self.world.now_ms() as f64 / 1000.0);
            }
            let Some(why) = why else {
                let took = Instant::now().saturating_duration_since(since).as_millis();
                if let Some(last) = self.trace.last_mut() {
                    *last += &format!(", live after {took} ms");
                }
                return Ok(());
            };
            if !self.world.violations().is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.world.report(
                    "liveness",
                    format!("not live {} s after healing everything: {why}", bound.as_secs()),
                );
                return Ok(());
            }
            self.run_for(POLL).await?;
        }
    }

    /// Why the cluster is not live now (None: it is).
    fn not_live(&self) -> Option<String> {
        let nodes: Vec<&Arc<Node>> = self.slots.values().filter_map(|s| s.node.as_ref()).collect();
        if nodes.len() < self.slots.len() {
            return Some("a machine is still down".into());
        }
        let st: Vec<_> = nodes.iter().map(|n| n.status()).collect();
        let leaders: BTreeSet<Option<String>> = st.iter().map(|s| s.leader.clone()).collect();
        let leader = match (leaders.len(), leaders.iter().next()) {
            (1, Some(Some(l))) if st.iter().all(|s| s.quorum) => l.clone(),
            _ => {
                return Some(format!(
                    "no single leader: {:?}",
                    st.iter().map(|s| (&s.node, &s.leader, s.quorum)).collect::<Vec<_>>()
                ))
            }
        };
        let lead = nodes.iter().find(|n| n.name == leader)?;
        let lst = st.iter().find(|s| s.node == leader)?;
        if lst.plan_pending > 0 {
            return Some(format!("{} plan action(s) pending", lst.plan_pending));
        }
        let placed = self.world.placement();
        let names: BTreeSet<String> = self.slots.keys().cloned().collect();
        let r = &self.config.resources;
        for (id, p) in r.instances() {
            let on = placed.get(&id).cloned().unwrap_or_default();
            let clone = r.clone_of(&p.id);
            let ok = match clone {
                None => on.len() == 1,
                Some(c) => {
                    let primaries = on.values().filter(|r| **r == Role::Promoted).count();
                    on.keys().cloned().collect::<BTreeSet<_>>() == names
                        && (!c.promotable || primaries == c.promoted_max as usize)
                }
            };
            if !ok {
                let rec = lead.cluster_state().cluster.resources.get(&id).cloned();
                return Some(format!("{id} runs on {on:?}; the leader's record: {rec:?}"));
            }
        }
        for g in r.groups.values() {
            let homes: BTreeSet<Option<&String>> = g
                .members
                .iter()
                .map(|m| placed.get(m).and_then(|on| on.keys().next()))
                .collect();
            if homes.len() != 1 {
                return Some(format!("group {} is split: {homes:?}", g.id));
            }
        }
        let state = lead.cluster_state().cluster;
        for (id, _) in r.instances() {
            let believed = state.resources.get(&id).map(|x| x.running.clone()).unwrap_or_default();
            let real = placed.get(&id).cloned().unwrap_or_default();
            if believed != real {
                return Some(format!("the state says {id} runs on {believed:?}, it runs on {real:?}"));
            }
        }
        None
    }
}

/// How many of the world's last events a violation shows: 40, or `PHALANX_SIM_EVENTS` (a
/// replay that needs the whole history sets it high).
fn events_shown() -> usize {
    std::env::var("PHALANX_SIM_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}
