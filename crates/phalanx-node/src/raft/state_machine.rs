//! The applied cluster state: [`StateMachine`] applies committed entries to the in-memory
//! [`SmData`] in place and persists, in one redb transaction per batch, only the entries the
//! batch touched (`sm_tables`), with the last applied log id and the membership. Snapshots are
//! the whole state in postcard (the same format as before entries were stored one by one), sent
//! by openraft in chunks of `raft::SNAPSHOT_CHUNK`; installing one rewrites every entry.
//! Building, reading and installing a snapshot encode or decode the whole state and write it:
//! that runs on the blocking pool, never on the node's one runtime thread, where it would stall
//! the heartbeats (see [`off_runtime`]).

// openraft's StorageError (224 bytes) is the error type its storage traits require.
#![allow(clippy::result_large_err)]

use super::sm_tables::{self, Changes};
use super::store::{decode, encode, io, meta_get, StoreError, META};
use super::{BasicNode, Entry, LogId, Membership, NodeId, Request, Response, StorageError, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use phalanx_core::events::{apply_logged, EventLog};
use phalanx_core::state::Touched;
use phalanx_core::{ClusterState, Outcome};
use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::{Arc, RwLock};

/// What the state machine holds: the cluster state, the event history derived from it, and
/// where in the log it stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub membership: Membership,
    pub cluster: ClusterState,
    pub events: EventLog,
}

impl SmData {
    /// A copy without the event history (up to `[cluster] event_history` events): what the
    /// loops that copy the state on every wake need. Read events in place (`Node::with_state`).
    pub fn without_events(&self) -> SmData {
        SmData {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            cluster: self.cluster.clone(),
            events: EventLog::default(),
        }
    }
}

/// A snapshot as a group's file keeps it (meta `snapshot`): its meta and its bytes. Shared by
/// every group whose snapshot is bytes in memory (`raft::sessions` too).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredSnapshot {
    pub(super) meta: SnapshotMeta<NodeId, BasicNode>,
    pub(super) data: Vec<u8>,
}

impl StoredSnapshot {
    /// A snapshot of `data` (already encoded) at `last_applied` with `membership`, named by
    /// its last applied log id.
    pub(super) fn of(last_applied: Option<LogId>, membership: Membership, data: Vec<u8>) -> StoredSnapshot {
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_string(),
        };
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
            data,
        }
    }
}

/// The snapshot stored in `db` (what openraft's `get_current_snapshot` asks), read off the
/// runtime.
pub(super) async fn current_snapshot<C>(db: Arc<Database>) -> Result<Option<Snapshot<C>>, StorageError>
where
    C: openraft::RaftTypeConfig<NodeId = NodeId, Node = BasicNode, SnapshotData = Cursor<Vec<u8>>>,
{
    let stored: Option<StoredSnapshot> = off_runtime(
        move || meta_get(&db, "snapshot").map_err(|e| StorageIOError::read_snapshot(None, io(e)).into()),
        |e| StorageIOError::read_snapshot(None, e),
    )
    .await?;
    Ok(stored.map(|s| Snapshot {
        meta: s.meta,
        snapshot: Box::new(Cursor::new(s.data)),
    }))
}

/// The applied cluster state, shared read-only with the rest of the node.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    data: Arc<RwLock<SmData>>,
    /// Bumped after every apply: the controller and the executor wake on it instead of waiting
    /// for their next tick (each plan step would otherwise cost up to a heartbeat interval).
    applied: Arc<tokio::sync::watch::Sender<u64>>,
}

/// A snapshot of `d`: the whole state in postcard.
fn stored_snapshot(d: &SmData) -> StoredSnapshot {
    StoredSnapshot::of(d.last_applied, d.membership.clone(), encode(d))
}

pub(super) fn poisoned() -> StorageError {
    StorageIOError::read_state_machine(io("poisoned lock")).into()
}

/// Run `work` (the whole state encoded or decoded, a write of all of it) on tokio's blocking
/// pool. A node runs on a single-threaded runtime, and its heartbeats, Raft RPCs and API share
/// that thread: a 21 MiB state took most of a second to snapshot, read back or install, longer
/// on a loaded machine, and every peer declared the busy node dead meanwhile (leaders churned,
/// and a leader streaming the snapshot to a joining node was deposed each time it read it).
/// `failed` names the storage error if the blocking task itself dies.
pub(super) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    failed: fn(openraft::AnyError) -> StorageIOError<NodeId>,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::from(failed(io(e))))?
}

/// Store `snap` as the current snapshot, unless the stored one is newer: built off the
/// runtime, it may finish after a newer one was installed from the leader. It is encoded before
/// the write transaction begins: redb has one writer at a time, and the log and the applied
/// entries, written on the runtime thread, wait for it.
pub(super) fn store_snapshot(db: &Database, snap: &StoredSnapshot) -> Result<(), redb::Error> {
    let bytes = encode(snap);
    let tx = db.begin_write()?;
    {
        let mut t = tx.open_table(META)?;
        // A stored snapshot begins with its meta (postcard writes fields in order).
        let stored_is_newer = t.get("snapshot")?.is_some_and(|v| {
            postcard::take_from_bytes::<SnapshotMeta<NodeId, BasicNode>>(v.value())
                .is_ok_and(|(m, _)| m.last_log_id > snap.meta.last_log_id)
        });
        if !stored_is_newer {
            t.insert("snapshot", bytes.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

impl StateMachine {
    /// Load the persisted state machine (empty on a fresh node). A state machine stored by an
    /// older version (one blob, or entries of an older format) is rewritten, once, with its
    /// stored snapshot (see `sm_tables::upgrade`).
    pub fn load(db: Arc<Database>) -> Result<Self, StoreError> {
        let (data, upgrade) = match sm_tables::load(&db)? {
            Some((d, older)) => (d, older),
            None => match meta_get::<super::legacy::SmDataV1>(&db, "sm")? {
                Some(old) => (old.into(), true),
                None => (SmData::default(), false),
            },
        };
        if upgrade {
            let had_snapshot = meta_get::<StoredSnapshot>(&db, "snapshot")?.is_some();
            sm_tables::upgrade(&db, &data, had_snapshot.then(|| encode(&stored_snapshot(&data))))?;
        }
        Ok(StateMachine {
            db,
            data: Arc::new(RwLock::new(data)),
            applied: Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// A shared handle on the applied state, for readers (API, controller).
    pub fn shared(&self) -> Arc<RwLock<SmData>> {
        self.data.clone()
    }

    /// Changes after every apply (see `applied`).
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn write(&self, c: &Changes) -> Result<(), StorageError> {
        sm_tables::write(&self.db, c).map_err(|e| StorageIOError::write_state_machine(io(e)).into())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // A copy taken under the lock (quick), encoded and stored off the runtime (slow): the
        // lock is not held meanwhile, so entries go on being applied.
        let data = self.data.read().map_err(|_| poisoned())?.clone();
        let db = self.db.clone();
        let snap = off_runtime(
            move || {
                let snap = stored_snapshot(&data);
                store_snapshot(&db, &snap)
                    .map_err(|e| StorageIOError::write_snapshot(Some(snap.meta.signature()), io(e)))?;
                Ok(snap)
            },
            |e| StorageIOError::write_snapshot(None, e),
        )
        .await?;
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: Box::new(Cursor::new(snap.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let d = self.data.read().map_err(|_| poisoned())?;
        Ok((d.last_applied, d.membership.clone()))
    }

    /// Apply a batch in place and persist what it touched. No copy of the state is made: if
    /// the write fails, openraft stops this node (a storage error is fatal to it), and a
    /// restart rebuilds the state from the last persisted batch and the log.
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut out = Vec::new();
        let mut touched = Touched::default();
        let mut membership = false;
        let changes = {
            let mut guard = self.data.write().map_err(|_| poisoned())?;
            let d = &mut *guard;
            let mark = d.events.mark();
            for e in entries {
                d.last_applied = Some(e.log_id);
                let outcome = match e.payload {
                    EntryPayload::Blank => Outcome::Unchanged,
                    EntryPayload::Normal(Request(cmd)) => {
                        let outcome = apply_logged(&mut d.cluster, &mut d.events, &cmd, &mut touched);
                        // The whole history of the state, for a post-mortem (RUST_LOG=phalanx_node::raft=debug).
                        tracing::debug!(
                            index = e.log_id.index,
                            term = e.log_id.leader_id.term,
                            ?cmd,
                            ?outcome,
                            "applied"
                        );
                        outcome
                    }
                    EntryPayload::Membership(m) => {
                        d.membership = Membership::new(Some(e.log_id), m);
                        membership = true;
                        Outcome::Ok
                    }
                };
                out.push(Response(outcome));
            }
            Changes::of(d, &touched, membership, mark)
        };
        self.write(&changes)?;
        self.applied.send_modify(|n| *n += 1);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
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
        let (db, meta) = (self.db.clone(), meta.clone());
        let data = off_runtime(
            move || {
                let data: SmData = decode("snapshot", &bytes)
                    .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io(e)))?;
                let stored = StoredSnapshot { meta, data: bytes };
                sm_tables::write(&db, &Changes::all(&data).with_raft_meta("snapshot", encode(&stored)))
                    .map_err(|e| StorageIOError::write_state_machine(io(e)))?;
                Ok(data)
            },
            StorageIOError::write_state_machine,
        )
        .await?;
        *self
            .data
            .write()
            .map_err(|_| StorageIOError::write_state_machine(io("poisoned lock")))? = data;
        self.applied.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        current_snapshot(self.db.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{meta_put, open_in_memory};
    use super::*;
    use openraft::CommittedLeaderId;
    use phalanx_core::scheduler::{ActionKind, Role};
    use phalanx_core::state::CallOutcome;
    use phalanx_core::{Command, NewNode};
    use std::collections::BTreeSet;

    fn entries(from: u64, cmds: Vec<Command>) -> Vec<Entry> {
        cmds.into_iter()
            .enumerate()
            .map(|(i, c)| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), from + i as u64),
                payload: EntryPayload::Normal(Request(c)),
            })
            .collect()
    }

    fn attr(node: &str, key: &str, value: Option<&str>) -> Command {
        Command::SetAttr {
            name: node.into(),
            key: key.into(),
            value: value.map(str::to_string),
        }
    }

    fn history() -> Vec<Vec<Command>> {
        let nodes = (1..=3)
            .map(|i| NewNode {
                name: format!("n{i}"),
                id: i,
                links: vec![format!("127.0.0.{i}:1")],
                api: format!("127.0.0.{i}:2"),
            })
            .collect();
        let start = phalanx_core::scheduler::Action {
            kind: ActionKind::Start,
            rsc: "web".into(),
            node: "n2".into(),
            reason: String::new(),
        };
        vec![
            vec![
                Command::Bootstrap { nodes },
                attr("n1", "a", Some("1")),
                attr("n3", "b", Some("2")),
            ],
            vec![
                Command::SetPlan {
                    actions: vec![start.clone()],
                    edges: vec![],
                },
                Command::ActionResult {
                    plan_id: 1,
                    index: 0,
                    action: start,
                    outcome: CallOutcome::Ok,
                    at_ms: 5,
                    reason: None,
                },
                Command::SetLiveness {
                    name: "n2".into(),
                    liveness: phalanx_core::Liveness::Online,
                    at_ms: 6,
                },
                Command::Probe {
                    rsc: "db".into(),
                    node: "n1".into(),
                    role: Some(Role::Promoted),
                },
            ],
            vec![
                attr("n1", "a", None),
                Command::RemoveNode { name: "n3".into() },
                Command::OperatorBy {
                    constraint: phalanx_core::scheduler::OperatorConstraint {
                        rsc: "web".into(),
                        node: "n1".into(),
                        prefer: true,
                        expires_ms: Some(99),
                    },
                    by: "alice@ops1".into(),
                    at_ms: 7,
                    unit: vec![],
                },
            ],
            vec![
                Command::AddNode {
                    name: "n3".into(),
                    id: None,
                    links: vec!["127.0.0.9:1".into()],
                    api: "127.0.0.9:2".into(),
                },
                Command::SetMaintenance { node: None, on: true },
                Command::BackendAdmin {
                    balancer: "lb".into(),
                    backend: "web@n2".into(),
                    change: phalanx_core::state::BackendAdminChange {
                        admin: Some(phalanx_core::lb::AdminState::Drain),
                        weight: Some(Some(3)),
                    },
                    by: Some("alice".into()),
                    at_ms: 8,
                },
                Command::Stick {
                    balancer: "lb".into(),
                    at_ms: 9,
                    config: phalanx_core::lb::StickConfig {
                        max_idle_ms: None,
                        max_life_ms: None,
                        capacity: 10,
                    },
                    entries: vec![(
                        "10.0.0.1".into(),
                        phalanx_core::lb::StickEntry {
                            backend: phalanx_core::lb::BackendId(7),
                            created_ms: 9,
                            last_seen_ms: 9,
                        },
                    )],
                },
                Command::CreateToken {
                    name: "ci".into(),
                    token: phalanx_core::tokens::TokenRecord {
                        role: phalanx_core::tokens::Role::Operate,
                        hash: "ab".repeat(32),
                        created_ms: 10,
                        created_by: "alice".into(),
                        expires_ms: Some(99),
                    },
                },
                Command::SetTrust {
                    expected: Default::default(),
                    trust: phalanx_core::state::Trust {
                        cas: vec!["-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into()],
                        issuer: 0,
                        keys: vec!["k1".into(), "k2".into()],
                        send_key: 1,
                    },
                },
                Command::SetPlanNotify {
                    actions: vec![phalanx_core::scheduler::Action {
                        kind: phalanx_core::scheduler::ActionKind::Notify {
                            when: phalanx_core::notify::When::Post,
                            op: phalanx_core::notify::Op::Start,
                        },
                        rsc: "db".into(),
                        node: "n1".into(),
                        reason: "post-start notification to db:0".into(),
                    }],
                    edges: vec![],
                    notify: [(
                        "db".to_string(),
                        [("notify_start_uname".to_string(), "n1".to_string())].into(),
                    )]
                    .into(),
                    after_plan: 1,
                    after_claims: 0,
                },
            ],
        ]
    }

    async fn applied(db: Arc<Database>) -> StateMachine {
        let mut sm = StateMachine::load(db).unwrap();
        let mut index = 1;
        for batch in history() {
            let n = batch.len() as u64;
            sm.apply(entries(index, batch)).await.unwrap();
            index += n;
        }
        sm
    }

    fn now(sm: &StateMachine) -> SmData {
        sm.shared().read().unwrap().clone()
    }

    #[tokio::test]
    async fn a_reloaded_state_machine_is_the_applied_one() {
        let db = open_in_memory().unwrap();
        let sm = applied(db.clone()).await;
        let want = now(&sm);
        assert!(want.cluster.nodes["n3"].attrs.is_empty(), "a re-added node starts bare");
        assert_eq!(want.cluster.resources["web"].running["n2"], Role::Started);
        assert_eq!(want.cluster.nodes["n2"].online_since_plan, 1);
        assert_eq!(want.cluster.operator_origin.len(), 1);
        assert_eq!(want.cluster.balancers["lb"].backends["web@n2"].weight, Some(3));
        assert_eq!(want.cluster.sticks["lb"].len(), 1);
        assert_eq!(want.cluster.plan_notify["db"]["notify_start_uname"], "n1");
        assert!(want.events.len() > 5, "{:?}", want.events);
        let back = now(&StateMachine::load(db).unwrap());
        assert_eq!(back.cluster, want.cluster);
        assert_eq!(back.events, want.events);
        assert_eq!(back.last_applied, want.last_applied);
        assert_eq!(meta_get::<SmData>(&sm.db, "sm").unwrap().map(|_| ()), None, "no blob");
    }

    /// `d` as an older version knew it: no node record has `online_since_plan`, and nobody
    /// is recorded as the maker of an operator constraint.
    fn as_before_format_3(d: SmData) -> SmData {
        let mut d = as_before_format_4(d);
        for r in d.cluster.nodes.values_mut() {
            r.online_since_plan = 0;
        }
        d
    }

    /// `d` as format 3 knew it: no `operator_origin`.
    fn as_before_format_4(d: SmData) -> SmData {
        let mut d = as_before_format_5(d);
        d.cluster.operator_origin.clear();
        d
    }

    /// `d` as format 4 knew it: no event history.
    fn as_before_format_5(d: SmData) -> SmData {
        let mut d = as_before_format_6(d);
        d.events = Default::default();
        d
    }

    /// `d` as format 5 knew it: no balancer records, no stick tables.
    fn as_before_format_6(d: SmData) -> SmData {
        let mut d = as_before_format_7(d);
        d.cluster.balancers.clear();
        d.cluster.sticks.clear();
        d
    }

    /// `d` as format 6 knew it: no tokens.
    fn as_before_format_7(d: SmData) -> SmData {
        let mut d = as_before_format_8(d);
        d.cluster.tokens.clear();
        d
    }

    /// `d` as format 8 knew it: no clone notification lists.
    fn as_before_format_9(mut d: SmData) -> SmData {
        d.cluster.plan_notify = Default::default();
        d
    }

    /// `d` as format 7 knew it: no trust record.
    fn as_before_format_8(d: SmData) -> SmData {
        let mut d = as_before_format_9(d);
        d.cluster.trust = Default::default();
        d
    }

    /// Upgraded once: the state reads back, is rewritten in today's format, and the stored
    /// snapshot (if any) is one today's nodes can install.
    async fn assert_upgraded(db: Arc<Database>, want: &SmData, had_snapshot: bool) {
        let mut sm = StateMachine::load(db.clone()).unwrap();
        assert_eq!(now(&sm).cluster, want.cluster);
        assert_eq!(now(&sm).events, want.events);
        assert_eq!(now(&sm).last_applied, want.last_applied);
        assert!(meta_get::<SmData>(&db, "sm").unwrap().is_none(), "no blob left");
        assert!(
            sm_tables::load(&db).unwrap().is_some_and(|(_, older)| !older),
            "today's format"
        );
        let snap = sm.get_current_snapshot().await.unwrap();
        assert_eq!(snap.is_some(), had_snapshot);
        if let Some(snap) = snap {
            let mut dst = StateMachine::load(open_in_memory().unwrap()).unwrap();
            dst.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
            assert_eq!(now(&dst).cluster, want.cluster);
        }
        assert_eq!(now(&StateMachine::load(db).unwrap()).cluster, want.cluster);
    }

    #[tokio::test]
    async fn the_former_single_blob_is_upgraded_once() {
        let want = as_before_format_3(now(&applied(open_in_memory().unwrap()).await));
        let db = open_in_memory().unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(super::super::store::META)
            .unwrap()
            .insert("sm", super::super::legacy::write::sm_v1(&want).as_slice())
            .unwrap();
        tx.commit().unwrap();
        assert_upgraded(db, &want, false).await;
    }

    #[tokio::test]
    async fn format_2_entries_and_their_snapshot_are_upgraded_once() {
        let want = as_before_format_3(now(&applied(open_in_memory().unwrap()).await));
        let db = open_in_memory().unwrap();
        sm_tables::store_format_2(&db, &want).unwrap();
        let old = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: want.last_applied,
                last_membership: want.membership.clone(),
                snapshot_id: "old".into(),
            },
            data: super::super::legacy::write::sm_v1(&want),
        };
        meta_put(&db, "snapshot", &old).unwrap();
        assert_upgraded(db, &want, true).await;
    }

    /// Format 3 had no `operator_origin` entry, and its snapshots the whole state without it.
    #[tokio::test]
    async fn format_3_entries_and_their_snapshot_are_upgraded_once() {
        let want = as_before_format_4(now(&applied(open_in_memory().unwrap()).await));
        assert!(!want.cluster.operator.is_empty());
        let db = open_in_memory().unwrap();
        sm_tables::store_format_3(&db, &want).unwrap();
        let old = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: want.last_applied,
                last_membership: want.membership.clone(),
                snapshot_id: "old".into(),
            },
            data: super::super::legacy::write::sm_v3(&want),
        };
        meta_put(&db, "snapshot", &old).unwrap();
        assert_upgraded(db, &want, true).await;
    }

    /// Format 4 had no event history, and its snapshots the whole state without it.
    #[tokio::test]
    async fn format_4_entries_and_their_snapshot_are_upgraded_once() {
        let want = as_before_format_5(now(&applied(open_in_memory().unwrap()).await));
        let db = open_in_memory().unwrap();
        sm_tables::store_format_4(&db, &want).unwrap();
        let old = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: want.last_applied,
                last_membership: want.membership.clone(),
                snapshot_id: "old".into(),
            },
            data: super::super::legacy::write::sm_v4(&want),
        };
        meta_put(&db, "snapshot", &old).unwrap();
        assert_upgraded(db, &want, true).await;
    }

    /// Format 8 had no clone notification lists, and its snapshots the whole state without
    /// them.
    #[tokio::test]
    async fn format_8_entries_and_their_snapshot_are_upgraded_once() {
        let before = now(&applied(open_in_memory().unwrap()).await);
        assert!(!before.cluster.plan_notify.is_empty());
        let want = as_before_format_9(before);
        let db = open_in_memory().unwrap();
        sm_tables::store_format_8(&db, &want).unwrap();
        let old = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: want.last_applied,
                last_membership: want.membership.clone(),
                snapshot_id: "old".into(),
            },
            data: super::super::legacy::write::sm_v8(&want),
        };
        meta_put(&db, "snapshot", &old).unwrap();
        assert_upgraded(db, &want, true).await;
    }

    /// Format 7 had no trust record, and its snapshots the whole state without it.
    #[tokio::test]
    async fn format_7_entries_and_their_snapshot_are_upgraded_once() {
        let before = now(&applied(open_in_memory().unwrap()).await);
        assert!(!before.cluster.trust.keys.is_empty());
        let want = as_before_format_8(before);
        let db = open_in_memory().unwrap();
        sm_tables::store_format_7(&db, &want).unwrap();
        let old = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: want.last_applied,
                last_membership: want.membership.clone(),
                snapshot_id: "old".into(),
            },
            data: super::super::legacy::write::sm_v7(&want),
        };
        meta_put(&db, "snapshot", &old).unwrap();
        assert_upgraded(db, &want, true).await;
    }

    /// Format 6 had no tokens, and its snapshots the whole state without them.
    #[tokio::test]
    async fn format_6_entries_and_their_snapshot_are_upgraded_once() {
        let before = now(&applied(open_in_memory().unwrap()).await);
        assert!(!before.cluster.tokens.is_empty());
        let want = as_before_format_7(before);
        let db = open_in_memory().unwrap();
        sm_tables::store_format_6(&db, &want).unwrap();
        let old = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: want.last_applied,
                last_membership: want.membership.clone(),
                snapshot_id: "old".into(),
            },
            data: super::super::legacy::write::sm_v6(&want),
        };
        meta_put(&db, "snapshot", &old).unwrap();
        assert_upgraded(db, &want, true).await;
    }

    /// Format 5 had no balancer records, and its snapshots the whole state without them.
    #[tokio::test]
    async fn format_5_entries_and_their_snapshot_are_upgraded_once() {
        let before = now(&applied(open_in_memory().unwrap()).await);
        assert!(!before.cluster.balancers.is_empty());
        let want = as_before_format_6(before);
        let db = open_in_memory().unwrap();
        sm_tables::store_format_5(&db, &want).unwrap();
        let old = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: want.last_applied,
                last_membership: want.membership.clone(),
                snapshot_id: "old".into(),
            },
            data: super::super::legacy::write::sm_v5(&want),
        };
        meta_put(&db, "snapshot", &old).unwrap();
        assert_upgraded(db, &want, true).await;
    }

    #[tokio::test]
    async fn an_installed_snapshot_replaces_every_entry() {
        let mut src = applied(open_in_memory().unwrap()).await;
        let snap = src.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let db = open_in_memory().unwrap();
        let mut dst = StateMachine::load(db.clone()).unwrap();
        let stale = vec![
            Command::Bootstrap {
                nodes: vec![NewNode {
                    name: "zz".into(),
                    id: 9,
                    links: vec!["127.0.0.99:1".into()],
                    api: "127.0.0.99:2".into(),
                }],
            },
            attr("zz", "old", Some("x")),
        ];
        dst.apply(entries(1, stale)).await.unwrap();
        dst.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        let want = now(&src);
        assert_eq!(now(&dst).cluster, want.cluster);
        assert_eq!(now(&dst).events, want.events);
        let back = now(&StateMachine::load(db).unwrap());
        assert_eq!(back.cluster, want.cluster);
        assert_eq!(back.events, want.events);
        assert_eq!(
            back.cluster.nodes.keys().collect::<BTreeSet<_>>(),
            BTreeSet::from([&"n1".to_string(), &"n2".to_string(), &"n3".to_string()])
        );
        assert_eq!(back.last_applied, want.last_applied);
    }

    #[test]
    fn a_snapshot_built_off_the_runtime_never_replaces_a_newer_one() {
        let db = open_in_memory().unwrap();
        let at = |index: u64| {
            stored_snapshot(&SmData {
                last_applied: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
                ..SmData::default()
            })
        };
        let stored = |db: &Database| {
            meta_get::<StoredSnapshot>(db, "snapshot")
                .unwrap()
                .and_then(|s| s.meta.last_log_id)
                .map(|l| l.index)
        };
        store_snapshot(&db, &at(10)).unwrap();
        assert_eq!(stored(&db), Some(10));
        store_snapshot(&db, &at(5)).unwrap();
        assert_eq!(stored(&db), Some(10), "an older build finishing late is not stored");
        store_snapshot(&db, &at(12)).unwrap();
        assert_eq!(stored(&db), Some(12));
    }
}
