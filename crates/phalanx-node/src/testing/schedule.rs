//! The simulation's schedule: a pure function of the seed (rand's `StdRng`), so a run is
//! replayed by its seed. Each step is one fault (or a repair) and how long the simulation then
//! lets the cluster run before the next step, in virtual time. Which node a fault hits may be
//! named (`Who::Node`) or resolved against the live cluster when the step runs (the node holding
//! the group, the Raft leader), as the lab's nemesis does; the driver prints what it resolved.
//! Every `SETTLE_EVERY` steps, and last, a `Settle` step heals everything and requires the
//! cluster to be live again within a bound.

use rand::{Rng, SeedableRng};
use serde::Serialize;

/// A settle step comes at least this often (and closes every schedule).
pub const SETTLE_EVERY: usize = 12;

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Who {
    /// The `i`-th node of the config (0-based).
    Node(usize),
    /// The node running the primitive group, when the step runs.
    Holder,
    /// The Raft leader, when the step runs.
    Leader,
}

/// What a monitor failure hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A member of the primitive group.
    Group,
    /// The plain clone (on some node).
    Clone,
    /// The promotable clone's primary.
    Primary,
}

/// One step's fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Power cut: the node runs nothing; it boots again (same disk) after `down_ms`.
    Crash { who: Who, down_ms: u64 },
    /// SIGSTOP for `for_ms`: off the network, its calls wait; what it runs keeps running.
    Pause { who: Who, for_ms: u64 },
    /// Both ways: `who` and the next `size - 1` nodes (in config order) against the rest.
    Partition { who: Who, size: usize },
    /// One way: nothing from `who` reaches the others (it still hears them).
    OneWay { who: Who },
    /// A fraction of heartbeats dropped between every pair.
    Loss { percent: u32 },
    /// A monitor fails; `died`: the service is gone, else it still runs but hangs (its monitor
    /// times out).
    MonitorFail { target: Target, died: bool },
    /// The network is whole again (cuts and loss gone); crashed and paused nodes stay so.
    Heal,
    /// Everything healed (network, pauses, crashed nodes booted): the cluster must be live
    /// again (one leader, everything placed) within the bound.
    Settle,
}

/// One step: a fault, then `hold_ms` of virtual time before the next step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub fault: Fault,
    pub hold_ms: u64,
}

/// The cluster size a seed runs with when none is asked for: 5 nodes for one seed in four.
pub fn nodes_for(seed: u64) -> usize {
    if seed % 4 == 3 {
        5
    } else {
        3
    }
}

/// `steps` steps for a cluster of `nodes`, from `seed`.
pub fn schedule(seed: u64, steps: usize, nodes: usize) -> Vec<Step> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let minority = (nodes.max(1) - 1) / 2;
    let mut out = Vec::with_capacity(steps);
    let mut since_settle = 0;
    for i in 0..steps {
        since_settle += 1;
        if i + 1 == steps || since_settle >= SETTLE_EVERY {
            since_settle = 0;
            out.push(Step {
                fault: Fault::Settle,
                hold_ms: 0,
            });
            continue;
        }
        let who = match rng.gen_range(0..4) {
            0 => Who::Holder,
            1 => Who::Leader,
            _ => Who::Node(rng.gen_range(0..nodes)),
        };
        let fault = match rng.gen_range(0..100) {
            0..=13 => Fault::Crash {
                who,
                down_ms: rng.gen_range(300..6_000),
            },
            14..=27 => Fault::Pause {
                who,
                // Short ones (under the detection time) must cause nothing; long ones a fence.
                for_ms: rng.gen_range(100..4_000),
            },
            28..=43 => Fault::Partition {
                who,
                size: rng.gen_range(1..=minority.max(1)),
            },
            44..=53 => Fault::OneWay { who },
            54..=61 => Fault::Loss {
                percent: rng.gen_range(5..=40),
            },
            62..=79 => Fault::MonitorFail {
                target: match rng.gen_range(0..3) {
                    0 => Target::Group,
                    1 => Target::Clone,
                    _ => Target::Primary,
                },
                died: rng.gen_bool(0.5),
            },
            _ => Fault::Heal,
        };
        out.push(Step {
            fault,
            hold_ms: rng.gen_range(100..1_800),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_a_function_of_the_seed_and_covers_every_fault() {
        assert_eq!(schedule(7, 300, 3), schedule(7, 300, 3));
        assert_ne!(schedule(7, 300, 3), schedule(8, 300, 3));
        let s = schedule(7, 300, 5);
        let kinds: std::collections::BTreeSet<&str> = s
            .iter()
            .map(|st| match st.fault {
                Fault::Crash { .. } => "crash",
                Fault::Pause { .. } => "pause",
                Fault::Partition { .. } => "partition",
                Fault::OneWay { .. } => "one_way",
                Fault::Loss { .. } => "loss",
                Fault::MonitorFail { .. } => "monitor",
                Fault::Heal => "heal",
                Fault::Settle => "settle",
            })
            .collect();
        assert_eq!(kinds.len(), 8, "{kinds:?}");
        assert_eq!(s.last().map(|st| &st.fault), Some(&Fault::Settle));
        assert!(s
            .iter()
            .all(|st| !matches!(st.fault, Fault::Partition { size, .. } if size == 0 || size > 2)));
    }
}
