//! An append-only Raft log in segment files, for a group whose log is hot (the session store's:
//! every memcached write is an entry). Each append is one `pwrite` of the entries' records at
//! the end of the active segment and one `fdatasync` (on a blocking-pool thread, so that the
//! group's runtime goes on meanwhile; the entries are shown to readers once synced), where a
//! redb transaction rewrote a dozen B-tree pages per entry (the append was 18 % of the whole
//! machine's CPU under the session benchmark). The vote and the last purged id stay in the
//! group's redb file (`store::META`), whose state machine tables this log does not touch.
//!
//! Layout: `<dir>/<first index, 20 digits>.seg`, each a run of records `[len: u32 LE][crc32 of
//! the payload: u32 LE][payload: postcard entry]` with consecutive indexes; a segment is closed
//! at [`SEGMENT_BYTES`] and deleted when a purge passes its last entry. Opening reads every
//! segment back (each record's checksum, each entry's log id): a torn record at the end of the
//! last one, within the reach of one append (a crash during that append, which was therefore
//! never acknowledged), is cut off; a record anywhere else that does not read back refuses to
//! open, naming the file and offset (a gap between segments, which openraft never makes, is
//! only logged).
//!
//! A preallocated log ([`FileLog::preallocated`], the session store's) opens each new segment
//! on a file a thread of its own has already filled with zeros and synced (`next.spare`), as
//! etcd's WAL preallocates its segments: an append then overwrites blocks that exist and its
//! `fdatasync` writes the data alone, not the file's new size and block map as well (on this
//! machine's ext4, 16 KiB appends: 122-143 µs against 190-243 µs). A record stops at the first
//! all-zero header, so the written part of such a segment ends there; what follows must be
//! zeros, or within one append of it (a torn append), as for an unpreallocated one. As with
//! any preallocating log (etcd's too), a disk that zeroed the end of what it had synced is
//! read as a shorter log, not refused. Written by hand
//! because no kept crate offers a Raft log with openraft's append/truncate/purge contract.

// openraft's StorageError (224 bytes) is the error type its storage traits require.
#![allow(clippy::result_large_err)]

use super::store::{clear_redb_log, decode, io, meta_get, meta_put, redb_log, StoreError};
use super::{LogId, NodeId, StorageError};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogId, RaftLogReader, RaftTypeConfig, StorageIOError, Vote};
use redb::Database;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A segment is closed once it holds this many bytes (the next append opens a new one).
pub const SEGMENT_BYTES: u64 = 32 << 20;
/// A record's header: payload length, payload CRC-32.
const HEADER: usize = 8;
/// How far from a segment's end a record that does not read back may start and still be the
/// torn tail of one interrupted append (a batch of at most 4 MiB of requests on a leader, an
/// append request of at most `APPEND_BUDGET` on a follower, with one entry over it at most).
const MAX_TORN_TAIL: usize = 3 * super::APPEND_BUDGET;
/// The largest payload a record may claim (a bigger length is a torn or corrupt header).
const MAX_RECORD: usize = 64 << 20;
/// The extension a purged segment is renamed to before its removal (see `remove_segments`).
const PURGED: &str = "purged";
/// The zero-filled file made ready for a preallocated log's next segment (see `Spare`).
const SPARE: &str = "next.spare";
/// A spare is filled this many bytes at a time, each synced, [`SPARE_PAUSE`] apart, so that
/// the appends' `fdatasync`s never queue behind a whole segment's flush.
const SPARE_STEP: usize = 256 << 10;
const SPARE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
/// A purged segment is shrunk this many bytes at a time, [`SHRINK_PAUSE`] apart.
const SHRINK_STEP: u64 = 2 << 20;
const SHRINK_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
/// The upper bounds (seconds; +Inf follows) of the appends' time histogram
/// ([`FileLog::append_times`]), from 0.1 ms: an append on a quiet disk here takes 0.2 ms.
pub const APPEND_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// An append (write and fdatasync) at least this slow is logged as a warning: every write of
/// the group waits for it (etcd warns of a slow fdatasync at 1 s and a slow apply at 100 ms).
const SLOW_APPEND: std::time::Duration = std::time::Duration::from_millis(100);

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FileLogError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} at byte {offset}: {what}")]
    Corrupt { path: String, offset: u64, what: String },
    #[error("{0}")]
    Meta(#[from] StoreError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> FileLogError + '_ {
    move |source| FileLogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One segment file: its entries' ids and where each one's record ends.
struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Per entry, in index order from `first`: its log id and the offset its record ends at.
    entries: Vec<(LogId, u64)>,
    /// The file ends where its records do (not a zero-filled spare): each append extends it.
    grows: bool,
}

impl Segment {
    fn len(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.1)
    }

    fn start_of(&self, k: usize) -> u64 {
        if k == 0 {
            0
        } else {
            self.entries[k - 1].1
        }
    }

    fn next_index(&self) -> u64 {
        self.first + self.entries.len() as u64
    }
}

struct Inner {
    dir: PathBuf,
    segments: Vec<Segment>,
    purged: Option<LogId>,
    /// A purge openraft asked for beyond the stored snapshot (see [`FileLog::purge_upto`]).
    deferred: Option<LogId>,
    segment_bytes: u64,
    /// Threads removing purged segments' files (see [`FileLog::purge_upto`]).
    removals: Vec<std::thread::JoinHandle<()>>,
    /// Whether new segments start zero-filled (see [`FileLog::preallocated`]), and the next one.
    preallocate: bool,
    spare: Option<Spare>,
}

impl Inner {
    /// Start filling the next segment's spare, if the log is preallocated and none is.
    fn fill_spare(&mut self) {
        if self.preallocate && self.spare.is_none() {
            // A little over a segment: the append that crosses the size rarely extends the file.
            self.spare = Spare::fill(&self.dir, self.segment_bytes + self.segment_bytes / 8);
        }
    }
}

/// A preallocated log's next segment file, zero-filled by a thread of its own.
struct Spare(std::thread::JoinHandle<std::io::Result<File>>);

impl Spare {
    /// Start filling `<dir>/next.spare` with `bytes` zeros. A fill that fails (a full disk)
    /// removes what it wrote, so that the space is the log's again.
    fn fill(dir: &Path, bytes: u64) -> Option<Spare> {
        let path = dir.join(SPARE);
        let filling = std::thread::Builder::new()
            .name("phalanx-log-spare".into())
            .spawn(move || {
                let filled = zero_filled(&path, bytes);
                if filled.is_err() {
                    let _ = std::fs::remove_file(&path);
                }
                filled
            });
        match filling {
            Ok(h) => Some(Spare(h)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a thread to preallocate the next log segment");
                None
            }
        }
    }

    /// The file, if it is filled; None: still filling (kept for the next time), or failed.
    fn take(slot: &mut Option<Spare>) -> Option<File> {
        if !slot.as_ref()?.0.is_finished() {
            return None;
        }
        match slot.take()?.0.join() {
            Ok(Ok(f)) => Some(f),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot preallocate the next log segment: it grows as written");
                None
            }
            Err(_) => None,
        }
    }
}

impl Inner {
    fn last(&self) -> Option<LogId> {
        self.segments
            .iter()
            .rev()
            .find_map(|s| s.entries.last().map(|e| e.0))
            .or(self.purged)
    }
}

impl<C> FileLog<C> {
    /// How long this log's appends took since it opened (see [`APPEND_BUCKETS`]).
    pub fn append_times(&self) -> Histogram {
        Histogram {
            buckets: self.times.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum_us: self.times.sum_us.load(Ordering::Relaxed),
        }
    }

    /// The bytes of the records of the entries after `index` (all: None), what a snapshot at
    /// `index` would let a purge remove.
    pub fn bytes_after(&self, index: Option<u64>) -> u64 {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.segments
            .iter()
            .map(|s| {
                let skip = index.map_or(0, |i| (i + 1).saturating_sub(s.first).min(s.entries.len() as u64));
                s.len() - s.start_of(skip as usize)
            })
            .sum()
    }
}

/// The append-only log (and, in the redb file beside, the vote) of group `C`.
pub struct FileLog<C> {
    db: Arc<Database>,
    inner: Arc<Mutex<Inner>>,
    times: Arc<AppendTimes>,
    /// How far a purge may go at once (see [`FileLog::bounded_by`]); None: as far as asked.
    bound: Option<PurgeBound>,
    _group: PhantomData<C>,
}

impl<C> Clone for FileLog<C> {
    fn clone(&self) -> Self {
        FileLog {
            db: self.db.clone(),
            inner: self.inner.clone(),
            times: self.times.clone(),
            bound: self.bound.clone(),
            _group: PhantomData,
        }
    }
}

/// The last index the group's stored snapshot covers (None: none stored), shared by the
/// snapshot file, which raises it once a snapshot is durable, and the log, whose purges wait
/// for it (see [`FileLog::purge_upto`]).
#[derive(Clone, Debug, Default)]
pub struct PurgeBound(Arc<Mutex<Option<u64>>>);

impl PurgeBound {
    /// A snapshot covering up to `index` is stored (durably).
    pub fn raise(&self, index: u64) {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if b.is_none_or(|had| had < index) {
            *b = Some(index);
        }
    }

    fn allows(&self, upto: LogId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|i| i >= upto.index)
    }
}

/// How long appends took (write and fdatasync), counted per bucket of [`APPEND_BUCKETS`].
#[derive(Default)]
struct AppendTimes {
    buckets: [AtomicU64; APPEND_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// A latency histogram as status and metrics show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    /// Per bucket (+Inf last), not cumulative.
    pub buckets: Vec<u64>,
    /// The latencies' sum, microseconds.
    pub sum_us: u64,
}

impl Histogram {
    /// The upper bound (seconds; infinite for the last bucket) of the bucket of
    /// [`APPEND_BUCKETS`] that holds the `q` quantile; None with nothing counted.
    pub fn append_quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (k, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(APPEND_BUCKETS.get(k).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

/// Entries written at a segment's end and not yet synced (see [`FileLog::write_unsynced`]).
struct Written {
    file: Arc<File>,
    offset: u64,
    bytes: usize,
    ends: Vec<(LogId, u64)>,
    began: std::time::Instant,
}

/// A file of `bytes` zeros at `path`, written [`SPARE_STEP`] at a time, each synced.
fn zero_filled(path: &Path, bytes: u64) -> std::io::Result<File> {
    let file = create(path)?;
    let zeros = vec![0u8; SPARE_STEP];
    let mut at = 0u64;
    while at < bytes {
        let n = zeros.len().min((bytes - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        file.sync_data()?;
        at += n as u64;
        std::thread::sleep(SPARE_PAUSE);
    }
    Ok(file)
}

/// Create (or empty) a file for reading and writing.
fn create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// Sync the directory, so that a segment created or removed stays so after a crash.
fn sync_dir(dir: &Path) -> Result<(), std::io::Error> {
    File::open(dir)?.sync_all()
}

/// Where a segment stops reading back: the offset of the record and why.
type Bad = Option<(usize, &'static str)>;

/// The records of `bytes` (a segment's content from its start): each payload's range, until the
/// end, an all-zero header (a preallocated segment's unwritten part) or the first record that
/// does not read back.
fn records(bytes: &[u8]) -> (Vec<(usize, usize)>, Bad) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER) else {
            return (out, Some((at, "a torn record header")));
        };
        if header.iter().all(|b| *b == 0) {
            // The written part of a preallocated segment ends here (a record is never empty).
            return (out, None);
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD {
            return (out, Some((at, "a record longer than any entry")));
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            return (out, Some((at, "a torn record")));
        };
        if crc32fast::hash(payload) != crc {
            return (out, Some((at, "a record whose checksum does not match")));
        }
        out.push((at + HEADER, at + HEADER + len));
        at += HEADER + len;
    }
    (out, None)
}

fn encode_record(entry: &impl Serialize, buf: &mut Vec<u8>) -> Result<(), postcard::Error> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    *buf = postcard::to_extend(entry, std::mem::take(buf))?;
    let len = (buf.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

impl<C: RaftTypeConfig<NodeId = NodeId>> FileLog<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    /// Open (or create) the log in `dir`; its vote and purge point live in `db`'s meta table.
    pub fn open(dir: &Path, db: Arc<Database>) -> Result<Self, FileLogError> {
        Self::open_with(dir, db, SEGMENT_BYTES)
    }

    /// [`FileLog::open`] with segments of `segment_bytes`.
    pub fn open_with(dir: &Path, db: Arc<Database>, segment_bytes: u64) -> Result<Self, FileLogError> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let purged: Option<LogId> = meta_get(&db, "purged")?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_at(dir))? {
            let path = e.map_err(io_at(dir))?.path();
            if path.extension().is_some_and(|x| x == PURGED) || path.file_name().is_some_and(|n| n == SPARE) {
                // A purged segment whose removal a crash interrupted, or a spare (made again).
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                names.push((first, path));
            }
        }
        names.sort();
        let count = names.len();
        let mut segments: Vec<Segment> = Vec::new();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let last_segment = i + 1 == count;
            let seg = Self::read_segment(first, path, last_segment)?;
            if let Some(prev) = segments.last() {
                if !prev.entries.is_empty() && prev.next_index() != first {
                    tracing::warn!(file = %seg.path.display(), expected = prev.next_index(), "a gap in the group's log");
                }
            }
            segments.push(seg);
        }
        // Segments a purge had passed (a crash before their removal), and empty ones.
        let mut removed = false;
        segments.retain(|s| {
            let dead =
                s.entries.is_empty() || purged.is_some_and(|p| s.entries.last().is_some_and(|l| l.0.index <= p.index));
            if dead {
                let _ = std::fs::remove_file(&s.path);
                removed = true;
            }
            !dead
        });
        if removed {
            sync_dir(dir).map_err(io_at(dir))?;
        }
        let log = FileLog {
            db,
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                segments,
                purged,
                segment_bytes,
                removals: Vec::new(),
                deferred: None,
                preallocate: false,
                spare: None,
            })),
            times: Arc::default(),
            bound: None,
            _group: PhantomData,
        };
        log.migrate()?;
        Ok(log)
    }

    /// A log kept in the redb file by an earlier version moves here (once: its table is then
    /// emptied; the vote and purge point were already in the meta table and stay).
    fn migrate(&self) -> Result<(), FileLogError> {
        let old = redb_log(&self.db)?;
        if old.is_empty() {
            return Ok(());
        }
        let (empty, dir) = {
            let g = self.guard().map_err(io_at(Path::new("the log")))?;
            (g.segments.is_empty(), g.dir.clone())
        };
        if empty {
            let mut entries = Vec::with_capacity(old.len());
            for bytes in &old {
                entries.push(decode::<C::Entry>("log entry", bytes)?);
            }
            self.write_entries(entries).map_err(io_at(&dir))?;
            tracing::info!(entries = old.len(), dir = %dir.display(), "moved the group's log from redb to segment files");
        }
        clear_redb_log(&self.db)?;
        Ok(())
    }

    /// Each new segment starts on a file already zero-filled to the segment's size and a
    /// little more (see the module's paragraph), prepared by a thread while the one before fills.
    /// A log never written prepares none (an unused group costs no disk): its first segment
    /// grows as written until the first spare is filled.
    pub fn preallocated(self) -> Self {
        if let Ok(mut g) = self.guard() {
            g.preallocate = true;
            if g.segments.iter().any(|s| !s.entries.is_empty()) {
                g.fill_spare();
            }
        }
        self
    }

    /// Wait until the next segment's spare is filled (a test's next roll then uses it).
    #[cfg(test)]
    fn spare_filled(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !self.guard().unwrap().spare.as_ref().is_some_and(|s| s.0.is_finished()) {
            assert!(std::time::Instant::now() < deadline, "no spare filled");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Purges go no further than a stored snapshot covers (`bound`): see
    /// [`FileLog::purge_upto`].
    pub fn bounded_by(mut self, bound: PurgeBound) -> Self {
        self.bound = Some(bound);
        self
    }

    /// Purges as far as asked, whatever is stored (openraft's storage suite purges with no
    /// snapshot).
    #[cfg(test)]
    pub(crate) fn unbounded(mut self) -> Self {
        self.bound = None;
        self
    }

    /// Read a segment's entries back; a torn tail is cut off in the last segment only.
    fn read_segment(first: u64, path: PathBuf, last_segment: bool) -> Result<Segment, FileLogError> {
        let bytes = std::fs::read(&path).map_err(io_at(&path))?;
        let (ranges, bad) = records(&bytes);
        let end = ranges.last().map_or(0, |r| r.1);
        // Past the records, a preallocated segment holds zeros; anything else is cut below.
        let written = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
        let mut cut: Option<(usize, String)> = match bad {
            Some((at, why)) => Some((at, why.to_string())),
            None if written > end => Some((end, "bytes after the last record".to_string())),
            None => None,
        };
        let mut entries = Vec::with_capacity(ranges.len());
        for (k, (a, b)) in ranges.into_iter().enumerate() {
            // The log id only: an entry is `{log_id, payload}` (openraft's serde field order),
            // so postcard has it first; the payload, covered by the checksum, is decoded when
            // read (opening does not decode the whole log).
            let id = match postcard::take_from_bytes::<LogId>(&bytes[a..b]) {
                Ok((id, _)) => id,
                Err(e) => {
                    cut = Some((a - HEADER, format!("an entry that does not decode: {e}")));
                    break;
                }
            };
            if id.index != first + k as u64 {
                return Err(FileLogError::Corrupt {
                    path: path.display().to_string(),
                    offset: (a - HEADER) as u64,
                    what: format!("entry {} where {} belongs", id.index, first + k as u64),
                });
            }
            entries.push((id, b as u64));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        let grows = cut.is_some() || bytes.len() == end;
        if let Some((at, what)) = cut {
            // Only the last append can be torn, and it was at most one batch or one append
            // request long: a bad record further back is damage, not a crash.
            if !last_segment || written.saturating_sub(at) > MAX_TORN_TAIL {
                return Err(FileLogError::Corrupt {
                    path: path.display().to_string(),
                    offset: at as u64,
                    what,
                });
            }
            tracing::warn!(file = %path.display(), offset = at, dropped = written.saturating_sub(at), "cutting off the log's torn tail ({what}): an append a crash interrupted, never acknowledged");
            file.set_len(at as u64).map_err(io_at(&path))?;
            file.sync_data().map_err(io_at(&path))?;
        }
        Ok(Segment {
            first,
            path,
            file: Arc::new(file),
            entries,
            grows,
        })
    }

    fn guard(&self) -> Result<MutexGuard<'_, Inner>, std::io::Error> {
        self.inner
            .lock()
            .map_err(|_| std::io::Error::other("the log's lock was poisoned"))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StorageError> {
        self.guard().map_err(|e| StorageIOError::read_logs(io(e)).into())
    }

    /// Append `entries` and sync them (the migration and tests; the group's appends sync off
    /// the runtime's thread: [`FileLog::write_entries_off_thread`]).
    fn write_entries(&self, entries: Vec<C::Entry>) -> Result<(), std::io::Error> {
        let Some(w) = self.write_unsynced(entries)? else {
            return Ok(());
        };
        w.file.sync_data()?;
        self.publish(w)
    }

    /// [`FileLog::write_entries`] with the fdatasync on a blocking-pool thread: openraft's core
    /// waits for it anyway (0.9 awaits every append's flush), but the runtime's thread goes on
    /// with the group's other tasks meanwhile (a leader's answers to its followers' read-index
    /// requests, the peers' streams, applies) instead of sitting in the disk's queue.
    async fn write_entries_off_thread(&self, entries: Vec<C::Entry>) -> Result<(), std::io::Error> {
        let Some(w) = self.write_unsynced(entries)? else {
            return Ok(());
        };
        let file = w.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)??;
        self.publish(w)
    }

    /// Write `entries` at the log's end, not yet synced nor visible to readers (None: there
    /// were none).
    fn write_unsynced(&self, entries: Vec<C::Entry>) -> Result<Option<Written>, std::io::Error> {
        let Some(first) = entries.first().map(|e| *e.get_log_id()) else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(entries.len());
        for e in &entries {
            encode_record(e, &mut buf).map_err(std::io::Error::other)?;
            ends.push((*e.get_log_id(), buf.len() as u64));
        }
        drop(entries);
        self.purge_deferred(true)?;
        // openraft truncates before it overwrites; should entries ever come again, the later
        // ones replace them and everything after (a log has no holes); nothing to do otherwise.
        self.truncate_from(first.index)?;
        // Appends are serialized by openraft; the lock only guards the readers' view.
        let (file, offset) = {
            let mut g = self.guard()?;
            // An empty log (fresh, or purged to its end) starts wherever it is told; openraft
            // never leaves a hole otherwise, but should it, the entries start a new segment.
            let empty = g.segments.iter().all(|s| s.entries.is_empty());
            if empty {
                for s in std::mem::take(&mut g.segments) {
                    std::fs::remove_file(&s.path)?;
                }
            }
            let last = g.segments.last();
            let full = last.is_none_or(|s| s.len() >= g.segment_bytes || s.next_index() != first.index);
            // A segment that grows as written is closed as soon as a spare is filled (a fill that
            // failed closes nothing: the next is tried once this segment is full).
            let spare = if full || last.is_some_and(|s| s.grows) {
                Spare::take(&mut g.spare)
            } else {
                None
            };
            if full || spare.is_some() {
                let path = g.dir.join(segment_name(first.index));
                let (file, grows) = match spare {
                    Some(spare) => {
                        std::fs::rename(g.dir.join(SPARE), &path)?;
                        (spare, false)
                    }
                    // None filled yet (or it failed): this segment grows as it is written.
                    None => (create(&path)?, true),
                };
                sync_dir(&g.dir)?;
                g.fill_spare();
                g.segments.push(Segment {
                    first: first.index,
                    path,
                    file: Arc::new(file),
                    entries: Vec::new(),
                    grows,
                });
            }
            let s = g.segments.last().ok_or_else(|| std::io::Error::other("no segment"))?;
            (s.file.clone(), s.len())
        };
        let began = std::time::Instant::now();
        file.write_all_at(&buf, offset)?;
        Ok(Some(Written {
            file,
            offset,
            bytes: buf.len(),
            ends,
            began,
        }))
    }

    /// Count a synced write's time and show its entries to readers.
    fn publish(&self, w: Written) -> Result<(), std::io::Error> {
        let took = w.began.elapsed();
        let at = APPEND_BUCKETS
            .iter()
            .position(|le| took.as_secs_f64() <= *le)
            .unwrap_or(APPEND_BUCKETS.len());
        self.times.buckets[at].fetch_add(1, Ordering::Relaxed);
        self.times.sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if took >= SLOW_APPEND {
            // Every write of the group waits for this; a disk this slow shows in clients' latency.
            tracing::warn!(
                ms = took.as_millis() as u64,
                bytes = w.bytes,
                "slow log append (write and fdatasync)"
            );
        }
        let mut g = self.guard()?;
        if let Some(s) = g.segments.last_mut() {
            s.entries
                .extend(w.ends.into_iter().map(|(id, end)| (id, end + w.offset)));
        }
        Ok(())
    }

    /// Remove every entry from `index` on (durably: a conflicting entry must not come back).
    fn truncate_from(&self, index: u64) -> Result<(), std::io::Error> {
        let mut g = self.guard()?;
        let mut removed = false;
        while let Some(s) = g.segments.last_mut() {
            if s.first >= index {
                std::fs::remove_file(&s.path)?;
                g.segments.pop();
                removed = true;
                continue;
            }
            let keep = (index - s.first) as usize;
            if keep < s.entries.len() {
                let at = s.start_of(keep);
                s.file.set_len(at)?;
                s.file.sync_data()?;
                s.entries.truncate(keep);
                s.grows = true;
            }
            break;
        }
        if removed {
            sync_dir(&g.dir)?;
        }
        Ok(())
    }

    /// Drop the segments whose every entry is at or before `upto` (the purge point is recorded
    /// first: entries it passed are never read again, whether or not their file is gone yet).
    /// Their files are removed by a thread of their own: a removed file's blocks are freed when
    /// its last handle closes, 13-16 ms per 32 MiB segment on an idle disk here and longer beside
    /// the appends' `fdatasync`s, and a snapshot's purge passes several segments. Done here, on
    /// the group's core, that held every commit of the group meanwhile (under the session
    /// benchmark's writes, the leader's snapshot stalled every client for 250-600 ms, and a
    /// follower's snapshot made it miss the leader's 100 ms RPC timeout).
    /// A crash before they are gone leaves segments the recorded purge point passed: opening
    /// removes them.
    ///
    /// With a [`PurgeBound`], a purge past the stored snapshot waits (`deferred`) until the
    /// snapshot is stored, then the next append or purge does it: openraft 0.9 purges the log
    /// behind a snapshot sent by the leader as soon as it hands the snapshot to the state
    /// machine, before it is stored, and a crash between left a log starting after everything
    /// the older stored snapshot covers — a node that could never apply its log again (openraft
    /// refuses a range with a hole: the group stops on that node, at every restart). An append
    /// that comes while a purge still waits (openraft sends none before the snapshot is in)
    /// purges first regardless: the log has no holes.
    fn purge_upto(&self, upto: LogId) -> Result<(), std::io::Error> {
        {
            let mut g = self.guard()?;
            if g.deferred.is_none_or(|d| d < upto) {
                g.deferred = Some(upto);
            }
        }
        self.purge_deferred(false)
    }

    /// Do the purge that waits, if the stored snapshot covers it now (or `regardless`).
    fn purge_deferred(&self, regardless: bool) -> Result<(), std::io::Error> {
        let Some(upto) = self.guard()?.deferred else {
            return Ok(());
        };
        if !self.bound.as_ref().is_none_or(|b| b.allows(upto)) {
            if !regardless {
                return Ok(());
            }
            tracing::warn!(
                upto = upto.index,
                "appending before the snapshot a purge waits for is stored: purging now"
            );
        }
        self.guard()?.deferred = None;
        self.purge_now(upto)
    }

    fn purge_now(&self, upto: LogId) -> Result<(), std::io::Error> {
        // Durable, and so also every state-machine change committed before it in the same file.
        meta_put(&self.db, "purged", &upto).map_err(std::io::Error::other)?;
        let mut g = self.guard()?;
        g.purged = Some(upto);
        let whole = g
            .segments
            .iter()
            .take_while(|s| s.entries.last().is_none_or(|l| l.0.index <= upto.index))
            .count();
        if whole == 0 {
            return Ok(());
        }
        let dead: Vec<Segment> = g.segments.drain(..whole).collect();
        let dir = g.dir.clone();
        g.removals.retain(|h| !h.is_finished());
        let removal = std::thread::Builder::new()
            .name("phalanx-log-purge".into())
            .spawn(move || remove_segments(&dir, dead));
        match removal {
            Ok(h) => g.removals.push(h),
            // The segments were dropped unremoved: the next opening removes them.
            Err(e) => tracing::warn!(error = %e, "cannot start a thread to remove purged log segments"),
        }
        Ok(())
    }

    /// Wait until the segments purged so far are removed.
    #[cfg(test)]
    fn removed(&self) {
        let removals = std::mem::take(&mut self.guard().unwrap().removals);
        for h in removals {
            h.join().unwrap();
        }
    }
}

/// Remove purged segments' files (see `FileLog::purge_upto`). Each is first renamed out of the
/// log (`.purged`: an opening removes such files unread), then shrunk [`SHRINK_STEP`] at a time,
/// [`SHRINK_PAUSE`] apart, then removed: freed blocks are discarded when the journal commits
/// (this machine's root file system is mounted `discard`), and freeing whole segments at once
/// held every `fdatasync` on the disk behind that commit (six segments removed at once, off the
/// core already: the writes of every client of every node on the disk took 40-50 ms instead of
/// 4 for 200 ms). RocksDB rate-limits its file deletions for the same reason.
fn remove_segments(dir: &Path, dead: Vec<Segment>) {
    let began = std::time::Instant::now();
    let count = dead.len();
    let mut renamed = Vec::with_capacity(count);
    for s in dead {
        let to = s.path.with_extension(PURGED);
        match std::fs::rename(&s.path, &to) {
            Ok(()) => renamed.push((to, s.file)),
            Err(e) => tracing::warn!(file = %s.path.display(), error = %e, "cannot rename a purged log segment"),
        }
    }
    let shrink = |file: &File| -> std::io::Result<()> {
        let mut len = file.metadata()?.len();
        while len > 0 {
            len = len.saturating_sub(SHRINK_STEP);
            file.set_len(len)?;
            std::thread::sleep(SHRINK_PAUSE);
        }
        Ok(())
    };
    for (path, file) in renamed {
        if let Err(e) = shrink(&file).and_then(|()| std::fs::remove_file(&path)) {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove a purged log segment");
        }
    }
    if let Err(e) = sync_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot sync the log's directory");
    }
    tracing::info!(
        segments = count,
        ms = began.elapsed().as_millis() as u64,
        "purged log segments removed"
    );
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl<C: RaftTypeConfig<NodeId = NodeId>> RaftLogReader<C> for FileLog<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + openraft::OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError> {
        let (start, end) = bounds(&range);
        // Read under the lock: a truncation (which holds it) never changes a span being read.
        // Reads come from the page cache; an append holds the lock only to publish, not while
        // it syncs.
        let g = self.lock()?;
        // Entries a purge passed are gone, whether or not their segment still is.
        let start = g.purged.map_or(start, |p| start.max(p.index + 1));
        let mut out = Vec::new();
        for s in &g.segments {
            let (from, to) = (start.max(s.first), end.min(s.next_index()));
            if from >= to {
                continue;
            }
            let (a, b) = ((from - s.first) as usize, (to - s.first) as usize);
            let (at, until) = (s.start_of(a), s.entries[b - 1].1);
            let mut read = || -> Result<(), String> {
                let mut bytes = vec![0u8; (until - at) as usize];
                s.file.read_exact_at(&mut bytes, at).map_err(|e| e.to_string())?;
                let (ranges, bad) = records(&bytes);
                if let Some((off, why)) = bad {
                    return Err(format!("{why} at byte {}", at + off as u64));
                }
                for (a, b) in ranges {
                    out.push(postcard::from_bytes(&bytes[a..b]).map_err(|e| e.to_string())?);
                }
                Ok(())
            };
            read().map_err(|e| StorageIOError::read_logs(io(format!("{}: {e}", s.path.display()))))?;
        }
        Ok(out)
    }
}

impl<C: RaftTypeConfig<NodeId = NodeId>> RaftLogStorage<C> for FileLog<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError> {
        let g = self.lock()?;
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: g.last(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        meta_put(&self.db, "vote", vote).map_err(|e| StorageIOError::write_vote(io(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        meta_get(&self.db, "vote").map_err(|e| StorageIOError::read_vote(io(e)).into())
    }

    // No `save_committed`: the state machine persists what it applied, and a restarted node
    // learns the commit index from the leader (openraft's default: nothing saved).

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = C::Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        match self.write_entries_off_thread(entries.into_iter().collect()).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(e));
                Err(StorageIOError::write_logs(io(msg)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(io(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purge_upto(log_id)
            .map_err(|e| StorageIOError::write_logs(io(e)).into())
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{encode, open, LOG};
    use super::super::{Entry, TypeConfig};
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    type Log = FileLog<TypeConfig>;

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn blanks(term: u64, from: u64, to: u64) -> Vec<Entry> {
        (from..to).map(|i| blank(term, i)).collect()
    }

    struct Place {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        db: Arc<Database>,
    }

    fn place() -> Place {
        let tmp = tempfile::tempdir().unwrap();
        let db = open(&tmp.path().join("g.redb")).unwrap();
        Place {
            dir: tmp.path().join("g.log"),
            _tmp: tmp,
            db,
        }
    }

    /// A log of small segments (`bytes` each).
    fn log_in(p: &Place, bytes: u64) -> Log {
        Log::open_with(&p.dir, p.db.clone(), bytes).unwrap()
    }

    async fn indexes(log: &mut Log, range: std::ops::Range<u64>) -> Vec<u64> {
        log.try_get_log_entries(range)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    fn segment_files(p: &Place) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&p.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// The quantile of the appends' histogram names the upper bound of the bucket it fell in.
    #[test]
    fn append_quantile_names_the_bucket_the_quantile_fell_in() {
        let h = |buckets: Vec<u64>| Histogram { buckets, sum_us: 0 };
        assert_eq!(h(vec![0; 14]).append_quantile(0.99), None);
        let mut b = vec![0; 14];
        b[1] = 98;
        b[8] = 2;
        assert_eq!(h(b.clone()).append_quantile(0.5), Some(0.00025));
        assert_eq!(h(b.clone()).append_quantile(0.98), Some(0.00025));
        assert_eq!(
            h(b.clone()).append_quantile(0.99),
            Some(0.05),
            "the 99th of 100 is in the 50 ms bucket"
        );
        b[13] = 100;
        assert_eq!(h(b).append_quantile(0.99), Some(f64::INFINITY));
    }

    /// Appends roll over to new segments, survive a reopen with their vote, a truncation stays
    /// truncated, and a purge removes exactly the segments it passed.
    #[tokio::test]
    async fn entries_segments_truncation_and_purge_survive_a_reopen() {
        let p = place();
        let mut log = log_in(&p, 100);
        for i in 0..30 {
            log.write_entries(vec![blank(1, i)]).unwrap();
        }
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        let times = log.append_times();
        assert_eq!(times.buckets.len(), APPEND_BUCKETS.len() + 1);
        assert_eq!(times.buckets.iter().sum::<u64>(), 30, "one per append: {times:?}");
        assert!(times.sum_us > 0);
        let p99 = times.append_quantile(0.99).unwrap();
        assert!(APPEND_BUCKETS.contains(&p99) || p99.is_infinite(), "{p99}");
        assert!(segment_files(&p).len() > 3, "{:?}", segment_files(&p));
        assert_eq!(indexes(&mut log, 5..9).await, vec![5, 6, 7, 8]);
        // Every record has the same size here: the bytes after an index count the entries.
        let all = log.bytes_after(None);
        let on_disk: u64 = segment_files(&p)
            .iter()
            .map(|f| std::fs::metadata(p.dir.join(f)).unwrap().len())
            .sum();
        assert_eq!(all, on_disk);
        assert_eq!(log.bytes_after(Some(9)), all / 30 * 20);
        assert_eq!(log.bytes_after(Some(29)), 0);
        assert_eq!(log.bytes_after(Some(99)), 0);
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 20))
            .await
            .unwrap();
        log.write_entries(blanks(2, 20, 25)).unwrap();
        drop(log);

        let mut log = log_in(&p, 100);
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(LogId::new(CommittedLeaderId::new(2, 1), 24)));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        let all = log.try_get_log_entries(0..100).await.unwrap();
        let ids: Vec<(u64, u64)> = all.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect();
        let want: Vec<(u64, u64)> = (0..20).map(|i| (1, i)).chain((20..25).map(|i| (2, i))).collect();
        assert_eq!(ids, want, "the truncated entries did not come back");

        let before = segment_files(&p);
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 12)).await.unwrap();
        assert_eq!(indexes(&mut log, 0..15).await, vec![13, 14], "at once, files or not");
        log.removed();
        let after = segment_files(&p);
        assert!(after.len() < before.len(), "{before:?} → {after:?}");
        let first: u64 = after[0].trim_end_matches(".seg").parse().unwrap();
        assert!(first <= 13, "the segment holding 13 is kept: {after:?}");
        assert_eq!(indexes(&mut log, 0..15).await, vec![13, 14]);
        drop(log);
        let mut log = log_in(&p, 100);
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(12));
        assert_eq!(indexes(&mut log, 0..15).await, vec![13, 14]);
        // Purged to its end, the log continues after the purge point.
        log.purge(LogId::new(CommittedLeaderId::new(2, 1), 40)).await.unwrap();
        log.removed();
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id.map(|l| l.index),
            Some(40)
        );
        log.write_entries(blanks(2, 41, 43)).unwrap();
        drop(log);
        let mut log = log_in(&p, 100);
        assert_eq!(indexes(&mut log, 0..100).await, vec![41, 42]);
    }

    /// With a bound, a purge past the stored snapshot waits for it (openraft 0.9 purges behind
    /// an installed snapshot before it is stored): a crash meanwhile finds every entry after the
    /// older snapshot; once the bound covers it, the next purge or append does it; an append
    /// while it still waits purges first (a log has no holes).
    #[tokio::test]
    async fn a_purge_past_the_stored_snapshot_waits_for_it() {
        let id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        let p = place();
        let bound = PurgeBound::default();
        let mut log = log_in(&p, 100).bounded_by(bound.clone());
        log.write_entries(blanks(1, 0, 30)).unwrap();
        bound.raise(5);
        log.purge(id(20)).await.unwrap();
        assert_eq!(indexes(&mut log, 0..40).await, (0..30).collect::<Vec<_>>(), "it waits");
        // A crash: the waiting purge is gone with the process, the entries are all there.
        drop(log);
        let mut log = log_in(&p, 100).bounded_by(bound.clone());
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, None);
        assert_eq!(indexes(&mut log, 0..40).await, (0..30).collect::<Vec<_>>());
        // Stored: the next purge does what waited, and more.
        log.purge(id(20)).await.unwrap();
        bound.raise(24);
        log.purge(id(22)).await.unwrap();
        assert_eq!(indexes(&mut log, 0..40).await, (23..30).collect::<Vec<_>>());
        // Stored, then an append: it purges first.
        log.purge(id(26)).await.unwrap();
        assert_eq!(
            indexes(&mut log, 0..40).await,
            (23..30).collect::<Vec<_>>(),
            "26 > 24: it waits"
        );
        bound.raise(26);
        log.write_entries(blanks(1, 30, 31)).unwrap();
        assert_eq!(indexes(&mut log, 0..40).await, (27..31).collect::<Vec<_>>());
        // Not stored, and an append comes: it purges regardless.
        log.purge(id(29)).await.unwrap();
        log.write_entries(blanks(1, 31, 32)).unwrap();
        assert_eq!(indexes(&mut log, 0..40).await, vec![30, 31]);
        log.removed();
        drop(log);
        let mut log = log_in(&p, 100);
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, Some(id(29)));
        assert_eq!(indexes(&mut log, 0..40).await, vec![30, 31]);
    }

    /// A crash in the middle of an append leaves a torn record at the end: reopening cuts it off
    /// (that append was never acknowledged) and the log goes on from there.
    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_the_log_goes_on() {
        let p = place();
        let log = log_in(&p, SEGMENT_BYTES);
        log.write_entries(blanks(1, 0, 5)).unwrap();
        drop(log);
        let seg = p.dir.join(segment_name(0));
        let whole = std::fs::metadata(&seg).unwrap().len();
        // Half of a sixth record.
        let mut record = Vec::new();
        encode_record(&blank(1, 5), &mut record).unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut f, &record[..record.len() / 2]).unwrap();
        drop(f);

        let mut log = log_in(&p, SEGMENT_BYTES);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
        assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(4));
        log.write_entries(blanks(1, 5, 7)).unwrap();
        drop(log);
        let mut log = log_in(&p, SEGMENT_BYTES);
        assert_eq!(indexes(&mut log, 0..10).await, (0..7).collect::<Vec<_>>());
    }

    /// A preallocated log's segments start on zero-filled spares: appends land after the last
    /// record (not at the file's end), and everything reads back after a reopen, truncations
    /// included; a spare a crash left behind is removed at opening and made again.
    #[tokio::test]
    async fn a_preallocated_log_writes_into_zeroed_segments_and_reads_them_back() {
        let p = place();
        let spare_bytes = 512 + 512 / 8;
        let log = log_in(&p, 512).preallocated();
        assert!(
            log.guard().unwrap().spare.is_none(),
            "nothing written, nothing prepared"
        );
        log.write_entries(vec![blank(1, 0)]).unwrap();
        for i in 1..300 {
            log.spare_filled();
            log.write_entries(vec![blank(1, i)]).unwrap();
        }
        let files = segment_files(&p);
        assert!(files.contains(&SPARE.to_string()), "{files:?}");
        let segs: Vec<&String> = files.iter().filter(|f| f.ends_with(".seg")).collect();
        assert!(segs.len() >= 3, "{files:?}");
        let first = std::fs::read(p.dir.join(segs[0])).unwrap();
        assert_eq!(records(&first).0.len(), 1, "closed once a spare was filled");
        for f in &segs[1..] {
            let bytes = std::fs::read(p.dir.join(f)).unwrap();
            assert_eq!(bytes.len() as u64, spare_bytes, "{f} started on a spare");
            let (ranges, bad) = records(&bytes);
            assert_eq!(bad, None, "{f}");
            let end = ranges.last().unwrap().1;
            assert!(bytes[end..].iter().all(|b| *b == 0), "{f}: zeros after the last record");
        }
        drop(log);

        let mut log = log_in(&p, 512).preallocated();
        assert!(
            log.guard().unwrap().spare.is_some(),
            "a written log prepares a spare at opening"
        );
        assert_eq!(indexes(&mut log, 0..400).await, (0..300).collect::<Vec<_>>());
        log.write_entries(blanks(1, 300, 305)).unwrap();
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 303))
            .await
            .unwrap();
        log.write_entries(blanks(2, 303, 306)).unwrap();
        drop(log);
        // A crash while a spare was being filled: a partial one is left.
        std::fs::write(p.dir.join(SPARE), b"\0\0\0").unwrap();
        let mut log = log_in(&p, 512);
        assert!(!p.dir.join(SPARE).exists(), "removed unread");
        let all = log.try_get_log_entries(0..400).await.unwrap();
        let ids: Vec<(u64, u64)> = all.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect();
        let want: Vec<(u64, u64)> = (0..303).map(|i| (1, i)).chain((303..306).map(|i| (2, i))).collect();
        assert_eq!(ids, want, "the truncated entries did not come back");
    }

    /// A crash in the middle of an append into a preallocated segment leaves a torn record
    /// before zeros — its header and start, or (the disk wrote out of order) only its payload
    /// after a header still zero: reopening cuts it off either way and the log goes on after the last
    /// whole record.
    #[tokio::test]
    async fn a_torn_append_into_a_preallocated_segment_is_cut_off() {
        let mut record = Vec::new();
        encode_record(&blank(1, 5), &mut record).unwrap();
        let half = record.len() / 2;
        for (torn, at) in [(&record[..half], 0), (&record[HEADER..], HEADER)] {
            let p = place();
            let log = log_in(&p, 4096).preallocated();
            log.write_entries(blanks(1, 0, 1)).unwrap();
            log.spare_filled();
            log.write_entries(blanks(1, 1, 5)).unwrap();
            drop(log);
            let seg = p.dir.join(segment_name(1));
            let end = {
                let bytes = std::fs::read(&seg).unwrap();
                records(&bytes).0.last().unwrap().1
            };
            let f = OpenOptions::new().write(true).open(&seg).unwrap();
            f.write_all_at(torn, (end + at) as u64).unwrap();
            drop(f);

            let mut log = log_in(&p, 4096).preallocated();
            assert_eq!(
                std::fs::metadata(&seg).unwrap().len(),
                end as u64,
                "cut at the last record"
            );
            assert_eq!(log.get_log_state().await.unwrap().last_log_id.map(|l| l.index), Some(4));
            log.write_entries(blanks(1, 5, 7)).unwrap();
            drop(log);
            let mut log = log_in(&p, 4096);
            assert_eq!(indexes(&mut log, 0..10).await, (0..7).collect::<Vec<_>>());
        }
    }

    /// A purged segment is renamed before it is shrunk and removed: one that a crash left
    /// half-shrunk is removed at opening, unread (read, its cut records would be damage).
    #[tokio::test]
    async fn a_purged_segment_a_crash_left_behind_is_removed_unread() {
        let p = place();
        let mut log = log_in(&p, 100);
        log.write_entries(blanks(1, 0, 30)).unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 12)).await.unwrap();
        log.removed();
        assert!(
            segment_files(&p).iter().all(|f| f.ends_with(".seg")),
            "{:?}",
            segment_files(&p)
        );
        drop(log);
        let left = p.dir.join(format!("{:020}.{PURGED}", 0));
        std::fs::write(&left, b"half a record").unwrap();
        let mut log = log_in(&p, 100);
        assert!(!left.exists());
        assert_eq!(indexes(&mut log, 0..15).await, vec![13, 14]);
    }

    /// A record that does not read back before the last segment's end is not a torn append:
    /// the log refuses to open and names the file and the offset.
    #[test]
    fn a_corrupt_record_inside_the_log_refuses_to_open() {
        let p = place();
        let log = log_in(&p, 100);
        for i in 0..10 {
            log.write_entries(vec![blank(1, i)]).unwrap();
        }
        drop(log);
        let seg = p.dir.join(&segment_files(&p)[0]);
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let e = Log::open_with(&p.dir, p.db.clone(), 100).err().expect("refused");
        let msg = e.to_string();
        assert!(
            msg.contains(&seg.display().to_string()) && msg.contains("checksum"),
            "{msg}"
        );
    }

    /// Damage further from the end of the last segment than one append could reach is not a
    /// torn tail either: refused, nothing cut.
    #[test]
    fn damage_far_from_the_end_of_the_last_segment_refuses_to_open() {
        let p = place();
        let log = log_in(&p, SEGMENT_BYTES);
        let big = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(super::super::Request(phalanx_core::Command::SetStandby {
                name: "n".repeat(MAX_TORN_TAIL + 1),
                standby: true,
            })),
        };
        log.write_entries(vec![blank(1, 0), big]).unwrap();
        drop(log);
        let seg = p.dir.join(segment_name(0));
        let mut bytes = std::fs::read(&seg).unwrap();
        let len = bytes.len();
        bytes[HEADER] ^= 0xff; // inside the first record's payload
        std::fs::write(&seg, &bytes).unwrap();
        let e = Log::open_with(&p.dir, p.db.clone(), SEGMENT_BYTES)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("at byte 0"), "{e}");
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len as u64, "nothing cut");
    }

    /// A log an earlier version kept in the redb file moves to segments on the first open.
    #[tokio::test]
    async fn a_log_in_the_redb_file_moves_to_segments() {
        let p = place();
        let tx = p.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(LOG).unwrap();
            for i in 3..8 {
                t.insert(i, encode(&blank(1, i)).as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        let mut log = log_in(&p, SEGMENT_BYTES);
        assert_eq!(indexes(&mut log, 0..100).await, vec![3, 4, 5, 6, 7]);
        assert!(redb_log(&p.db).unwrap().is_empty(), "moved, not copied");
        drop(log);
        let mut log = log_in(&p, SEGMENT_BYTES);
        assert_eq!(indexes(&mut log, 0..100).await, vec![3, 4, 5, 6, 7]);
    }
}
