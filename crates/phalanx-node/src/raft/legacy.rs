//! What older phalanx versions stored, frozen here so that a node upgraded in place reads it
//! once and rewrites it in today's format: node records from before `online_since_plan`
//! (state-machine format 2 entries, and inside the whole-state `sm` blob of format 1). A
//! format-3 store differs from today's only by lacking the `operator_origin` entry (read as
//! empty) and by its stored snapshot's layout (rebuilt at the upgrade). postcard
//! is not self-describing, so a record that gains a field needs its former layout kept.

use super::state_machine::SmData;
use super::{LogId, Membership};
use phalanx_core::scheduler::OperatorConstraint;
use phalanx_core::state::{DeviceHealth, FenceRecord, Liveness, NodeRecord, PlanRecord, ResourceRecord};
use phalanx_core::ClusterState;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A node's record before `online_since_plan`: treated as online since before any plan, which
/// is what the former version assumed of every result.
#[derive(Deserialize)]
struct NodeRecordV2 {
    id: u64,
    links: Vec<String>,
    api: String,
    standby: bool,
    liveness: Liveness,
    liveness_since_ms: u64,
    attrs: BTreeMap<String, String>,
    maintenance: bool,
    fence: FenceRecord,
}

impl From<NodeRecordV2> for NodeRecord {
    fn from(r: NodeRecordV2) -> Self {
        NodeRecord {
            id: r.id,
            links: r.links,
            api: r.api,
            standby: r.standby,
            liveness: r.liveness,
            liveness_since_ms: r.liveness_since_ms,
            attrs: r.attrs,
            maintenance: r.maintenance,
            fence: r.fence,
            online_since_plan: 0,
        }
    }
}

/// A format-2 `sm_nodes` entry (a node's record without its attributes).
#[derive(Deserialize)]
pub(super) struct NodeEntryV2 {
    id: u64,
    links: Vec<String>,
    api: String,
    standby: bool,
    liveness: Liveness,
    liveness_since_ms: u64,
    maintenance: bool,
    fence: FenceRecord,
}

impl NodeEntryV2 {
    pub(super) fn into_record(self, attrs: BTreeMap<String, String>) -> NodeRecord {
        NodeRecordV2 {
            id: self.id,
            links: self.links,
            api: self.api,
            standby: self.standby,
            liveness: self.liveness,
            liveness_since_ms: self.liveness_since_ms,
            attrs,
            maintenance: self.maintenance,
            fence: self.fence,
        }
        .into()
    }
}

#[derive(Deserialize)]
struct ClusterStateV2 {
    nodes: BTreeMap<String, NodeRecordV2>,
    config_version: u64,
    max_node_id: u64,
    resources: BTreeMap<String, ResourceRecord>,
    operator: Vec<OperatorConstraint>,
    plan: PlanRecord,
    maintenance: bool,
    fence_devices: BTreeMap<String, DeviceHealth>,
}

/// The whole-state `sm` blob of format 1.
#[derive(Deserialize)]
pub(super) struct SmDataV1 {
    last_applied: Option<LogId>,
    membership: Membership,
    cluster: ClusterStateV2,
}

impl From<SmDataV1> for SmData {
    fn from(d: SmDataV1) -> Self {
        let c = d.cluster;
        SmData {
            last_applied: d.last_applied,
            membership: d.membership,
            cluster: ClusterState {
                nodes: c.nodes.into_iter().map(|(n, r)| (n, r.into())).collect(),
                config_version: c.config_version,
                max_node_id: c.max_node_id,
                resources: c.resources,
                operator: c.operator,
                plan: c.plan,
                maintenance: c.maintenance,
                fence_devices: c.fence_devices,
                configs: Vec::new(),
                operator_origin: Vec::new(),
                balancers: Default::default(),
                sticks: Default::default(),
                tokens: Default::default(),
                trust: Default::default(),
                plan_notify: Default::default(),
            },
            events: Default::default(),
        }
    }
}

/// The former layouts, written independently of the structs above (postcard encodes a struct as
/// the tuple of its fields), so that tests store exactly what an older version stored.
#[cfg(test)]
pub(super) mod write {
    use super::super::state_machine::SmData;
    use super::super::store::encode;
    use phalanx_core::state::NodeRecord;
    use std::collections::BTreeMap;

    /// A format-2 `sm_nodes` entry.
    pub fn node_entry_v2(r: &NodeRecord) -> Vec<u8> {
        encode(&(
            r.id,
            &r.links,
            &r.api,
            r.standby,
            r.liveness,
            r.liveness_since_ms,
            r.maintenance,
            &r.fence,
        ))
    }

    /// The format-1 `sm` blob (also the layout of snapshots until format 3).
    pub fn sm_v1(d: &SmData) -> Vec<u8> {
        let c = &d.cluster;
        let nodes: BTreeMap<&String, _> = c
            .nodes
            .iter()
            .map(|(n, r)| {
                let v2 = (
                    r.id,
                    &r.links,
                    &r.api,
                    r.standby,
                    r.liveness,
                    r.liveness_since_ms,
                    &r.attrs,
                    r.maintenance,
                    &r.fence,
                );
                (n, v2)
            })
            .collect();
        let cluster = (
            nodes,
            c.config_version,
            c.max_node_id,
            &c.resources,
            &c.operator,
            &c.plan,
            c.maintenance,
            &c.fence_devices,
        );
        encode(&(&d.last_applied, &d.membership, cluster))
    }

    /// A snapshot of format 3: today's whole state without `operator_origin`.
    pub fn sm_v3(d: &SmData) -> Vec<u8> {
        let c = &d.cluster;
        let cluster = (
            &c.nodes,
            c.config_version,
            c.max_node_id,
            &c.resources,
            &c.operator,
            &c.plan,
            c.maintenance,
            &c.fence_devices,
        );
        encode(&(&d.last_applied, &d.membership, cluster))
    }

    /// The whole state as formats 4 and 5 laid it out: today's without `balancers`.
    fn cluster_v5(c: &phalanx_core::ClusterState) -> impl serde::Serialize + '_ {
        (
            &c.nodes,
            c.config_version,
            c.max_node_id,
            &c.resources,
            &c.operator,
            &c.plan,
            c.maintenance,
            &c.fence_devices,
            &c.configs,
            &c.operator_origin,
        )
    }

    /// A snapshot of format 4: today's state without the event history and balancers.
    pub fn sm_v4(d: &SmData) -> Vec<u8> {
        encode(&(&d.last_applied, &d.membership, cluster_v5(&d.cluster)))
    }

    /// A snapshot of format 8: today's without the clone notification lists.
    pub fn sm_v8(d: &SmData) -> Vec<u8> {
        let c = &d.cluster;
        let cluster = (
            &c.nodes,
            c.config_version,
            c.max_node_id,
            &c.resources,
            &c.operator,
            &c.plan,
            c.maintenance,
            &c.fence_devices,
            &c.configs,
            &c.operator_origin,
            &c.balancers,
            &c.sticks,
            &c.tokens,
            &c.trust,
        );
        encode(&(&d.last_applied, &d.membership, cluster, &d.events))
    }

    /// A snapshot of format 7: today's without the trust record.
    pub fn sm_v7(d: &SmData) -> Vec<u8> {
        let c = &d.cluster;
        let cluster = (
            &c.nodes,
            c.config_version,
            c.max_node_id,
            &c.resources,
            &c.operator,
            &c.plan,
            c.maintenance,
            &c.fence_devices,
            &c.configs,
            &c.operator_origin,
            &c.balancers,
            &c.sticks,
            &c.tokens,
        );
        encode(&(&d.last_applied, &d.membership, cluster, &d.events))
    }

    /// A snapshot of format 6: today's without the tokens.
    pub fn sm_v6(d: &SmData) -> Vec<u8> {
        let c = &d.cluster;
        let cluster = (
            &c.nodes,
            c.config_version,
            c.max_node_id,
            &c.resources,
            &c.operator,
            &c.plan,
            c.maintenance,
            &c.fence_devices,
            &c.configs,
            &c.operator_origin,
            &c.balancers,
            &c.sticks,
        );
        encode(&(&d.last_applied, &d.membership, cluster, &d.events))
    }

    /// A snapshot of format 5: today's without the balancers.
    pub fn sm_v5(d: &SmData) -> Vec<u8> {
        encode(&(&d.last_applied, &d.membership, cluster_v5(&d.cluster), &d.events))
    }
}
