//! The `sessions` Raft group's glue (issue 15): its type config ([`SessionsGroup`]), what it
//! logs (a [`Batch`] of memcached write requests with the leader's time and memory limit) and
//! its state machine ([`SessionsSm`]): the pure `phalanx_core::sessions` store, applied in
//! memory, persisting only the items applied batches changed (one record per item in
//! `<data_dir>/raft-sessions.redb`, at most every `FLUSH_EVERY`), so that neither applying nor
//! restarting costs the whole store. The group's log is append-only segment files (`filelog`, `<data_dir>/raft-sessions.log/`:
//! [`Storage`]). Snapshots are the whole store in postcard, built and installed off the runtime
//! threads; openraft compacts the group's log behind them.

// openraft's StorageError (224 bytes) is the error type its storage traits require.
#![allow(clippy::result_large_err)]

use super::filelog::{FileLog, FileLogError};
use super::group::{Group, GroupId};
use super::state_machine::{current_snapshot, off_runtime, poisoned, store_snapshot, StoredSnapshot};
use super::store::{decode, encode, io, StoreError, META};
use super::{BasicNode, LogId, Membership, NodeId, StorageError};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use phalanx_core::sessions::engine::answer_logged;
use phalanx_core::sessions::protocol::Request;
use phalanx_core::sessions::store::{Item, Store, StoreMeta};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The session store's group.
pub const SESSIONS: GroupId = GroupId::new("sessions");

/// The group's storage on a node: its redb file (the applied store, the vote, the last
/// snapshot: `raft-sessions.redb`) and its log's segment files (`raft-sessions.log/`).
#[derive(Clone)]
pub struct Storage {
    pub db: Arc<Database>,
    pub log: FileLog<SessionsGroup>,
}

impl Storage {
    /// Open (or create) the group's storage in a node's data directory.
    pub fn open(data_dir: &Path) -> Result<Storage, FileLogError> {
        let db = super::store::open(&super::group::db_file(data_dir, SESSIONS))?;
        let log = FileLog::open(&data_dir.join("raft-sessions.log"), db.clone())?;
        Ok(Storage { db, log })
    }
}

/// Item key → postcard [`Item`].
const ITEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions_items");
/// `"applied"` → postcard [`Applied`].
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions_meta");

/// What the leader logs: write requests as the clients sent them, answered by every replica
/// with `engine::answer_logged` at `now_ms` (the leader's clock when it proposed; a replica
/// never uses its own), holding at most `limit` bytes (the leader's `[sessions]
/// memory_limit`, logged so that every replica evicts alike while a config change spreads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub now_ms: u64,
    pub limit: u64,
    pub requests: Vec<Request>,
}

/// The answers of a batch, one per request, in memcached's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answers(pub Vec<Vec<u8>>);

openraft::declare_raft_types!(
    /// The session store's Raft types.
    pub SessionsGroup:
        D = Batch,
        R = Answers,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

impl Group for SessionsGroup {
    const ID: GroupId = SESSIONS;
}

pub type SessionsRaft = openraft::Raft<SessionsGroup>;

/// Where the state machine stands, persisted with every applied batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: Membership,
    store: StoreMeta,
    /// The latest logged time (time never goes back, even when a new leader's clock is behind).
    now_ms: u64,
    limit: u64,
}

/// The applied store, shared with the listener (reads) and status.
pub struct SmState {
    pub store: Store,
    applied: Applied,
}

impl SmState {
    /// The latest time the log carried (unix ms).
    pub fn logged_now_ms(&self) -> u64 {
        self.applied.now_ms
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.applied.last_applied
    }
}

/// A whole store: a snapshot's content.
#[derive(Serialize, Deserialize)]
struct Whole {
    applied: Applied,
    items: Vec<(Vec<u8>, Item)>,
}

/// The session store's state machine.
#[derive(Clone)]
pub struct SessionsSm {
    db: Arc<Database>,
    state: Arc<Mutex<SmState>>,
    /// When the applied store was last written to redb, and last durably (see [`FLUSH_EVERY`]).
    flushed: Arc<Mutex<Flushed>>,
    /// Held over a write from taking the changes to its commit: writes commit in the order
    /// they took them.
    writer: Arc<Mutex<()>>,
    /// A write in the background failed: its changes were taken, so redb no longer follows
    /// the store, and the next apply fails with this (the group stops, as when a write on the
    /// apply path failed).
    failed: Arc<Mutex<Option<String>>>,
}

struct Flushed {
    at: Instant,
    durable_at: Instant,
}

/// What applied batches changed is written to redb at most this often (the items changed
/// since, each once however often it changed, and where the store stands), without an fsync:
/// the log has those batches, fsynced, and is purged only behind a snapshot, which writes
/// first (a restarted node applies again what its redb copy lacks; with a write per batch the
/// redb transactions were 10 % of the machine's CPU under the session benchmark).
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A write is durable at most this long after the one before: redb keeps the pages a
/// non-durable commit freed until a durable one, so without it the file would grow until the
/// next purge (which is durable).
const DURABLE_EVERY: Duration = Duration::from_secs(1);

impl SessionsSm {
    /// Load the persisted store (empty on a fresh node); `limit` until a batch logs one.
    pub fn load(db: Arc<Database>, limit: u64) -> Result<SessionsSm, StoreError> {
        let tx = db.begin_write().map_err(redb::Error::from)?;
        tx.open_table(ITEMS)?;
        tx.open_table(SM_META)?;
        tx.commit().map_err(redb::Error::from)?;
        let rx = db.begin_read().map_err(redb::Error::from)?;
        let meta = rx.open_table(SM_META)?;
        let applied: Applied = match meta.get("applied").map_err(redb::Error::from)? {
            Some(v) => decode("sessions state", v.value())?,
            None => Applied {
                limit,
                ..Applied::default()
            },
        };
        let mut items = Vec::new();
        for row in rx.open_table(ITEMS)?.iter().map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            items.push((k.value().to_vec(), decode::<Item>("session item", v.value())?));
        }
        let store = Store::from_parts(applied.limit as usize, applied.store, items);
        Ok(SessionsSm {
            db,
            state: Arc::new(Mutex::new(SmState { store, applied })),
            flushed: Arc::new(Mutex::new(Flushed {
                at: Instant::now(),
                durable_at: Instant::now(),
            })),
            writer: Default::default(),
            failed: Default::default(),
        })
    }

    /// Whether a write to redb is due (`FLUSH_EVERY` has passed, or `now`), and whether it is
    /// to be durable (`DURABLE_EVERY` has passed); None: not yet.
    fn due(&self, now: bool) -> Result<Option<bool>, StorageError> {
        let mut f = self.flushed.lock().map_err(|_| poisoned())?;
        if !now && f.at.elapsed() < FLUSH_EVERY {
            return Ok(None);
        }
        f.at = Instant::now();
        let durable = f.durable_at.elapsed() >= DURABLE_EVERY;
        if durable {
            f.durable_at = f.at;
        }
        Ok(Some(durable))
    }

    /// Write what changed since the last write to redb now (blocking: off the runtime, or in
    /// tests), durably if `durable`.
    fn flush(&self, durable: bool) -> Result<(), StorageError> {
        let _writing = self.writer.lock().map_err(|_| poisoned())?;
        let (cleared, items, applied) = {
            let mut s = self.state.lock().map_err(|_| poisoned())?;
            let changes = s.store.take_changes();
            let items: Vec<(Vec<u8>, Option<Vec<u8>>)> = changes
                .keys
                .into_iter()
                .map(|k| {
                    let v = s.store.raw(&k).map(encode);
                    (k, v)
                })
                .collect();
            s.applied.store = s.store.meta();
            (changes.cleared, items, encode(&s.applied))
        };
        write_changes(&self.db, cleared, &items, &applied, durable)
            .map_err(|e| StorageError::from(StorageIOError::write_state_machine(io(e))))
    }

    /// The applied store (reads lock it briefly; the listener answers gets under it).
    pub fn lock(&self) -> MutexGuard<'_, SmState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Write what applied batches changed: the changed items (or their removal), the meta; fsynced
/// only when `durable` (the log is, and see [`FLUSH_EVERY`] for why that is enough).
fn write_changes(
    db: &Database,
    cleared: bool,
    items: &[(Vec<u8>, Option<Vec<u8>>)],
    applied: &[u8],
    durable: bool,
) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    if !durable {
        tx.set_durability(redb::Durability::None)?;
    }
    {
        let mut t = tx.open_table(ITEMS)?;
        if cleared {
            t.retain(|_, _| false)?;
        }
        for (k, v) in items {
            match v {
                Some(v) => {
                    t.insert(k.as_slice(), v.as_slice())?;
                }
                None => {
                    t.remove(k.as_slice())?;
                }
            }
        }
        tx.open_table(SM_META)?.insert("applied", applied)?;
    }
    tx.commit()?;
    Ok(())
}

/// Replace everything with `whole` (an installed snapshot), fsynced, with the snapshot itself.
fn write_whole(db: &Database, whole: &Whole, snapshot: &[u8]) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut t = tx.open_table(ITEMS)?;
        t.retain(|_, _| false)?;
        for (k, item) in &whole.items {
            t.insert(k.as_slice(), encode(item).as_slice())?;
        }
        tx.open_table(SM_META)?
            .insert("applied", encode(&whole.applied).as_slice())?;
        tx.open_table(META)?.insert("snapshot", snapshot)?;
    }
    tx.commit()?;
    Ok(())
}

fn snapshot_of(whole: &Whole) -> StoredSnapshot {
    StoredSnapshot::of(
        whole.applied.last_applied,
        whole.applied.membership.clone(),
        encode(whole),
    )
}

impl RaftSnapshotBuilder<SessionsGroup> for SessionsSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<SessionsGroup>, StorageError> {
        // The log will be purged behind this snapshot: what redb lacks is written first (the
        // purge's durable commit makes it durable), after any write in the background.
        let durable = self.due(true)?.unwrap_or(false);
        let me = self.clone();
        off_runtime(move || me.flush(durable), StorageIOError::write_state_machine).await?;
        // Copied under the lock (a memcpy of the store), encoded and stored off the runtime.
        let whole = {
            let s = self.state.lock().map_err(|_| poisoned())?;
            let mut applied = s.applied.clone();
            applied.store = s.store.meta();
            Whole {
                applied,
                items: s.store.items().map(|(k, i)| (k.clone(), i.clone())).collect(),
            }
        };
        let db = self.db.clone();
        let snap = off_runtime(
            move || {
                let snap = snapshot_of(&whole);
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

impl RaftStateMachine<SessionsGroup> for SessionsSm {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let s = self.state.lock().map_err(|_| poisoned())?;
        Ok((s.applied.last_applied, s.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answers>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<SessionsGroup>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        if let Some(e) = self.failed.lock().map_err(|_| poisoned())?.clone() {
            return Err(StorageError::from(StorageIOError::write_state_machine(io(
                std::io::Error::other(e),
            ))));
        }
        let mut out = Vec::new();
        {
            let mut guard = self.state.lock().map_err(|_| poisoned())?;
            let s = &mut *guard;
            for e in entries {
                s.applied.last_applied = Some(e.log_id);
                out.push(match e.payload {
                    EntryPayload::Blank => Answers::default(),
                    EntryPayload::Normal(batch) => {
                        s.applied.now_ms = s.applied.now_ms.max(batch.now_ms);
                        s.applied.limit = batch.limit;
                        s.store.set_limit(batch.limit as usize);
                        let now = s.applied.now_ms;
                        Answers(
                            batch
                                .requests
                                .iter()
                                .map(|r| answer_logged(&mut s.store, r, now).bytes)
                                .collect(),
                        )
                    }
                    EntryPayload::Membership(m) => {
                        s.applied.membership = Membership::new(Some(e.log_id), m);
                        Answers::default()
                    }
                });
            }
        }
        // Written by a blocking thread: a write (an fsync every `DURABLE_EVERY`) on the apply
        // path held every commit, and the reads queued behind them, for its duration.
        if let Some(durable) = self.due(false)? {
            let me = self.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = me.flush(durable) {
                    tracing::error!(error = %e, "sessions: writing the applied store failed");
                    *me.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
            });
        }
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
        let whole = off_runtime(
            move || {
                let whole: Whole = decode("sessions snapshot", &bytes)
                    .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io(e)))?;
                let stored = encode(&StoredSnapshot { meta, data: bytes });
                write_whole(&db, &whole, &stored).map_err(|e| StorageIOError::write_state_machine(io(e)))?;
                Ok(whole)
            },
            StorageIOError::write_state_machine,
        )
        .await?;
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        s.store = Store::from_parts(whole.applied.limit as usize, whole.applied.store, whole.items);
        s.applied = whole.applied;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SessionsGroup>>, StorageError> {
        current_snapshot(self.db.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::open;
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::CommittedLeaderId;
    use phalanx_core::sessions::protocol::{StoreMode, TextRequest};

    struct Stores(tempfile::TempDir);

    impl StoreBuilder<SessionsGroup, FileLog<SessionsGroup>, SessionsSm> for Stores {
        async fn build(&self) -> Result<((), FileLog<SessionsGroup>, SessionsSm), StorageError> {
            let dir = self.0.path().join(rand::random::<u64>().to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let s = Storage::open(&dir).unwrap();
            Ok(((), s.log, SessionsSm::load(s.db, 1 << 20).unwrap()))
        }
    }

    #[test]
    fn the_sessions_group_passes_openrafts_storage_suite() {
        Suite::test_all(Stores(tempfile::tempdir().unwrap())).unwrap();
    }

    fn set(key: &str, value: &str) -> Request {
        Request::Text(TextRequest::Store {
            mode: StoreMode::Set,
            key: key.into(),
            flags: 0,
            exptime: 0,
            cas: None,
            data: value.into(),
            noreply: false,
        })
    }

    fn entry(index: u64, now_ms: u64, requests: Vec<Request>) -> openraft::Entry<SessionsGroup> {
        openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch {
                now_ms,
                limit: 1 << 20,
                requests,
            }),
        }
    }

    /// Applied batches answer in memcached's bytes, persist item by item, and a reload reads
    /// back the same store; time never goes back when a later batch carries an earlier clock.
    #[tokio::test]
    async fn applied_items_persist_one_by_one_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-sessions.redb");
        let db = open(&path).unwrap();
        let mut sm = SessionsSm::load(db.clone(), 1 << 20).unwrap();
        let add = Request::Text(TextRequest::Store {
            mode: StoreMode::Add,
            key: "a".into(),
            flags: 0,
            exptime: 0,
            cas: None,
            data: "z".into(),
            noreply: false,
        });
        let out = sm
            .apply(vec![
                entry(1, 2_000, vec![set("a", "1"), set("b", "2")]),
                entry(2, 1_000, vec![add]),
            ])
            .await
            .unwrap();
        assert_eq!(out[0].0, vec![b"STORED\r\n".to_vec(), b"STORED\r\n".to_vec()]);
        assert_eq!(out[1].0, vec![b"NOT_STORED\r\n".to_vec()]);
        assert_eq!(sm.lock().logged_now_ms(), 2_000, "time never goes back");
        sm.flush(false).unwrap();
        let del = Request::Text(TextRequest::Delete {
            key: "b".into(),
            noreply: false,
        });
        sm.apply(vec![entry(3, 3_000, vec![del])]).await.unwrap();
        sm.flush(false).unwrap();
        let before = sm.lock().store.clone();
        drop(sm);
        let mut again = SessionsSm::load(db.clone(), 1 << 20).unwrap();
        {
            let s = again.lock();
            assert_eq!(s.store, before);
            assert_eq!(s.last_applied().map(|l| l.index), Some(3));
            assert!(s.store.raw(b"a").is_some() && s.store.raw(b"b").is_none());
        }
        // The log is purged behind a snapshot: building one writes what redb lacked.
        again.apply(vec![entry(4, 4_000, vec![set("c", "3")])]).await.unwrap();
        again.build_snapshot().await.unwrap();
        drop(again);
        let s = SessionsSm::load(db, 1 << 20).unwrap();
        assert_eq!(s.lock().last_applied().map(|l| l.index), Some(4));
        assert!(s.lock().store.raw(b"c").is_some());
    }
}
