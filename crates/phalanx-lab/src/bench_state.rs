//! `phalanx-lab bench state-writes`: what one small state write costs as the replicated state
//! grows. For each size, a fresh redb file holds a state machine filled to that size (node
//! attributes of 10 KB, applied in large batches), then N small writes are applied one entry per
//! batch, as a committed write arrives: an attribute set, a probe result and a standby toggle in
//! turn. Each write is timed through `StateMachine::apply` (apply + persist, fsync included). A
//! benchmark, not a test: it prints figures and asserts nothing.

use anyhow::{Context, Result};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use phalanx_core::scheduler::Role;
use phalanx_core::{Command, NewNode};
use phalanx_node::raft::store::{self, StateMachine};
use phalanx_node::raft::{Entry, LogId, Request};
use serde::Serialize;
use std::time::Instant;

/// Bytes of one bulk attribute value.
const BULK_VALUE: usize = 10 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    /// The state's size as a snapshot encodes it, in bytes.
    pub state_bytes: usize,
    pub writes: usize,
    /// Mean, median and 99th percentile of one write, in µs.
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The database file after the writes, in bytes.
    pub file_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub sizes: Vec<SizeResult>,
}

pub struct Args {
    /// State sizes in MB.
    pub sizes_mb: Vec<usize>,
    pub writes: usize,
}

struct Bench {
    sm: StateMachine,
    index: u64,
}

impl Bench {
    async fn apply(&mut self, cmds: Vec<Command>) -> Result<()> {
        let entries: Vec<Entry> = cmds
            .into_iter()
            .map(|c| {
                self.index += 1;
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
                    payload: EntryPayload::Normal(Request(c)),
                }
            })
            .collect();
        self.sm.apply(entries).await.context("applying")?;
        Ok(())
    }
}

fn small_write(i: usize) -> Command {
    match i % 3 {
        0 => Command::SetAttr {
            name: "n1".into(),
            key: format!("k{}", i % 16),
            value: Some(i.to_string()),
        },
        1 => Command::Probe {
            rsc: format!("r{}", i % 32),
            node: format!("n{}", 1 + i % 3),
            role: i.is_multiple_of(2).then_some(Role::Started),
        },
        _ => Command::SetStandby {
            name: "n3".into(),
            standby: i.is_multiple_of(2),
        },
    }
}

async fn one_size(mb: usize, writes: usize, progress: &dyn Fn(&str)) -> Result<SizeResult> {
    let dir = std::env::temp_dir().join(format!("phalanx-bench-state-{}-{mb}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("raft.redb");
    let db = store::open(&path)?;
    let mut b = Bench {
        sm: StateMachine::load(db)?,
        index: 0,
    };
    let nodes = (1..=3)
        .map(|i| NewNode {
            name: format!("n{i}"),
            id: i,
            links: vec![format!("127.0.0.{i}:7400")],
            api: format!("127.0.0.{i}:7480"),
        })
        .collect();
    b.apply(vec![Command::Bootstrap { nodes }]).await?;
    progress(&format!("{mb} MB: filling"));
    let bulk = mb * 1024 * 1024 / BULK_VALUE;
    let value = "x".repeat(BULK_VALUE);
    for chunk in (0..bulk).collect::<Vec<_>>().chunks(200) {
        let cmds = chunk
            .iter()
            .map(|i| Command::SetAttr {
                name: format!("n{}", 2 + i % 2),
                key: format!("bulk-{i}"),
                value: Some(value.clone()),
            })
            .collect();
        b.apply(cmds).await?;
    }
    let state_bytes =
        postcard::to_allocvec(&b.sm.shared().read().map_err(|_| anyhow::anyhow!("poisoned"))?.cluster)?.len();
    let mut us = Vec::with_capacity(writes);
    for i in 0..writes {
        if i.is_multiple_of(500) {
            progress(&format!("{mb} MB: write {i}/{writes}"));
        }
        let t = Instant::now();
        b.apply(vec![small_write(i)]).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
    let mean_us = us.iter().sum::<f64>() / us.len().max(1) as f64;
    us.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        us.get(((us.len() as f64 * p) as usize).min(us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(SizeResult {
        state_bytes,
        writes,
        mean_us,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        file_bytes,
    })
}

pub async fn run(args: &Args, progress: &dyn Fn(&str)) -> Result<Report> {
    let mut sizes = Vec::new();
    for mb in &args.sizes_mb {
        sizes.push(one_size(*mb, args.writes, progress).await?);
    }
    Ok(Report { sizes })
}

pub fn render(r: &Report) -> String {
    let mut s = String::from("state      writes   mean       p50        p99        file\n");
    for z in &r.sizes {
        s.push_str(&format!(
            "{:>6.1} MB  {:>6}  {:>7.0} µs  {:>7.0} µs  {:>7.0} µs  {:>6.1} MB\n",
            z.state_bytes as f64 / 1048576.0,
            z.writes,
            z.mean_us,
            z.p50_us,
            z.p99_us,
            z.file_bytes as f64 / 1048576.0
        ));
    }
    s
}
