//! The session store's state machine, pure (issue 15): items by key (flags, value, CAS unique,
//! expiry), what each memcached write does to them and answers, expiry and `flush_all` decided
//! by the time recorded with each operation (the leader's, in the log: never a replica's own
//! clock), and memory bounded by evicting the least recently written items, in log order, so
//! every replica evicts the same ones. Reads ([`Store::get`]) change nothing: they are served at
//! a read index, and recency is the log's, not a replica's.
//!
//! memcached's rules kept byte for byte where a client can see them: exptime 0 never expires, a
//! negative one expires at once, up to 30 days is relative seconds and above that an absolute
//! unix time; `incr` wraps at 2^64, `decr` stops at 0, and a shorter result keeps the value's
//! length, padded with spaces (memcached updates in place); CAS uniques grow with every store.

use super::protocol::StoreMode;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// memcached's limit between relative and absolute exptimes (`REALTIME_MAXDELTA`): 30 days.
pub const RELATIVE_MAX_S: i64 = 60 * 60 * 24 * 30;
/// What an item costs beyond its key and value (memcached's item header is ≈ 48–56 bytes).
pub const ITEM_OVERHEAD: usize = 48;

/// One replicated write, as the leader logged it (the time comes with it, see [`Store::apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Store {
        mode: StoreMode,
        key: Vec<u8>,
        flags: u32,
        exptime: i32,
        cas: Option<u64>,
        data: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Arith {
        incr: bool,
        key: Vec<u8>,
        delta: u64,
    },
    /// `touch`, and the write half of `gat`/`gats` (which answer the item).
    Touch {
        key: Vec<u8>,
        exptime: i32,
    },
    FlushAll {
        delay: Option<i32>,
    },
}

/// What a write answers (see [`Reply::bytes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    /// `incr`/`decr`'s new value.
    Number(u64),
    NonNumeric,
    /// The item alone is above the memory limit.
    OutOfMemory,
    Ok,
}

impl Reply {
    /// memcached's answer line.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Reply::Stored => b"STORED\r\n".to_vec(),
            Reply::NotStored => b"NOT_STORED\r\n".to_vec(),
            Reply::Exists => b"EXISTS\r\n".to_vec(),
            Reply::NotFound => b"NOT_FOUND\r\n".to_vec(),
            Reply::Deleted => b"DELETED\r\n".to_vec(),
            Reply::Touched => b"TOUCHED\r\n".to_vec(),
            Reply::Number(n) => format!("{n}\r\n").into_bytes(),
            Reply::NonNumeric => b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n".to_vec(),
            Reply::OutOfMemory => b"SERVER_ERROR out of memory storing object\r\n".to_vec(),
            Reply::Ok => b"OK\r\n".to_vec(),
        }
    }
}

/// One item (serde: a node persists each item as its own record, see [`Store::take_changes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub flags: u32,
    pub value: Vec<u8>,
    pub cas: u64,
    /// Unix ms at which it is gone; None: never.
    pub expires_ms: Option<u64>,
    /// When it was last stored (unix ms): `flush_all` invalidates what is older than its time.
    stored_ms: u64,
    /// Its place in the eviction order (the log position of its last write).
    seq: u64,
}

impl Item {
    fn cost(&self, key: &[u8]) -> usize {
        key.len() + self.value.len() + ITEM_OVERHEAD
    }
}

/// When an item stored at `now_ms` with memcached's `exptime` expires: None never, else the
/// unix ms (already past for a negative exptime or an absolute time gone by).
pub fn expiry(exptime: i32, now_ms: u64) -> Option<u64> {
    let e = i64::from(exptime);
    match e {
        0 => None,
        e if e < 0 => Some(now_ms),
        e if e <= RELATIVE_MAX_S => Some(now_ms.saturating_add(e as u64 * 1000)),
        e => Some(e as u64 * 1000),
    }
}

/// What a store keeps beside its items: the counters every replica must agree on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMeta {
    pub next_seq: u64,
    pub last_cas: u64,
    pub flushed_at_ms: Option<u64>,
    /// Items evicted to make room, ever.
    pub evictions: u64,
}

/// What changed since the last [`Store::take_changes`]: whether everything was dropped first
/// (`flush_all` now), then the keys whose item was written or removed (their current item,
/// if any, is [`Store::raw`]'s). What a node persists after applying a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub cleared: bool,
    pub keys: BTreeSet<Vec<u8>>,
}

/// The store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    items: HashMap<Vec<u8>, Item>,
    /// seq → key: the eviction order (lowest first).
    order: BTreeMap<u64, Vec<u8>>,
    next_seq: u64,
    last_cas: u64,
    bytes: usize,
    limit: usize,
    /// `flush_all`'s time (unix ms): items stored at or before it are gone once it has come.
    flushed_at_ms: Option<u64>,
    evictions: u64,
    changes: Changes,
}

impl Store {
    /// An empty store holding at most `limit` bytes of items (keys, values and overhead).
    pub fn new(limit: usize) -> Store {
        Store {
            limit,
            ..Store::default()
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held (keys, values and [`ITEM_OVERHEAD`] each).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn live<'a>(&self, item: &'a Item, now_ms: u64) -> Option<&'a Item> {
        let expired = item.expires_ms.is_some_and(|at| now_ms >= at);
        let flushed = self.flushed_at_ms.is_some_and(|f| now_ms >= f && item.stored_ms <= f);
        (!expired && !flushed).then_some(item)
    }

    /// The live item of `key` at `now_ms` (a read: it changes nothing).
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<&Item> {
        self.live(self.items.get(key)?, now_ms)
    }

    /// The item stored under `key`, live or not (what a node persists).
    pub fn raw(&self, key: &[u8]) -> Option<&Item> {
        self.items.get(key)
    }

    /// What changed since the last call (and forget it).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// The counters beside the items.
    pub fn meta(&self) -> StoreMeta {
        StoreMeta {
            next_seq: self.next_seq,
            last_cas: self.last_cas,
            flushed_at_ms: self.flushed_at_ms,
            evictions: self.evictions,
        }
    }

    /// Every item, by key (a snapshot's content).
    pub fn items(&self) -> impl Iterator<Item = (&Vec<u8>, &Item)> {
        self.items.iter()
    }

    /// A store made again from what [`Store::meta`] and [`Store::items`] gave (after a restart
    /// or a snapshot), holding at most `limit` bytes from its next write on.
    pub fn from_parts(limit: usize, meta: StoreMeta, items: impl IntoIterator<Item = (Vec<u8>, Item)>) -> Store {
        let mut s = Store {
            limit,
            next_seq: meta.next_seq,
            last_cas: meta.last_cas,
            flushed_at_ms: meta.flushed_at_ms,
            evictions: meta.evictions,
            ..Store::default()
        };
        for (key, item) in items {
            s.bytes += item.cost(&key);
            s.order.insert(item.seq, key.clone());
            s.items.insert(key, item);
        }
        s
    }

    /// Hold at most `limit` bytes from the next write on (the leader logs the limit with every
    /// batch, so that every replica evicts alike even while the config changes).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    fn remove(&mut self, key: &[u8]) -> Option<Item> {
        let item = self.items.remove(key)?;
        self.changes.keys.insert(key.to_vec());
        self.order.remove(&item.seq);
        self.bytes -= item.cost(key);
        Some(item)
    }

    /// Put `item` under `key` as the newest write, evicting the oldest to make room; false (and
    /// nothing changed but the old item's removal) when it alone is above the limit.
    fn put(&mut self, key: &[u8], mut item: Item) -> bool {
        self.remove(key);
        let cost = item.cost(key);
        if cost > self.limit {
            return false;
        }
        while self.bytes + cost > self.limit {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(old) = self.items.remove(&oldest) {
                self.bytes -= old.cost(&oldest);
            }
            self.changes.keys.insert(oldest);
            self.evictions += 1;
        }
        self.next_seq += 1;
        item.seq = self.next_seq;
        self.order.insert(item.seq, key.to_vec());
        self.bytes += cost;
        self.items.insert(key.to_vec(), item);
        self.changes.keys.insert(key.to_vec());
        true
    }

    fn next_cas(&mut self) -> u64 {
        self.last_cas += 1;
        self.last_cas
    }

    /// Apply one logged write at the leader's `now_ms`; its answer. Expired and flushed items
    /// are dropped as they are met, so every replica holds the same items.
    pub fn apply(&mut self, op: &Op, now_ms: u64) -> Reply {
        let key = match op {
            Op::Store { key, .. } | Op::Delete { key } | Op::Arith { key, .. } | Op::Touch { key, .. } => key,
            Op::FlushAll { delay } => {
                match delay.filter(|d| *d > 0) {
                    // Now: everything goes (and an earlier delayed flush with it).
                    None => {
                        self.items.clear();
                        self.order.clear();
                        self.bytes = 0;
                        self.flushed_at_ms = None;
                        self.changes = Changes {
                            cleared: true,
                            keys: BTreeSet::new(),
                        };
                    }
                    // Later: what was stored until then is gone from then on (memcached's
                    // `oldest_live`, a second's granularity there, a millisecond's here).
                    Some(d) => self.flushed_at_ms = Some(now_ms + u64::from(d.unsigned_abs()) * 1000 - 1),
                }
                return Reply::Ok;
            }
        };
        let current = self
            .items
            .get(key.as_slice())
            .and_then(|i| self.live(i, now_ms))
            .cloned();
        if current.is_none() {
            self.remove(key);
        }
        match op {
            Op::Store {
                mode,
                flags,
                exptime,
                cas,
                data,
                ..
            } => {
                let value = match (mode, &current) {
                    (StoreMode::Add, Some(_)) | (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, None) => {
                        return Reply::NotStored
                    }
                    (StoreMode::Cas, None) => return Reply::NotFound,
                    (StoreMode::Cas, Some(c)) if Some(c.cas) != *cas => return Reply::Exists,
                    (StoreMode::Append, Some(c)) => [c.value.as_slice(), data].concat(),
                    (StoreMode::Prepend, Some(c)) => [data.as_slice(), &c.value].concat(),
                    _ => data.clone(),
                };
                // Append and prepend keep the item's flags and expiry.
                let (flags, expires_ms) = match (mode, &current) {
                    (StoreMode::Append | StoreMode::Prepend, Some(c)) => (c.flags, c.expires_ms),
                    _ => (*flags, expiry(*exptime, now_ms)),
                };
                let item = Item {
                    flags,
                    value,
                    cas: self.next_cas(),
                    expires_ms,
                    stored_ms: now_ms,
                    seq: 0,
                };
                if self.put(key, item) {
                    Reply::Stored
                } else {
                    Reply::OutOfMemory
                }
            }
            Op::Delete { .. } => match current {
                Some(_) => {
                    self.remove(key);
                    Reply::Deleted
                }
                None => Reply::NotFound,
            },
            Op::Arith { incr, delta, .. } => {
                let Some(c) = current else { return Reply::NotFound };
                let Some(n) = std::str::from_utf8(&c.value)
                    .ok()
                    .map(str::trim_end)
                    .filter(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    return Reply::NonNumeric;
                };
                let n = if *incr {
                    n.wrapping_add(*delta)
                } else {
                    n.saturating_sub(*delta)
                };
                let mut value = n.to_string().into_bytes();
                if value.len() < c.value.len() {
                    value.resize(c.value.len(), b' ');
                }
                let item = Item {
                    value,
                    cas: self.next_cas(),
                    stored_ms: now_ms,
                    ..c
                };
                if self.put(key, item) {
                    Reply::Number(n)
                } else {
                    Reply::OutOfMemory
                }
            }
            Op::Touch { exptime, .. } => {
                let Some(c) = current else { return Reply::NotFound };
                let item = Item {
                    expires_ms: expiry(*exptime, now_ms),
                    ..c
                };
                // A touch keeps the item's place: it is not a write of its value.
                if let Some(i) = self.items.get_mut(key.as_slice()) {
                    *i = Item { seq: i.seq, ..item };
                    self.changes.keys.insert(key.clone());
                }
                Reply::Touched
            }
            Op::FlushAll { .. } => Reply::Ok,
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
