//! The state machine on disk, one redb entry per entity, so that a batch writes what it changed
//! rather than the whole cluster state: `sm_meta` (format marker, last applied log id,
//! membership, scalars, plan, operator constraints and who made them, the load balancers' records), `sm_nodes` (each node's record, its
//! attributes aside), `sm_attrs` (one entry per node attribute), `sm_resources` and
//! `sm_devices` (fence device health), `sm_events` (the event history, one entry per event by
//! sequence number; its counters and alert cursors in `sm_meta`), `sm_sticks` (the balancers'
//! stick tables, one entry per client key). [`Changes::of`] encodes the entries a batch touched
//! (see `phalanx_core::state::Touched`), [`Changes::all`] a whole state (an installed snapshot,
//! or the one-time upgrade from the former single `sm` blob); [`write`] commits either in one
//! transaction; [`load`] reassembles the state.

use super::state_machine::SmData;
use super::store::{decode, encode, StoreError, META};
use phalanx_core::events::{Event, EventLog, Mark};
use phalanx_core::state::{FenceRecord, Liveness, NodeRecord, Touched};
use phalanx_core::ClusterState;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const SM_NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_nodes");
const SM_ATTRS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sm_attrs");
const SM_RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_resources");
const SM_DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_devices");
const SM_EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("sm_events");
const SM_STICKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sm_sticks");

/// Present once the state machine is stored entry by entry: 2 from the start, 3 since node
/// records carry `online_since_plan` (a format-2 store is read through `legacy` and rewritten),
/// 4 since the state holds the committed config (`configs`) and who made each operator
/// constraint (`operator_origin`): each its own entry, absent from a format-3 store, read as
/// empty; the bump rewrites the stored snapshot, whose whole-state layout gained both fields;
/// 5 since the state machine holds the event history (`sm_events`, absent from a format-4 store:
/// read as an empty history; the snapshot's layout gained it); 6 since the state holds the
/// load balancers' records (`balancers` in `sm_meta`) and stick tables (`sm_sticks`, one entry
/// per client key), absent from a format-5 store: read as none; the snapshot's layout gained
/// both; 7 since the state holds the API's tokens (`tokens` in `sm_meta`, absent from a
/// format-6 store: read as none; the snapshot's layout gained it); 8 since the state holds what
/// the members trust (`trust` in `sm_meta`, absent from a format-7 store: read as the default,
/// each node's own files; the snapshot's layout gained it); 9 since the state holds the current
/// plan's clone notification lists (`plan_notify` in `sm_meta`, absent from a format-8 store:
/// read as none; the snapshot's layout gained it).
const FORMAT_KEY: &str = "format";
const FORMAT: u32 = 9;
/// The first format whose node entries carry `online_since_plan`.
const NODE_ENTRY_FORMAT: u32 = 3;

/// A node's record without its attributes (those are entries of their own).
#[derive(Serialize, Deserialize)]
struct NodeEntry {
    id: u64,
    links: Vec<String>,
    api: String,
    standby: bool,
    liveness: Liveness,
    liveness_since_ms: u64,
    maintenance: bool,
    fence: FenceRecord,
    online_since_plan: u64,
}

impl NodeEntry {
    fn of(r: &NodeRecord) -> Self {
        NodeEntry {
            id: r.id,
            links: r.links.clone(),
            api: r.api.clone(),
            standby: r.standby,
            liveness: r.liveness,
            liveness_since_ms: r.liveness_since_ms,
            maintenance: r.maintenance,
            fence: r.fence.clone(),
            online_since_plan: r.online_since_plan,
        }
    }

    fn into_record(self, attrs: BTreeMap<String, String>) -> NodeRecord {
        NodeRecord {
            id: self.id,
            links: self.links,
            api: self.api,
            standby: self.standby,
            liveness: self.liveness,
            liveness_since_ms: self.liveness_since_ms,
            attrs,
            maintenance: self.maintenance,
            fence: self.fence,
            online_since_plan: self.online_since_plan,
        }
    }
}

/// The event history's counters and alert cursors, one entry (the events are entries of their
/// own).
#[derive(Serialize, Deserialize)]
struct EventsMeta {
    next_seq: u64,
    limit: u64,
    last_ms: u64,
    delivered: BTreeMap<String, u64>,
}

/// The state's scalars, one entry.
#[derive(Serialize, Deserialize)]
struct Scalars {
    config_version: u64,
    max_node_id: u64,
    maintenance: bool,
}

/// `sm_attrs`' key: the node name's length (4 bytes, big-endian), the name, the attribute key.
/// All attributes of a node share the prefix, whatever bytes the names hold. `sm_sticks` keys
/// are made the same way, of the balancer's id and the client key.
fn attr_prefix(node: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + node.len());
    k.extend_from_slice(&(node.len() as u32).to_be_bytes());
    k.extend_from_slice(node.as_bytes());
    k
}

fn attr_key(node: &str, key: &str) -> Vec<u8> {
    let mut k = attr_prefix(node);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The (name, key) an [`attr_key`]-made key holds; None when it is not one.
fn split_key(k: &[u8]) -> Option<(String, String)> {
    let len = u32::from_be_bytes(k.get(..4)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(k.get(4..4 + len)?).ok()?;
    let key = std::str::from_utf8(k.get(4 + len..)?).ok()?;
    Some((name.to_string(), key.to_string()))
}

/// Which table an entry lives in.
#[derive(Clone, Copy)]
enum Table {
    Meta,
    Nodes,
    Resources,
    Devices,
}

/// One change to write: an entry (None: delete it), or every attribute of a node removed.
enum Op {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
    PutAttr(Vec<u8>, Vec<u8>),
    DeleteAttr(Vec<u8>),
    DeleteAttrsOf(String),
    PutEvent(u64, Vec<u8>),
    DeleteEvents(std::ops::Range<u64>),
    PutStick(Vec<u8>, Vec<u8>),
    DeleteStick(Vec<u8>),
}

/// The encoded entries of one batch, prepared while the state is locked and written after.
#[derive(Default)]
pub(super) struct Changes {
    /// Empty every state-machine table first (a whole state follows).
    clear: bool,
    /// fsync before `write` returns. A batch of applied entries is not: the log holds them, the
    /// next log write (always fsynced, same file) persists it, and a crash before that only
    /// rolls the state back to a consistent, earlier `last_applied` that openraft re-applies
    /// from. An fsync costs ≈ 4 ms on this machine, and every plan step (liveness, plan, claim,
    /// result) waits for an apply. A whole state (an installed snapshot, after which openraft may
    /// purge the log, or an upgrade) is fsynced.
    durable: bool,
    ops: Vec<Op>,
    /// Written to the raft `meta` table in the same transaction (an installed snapshot), and
    /// keys of it removed (the former blob, once upgraded).
    raft_meta: Vec<(&'static str, Vec<u8>)>,
    raft_meta_removed: Vec<&'static str>,
}

impl Changes {
    /// What a batch changed: `touched` entries of the cluster state, the last applied log id
    /// and, if `membership` changed, the membership.
    /// `mark` is where the event history stood before the batch.
    pub(super) fn of(d: &SmData, touched: &Touched, membership: bool, mark: Mark) -> Self {
        let mut c = Changes::default();
        if touched.events {
            c.events_meta(&d.events);
            let changed = d.events.changed_since(mark);
            if !changed.removed.is_empty() {
                c.ops.push(Op::DeleteEvents(changed.removed));
            }
            for seq in changed.added {
                if let Some(e) = d.events.get(seq) {
                    c.ops.push(Op::PutEvent(seq, encode(e)));
                }
            }
        }
        c.meta(d, membership, touched.scalars, touched.plan, touched.operator);
        if touched.configs {
            c.put(Table::Meta, "configs", encode(&d.cluster.configs));
        }
        if touched.balancers {
            c.put(Table::Meta, "balancers", encode(&d.cluster.balancers));
        }
        if touched.tokens {
            c.put(Table::Meta, "tokens", encode(&d.cluster.tokens));
        }
        if touched.trust {
            c.put(Table::Meta, "trust", encode(&d.cluster.trust));
        }
        let s = &d.cluster;
        for name in &touched.nodes {
            c.node(s, name);
        }
        for name in &touched.node_attrs {
            c.ops.push(Op::DeleteAttrsOf(name.clone()));
            for (k, v) in s.nodes.get(name).map(|n| &n.attrs).into_iter().flatten() {
                c.ops.push(Op::PutAttr(attr_key(name, k), v.as_bytes().to_vec()));
            }
        }
        for (name, key) in &touched.attrs {
            match s.nodes.get(name).and_then(|n| n.attrs.get(key)) {
                Some(v) => c.ops.push(Op::PutAttr(attr_key(name, key), v.as_bytes().to_vec())),
                None => c.ops.push(Op::DeleteAttr(attr_key(name, key))),
            }
        }
        for name in &touched.resources {
            c.entry(Table::Resources, name, s.resources.get(name).map(encode));
        }
        for name in &touched.fence_devices {
            c.entry(Table::Devices, name, s.fence_devices.get(name).map(encode));
        }
        for (balancer, key) in &touched.sticks {
            let k = attr_key(balancer, key);
            c.ops.push(match s.sticks.get(balancer).and_then(|t| t.get(key)) {
                Some(e) => Op::PutStick(k, encode(e)),
                None => Op::DeleteStick(k),
            });
        }
        c
    }

    /// A whole state, replacing whatever was stored.
    pub(super) fn all(d: &SmData) -> Self {
        let mut c = Changes {
            clear: true,
            durable: true,
            ..Changes::default()
        };
        c.meta(d, true, true, true, true);
        c.put(Table::Meta, "configs", encode(&d.cluster.configs));
        c.put(Table::Meta, "balancers", encode(&d.cluster.balancers));
        c.put(Table::Meta, "tokens", encode(&d.cluster.tokens));
        c.put(Table::Meta, "trust", encode(&d.cluster.trust));
        let s = &d.cluster;
        for (name, n) in &s.nodes {
            c.node(s, name);
            for (k, v) in &n.attrs {
                c.ops.push(Op::PutAttr(attr_key(name, k), v.as_bytes().to_vec()));
            }
        }
        for (name, r) in &s.resources {
            c.entry(Table::Resources, name, Some(encode(r)));
        }
        for (name, h) in &s.fence_devices {
            c.entry(Table::Devices, name, Some(encode(h)));
        }
        for (balancer, t) in &s.sticks {
            for (key, e) in t.iter() {
                c.ops.push(Op::PutStick(attr_key(balancer, key), encode(e)));
            }
        }
        c.events_meta(&d.events);
        for e in d.events.since(0) {
            c.ops.push(Op::PutEvent(e.seq, encode(e)));
        }
        c
    }

    fn events_meta(&mut self, log: &EventLog) {
        let m = EventsMeta {
            next_seq: log.next_seq(),
            limit: log.limit(),
            last_ms: log.last_ms(),
            delivered: log.delivered.clone(),
        };
        self.put(Table::Meta, "events", encode(&m));
    }

    /// Also write `key` of the raft `meta` table in the same transaction.
    pub(super) fn with_raft_meta(mut self, key: &'static str, value: Vec<u8>) -> Self {
        self.raft_meta.push((key, value));
        self
    }

    fn without_raft_meta(mut self, key: &'static str) -> Self {
        self.raft_meta_removed.push(key);
        self
    }

    fn meta(&mut self, d: &SmData, membership: bool, scalars: bool, plan: bool, operator: bool) {
        let s = &d.cluster;
        self.put(Table::Meta, FORMAT_KEY, encode(&FORMAT));
        self.put(Table::Meta, "last_applied", encode(&d.last_applied));
        if membership {
            self.put(Table::Meta, "membership", encode(&d.membership));
        }
        if scalars {
            let sc = Scalars {
                config_version: s.config_version,
                max_node_id: s.max_node_id,
                maintenance: s.maintenance,
            };
            self.put(Table::Meta, "scalars", encode(&sc));
        }
        if plan {
            self.put(Table::Meta, "plan", encode(&s.plan));
            self.put(Table::Meta, "plan_notify", encode(&s.plan_notify));
        }
        if operator {
            self.put(Table::Meta, "operator", encode(&s.operator));
            self.put(Table::Meta, "operator_origin", encode(&s.operator_origin));
        }
    }

    fn node(&mut self, s: &ClusterState, name: &str) {
        self.entry(Table::Nodes, name, s.nodes.get(name).map(|n| encode(&NodeEntry::of(n))));
        if !s.nodes.contains_key(name) {
            self.ops.push(Op::DeleteAttrsOf(name.to_string()));
        }
    }

    fn put(&mut self, t: Table, key: &str, v: Vec<u8>) {
        self.ops.push(Op::Put(t, key.to_string(), v));
    }

    fn entry(&mut self, t: Table, key: &str, v: Option<Vec<u8>>) {
        self.ops.push(match v {
            Some(v) => Op::Put(t, key.to_string(), v),
            None => Op::Delete(t, key.to_string()),
        });
    }
}

/// Commit `c` in one transaction (fsync included).
pub(super) fn write(db: &Database, c: &Changes) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    if !c.durable {
        tx.set_durability(redb::Durability::None)?;
    }
    {
        let mut meta = tx.open_table(SM_META)?;
        let mut nodes = tx.open_table(SM_NODES)?;
        let mut attrs = tx.open_table(SM_ATTRS)?;
        let mut resources = tx.open_table(SM_RESOURCES)?;
        let mut devices = tx.open_table(SM_DEVICES)?;
        let mut events = tx.open_table(SM_EVENTS)?;
        let mut sticks = tx.open_table(SM_STICKS)?;
        if c.clear {
            events.retain(|_, _| false)?;
            sticks.retain(|_, _| false)?;
            meta.retain(|_, _| false)?;
            nodes.retain(|_, _| false)?;
            attrs.retain(|_, _| false)?;
            resources.retain(|_, _| false)?;
            devices.retain(|_, _| false)?;
        }
        for op in &c.ops {
            match op {
                Op::Put(t, k, v) => {
                    let t = match t {
                        Table::Meta => &mut meta,
                        Table::Nodes => &mut nodes,
                        Table::Resources => &mut resources,
                        Table::Devices => &mut devices,
                    };
                    t.insert(k.as_str(), v.as_slice())?;
                }
                Op::Delete(t, k) => {
                    let t = match t {
                        Table::Meta => &mut meta,
                        Table::Nodes => &mut nodes,
                        Table::Resources => &mut resources,
                        Table::Devices => &mut devices,
                    };
                    t.remove(k.as_str())?;
                }
                Op::PutAttr(k, v) => {
                    attrs.insert(k.as_slice(), v.as_slice())?;
                }
                Op::DeleteAttr(k) => {
                    attrs.remove(k.as_slice())?;
                }
                Op::PutEvent(seq, v) => {
                    events.insert(*seq, v.as_slice())?;
                }
                Op::DeleteEvents(range) => {
                    events.retain_in(range.clone(), |_, _| false)?;
                }
                Op::PutStick(k, v) => {
                    sticks.insert(k.as_slice(), v.as_slice())?;
                }
                Op::DeleteStick(k) => {
                    sticks.remove(k.as_slice())?;
                }
                Op::DeleteAttrsOf(node) => {
                    let prefix = attr_prefix(node);
                    let mut keys = Vec::new();
                    for item in attrs.range(prefix.as_slice()..)? {
                        let (k, _) = item?;
                        if !k.value().starts_with(&prefix) {
                            break;
                        }
                        keys.push(k.value().to_vec());
                    }
                    for k in keys {
                        attrs.remove(k.as_slice())?;
                    }
                }
            }
        }
        let mut raft_meta = tx.open_table(META)?;
        for (k, v) in &c.raft_meta {
            raft_meta.insert(*k, v.as_slice())?;
        }
        for k in &c.raft_meta_removed {
            raft_meta.remove(*k)?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn get<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, StoreError> {
    match t.get(key).map_err(redb::Error::from)? {
        Some(v) => Ok(Some(decode(key, v.value())?)),
        None => Ok(None),
    }
}

/// The stored state machine, reassembled, and whether it is in an older format (to rewrite);
/// None when it was never stored entry by entry.
pub(super) fn load(db: &Database) -> Result<Option<(SmData, bool)>, StoreError> {
    let rx = db.begin_read().map_err(redb::Error::from)?;
    let meta = match rx.open_table(SM_META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(redb::Error::from(e).into()),
    };
    let Some(format) = get::<u32>(&meta, FORMAT_KEY)? else {
        return Ok(None);
    };
    let scalars: Option<Scalars> = get(&meta, "scalars")?;
    let mut cluster = ClusterState {
        config_version: scalars.as_ref().map_or(0, |s| s.config_version),
        max_node_id: scalars.as_ref().map_or(0, |s| s.max_node_id),
        maintenance: scalars.as_ref().is_some_and(|s| s.maintenance),
        plan: get(&meta, "plan")?.unwrap_or_default(),
        operator: get(&meta, "operator")?.unwrap_or_default(),
        configs: get(&meta, "configs")?.unwrap_or_default(),
        operator_origin: get(&meta, "operator_origin")?.unwrap_or_default(),
        balancers: get(&meta, "balancers")?.unwrap_or_default(),
        tokens: get(&meta, "tokens")?.unwrap_or_default(),
        trust: get(&meta, "trust")?.unwrap_or_default(),
        plan_notify: get(&meta, "plan_notify")?.unwrap_or_default(),
        ..ClusterState::default()
    };
    let mut attrs: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for item in rx
        .open_table(SM_ATTRS)
        .map_err(redb::Error::from)?
        .iter()
        .map_err(redb::Error::from)?
    {
        let (k, v) = item.map_err(redb::Error::from)?;
        let v = String::from_utf8(v.value().to_vec()).map_err(|_| StoreError::Corrupt("attribute value"))?;
        attrs.insert(k.value().to_vec(), v);
    }
    for item in rx
        .open_table(SM_NODES)
        .map_err(redb::Error::from)?
        .iter()
        .map_err(redb::Error::from)?
    {
        let (k, v) = item.map_err(redb::Error::from)?;
        let name = k.value().to_string();
        let prefix = attr_prefix(&name);
        let mut own = BTreeMap::new();
        for (ak, av) in attrs
            .range(prefix.clone()..)
            .take_while(|(ak, _)| ak.starts_with(&prefix))
        {
            let key =
                String::from_utf8(ak[prefix.len()..].to_vec()).map_err(|_| StoreError::Corrupt("attribute key"))?;
            own.insert(key, av.clone());
        }
        let record = if format < NODE_ENTRY_FORMAT {
            decode::<super::legacy::NodeEntryV2>("node", v.value())?.into_record(own)
        } else {
            decode::<NodeEntry>("node", v.value())?.into_record(own)
        };
        cluster.nodes.insert(name, record);
    }
    for item in rx
        .open_table(SM_RESOURCES)
        .map_err(redb::Error::from)?
        .iter()
        .map_err(redb::Error::from)?
    {
        let (k, v) = item.map_err(redb::Error::from)?;
        cluster
            .resources
            .insert(k.value().to_string(), decode("resource", v.value())?);
    }
    for item in rx
        .open_table(SM_DEVICES)
        .map_err(redb::Error::from)?
        .iter()
        .map_err(redb::Error::from)?
    {
        let (k, v) = item.map_err(redb::Error::from)?;
        cluster
            .fence_devices
            .insert(k.value().to_string(), decode("fence device", v.value())?);
    }
    match rx.open_table(SM_STICKS) {
        Ok(t) => {
            for item in t.iter().map_err(redb::Error::from)? {
                let (k, v) = item.map_err(redb::Error::from)?;
                let (balancer, key) = split_key(k.value()).ok_or(StoreError::Corrupt("stick key"))?;
                let entry = decode("stick entry", v.value())?;
                cluster.sticks.entry(balancer).or_default().insert_raw(key, entry);
            }
        }
        // A store from before stick tables.
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(redb::Error::from(e).into()),
    }
    let events = match get::<EventsMeta>(&meta, "events")? {
        None => EventLog::default(),
        Some(m) => {
            let mut kept: Vec<Event> = Vec::new();
            for item in rx
                .open_table(SM_EVENTS)
                .map_err(redb::Error::from)?
                .iter()
                .map_err(redb::Error::from)?
            {
                let (_, v) = item.map_err(redb::Error::from)?;
                kept.push(decode("event", v.value())?);
            }
            EventLog::restore(kept, m.next_seq, m.limit, m.last_ms, m.delivered)
        }
    };
    let data = SmData {
        last_applied: get(&meta, "last_applied")?.flatten(),
        membership: get(&meta, "membership")?.unwrap_or_default(),
        cluster,
        events,
    };
    Ok(Some((data, format < FORMAT)))
}

/// A state read in a former format (entries of format 2, or the `sm` blob of format 1 in the
/// raft `meta` table, then dropped), rewritten in today's format in one transaction, with the
/// stored snapshot (`snapshot`, in the former layout too) replaced by one of this state, if
/// there was one. Done once, at the first start after an upgrade.
pub(super) fn upgrade(db: &Database, old: &SmData, snapshot: Option<Vec<u8>>) -> Result<(), redb::Error> {
    let mut c = Changes::all(old).without_raft_meta("sm");
    if let Some(s) = snapshot {
        c = c.with_raft_meta("snapshot", s);
    }
    write(db, &c)
}

/// Store `d` as a version of format 2 did (node entries without `online_since_plan`).
#[cfg(test)]
pub(super) fn store_format_2(db: &Database, d: &SmData) -> Result<(), redb::Error> {
    write(db, &Changes::all(d))?;
    let tx = db.begin_write()?;
    {
        let mut nodes = tx.open_table(SM_NODES)?;
        for (name, r) in &d.cluster.nodes {
            nodes.insert(name.as_str(), super::legacy::write::node_entry_v2(r).as_slice())?;
        }
        tx.open_table(SM_META)?.insert(FORMAT_KEY, encode(&2u32).as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Store `d` as format 3 did (no `operator_origin` entry).
#[cfg(test)]
pub(super) fn store_format_3(db: &Database, d: &SmData) -> Result<(), redb::Error> {
    write(db, &Changes::all(d))?;
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(SM_META)?;
        meta.remove("operator_origin")?;
        meta.remove("tokens")?;
        meta.remove("trust")?;
        meta.remove("plan_notify")?;
        meta.insert(FORMAT_KEY, encode(&3u32).as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Store `d` as format 8 did (no clone notification lists).
#[cfg(test)]
pub(super) fn store_format_8(db: &Database, d: &SmData) -> Result<(), redb::Error> {
    write(db, &Changes::all(d))?;
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(SM_META)?;
        meta.remove("plan_notify")?;
        meta.insert(FORMAT_KEY, encode(&8u32).as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Store `d` as format 7 did (no trust record).
#[cfg(test)]
pub(super) fn store_format_7(db: &Database, d: &SmData) -> Result<(), redb::Error> {
    write(db, &Changes::all(d))?;
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(SM_META)?;
        meta.remove("trust")?;
        meta.remove("plan_notify")?;
        meta.insert(FORMAT_KEY, encode(&7u32).as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Store `d` as format 6 did (no tokens).
#[cfg(test)]
pub(super) fn store_format_6(db: &Database, d: &SmData) -> Result<(), redb::Error> {
    write(db, &Changes::all(d))?;
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(SM_META)?;
        meta.remove("tokens")?;
        meta.remove("trust")?;
        meta.remove("plan_notify")?;
        meta.insert(FORMAT_KEY, encode(&6u32).as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Store `d` as format 5 did (no balancer records, no stick tables).
#[cfg(test)]
pub(super) fn store_format_5(db: &Database, d: &SmData) -> Result<(), redb::Error> {
    write(db, &Changes::all(d))?;
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(SM_META)?;
        meta.remove("balancers")?;
        meta.remove("tokens")?;
        meta.remove("trust")?;
        meta.remove("plan_notify")?;
        meta.insert(FORMAT_KEY, encode(&5u32).as_slice())?;
    }
    tx.delete_table(SM_STICKS)?;
    tx.commit()?;
    Ok(())
}

/// Store `d` as format 4 did (no event history).
#[cfg(test)]
pub(super) fn store_format_4(db: &Database, d: &SmData) -> Result<(), redb::Error> {
    write(db, &Changes::all(d))?;
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(SM_META)?;
        meta.remove("events")?;
        meta.remove("balancers")?;
        meta.remove("tokens")?;
        meta.remove("trust")?;
        meta.remove("plan_notify")?;
        meta.insert(FORMAT_KEY, encode(&4u32).as_slice())?;
        tx.open_table(SM_EVENTS)?.retain(|_, _| false)?;
    }
    tx.commit()?;
    Ok(())
}
