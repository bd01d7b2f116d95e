//! The failure detector: turns "a heartbeat from node N arrived on link L at time T" into per-link
//! up/down state and per-node alive/dead verdicts. Pure: the caller passes `now` (any monotonic
//! origin) and gets back the transitions it caused; nothing here reads a clock or does IO.
//!
//! The rule (knet/corosync-like): a link of a peer is down once it has been silent for
//! `dead_after` heartbeat intervals; a peer is dead only when *all* of its links are down. One bad
//! NIC or switch therefore never causes a failover while another link still carries heartbeats.

use std::collections::BTreeMap;
use std::time::Duration;

/// A transition reported by the detector; the shell logs it, counts it and acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivenessEvent {
    LinkUp { node: String, link: usize },
    LinkDown { node: String, link: usize },
    NodeAlive { node: String },
    NodeDead { node: String },
}

/// The view of one link of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    pub up: bool,
    /// When the last heartbeat arrived on this link (None: never).
    pub last_heard: Option<Duration>,
}

/// The view of one peer: its links and the verdict drawn from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub alive: bool,
    pub links: Vec<LinkView>,
    /// When the verdict last changed (None: it has never been alive).
    pub since: Option<Duration>,
}

/// The detector for all peers of one node. Peers start dead until first heard from.
#[derive(Debug, Clone)]
pub struct Detector {
    interval: Duration,
    dead_after: u32,
    peers: BTreeMap<String, PeerView>,
}

impl Detector {
    pub fn new(interval: Duration, dead_after: u32) -> Self {
        Detector {
            interval,
            dead_after: dead_after.max(1),
            peers: BTreeMap::new(),
        }
    }

    /// How long a link may stay silent before it is down (`dead_after` × interval).
    pub fn detection_time(&self) -> Duration {
        self.interval * self.dead_after
    }

    /// Make `node` a monitored peer with `links` links (idempotent; keeps state when the count
    /// is unchanged, otherwise resizes keeping what it can).
    pub fn set_peer(&mut self, node: &str, links: usize) {
        let peer = self.peers.entry(node.to_string()).or_insert(PeerView {
            alive: false,
            links: Vec::new(),
            since: None,
        });
        peer.links.resize(
            links,
            LinkView {
                up: false,
                last_heard: None,
            },
        );
    }

    /// Heartbeats come every `interval` from now on, and `dead_after` missed ones kill a link (a
    /// committed config changed them). Every link that is up gets a fresh window from `now`
    /// under the new timing: peers switch when they apply the same entry, a moment apart, and
    /// none must die of that moment.
    pub fn set_timing(&mut self, interval: Duration, dead_after: u32, now: Duration) {
        self.interval = interval;
        self.dead_after = dead_after.max(1);
        for peer in self.peers.values_mut() {
            for link in peer.links.iter_mut().filter(|l| l.up) {
                link.last_heard = Some(link.last_heard.map_or(now, |t| t.max(now)));
            }
        }
    }

    /// Stop monitoring `node` (it left the cluster).
    pub fn remove_peer(&mut self, node: &str) {
        self.peers.remove(node);
    }

    /// A valid heartbeat from `node` arrived on `link` at `now`. Unknown peers and links are
    /// ignored (the caller authenticates and validates first; this returns no event for them).
    pub fn report_heartbeat(&mut self, node: &str, link: usize, now: Duration) -> Vec<LivenessEvent> {
        let mut events = Vec::new();
        let Some(peer) = self.peers.get_mut(node) else {
            return events;
        };
        let Some(view) = peer.links.get_mut(link) else {
            return events;
        };
        view.last_heard = Some(match view.last_heard {
            Some(prev) if prev > now => prev,
            _ => now,
        });
        if !view.up {
            view.up = true;
            events.push(LivenessEvent::LinkUp {
                node: node.to_string(),
                link,
            });
        }
        if !peer.alive {
            peer.alive = true;
            peer.since = Some(now);
            events.push(LivenessEvent::NodeAlive { node: node.to_string() });
        }
        events
    }

    /// Advance to `now`: links silent for the detection time go down, and peers whose links are
    /// all down die. Call it at least once per heartbeat interval.
    pub fn tick(&mut self, now: Duration) -> Vec<LivenessEvent> {
        let limit = self.detection_time();
        let mut events = Vec::new();
        for (name, peer) in &mut self.peers {
            for (i, link) in peer.links.iter_mut().enumerate() {
                let silent = match link.last_heard {
                    Some(t) => now.saturating_sub(t) >= limit,
                    None => true,
                };
                if link.up && silent {
                    link.up = false;
                    events.push(LivenessEvent::LinkDown {
                        node: name.clone(),
                        link: i,
                    });
                }
            }
            if peer.alive && peer.links.iter().all(|l| !l.up) {
                peer.alive = false;
                peer.since = Some(now);
                events.push(LivenessEvent::NodeDead { node: name.clone() });
            }
        }
        events
    }

    /// The earliest `now` at which [`tick`](Self::tick) could report something: the moment the
    /// first link that is up reaches the detection time. None while no link is up. The shell
    /// sleeps until then instead of polling, so a verdict is exact and an idle node sleeps.
    pub fn next_deadline(&self) -> Option<Duration> {
        let limit = self.detection_time();
        self.peers
            .values()
            .flat_map(|p| p.links.iter())
            .filter(|l| l.up)
            .filter_map(|l| l.last_heard.map(|t| t + limit))
            .min()
    }

    pub fn peer(&self, node: &str) -> Option<&PeerView> {
        self.peers.get(node)
    }

    pub fn peers(&self) -> &BTreeMap<String, PeerView> {
        &self.peers
    }

    /// Names of the peers currently alive.
    pub fn alive_peers(&self) -> impl Iterator<Item = &str> {
        self.peers.iter().filter(|(_, p)| p.alive).map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn det() -> Detector {
        let mut d = Detector::new(100 * MS, 3);
        d.set_peer("n2", 2);
        d
    }

    #[test]
    fn unknown_peer_starts_dead_and_comes_alive_on_first_beat() {
        let mut d = det();
        assert!(!d.peer("n2").unwrap().alive);
        let ev = d.report_heartbeat("n2", 0, 10 * MS);
        assert_eq!(
            ev,
            vec![
                LivenessEvent::LinkUp {
                    node: "n2".into(),
                    link: 0
                },
                LivenessEvent::NodeAlive { node: "n2".into() }
            ]
        );
        assert!(d.peer("n2").unwrap().alive);
        assert!(!d.peer("n2").unwrap().links[1].up);
    }

    #[test]
    fn one_link_silent_keeps_the_node_alive() {
        let mut d = det();
        for t in (0..2000).step_by(100) {
            d.report_heartbeat("n2", 0, t * MS);
            if t < 500 {
                d.report_heartbeat("n2", 1, t * MS);
            }
            let ev = d.tick(t * MS + 50 * MS);
            assert!(
                !ev.iter().any(|e| matches!(e, LivenessEvent::NodeDead { .. })),
                "at {t}: {ev:?}"
            );
        }
        let p = d.peer("n2").unwrap();
        assert!(p.alive);
        assert!(p.links[0].up);
        assert!(!p.links[1].up, "link 1 went silent and must be down");
    }

    #[test]
    fn all_links_silent_kills_the_node_after_dead_after_intervals() {
        let mut d = det();
        d.report_heartbeat("n2", 0, Duration::ZERO);
        d.report_heartbeat("n2", 1, Duration::ZERO);
        assert!(d.tick(299 * MS).is_empty(), "2.99 intervals of silence is not yet dead");
        let ev = d.tick(300 * MS);
        assert!(ev.contains(&LivenessEvent::NodeDead { node: "n2".into() }), "{ev:?}");
        assert!(ev.contains(&LivenessEvent::LinkDown {
            node: "n2".into(),
            link: 0
        }));
        assert!(ev.contains(&LivenessEvent::LinkDown {
            node: "n2".into(),
            link: 1
        }));
        assert_eq!(d.peer("n2").unwrap().since, Some(300 * MS));
        // no repeated events
        assert!(d.tick(400 * MS).is_empty());
    }

    #[test]
    fn a_dead_node_recovers_on_any_link() {
        let mut d = det();
        d.report_heartbeat("n2", 0, Duration::ZERO);
        d.tick(1000 * MS);
        assert!(!d.peer("n2").unwrap().alive);
        let ev = d.report_heartbeat("n2", 1, 1100 * MS);
        assert!(ev.contains(&LivenessEvent::NodeAlive { node: "n2".into() }));
        assert!(d.peer("n2").unwrap().alive);
        assert_eq!(d.alive_peers().collect::<Vec<_>>(), vec!["n2"]);
    }

    #[test]
    fn heartbeats_for_unknown_nodes_or_links_are_ignored() {
        let mut d = det();
        assert!(d.report_heartbeat("zz", 0, MS).is_empty());
        assert!(d.report_heartbeat("n2", 7, MS).is_empty());
        assert!(!d.peer("n2").unwrap().alive);
    }

    #[test]
    fn out_of_order_now_does_not_move_last_heard_back() {
        let mut d = det();
        d.report_heartbeat("n2", 0, 500 * MS);
        d.report_heartbeat("n2", 0, 400 * MS);
        assert_eq!(d.peer("n2").unwrap().links[0].last_heard, Some(500 * MS));
    }

    #[test]
    fn next_deadline_is_the_first_link_to_expire() {
        let mut d = det();
        d.set_peer("n3", 1);
        assert_eq!(d.next_deadline(), None, "nothing is up, nothing can expire");
        d.report_heartbeat("n2", 0, 100 * MS);
        d.report_heartbeat("n2", 1, 150 * MS);
        d.report_heartbeat("n3", 0, 120 * MS);
        assert_eq!(d.next_deadline(), Some(400 * MS));
        assert!(d.tick(399 * MS).is_empty());
        assert_eq!(
            d.tick(400 * MS),
            vec![LivenessEvent::LinkDown {
                node: "n2".into(),
                link: 0
            }]
        );
        assert_eq!(d.next_deadline(), Some(420 * MS));
    }

    #[test]
    fn remove_and_resize_peers() {
        let mut d = det();
        d.set_peer("n2", 3);
        assert_eq!(d.peer("n2").unwrap().links.len(), 3);
        d.remove_peer("n2");
        assert!(d.peer("n2").is_none());
    }

    #[test]
    fn a_new_timing_gives_every_live_link_a_fresh_window() {
        let mut d = Detector::new(100 * MS, 3);
        d.set_peer("n2", 1);
        d.report_heartbeat("n2", 0, Duration::ZERO);
        // Slower heartbeats from 250 ms: n2's next one may come 1 s later; it is not dead at 301.
        d.set_timing(1000 * MS, 3, 250 * MS);
        assert_eq!(d.detection_time(), 3000 * MS);
        assert!(d.tick(301 * MS).is_empty());
        assert!(d.tick(3249 * MS).is_empty());
        assert_eq!(d.tick(3250 * MS).len(), 2, "link down, node dead");
    }
}
