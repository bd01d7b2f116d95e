//! A second, toy Raft group (tests only): a key-value map replicated by its own openraft
//! instances, on the same code as the cluster group's: `LogStore<Toy>` on its own redb file,
//! `HttpNetwork<Toy>` posting to `/raft/toy/…`, served through a `Groups` registry. It checks
//! that `raft/` can host a group with other entry types: openraft's storage suite on
//! `LogStore<Toy>`, and three toy nodes on loopback HTTP that commit, stop, start again from
//! their files and read back what they committed.

use super::group::{db_file, Group, GroupId, Groups};
use super::network::HttpNetwork;
use super::store::{self, LogStore};
use super::{BasicNode, LogId, Membership, NodeId, StorageError};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Set `key` to `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    pub key: String,
    pub value: String,
}

openraft::declare_raft_types!(
    /// The toy group: `Set` commands, answered with the key's former value.
    pub Toy:
        D = Set,
        R = Option<String>,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

const TOY: GroupId = GroupId::new("toy");

impl Group for Toy {
    const ID: GroupId = TOY;
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ToyData {
    last_applied: Option<LogId>,
    membership: Membership,
    map: BTreeMap<String, String>,
}

/// A built or installed snapshot: its meta and its bytes.
type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

/// The toy state machine, in memory: after a restart openraft applies the committed log
/// again (read back from `LogStore<Toy>`).
#[derive(Clone, Default)]
struct ToySm {
    data: Arc<Mutex<ToyData>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl ToySm {
    fn map(&self) -> BTreeMap<String, String> {
        self.data.lock().unwrap().map.clone()
    }
}

impl RaftSnapshotBuilder<Toy> for ToySm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Toy>, StorageError> {
        let d = self.data.lock().unwrap().clone();
        let meta = SnapshotMeta {
            last_log_id: d.last_applied,
            last_membership: d.membership.clone(),
            snapshot_id: format!("{:?}", d.last_applied.map(|l| l.index)),
        };
        let bytes = postcard::to_allocvec(&d).unwrap();
        *self.snapshot.lock().unwrap() = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<Toy> for ToySm {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let d = self.data.lock().unwrap();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<String>>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<Toy>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut d = self.data.lock().unwrap();
        let mut out = Vec::new();
        for e in entries {
            d.last_applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(Set { key, value }) => d.map.insert(key, value),
                EntryPayload::Membership(m) => {
                    d.membership = Membership::new(Some(e.log_id), m);
                    None
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        *self.data.lock().unwrap() = postcard::from_bytes(&bytes).unwrap();
        *self.snapshot.lock().unwrap() = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Toy>>, StorageError> {
        Ok(self.snapshot.lock().unwrap().clone().map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

/// A fresh toy store (in memory: the suite checks what the store does, not redb's fsync).
struct ToyStores;

impl StoreBuilder<Toy, LogStore<Toy>, ToySm> for ToyStores {
    async fn build(&self) -> Result<((), LogStore<Toy>, ToySm), StorageError> {
        Ok(((), LogStore::new(store::open_in_memory().unwrap()), ToySm::default()))
    }
}

#[test]
fn the_log_store_passes_openrafts_storage_suite_for_another_group() {
    Suite::test_all(ToyStores).unwrap();
}

/// One toy node: its Raft, its state machine, and the task serving its `/raft/{group}/…`.
struct ToyNode {
    raft: openraft::Raft<Toy>,
    sm: ToySm,
    server: tokio::task::JoinHandle<()>,
}

/// Start toy node `id` on its file in `dir`, serving on `listener` (a minimal peer router:
/// `/raft/{group}/{rpc}` through a `Groups` holding the toy group alone).
async fn toy_node(id: NodeId, dir: &Path, listener: crate::transport::Listener) -> ToyNode {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::StatusCode;
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        ..Default::default()
    };
    // A node shut down a moment ago may still hold its file in a task openraft is winding down
    // (redb refuses a second open while it does): wait for it, with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let db = loop {
        match store::open(&db_file(dir, TOY)) {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "the toy node's file is still open");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let sm = ToySm::default();
    let tls = crate::transport::Tls::ephemeral(&format!("toy{id}"));
    let net = HttpNetwork::<Toy>::new(crate::ClusterKey::from_bytes(&[1; 32]).into(), &tls).unwrap();
    let raft = openraft::Raft::new(
        id,
        Arc::new(config.validate().unwrap()),
        net,
        LogStore::new(db),
        sm.clone(),
    )
    .await
    .unwrap();
    let groups = Arc::new(Groups::default().with(raft.clone()));
    let app = axum::Router::new()
        .route(
            "/raft/{group}/{rpc}",
            axum::routing::post(
                |State(g): State<Arc<Groups>>,
                 UrlPath((group, rpc)): UrlPath<(String, String)>,
                 body: axum::body::Bytes| async move {
                    g.serve(&group, &rpc, &body)
                        .await
                        .map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))
                },
            ),
        )
        .with_state(groups);
    let server = tokio::spawn(async move {
        let _ = crate::transport::serve_tls(listener, app, &tls, |_| {}).await;
    });
    ToyNode { raft, sm, server }
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn write(nodes: &[ToyNode], key: &str, value: &str) -> Option<String> {
    let set = Set {
        key: key.into(),
        value: value.into(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no leader committed {key}");
        let leader = nodes.iter().find_map(|n| n.raft.metrics().borrow().current_leader);
        if let Some(l) = leader.and_then(|l| nodes.get(l as usize - 1)) {
            if let Ok(r) = l.raft.client_write(set.clone()).await {
                return r.data;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three toy nodes on loopback HTTP (their RPCs at `/raft/toy/…`): they elect a leader and
/// commit; stopped and started again from their files (the first alone, so that what it has
/// can only come from its file), they read the log and vote back, apply the committed log
/// again, and go on committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_group_replicates_and_restarts_from_its_files() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let l = crate::transport::bind("127.0.0.1:0").await.unwrap();
        addrs.push(l.local_addr().unwrap());
        nodes.push(toy_node(i as u64 + 1, dir.path(), l).await);
    }
    let members: BTreeMap<NodeId, BasicNode> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, BasicNode::new(a.to_string())))
        .collect();
    nodes[0].raft.initialize(members).await.unwrap();
    let mut want = BTreeMap::new();
    for i in 0..5 {
        assert_eq!(write(&nodes, &format!("k{i}"), "a").await, None);
        want.insert(format!("k{i}"), "a".to_string());
    }
    assert_eq!(write(&nodes, "k0", "b").await, Some("a".into()), "the former value");
    want.insert("k0".into(), "b".into());
    wait_for("every node to apply every write", || {
        nodes.iter().all(|n| n.sm.map() == want)
    })
    .await;
    let before: Vec<(u64, Option<u64>)> = nodes
        .iter()
        .map(|n| {
            let m = n.raft.metrics().borrow().clone();
            (m.current_term, m.last_log_index)
        })
        .collect();
    for n in nodes.drain(..) {
        n.raft.shutdown().await.unwrap();
        n.server.abort();
        let _ = n.server.await;
    }

    // Node 1 again, alone (it hears nobody): what it has is what its own file held.
    let l = crate::transport::bind(addrs[0]).await.unwrap();
    nodes.push(toy_node(1, dirs[0].path(), l).await);
    let (term, last) = before[0];
    wait_for("node 1 to read its log and vote back", || {
        let m = nodes[0].raft.metrics().borrow().clone();
        m.last_log_index == last && m.current_term >= term
    })
    .await;
    wait_for("node 1 to apply its committed log again", || nodes[0].sm.map() == want).await;
    // Then the others, on the same addresses (the membership names them).
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let l = crate::transport::bind(addrs[i]).await.unwrap();
        nodes.push(toy_node(i as u64 + 1, dir.path(), l).await);
    }
    wait_for("every node to apply its log again", || {
        nodes.iter().all(|n| n.sm.map() == want)
    })
    .await;
    assert_eq!(write(&nodes, "k9", "c").await, None);
    want.insert("k9".into(), "c".into());
    wait_for("a write after the restart", || nodes.iter().all(|n| n.sm.map() == want)).await;
    for n in nodes {
        n.raft.shutdown().await.unwrap();
        n.server.abort();
    }
}
