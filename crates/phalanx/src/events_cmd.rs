//! `phalanx events`: the cluster's event history, filtered, as lines for a person or one JSON
//! object per line (`--json`); `--follow` keeps streaming new events (Server-Sent Events from a
//! node) and, when that node goes away, carries on from another node from the last sequence
//! number it printed: no gap, no repeat.

use crate::client::Client;
use anyhow::{anyhow, bail, Result};
use phalanx_node::events::{EventView, Page};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What to show (the command's flags).
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// A sequence number, an RFC 3339 time, or a duration ago (`10m`).
    pub since: Option<String>,
    pub resource: Option<String>,
    pub node: Option<String>,
    pub kind: Option<String>,
    pub limit: Option<usize>,
    pub follow: bool,
}

/// Where to start: a sequence number or a time (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Seq(u64),
    Ms(u64),
}

/// `--since`: `42` (a sequence number), `2026-12-01T10:00:00Z` (a time), `10m` (that long ago).
pub fn parse_since(s: &str, now_ms: u64) -> Result<Since> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Since::Seq(n));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| anyhow!("{s} is before 1970"))?;
        return Ok(Since::Ms(ms.as_millis() as u64));
    }
    match phalanx_core::config::parse_duration(s) {
        Ok(d) => Ok(Since::Ms(now_ms.saturating_sub(d.as_millis() as u64))),
        Err(_) => {
            bail!("--since {s:?}: give a sequence number (42), a time (2026-12-01T10:00:00Z) or a duration ago (10m)")
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The query string of `q` from sequence number `from` (if any).
fn query_string(q: &Query, since: Option<Since>, follow: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    match since {
        Some(Since::Seq(n)) => parts.push(format!("since={n}")),
        Some(Since::Ms(ms)) => parts.push(format!("since_ms={ms}")),
        None => {}
    }
    for (k, v) in [("resource", &q.resource), ("node", &q.node), ("kind", &q.kind)] {
        if let Some(v) = v {
            parts.push(format!("{k}={}", encode(v)));
        }
    }
    if let (Some(l), false) = (q.limit, follow) {
        parts.push(format!("limit={l}"));
    }
    if follow {
        parts.push("follow=1".into());
    }
    format!("/v1/events?{}", parts.join("&"))
}

/// `v` for a query string: unreserved characters as they are, the rest percent-encoded.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One event for a person: `#12 10:00:01.234 n1 node_lost  n1 lost: …`, then its details.
pub fn render(e: &EventView) -> String {
    let time = e.time.get(11..23).unwrap_or(&e.time);
    let mut out = format!(
        "#{:<5} {} {:<8} {:<22} {}",
        e.event.seq,
        time,
        e.event.node,
        e.event.kind.as_str(),
        e.event.summary
    );
    for d in &e.event.details {
        out.push_str("\n        ");
        out.push_str(d);
    }
    out
}

fn print(e: &EventView, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
    } else {
        println!("{}", render(e));
    }
    Ok(())
}

/// Run the command against the first of `apis` that answers (following: each in turn).
pub async fn run(client: &Client, apis: &[String], q: &Query, json: bool) -> Result<i32> {
    let since = q.since.as_deref().map(|s| parse_since(s, now_ms())).transpose()?;
    if !q.follow {
        let (_, page) = first_page(client, apis, &query_string(q, since, false)).await?;
        if page.events.is_empty() && !json {
            if page.first_seq == page.next_seq {
                println!("No events yet.");
            } else {
                println!(
                    "No matching events (the history holds #{} to #{}).",
                    page.first_seq,
                    page.next_seq - 1
                );
            }
        }
        for e in &page.events {
            print(e, json)?;
        }
        return Ok(0);
    }
    // Following: the recent past first (the last 10 unless --since or --limit say), then new
    // events as they come.
    let recent = Query {
        limit: q.limit.or(if since.is_none() { Some(10) } else { None }),
        ..q.clone()
    };
    let (mut at, page) = first_page(client, apis, &query_string(&recent, since, false)).await?;
    for e in &page.events {
        print(e, json)?;
    }
    let mut next = page.next_seq;
    let mut failures = 0u32;
    loop {
        let path = query_string(q, Some(Since::Seq(next)), true);
        match follow_one(client, &apis[at], &path, &mut next, json).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::debug!(api = %apis[at], error = %e, "event stream ended");
                if failures as usize >= apis.len() * 3 {
                    bail!("no node answers any more (last: {e:#})");
                }
            }
        }
        // That node went away (or never answered): the next one, from where we are.
        at = (at + 1) % apis.len();
        if !json {
            eprintln!("(following from {})", apis[at]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn first_page(client: &Client, apis: &[String], path: &str) -> Result<(usize, Page)> {
    let mut last = anyhow!("no API address to ask");
    for (i, a) in apis.iter().enumerate() {
        match client.get::<Page>(a, path).await {
            Ok(p) => return Ok((i, p)),
            Err(e) => {
                if e.downcast_ref::<crate::client::ApiFailure>()
                    .is_some_and(|f| f.status == 400)
                {
                    return Err(e);
                }
                last = e.context(format!("asking {a}"));
            }
        }
    }
    Err(last)
}

/// Follow `api` until its stream ends, printing each event whose number is `next` or later and
/// moving `next` past it.
async fn follow_one(client: &Client, api: &str, path: &str, next: &mut u64, json: bool) -> Result<()> {
    let mut resp = client.stream(api, path).await?;
    let mut buf = String::new();
    let mut frame = SseFrame::default();
    while let Some(chunk) = resp.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(nl) = buf.find('\n') {
            let line: String = buf.drain(..=nl).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if !line.is_empty() {
                frame.push(line);
                continue;
            }
            if std::mem::take(&mut frame.event).as_deref() == Some("gap") {
                eprintln!("warning: some events were dropped from the history before they could be read");
            }
        }
        while let Some(e) = frame.take_ready() {
            if e.event.seq >= *next {
                *next = e.event.seq + 1;
                print(&e, json)?;
            }
        }
    }
    Ok(())
}

/// The lines of one Server-Sent Event as they arrive; a complete `data:` is decoded at once.
#[derive(Default)]
struct SseFrame {
    event: Option<String>,
    ready: Vec<EventView>,
}

impl SseFrame {
    fn push(&mut self, line: &str) {
        if let Some(v) = line.strip_prefix("event:") {
            self.event = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            if self.event.is_none() {
                if let Ok(e) = serde_json::from_str::<EventView>(v.trim_start()) {
                    self.ready.push(e);
                }
            }
        }
    }

    fn take_ready(&mut self) -> Option<EventView> {
        if self.ready.is_empty() {
            None
        } else {
            Some(self.ready.remove(0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_a_number_a_time_or_a_duration_ago() {
        assert_eq!(parse_since("42", 0).unwrap(), Since::Seq(42));
        assert_eq!(
            parse_since("2026-12-01T10:00:00Z", 0).unwrap(),
            Since::Ms(1_796_119_200_000)
        );
        assert_eq!(parse_since("10m", 1_000_000).unwrap(), Since::Ms(400_000));
        let e = parse_since("yesterday", 0).unwrap_err().to_string();
        assert!(e.contains("sequence number"), "{e}");
    }

    #[test]
    fn the_query_names_every_filter() {
        let q = Query {
            resource: Some("web ip".into()),
            node: Some("n1".into()),
            kind: Some("node_lost,fence_failed".into()),
            limit: Some(5),
            ..Query::default()
        };
        assert_eq!(
            query_string(&q, Some(Since::Seq(7)), false),
            "/v1/events?since=7&resource=web%20ip&node=n1&kind=node_lost,fence_failed&limit=5"
        );
        assert_eq!(
            query_string(&q, Some(Since::Seq(9)), true),
            "/v1/events?since=9&resource=web%20ip&node=n1&kind=node_lost,fence_failed&follow=1"
        );
    }
}
