//! The heartbeat mesh (knet-like): every `heartbeat_interval` this node sends a signed datagram
//! to every peer on every link; incoming datagrams are authenticated, checked against replay and
//! fed to the pure failure detector. IO sits behind two narrow seams, `DatagramOut` for sending
//! and an mpsc channel of `Inbound` for receiving, so the same mesh runs over UDP sockets or the
//! in-process fake network. Links can be administratively disabled (both directions), which is
//! how an operator takes a NIC out of service and how tests cut one link on loopback.

pub mod wire;

use crate::key::Keys;
use phalanx_core::liveness::{Detector, LivenessEvent, PeerView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// A datagram that arrived on one of our links.
#[derive(Debug)]
pub struct Inbound {
    pub link: usize,
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// How datagrams leave this node. Implementations never block and never fail loudly: a lost
/// heartbeat is what the detector exists for.
pub trait DatagramOut: Send + Sync + 'static {
    /// Send `data` from our link `link` to `to`. Returns false if it could not be sent.
    fn send(&self, link: usize, to: SocketAddr, data: &[u8]) -> bool;
}

/// Static settings of the mesh.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub cluster: String,
    pub me: String,
    pub links: Vec<SocketAddr>,
    pub interval: Duration,
    pub dead_after: u32,
    pub incarnation: u64,
    /// The heartbeat keys (shared with the node, which changes them on a rotation).
    pub key: Keys,
}

/// Counters of the mesh, exported in status and metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshStats {
    pub sent: u64,
    pub send_errors: u64,
    pub received: u64,
    pub dropped_malformed: u64,
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    pub dropped_unknown_sender: u64,
    pub dropped_other_cluster: u64,
    pub dropped_link_disabled: u64,
}

/// What status shows of one link of a peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkStatus {
    pub index: usize,
    pub address: String,
    pub up: bool,
    /// Milliseconds since the last heartbeat on this link (None: never heard).
    pub last_heartbeat_ms_ago: Option<u64>,
}

/// What status shows of one peer, as this node sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub alive: bool,
    pub links: Vec<LinkStatus>,
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Wall-clock ms when this node last changed its verdict on the peer.
    pub changed_at_unix_ms: Option<u64>,
    /// The peer's last Raft log index, as its latest heartbeat said.
    pub log_index: Option<u64>,
    /// Whose partition the peer backs, as its latest heartbeat said (a witness' vote; 0: none).
    pub vote: Option<u64>,
    /// The peer hears this node, as its latest heartbeat said (false: the link works one way).
    pub hears_me: bool,
    /// The peers it no longer reaches both ways, as its latest heartbeat said (None: a peer too
    /// old to say). Not in status: the leader's confirmation of a loss reads it.
    #[serde(skip)]
    pub lost: Option<BTreeSet<String>>,
}

struct MeshState {
    detector: Detector,
    peers: BTreeMap<String, Vec<SocketAddr>>,
    /// (sender, link) → highest (incarnation, seq) accepted.
    replay: BTreeMap<(String, u8), (u64, u64)>,
    changed_at: BTreeMap<String, u64>,
    disabled_links: BTreeSet<usize>,
    stats: MeshStats,
    seq: u64,
    /// Our own last Raft log index, sent in every heartbeat.
    log_index: u64,
    /// Each peer's last Raft log index, from its heartbeats.
    peer_log_index: BTreeMap<String, u64>,
    /// Our own vote (a witness'), sent in every heartbeat, and each peer's.
    vote: u64,
    peer_vote: BTreeMap<String, u64>,
    /// Each peer's word on whether it hears us.
    peer_hears_me: BTreeMap<String, bool>,
    /// Each peer's word on the peers it lost (None: it is too old to say).
    peer_lost: BTreeMap<String, Option<BTreeSet<String>>>,
    /// The heartbeat interval now (the settings' until a committed config changes it).
    interval: Duration,
    /// When each of our last rounds of heartbeats was sent: (seq, since the mesh started).
    sent_at: std::collections::VecDeque<(u64, Duration)>,
    /// What each peer's heartbeats on each link did (`phalanx link-check`).
    meters: BTreeMap<(String, usize), LinkMeter>,
}

/// How many of our rounds the echo of a heartbeat can name (at 100 ms: 6.4 s back).
const SENT_KEPT: usize = 64;
/// How often (in rounds) a peer that sends no echoes is offered one (see `send_heartbeats`).
const ECHO_PROBE: u64 = 16;
/// How many round trips a link keeps (at 100 ms: 10 minutes).
const RTTS_KEPT: usize = 6000;

/// One peer's heartbeats on one link, since its process started (its incarnation).
#[derive(Debug, Clone, Default)]
struct LinkMeter {
    incarnation: u64,
    first_seq: u64,
    highest_seq: u64,
    received: u64,
    reorders: u64,
    /// The last heartbeat received, and when: what our next heartbeat to it echoes.
    last_rx: Option<(u64, Duration)>,
    /// The newest heartbeat version the peer sent (0: none yet): it reads that version too.
    version: u8,
    /// Round trips: (when measured, µs).
    rtts: std::collections::VecDeque<(Duration, u64)>,
}

/// A link's counters now, and its round trips since a moment (see [`Mesh::meters`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterView {
    pub peer: String,
    pub link: usize,
    /// The peer's process (a new one restarts the counts).
    pub incarnation: u64,
    pub received: u64,
    /// Heartbeats the peer numbered on this link since the first one heard.
    pub expected: u64,
    pub reorders: u64,
    pub rtts_us: Vec<u64>,
}

/// A handle on the running mesh; cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    settings: Arc<MeshSettings>,
    state: Arc<Mutex<MeshState>>,
    start: Instant,
    /// The verdicts: the peers reachable both ways, published on every change (a watch: a
    /// controller busy when it changed still sees it on its next wait, with the new set).
    reach: Arc<watch::Sender<BTreeSet<String>>>,
    /// Send a round of heartbeats now (our vote or our verdicts changed).
    send_now: Arc<Notify>,
    /// Bumped whenever a peer's word on the peers it lost changes (the controller waits on it:
    /// a loss it could not confirm yet may be confirmed now).
    views: Arc<watch::Sender<u64>>,
}

/// Wall-clock stamps (liveness changes, results, failures, fence records): unix ms from the
/// system clock. Under the simulation (`testing::follow_tokio_clock`) it follows tokio's clock
/// instead, so that on paused time the stamps move with virtual time (failure timeouts, fence
/// retry backoffs and failback holds then expire in virtual seconds, as they do in real ones).
pub fn unix_ms() -> u64 {
    if FOLLOW_TOKIO_CLOCK.load(std::sync::atomic::Ordering::Relaxed) {
        return tokio_clock_unix_ms();
    }
    system_unix_ms()
}

fn system_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Set once by the simulation (a test process or `phalanx-lab sim`); never by the product.
pub(crate) static FOLLOW_TOKIO_CLOCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The system clock when first asked, moved on by tokio's clock since (paused or not).
fn tokio_clock_unix_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<(u64, std::time::Instant)> = std::sync::OnceLock::new();
    let (wall, at) = *ORIGIN.get_or_init(|| (system_unix_ms(), std::time::Instant::now()));
    let since = Instant::now().into_std().saturating_duration_since(at);
    wall + since.as_millis() as u64
}

impl Mesh {
    pub fn new(settings: MeshSettings) -> Self {
        let detector = Detector::new(settings.interval, settings.dead_after);
        let interval = settings.interval;
        Mesh {
            settings: Arc::new(settings),
            state: Arc::new(Mutex::new(MeshState {
                detector,
                peers: BTreeMap::new(),
                replay: BTreeMap::new(),
                changed_at: BTreeMap::new(),
                disabled_links: BTreeSet::new(),
                stats: MeshStats::default(),
                seq: 0,
                log_index: 0,
                peer_log_index: BTreeMap::new(),
                vote: 0,
                peer_vote: BTreeMap::new(),
                peer_hears_me: BTreeMap::new(),
                peer_lost: BTreeMap::new(),
                interval,
                sent_at: std::collections::VecDeque::new(),
                meters: BTreeMap::new(),
            })),
            start: Instant::now(),
            reach: Arc::new(watch::Sender::new(BTreeSet::new())),
            send_now: Arc::new(Notify::new()),
            views: Arc::new(watch::Sender::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MeshState> {
        // A panic while holding this lock is a bug elsewhere; the detector state is still
        // consistent (every method leaves it so), so recover the guard rather than cascade.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn settings(&self) -> &MeshSettings {
        &self.settings
    }

    /// The verdicts as they change: the set of peers reachable both ways (alive, and hearing
    /// us). The controller waits on it; nothing else derives it.
    pub fn verdicts(&self) -> watch::Receiver<BTreeSet<String>> {
        self.reach.subscribe()
    }

    /// Changes whenever a peer's word on the peers it lost changed (see `PeerStatus::lost`).
    pub fn views(&self) -> watch::Receiver<u64> {
        self.views.subscribe()
    }

    /// Recompute two-way reachability from the detector and the peers' word, and publish it
    /// when it changed; a change is sent to the peers at once (the peers it lost are in every
    /// heartbeat, and a leader waits for them to confirm a loss).
    fn publish(&self) {
        let two_way: BTreeSet<String> = {
            let st = self.lock();
            st.detector
                .alive_peers()
                .filter(|p| st.peer_hears_me.get(*p).copied().unwrap_or(false))
                .map(str::to_string)
                .collect()
        };
        let changed = self.reach.send_if_modified(|cur| {
            if *cur == two_way {
                return false;
            }
            *cur = two_way;
            true
        });
        if changed {
            self.send_now.notify_one();
        }
    }

    /// Replace the peer set (names → link addresses); `me` is ignored if present.
    pub fn set_peers(&self, peers: BTreeMap<String, Vec<SocketAddr>>) {
        let mut st = self.lock();
        let peers: BTreeMap<_, _> = peers.into_iter().filter(|(n, _)| *n != self.settings.me).collect();
        if st.peers == peers {
            return;
        }
        let gone: Vec<String> = st.peers.keys().filter(|n| !peers.contains_key(*n)).cloned().collect();
        for n in gone {
            st.detector.remove_peer(&n);
            st.changed_at.remove(&n);
            st.peer_log_index.remove(&n);
            st.peer_vote.remove(&n);
            st.peer_hears_me.remove(&n);
            st.peer_lost.remove(&n);
            st.meters.retain(|(p, _), _| *p != n);
        }
        for (n, links) in &peers {
            st.detector.set_peer(n, links.len());
        }
        st.peers = peers;
        drop(st);
        self.publish();
    }

    /// Administratively enable or disable one of our links (stop sending, ignore receiving).
    /// Send every `interval`, and declare a link down after `dead_after` missed heartbeats, from
    /// now on (a committed config changed them; see `Detector::set_timing`).
    pub fn set_timing(&self, interval: Duration, dead_after: u32) {
        let now = self.now();
        let mut st = self.lock();
        if st.interval == interval && st.detector.detection_time() == interval * dead_after.max(1) {
            return;
        }
        st.interval = interval;
        st.detector.set_timing(interval, dead_after, now);
        drop(st);
        // The run loop picks the new interval up at its next wake.
        self.send_now.notify_one();
    }

    pub fn set_link_enabled(&self, link: usize, enabled: bool) -> bool {
        if link >= self.settings.links.len() {
            return false;
        }
        let mut st = self.lock();
        if enabled {
            st.disabled_links.remove(&link);
        } else {
            st.disabled_links.insert(link);
        }
        true
    }

    /// Set our last Raft log index, advertised in our heartbeats from now on.
    pub fn set_log_index(&self, index: u64) {
        self.lock().log_index = index;
    }

    /// Set the vote advertised in our heartbeats (a witness backs one partition); a change is
    /// sent at once, not at the next interval, so the partitions learn it within a round trip.
    pub fn set_vote(&self, vote: u64) {
        let changed = {
            let mut st = self.lock();
            std::mem::replace(&mut st.vote, vote) != vote
        };
        if changed {
            self.send_now.notify_one();
        }
    }

    pub fn disabled_links(&self) -> BTreeSet<usize> {
        self.lock().disabled_links.clone()
    }

    pub fn stats(&self) -> MeshStats {
        self.lock().stats.clone()
    }

    /// Time since the mesh started: the clock of [`meters`](Self::meters).
    pub fn elapsed(&self) -> Duration {
        self.now()
    }

    /// Every link meter: counters since the peer's process started, round trips measured
    /// since `since` (see [`elapsed`](Self::elapsed)).
    pub fn meters(&self, since: Duration) -> Vec<MeterView> {
        let st = self.lock();
        st.meters
            .iter()
            .map(|((peer, link), m)| MeterView {
                peer: peer.clone(),
                link: *link,
                incarnation: m.incarnation,
                received: m.received,
                expected: if m.received == 0 {
                    0
                } else {
                    m.highest_seq - m.first_seq + 1
                },
                reorders: m.reorders,
                rtts_us: m
                    .rtts
                    .iter()
                    .filter(|(at, _)| *at >= since)
                    .map(|(_, us)| *us)
                    .collect(),
            })
            .collect()
    }

    /// Peers we hear (on at least one link).
    pub fn alive_peers(&self) -> BTreeSet<String> {
        self.lock().detector.alive_peers().map(str::to_string).collect()
    }

    /// Peers we hear that also hear us: reachability both ways. A node whose frames are lost
    /// one way (an asymmetric link) must not count the peers it merely hears towards its
    /// quorum: they have declared it dead and may recover its resources.
    pub fn two_way_peers(&self) -> BTreeSet<String> {
        self.reach.borrow().clone()
    }

    /// Each peer's view, with ages relative to now.
    pub fn peers(&self) -> BTreeMap<String, PeerStatus> {
        let now = self.now();
        let st = self.lock();
        let age = |t: Option<Duration>| t.map(|t| now.saturating_sub(t).as_millis() as u64);
        st.detector
            .peers()
            .iter()
            .map(|(name, p): (&String, &PeerView)| {
                let addrs = st.peers.get(name);
                let links = p
                    .links
                    .iter()
                    .enumerate()
                    .map(|(i, l)| LinkStatus {
                        index: i,
                        address: addrs.and_then(|a| a.get(i)).map(|a| a.to_string()).unwrap_or_default(),
                        up: l.up,
                        last_heartbeat_ms_ago: age(l.last_heard),
                    })
                    .collect::<Vec<_>>();
                let last = links.iter().filter_map(|l| l.last_heartbeat_ms_ago).min();
                (
                    name.clone(),
                    PeerStatus {
                        alive: p.alive,
                        links,
                        last_heartbeat_ms_ago: last,
                        changed_at_unix_ms: st.changed_at.get(name).copied(),
                        log_index: st.peer_log_index.get(name).copied(),
                        vote: st.peer_vote.get(name).copied(),
                        hears_me: st.peer_hears_me.get(name).copied().unwrap_or(false),
                        lost: st.peer_lost.get(name).cloned().flatten(),
                    },
                )
            })
            .collect()
    }

    /// Run the mesh until the inbound channel closes: send heartbeats every interval, take in
    /// datagrams, and wake the detector exactly when its next link can expire (no polling).
    pub async fn run(self, out: Arc<dyn DatagramOut>, mut inbound: mpsc::Receiver<Inbound>) {
        let mut interval = self.settings.interval;
        let mut beat = tokio::time::interval(interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now_interval = self.lock().interval;
            if now_interval != interval {
                interval = now_interval;
                beat = tokio::time::interval(interval);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            // Nothing up: nothing can expire before the next heartbeat or datagram.
            let wake = self
                .lock()
                .detector
                .next_deadline()
                .map(|d| self.start + d)
                .unwrap_or_else(|| Instant::now() + interval);
            tokio::select! {
                _ = beat.tick() => self.send_heartbeats(out.as_ref()),
                _ = self.send_now.notified() => self.send_heartbeats(out.as_ref()),
                _ = tokio::time::sleep_until(wake) => {
                    let events = { let now = self.now(); self.lock().detector.tick(now) };
                    self.handle_events(events);
                }
                msg = inbound.recv() => match msg {
                    Some(m) => self.receive(m),
                    None => return,
                },
            }
        }
    }

    fn send_heartbeats(&self, out: &dyn DatagramOut) {
        let now = self.now();
        let mut st = self.lock();
        st.seq += 1;
        let seq = st.seq;
        st.sent_at.push_back((seq, now));
        if st.sent_at.len() > SENT_KEPT {
            st.sent_at.pop_front();
        }
        let log_index = st.log_index;
        let vote = st.vote;
        let mut sent = 0;
        let mut errors = 0;
        let alive: BTreeSet<String> = st.detector.alive_peers().map(str::to_string).collect();
        // The peers we lost: known, not reached both ways, once we have been up long enough to
        // have heard them (before that, none: a node just started confirms no loss).
        let settled = now >= st.detector.detection_time() + st.interval;
        let lost: Vec<String> = if settled {
            let reach = self.reach.borrow();
            st.peers.keys().filter(|p| !reach.contains(*p)).cloned().collect()
        } else {
            Vec::new()
        };
        for (i, _) in self.settings.links.iter().enumerate() {
            if st.disabled_links.contains(&i) {
                continue;
            }
            for (peer, addrs) in &st.peers {
                let Some(to) = addrs.get(i) else { continue };
                // The version the peer sends us, the newest until we heard it, and the newest
                // every ECHO_PROBE-th round to an older one: an older peer drops those few, an
                // upgraded one answers in the newest from then on.
                let meter = st.meters.get(&(peer.clone(), i));
                let version = match meter.map_or(0, |m| m.version) {
                    v if v == 0 || v >= wire::NEWEST || seq.is_multiple_of(ECHO_PROBE) => wire::NEWEST,
                    v => v,
                };
                let echo = meter
                    .filter(|_| version >= 3)
                    .and_then(|m| m.last_rx)
                    .map(|(seq, at)| wire::Echo {
                        seq,
                        hold_us: now.saturating_sub(at).as_micros().min(u128::from(u32::MAX)) as u32,
                    });
                let data = wire::encode(
                    &wire::Heartbeat {
                        cluster: self.settings.cluster.clone(),
                        sender: self.settings.me.clone(),
                        link: i as u8,
                        incarnation: self.settings.incarnation,
                        seq,
                        log_index,
                        vote,
                        hears: alive.contains(peer),
                        to: peer.clone(),
                        echo,
                        lost: (version >= 4).then(|| lost.clone()),
                    },
                    &self.settings.key,
                );
                if out.send(i, *to, &data) {
                    sent += 1;
                } else {
                    errors += 1;
                }
            }
        }
        st.stats.sent += sent;
        st.stats.send_errors += errors;
    }

    /// Take in one datagram. Never panics on any input; every drop is counted by reason.
    pub fn receive(&self, m: Inbound) {
        let now = self.now();
        let hears_changed;
        let events = {
            let mut st = self.lock();
            if st.disabled_links.contains(&m.link) {
                st.stats.dropped_link_disabled += 1;
                return;
            }
            let hb = match wire::decode(&m.data, &self.settings.key) {
                Ok(hb) => hb,
                Err(wire::WireError::Auth) => {
                    st.stats.dropped_auth += 1;
                    return;
                }
                Err(_) => {
                    st.stats.dropped_malformed += 1;
                    return;
                }
            };
            if hb.cluster != self.settings.cluster {
                st.stats.dropped_other_cluster += 1;
                return;
            }
            if hb.to != self.settings.me {
                st.stats.dropped_malformed += 1;
                return;
            }
            if usize::from(hb.link) != m.link {
                st.stats.dropped_malformed += 1;
                return;
            }
            if !st.peers.contains_key(&hb.sender) {
                st.stats.dropped_unknown_sender += 1;
                return;
            }
            let key = (hb.sender.clone(), hb.link);
            if let Some(&last) = st.replay.get(&key) {
                if (hb.incarnation, hb.seq) <= last {
                    st.stats.dropped_replay += 1;
                    if (hb.incarnation, hb.seq) < last && hb.incarnation == last.0 {
                        if let Some(meter) = st.meters.get_mut(&(hb.sender.clone(), m.link)) {
                            meter.reorders += 1;
                        }
                    }
                    return;
                }
            }
            let sent = hb
                .echo
                .and_then(|e| st.sent_at.iter().find(|(s, _)| *s == e.seq).map(|(_, at)| (*at, e)));
            let meter = st.meters.entry((hb.sender.clone(), m.link)).or_default();
            if meter.incarnation != hb.incarnation || meter.received == 0 {
                *meter = LinkMeter {
                    incarnation: hb.incarnation,
                    first_seq: hb.seq,
                    ..LinkMeter::default()
                };
            }
            meter.received += 1;
            meter.highest_seq = hb.seq;
            meter.last_rx = Some((hb.seq, now));
            meter.version = meter.version.max(hb.version());
            if let Some((at, e)) = sent {
                let rtt = now
                    .saturating_sub(at)
                    .saturating_sub(Duration::from_micros(u64::from(e.hold_us)));
                meter.rtts.push_back((now, rtt.as_micros() as u64));
                if meter.rtts.len() > RTTS_KEPT {
                    meter.rtts.pop_front();
                }
            }
            st.replay.insert(key, (hb.incarnation, hb.seq));
            st.peer_log_index.insert(hb.sender.clone(), hb.log_index);
            st.peer_vote.insert(hb.sender.clone(), hb.vote);
            let was = st.peer_hears_me.insert(hb.sender.clone(), hb.hears);
            hears_changed = was != Some(hb.hears);
            let lost = hb.lost.map(|l| l.into_iter().collect::<BTreeSet<String>>());
            if st.peer_lost.get(&hb.sender) != Some(&lost) {
                st.peer_lost.insert(hb.sender.clone(), lost);
                self.views.send_modify(|v| *v += 1);
            }
            st.stats.received += 1;
            st.detector.report_heartbeat(&hb.sender, m.link, now)
        };
        self.handle_events(events);
        if hears_changed {
            // Two-way reachability may have changed: quorum may have.
            self.publish();
        }
    }

    fn handle_events(&self, events: Vec<LivenessEvent>) {
        if events.is_empty() {
            return;
        }
        let wall = unix_ms();
        let mut verdict_changed = false;
        {
            let mut st = self.lock();
            for e in &events {
                match e {
                    LivenessEvent::NodeAlive { node } | LivenessEvent::NodeDead { node } => {
                        st.changed_at.insert(node.clone(), wall);
                        verdict_changed = true;
                    }
                    _ => {}
                }
            }
        }
        for e in &events {
            match e {
                LivenessEvent::LinkUp { node, link } => tracing::info!(peer = %node, link, "link up"),
                LivenessEvent::LinkDown { node, link } => tracing::warn!(peer = %node, link, "link down"),
                LivenessEvent::NodeAlive { node } => tracing::info!(peer = %node, "node alive"),
                LivenessEvent::NodeDead { node } => tracing::warn!(peer = %node, "node dead: all links silent"),
            }
        }
        if verdict_changed {
            self.publish();
        }
    }
}

/// UDP sockets, one per link, as the mesh's transport.
pub struct UdpOut {
    sockets: Vec<Arc<tokio::net::UdpSocket>>,
}

impl DatagramOut for UdpOut {
    fn send(&self, link: usize, to: SocketAddr, data: &[u8]) -> bool {
        self.sockets
            .get(link)
            .map(|s| s.try_send_to(data, to).is_ok())
            .unwrap_or(false)
    }
}

/// Bind one UDP socket per link and start a receiver task for each.
/// A runtime of its own for the heartbeat mesh, on one thread: heartbeats and the failure
/// detector never wait for the node's other work. The node's runtime (one thread) blocks for
/// each Raft log append's fsync (≈ 4 ms, and hundreds of ms on a loaded disk); a mesh stuck
/// that long stops sending and then declares every peer dead at once. Seen in the lab's
/// rolling restart: the leader stalled 250 ms, declared n1 dead and alive again within a
/// millisecond, and the one heartbeat it sent between said it did not hear n1, so n1 counted no
/// quorum and stopped its resources. Corosync runs its totem protocol apart for the same
/// reason, and real-time: so does this thread when it may (see `priority`). Bind the links with [`bind_udp_on`] and pass the handle in `NodeOptions`.
pub fn dedicated_runtime() -> std::io::Result<tokio::runtime::Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("phalanx-mesh".into()).spawn(move || {
        let got = crate::priority::raise_mesh_thread();
        tracing::info!(scheduling = %got, "heartbeat thread started");
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = tx.send(Ok(rt.handle().clone()));
        rt.block_on(std::future::pending::<()>());
    })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the heartbeat thread did not start"))?
}

/// [`bind_udp`] on `rt` (see [`dedicated_runtime`]): the sockets and their receive loops live
/// there.
pub async fn bind_udp_on(
    rt: &tokio::runtime::Handle,
    links: &[SocketAddr],
) -> std::io::Result<(Arc<UdpOut>, mpsc::Receiver<Inbound>)> {
    let links = links.to_vec();
    rt.spawn(async move { bind_udp(&links).await })
        .await
        .map_err(|e| std::io::Error::other(format!("binding the heartbeat links: {e}")))?
}

pub async fn bind_udp(links: &[SocketAddr]) -> std::io::Result<(Arc<UdpOut>, mpsc::Receiver<Inbound>)> {
    let (tx, rx) = mpsc::channel(1024);
    let mut sockets = Vec::new();
    for (i, addr) in links.iter().enumerate() {
        let sock = Arc::new(
            tokio::net::UdpSocket::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("binding heartbeat link {i} on {addr}: {e}")))?,
        );
        let rsock = sock.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                match rsock.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        let m = Inbound {
                            link: i,
                            from,
                            data: buf[..n].to_vec(),
                        };
                        // A full queue means we are overloaded: dropping a heartbeat is right.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(m) {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(link = i, error = %e, "heartbeat receive error");
                    }
                }
            }
        });
        sockets.push(sock);
    }
    Ok((Arc::new(UdpOut { sockets }), rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sink(Mutex<Vec<(usize, SocketAddr, Vec<u8>)>>);
    impl DatagramOut for Sink {
        fn send(&self, link: usize, to: SocketAddr, data: &[u8]) -> bool {
            self.0.lock().unwrap().push((link, to, data.to_vec()));
            true
        }
    }

    fn settings(me: &str, key: u8) -> MeshSettings {
        MeshSettings {
            cluster: "c".into(),
            me: me.into(),
            links: vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.2:1".parse().unwrap()],
            interval: Duration::from_millis(100),
            dead_after: 3,
            incarnation: 1,
            key: crate::key::ClusterKey::from_bytes(&[key; 32]).into(),
        }
    }

    fn peers(names: &[&str]) -> BTreeMap<String, Vec<SocketAddr>> {
        names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    vec!["127.0.0.1:2".parse().unwrap(), "127.0.0.2:2".parse().unwrap()],
                )
            })
            .collect()
    }

    /// Deliver everything `from` sends now to `to`.
    fn exchange(from: &Mesh, to: &Mesh) {
        let sink = Sink(Mutex::new(Vec::new()));
        from.send_heartbeats(&sink);
        for (link, addr, data) in sink.0.into_inner().unwrap() {
            to.receive(Inbound { link, from: addr, data });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_heard_one_way_only_is_not_reachable_both_ways() {
        let a = Mesh::new(settings("a", 1));
        let b = Mesh::new(settings("b", 1));
        a.set_peers(peers(&["b"]));
        b.set_peers(peers(&["a"]));
        // b's frames reach a, a's never reach b: a hears b, and b says it does not hear a.
        exchange(&b, &a);
        assert!(a.alive_peers().contains("b"));
        assert!(a.two_way_peers().is_empty(), "b does not hear a");
        assert!(!a.peers()["b"].hears_me);
        // Now a's frames get through too, and b says so in its next heartbeat.
        exchange(&a, &b);
        exchange(&b, &a);
        assert!(a.two_way_peers().contains("b"));
        // A datagram addressed to someone else is dropped.
        let c = Mesh::new(settings("c", 1));
        c.set_peers(peers(&["b"]));
        exchange(&b, &c);
        assert_eq!(c.stats().dropped_malformed, 2, "one per link");
    }

    fn sent(m: &Mesh) -> Vec<(usize, SocketAddr, Vec<u8>)> {
        let sink = Sink(Mutex::new(Vec::new()));
        m.send_heartbeats(&sink);
        sink.0.into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_echo_each_other_to_measure_round_trips_loss_and_reorders() {
        let a = Mesh::new(settings("a", 1));
        let b = Mesh::new(settings("b", 1));
        a.set_peers(peers(&["b"]));
        b.set_peers(peers(&["a"]));
        let mut stale = None;
        for round in 1..=40u64 {
            // b -> a takes 2 ms; link 1 loses b's rounds 5, 15, 25 and 35.
            let from_b = sent(&b);
            if round == 1 {
                // The newest version before the peer has spoken, with no echo: nothing heard yet.
                assert!(from_b.iter().all(|(_, _, d)| {
                    let hb = wire::decode(d, &b.settings().key).unwrap();
                    hb.version() == wire::NEWEST && hb.echo.is_none()
                }));
            }
            if round == 3 {
                stale = Some(from_b[0].clone());
            }
            tokio::time::advance(Duration::from_millis(2)).await;
            for (link, from, data) in from_b {
                if !(link == 1 && round % 10 == 5) {
                    a.receive(Inbound { link, from, data });
                }
            }
            // a -> b takes 3 ms; then 95 ms until the next round.
            let from_a = sent(&a);
            tokio::time::advance(Duration::from_millis(3)).await;
            for (link, from, data) in from_a {
                b.receive(Inbound { link, from, data });
            }
            tokio::time::advance(Duration::from_millis(95)).await;
        }
        // A datagram of round 3 again: late, after later ones.
        let (link, from, data) = stale.unwrap();
        a.receive(Inbound { link, from, data });
        let m = a.meters(Duration::ZERO);
        let (l0, l1) = (&m[0], &m[1]);
        assert_eq!((l0.peer.as_str(), l0.link, l1.link), ("b", 0, 1));
        assert_eq!((l0.received, l0.expected, l0.reorders), (40, 40, 1));
        assert_eq!((l1.received, l1.expected, l1.reorders), (36, 40, 0));
        // a's round trip to b: 3 ms there, b holds it 95 ms, 2 ms back; the hold is not counted.
        // Echoes begin at once (the newest version is spoken to a peer not heard yet): b's
        // rounds 2 to 40 echo a's.
        assert_eq!(l0.rtts_us.len(), 39, "{:?}", l0.rtts_us);
        assert!(
            l0.rtts_us.iter().chain(&l1.rtts_us).all(|us| *us == 5_000),
            "{l0:?} {l1:?}"
        );
        assert_eq!(l1.rtts_us.len(), 39 - 4, "four of b's echoes were lost on link 1");
        // Only the round trips since a moment.
        assert_eq!(a.meters(a.elapsed() - Duration::from_millis(350))[0].rtts_us.len(), 3);
    }

    /// A peer that speaks version 3 (no `lost`) is answered in version 3, says nothing of the
    /// peers it lost (None: the leader counts it as agreeing, as before), and a version-4 peer
    /// says whom it lost once it has been up one detection time plus a heartbeat.
    #[tokio::test(start_paused = true)]
    async fn an_older_peer_is_answered_in_its_version_and_a_newer_one_says_whom_it_lost() {
        let a = Mesh::new(settings("a", 1));
        let b = Mesh::new(settings("b", 1));
        a.set_peers(peers(&["b", "c"]));
        b.set_peers(peers(&["a"]));
        let key = b.settings().key.clone();
        for (link, from, data) in sent(&b) {
            let mut hb = wire::decode(&data, &key).unwrap();
            hb.lost = None;
            hb.echo = Some(wire::Echo { seq: 0, hold_us: 0 });
            a.receive(Inbound {
                link,
                from,
                data: wire::encode(&hb, &key),
            });
        }
        assert_eq!(a.peers()["b"].lost, None);
        let versions = |to: &str| -> Vec<u8> {
            sent(&a)
                .iter()
                .map(|(_, _, d)| wire::decode(d, &key).unwrap())
                .filter(|hb| hb.to == to)
                .map(|hb| hb.version())
                .collect()
        };
        assert_eq!(versions("b"), [3, 3], "b spoke version 3");
        assert_eq!(versions("c"), [4, 4], "c, never heard, gets the newest");
        // b, version 4: nobody lost while it starts; then a, never heard, is.
        for (link, from, data) in sent(&b) {
            a.receive(Inbound { link, from, data });
        }
        assert_eq!(a.peers()["b"].lost, Some(BTreeSet::new()));
        tokio::time::advance(Duration::from_millis(450)).await;
        for (link, from, data) in sent(&b) {
            a.receive(Inbound { link, from, data });
        }
        assert_eq!(a.peers()["b"].lost, Some(BTreeSet::from(["a".to_string()])));
    }

    #[tokio::test(start_paused = true)]
    async fn accepts_good_and_counts_every_kind_of_bad() {
        let a = Mesh::new(settings("a", 1));
        let b = Mesh::new(settings("b", 1));
        a.set_peers(peers(&["b"]));
        b.set_peers(peers(&["a"]));
        let sink = Sink(Mutex::new(Vec::new()));
        b.send_heartbeats(&sink);
        let sent = sink.0.lock().unwrap().clone();
        assert_eq!(sent.len(), 2, "one datagram per link");
        let deliver = |i: usize| Inbound {
            link: sent[i].0,
            from: sent[i].1,
            data: sent[i].2.clone(),
        };
        a.receive(deliver(0));
        assert!(a.alive_peers().contains("b"));
        a.receive(deliver(0)); // replayed
        a.receive(Inbound {
            link: 0,
            from: sent[0].1,
            data: vec![1, 2, 3],
        });
        let mut wrong_link = deliver(1);
        wrong_link.link = 0;
        a.receive(wrong_link);
        // another key
        let c = Mesh::new(settings("b", 2));
        c.set_peers(peers(&["a"]));
        let sink2 = Sink(Mutex::new(Vec::new()));
        c.send_heartbeats(&sink2);
        let forged = sink2.0.lock().unwrap()[0].clone();
        a.receive(Inbound {
            link: 0,
            from: forged.1,
            data: forged.2,
        });
        // unknown sender
        let d = Mesh::new(settings("zz", 1));
        d.set_peers(peers(&["a"]));
        let sink3 = Sink(Mutex::new(Vec::new()));
        d.send_heartbeats(&sink3);
        let stranger = sink3.0.lock().unwrap()[0].clone();
        a.receive(Inbound {
            link: 0,
            from: stranger.1,
            data: stranger.2,
        });
        // disabled link
        a.set_link_enabled(1, false);
        a.receive(deliver(1));
        let s = a.stats();
        assert_eq!(
            (
                s.received,
                s.dropped_replay,
                s.dropped_malformed,
                s.dropped_auth,
                s.dropped_unknown_sender,
                s.dropped_link_disabled
            ),
            (1, 1, 2, 1, 1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_links_send_nothing_and_peers_die_after_silence() {
        let a = Mesh::new(settings("a", 1));
        a.set_peers(peers(&["b", "c"]));
        a.set_link_enabled(0, false);
        assert!(!a.set_link_enabled(5, false), "no such link");
        let sink = Sink(Mutex::new(Vec::new()));
        a.send_heartbeats(&sink);
        assert!(sink.0.lock().unwrap().iter().all(|(l, _, _)| *l == 1));
        assert_eq!(sink.0.lock().unwrap().len(), 2);
        assert!(a.alive_peers().is_empty());
        let view = a.peers();
        assert_eq!(view["b"].links.len(), 2);
        assert_eq!(view["b"].last_heartbeat_ms_ago, None);
    }
}
