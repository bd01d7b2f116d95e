//! Membership and what the cluster records of each member: bootstrap, adding and removing
//! nodes (ids are never reused), standby, liveness as recorded by the leader (with what a loss
//! and a return mean for fencing and for what the node ran), attributes and maintenance.

use super::{Applied, ClusterState, FenceRecord, Outcome, RejectReason};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The node attribute that holds what a node stopped with `shutdown = "stop"` ran when it left
/// (space-separated resource ids): those stay stopped, locked to it, until they start there
/// again (each one leaves the lock when it does). Deleting the attribute lifts the lock.
pub const SHUTDOWN_LOCK_ATTR: &str = "#shutdown-lock";

/// Liveness of a node as recorded in the replicated state (set by the leader from its detector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Not yet observed by any leader.
    #[default]
    Unknown,
    Online,
    Offline,
    /// Asked to stop (`phalanx node stop`, SIGTERM): still up, hosts nothing new; what it runs
    /// moves away, then it exits (appended: the stored encoding numbers variants).
    Leaving,
    /// Left cleanly: it held nothing when it went, so it is neither lost nor unclean, and
    /// nothing needs fencing.
    Stopped,
}

impl Liveness {
    /// Up as far as the cluster knows: online, or leaving but not gone yet.
    pub fn up(self) -> bool {
        matches!(self, Liveness::Online | Liveness::Leaving)
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The Raft node id (stable for the life of the member; never reused).
    pub id: u64,
    /// Heartbeat link addresses, one per link.
    pub links: Vec<String>,
    /// The node's API (and Raft RPC) address.
    pub api: String,
    pub standby: bool,
    pub liveness: Liveness,
    /// Unix ms when the liveness last changed, as stamped by the leader that recorded it.
    pub liveness_since_ms: u64,
    /// Free-form node attributes (Pacemaker's node attributes).
    pub attrs: BTreeMap<String, String>,
    /// Resources on it are left alone; nothing new is placed there.
    #[serde(default)]
    pub maintenance: bool,
    /// Fencing: what the cluster knows of it (see `FenceRecord`).
    #[serde(default)]
    pub fence: FenceRecord,
    /// The plan that was current when it last came online. An action of that plan or an older
    /// one was decided before this life of the node began, so its result cannot speak for it:
    /// a fence reported that late (a deposed leader's entry committed after the node was back,
    /// or a report retried across the return) neither marks it fenced nor clears what it runs
    /// (found by the simulation, seeds 128 and 129).
    #[serde(default)]
    pub online_since_plan: u64,
}

impl NodeRecord {
    /// An action of plan `plan_id` was decided before this life of the node began (see
    /// [`NodeRecord::online_since_plan`]): its result cannot speak for the node now.
    pub fn predates_this_life(&self, plan_id: u64) -> bool {
        plan_id <= self.online_since_plan
    }
}

/// A member to add (see [`super::Command::Bootstrap`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    pub name: String,
    pub id: u64,
    pub links: Vec<String>,
    pub api: String,
}

impl ClusterState {
    pub fn node_by_id(&self, id: u64) -> Option<(&String, &NodeRecord)> {
        self.nodes.iter().find(|(_, n)| n.id == id)
    }

    pub(super) fn node_mut(&mut self, name: &str) -> Result<&mut NodeRecord, Outcome> {
        self.nodes
            .get_mut(name)
            .ok_or_else(|| Outcome::NoSuchNode(format!("no node named {name:?}")))
    }

    /// All members at once, or none; only on an empty cluster.
    pub(super) fn bootstrap(&mut self, nodes: &[NewNode]) -> Applied {
        if self.max_node_id != 0 {
            return Ok(Outcome::Unchanged);
        }
        // Cheap: nothing was ever added (max_node_id is 0), so this is an empty state.
        let mut next = self.clone();
        for n in nodes {
            next.add_node(&n.name, Some(n.id), &n.links, &n.api)?;
        }
        *self = next;
        Ok(Outcome::Ok)
    }

    pub(super) fn add_node(&mut self, name: &str, id: Option<u64>, links: &[String], api: &str) -> Applied {
        let id = id.unwrap_or(self.max_node_id + 1);
        if name.is_empty() || links.is_empty() {
            return Err(Outcome::Rejected(RejectReason::NodeIncomplete));
        }
        if self.nodes.contains_key(name) {
            return Err(Outcome::Rejected(RejectReason::NodeExists { name: name.to_string() }));
        }
        if id <= self.max_node_id {
            return Err(Outcome::Rejected(RejectReason::NodeIdAssigned { id }));
        }
        for (other, n) in &self.nodes {
            if let Some(l) = links.iter().find(|l| n.links.contains(l)) {
                return Err(Outcome::Rejected(RejectReason::LinkInUse {
                    link: l.clone(),
                    by: other.clone(),
                }));
            }
            if n.api == api {
                return Err(Outcome::Rejected(RejectReason::ApiInUse {
                    api: api.to_string(),
                    by: other.clone(),
                }));
            }
        }
        self.max_node_id = id;
        self.nodes.insert(
            name.to_string(),
            NodeRecord {
                id,
                links: links.to_vec(),
                api: api.to_string(),
                standby: false,
                liveness: Liveness::Unknown,
                liveness_since_ms: 0,
                attrs: BTreeMap::new(),
                maintenance: false,
                fence: FenceRecord::default(),
                online_since_plan: 0,
            },
        );
        self.config_version += 1;
        Ok(Outcome::Ok)
    }

    /// Why removing `name` needs the operator to confirm that it is down (`node remove
    /// --confirm-down`), or None. A member recorded lost that nothing confirmed down since may
    /// still run what it held: not fenced since it was lost (`fencing = "required"`, or `off`,
    /// where nothing ever confirms it), or within its self-fence hold (`watchdog`). An online
    /// member, or one never seen online, needs no confirmation.
    pub fn removal_needs_confirmation(
        &self,
        name: &str,
        now_ms: u64,
        cluster: &crate::config::ClusterConfig,
    ) -> Option<String> {
        let n = self.nodes.get(name)?;
        if n.liveness != Liveness::Offline || n.fence.fenced {
            return None;
        }
        let why = match cluster.fencing {
            crate::config::Fencing::Watchdog => {
                let hold = crate::Timings::from(cluster).lost_node_hold.map(crate::timings::ms);
                if hold.is_none_or(|h| now_ms >= n.liveness_since_ms.saturating_add(h)) {
                    return None;
                }
                "its watchdog hold has not run out"
            }
            crate::config::Fencing::Off => "fencing is off (nothing confirms it is down)",
            crate::config::Fencing::Required => "not fenced since it was lost",
        };
        Some(format!(
            "{name} is down and {why}: it may still run resources. Make sure it is powered off, \
             then remove it with --confirm-down"
        ))
    }

    pub(super) fn remove_node(&mut self, name: &str) -> Applied {
        self.node_mut(name)?;
        self.nodes.remove(name);
        self.config_version += 1;
        Ok(Outcome::Ok)
    }

    pub(super) fn set_standby(&mut self, name: &str, standby: bool) -> Applied {
        let n = self.node_mut(name)?;
        if n.standby == standby {
            return Ok(Outcome::Unchanged);
        }
        n.standby = standby;
        self.config_version += 1;
        Ok(Outcome::Ok)
    }

    /// Nothing is recorded running on `name` (in any role, failed included) and no action of the
    /// plan is claimed by it and unreported: it can go without a fence.
    pub fn holds_nothing(&self, name: &str) -> bool {
        !self.resources.values().any(|r| r.running.contains_key(name)) && !self.plan.has_open_claims_of(name)
    }

    /// A node asked to stop (`leaving`), or its next process taking a leave back. Only an up
    /// node can start leaving.
    /// `lock` (`shutdown = "stop"`): what runs there stays with it (see [`SHUTDOWN_LOCK_ATTR`]).
    pub(super) fn set_leaving(&mut self, name: &str, leaving: bool, lock: bool) -> Applied {
        let held: Vec<String> = self
            .resources
            .iter()
            .filter(|(_, r)| {
                r.running
                    .get(name)
                    .is_some_and(|role| *role != crate::scheduler::Role::Failed)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let holds_nothing = self.holds_nothing(name);
        let n = self.node_mut(name)?;
        match (n.liveness, leaving) {
            (Liveness::Leaving, true) => Ok(Outcome::Unchanged),
            (Liveness::Online, true) => {
                n.liveness = Liveness::Leaving;
                if lock && !held.is_empty() {
                    n.attrs.insert(SHUTDOWN_LOCK_ATTR.to_string(), held.join(" "));
                }
                Ok(Outcome::Ok)
            }
            (_, true) => Err(Outcome::Rejected(RejectReason::NotOnline { name: name.to_string() })),
            // Taken back by the node's next process (it restarted before the leader saw it go):
            // its previous life ended there. Clean if it held nothing (Stopped: the leader
            // makes it Online once it sees it both ways), else lost, like a crash (fenced before
            // what it held runs elsewhere). Never straight to Online: a leader that does not hear
            // it both ways yet would call it lost at once, and fence a healthy node (seen in the
            // lab's rolling restart: a leader left, came back before the next leader decided,
            // took its leave back, and the new leader fenced it).
            (Liveness::Leaving, false) => {
                n.liveness = if holds_nothing {
                    n.fence.fenced = true;
                    Liveness::Stopped
                } else {
                    Liveness::Offline
                };
                Ok(Outcome::Ok)
            }
            (_, false) => Ok(Outcome::Unchanged),
        }
    }

    /// `rsc` started on `name`: it leaves `name`'s shutdown lock, if it was in it.
    pub(super) fn unlock(&mut self, name: &str, rsc: &str) -> bool {
        let Some(n) = self.nodes.get_mut(name) else {
            return false;
        };
        let Some(lock) = n.attrs.get(SHUTDOWN_LOCK_ATTR) else {
            return false;
        };
        if !lock.split(' ').any(|r| r == rsc) {
            return false;
        }
        let rest: Vec<&str> = lock.split(' ').filter(|r| *r != rsc).collect();
        if rest.is_empty() {
            n.attrs.remove(SHUTDOWN_LOCK_ATTR);
        } else {
            let rest = rest.join(" ");
            n.attrs.insert(SHUTDOWN_LOCK_ATTR.to_string(), rest);
        }
        true
    }

    /// The leader's view of `name` changed. Coming (back) online starts a new life of the node
    /// (see [`NodeRecord::online_since_plan`]). Back from lost, what it ran stays recorded: if
    /// it was fenced, the fence cleared that already; if not (the leader's view flapped, or a
    /// partition healed before the fence ran), it may still run it, and forgetting it would let
    /// a plan start a second copy before its probe reports (found by the simulation, under
    /// heartbeat loss: a VIP started elsewhere while its node still held it).
    pub(super) fn set_liveness(&mut self, name: &str, liveness: Liveness, at_ms: u64) -> Applied {
        let plan_id = self.plan.id;
        let holds_nothing = self.holds_nothing(name);
        let n = self.node_mut(name)?;
        let was = n.liveness;
        match (was, liveness) {
            (a, b) if a == b => return Ok(Outcome::Unchanged),
            // Leaving starts and ends by `SetLeaving`; a stopped node is down already.
            (_, Liveness::Leaving) | (Liveness::Leaving, Liveness::Online) | (Liveness::Stopped, Liveness::Offline) => {
                return Ok(Outcome::Unchanged)
            }
            (Liveness::Leaving, Liveness::Stopped) if !holds_nothing => {
                return Err(Outcome::Rejected(RejectReason::StillHolds { name: name.to_string() }))
            }
            (Liveness::Leaving, Liveness::Stopped) => {
                // Clean: it held nothing when it went, so there is nothing to fence or recover.
                n.liveness = liveness;
                n.liveness_since_ms = at_ms;
                n.fence.fenced = true;
                return Ok(Outcome::Ok);
            }
            (_, Liveness::Stopped) => {
                return Err(Outcome::Rejected(RejectReason::NotLeaving { name: name.to_string() }))
            }
            _ => {}
        }
        n.liveness = liveness;
        n.liveness_since_ms = at_ms;
        if liveness == Liveness::Offline {
            // Lost: unconfirmed until fenced, unless it was fenced while still online
            // (a failed stop: going down is that fence's doing) or never seen online
            // (nothing was ever placed there).
            n.fence.fenced |= was == Liveness::Unknown;
        } else {
            // Online (again): a later loss needs a fence of its own, and a fence decided
            // before now is not one.
            n.fence.fenced = false;
            n.online_since_plan = plan_id;
        }
        if !was.up() && liveness == Liveness::Online {
            n.fence.failures = 0;
            n.fence.last_error = None;
            n.fence.reason = None;
        }
        Ok(Outcome::Ok)
    }

    pub(super) fn set_attr(&mut self, name: &str, key: &str, value: Option<&String>) -> Applied {
        if key.is_empty() {
            return Err(Outcome::Rejected(RejectReason::EmptyAttrKey));
        }
        let n = self.node_mut(name)?;
        let old = match value {
            Some(v) => n.attrs.insert(key.to_string(), v.clone()),
            None => n.attrs.remove(key),
        };
        Ok(if old.as_ref() == value {
            Outcome::Unchanged
        } else {
            Outcome::Ok
        })
    }

    pub(super) fn set_maintenance(&mut self, node: Option<&str>, on: bool) -> Applied {
        match node {
            None => self.maintenance = on,
            Some(n) => self.node_mut(n)?.maintenance = on,
        }
        self.config_version += 1;
        Ok(Outcome::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Command;
    use super::*;
    use crate::scheduler::Role;

    fn add(name: &str, id: u64) -> Command {
        Command::AddNode {
            name: name.into(),
            id: Some(id),
            links: vec![format!("127.0.0.1:{}", 7400 + id)],
            api: format!("127.0.0.1:{}", 8400 + id),
        }
    }

    #[test]
    fn removing_a_lost_node_nothing_confirmed_down_needs_confirmation() {
        use super::super::test_support::{bootstrapped, cluster};
        use crate::config::Fencing;
        let mut s = bootstrapped(&["n1", "n2", "n3"]);
        let live = |n: &str, l: Liveness, at_ms: u64| Command::SetLiveness {
            name: n.into(),
            liveness: l,
            at_ms,
        };
        let req = cluster(Fencing::Required);
        // Never seen online: nothing ever ran there.
        assert_eq!(s.removal_needs_confirmation("n3", 10, &req), None);
        s.apply(&live("n3", Liveness::Offline, 10));
        assert_eq!(s.removal_needs_confirmation("n3", 10, &req), None);
        for n in ["n1", "n2"] {
            s.apply(&live(n, Liveness::Online, 20));
        }
        assert_eq!(s.removal_needs_confirmation("n2", 30, &req), None, "online");
        s.apply(&live("n2", Liveness::Offline, 40));
        let why = s.removal_needs_confirmation("n2", 50, &req).unwrap();
        assert!(why.contains("not fenced") && why.contains("--confirm-down"), "{why}");
        assert!(s
            .removal_needs_confirmation("n2", 50, &cluster(Fencing::Off))
            .unwrap()
            .contains("fencing is off"));
        // Watchdog: confirmed down once its hold (two heartbeat intervals) has run out.
        let wd = cluster(Fencing::Watchdog);
        assert!(s.removal_needs_confirmation("n2", 50, &wd).is_some());
        assert_eq!(s.removal_needs_confirmation("n2", 40 + 10_000, &wd), None);
        // Fenced since: confirmed down.
        s.nodes.get_mut("n2").unwrap().fence.fenced = true;
        assert_eq!(s.removal_needs_confirmation("n2", 50, &req), None);
        assert_eq!(s.removal_needs_confirmation("zz", 50, &req), None, "not a member");
    }

    #[test]
    fn add_standby_remove() {
        let mut s = ClusterState::default();
        assert_eq!(s.apply(&add("n1", 1)), Outcome::Ok);
        assert_eq!(s.apply(&add("n2", 2)), Outcome::Ok);
        assert_eq!(
            s.apply(&Command::SetStandby {
                name: "n2".into(),
                standby: true
            }),
            Outcome::Ok
        );
        assert_eq!(
            s.apply(&Command::SetStandby {
                name: "n2".into(),
                standby: true
            }),
            Outcome::Unchanged
        );
        assert!(s.nodes["n2"].standby);
        assert_eq!(s.apply(&Command::RemoveNode { name: "n1".into() }), Outcome::Ok);
        assert_eq!(s.nodes.keys().collect::<Vec<_>>(), vec!["n2"]);
        assert_eq!(s.config_version, 4);
    }

    /// `shutdown = "stop"`: leaving records what the node ran as its lock; each start there
    /// later takes its resource out; the last one lifts it.
    #[test]
    fn a_locking_leave_records_what_ran_and_starts_there_lift_it() {
        use crate::scheduler::ActionKind;
        use crate::state::test_support::{act, bootstrapped};
        let mut s = bootstrapped(&["n1", "n2"]);
        for n in ["n1", "n2"] {
            s.apply(&Command::SetLiveness {
                name: n.into(),
                liveness: Liveness::Online,
                at_ms: 1,
            });
        }
        for r in ["web", "db"] {
            s.resources
                .entry(r.into())
                .or_default()
                .running
                .insert("n1".into(), Role::Started);
        }
        s.resources
            .entry("gone".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Failed);
        let leave = Command::SetLeaving {
            name: "n1".into(),
            leaving: true,
            lock: true,
        };
        assert_eq!(s.apply(&leave), Outcome::Ok);
        assert_eq!(
            s.nodes["n1"].attrs.get(SHUTDOWN_LOCK_ATTR).map(String::as_str),
            Some("db web")
        );
        for (i, r) in ["web", "db"].iter().enumerate() {
            s.apply(&Command::SetPlan {
                actions: vec![act(ActionKind::Start, r, "n1")],
                edges: vec![],
            });
            let plan_id = s.plan.id;
            s.apply(&Command::ActionResult {
                plan_id,
                index: 0,
                action: act(ActionKind::Start, r, "n1"),
                outcome: crate::state::CallOutcome::Ok,
                at_ms: 2,
                reason: None,
            });
            let left = s.nodes["n1"].attrs.get(SHUTDOWN_LOCK_ATTR).cloned();
            assert_eq!(left, (i == 0).then(|| "db".to_string()), "after {r}");
        }
    }

    /// A leave taken back by the node's next process ends its previous life: Stopped if it held
    /// nothing (the leader brings it Online once it hears it both ways), lost if it held
    /// something; never straight to Online (a new leader not hearing it yet would fence it).
    #[test]
    fn a_leave_taken_back_ends_the_previous_life_never_straight_to_online() {
        use crate::state::test_support::bootstrapped;
        let take_back = Command::SetLeaving {
            name: "n1".into(),
            leaving: false,
            lock: false,
        };
        for holds in [false, true] {
            let mut s = bootstrapped(&["n1", "n2"]);
            s.apply(&Command::SetLiveness {
                name: "n1".into(),
                liveness: Liveness::Online,
                at_ms: 1,
            });
            if holds {
                s.resources
                    .entry("web".into())
                    .or_default()
                    .running
                    .insert("n1".into(), Role::Started);
            }
            s.apply(&Command::SetLeaving {
                name: "n1".into(),
                leaving: true,
                lock: false,
            });
            assert_eq!(s.apply(&take_back), Outcome::Ok);
            let n1 = &s.nodes["n1"];
            if holds {
                assert_eq!((n1.liveness, n1.fence.fenced), (Liveness::Offline, false));
            } else {
                assert_eq!((n1.liveness, n1.fence.fenced), (Liveness::Stopped, true));
            }
            assert_eq!(s.apply(&take_back), Outcome::Unchanged, "once");
        }
    }

    #[test]
    fn rejected_commands_change_nothing() {
        let mut s = ClusterState::default();
        s.apply(&add("n1", 1));
        let before = s.clone();
        for cmd in [
            add("n1", 5),
            add("n9", 1),
            Command::RemoveNode { name: "zz".into() },
            Command::SetStandby {
                name: "zz".into(),
                standby: true,
            },
            Command::SetAttr {
                name: "n1".into(),
                key: "".into(),
                value: None,
            },
            Command::AddNode {
                name: "n3".into(),
                id: Some(3),
                links: vec![],
                api: "x".into(),
            },
            Command::AddNode {
                name: "n3".into(),
                id: Some(3),
                links: vec!["127.0.0.1:7401".into()],
                api: "y".into(),
            },
        ] {
            assert!(
                matches!(s.apply(&cmd), Outcome::Rejected(_) | Outcome::NoSuchNode(_)),
                "{cmd:?}"
            );
            assert_eq!(s, before, "{cmd:?} changed the state");
        }
    }

    #[test]
    fn bootstrap_is_all_or_nothing_and_only_once() {
        let n = |name: &str, id: u64| NewNode {
            name: name.into(),
            id,
            links: vec![format!("127.0.0.1:{}", 7400 + id)],
            api: format!("127.0.0.1:{}", 8400 + id),
        };
        let mut s = ClusterState::default();
        // a bad member (duplicate id) rejects the whole bootstrap
        let bad = Command::Bootstrap {
            nodes: vec![n("n1", 1), n("n2", 1)],
        };
        assert!(matches!(s.apply(&bad), Outcome::Rejected(_)));
        assert_eq!(s, ClusterState::default());
        let good = Command::Bootstrap {
            nodes: vec![n("n1", 1), n("n2", 2), n("n3", 3)],
        };
        assert_eq!(s.apply(&good), Outcome::Ok);
        assert_eq!(s.nodes.len(), 3);
        assert_eq!(s.max_node_id, 3);
        let again = Command::Bootstrap {
            nodes: vec![n("n9", 9)],
        };
        assert_eq!(s.apply(&again), Outcome::Unchanged);
        assert_eq!(s.nodes.len(), 3);
    }

    #[test]
    fn ids_are_assigned_in_log_order_when_not_given() {
        let mut s = ClusterState::default();
        s.apply(&add("n1", 1));
        let auto = |name: &str, port: u16| Command::AddNode {
            name: name.into(),
            id: None,
            links: vec![format!("127.0.0.9:{port}")],
            api: format!("127.0.0.9:{}", port + 1000),
        };
        assert_eq!(s.apply(&auto("n2", 1)), Outcome::Ok);
        s.apply(&Command::RemoveNode { name: "n2".into() });
        assert_eq!(s.apply(&auto("n3", 2)), Outcome::Ok);
        assert_eq!(
            (s.nodes["n1"].id, s.nodes["n3"].id, s.max_node_id),
            (1, 3, 3),
            "ids are never reused"
        );
    }

    #[test]
    fn ids_are_never_reused() {
        let mut s = ClusterState::default();
        s.apply(&add("n1", 1));
        s.apply(&add("n2", 2));
        s.apply(&Command::RemoveNode { name: "n2".into() });
        assert_eq!(
            s.apply(&add("n2", 2)),
            Outcome::Rejected(RejectReason::NodeIdAssigned { id: 2 })
        );
        assert_eq!(s.apply(&add("n2", 3)), Outcome::Ok);
    }

    #[test]
    fn liveness_and_attrs() {
        let mut s = ClusterState::default();
        s.apply(&add("n1", 1));
        let set = Command::SetLiveness {
            name: "n1".into(),
            liveness: Liveness::Online,
            at_ms: 42,
        };
        assert_eq!(s.apply(&set), Outcome::Ok);
        assert_eq!(s.apply(&set), Outcome::Unchanged);
        assert_eq!(s.nodes["n1"].liveness_since_ms, 42);
        let attr = Command::SetAttr {
            name: "n1".into(),
            key: "k".into(),
            value: Some("v".into()),
        };
        assert_eq!(s.apply(&attr), Outcome::Ok);
        assert_eq!(s.apply(&attr), Outcome::Unchanged);
        assert_eq!(s.nodes["n1"].attrs["k"], "v");
        assert_eq!(s.node_by_id(1).map(|(n, _)| n.as_str()), Some("n1"));
    }

    #[test]
    fn a_node_back_from_lost_keeps_what_it_ran_unless_fenced() {
        let mut s = ClusterState::default();
        s.apply(&Command::Bootstrap {
            nodes: vec![NewNode {
                name: "n1".into(),
                id: 1,
                links: vec!["127.0.0.1:1".into()],
                api: "127.0.0.1:2".into(),
            }],
        });
        s.resources
            .entry("web".into())
            .or_default()
            .running
            .insert("n1".into(), Role::Started);
        let set = |l: Liveness| Command::SetLiveness {
            name: "n1".into(),
            liveness: l,
            at_ms: 1,
        };
        s.apply(&set(Liveness::Online));
        assert!(
            s.resources["web"].running.contains_key("n1"),
            "Unknown -> Online keeps what a probe found"
        );
        s.apply(&set(Liveness::Offline));
        assert!(
            s.resources["web"].running.contains_key("n1"),
            "lost: kept (the scheduler recovers it elsewhere, after a fence)"
        );
        s.apply(&set(Liveness::Online));
        assert!(
            s.resources["web"].running.contains_key("n1"),
            "back without a fence: it may still run it, until its probe says otherwise"
        );
        s.apply(&set(Liveness::Offline));
        s.apply(&Command::SetPlan {
            actions: vec![crate::scheduler::Action {
                kind: crate::scheduler::ActionKind::Fence,
                rsc: "n1".into(),
                node: "n2".into(),
                reason: "lost".into(),
            }],
            edges: vec![],
        });
        let fence = s.plan.actions[0].clone();
        s.apply(&Command::ActionResult {
            plan_id: s.plan.id,
            index: 0,
            action: fence,
            outcome: super::super::CallOutcome::Ok,
            at_ms: 2,
            reason: None,
        });
        s.apply(&set(Liveness::Online));
        assert!(
            !s.resources["web"].running.contains_key("n1"),
            "back after a fence: it runs nothing"
        );
    }
}
