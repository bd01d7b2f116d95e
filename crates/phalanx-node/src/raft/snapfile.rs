//! A Raft group's snapshot in a file of its own (the session store's: a full store is tens of
//! MB), written a little at a time so that it never holds up the log's appends on the same
//! disk. Stored in redb, one 58 MB snapshot was one commit whose write and fsync took 300–560
//! ms, and every node's log `fdatasync`s queued behind it (each client of the store waited up
//! to 150 ms). Here the snapshot goes to `<file>.tmp` in chunks of [`CHUNK`] bytes, each made
//! durable (`fdatasync`) before the next, [`PAUSE`] apart, and only then replaces the file
//! (rename, then the directory synced): a crash leaves the previous snapshot, and a
//! `<file>.tmp` that the next opening removes.
//!
//! Layout: `PHXSNAP1`, the meta's length (u32 LE), the data's length (u64 LE), the crc32 of meta
//! and data (u32 LE), the meta (postcard: openraft's `SnapshotMeta`), the data. A file that
//! does not read back whole (a bad magic, a short file, a bad checksum) is an error naming the
//! file: the daemon refuses to start rather than serve a store it cannot vouch for.
//!
//! No library writes a file paced like this (RocksDB's rate-limited deletes and writes do it for
//! its own files); it is a loop over `write` and `fdatasync`.

use super::filelog::PurgeBound;
use super::state_machine::StoredSnapshot;
use super::{BasicNode, LogId, NodeId};
use openraft::SnapshotMeta;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const MAGIC: &[u8; 8] = b"PHXSNAP1";
const HEADER: usize = 8 + 4 + 8 + 4;
/// What is written (and made durable) at once.
const CHUNK: usize = 1 << 20;
/// Between two chunks: the log's appends on the same disk go first.
const PAUSE: Duration = Duration::from_millis(5);

/// Why a snapshot file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is damaged: {what} (the snapshot cannot be trusted: replace this node as a failed one)")]
    Damaged { path: String, what: String },
}

/// A group's snapshot file. Writers are serialized, and a snapshot older than the one stored
/// (a build that finished after a newer snapshot was installed) is not written.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    /// The last log id of the snapshot stored (None: none yet), held while one is written.
    stored: Mutex<Option<Option<LogId>>>,
    /// The group log's purges wait for what is stored here (see `FileLog::purge_upto`).
    bound: Option<PurgeBound>,
}

impl SnapshotFile {
    /// The snapshot file at `path` (it may not exist yet); a `.tmp` an interrupted write left
    /// behind is removed.
    pub fn at(path: &Path) -> Result<SnapshotFile, SnapshotFileError> {
        let tmp = tmp_of(path);
        match std::fs::remove_file(&tmp) {
            Ok(()) => tracing::info!(file = %tmp.display(), "removed a snapshot a crash left half written"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&tmp)(e)),
        }
        Ok(SnapshotFile {
            path: path.to_path_buf(),
            stored: Mutex::new(None),
            bound: None,
        })
    }

    /// Raise `bound` to what is stored here, as it is stored.
    pub fn bounding(mut self, bound: PurgeBound) -> Self {
        self.bound = Some(bound);
        self
    }

    fn raise_bound(&self, last: Option<LogId>) {
        if let (Some(b), Some(l)) = (&self.bound, last) {
            b.raise(l.index);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored snapshot, read whole and checked (None: there is none).
    pub(super) fn read(&self) -> Result<Option<StoredSnapshot>, SnapshotFileError> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&self.path)(e)),
        };
        let damaged = |what: String| SnapshotFileError::Damaged {
            path: self.path.display().to_string(),
            what,
        };
        let mut h = [0u8; HEADER];
        f.read_exact(&mut h)
            .map_err(|e| damaged(format!("its header does not read back ({e})")))?;
        if &h[..8] != MAGIC {
            return Err(damaged("not a phalanx snapshot (bad magic)".into()));
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let meta_len = u32_at(8) as usize;
        let data_len = u64::from_le_bytes(h[12..20].try_into().unwrap_or_default());
        let crc = u32_at(20);
        let file_len = f.metadata().map_err(io_at(&self.path))?.len();
        if file_len != (HEADER + meta_len) as u64 + data_len {
            return Err(damaged(format!(
                "{file_len} bytes where its header says {}",
                (HEADER + meta_len) as u64 + data_len
            )));
        }
        let mut meta = vec![0u8; meta_len];
        let mut data = vec![0u8; data_len as usize];
        f.read_exact(&mut meta)
            .and_then(|()| f.read_exact(&mut data))
            .map_err(io_at(&self.path))?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&meta);
        hasher.update(&data);
        if hasher.finalize() != crc {
            return Err(damaged("its checksum does not match".into()));
        }
        let meta: SnapshotMeta<NodeId, BasicNode> =
            postcard::from_bytes(&meta).map_err(|e| damaged(format!("its meta does not decode ({e})")))?;
        Ok(Some(StoredSnapshot { meta, data }))
    }

    /// Record what is stored (read back at load) for the older-than-stored check of
    /// [`SnapshotFile::store`].
    pub fn note_stored(&self, last: Option<LogId>) {
        let mut s = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_none_or(|had| had < last) {
            *s = Some(last);
        }
        self.raise_bound(last);
    }

    /// Store `snap` (paced: see the module), unless the stored snapshot is newer; whether it
    /// was stored. Blocks for as long as the write takes: call it off the runtime.
    pub(super) fn store(&self, snap: &StoredSnapshot) -> Result<bool, SnapshotFileError> {
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if stored.is_some_and(|had| had > snap.meta.last_log_id) {
            return Ok(false);
        }
        let meta = postcard::to_allocvec(&snap.meta).map_err(|e| SnapshotFileError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&meta);
        hasher.update(&snap.data);
        let mut head = Vec::with_capacity(HEADER + meta.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        head.extend_from_slice(&(snap.data.len() as u64).to_le_bytes());
        head.extend_from_slice(&hasher.finalize().to_le_bytes());
        head.extend_from_slice(&meta);
        let tmp = tmp_of(&self.path);
        let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
        f.write_all(&head).map_err(io_at(&tmp))?;
        for (i, chunk) in snap.data.chunks(CHUNK).enumerate() {
            if i > 0 {
                std::thread::sleep(PAUSE);
            }
            f.write_all(chunk).and_then(|()| f.sync_data()).map_err(io_at(&tmp))?;
        }
        f.sync_all().map_err(io_at(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io_at(&self.path))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))?;
        *stored = Some(snap.meta.last_log_id);
        self.raise_bound(snap.meta.last_log_id);
        Ok(true)
    }
}

fn tmp_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotFileError + '_ {
    move |source| SnapshotFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, StoredMembership};

    fn snap(index: u64, data: Vec<u8>) -> StoredSnapshot {
        StoredSnapshot::of(
            Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            StoredMembership::default(),
            data,
        )
    }

    #[test]
    fn a_stored_snapshot_reads_back_and_an_older_one_does_not_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snapshot");
        let f = SnapshotFile::at(&path).unwrap();
        assert!(f.read().unwrap().is_none());
        let big: Vec<u8> = (0..(CHUNK * 2 + 123)).map(|i| (i % 251) as u8).collect();
        assert!(f.store(&snap(7, big.clone())).unwrap());
        let back = SnapshotFile::at(&path).unwrap().read().unwrap().unwrap();
        assert_eq!(back.meta, snap(7, vec![]).meta);
        assert_eq!(back.data, big);
        assert!(!f.store(&snap(5, b"older".to_vec())).unwrap(), "older than stored");
        assert!(f.store(&snap(9, b"newer".to_vec())).unwrap());
        let again = SnapshotFile::at(&path).unwrap();
        let read = again.read().unwrap().unwrap();
        assert_eq!(read.data, b"newer");
        again.note_stored(read.meta.last_log_id);
        assert!(
            !again.store(&snap(8, vec![])).unwrap(),
            "what was read back counts as stored"
        );
    }

    #[test]
    fn a_half_written_snapshot_is_removed_and_the_previous_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snapshot");
        SnapshotFile::at(&path)
            .unwrap()
            .store(&snap(3, b"whole".to_vec()))
            .unwrap();
        std::fs::write(tmp_of(&path), b"PHXSNAP1 cut short").unwrap();
        let f = SnapshotFile::at(&path).unwrap();
        assert!(!tmp_of(&path).exists());
        assert_eq!(f.read().unwrap().unwrap().data, b"whole");
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snapshot");
        SnapshotFile::at(&path).unwrap().store(&snap(3, vec![1; 1000])).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let cases = [
            (flipped, "checksum"),
            (whole[..whole.len() - 1].to_vec(), "where its header says"),
            (whole[..10].to_vec(), "header does not read back"),
            ([b"NOTSNAP!".as_slice(), &whole[8..]].concat(), "bad magic"),
        ];
        for (bytes, why) in cases {
            std::fs::write(&path, bytes).unwrap();
            let e = SnapshotFile::at(&path).unwrap().read().err().unwrap().to_string();
            assert!(e.contains("s.snapshot") && e.contains(why), "{why}: {e}");
        }
    }
}
