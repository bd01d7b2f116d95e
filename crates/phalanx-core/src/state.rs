//! The observed cluster state replicated through Raft: the nodes (ids, links, API address,
//! standby flag, liveness as seen by the leader, attributes) and the config version. Commands
//! change it through a pure `apply`; the same sequence of commands gives the same state on every
//! node. Invalid commands are rejected with a reason and change nothing.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Liveness of a node as recorded in the replicated state (set by the leader from its detector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Not yet observed by any leader.
    #[default]
    Unknown,
    Online,
    Offline,
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
}

/// The whole replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Incremented by every applied command that changes the configuration of the cluster.
    pub config_version: u64,
    /// The highest node id ever assigned (ids are never reused).
    pub max_node_id: u64,
}

/// A change to the cluster state, proposed by the leader or an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Record the configured members of a new cluster, all at once (so that a leader change
    /// half-way through can never leave a partial member list). Rejected once bootstrapped.
    Bootstrap {
        nodes: Vec<NewNode>,
    },
    /// Add a member. `id` must be above every id ever assigned.
    AddNode {
        name: String,
        id: u64,
        links: Vec<String>,
        api: String,
    },
    RemoveNode {
        name: String,
    },
    SetStandby {
        name: String,
        standby: bool,
    },
    SetLiveness {
        name: String,
        liveness: Liveness,
        at_ms: u64,
    },
    SetAttr {
        name: String,
        key: String,
        value: Option<String>,
    },
}

/// A member to add (see [`Command::Bootstrap`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    pub name: String,
    pub id: u64,
    pub links: Vec<String>,
    pub api: String,
}

/// The outcome of applying one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok,
    /// Applied but nothing changed.
    Unchanged,
    /// The command names a node that is not a member.
    NoSuchNode(String),
    Rejected(String),
}

impl ClusterState {
    pub fn node_by_id(&self, id: u64) -> Option<(&String, &NodeRecord)> {
        self.nodes.iter().find(|(_, n)| n.id == id)
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut NodeRecord, Outcome> {
        self.nodes
            .get_mut(name)
            .ok_or_else(|| Outcome::NoSuchNode(format!("no node named {name:?}")))
    }

    /// Apply one command. Rejected commands change nothing.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        match self.try_apply(cmd) {
            Ok(o) | Err(o) => o,
        }
    }

    fn try_apply(&mut self, cmd: &Command) -> Result<Outcome, Outcome> {
        match cmd {
            Command::Bootstrap { nodes } => {
                if self.max_node_id != 0 {
                    return Ok(Outcome::Unchanged);
                }
                let mut next = self.clone();
                for n in nodes {
                    next.try_apply(&Command::AddNode {
                        name: n.name.clone(),
                        id: n.id,
                        links: n.links.clone(),
                        api: n.api.clone(),
                    })?;
                }
                *self = next;
                Ok(Outcome::Ok)
            }
            Command::AddNode { name, id, links, api } => {
                if name.is_empty() || links.is_empty() {
                    return Err(Outcome::Rejected("a node needs a name and at least one link".into()));
                }
                if self.nodes.contains_key(name) {
                    return Err(Outcome::Rejected(format!("node {name:?} already exists")));
                }
                if *id <= self.max_node_id {
                    return Err(Outcome::Rejected(format!("node id {id} was already assigned")));
                }
                for (other, n) in &self.nodes {
                    if let Some(l) = links.iter().find(|l| n.links.contains(l)) {
                        return Err(Outcome::Rejected(format!("link {l} is already used by {other}")));
                    }
                    if n.api == *api {
                        return Err(Outcome::Rejected(format!("api {api} is already used by {other}")));
                    }
                }
                self.max_node_id = *id;
                self.nodes.insert(
                    name.clone(),
                    NodeRecord {
                        id: *id,
                        links: links.clone(),
                        api: api.clone(),
                        standby: false,
                        liveness: Liveness::Unknown,
                        liveness_since_ms: 0,
                        attrs: BTreeMap::new(),
                    },
                );
                self.config_version += 1;
                Ok(Outcome::Ok)
            }
            Command::RemoveNode { name } => {
                self.node_mut(name)?;
                self.nodes.remove(name);
                self.config_version += 1;
                Ok(Outcome::Ok)
            }
            Command::SetStandby { name, standby } => {
                let n = self.node_mut(name)?;
                if n.standby == *standby {
                    return Ok(Outcome::Unchanged);
                }
                n.standby = *standby;
                self.config_version += 1;
                Ok(Outcome::Ok)
            }
            Command::SetLiveness { name, liveness, at_ms } => {
                let n = self.node_mut(name)?;
                if n.liveness == *liveness {
                    return Ok(Outcome::Unchanged);
                }
                n.liveness = *liveness;
                n.liveness_since_ms = *at_ms;
                Ok(Outcome::Ok)
            }
            Command::SetAttr { name, key, value } => {
                if key.is_empty() {
                    return Err(Outcome::Rejected("attribute key is empty".into()));
                }
                let n = self.node_mut(name)?;
                let old = match value {
                    Some(v) => n.attrs.insert(key.clone(), v.clone()),
                    None => n.attrs.remove(key),
                };
                if old.as_ref() == value.as_ref() {
                    Ok(Outcome::Unchanged)
                } else {
                    Ok(Outcome::Ok)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(name: &str, id: u64) -> Command {
        Command::AddNode {
            name: name.into(),
            id,
            links: vec![format!("127.0.0.1:{}", 7400 + id)],
            api: format!("127.0.0.1:{}", 8400 + id),
        }
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
                id: 3,
                links: vec![],
                api: "x".into(),
            },
            Command::AddNode {
                name: "n3".into(),
                id: 3,
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
    fn ids_are_never_reused() {
        let mut s = ClusterState::default();
        s.apply(&add("n1", 1));
        s.apply(&add("n2", 2));
        s.apply(&Command::RemoveNode { name: "n2".into() });
        assert!(matches!(s.apply(&add("n2", 2)), Outcome::Rejected(_)));
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
}
