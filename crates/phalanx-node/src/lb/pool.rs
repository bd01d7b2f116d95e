//! One balancer's backend table: the targets discovery found, each with its [`Health`] (the
//! cluster's committed verdict and the operator's state and weight, adopted at every update,
//! overlaid by what this node's live traffic saw since), its connections in flight and its
//! counters; and the [`Balancer`] that picks among them. The proxy takes a [`Lease`] on a
//! backend per connection (in flight while held). Everything is behind one mutex held for
//! microseconds (a pick builds no allocation beyond its first on a changed set).

use phalanx_core::config::BalancerConfig;
use phalanx_core::lb::{
    Algorithm, Backend, BackendId, Balancer, HashKey, Health, HealthConfig, Lookup, Observation, StickConfig,
    StickEntry, StickTable, Transition,
};
use phalanx_core::state::{BackendRecord, BalancerRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
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
    /// up | drain | maint | down: what this balancer sends it.
    pub state: String,
    /// The weight in force (0..=256): the operator's, else the config's.
    pub weight: u16,
    /// In 1/16 units of the configured weight (slowstart, agent percentage).
    pub effective_weight: u32,
    pub in_flight: u32,
    pub connections_total: u64,
    /// Connections to it that failed (connect refused, reset, timed out).
    pub errors_total: u64,
    /// The operator's state: ready | drain | maint, and who set it (or the weight) last.
    pub admin: String,
    pub admin_by: Option<String>,
    /// The node that checks it now (None: no node is online to).
    pub checker: Option<String>,
    /// The committed verdict's detail ("pass" or why the checks failed), the node that
    /// committed it and how long ago; None: never checked yet.
    pub last_check: Option<String>,
    pub last_check_by: Option<String>,
    pub last_check_ms_ago: Option<u64>,
    /// This node's live traffic disagrees with the cluster's verdict (why), if it does.
    pub disagreement: Option<String>,
}

struct Entry {
    target: Target,
    id: BackendId,
    health: Health,
    in_flight: u32,
    total: u64,
    errors: u64,
    /// The committed record last adopted (None: none yet).
    record: Option<BackendRecord>,
    /// Live traffic marked it down here, why and when (unix ms); cleared by a success or by a
    /// newer committed verdict.
    passive_down: Option<(String, u64)>,
}

impl Entry {
    /// Count a new lease on it: (id, name, address).
    fn take(&mut self) -> (BackendId, String, SocketAddr) {
        self.in_flight += 1;
        self.total += 1;
        (self.id, self.target.name.clone(), self.target.address)
    }
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
    /// Source affinity, when the balancer has it.
    sticky: Option<Sticky>,
}

/// A balancer's stick table: looked up here, its changes committed in batches (see
/// [`Pool::take_sticky_changes`]). Times are unix ms: the table is compared across nodes.
struct Sticky {
    cfg: StickConfig,
    table: StickTable,
    /// Keys stuck or used since the last batch.
    dirty: BTreeSet<String>,
}

impl Sticky {
    /// How far a use must advance `last_seen` before it is recorded (and replicated): an
    /// eighth of `max_idle`, between 1 s and 1 min (a minute without one).
    fn refresh_ms(&self) -> u64 {
        self.cfg.max_idle_ms.map_or(60_000, |i| (i / 8).clamp(1_000, 60_000))
    }
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
                sticky: None,
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

    /// Take the config's settings (algorithm, checks, max_conn), this set of targets, in this
    /// order, and the cluster's records of them: a backend kept (same name and address) keeps
    /// its counters; every backend takes the committed verdict when it changed (a new one starts
    /// from it: no blind period after a failover), and the operator's state and weight.
    pub fn update(&self, cfg: &BalancerConfig, targets: Vec<Target>, records: Option<&BalancerRecord>) {
        let algorithm = cfg.algorithm();
        let now = self.now_ms();
        self.with(|i| {
            if i.balancer.algorithm() != &algorithm {
                i.balancer = Balancer::new(algorithm);
            }
            i.health = cfg.check.health.clone();
            i.max_conn = cfg.max_conn;
            let mut old = std::mem::take(&mut i.entries);
            for t in targets {
                let rec = records
                    .and_then(|r| r.backends.get(&t.name))
                    .cloned()
                    .unwrap_or_default();
                let kept = old
                    .iter()
                    .position(|e| e.target.name == t.name && e.target.address == t.address)
                    .map(|at| old.swap_remove(at));
                let mut e = match kept {
                    Some(e) => e,
                    None => Entry {
                        id: BackendId::of(&t.name),
                        target: t.clone(),
                        health: Health::from_verdict(&rec.verdict()),
                        in_flight: 0,
                        total: 0,
                        errors: 0,
                        record: None,
                        passive_down: None,
                    },
                };
                e.target.weight = rec.weight.unwrap_or(t.weight);
                let stamp = |r: &BackendRecord| r.health.as_ref().map(|h| (h.by.clone(), h.at_ms));
                if e.record.as_ref().map(stamp) != Some(stamp(&rec)) {
                    e.health.adopt(&rec.verdict(), now);
                    if rec.health.is_some() {
                        e.passive_down = None;
                    }
                }
                e.health.set_operator(rec.admin, now);
                e.record = Some(rec);
                i.entries.push(e);
            }
        });
    }

    /// Source affinity from now on with `cfg` (None: none), starting from `table` (the
    /// cluster's, when the balancer starts: its clients land where they were); a table already
    /// here is kept when only the settings change.
    pub fn set_sticky(&self, cfg: Option<StickConfig>, table: Option<StickTable>) {
        self.with(|i| match (cfg, i.sticky.as_mut()) {
            (None, _) => i.sticky = None,
            (Some(cfg), Some(st)) => st.cfg = cfg,
            (Some(cfg), None) => {
                i.sticky = Some(Sticky {
                    cfg,
                    table: table.unwrap_or_default(),
                    dirty: BTreeSet::new(),
                })
            }
        });
    }

    /// The stick-table changes to commit (entries stuck, or used a while after their last
    /// recorded use) with the table's settings; expired entries are dropped here meanwhile.
    /// None: nothing to commit.
    pub fn take_sticky_changes(&self) -> Option<(StickConfig, Vec<(String, StickEntry)>)> {
        let now = crate::mesh::unix_ms();
        self.with(|i| {
            let st = i.sticky.as_mut()?;
            st.table.expire(&st.cfg, now);
            let dirty = std::mem::take(&mut st.dirty);
            let entries: Vec<(String, StickEntry)> = dirty
                .into_iter()
                .filter_map(|k| st.table.get(&k).map(|e| (k, *e)))
                .collect();
            (!entries.is_empty()).then(|| (st.cfg.clone(), entries))
        })
    }

    /// How many clients the stick table holds (None: no source affinity).
    pub fn sticky_entries(&self) -> Option<usize> {
        self.with(|i| i.sticky.as_ref().map(|s| s.table.len()))
    }

    /// Pick a backend for a new connection (never `avoid`, the one that just failed), count
    /// it in flight and connected. None: no backend takes new connections.
    pub fn lease(self: &Arc<Self>, avoid: Option<BackendId>) -> Option<Lease> {
        self.lease_for(None, avoid)
    }

    /// [`lease`](Self::lease) for a client with stick key `client` (its source address): with
    /// source affinity, a client stuck to a backend that takes sticky traffic (up or draining,
    /// below `max_conn`) goes there; otherwise the pick is stuck to it.
    pub fn lease_for(self: &Arc<Self>, client: Option<IpAddr>, avoid: Option<BackendId>) -> Option<Lease> {
        self.lease_keyed(client, None, avoid)
    }

    /// [`lease_for`](Self::lease_for) with the request's hash key for the hashing algorithms
    /// (`uri`, `header:NAME`, `cookie:NAME`: the caller extracts it; `source` hashes `client`).
    pub fn lease_keyed(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        hash: Option<&[u8]>,
        avoid: Option<BackendId>,
    ) -> Option<Lease> {
        let now = self.now_ms();
        let unix = crate::mesh::unix_ms();
        let (id, name, address) = self.with(|i| {
            let Inner {
                entries,
                views,
                balancer,
                health,
                max_conn,
                rng,
                sticky,
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
            // `source` hashing hashes the client's address octets (IPv4-mapped as IPv4).
            let client = client.map(|ip| ip.to_canonical());
            let octets = match (balancer.algorithm(), client) {
                (Algorithm::Hash(h), Some(ip)) if h.key == HashKey::Source => Some(match ip {
                    IpAddr::V4(v4) => v4.octets().to_vec(),
                    IpAddr::V6(v6) => v6.octets().to_vec(),
                }),
                _ => None,
            };
            let key = hash.or(octets.as_deref());
            // Source affinity's key: the address in text (only made when the table is on).
            let sticky = sticky.as_mut().zip(client.map(|ip| ip.to_string()));
            let hit = match (&sticky, avoid) {
                (Some((st, key)), None) => match st.table.lookup(&st.cfg, key, unix, views) {
                    Lookup::Hit(at) if max_conn.is_none_or(|m| entries[at].in_flight < m) => Some(at),
                    _ => None,
                },
                _ => None,
            };
            let at = match hit {
                Some(at) => at,
                None => match avoid.and_then(|a| phalanx_core::lb::position(views, a)) {
                    Some(skip) => balancer.redispatch(views, key, word, skip),
                    None => balancer.pick(views, key, word),
                }?,
            };
            if let Some((st, key)) = sticky {
                let known = st.table.get(&key).copied();
                let fresh = known.is_some_and(|e| e.backend == views[at].id && unix < e.last_seen_ms + st.refresh_ms());
                if !fresh && st.table.stick(&st.cfg, &key, views[at].id, unix).is_ok() {
                    st.dirty.insert(key);
                }
            }
            Some(entries[at].take())
        })?;
        Some(Lease {
            pool: self.clone(),
            id,
            name,
            address,
        })
    }

    /// A live connection's outcome (counted, and passive health): the transition it caused
    /// here, if any (the caller commits a down for the cluster).
    pub fn observe(&self, id: BackendId, outcome: Observation) -> Option<(String, Transition)> {
        let now = self.now_ms();
        self.with(|i| {
            let e = i.entries.iter_mut().find(|e| e.id == id)?;
            if outcome == Observation::Success {
                e.passive_down = None;
            } else {
                e.errors += 1;
            }
            let t = e.health.observe(&i.health, outcome, now)?;
            if !e.health.checks_up() {
                let why = format!("{} consecutive failed connections", i.health.error_limit);
                e.passive_down = Some((why, crate::mesh::unix_ms()));
            }
            Some((e.target.name.clone(), t))
        })
    }

    /// Every backend, in selection order; `checker` names the node that checks a backend.
    pub fn status(&self, checker: impl Fn(&str) -> Option<String>) -> Vec<BackendStatus> {
        let now = self.now_ms();
        let unix = crate::mesh::unix_ms();
        self.with(|i| {
            i.entries
                .iter()
                .map(|e| {
                    let rec = e.record.clone().unwrap_or_default();
                    let committed = rec.health.as_ref();
                    let disagreement = match (&e.passive_down, rec.verdict().up) {
                        (Some((why, _)), true) => {
                            Some(format!("live traffic here: {why}, while the cluster's checks say up"))
                        }
                        _ => None,
                    };
                    BackendStatus {
                        name: e.target.name.clone(),
                        address: e.target.address.to_string(),
                        state: e.health.state().to_string(),
                        weight: e.target.weight,
                        effective_weight: e.health.effective_weight(&i.health, e.target.weight, now),
                        in_flight: e.in_flight,
                        connections_total: e.total,
                        errors_total: e.errors,
                        admin: rec.admin.as_str().to_string(),
                        admin_by: rec.admin_by.clone(),
                        checker: checker(&e.target.name),
                        last_check: committed.map(|h| h.detail.clone()),
                        last_check_by: committed.map(|h| h.by.clone()),
                        last_check_ms_ago: committed.map(|h| unix.saturating_sub(h.at_ms)),
                        disagreement,
                    }
                })
                .collect()
        })
    }
}

// ---- HTTP mode's additions (sticky leases, agent replies) -------------------------------------

impl Pool {
    /// The algorithm it balances by (what a request's hash key is taken from).
    pub fn algorithm(&self) -> Algorithm {
        self.with(|i| i.balancer.algorithm().clone())
    }

    /// Whether any backend but `except` takes traffic (up or draining): else queueing, or a
    /// retry elsewhere, is useless.
    pub fn any_serving(&self, except: Option<BackendId>) -> bool {
        let now = self.now_ms();
        self.with(|i| {
            i.entries.iter().any(|e| {
                Some(e.id) != except
                    && e.health
                        .view(&i.health, e.id, e.target.weight, e.in_flight, now)
                        .takes_sticky()
            })
        })
    }

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
            Some(e.take())
        })?;
        Some(Lease {
            pool: self.clone(),
            id,
            name,
            address,
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
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
        pool.update(&c, vec![target("a", 1), target("b", 2)], None);
        let l1 = pool.lease(None).unwrap();
        let l2 = pool.lease(None).unwrap();
        assert_ne!(l1.name, l2.name, "round robin alternates");
        let l3 = pool.lease(Some(l1.id)).unwrap();
        assert_eq!(l3.name, l2.name, "redispatch avoids the failed one");
        let l4 = pool.lease(None).unwrap();
        assert_eq!(l4.name, l1.name, "b is at max_conn = 2");
        assert!(pool.lease(None).is_none(), "both at max_conn");
        drop(l2);
        let st = pool.status(|_| None);
        assert_eq!(st.iter().map(|s| s.in_flight).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(st.iter().map(|s| s.connections_total).collect::<Vec<_>>(), [2, 2]);
    }

    fn verdict(up: bool, at_ms: u64) -> BackendRecord {
        BackendRecord {
            health: Some(phalanx_core::state::HealthRecord {
                verdict: phalanx_core::lb::Verdict {
                    up,
                    ..Default::default()
                },
                by: "n2".into(),
                at_ms,
                detail: if up { "pass" } else { "connect: refused" }.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn committed_verdicts_and_operator_states_are_adopted_at_once() {
        let c = cfg("roundrobin");
        let pool = Arc::new(Pool::new(c.algorithm(), c.check.health.clone(), None));
        let mut rec = BalancerRecord::default();
        rec.backends.insert("a".into(), verdict(false, 1));
        pool.update(&c, vec![target("a", 1), target("b", 2)], Some(&rec));
        assert!(
            (0..4).all(|_| pool.lease(None).unwrap().name == "b"),
            "a new pool knows a is down at once"
        );
        let st = pool.status(|_| Some("n3".into()));
        assert_eq!(st[0].state, "down");
        assert_eq!(st[0].last_check.as_deref(), Some("connect: refused"));
        assert_eq!(st[0].checker.as_deref(), Some("n3"));
        rec.backends.insert("a".into(), verdict(true, 2));
        rec.backends.insert(
            "b".into(),
            BackendRecord {
                admin: phalanx_core::lb::AdminState::Drain,
                weight: Some(9),
                ..Default::default()
            },
        );
        pool.update(&c, vec![target("b", 2), target("a", 1)], Some(&rec));
        assert!(
            (0..4).all(|_| pool.lease(None).unwrap().name == "a"),
            "a is back, b drains"
        );
        let st = pool.status(|_| None);
        assert_eq!(
            (st[0].state.as_str(), st[0].weight, st[0].admin.as_str()),
            ("drain", 9, "drain")
        );
    }

    #[test]
    fn live_traffic_marks_down_here_and_status_says_the_cluster_disagrees() {
        let c = cfg("roundrobin");
        let pool = Arc::new(Pool::new(c.algorithm(), c.check.health.clone(), None));
        let mut rec = BalancerRecord::default();
        rec.backends.insert("a".into(), verdict(true, 1));
        pool.update(&c, vec![target("a", 1), target("b", 2)], Some(&rec));
        let a = BackendId::of("a");
        let mut t = None;
        for _ in 0..c.check.health.error_limit {
            t = pool.observe(a, Observation::ConnError).or(t);
        }
        assert_eq!(t.unwrap().1.to.to_string(), "down");
        assert!(pool.status(|_| None)[0].disagreement.is_some());
        pool.update(&c, vec![target("a", 1), target("b", 2)], Some(&rec));
        assert_eq!(
            pool.status(|_| None)[0].state,
            "down",
            "the same committed verdict does not undo what traffic saw"
        );
        rec.backends.insert("a".into(), verdict(true, 2));
        pool.update(&c, vec![target("a", 1), target("b", 2)], Some(&rec));
        let st = pool.status(|_| None);
        assert_eq!((st[0].state.as_str(), st[0].disagreement.as_ref()), ("up", None));
    }

    #[test]
    fn source_affinity_sticks_restickes_when_down_and_starts_from_the_cluster_table() {
        let c = cfg("roundrobin");
        let pool = Arc::new(Pool::new(c.algorithm(), c.check.health.clone(), None));
        pool.update(&c, vec![target("a", 1), target("b", 2)], None);
        let stick = StickConfig {
            max_idle_ms: Some(60_000),
            max_life_ms: None,
            capacity: 10,
        };
        pool.set_sticky(Some(stick.clone()), None);
        let first = pool.lease_for(Some(ip("10.0.0.9")), None).unwrap().name.clone();
        for _ in 0..5 {
            assert_eq!(pool.lease_for(Some(ip("10.0.0.9")), None).unwrap().name, first, "stuck");
        }
        let other = pool.lease_for(Some(ip("10.0.0.8")), None).unwrap().name.clone();
        assert_ne!(other, first, "a new client is balanced");
        let (cfg_sent, sent) = pool.take_sticky_changes().expect("two new entries to commit");
        assert_eq!((cfg_sent, sent.len()), (stick.clone(), 2));
        assert!(
            pool.take_sticky_changes().is_none(),
            "uses within the refresh are not sent"
        );

        // The backend goes down: the client is re-stuck elsewhere.
        let mut rec = BalancerRecord::default();
        rec.backends.insert(first.clone(), verdict(false, 1));
        pool.update(&c, vec![target("a", 1), target("b", 2)], Some(&rec));
        let now = pool.lease_for(Some(ip("10.0.0.9")), None).unwrap().name.clone();
        assert_ne!(now, first);
        assert_eq!(pool.take_sticky_changes().unwrap().1[0].0, "10.0.0.9");

        // A balancer starting with the cluster's table sends the client where it was.
        let fresh = Arc::new(Pool::new(c.algorithm(), c.check.health.clone(), None));
        fresh.update(&c, vec![target("a", 1), target("b", 2)], None);
        let mut table = StickTable::new();
        table
            .stick(&stick, "10.0.0.7", BackendId::of("b"), crate::mesh::unix_ms())
            .unwrap();
        fresh.set_sticky(Some(stick), Some(table));
        for _ in 0..3 {
            assert_eq!(fresh.lease_for(Some(ip("10.0.0.7")), None).unwrap().name, "b");
        }
    }

    #[test]
    fn source_hashing_hashes_the_client_address() {
        let c = cfg("source");
        let pool = Arc::new(Pool::new(c.algorithm(), c.check.health.clone(), None));
        pool.update(&c, vec![target("a", 1), target("b", 2), target("c", 3)], None);
        let mut seen = std::collections::BTreeSet::new();
        for i in 1..=30u8 {
            let from = format!("10.0.0.{i}");
            let first = pool.lease_for(Some(ip(&from)), None).unwrap().name.clone();
            for _ in 0..3 {
                assert_eq!(
                    pool.lease_for(Some(ip(&from)), None).unwrap().name,
                    first,
                    "{from} moved"
                );
            }
            seen.insert(first);
        }
        assert_eq!(seen.len(), 3, "clients spread over every backend");
    }
}
