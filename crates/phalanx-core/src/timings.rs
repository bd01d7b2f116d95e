//! Every timing the cluster derives from `[cluster]` (`heartbeat_interval`, `dead_after`,
//! `fencing`, the watchdog), computed in one place: the Raft timeouts, the failure detector's
//! detection time, the controller's and executor's ticks, the campaign window after a leader
//! loss, the settle time after start, the witness' grace and how long a lost node's resources are
//! held. Every consumer (Raft config, mesh, controller, executor, scheduler input) reads
//! [`Timings`]; none multiplies the heartbeat interval itself.

use crate::config::{ClusterConfig, Fencing};
use std::time::Duration;

/// Timings derived from one `[cluster]` section (`Timings::from(&config.cluster)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How often every node heartbeats every peer on every link.
    pub heartbeat: Duration,
    /// Missed heartbeats after which a link (and, all links silent, a node) is down.
    pub dead_after: u32,
    /// `heartbeat × dead_after`: the silence that declares a link or node down.
    pub detection: Duration,
    /// Raft: the leader's heartbeat (the mesh interval).
    pub raft_heartbeat: Duration,
    /// Raft: followers time out after one to 1.25 detection times (at least 2 heartbeats).
    /// openraft refuses votes until `election_max` after the last leader contact (the leader
    /// lease); a lost leader is typically replaced ≈ 1.6 × `election_max` after its last
    /// heartbeat, ≈ 2 × the detection time.
    pub election_min: Duration,
    pub election_max: Duration,
    /// Raft: replication RPCs to a dead peer must not stall the leader for long.
    pub install_snapshot_timeout: Duration,
    /// The controller's period; halved (`campaign_tick`) while a campaign window is open.
    pub controller_tick: Duration,
    pub campaign_tick: Duration,
    /// After the leader is seen lost, how long this node may campaign for it: one election
    /// timeout plus two heartbeats.
    pub campaign_window: Duration,
    /// Right after start the detector has heard nobody yet: a new leader declares nobody
    /// offline before one detection time plus one heartbeat.
    pub startup_settle: Duration,
    /// The witness still counts a vote for a node lost less than this ago (the moment between a
    /// crash and the witness noticing it).
    pub witness_grace: Duration,
    /// The executor's idle wake-up (it also wakes at once on every state change).
    pub executor_tick: Duration,
    /// How long after a node is declared lost what it held stays held (not recovered
    /// elsewhere): with `fencing = "watchdog"`, until its quorum lease must have run out (it stops
    /// its resources itself when it loses quorum, at most one interval after the majority saw it
    /// go, plus an interval of margin for the stop); with a hardware watchdog, SBD's msgwait:
    /// twice its timeout. None: recover once fenced (`required`) or at once (`off`).
    pub lost_node_hold: Option<Duration>,
}

impl From<&ClusterConfig> for Timings {
    fn from(c: &ClusterConfig) -> Self {
        let heartbeat = c.heartbeat_interval.max(Duration::from_millis(1));
        let detection = heartbeat * c.dead_after.max(1);
        let election_min = heartbeat * c.dead_after.max(2);
        let election_max = election_min + election_min / 4 + Duration::from_millis(1);
        Timings {
            heartbeat,
            dead_after: c.dead_after.max(1),
            detection,
            raft_heartbeat: heartbeat,
            election_min,
            election_max,
            install_snapshot_timeout: (election_min * 4).max(Duration::from_millis(200)),
            controller_tick: heartbeat,
            campaign_tick: heartbeat / 2,
            campaign_window: election_max + heartbeat * 2,
            startup_settle: detection + heartbeat,
            witness_grace: heartbeat,
            executor_tick: heartbeat,
            lost_node_hold: match c.fencing {
                Fencing::Watchdog if c.watchdog.is_some() => Some(c.watchdog_timeout * 2),
                Fencing::Watchdog => Some(heartbeat * 2),
                Fencing::Required | Fencing::Off => None,
            },
        }
    }
}

/// Whole milliseconds (openraft and the state take `u64` ms).
pub fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(hb_ms: u64, dead_after: u32, fencing: Fencing) -> ClusterConfig {
        ClusterConfig {
            name: "c".into(),
            heartbeat_interval: Duration::from_millis(hb_ms),
            dead_after,
            no_quorum_policy: crate::NoQuorumPolicy::Stop,
            key_file: "k".into(),
            fencing,
            priority_fence_delay: Duration::ZERO,
            watchdog: None,
            watchdog_timeout: Duration::from_secs(5),
            shutdown: Default::default(),
            event_history: crate::events::DEFAULT_HISTORY,
            slo_ppm: None,
        }
    }

    #[test]
    fn derived_from_the_heartbeat_and_dead_after() {
        let t = Timings::from(&cluster(100, 3, Fencing::Required));
        assert_eq!(t.detection, Duration::from_millis(300));
        assert_eq!(t.election_min, Duration::from_millis(300));
        assert_eq!(t.election_max, Duration::from_millis(376));
        assert_eq!(t.install_snapshot_timeout, Duration::from_millis(1200));
        assert_eq!(t.campaign_tick, Duration::from_millis(50));
        assert_eq!(t.campaign_window, Duration::from_millis(576));
        assert_eq!(t.startup_settle, Duration::from_millis(400));
        assert_eq!(t.lost_node_hold, None);
        // One missed beat still leaves Raft two heartbeats before an election.
        let t = Timings::from(&cluster(20, 1, Fencing::Off));
        assert_eq!(
            (t.detection, t.election_min),
            (Duration::from_millis(20), Duration::from_millis(40))
        );
        assert_eq!(t.install_snapshot_timeout, Duration::from_millis(200));
    }

    #[test]
    fn the_lost_node_hold_follows_the_fencing_mode() {
        let mut c = cluster(100, 3, Fencing::Watchdog);
        assert_eq!(Timings::from(&c).lost_node_hold, Some(Duration::from_millis(200)));
        c.watchdog = Some("/dev/watchdog".into());
        assert_eq!(Timings::from(&c).lost_node_hold, Some(Duration::from_secs(10)));
        c.fencing = Fencing::Off;
        assert_eq!(Timings::from(&c).lost_node_hold, None);
    }
}
