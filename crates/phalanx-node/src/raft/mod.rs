//! Everything Raft: the cluster group's openraft type config ([`TypeConfig`], group
//! [`CLUSTER`]), the timings derived from the heartbeat settings, the redb-backed log
//! (`store`, generic over the group) and the cluster state machine (`state_machine`), and the
//! HTTP transport (`network`, generic over the group). A node can host several Raft groups on
//! the same voters (`group`: names, routes `/raft/{group}/…`, one redb file each, the registry
//! the peer router dispatches through); today it runs one, `cluster`. All Raft code lives in
//! this module so the openraft version can move in one place.

pub mod filelog;
pub mod group;
mod legacy;
pub mod network;
pub mod sessions;
mod sm_tables;
pub mod snapfile;
pub mod state_machine;
pub mod store;
#[cfg(test)]
mod toy;

use phalanx_core::config::ClusterConfig;
use phalanx_core::timings::ms;
use phalanx_core::{Command, Outcome, Timings};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

pub use group::{Group, GroupId, Groups, CLUSTER};
pub use phalanx_core::controller::{NodeId, WITNESS_ID, WITNESS_NAME};
pub type BasicNode = openraft::BasicNode;

/// What the leader proposes: a cluster-state command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub Command);

/// What applying it gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Outcome);

openraft::declare_raft_types!(
    /// The cluster group's Raft types: cluster-state commands over u64 node ids.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

impl Group for TypeConfig {
    const ID: GroupId = CLUSTER;
}

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::StoredMembership<NodeId, BasicNode>;

/// The largest snapshot chunk openraft sends in one `/raft/{group}/snapshot` request (its
/// default is 3 MiB; a state of any size is sent as many of these).
pub const SNAPSHOT_CHUNK: u64 = 1024 * 1024;

/// The network sends at most this many bytes of log entries in one `/raft/{group}/append`
/// request: a longer batch (a lagging follower catching up on large entries) goes as a prefix,
/// reported to openraft as a partial success, and the rest follows (see `network`). One entry
/// larger than this still goes, alone.
pub const APPEND_BUDGET: usize = 4 * 1024 * 1024;

/// What the peer router accepts on `/raft/{group}/{rpc}`: a snapshot chunk or an append batch
/// with room to spare, and one log entry up to this size (the operator API's own limit, 2 MB,
/// bounds the commands it accepts far below it). Other routes keep axum's default of 2 MB.
pub const RAFT_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// openraft's config: its timeouts are [`Timings`]' (the one owner of derived timings).
pub fn raft_config(cluster: &ClusterConfig) -> openraft::Config {
    let t = Timings::from(cluster);
    openraft::Config {
        cluster_name: cluster.name.clone(),
        heartbeat_interval: ms(t.raft_heartbeat),
        election_timeout_min: ms(t.election_min),
        election_timeout_max: ms(t.election_max),
        install_snapshot_timeout: ms(t.install_snapshot_timeout),
        max_in_snapshot_log_to_keep: 500,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2000),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timings_follow_the_heartbeat() {
        let cfg = phalanx_core::config::parse(
            "[cluster]\nname=\"c\"\nheartbeat_interval=\"20ms\"\n[[node]]\nname=\"a\"\nlinks=[\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let rc = raft_config(&cfg.cluster);
        assert_eq!(rc.heartbeat_interval, 20);
        assert_eq!(rc.election_timeout_min, 60);
        assert_eq!(rc.election_timeout_max, 76);
        assert!((rc.snapshot_max_chunk_size as usize) < RAFT_BODY_LIMIT / 4);
        rc.validate().unwrap();
        const { assert!(APPEND_BUDGET < RAFT_BODY_LIMIT / 4) };
        assert_eq!(cfg.cluster.detection_time(), Duration::from_millis(60));
    }
}
