//! Durable Raft storage, one redb file per group (`group::db_file`): the log (`log` table,
//! except the session group's, which is in segment files: `filelog`;
//! index → postcard entry) and metadata (`meta` table: vote, committed id, last purged id; in
//! the cluster group's file also its last snapshot and the node's incarnation). [`LogStore`] is
//! generic over the group's type config: any group whose entries are serde (all are, with
//! openraft's `serde` feature) reuses it on its own file. Every write is a redb transaction
//! committed with fsync, so a kill -9 at any moment loses nothing that was acknowledged. The
//! cluster group's state machine (`state_machine`) lives in the same file, one entry per entity
//! (`sm_tables`), and persists what each applied batch changed, so a restart does not replay the
//! log to rebuild it.

// openraft's StorageError (224 bytes) is the error type its storage traits require; our helpers
// return it too rather than boxing and unboxing at every trait boundary.
#![allow(clippy::result_large_err)]

pub use super::state_machine::{SmData, StateMachine};
use super::{LogId, NodeId, StorageError};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, RaftLogId, RaftLogReader, RaftTypeConfig, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Errors opening the store (everything after opening is reported as openraft's StorageError).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the database {path}: {source}")]
    Open { path: String, source: redb::Error },
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("decoding {what}: {source}")]
    Decode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("stored {0} is not valid UTF-8")]
    Corrupt(&'static str),
    #[error("{0}")]
    SnapshotFile(#[from] super::snapfile::SnapshotFileError),
}

impl From<redb::TableError> for StoreError {
    fn from(e: redb::TableError) -> Self {
        StoreError::Db(e.into())
    }
}

pub(super) fn io(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Invariant: our types serialize infallibly with postcard (no maps with non-string keys
    // issues, no `deserialize_any`); a failure here is a programming error caught by tests.
    postcard::to_allocvec(v).expect("postcard encoding of a phalanx type")
}

pub(super) fn decode<T: DeserializeOwned>(what: &'static str, b: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|source| StoreError::Decode { what, source })
}

/// Open (or create) the database at `path`.
pub fn open(path: &Path) -> Result<Arc<Database>, StoreError> {
    let db = Database::create(path).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        source: e.into(),
    })?;
    init(db)
}

/// An in-memory database (tests of the pure shell on a fake network).
pub fn open_in_memory() -> Result<Arc<Database>, StoreError> {
    let db = Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .map_err(|e| StoreError::Db(e.into()))?;
    init(db)
}

fn init(db: Database) -> Result<Arc<Database>, StoreError> {
    let tx = db.begin_write().map_err(redb::Error::from)?;
    tx.open_table(LOG).map_err(redb::Error::from)?;
    tx.open_table(META).map_err(redb::Error::from)?;
    tx.commit().map_err(redb::Error::from)?;
    Ok(Arc::new(db))
}

pub(super) fn meta_get<T: DeserializeOwned>(db: &Database, key: &'static str) -> Result<Option<T>, StoreError> {
    let rx = db.begin_read().map_err(redb::Error::from)?;
    let t = rx.open_table(META).map_err(redb::Error::from)?;
    match t.get(key).map_err(redb::Error::from)? {
        Some(v) => Ok(Some(decode(key, v.value())?)),
        None => Ok(None),
    }
}

pub(super) fn meta_put<T: Serialize>(db: &Database, key: &str, v: &T) -> Result<(), redb::Error> {
    meta_put_with(db, key, v, redb::Durability::Immediate)
}

fn meta_put_with<T: Serialize>(
    db: &Database,
    key: &str,
    v: &T,
    durability: redb::Durability,
) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(durability)?;
    {
        let mut t = tx.open_table(META)?;
        t.insert(key, encode(v).as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// The entries of the log table, oldest first, as stored (a group whose log moved to segment
/// files, `filelog`, reads them once).
pub(super) fn redb_log(db: &Database) -> Result<Vec<Vec<u8>>, StoreError> {
    let rx = db.begin_read().map_err(redb::Error::from)?;
    let t = rx.open_table(LOG)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(redb::Error::from)? {
        out.push(row.map_err(redb::Error::from)?.1.value().to_vec());
    }
    Ok(out)
}

/// Empty the log table (durably).
pub(super) fn clear_redb_log(db: &Database) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(redb::Error::from)?;
    tx.open_table(LOG)?.retain(|_, _| false).map_err(redb::Error::from)?;
    tx.commit().map_err(redb::Error::from)?;
    Ok(())
}

/// A number that grows on every start of this node (persisted; never below the wall clock in
/// ms, so a wiped data dir still yields a fresh incarnation). Heartbeats carry it for replay
/// protection across restarts.
pub fn next_incarnation(db: &Database, wall_ms: u64) -> Result<u64, StoreError> {
    let last: u64 = meta_get(db, "incarnation")?.unwrap_or(0);
    let next = (last + 1).max(wall_ms);
    meta_put(db, "incarnation", &next)?;
    Ok(next)
}

// ---- log -----------------------------------------------------------------------------------

/// The Raft log (and vote) of group `C` on redb, in the group's own file.
pub struct LogStore<C> {
    db: Arc<Database>,
    _group: PhantomData<C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            _group: PhantomData,
        }
    }
}

impl<C> LogStore<C> {
    /// The log in `db` (from [`open`]: its tables exist).
    pub fn new(db: Arc<Database>) -> Self {
        LogStore {
            db,
            _group: PhantomData,
        }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StorageError> {
        meta_get(&self.db, key).map_err(|e| StorageIOError::read(io(e)).into())
    }

    fn put_meta<T: Serialize>(&self, key: &str, v: &T) -> Result<(), StorageError> {
        meta_put(&self.db, key, v).map_err(|e| StorageIOError::write(io(e)).into())
    }

    fn remove_range(&self, range: impl RangeBounds<u64>) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(LOG)?;
            t.retain_in(range, |_, _| false)?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl<C: RaftTypeConfig<NodeId = NodeId>> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + openraft::OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError> {
        let read = || -> Result<Vec<C::Entry>, StoreError> {
            let rx = self.db.begin_read().map_err(redb::Error::from)?;
            let t = rx.open_table(LOG).map_err(redb::Error::from)?;
            let mut out = Vec::new();
            for item in t.range(range).map_err(redb::Error::from)? {
                let (_, v) = item.map_err(redb::Error::from)?;
                out.push(decode("log entry", v.value())?);
            }
            Ok(out)
        };
        read().map_err(|e| StorageIOError::read_logs(io(e)).into())
    }
}

impl<C: RaftTypeConfig<NodeId = NodeId>> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta("purged")?;
        let last = || -> Result<Option<LogId>, StoreError> {
            let rx = self.db.begin_read().map_err(redb::Error::from)?;
            let t = rx.open_table(LOG).map_err(redb::Error::from)?;
            let last = t.last().map_err(redb::Error::from)?;
            match last {
                Some((_, v)) => Ok(Some(*decode::<C::Entry>("log entry", v.value())?.get_log_id())),
                None => Ok(None),
            }
        };
        let last_log_id = last()
            .map_err(|e| StorageIOError::read_logs(io(e)))?
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta("vote", vote)
            .map_err(|_| StorageIOError::write_vote(io("saving the vote")).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta("vote")
    }

    /// Not fsynced (openraft does not need it durable, and it would cost an fsync per commit
    /// on every node): the next log write persists it; after a crash openraft re-applies from
    /// the state machine's `last_applied` up to the last persisted one, and learns the rest from
    /// the leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        meta_put_with(&self.db, "committed", &committed, redb::Durability::None)
            .map_err(|e| StorageIOError::write(io(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = C::Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        // Another group's entries are its own types: a failure to encode one is an error
        // (openraft stops the group), not a panic.
        let write = || -> Result<(), StoreError> {
            let tx = self.db.begin_write().map_err(redb::Error::from)?;
            {
                let mut t = tx.open_table(LOG)?;
                for e in entries {
                    let bytes = postcard::to_allocvec(&e).map_err(|source| StoreError::Encode {
                        what: "log entry",
                        source,
                    })?;
                    t.insert(e.get_log_id().index, bytes.as_slice())
                        .map_err(redb::Error::from)?;
                }
            }
            tx.commit().map_err(redb::Error::from)?;
            Ok(())
        };
        match write() {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(io(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range(log_id.index..)
            .map_err(|e| StorageIOError::write_logs(io(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.put_meta("purged", &log_id)?;
        self.remove_range(..=log_id.index)
            .map_err(|e| StorageIOError::write_logs(io(e)).into())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Entry, Membership, Request, TypeConfig};
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, Membership as RaftMembership};
    use phalanx_core::ClusterState;
    use phalanx_core::Command;
    use std::collections::BTreeSet;

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    /// Every stored type round-trips through postcard (postcard cannot do `deserialize_any`).
    #[test]
    fn stored_types_round_trip() {
        let m = RaftMembership::new(vec![BTreeSet::from([1u64, 2, 3])], None);
        let e = entry(3, EntryPayload::Membership(m.clone()));
        let back: Entry = postcard::from_bytes(&encode(&e)).unwrap();
        assert_eq!(back.log_id, e.log_id);
        let cmd = Command::SetStandby {
            name: "n1".into(),
            standby: true,
        };
        let e = entry(4, EntryPayload::Normal(Request(cmd.clone())));
        let back: Entry = postcard::from_bytes(&encode(&e)).unwrap();
        assert!(matches!(back.payload, EntryPayload::Normal(Request(c)) if c == cmd));
        let v = Vote::new(7, 2);
        assert_eq!(postcard::from_bytes::<Vote<NodeId>>(&encode(&v)).unwrap(), v);
        let sm = SmData {
            last_applied: Some(e.log_id),
            membership: Membership::new(Some(e.log_id), m),
            cluster: ClusterState::default(),
            events: Default::default(),
        };
        let back: SmData = postcard::from_bytes(&encode(&sm)).unwrap();
        assert_eq!(back.membership, sm.membership);
    }

    #[test]
    fn incarnation_grows() {
        let db = open_in_memory().unwrap();
        let a = next_incarnation(&db, 5).unwrap();
        let b = next_incarnation(&db, 5).unwrap();
        let c = next_incarnation(&db, 1000).unwrap();
        assert_eq!((a, b, c), (5, 6, 1000));
    }

    /// The cluster group's stores (this log store and the cluster state machine, in memory)
    /// against openraft's storage suite.
    struct ClusterStores;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore<TypeConfig>, StateMachine> for ClusterStores {
        async fn build(&self) -> Result<((), LogStore<TypeConfig>, StateMachine), StorageError> {
            let db = open_in_memory().unwrap();
            Ok(((), LogStore::new(db.clone()), StateMachine::load(db).unwrap()))
        }
    }

    #[test]
    fn the_cluster_groups_stores_pass_openrafts_storage_suite() {
        openraft::testing::Suite::test_all(ClusterStores).unwrap();
    }
}
