//! The simulation's physical world: which resource instance actually runs on which machine in
//! which role, whatever the replicated state believes. Every node's agent calls (`Runner::fake`)
//! and fence device calls (`Fencer::with_fake`) land here through a [`MachineHandle`], the
//! machine's view of the world for one boot: a start or promote makes an instance active there
//! (from the moment it begins), a stop ends it, a monitor reports it (or an injected failure:
//! the service died, or hangs so that its monitor times out),
//! and a fence powers the target off, so it runs nothing. A machine that is powered off runs
//! nothing and its old boot's calls never return; a paused (frozen) machine's calls wait until
//! it resumes. Every call and fence is recorded with its virtual time.
//!
//! The checks of DESIGN.md §3 are made here, at the instant of every change, from what actually
//! runs: (2) a non-clone resource is active on at most one machine and a promotable one has at
//! most `promoted_max` primaries; (3) an exclusive instance (non-clone, or a promotable's
//! primary) held by a machine when it was lost (off a quorate side, in the ground truth the
//! simulation gives with [`World::set_quorate`]) is started or promoted elsewhere only after a
//! fence of that machine executed, unless the machine came back and reported it by a monitor;
//! (4) a start or promote executes only on a machine of a quorate side (or one that lost it less
//! than one detection time ago, while it cannot know yet; a frozen machine's clock for that
//! starts when it resumes).

use crate::agents::{AgentCall, AgentSeam, CallResult, FakeCall};
use crate::fence::{FakeDeviceCall, FenceError, FenceSeam};
use phalanx_core::config::Config;
use phalanx_core::fencing::{FenceDevice, PowerStatus};
use phalanx_core::ocf::{self, AgentAction, Verdict};
use phalanx_core::scheduler::Role;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How long the fake agents' actions and a fence take, in virtual time.
const START: Duration = Duration::from_millis(40);
const STOP: Duration = Duration::from_millis(20);
const PROMOTE: Duration = Duration::from_millis(30);
const MONITOR: Duration = Duration::from_millis(2);
const FENCE: Duration = Duration::from_millis(50);

/// One broken invariant, found at the moment it broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// "2", "3", "4" (DESIGN.md §3), "liveness", or "events" (two nodes hold different
    /// histories).
    pub invariant: String,
    /// Virtual ms since the simulation started.
    pub at_ms: u64,
    pub what: String,
}

/// One agent call or fence as it executed, with its virtual time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub node: String,
    pub what: String,
}

/// How an injected monitor failure looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorFailure {
    /// The service died: it no longer runs, its monitor says so.
    Died,
    /// It still runs, but hangs: its monitor times out (a soft failure) until it is stopped
    /// there.
    Hung,
}

#[derive(Debug, Default)]
struct Machine {
    boot: u64,
    powered: bool,
    frozen: bool,
    /// Instance → Started or Promoted.
    running: BTreeMap<String, Role>,
    /// Instances hung here (their monitor times out) until they are stopped here.
    broken: BTreeSet<String>,
    /// Without quorum (ground truth) since then; None while on a quorate side.
    unquorate_since: Option<Instant>,
}

/// An exclusive instance held by a machine when it was lost (invariant 3).
#[derive(Debug, Clone)]
struct Hold {
    since: Instant,
    /// The machine is on a quorate side again (its own monitor of the instance then releases
    /// the hold: it reported what runs there).
    returned: bool,
}

#[derive(Debug, Default)]
struct State {
    machines: BTreeMap<String, Machine>,
    /// (instance, the lost machine that held it) → since when.
    holds: BTreeMap<(String, String), Hold>,
    events: Vec<Event>,
    violations: Vec<Violation>,
    /// Machines fenced since the driver last looked (it stops their node and reboots it).
    fenced: Vec<String>,
}

/// The world shared by every machine of one simulated cluster.
pub struct World {
    config: Config,
    origin: Instant,
    /// How long a machine may keep starting things after it lost quorum (it cannot know before
    /// its failure detector says so): one detection time plus one heartbeat.
    grace: Duration,
    st: Mutex<State>,
    /// Wakes calls waiting for a frozen machine to resume.
    changed: tokio::sync::Notify,
    /// Called with a machine's name the instant it loses power (the driver takes it off the
    /// network then, before it stops its node).
    on_power_off: Mutex<Option<PowerHook>>,
}

/// See [`World::on_power_off`].
pub type PowerHook = Box<dyn Fn(&str) + Send + Sync>;

fn result(action: AgentAction, code: i32, reason: Option<String>) -> CallResult {
    CallResult {
        exit_reason: reason,
        ..CallResult::ours(action, code, String::new(), std::time::Instant::now())
    }
}

impl World {
    /// A world of the config's nodes, every machine powered off (see [`World::power_on`]).
    pub fn new(config: &Config) -> Arc<World> {
        let t = phalanx_core::Timings::from(&config.cluster);
        let machines = config
            .nodes
            .iter()
            .map(|n| (n.name.clone(), Machine::default()))
            .collect();
        Arc::new(World {
            config: config.clone(),
            origin: Instant::now(),
            grace: t.detection + t.heartbeat,
            st: Mutex::new(State {
                machines,
                ..State::default()
            }),
            changed: tokio::sync::Notify::new(),
            on_power_off: Mutex::new(None),
        })
    }

    /// Call `hook` with a machine's name the instant it loses power (crash or fence).
    pub fn on_power_off(&self, hook: PowerHook) {
        *self.on_power_off.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Virtual ms since the world was made.
    pub fn now_ms(&self) -> u64 {
        Instant::now().saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Whether `instance` is exclusive in `role`: a non-clone resource in any role, or the
    /// primary of a promotable clone.
    fn exclusive(&self, instance: &str, role: Role) -> bool {
        match self.clone_spec(instance) {
            None => true,
            Some(c) => c.promotable && role == Role::Promoted,
        }
    }

    fn clone_spec(&self, instance: &str) -> Option<&phalanx_core::resources::CloneSpec> {
        let r = &self.config.resources;
        let p = r.primitive_of(instance)?;
        r.clone_of(&p.id)
            .or_else(|| r.group_of(&p.id).and_then(|g| r.clone_of(&g.id)))
    }

    fn violation(&self, st: &mut State, invariant: &str, what: String) {
        st.violations.push(Violation {
            invariant: invariant.to_string(),
            at_ms: self.now_ms(),
            what,
        });
    }

    fn event(&self, st: &mut State, node: &str, what: String) {
        st.events.push(Event {
            at_ms: self.now_ms(),
            node: node.to_string(),
            what,
        });
    }

    /// Power `node` on (a new boot); the handle is what that boot's agents and fencer see.
    pub fn power_on(self: &Arc<Self>, node: &str) -> Arc<MachineHandle> {
        let mut st = self.lock();
        let m = st.machines.entry(node.to_string()).or_default();
        m.boot += 1;
        m.powered = true;
        m.frozen = false;
        let boot = m.boot;
        self.event(&mut st, node, format!("power on (boot {boot})"));
        Arc::new(MachineHandle {
            world: self.clone(),
            node: node.to_string(),
            boot,
        })
    }

    /// Cut `node`'s power (a crash, or a fence when `by` names the fencing node and device): it
    /// runs nothing from now on
    /// and its boot's calls have no effect. A fence releases the node's holds (invariant 3).
    fn power_off(&self, st: &mut State, node: &str, by: Option<(&str, &str)>) {
        self.lose(st, node);
        let now = Instant::now();
        if let Some(m) = st.machines.get_mut(node) {
            m.powered = false;
            m.frozen = false;
            m.boot += 1;
            m.running.clear();
            m.broken.clear();
            m.unquorate_since.get_or_insert(now);
        }
        match by {
            Some((by, device)) => {
                st.holds.retain(|(_, n), _| n != node);
                st.fenced.push(node.to_string());
                self.event(st, by, format!("fence {node} through {device}: powered off"));
            }
            None => self.event(st, node, "crash: powered off".to_string()),
        }
        if let Some(hook) = self.on_power_off.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            hook(node);
        }
        self.changed.notify_waiters();
    }

    /// A crash (power cut) of `node`.
    pub fn crash(&self, node: &str) {
        let mut st = self.lock();
        self.power_off(&mut st, node, None);
    }

    /// Freeze `node` (SIGSTOP): what runs there keeps running, its calls wait.
    pub fn freeze(&self, node: &str) {
        let mut st = self.lock();
        if let Some(m) = st.machines.get_mut(node).filter(|m| m.powered) {
            m.frozen = true;
            self.event(&mut st, node, "pause".to_string());
        }
    }

    /// Resume a frozen `node`. Its clock for invariant 4 restarts: it gets one detection time
    /// to notice it has no quorum.
    pub fn thaw(&self, node: &str) {
        let mut st = self.lock();
        let now = Instant::now();
        if let Some(m) = st.machines.get_mut(node).filter(|m| m.frozen) {
            m.frozen = false;
            if m.unquorate_since.is_some() {
                m.unquorate_since = Some(now);
            }
            self.event(&mut st, node, "resume".to_string());
        }
        self.changed.notify_waiters();
    }

    /// Machines fenced since the last call (the driver stops their nodes and reboots them).
    pub fn take_fenced(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().fenced)
    }

    /// The ground truth of quorum: the machines on a quorate side now. A machine leaving it
    /// holds its exclusive instances (invariant 3) until it is fenced or back.
    pub fn set_quorate(&self, quorate: &BTreeSet<String>) {
        let mut st = self.lock();
        let names: Vec<String> = st.machines.keys().cloned().collect();
        for name in names {
            if quorate.contains(&name) {
                let m = st.machines.get_mut(&name).expect("a machine of the world");
                if m.unquorate_since.take().is_some() {
                    for ((_, n), h) in st.holds.iter_mut() {
                        if *n == name {
                            h.returned = true;
                        }
                    }
                }
            } else {
                self.lose(&mut st, &name);
            }
        }
    }

    /// `node` leaves the quorate side (if it was on it): its exclusive instances are held.
    fn lose(&self, st: &mut State, node: &str) {
        let now = Instant::now();
        let Some(m) = st.machines.get_mut(node) else { return };
        if m.unquorate_since.is_some() {
            return;
        }
        m.unquorate_since = Some(now);
        let held: Vec<String> = m
            .running
            .iter()
            .filter(|(i, r)| self.exclusive(i, **r))
            .map(|(i, _)| i.clone())
            .collect();
        for i in held {
            st.holds.insert(
                (i, node.to_string()),
                Hold {
                    since: now,
                    returned: false,
                },
            );
        }
    }

    /// Inject a monitor failure of `instance` on the first machine running it (for a
    /// promotable one: its primary, if any). Returns that machine.
    pub fn fail_monitor(&self, instance: &str, how: MonitorFailure) -> Option<String> {
        let mut st = self.lock();
        let on = |role: Option<Role>| {
            st.machines
                .iter()
                .find(|(_, m)| {
                    m.powered
                        && m.running
                            .get(instance)
                            .is_some_and(|r| role.is_none_or(|want| *r == want))
                })
                .map(|(n, _)| n.clone())
        };
        let node = on(Some(Role::Promoted)).or_else(|| on(None))?;
        let m = st.machines.get_mut(&node).expect("found above");
        match how {
            MonitorFailure::Died => {
                m.running.remove(instance);
            }
            MonitorFailure::Hung => {
                m.broken.insert(instance.to_string());
            }
        }
        self.event(&mut st, &node, format!("inject: {instance} monitor {how:?}"));
        Some(node)
    }

    /// What runs where now (powered machines only), instance → node → role.
    pub fn placement(&self) -> BTreeMap<String, BTreeMap<String, Role>> {
        let st = self.lock();
        let mut out: BTreeMap<String, BTreeMap<String, Role>> = BTreeMap::new();
        for (n, m) in st.machines.iter().filter(|(_, m)| m.powered) {
            for (i, r) in &m.running {
                out.entry(i.clone()).or_default().insert(n.clone(), *r);
            }
        }
        out
    }

    /// Every violation found so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    /// Record a violation found by the driver (liveness).
    pub fn report(&self, invariant: &str, what: String) {
        let mut st = self.lock();
        self.violation(&mut st, invariant, what);
    }

    /// The last `n` events.
    pub fn events_tail(&self, n: usize) -> Vec<Event> {
        let st = self.lock();
        st.events[st.events.len().saturating_sub(n)..].to_vec()
    }

    /// Number of agent calls and fences recorded.
    pub fn event_count(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether `node`'s boot `boot` is the live one.
    fn alive(st: &State, node: &str, boot: u64) -> bool {
        st.machines.get(node).is_some_and(|m| m.powered && m.boot == boot)
    }

    /// Wait while `node` is frozen; false when its boot `boot` is gone (powered off).
    async fn wait_thawed(&self, node: &str, boot: u64) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if !Self::alive(&st, node, boot) {
                    return false;
                }
                if !st.machines.get(node).is_some_and(|m| m.frozen) {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// A start or promote begins on `node`: invariants 4 and 3 for the call, the instance
    /// active from now on, then invariant 2.
    fn begin_active(&self, st: &mut State, node: &str, instance: &str, role: Role) {
        let now = Instant::now();
        let verb = if role == Role::Promoted { "promote" } else { "start" };
        let unquorate = st.machines.get(node).and_then(|m| m.unquorate_since);
        if let Some(since) = unquorate.filter(|s| now.saturating_duration_since(*s) > self.grace) {
            let ago = now.saturating_duration_since(since).as_millis();
            self.violation(
                st,
                "4",
                format!("{verb} of {instance} on {node}, which has been off every quorate side for {ago} ms"),
            );
        }
        if self.exclusive(instance, role) {
            let held: Vec<(String, u64)> = st
                .holds
                .iter()
                .filter(|((i, n), h)| i == instance && n != node && !h.returned)
                .map(|((_, n), h)| (n.clone(), now.saturating_duration_since(h.since).as_millis() as u64))
                .collect();
            for (lost, ago) in held {
                self.violation(
                    st,
                    "3",
                    format!(
                        "{verb} of {instance} on {node} while {lost}, lost {ago} ms ago holding it, was not fenced"
                    ),
                );
            }
        }
        if let Some(m) = st.machines.get_mut(node) {
            m.running.insert(instance.to_string(), role);
        }
        self.check_exclusive(st, instance);
    }

    /// Invariant 2 for `instance`, from what runs now.
    fn check_exclusive(&self, st: &mut State, instance: &str) {
        let roles: Vec<(String, Role)> = st
            .machines
            .iter()
            .filter(|(_, m)| m.powered)
            .filter_map(|(n, m)| m.running.get(instance).map(|r| (n.clone(), *r)))
            .collect();
        match self.clone_spec(instance) {
            None if roles.len() > 1 => {
                self.violation(st, "2", format!("{instance} is active on {roles:?} at once"));
            }
            Some(c) if c.promotable => {
                let primaries: Vec<&String> = roles
                    .iter()
                    .filter(|(_, r)| *r == Role::Promoted)
                    .map(|(n, _)| n)
                    .collect();
                if primaries.len() > c.promoted_max as usize {
                    self.violation(
                        st,
                        "2",
                        format!(
                            "{instance} is promoted on {primaries:?} at once (promoted_max {})",
                            c.promoted_max
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    /// One agent call of `node`'s boot `boot`.
    async fn agent(
        self: Arc<Self>,
        node: String,
        boot: u64,
        instance: String,
        action: AgentAction,
        timeout: Duration,
    ) -> CallResult {
        // A call of a boot that lost power never returns: the machine is dead (its node is
        // stopped a moment later), and nothing it would report is true.
        let gone = || std::future::pending::<CallResult>();
        if !self.wait_thawed(&node, boot).await {
            return gone().await;
        }
        let (pause, role) = match action {
            AgentAction::Start => (START, Some(Role::Started)),
            AgentAction::Promote => (PROMOTE, Some(Role::Promoted)),
            AgentAction::Stop | AgentAction::Demote => (STOP, None),
            AgentAction::Monitor => {
                let hung = self
                    .lock()
                    .machines
                    .get(&node)
                    .is_some_and(|m| m.broken.contains(&instance));
                if hung {
                    tokio::time::sleep(timeout).await;
                    return CallResult {
                        timed_out: true,
                        verdict: Verdict::Timeout,
                        exit_code: None,
                        ..result(action, ocf::OCF_ERR_GENERIC, Some("monitor timed out".into()))
                    };
                }
                (MONITOR, None)
            }
            _ => return result(action, ocf::OCF_SUCCESS, None),
        };
        if let Some(role) = role {
            let mut st = self.lock();
            self.event(&mut st, &node, format!("{} {instance}", action.as_str()));
            self.begin_active(&mut st, &node, &instance, role);
        }
        tokio::time::sleep(pause).await;
        let alive = Self::alive(&self.lock(), &node, boot);
        if !alive {
            return gone().await;
        }
        let mut st = self.lock();
        let m = st.machines.get_mut(&node).expect("alive above");
        match action {
            AgentAction::Stop => {
                m.running.remove(&instance);
                m.broken.remove(&instance);
                self.event(&mut st, &node, format!("stop {instance}"));
                result(action, ocf::OCF_SUCCESS, None)
            }
            AgentAction::Demote => {
                if let Some(r) = m.running.get_mut(&instance) {
                    *r = Role::Started;
                }
                self.event(&mut st, &node, format!("demote {instance}"));
                result(action, ocf::OCF_SUCCESS, None)
            }
            AgentAction::Monitor => {
                let code = match m.running.get(&instance) {
                    Some(Role::Promoted) => ocf::OCF_RUNNING_PROMOTED,
                    Some(_) => ocf::OCF_SUCCESS,
                    None => ocf::OCF_NOT_RUNNING,
                };
                // Back on a quorate side, it has now reported what runs there.
                st.holds
                    .retain(|(i, n), h| !(i == &instance && n == &node && h.returned));
                result(action, code, None)
            }
            _ => result(action, ocf::OCF_SUCCESS, None),
        }
    }

    /// One fence device call of `node`'s boot `boot`.
    async fn fence(
        self: Arc<Self>,
        node: String,
        boot: u64,
        device: String,
        action: String,
        target: Option<String>,
    ) -> Result<PowerStatus, FenceError> {
        if !self.wait_thawed(&node, boot).await {
            return std::future::pending().await;
        }
        match (action.as_str(), target) {
            ("monitor", _) | (_, None) => Ok(PowerStatus::On),
            ("status", Some(t)) => {
                let st = self.lock();
                let on = st.machines.get(&t).is_some_and(|m| m.powered);
                Ok(if on { PowerStatus::On } else { PowerStatus::Off })
            }
            ("on", Some(_)) => Ok(PowerStatus::On),
            (_, Some(t)) => {
                tokio::time::sleep(FENCE).await;
                let alive = Self::alive(&self.lock(), &node, boot);
                if !alive {
                    return std::future::pending().await;
                }
                let mut st = self.lock();
                self.power_off(&mut st, &t, Some((&node, &device)));
                Ok(PowerStatus::On)
            }
        }
    }
}

/// One boot of one machine: its agents and its fence devices (the seams of `Runner::fake` and
/// `Fencer::with_fake`).
pub struct MachineHandle {
    world: Arc<World>,
    node: String,
    boot: u64,
}

impl AgentSeam for MachineHandle {
    fn call(&self, c: &AgentCall<'_>) -> FakeCall {
        Box::pin(self.world.clone().agent(
            self.node.clone(),
            self.boot,
            c.instance.to_string(),
            c.action,
            c.timeout,
        ))
    }
}

impl FenceSeam for MachineHandle {
    fn call<'a>(&'a self, device: &'a FenceDevice, action: &'a str, target: Option<&'a str>) -> FakeDeviceCall<'a> {
        Box::pin(self.world.clone().fence(
            self.node.clone(),
            self.boot,
            device.name.clone(),
            action.to_string(),
            target.map(str::to_string),
        ))
    }
}
