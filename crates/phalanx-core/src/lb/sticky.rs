//! The stickiness table: a client key (an inserted cookie's value, or a source address in its
//! canonical text form) → the backend it sticks to. Entries expire `max_idle_ms` after their
//! last use and `max_life_ms` after they were made, exactly at that instant (`now` passed in);
//! the table holds at most `capacity` entries and, when full, evicts the entry idle longest
//! (ties: the smallest key) — deterministic, so every replica evicts the same one.
//!
//! It is replicated state: it serializes as a `BTreeMap` (sorted keys, three integers per
//! entry) and rebuilds its idle index on load. A lookup that finds a gone, down or maintained
//! backend, or an expired entry, says so: the caller picks again and re-sticks.

use super::backend::{position, Backend, BackendId, BackendState};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};

/// The longest key accepted (a cookie value or an address), in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Expiry and size of a stick table (from the committed config; passed to every call).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickConfig {
    /// Forget an entry this long after its last use; None: never.
    pub max_idle_ms: Option<u64>,
    /// Forget an entry this long after it was made; None: never.
    pub max_life_ms: Option<u64>,
    /// The most entries held (≥ 1).
    pub capacity: usize,
}

/// One client's stickiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickEntry {
    pub backend: BackendId,
    pub created_ms: u64,
    pub last_seen_ms: u64,
}

impl StickEntry {
    /// The first instant at which the entry is expired (None: never).
    pub fn expires_at(&self, cfg: &StickConfig) -> Option<u64> {
        let idle = cfg.max_idle_ms.map(|d| self.last_seen_ms.saturating_add(d));
        let life = cfg.max_life_ms.map(|d| self.created_ms.saturating_add(d));
        match (idle, life) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn is_expired(&self, cfg: &StickConfig, now_ms: u64) -> bool {
        self.expires_at(cfg).is_some_and(|at| now_ms >= at)
    }
}

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Stuck to the backend at this index, which takes sticky traffic (up or draining).
    Hit(usize),
    /// No entry: pick, then stick.
    Unknown,
    /// The entry had expired: pick, then stick (which replaces it).
    Expired,
    /// The backend is no longer in the slice: pick, then re-stick.
    Gone(BackendId),
    /// The backend is there but down or in maint: pick, then re-stick.
    Unavailable { index: usize, state: BackendState },
}

/// What [`StickTable::merge`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    pub changed: bool,
    pub evicted: Option<String>,
}

/// Why a key could not be stuck.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StickError {
    #[error("stick key of {len} bytes is longer than {MAX_KEY_LEN}")]
    KeyTooLong { len: usize },
    #[error("a stick table needs a capacity of at least 1")]
    ZeroCapacity,
}

/// The table. Compare with `==` on the entries (the index follows from them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StickTable {
    entries: BTreeMap<String, StickEntry>,
    /// (last_seen_ms, key) of every entry: the eviction order.
    idle: BTreeSet<(u64, String)>,
}

impl StickTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn from_entries(entries: BTreeMap<String, StickEntry>) -> Self {
        let idle = entries.iter().map(|(k, e)| (e.last_seen_ms, k.clone())).collect();
        StickTable { entries, idle }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Put `entry` as it is (a table read back from storage: no capacity, no expiry).
    pub fn insert_raw(&mut self, key: String, entry: StickEntry) {
        self.remove(&key);
        self.idle.insert((entry.last_seen_ms, key.clone()));
        self.entries.insert(key, entry);
    }

    pub fn get(&self, key: &str) -> Option<&StickEntry> {
        self.entries.get(key)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &StickEntry)> {
        self.entries.iter().map(|(k, e)| (k.as_str(), e))
    }

    /// Where `key` sticks at `now_ms`, checked against `backends`. Reads only: call
    /// [`StickTable::touch`] on a hit that is used (it is a replicated write; the caller may
    /// batch or coarsen touches).
    pub fn lookup(&self, cfg: &StickConfig, key: &str, now_ms: u64, backends: &[Backend]) -> Lookup {
        let Some(e) = self.entries.get(key) else {
            return Lookup::Unknown;
        };
        if e.is_expired(cfg, now_ms) {
            return Lookup::Expired;
        }
        match position(backends, e.backend) {
            None => Lookup::Gone(e.backend),
            Some(i) if backends[i].takes_sticky() => Lookup::Hit(i),
            Some(index) => Lookup::Unavailable {
                index,
                state: backends[index].state,
            },
        }
    }

    /// Record a use of `key` at `now_ms` (never moves time backwards). False if absent.
    pub fn touch(&mut self, key: &str, now_ms: u64) -> bool {
        let Some(e) = self.entries.get_mut(key) else {
            return false;
        };
        if now_ms > e.last_seen_ms {
            self.idle.remove(&(e.last_seen_ms, key.to_string()));
            e.last_seen_ms = now_ms;
            self.idle.insert((now_ms, key.to_string()));
        }
        true
    }

    /// Stick `key` to `backend` at `now_ms`: a new entry, or a re-stick (a new entry replacing
    /// one to another backend or an expired one); the same live backend again is a touch.
    /// When full, the entry idle longest is evicted first and its key returned.
    pub fn stick(
        &mut self,
        cfg: &StickConfig,
        key: &str,
        backend: BackendId,
        now_ms: u64,
    ) -> Result<Option<String>, StickError> {
        if key.len() > MAX_KEY_LEN {
            return Err(StickError::KeyTooLong { len: key.len() });
        }
        if cfg.capacity == 0 {
            return Err(StickError::ZeroCapacity);
        }
        if let Some(e) = self.entries.get(key) {
            if e.backend == backend && !e.is_expired(cfg, now_ms) {
                self.touch(key, now_ms);
                return Ok(None);
            }
            self.remove(key);
        }
        let mut evicted = None;
        if self.entries.len() >= cfg.capacity {
            if let Some((_, oldest)) = self.idle.first().cloned() {
                self.remove(&oldest);
                evicted = Some(oldest);
            }
        }
        let entry = StickEntry {
            backend,
            created_ms: now_ms,
            last_seen_ms: now_ms,
        };
        self.entries.insert(key.to_string(), entry);
        self.idle.insert((now_ms, key.to_string()));
        Ok(evicted)
    }

    pub fn remove(&mut self, key: &str) -> Option<StickEntry> {
        let e = self.entries.remove(key)?;
        self.idle.remove(&(e.last_seen_ms, key.to_string()));
        Some(e)
    }

    /// Forget every entry stuck to `backend` (it left the config); how many.
    pub fn remove_backend(&mut self, backend: BackendId) -> usize {
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.backend == backend)
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().for_each(|k| {
            self.remove(k);
        });
        keys.len()
    }

    /// Drop every entry expired at `now_ms`; how many. Linear in the table (run it on a timer,
    /// not per request).
    pub fn expire(&mut self, cfg: &StickConfig, now_ms: u64) -> usize {
        self.expire_keys(cfg, now_ms).len()
    }

    /// [`expire`](Self::expire), returning the keys dropped.
    pub fn expire_keys(&mut self, cfg: &StickConfig, now_ms: u64) -> Vec<String> {
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.is_expired(cfg, now_ms))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().for_each(|k| {
            self.remove(k);
        });
        keys
    }

    /// Take `entry` for `key` as another replica made it (a balancer's batch, applied through
    /// the log): the same stickiness (backend and creation) only moves `last_seen` forward;
    /// anything else replaces it, evicting the entry idle longest when full. Whether the table
    /// changed, and the key evicted.
    pub fn merge(&mut self, cfg: &StickConfig, key: &str, entry: StickEntry) -> Result<Merged, StickError> {
        if key.len() > MAX_KEY_LEN {
            return Err(StickError::KeyTooLong { len: key.len() });
        }
        if cfg.capacity == 0 {
            return Err(StickError::ZeroCapacity);
        }
        if let Some(e) = self.entries.get(key) {
            if (e.backend, e.created_ms) == (entry.backend, entry.created_ms) {
                let before = e.last_seen_ms;
                self.touch(key, entry.last_seen_ms);
                return Ok(Merged {
                    changed: entry.last_seen_ms > before,
                    evicted: None,
                });
            }
            self.remove(key);
        }
        let mut evicted = None;
        if self.entries.len() >= cfg.capacity {
            if let Some((_, oldest)) = self.idle.first().cloned() {
                self.remove(&oldest);
                evicted = Some(oldest);
            }
        }
        self.idle.insert((entry.last_seen_ms, key.to_string()));
        self.entries.insert(key.to_string(), entry);
        Ok(Merged { changed: true, evicted })
    }
}

impl Serialize for StickTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(s)
    }
}

impl<'de> Deserialize<'de> for StickTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(StickTable::from_entries)
    }
}

#[cfg(test)]
#[path = "sticky_tests.rs"]
mod tests;
