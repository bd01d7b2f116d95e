//! Raft groups: separate openraft instances on the same nodes, each with its own log,
//! snapshots, redb file and routes, so that a storm of writes in one never delays another.
//! There are two: `cluster` (membership, liveness, resources, plans) and `sessions` (the
//! session store, `raft::sessions`, whose RPCs are served on its own runtime). A group is named by a [`GroupId`] and typed by a [`Group`] (its openraft
//! type config, which knows its name); its peers reach it at `/raft/{group}/{append,vote,
//! snapshot}` (the client: `network::HttpNetwork<C>`), and the peer router hands each request
//! to the group's Raft through the node's [`Groups`] registry. Each group keeps its log in its
//! own redb file, [`db_file`]: `<data_dir>/raft.redb` for `cluster` (where it always was), and
//! `<data_dir>/raft-<group>.redb` for any other.

use super::network::RpcError;
use super::{BasicNode, NodeId};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A group's name: one lowercase word (`a-z`, `0-9`, `-`), as it appears in its routes
/// (`/raft/{group}/…`) and its file name. Groups are fixed in the code, so names are
/// `'static` and checked when the constant is built (an invalid name does not compile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(&'static str);

impl GroupId {
    /// A group name; panics (at compile time, in a `const`) on an invalid one.
    pub const fn new(name: &'static str) -> GroupId {
        let b = name.as_bytes();
        assert!(!b.is_empty() && b.len() <= 32, "a group name has 1 to 32 characters");
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            assert!(
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-',
                "a group name is lowercase letters, digits and '-'"
            );
            i += 1;
        }
        GroupId(name)
    }

    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Lets the registry be looked up by the name in a request path (the order is the name's).
impl std::borrow::Borrow<str> for GroupId {
    fn borrow(&self) -> &str {
        self.0
    }
}

/// The cluster group: membership, liveness, resources, fencing, plans.
pub const CLUSTER: GroupId = GroupId::new("cluster");

/// A Raft group's openraft type config. Every group runs on the same nodes, so they share the
/// node ids and addresses (`NodeId`, `BasicNode`); what differs is the entries, the responses
/// and the state machine. Its entries travel and are stored in postcard (openraft's `serde`
/// feature makes every `C::Entry` serializable).
pub trait Group: openraft::RaftTypeConfig<NodeId = NodeId, Node = BasicNode> {
    /// Its name, in its routes and its file name.
    const ID: GroupId;
}

/// Where group `group` keeps its log (and state machine) under a node's data dir:
/// `raft.redb` for the cluster group (the file it always used, so existing data dirs keep
/// working), `raft-<group>.redb` for any other.
pub fn db_file(data_dir: &Path, group: GroupId) -> PathBuf {
    if group == CLUSTER {
        data_dir.join("raft.redb")
    } else {
        data_dir.join(format!("raft-{group}.redb"))
    }
}

/// The server side of one group's Raft RPCs: decode the request, hand it to the group's Raft,
/// encode the answer (implemented for every `openraft::Raft<C: Group>` in `network`).
pub trait GroupRpc: Send + Sync {
    /// Serve RPC `rpc` (`append`, `vote` or `snapshot`) with a postcard `body`.
    fn serve<'a>(&'a self, rpc: &'a str, body: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, RpcError>>;
}

/// The groups a node serves, by name: what the peer router dispatches `/raft/{group}/{rpc}`
/// through.
#[derive(Clone, Default)]
pub struct Groups {
    /// Each group's Raft, and the runtime its RPCs are served on (None: the caller's).
    by_name: BTreeMap<GroupId, (Arc<dyn GroupRpc>, Option<tokio::runtime::Handle>)>,
}

impl Groups {
    /// These groups and `raft`'s, under its name (`C::ID`). Each group is added once: a second
    /// Raft of the same group replaces the first.
    pub fn with<C: Group>(mut self, raft: openraft::Raft<C>) -> Groups {
        self.by_name.insert(C::ID, (Arc::new(raft), None));
        self
    }

    /// As [`Groups::with`], its RPCs decoded and served on runtime `rt` (the caller's thread
    /// only carries the bytes): the session store's, whose writes must not load the thread
    /// that serves the cluster group.
    pub fn with_on<C: Group>(mut self, raft: openraft::Raft<C>, rt: tokio::runtime::Handle) -> Groups {
        self.by_name.insert(C::ID, (Arc::new(raft), Some(rt)));
        self
    }

    /// The names of the groups served, in order.
    pub fn names(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.by_name.keys().copied()
    }

    /// Serve one RPC for the group named `group` (as found in the request path).
    pub async fn serve(&self, group: &str, rpc: &str, body: &[u8]) -> Result<Vec<u8>, RpcError> {
        let (g, rt) = self
            .by_name
            .get(group)
            .ok_or_else(|| RpcError::UnknownGroup(group.to_string()))?;
        match rt {
            None => g.serve(rpc, body).await,
            Some(rt) => {
                let (g, rpc, body) = (g.clone(), rpc.to_string(), body.to_vec());
                rt.spawn(async move { g.serve(&rpc, &body).await })
                    .await
                    .unwrap_or_else(|e| Err(RpcError::Stopped(e.to_string())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_group_keeps_its_file_and_others_get_their_own() {
        let dir = Path::new("/var/lib/phalanx/c/n1");
        assert_eq!(db_file(dir, CLUSTER), dir.join("raft.redb"));
        const SESSIONS: GroupId = GroupId::new("sessions");
        assert_eq!(db_file(dir, SESSIONS), dir.join("raft-sessions.redb"));
        assert_eq!(CLUSTER.to_string(), "cluster");
        assert!(CLUSTER < SESSIONS, "ordered by name");
    }

    #[tokio::test]
    async fn an_unknown_group_is_refused_by_name() {
        let groups = Groups::default();
        assert_eq!(groups.names().count(), 0);
        let e = groups.serve("nosuch", "vote", b"").await.unwrap_err();
        assert!(matches!(&e, RpcError::UnknownGroup(g) if g == "nosuch"), "{e}");
    }
}
