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
//!
//! The meta protocol's writes ([`Op::MetaStore`], [`Op::MetaDelete`], [`Op::MetaArith`],
//! [`Op::Vivify`], [`Op::Amend`]) keep memcached 1.6.18's item bits as item fields: `stale`
//! (invalidated by `md I` or by an `ms I` with an older CAS), `token_sent` (a client won the
//! recache token, `W`; others see `Z`) and `key_binary` (stored with a base64 key, `b`: `mg k`
//! answers it base64). A new item starts with none of them, as memcached's new items do; what
//! memcached changes in place (touch, an `incr` that fits, `md I`) keeps them.

use super::protocol::StoreMode;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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
    /// `ms`: a store in `mode` (`ms` without a mode is `Set`; with `C`, `Set` and `Replace`
    /// become `Cas`), comparing `cas` if given (0 compares nothing, as in memcached); with
    /// `invalidate` a `Cas` whose unique is older than the item's stores the value as stale
    /// (keeping the item's expiry and token). Answers Stored, NotStored, Exists or NotFound;
    /// the stored item's unique is then [`StoreMeta::last_cas`].
    MetaStore {
        mode: StoreMode,
        key: Vec<u8>,
        flags: u32,
        exptime: i32,
        cas: Option<u64>,
        invalidate: bool,
        key_binary: bool,
        data: Vec<u8>,
    },
    /// `md`: remove the item, or with `invalidate` mark it stale (a new unique, its token
    /// free again, the expiry `exptime` if given); only if `cas` matches when given. Answers
    /// Deleted, NotFound or Exists.
    MetaDelete {
        key: Vec<u8>,
        cas: Option<u64>,
        invalidate: bool,
        exptime: Option<i32>,
    },
    /// `ma`: `incr`/`decr` guarded by `cas` (0 compares nothing), creating the item with the
    /// value `vivify` on a miss if given. Answers [`Reply::Counter`], NotFound, Exists,
    /// NonNumeric or OutOfMemory.
    MetaArith {
        incr: bool,
        key: Vec<u8>,
        delta: u64,
        cas: Option<u64>,
        vivify: Option<u64>,
    },
    /// `mg N` on a miss: an empty item (flags 0, no expiry) with a new unique. Answers Stored
    /// (or OutOfMemory).
    Vivify {
        key: Vec<u8>,
    },
    /// What an `mg` or `ma` changes in an item besides its value: its expiry (when
    /// `set_expiry`, to `expires_ms`) and whether a client holds its recache token. The item
    /// keeps its unique and its place. Answers Touched or NotFound.
    Amend {
        key: Vec<u8>,
        set_expiry: bool,
        expires_ms: Option<u64>,
        token_sent: bool,
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
    /// `ma`'s new value; whether memcached changed the item in place (its new value is no
    /// longer than the old one: an `ma T` changes the expiry only then, as in 1.6.18) or
    /// created it (`N`).
    Counter {
        value: u64,
        in_place: bool,
        created: bool,
    },
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
            Reply::Number(n) | Reply::Counter { value: n, .. } => format!("{n}\r\n").into_bytes(),
            Reply::NonNumeric => b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n".to_vec(),
            Reply::OutOfMemory => b"SERVER_ERROR out of memory storing object\r\n".to_vec(),
            Reply::Ok => b"OK\r\n".to_vec(),
        }
    }
}

/// One item (serde: a snapshot holds each item with its key, see [`Store::from_parts`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub flags: u32,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub cas: u64,
    /// Unix ms at which it is gone; None: never.
    pub expires_ms: Option<u64>,
    /// When it was last stored (unix ms): `flush_all` invalidates what is older than its time.
    stored_ms: u64,
    /// Its place in the eviction order (the log position of its last write).
    seq: u64,
    /// Invalidated (`md I`, or an `ms I` with an older unique): served, marked `X`.
    #[serde(default)]
    pub stale: bool,
    /// A client won its recache token (`W`); others see `Z`.
    #[serde(default)]
    pub token_sent: bool,
    /// Stored with a base64 key (`ms b`): `mg k` returns the key base64-encoded.
    #[serde(default)]
    pub key_binary: bool,
}

impl Item {
    fn cost(&self, key: &[u8]) -> usize {
        key.len() + self.value.len() + ITEM_OVERHEAD
    }

    fn new(flags: u32, value: Vec<u8>, expires_ms: Option<u64>, now_ms: u64) -> Item {
        Item {
            flags,
            value,
            cas: 0,
            expires_ms,
            stored_ms: now_ms,
            seq: 0,
            stale: false,
            token_sent: false,
            key_binary: false,
        }
    }

    /// When it was last stored (unix ms).
    pub fn stored_ms(&self) -> u64 {
        self.stored_ms
    }
}

/// memcached's CAS comparison (`do_store_item`): what a request's unique says about an item's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CasCheck {
    None,
    Match,
    Stale,
    BadValue,
}

fn cas_check(asked: u64, item: &Item, stale_ok: bool) -> CasCheck {
    match asked {
        0 => CasCheck::None,
        a if a == item.cas => CasCheck::Match,
        a if stale_ok && a < item.cas => CasCheck::Stale,
        _ => CasCheck::BadValue,
    }
}

/// The number an item holds, as memcached's `safe_strtoull` reads it (padding spaces allowed).
fn number(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()
        .map(str::trim_end)
        .filter(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
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

/// A key as the store holds it: shared by the items and the eviction order, and with a
/// snapshot being encoded.
pub type Key = Arc<[u8]>;

/// The store. Keys and items are shared (`Arc`), so that a snapshot takes them all under the
/// state's lock in a few milliseconds ([`Store::shared_items`]) and encodes them without it: a
/// write to an item a snapshot still holds copies that item first (`Arc::make_mut`). (Copied
/// whole, a store of 100,000 items of 600 B held the lock, and every read and write of the
/// node, for 146 ms.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    items: HashMap<Key, Arc<Item>>,
    /// seq → key: the eviction order (lowest first).
    order: BTreeMap<u64, Key>,
    next_seq: u64,
    last_cas: u64,
    bytes: usize,
    limit: usize,
    /// `flush_all`'s time (unix ms): items stored at or before it are gone once it has come.
    flushed_at_ms: Option<u64>,
    evictions: u64,
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

    /// The item stored under `key`, live or not.
    pub fn raw(&self, key: &[u8]) -> Option<&Item> {
        self.items.get(key).map(|i| &**i)
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

    /// Every item, by key.
    pub fn items(&self) -> impl Iterator<Item = (&[u8], &Item)> {
        self.items.iter().map(|(k, i)| (&**k, &**i))
    }

    /// Every item with its key, shared with the store (a snapshot's content: taking them costs
    /// two reference counts per item, not a copy).
    pub fn shared_items(&self) -> Vec<(Key, Arc<Item>)> {
        self.items.iter().map(|(k, i)| (k.clone(), i.clone())).collect()
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
            let key = Key::from(key);
            s.order.insert(item.seq, key.clone());
            s.items.insert(key, Arc::new(item));
        }
        s
    }

    /// Hold at most `limit` bytes from the next write on (the leader logs the limit with every
    /// batch, so that every replica evicts alike even while the config changes).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    fn remove(&mut self, key: &[u8]) -> Option<Arc<Item>> {
        let item = self.items.remove(key)?;
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
            self.evictions += 1;
        }
        self.next_seq += 1;
        item.seq = self.next_seq;
        let key = Key::from(key);
        self.order.insert(item.seq, key.clone());
        self.bytes += cost;
        self.items.insert(key, Arc::new(item));
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
            Op::Store { key, .. }
            | Op::Delete { key }
            | Op::Arith { key, .. }
            | Op::Touch { key, .. }
            | Op::MetaStore { key, .. }
            | Op::MetaDelete { key, .. }
            | Op::MetaArith { key, .. }
            | Op::Vivify { key }
            | Op::Amend { key, .. } => key,
            Op::FlushAll { delay } => {
                match delay.filter(|d| *d > 0) {
                    // Now: everything goes (and an earlier delayed flush with it).
                    None => {
                        self.items.clear();
                        self.order.clear();
                        self.bytes = 0;
                        self.flushed_at_ms = None;
                    }
                    // Later: what was stored until then is gone from then on (memcached's
                    // `oldest_live`, a second's granularity there, a millisecond's here).
                    Some(d) => self.flushed_at_ms = Some(now_ms + u64::from(d.unsigned_abs()) * 1000 - 1),
                }
                return Reply::Ok;
            }
        };
        let mut current = self
            .items
            .get(key.as_slice())
            .filter(|i| self.live(i, now_ms).is_some())
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
                let new = Item::new(*flags, data.clone(), expiry(*exptime, now_ms), now_ms);
                self.store(*mode, key, new, cas.unwrap_or(0), false, current, now_ms)
            }
            Op::MetaStore {
                mode,
                flags,
                exptime,
                cas,
                invalidate,
                key_binary,
                data,
                ..
            } => {
                let mode = match (mode, cas) {
                    (StoreMode::Set | StoreMode::Replace, Some(_)) => StoreMode::Cas,
                    (m, _) => *m,
                };
                let new = Item {
                    key_binary: *key_binary,
                    ..Item::new(*flags, data.clone(), expiry(*exptime, now_ms), now_ms)
                };
                let stale_ok = *invalidate && mode == StoreMode::Cas;
                self.store(mode, key, new, cas.unwrap_or(0), stale_ok, current, now_ms)
            }
            Op::Delete { .. } => match current {
                Some(_) => {
                    self.remove(key);
                    Reply::Deleted
                }
                None => Reply::NotFound,
            },
            Op::MetaDelete {
                cas,
                invalidate,
                exptime,
                ..
            } => {
                let Some(c) = current else { return Reply::NotFound };
                if cas.is_some_and(|u| u != c.cas) {
                    return Reply::Exists;
                }
                // Held, it would make `modify` copy the item.
                drop(c);
                if *invalidate {
                    // Marked, not removed: a new unique, the token free for the next client.
                    let cas = self.next_cas();
                    self.modify(key, |i| {
                        i.stale = true;
                        i.token_sent = false;
                        i.cas = cas;
                        if let Some(e) = exptime {
                            i.expires_ms = expiry(*e, now_ms);
                        }
                    });
                } else {
                    self.remove(key);
                }
                Reply::Deleted
            }
            Op::Arith { incr, delta, .. } => match self.arith(key, *incr, *delta, 0, current, now_ms) {
                Reply::Counter { value, .. } => Reply::Number(value),
                other => other,
            },
            Op::MetaArith {
                incr,
                delta,
                cas,
                vivify,
                ..
            } => match (current, vivify) {
                (None, Some(initial)) => {
                    let new = Item::new(0, initial.to_string().into_bytes(), None, now_ms);
                    match self.store(StoreMode::Add, key, new, 0, false, None, now_ms) {
                        Reply::Stored => Reply::Counter {
                            value: *initial,
                            in_place: false,
                            created: true,
                        },
                        other => other,
                    }
                }
                (current, _) => self.arith(key, *incr, *delta, cas.unwrap_or(0), current, now_ms),
            },
            Op::Touch { exptime, .. } => {
                if current.take().is_none() {
                    return Reply::NotFound;
                }
                // A touch keeps the item's place: it is not a write of its value.
                self.modify(key, |i| i.expires_ms = expiry(*exptime, now_ms));
                Reply::Touched
            }
            Op::Vivify { .. } => {
                if current.is_some() {
                    return Reply::NotStored;
                }
                let new = Item::new(0, Vec::new(), None, now_ms);
                self.store(StoreMode::Add, key, new, 0, false, None, now_ms)
            }
            Op::Amend {
                set_expiry,
                expires_ms,
                token_sent,
                ..
            } => {
                if current.take().is_none() {
                    return Reply::NotFound;
                }
                self.modify(key, |i| {
                    if *set_expiry {
                        i.expires_ms = *expires_ms;
                    }
                    i.token_sent |= *token_sent;
                });
                Reply::Touched
            }
            Op::FlushAll { .. } => Reply::Ok,
        }
    }

    /// Change an item where it stands (its place in the eviction order kept).
    fn modify(&mut self, key: &[u8], f: impl FnOnce(&mut Item)) {
        if let Some(i) = self.items.get_mut(key) {
            f(Arc::make_mut(i));
        }
    }

    /// memcached's `do_store_item`: `new` (its unique still to give) stored under `key` in
    /// `mode` against the live `current` item, comparing the unique `cas` (0: none).
    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        mode: StoreMode,
        key: &[u8],
        mut new: Item,
        cas: u64,
        stale_ok: bool,
        current: Option<Arc<Item>>,
        now_ms: u64,
    ) -> Reply {
        match (mode, current) {
            (StoreMode::Add, Some(_)) | (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, None) => {
                return Reply::NotStored
            }
            (StoreMode::Cas, None) => return Reply::NotFound,
            (StoreMode::Cas, Some(c)) => match cas_check(cas, &c, stale_ok) {
                CasCheck::Match => {}
                // An older unique with `I`: the value is stored, stale, keeping the item's
                // expiry and token.
                CasCheck::Stale => {
                    new.expires_ms = c.expires_ms;
                    new.stale = true;
                    new.token_sent = c.token_sent;
                }
                CasCheck::None | CasCheck::BadValue => return Reply::Exists,
            },
            (StoreMode::Append | StoreMode::Prepend, Some(c)) => {
                if !matches!(cas_check(cas, &c, false), CasCheck::None | CasCheck::Match) {
                    return Reply::Exists;
                }
                // A new item of both values with the old one's flags and expiry.
                let value = match mode {
                    StoreMode::Append => [c.value.as_slice(), &new.value].concat(),
                    _ => [new.value.as_slice(), &c.value].concat(),
                };
                new = Item::new(c.flags, value, c.expires_ms, now_ms);
            }
            _ => {}
        }
        new.cas = self.next_cas();
        if self.put(key, new) {
            Reply::Stored
        } else {
            Reply::OutOfMemory
        }
    }

    /// memcached's `do_add_delta` on the live `current` item, guarded by the unique `cas`
    /// (0: none): a result no longer than the value is written in place (padded with spaces,
    /// the item's bits kept), a longer one makes a new item.
    fn arith(
        &mut self,
        key: &[u8],
        incr: bool,
        delta: u64,
        cas: u64,
        current: Option<Arc<Item>>,
        now_ms: u64,
    ) -> Reply {
        let Some(c) = current else { return Reply::NotFound };
        if c.value.is_empty() {
            return Reply::NonNumeric;
        }
        if cas != 0 && cas != c.cas {
            return Reply::Exists;
        }
        let Some(n) = number(&c.value) else {
            return Reply::NonNumeric;
        };
        let n = if incr {
            n.wrapping_add(delta)
        } else {
            n.saturating_sub(delta)
        };
        let mut value = n.to_string().into_bytes();
        let in_place = value.len() <= c.value.len();
        let item = if in_place {
            value.resize(c.value.len(), b' ');
            Item {
                value,
                stored_ms: now_ms,
                ..Arc::unwrap_or_clone(c)
            }
        } else {
            Item::new(c.flags, value, c.expires_ms, now_ms)
        };
        let item = Item {
            cas: self.next_cas(),
            ..item
        };
        if self.put(key, item) {
            Reply::Counter {
                value: n,
                in_place,
                created: false,
            }
        } else {
            Reply::OutOfMemory
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
