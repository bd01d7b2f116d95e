//! One balancer's backend table: the targets discovery found, each with its [`Health`], its
//! connections in flight, its counters and its last check; and the [`Balancer`] that picks among
//! them. The proxy takes a [`Lease`] on a backend per connection (in flight while held), the
//! health checker asks what is due and records results. Everything is behind one mutex held
//! for microseconds (a pick builds no allocation beyond its first on a changed set).

use phalanx_core::config::BalancerConfig;
use phalanx_core::lb::{
    Algorithm, Backend, BackendId, Balancer, CheckResult, Health, HealthConfig, Observation, Transition,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A backend as discovery names it: static servers by their name, discovered instances as
/// `RESOURCE@NODE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u16,
}

/// One backend as `phalanx balancer status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    /// up | drain | maint | down.
    pub state: String,
    /// The configured weight (0..=256).
    pub weight: u16,
    /// In 1/16 units of the configured weight (slowstart, agent percentage).
    pub effective_weight: u32,
    pub in_flight: u32,
    pub connections_total: u64,
    /// Connections to it that failed (connect refused, reset, timed out).
    pub errors_total: u64,
    /// The last active check: "pass", or why it failed; None: none ran yet.
    pub last_check: Option<String>,
    pub last_check_ms_ago: Option<u64>,
}

struct Entry {
    target: Target,
    id: BackendId,
    health: Health,
    in_flight: u32,
    total: u64,
    errors: u64,
    last_check: Option<(String, u64)>,
    /// A check of it is running now.
    checking: bool,
}

struct Inner {
    entries: Vec<Entry>,
    /// The selection views, rebuilt in place before each pick.
    views: Vec<Backend>,
    balancer: Balancer,
    health: HealthConfig,
    max_conn: Option<u32>,
    /// splitmix64 state (seeded from the OS): p2c's random word.
    rng: u64,
}

/// A balancer's backends (shared by its listeners, its checker and status).
pub struct Pool {
    inner: Mutex<Inner>,
    epoch: Instant,
}

/// A backend picked for one connection: it counts as in flight until dropped.
pub struct Lease {
    pool: Arc<Pool>,
    pub id: BackendId,
    pub name: String,
    pub address: SocketAddr,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.with(|i| {
            if let Some(e) = i.entries.iter_mut().find(|e| e.id == self.id) {
                e.in_flight = e.in_flight.saturating_sub(1);
            }
        });
    }
}

/// A check that is due: whom to connect to.
pub struct DueCheck {
    pub id: BackendId,
    pub name: String,
    pub address: SocketAddr,
}

impl Pool {
    pub fn new(algorithm: Algorithm, health: HealthConfig, max_conn: Option<u32>) -> Pool {
        Pool {
            inner: Mutex::new(Inner {
                entries: Vec::new(),
                views: Vec::new(),
                balancer: Balancer::new(algorithm),
                health,
                max_conn,
                rng: rand::random(),
            }),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since the pool was made (the clock health runs on).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Take the config's settings (algorithm, checks, max_conn) and this set of targets, in
    /// this order: a backend kept (same name and address) keeps its health and counters, a new
    /// one starts up (the passive redispatch covers it until its first check) and is checked
    /// at once.
    pub fn update(&self, cfg: &BalancerConfig, targets: Vec<Target>) {
        let algorithm = cfg.algorithm();
        self.with(|i| {
            if i.balancer.algorithm() != &algorithm {
                i.balancer = Balancer::new(algorithm);
            }
            i.health = cfg.check.health.clone();
            i.max_conn = cfg.max_conn;
            let mut old = std::mem::take(&mut i.entries);
            for t in targets {
                let kept = old
                    .iter()
                    .position(|e| e.target.name == t.name && e.target.address == t.address)
                    .map(|at| old.swap_remove(at));
                i.entries.push(match kept {
                    Some(mut e) => {
                        e.target.weight = t.weight;
                        e
                    }
                    None => Entry {
                        id: BackendId::of(&t.name),
                        target: t,
                        health: Health::new(true),
                        in_flight: 0,
                        total: 0,
                        errors: 0,
                        last_check: None,
                        checking: false,
                    },
                });
            }
        });
    }

    /// Pick a backend for a new connection (never `avoid`, the one that just failed), count
    /// it in flight and connected. None: no backend takes new connections.
    pub fn lease(self: &Arc<Self>, avoid: Option<BackendId>) -> Option<Lease> {
        let now = self.now_ms();
        let (id, name, address) = self.with(|i| {
            let Inner {
                entries,
                views,
                balancer,
                health,
                max_conn,
                rng,
            } = i;
            views.clear();
            views.extend(entries.iter().map(|e| {
                let mut v = e.health.view(health, e.id, e.target.weight, e.in_flight, now);
                if max_conn.is_some_and(|m| e.in_flight >= m) {
                    v.weight = 0;
                }
                v
            }));
            *rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let word = *rng;
            let at = match avoid.and_then(|a| phalanx_core::lb::position(views, a)) {
                Some(skip) => balancer.redispatch(views, None, word, skip),
                None => balancer.pick(views, None, word),
            }?;
            let e = &mut entries[at];
            e.in_flight += 1;
            e.total += 1;
            Some((e.id, e.target.name.clone(), e.target.address))
        })?;
        Some(Lease {
            pool: self.clone(),
            id,
            name,
            address,
        })
    }

    /// A live connection's outcome (counted, and passive health).
    pub fn observe(&self, id: BackendId, outcome: Observation) -> Option<(String, Transition)> {
        let now = self.now_ms();
        self.with(|i| {
            let e = i.entries.iter_mut().find(|e| e.id == id)?;
            if outcome != Observation::Success {
                e.errors += 1;
            }
            let t = e.health.observe(&i.health, outcome, now)?;
            Some((e.target.name.clone(), t))
        })
    }

    /// The checks due now (each marked running until its result is recorded), and when the
    /// next one not yet due is (ms on the pool's clock; None: no backend).
    pub fn due_checks(&self) -> (Vec<DueCheck>, Option<u64>) {
        let now = self.now_ms();
        self.with(|i| {
            let mut due = Vec::new();
            let mut next: Option<u64> = None;
            for e in i.entries.iter_mut().filter(|e| !e.checking) {
                let at = e.health.next_check_at(&i.health, now);
                if at <= now {
                    e.checking = true;
                    due.push(DueCheck {
                        id: e.id,
                        name: e.target.name.clone(),
                        address: e.target.address,
                    });
                } else {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            (due, next)
        })
    }

    /// An active check's result (`detail`: "pass" or why it failed).
    pub fn record_check(&self, id: BackendId, result: CheckResult, detail: String) -> Option<(String, Transition)> {
        let now = self.now_ms();
        self.with(|i| {
            let e = i.entries.iter_mut().find(|e| e.id == id)?;
            e.checking = false;
            e.last_check = Some((detail, now));
            let t = e.health.record_check(&i.health, result, now)?;
            Some((e.target.name.clone(), t))
        })
    }

    /// Every backend, in selection order.
    pub fn status(&self) -> Vec<BackendStatus> {
        let now = self.now_ms();
        self.with(|i| {
            i.entries
                .iter()
                .map(|e| BackendStatus {
                    name: e.target.name.clone(),
                    address: e.target.address.to_string(),
                    state: e.health.state().to_string(),
                    weight: e.target.weight,
                    effective_weight: e.health.effective_weight(&i.health, e.target.weight, now),
                    in_flight: e.in_flight,
                    connections_total: e.total,
                    errors_total: e.errors,
                    last_check: e.last_check.as_ref().map(|(d, _)| d.clone()),
                    last_check_ms_ago: e.last_check.as_ref().map(|(_, at)| now.saturating_sub(*at)),
                })
                .collect()
        })
    }
}

// ---- HTTP mode's additions (sticky leases, agent replies) -------------------------------------

impl Pool {
    /// Lease the backend `choose` names among the selection views (an index into them; the
    /// views are in selection order, each with its state), if it takes sticky traffic and is
    /// under `max_conn`. For the sticky cookie: `choose` reads the cookie against the views.
    pub fn lease_chosen(self: &Arc<Self>, choose: impl FnOnce(&[Backend]) -> Option<usize>) -> Option<Lease> {
        let now = self.now_ms();
        let (id, name, address) = self.with(|i| {
            let views: Vec<Backend> = i
                .entries
                .iter()
                .map(|e| e.health.view(&i.health, e.id, e.target.weight, e.in_flight, now))
                .collect();
            let at = choose(&views)?;
            let e = i.entries.get_mut(at)?;
            if !views[at].takes_sticky() || i.max_conn.is_some_and(|m| e.in_flight >= m) {
                return None;
            }
            e.in_flight += 1;
            e.total += 1;
            Some((e.id, e.target.name.clone(), e.target.address))
        })?;
        Some(Lease {
            pool: self.clone(),
            id,
            name,
            address,
        })
    }

    /// An agent's reply (HAProxy's agent-check line): its operational and administrative
    /// states and weight.
    pub fn record_agent(&self, id: BackendId, reply: &phalanx_core::lb::AgentReply) -> Option<(String, Transition)> {
        let now = self.now_ms();
        self.with(|i| {
            let e = i.entries.iter_mut().find(|e| e.id == id)?;
            let t = e.health.record_agent(reply, now)?;
            Some((e.target.name.clone(), t))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(algorithm: &str) -> BalancerConfig {
        let text = format!(
            "[cluster]\nname = \"t\"\nfencing = \"off\"\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:7401\"]\n[[balancer]]\nid = \"lb\"\nlisten = [\"127.0.0.1:9000\"]\nalgorithm = \"{algorithm}\"\nmax_conn = 2\nservers = [{{ name = \"a\", address = \"127.0.0.1:1\" }}]\n"
        );
        phalanx_core::config::parse(&text).unwrap().balancers.remove(0)
    }

    fn target(name: &str, port: u16) -> Target {
        Target {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
        }
    }

    #[test]
    fn leases_rotate_count_in_flight_and_respect_max_conn() {
        let c = cfg("roundrobin");
        let pool = Arc::new(Pool::new(c.algorithm(), c.check.health.clone(), c.max_conn));
        pool.update(&c, vec![target("a", 1), target("b", 2)]);
        let l1 = pool.lease(None).unwrap();
        let l2 = pool.lease(None).unwrap();
        assert_ne!(l1.name, l2.name, "round robin alternates");
        let l3 = pool.lease(Some(l1.id)).unwrap();
        assert_eq!(l3.name, l2.name, "redispatch avoids the failed one");
        let l4 = pool.lease(None).unwrap();
        assert_eq!(l4.name, l1.name, "b is at max_conn = 2");
        assert!(pool.lease(None).is_none(), "both at max_conn");
        drop(l2);
        let st = pool.status();
        assert_eq!(st.iter().map(|s| s.in_flight).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(st.iter().map(|s| s.connections_total).collect::<Vec<_>>(), [2, 2]);
    }

    #[test]
    fn checks_take_a_backend_out_and_back_and_updates_keep_health() {
        let c = cfg("roundrobin");
        let pool = Arc::new(Pool::new(c.algorithm(), c.check.health.clone(), None));
        pool.update(&c, vec![target("a", 1), target("b", 2)]);
        let (due, _) = pool.due_checks();
        assert_eq!(due.len(), 2, "new backends are checked at once");
        assert!(pool.due_checks().0.is_empty(), "not twice while running");
        let a = due[0].id;
        let mut last = None;
        for _ in 0..c.check.health.fall {
            last = pool.record_check(a, CheckResult::Fail, "refused".into());
            pool.with(|i| i.entries[0].checking = true);
        }
        assert_eq!(last.unwrap().1.to.to_string(), "down");
        pool.update(&c, vec![target("b", 2), target("a", 1)]);
        assert!(
            (0..4).all(|_| pool.lease(None).unwrap().name == "b"),
            "a stays down across an update"
        );
        assert_eq!(pool.status()[1].last_check.as_deref(), Some("refused"));
    }
}
