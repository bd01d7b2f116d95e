//! The event history as this node serves it (`phalanx_core::events` derives and keeps it in the
//! replicated state machine): reading it with filters (`GET /v1/events`), following it as it
//! grows (`?follow=1`, Server-Sent Events, each event's `id:` its sequence number), and the
//! events only this node can observe, committed as notes: authentication failures (at most one
//! event per source address a minute, counting the others) and quorum lost and regained (a node
//! without quorum cannot commit: both are recorded once quorum is back, with the times they
//! happened), and, on the leader with `[cluster] slo`, error budgets burning too fast
//! ([`watch_burn`]).

use crate::node::Node;
use phalanx_core::events::{Event, EventKind, Note};
use phalanx_core::Command;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// One event as the API and `phalanx events --json` give it: the stored event and its time
/// as RFC 3339 (UTC, ms).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    pub time: String,
    #[serde(flatten)]
    pub event: Event,
}

impl EventView {
    pub fn of(e: &Event) -> Self {
        EventView {
            time: rfc3339(e.time_ms),
            event: e.clone(),
        }
    }
}

/// `ms` (unix) as `2026-12-01T10:00:00.123Z`.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Which events a reader wants (all of them by default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// From this sequence number on.
    pub since: Option<u64>,
    /// From this time on (unix ms).
    pub since_ms: Option<u64>,
    pub resource: Option<String>,
    pub node: Option<String>,
    /// Comma-separated kinds (`node_lost,fence_failed`).
    pub kind: Option<String>,
    /// At most this many (the newest), when not following.
    pub limit: Option<usize>,
    /// Keep the connection open and stream new events (Server-Sent Events).
    #[serde(default, deserialize_with = "flag")]
    pub follow: bool,
}

/// `follow=1`, `follow=true`, or a bare `follow`.
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        other => Err(serde::de::Error::custom(format!("follow={other:?}: say 1 or 0"))),
    }
}

impl Filter {
    /// The kinds asked for (None: all), or the first unknown name.
    pub fn kinds(&self) -> Result<Option<Vec<EventKind>>, String> {
        let Some(list) = &self.kind else { return Ok(None) };
        list.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| EventKind::parse(k).ok_or_else(|| k.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn matches(&self, e: &Event, kinds: &Option<Vec<EventKind>>) -> bool {
        self.since_ms.is_none_or(|t| e.time_ms >= t)
            && self.resource.as_ref().is_none_or(|r| {
                e.resource.as_deref() == Some(r.as_str())
                    || e.resource.as_deref().and_then(|x| x.split(':').next()) == Some(r.as_str())
            })
            && self.node.as_ref().is_none_or(|n| e.node == *n || e.reporter == *n)
            && kinds.as_ref().is_none_or(|ks| ks.contains(&e.kind))
    }
}

/// What a read gives: the matching events from `since`, and where the history stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    /// The oldest event still kept: a reader asking from before it missed some (dropped).
    pub first_seq: u64,
    /// The sequence number the next event will have: ask from here next time.
    pub next_seq: u64,
    pub events: Vec<EventView>,
}

/// The events matching `f` from `from` on (at most `f.limit`, the newest).
pub fn read(node: &Node, f: &Filter, from: u64, kinds: &Option<Vec<EventKind>>) -> Page {
    node.with_state(|sm| {
        let log = &sm.events;
        let mut events: Vec<EventView> = log
            .since(from)
            .filter(|e| f.matches(e, kinds))
            .map(EventView::of)
            .collect();
        if let Some(limit) = f.limit {
            let extra = events.len().saturating_sub(limit);
            events.drain(..extra);
        }
        Page {
            first_seq: log.first_seq(),
            next_seq: log.next_seq(),
            events,
        }
    })
}

/// The notes only this node makes (see the module's doc).
#[derive(Default)]
pub struct Notes {
    /// Source address → (start of its minute, failures since).
    auth: Mutex<BTreeMap<String, (u64, u32)>>,
}

/// One authentication-failure event per source address per this long.
pub const AUTH_NOTE_EVERY_MS: u64 = 60_000;

impl Notes {
    /// An authentication failure from `from`: the first of a minute is recorded at once, the
    /// others of that minute counted into the next one's summary.
    pub(crate) fn auth_failed(&self, node: &Arc<Node>, from: &str, path: &str, now_ms: u64) {
        let summary = {
            let mut m = self.auth.lock().unwrap_or_else(|p| p.into_inner());
            // Forget sources quiet for a minute (bounded memory under a scan).
            m.retain(|_, (since, n)| now_ms.saturating_sub(*since) < AUTH_NOTE_EVERY_MS || *n > 0);
            let e = m.entry(from.to_string()).or_insert((0, 0));
            if e.0 != 0 && now_ms.saturating_sub(e.0) < AUTH_NOTE_EVERY_MS {
                e.1 += 1;
                return;
            }
            let more = std::mem::take(&mut e.1);
            e.0 = now_ms;
            if more > 0 {
                format!("authentication failed from {from} ({path}), and {more} more time(s) in the minute before")
            } else {
                format!("authentication failed from {from} ({path})")
            }
        };
        tracing::warn!(%from, %path, "API request with a missing or wrong token");
        note(node, EventKind::AuthFailed, node.name.clone(), summary, now_ms);
    }
}

/// How long a note is retried while the cluster group cannot commit it (no leader yet, a
/// leader change, no quorum).
const NOTE_TRIES_FOR: Duration = Duration::from_secs(30);

/// Commit a note in the background (no caller waits for it): see [`commit_note`].
pub(crate) fn note(node: &Arc<Node>, kind: EventKind, about: String, summary: String, at_ms: u64) {
    let n = Note {
        kind,
        node: about,
        summary,
        at_ms,
    };
    let node2 = node.clone();
    node.spawn(async move { commit_note(&node2, n).await });
}

/// Commit a note, tried again every 200 ms for [`NOTE_TRIES_FOR`] while the cluster group
/// cannot commit it, then given up with a warning. (Tried once, the first session-store
/// leader's note, made before a new cluster had committed its config, was lost in one start in
/// five.) A note committed whose answer was lost may be there twice: at least once, as alerts.
pub(crate) async fn commit_note(node: &Node, n: Note) {
    let deadline = tokio::time::Instant::now() + NOTE_TRIES_FOR;
    loop {
        match node.write(Command::Note(n.clone())).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(error = %e, kind = n.kind.as_str(), summary = %n.summary, "an event note was not committed");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "an event note is not committed yet"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often the leader evaluates the burn rates (the table's shortest window is 5 minutes).
pub const BURN_EVERY: Duration = Duration::from_secs(15);

/// On the leader, with `[cluster] slo`: every [`BURN_EVERY`], the availability report of the
/// last 3 days from the replicated history (`phalanx_core::availability`), and a `slo_burn` note
/// when a resource's row of the SRE table starts firing, `slo_burn_ended` when it stops; the
/// alert hooks deliver them (kind `availability`). What fires is kept in memory: a new leader
/// notes the rows firing when it takes over once more (at least once, like alerts).
pub async fn watch_burn(node: Arc<Node>) {
    use phalanx_core::availability;
    let mut firing: BTreeSet<availability::BurnKey> = BTreeSet::new();
    let mut tick = tokio::time::interval(BURN_EVERY);
    loop {
        tick.tick().await;
        let config = node.config();
        let Some(slo) = config.cluster.slo().filter(|_| node.is_leader()) else {
            firing.clear();
            continue;
        };
        let now = crate::mesh::unix_ms();
        let events: Vec<Event> = node.with_state(|sm| sm.events.since(0).cloned().collect());
        let options = availability::Options {
            from_ms: now.saturating_sub(availability::BURN_LOOKBACK_MS),
            to_ms: now,
            slo: slo / 100.0,
            resource: None,
            parents: availability::parents(&config),
        };
        let report = match availability::report(&events, &options) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot evaluate the error budgets");
                continue;
            }
        };
        let (notes, now_firing) = availability::burn_notes(&firing, &report);
        firing = now_firing;
        for (kind, key, summary) in notes {
            tracing::warn!(kind = kind.as_str(), %summary, "error budget");
            let n = Note {
                kind,
                node: node.name.clone(),
                summary,
                at_ms: now,
            };
            if let Err(e) = node.write(Command::Note(n)).await {
                // Not recorded: as if the row had not changed, so the next round notes it.
                tracing::info!(error = %e, "an error-budget note is not committed (tried again next round)");
                if kind == EventKind::SloBurn {
                    firing.remove(&key);
                } else {
                    firing.insert(key);
                }
            }
        }
    }
}

/// Watch this node's quorum: when it is lost, remember when; once it is back, commit both
/// (`quorum_lost` with the time it was lost, then `quorum_regained`).
pub async fn watch_quorum(node: Arc<Node>) {
    let mut lost_at: Option<u64> = None;
    let mut had = false;
    let mut tick = tokio::time::interval(node.timings.executor_tick.max(Duration::from_millis(50)));
    loop {
        tick.tick().await;
        let has = node.quorate();
        let now = crate::mesh::unix_ms();
        match (had, has) {
            (true, false) => {
                tracing::warn!("quorum lost (recorded as an event once it is back)");
                lost_at = Some(now);
            }
            (false, true) => {
                if let Some(at) = lost_at.take() {
                    tracing::info!(lost_for_ms = now.saturating_sub(at), "quorum regained");
                    let secs = now.saturating_sub(at) as f64 / 1000.0;
                    let name = node.name.clone();
                    let notes = [
                        (EventKind::QuorumLost, format!("{name} lost quorum"), at),
                        (
                            EventKind::QuorumRegained,
                            format!("{name} regained quorum after {secs:.1} s"),
                            now,
                        ),
                    ];
                    let node2 = node.clone();
                    // In order, one after the other, each retried: quorum is back, but a leader
                    // may not be elected yet.
                    node.spawn(async move {
                        for (kind, summary, at_ms) in notes {
                            let n = Note {
                                kind,
                                node: node2.name.clone(),
                                summary,
                                at_ms,
                            };
                            commit_note(&node2, n).await;
                        }
                    });
                }
            }
            _ => {}
        }
        had = has;
    }
}
