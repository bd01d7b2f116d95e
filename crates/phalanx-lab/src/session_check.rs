//! `phalanx-lab session-check`: the session store's linearizability workload, its recorder and
//! its report. N concurrent clients (default 8) over a small key space (default 5 keys) send a
//! seeded mix of get, gets, set, add, cas, incr and delete to memcached-protocol addresses,
//! each operation timed on one monotonic clock from the run's start and recorded with its
//! outcome; an indeterminate one (timeout, lost connection, SERVER_ERROR) is recorded as such
//! and its client reconnects to the next address, round robin. After the run (and whatever ran
//! beside it, see [`run_beside`]: the nemesis hooks in there), one final read per key. Then the
//! history goes to [`crate::linearizability`] and the acknowledged writes are counted.
//!
//! Every written value is distinct (the checker's model of cas uniques relies on it): a
//! client's n-th write is `(id << 32)` in decimal, `id` unique per client and write, so the
//! workload's small incr deltas never walk one written value into another. Keys are fresh per
//! run (seed and a nonce in the name), so each starts absent, as the checker assumes.
//!
//! Lost acknowledged writes (kept simple and sound): for each key, the acknowledged write
//! (STORED, a number from incr, DELETED) that every other write which may have taken effect
//! (acknowledged, or indeterminate) returned before it was called must be what the final read
//! sees: its value, or absence for a delete. A key without such a write counts nothing; the
//! checker's verdict covers the rest.

use crate::linearizability::{self, CheckOptions, Input, Op, Output, Verdict};
use crate::mcclient::{Delete, Incr, McClient, McError, Store};
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What one run does.
#[derive(Debug, Clone)]
pub struct Workload {
    pub addrs: Vec<SocketAddr>,
    pub clients: usize,
    pub keys: usize,
    pub duration: Duration,
    pub seed: u64,
    pub connect_timeout: Duration,
    pub op_timeout: Duration,
    /// How long the final reads may keep retrying (the cluster may still be healing).
    pub final_read_for: Duration,
}

impl Workload {
    pub fn new(addrs: &[SocketAddr], duration: Duration, seed: u64) -> Self {
        Workload {
            addrs: addrs.to_vec(),
            clients: 8,
            keys: 5,
            duration,
            seed,
            connect_timeout: Duration::from_secs(1),
            op_timeout: Duration::from_secs(2),
            final_read_for: Duration::from_secs(15),
        }
    }
}

/// The run's window, handed to whatever runs beside the workload (the nemesis).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Time zero of the history's timestamps.
    pub start: Instant,
    /// When the clients stop starting operations.
    pub end: Instant,
}

/// A recorded run.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub keys: Vec<String>,
    /// Every operation, the final reads included (as the client numbered `clients`).
    pub history: Vec<Op>,
    /// Each key's final read.
    pub final_values: BTreeMap<String, Option<Vec<u8>>>,
    /// When the run began (unix ms): operation times are ns after it.
    pub began_unix_ms: u64,
}

impl Recorded {
    /// The whole history in a file, one operation a line by call time, with the run's
    /// violations first (for a failed run: the nodes' logs tell what happened when).
    pub fn dump(&self, path: &std::path::Path, r: &RunResult) -> std::io::Result<()> {
        use std::fmt::Write as _;
        let mut out = format!("# began at unix ms {}; times are ms after it\n", self.began_unix_ms);
        for v in &r.violations {
            for l in v.to_string().lines() {
                let _ = writeln!(out, "# {l}");
            }
        }
        let mut ops: Vec<&Op> = self.history.iter().collect();
        ops.sort_by_key(|o| o.call);
        for o in ops {
            let _ = writeln!(out, "{o}");
        }
        std::fs::write(path, out)
    }
}

/// A run's verdicts.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub ops: usize,
    pub indeterminate: usize,
    pub acked_writes: usize,
    pub lost_acked_writes: usize,
    pub keys: usize,
    pub violations: Vec<linearizability::Violation>,
    /// Keys the checker could not decide within its budget.
    pub unknown: usize,
    pub checker_ms: u64,
}

/// The summary (`--json`): exactly these fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub runs: usize,
    pub ops: usize,
    pub acked_writes: usize,
    pub lost_acked_writes: usize,
    /// Keys (over all runs) whose history is not linearizable.
    pub linearizability_violations: usize,
    pub checker_ms: u64,
    /// Keys the checker could not decide (not in the JSON: an exit status).
    #[serde(skip)]
    pub unknown: usize,
}

impl Report {
    /// Count one more run.
    pub fn add(&mut self, r: &RunResult) {
        self.runs += 1;
        self.ops += r.ops;
        self.acked_writes += r.acked_writes;
        self.lost_acked_writes += r.lost_acked_writes;
        self.linearizability_violations += r.violations.len();
        self.checker_ms += r.checker_ms;
        self.unknown += r.unknown;
    }
}

/// One run without anything beside it.
pub async fn run(addrs: &[SocketAddr], seconds: f64, seed: u64) -> Result<Recorded> {
    let w = Workload::new(addrs, Duration::from_secs_f64(seconds), seed);
    Ok(run_beside(&w, |_| async {}).await?.0)
}

/// One run with `beside` (e.g. a nemesis) running concurrently from the start; the final
/// reads wait for both the clients and `beside` to finish.
pub async fn run_beside<F, Fut>(w: &Workload, beside: F) -> Result<(Recorded, Fut::Output)>
where
    F: FnOnce(Window) -> Fut,
    Fut: Future,
{
    if w.addrs.is_empty() || w.clients == 0 || w.keys == 0 {
        bail!("session check: needs at least one address, one client and one key");
    }
    if w.clients >= 1 << 10 {
        bail!("session check: at most 1023 clients (the written values encode the client)");
    }
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let keys: Vec<String> = (0..w.keys)
        .map(|k| format!("lin-{:x}-{:x}-{k}", w.seed, nonce))
        .collect();
    let start = Instant::now();
    let began_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let window = Window {
        start,
        end: start + w.duration,
    };
    let mut tasks = Vec::with_capacity(w.clients);
    for id in 0..w.clients {
        let ctx = ClientCtx {
            id,
            w: w.clone(),
            keys: keys.clone(),
            window,
        };
        tasks.push(tokio::spawn(ctx.run()));
    }
    let clients = async {
        let mut history = Vec::new();
        for t in tasks {
            history.extend(t.await.context("a workload client panicked")?);
        }
        anyhow::Ok(history)
    };
    let (history, out) = tokio::join!(clients, beside(window));
    let mut history = history?;
    let mut final_values = BTreeMap::new();
    for key in &keys {
        let v = final_read(w, key, start, &mut history).await?;
        final_values.insert(key.clone(), v);
    }
    Ok((
        Recorded {
            keys,
            history,
            final_values,
            began_unix_ms,
        },
        out,
    ))
}

/// Reads `key` until a definite answer, trying each address in turn, for `final_read_for`.
async fn final_read(w: &Workload, key: &str, start: Instant, history: &mut Vec<Op>) -> Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + w.final_read_for;
    let mut last = String::new();
    for attempt in 0usize.. {
        if Instant::now() >= deadline {
            break;
        }
        let addr = w.addrs[attempt % w.addrs.len()];
        let mut c = match McClient::connect(addr, w.connect_timeout, w.op_timeout).await {
            Ok(c) => c,
            Err(e) => {
                last = e.to_string();
                pause(attempt, deadline).await;
                continue;
            }
        };
        let call = since(start);
        let r = c.get(key).await;
        let mut op = Op {
            client: w.clients,
            key: key.to_string(),
            call,
            ret: None,
            input: Input::Get,
            output: Output::Indeterminate,
        };
        match r {
            Ok(v) => {
                op.ret = Some(since(start));
                op.output = Output::Value(v.clone());
                history.push(op);
                return Ok(v);
            }
            Err(e) => {
                if e.is_indeterminate() {
                    history.push(op);
                }
                last = e.to_string();
                pause(attempt, deadline).await;
            }
        }
    }
    bail!(
        "final read of {key}: no definite answer within {:?} (last: {last})",
        w.final_read_for
    )
}

/// Backoff between reconnects: 10 ms doubling to 200 ms, never past `until`.
async fn pause(attempt: usize, until: Instant) {
    let d = Duration::from_millis(10 << attempt.min(4));
    let now = Instant::now();
    if now < until {
        tokio::time::sleep(d.min(until - now)).await;
    }
}

fn since(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

struct ClientCtx {
    id: usize,
    w: Workload,
    keys: Vec<String>,
    window: Window,
}

impl ClientCtx {
    async fn run(self) -> Vec<Op> {
        let w = &self.w;
        let mut rng = StdRng::seed_from_u64(w.seed ^ (self.id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut addr = self.id % w.addrs.len();
        let mut conn: Option<McClient> = None;
        let mut uniques: HashMap<usize, u64> = HashMap::new();
        let mut writes = 0u64;
        let mut failures = 0usize;
        let mut history = Vec::new();
        while Instant::now() < self.window.end {
            let Some(c) = conn.as_mut() else {
                match McClient::connect(w.addrs[addr], w.connect_timeout, w.op_timeout).await {
                    Ok(c) => {
                        conn = Some(c);
                        failures = 0;
                    }
                    Err(_) => {
                        addr = (addr + 1) % w.addrs.len();
                        pause(failures, self.window.end).await;
                        failures += 1;
                    }
                }
                continue;
            };
            let k = rng.gen_range(0..self.keys.len());
            let key = &self.keys[k];
            let mut value = || {
                writes += 1;
                // id < 2^32: client < 2^10, write count < 2^22 per client and run.
                let id = ((self.id as u64) << 22 | (writes & ((1 << 22) - 1))) + 1;
                (id << 32).to_string().into_bytes()
            };
            let roll = rng.gen_range(0..100u32);
            let input = match roll {
                0..20 => Input::Get,
                20..35 => Input::Gets,
                35..55 => Input::Set(value()),
                55..70 => match uniques.get(&k) {
                    Some(&unique) => Input::Cas { value: value(), unique },
                    None => Input::Gets,
                },
                70..80 => Input::Add(value()),
                80..90 => Input::Incr(rng.gen_range(1..=5)),
                _ => Input::Delete,
            };
            let call = since(self.window.start);
            let r = execute(c, key, &input).await;
            let ret = since(self.window.start);
            let (ret, output) = match r {
                Ok(out) => (Some(ret), out),
                Err(e) if e.is_indeterminate() => {
                    conn = None;
                    addr = (addr + 1) % w.addrs.len();
                    (None, Output::Indeterminate)
                }
                // A definite refusal had no effect: nothing to record.
                Err(_) => {
                    conn = None;
                    addr = (addr + 1) % w.addrs.len();
                    continue;
                }
            };
            if let Output::ValueCas(Some((_, u))) = &output {
                uniques.insert(k, *u);
            }
            history.push(Op {
                client: self.id,
                key: key.clone(),
                call,
                ret,
                input,
                output,
            });
        }
        history
    }
}

async fn execute(c: &mut McClient, key: &str, input: &Input) -> Result<Output, McError> {
    let store = |s: Store| match s {
        Store::Stored => Output::Stored,
        Store::NotStored => Output::NotStored,
        Store::Exists => Output::Exists,
        Store::NotFound => Output::NotFound,
    };
    Ok(match input {
        Input::Get => Output::Value(c.get(key).await?),
        Input::Gets => Output::ValueCas(c.gets(key).await?),
        Input::Set(v) => store(c.set(key, v).await?),
        Input::Add(v) => store(c.add(key, v).await?),
        Input::Cas { value, unique } => store(c.cas(key, value, *unique).await?),
        Input::Incr(d) => match c.incr(key, *d).await? {
            Incr::Value(n) => Output::Number(n),
            Incr::NotFound => Output::NotFound,
            Incr::NonNumeric => Output::NonNumeric,
        },
        Input::Delete => match c.delete(key).await? {
            Delete::Deleted => Output::Deleted,
            Delete::NotFound => Output::NotFound,
        },
    })
}

/// What an acknowledged write leaves behind (`Some(None)`: absence), or `None` for an
/// operation that is not an acknowledged write.
fn acked_effect(op: &Op) -> Option<Option<Vec<u8>>> {
    op.ret?;
    match (&op.input, &op.output) {
        (Input::Set(v) | Input::Add(v) | Input::Cas { value: v, .. }, Output::Stored) => Some(Some(v.clone())),
        (Input::Incr(_), Output::Number(n)) => Some(Some(n.to_string().into_bytes())),
        (Input::Delete, Output::Deleted) => Some(None),
        _ => None,
    }
}

/// (acknowledged writes, lost ones) for one key; `final_value` is its final read.
pub fn lost_acked_writes(ops: &[&Op], final_value: &Option<Vec<u8>>) -> (usize, usize) {
    let may_have_effect =
        |o: &Op| acked_effect(o).is_some() || (o.ret.is_none() && !matches!(o.input, Input::Get | Input::Gets));
    let acked: Vec<&Op> = ops.iter().copied().filter(|o| acked_effect(o).is_some()).collect();
    let Some(last) = acked.iter().copied().max_by_key(|o| o.call) else {
        return (0, 0);
    };
    let after_all = ops
        .iter()
        .filter(|o| !std::ptr::eq(**o, last) && may_have_effect(o))
        .all(|o| o.ret.is_some_and(|r| r < last.call));
    let lost = after_all && acked_effect(last).as_ref() != Some(final_value);
    (acked.len(), usize::from(lost))
}

/// Checks a recorded run (pure; `checker_ms` is left at 0 for the caller to fill in).
pub fn check(rec: &Recorded, opts: CheckOptions) -> Result<RunResult> {
    let r = linearizability::check(&rec.history, opts)?;
    let mut acked_writes = 0;
    let mut lost = 0;
    for key in &rec.keys {
        let ops: Vec<&Op> = rec.history.iter().filter(|o| &o.key == key).collect();
        let fv = rec.final_values.get(key).cloned().unwrap_or(None);
        let (a, l) = lost_acked_writes(&ops, &fv);
        acked_writes += a;
        lost += l;
    }
    Ok(RunResult {
        ops: rec.history.len(),
        indeterminate: rec.history.iter().filter(|o| o.ret.is_none()).count(),
        acked_writes,
        lost_acked_writes: lost,
        keys: r.keys.len(),
        violations: r.violations().cloned().collect(),
        unknown: r
            .keys
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::Unknown { .. }))
            .count(),
        checker_ms: 0,
    })
}

/// Checks a recorded run on a blocking thread and times the checker.
pub async fn check_timed(rec: Recorded) -> Result<RunResult> {
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut r = check(&rec, CheckOptions::default())?;
        r.checker_ms = t.elapsed().as_millis() as u64;
        Ok(r)
    })
    .await
    .context("the checker panicked")?
}

/// `session-check`'s arguments.
#[derive(Debug, Clone)]
pub struct Args {
    pub addrs: Vec<SocketAddr>,
    pub runs: usize,
    pub seconds: f64,
    pub seed: u64,
}

/// Runs `args.runs` runs (run `i` with seed `seed + i`), calling `each` after every run.
pub async fn run_all(args: &Args, each: impl FnMut(usize, &RunResult)) -> Result<Report> {
    run_all_beside(args, |_, _| async {}, each).await
}

/// [`run_all`] with `beside(i, window)` running beside each run `i` (the nemesis: its faults
/// must be healed by the time its future completes; the final reads come after it).
pub async fn run_all_beside<N, Fut>(
    args: &Args,
    mut beside: N,
    mut each: impl FnMut(usize, &RunResult),
) -> Result<Report>
where
    N: FnMut(usize, Window) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut report = Report::default();
    for i in 0..args.runs {
        let w = Workload::new(
            &args.addrs,
            Duration::from_secs_f64(args.seconds),
            args.seed.wrapping_add(i as u64),
        );
        let (rec, ()) = run_beside(&w, |window| beside(i, window)).await?;
        let r = check_timed(rec).await?;
        report.add(&r);
        each(i, &r);
    }
    Ok(report)
}

/// One line per run (and the first violation's explanation).
pub fn render_run(i: usize, seed: u64, r: &RunResult) -> String {
    let verdict = if !r.violations.is_empty() {
        format!("NOT LINEARIZABLE on {} of {} keys", r.violations.len(), r.keys)
    } else if r.unknown > 0 {
        format!("undecided on {} of {} keys (checker budget)", r.unknown, r.keys)
    } else {
        format!("linearizable ({} keys)", r.keys)
    };
    let mut s = format!(
        "run {} (seed {seed}): {} ops ({} indeterminate), {} acked writes, {} lost; {verdict}; checker {} ms\n",
        i + 1,
        r.ops,
        r.indeterminate,
        r.acked_writes,
        r.lost_acked_writes,
        r.checker_ms
    );
    if let Some(v) = r.violations.first() {
        s.push_str(&v.to_string());
    }
    s
}

pub fn render(r: &Report) -> String {
    format!(
        "Summary: {} runs, {} ops, {} acked writes, {} lost acked writes, {} linearizability violations{}, checker {} ms\n",
        r.runs,
        r.ops,
        r.acked_writes,
        r.lost_acked_writes,
        r.linearizability_violations,
        if r.unknown > 0 {
            format!(", {} keys undecided", r.unknown)
        } else {
            String::new()
        },
        r.checker_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(call: u64, ret: Option<u64>, input: Input, output: Output) -> Op {
        Op {
            client: 0,
            key: "k".into(),
            call,
            ret,
            input,
            output,
        }
    }

    #[test]
    fn the_last_acknowledged_write_must_be_what_the_final_read_sees() {
        let a = w(0, Some(10), Input::Set(b"1".to_vec()), Output::Stored);
        let b = w(20, Some(30), Input::Set(b"2".to_vec()), Output::Stored);
        let ops = [&a, &b];
        assert_eq!(lost_acked_writes(&ops, &Some(b"2".to_vec())), (2, 0));
        assert_eq!(lost_acked_writes(&ops, &Some(b"1".to_vec())), (2, 1));
        assert_eq!(lost_acked_writes(&ops, &None), (2, 1));
        // A delete is a write too: its absence is what must survive.
        let d = w(40, Some(50), Input::Delete, Output::Deleted);
        assert_eq!(lost_acked_writes(&[&a, &b, &d], &None), (3, 0));
        assert_eq!(lost_acked_writes(&[&a, &b, &d], &Some(b"2".to_vec())), (3, 1));
    }

    #[test]
    fn a_write_that_may_have_come_later_makes_the_count_abstain() {
        let a = w(0, Some(10), Input::Set(b"1".to_vec()), Output::Stored);
        // Overlapping acknowledged write: either may be last.
        let b = w(5, Some(30), Input::Set(b"2".to_vec()), Output::Stored);
        assert_eq!(lost_acked_writes(&[&a, &b], &Some(b"1".to_vec())), (2, 0));
        // An indeterminate write after it may have landed at any time.
        let c = w(20, None, Input::Incr(1), Output::Indeterminate);
        assert_eq!(lost_acked_writes(&[&a, &c], &Some(b"9".to_vec())), (1, 0));
        // Failed writes and reads change nothing.
        let nf = w(20, Some(25), Input::Add(b"3".to_vec()), Output::NotStored);
        let r = w(20, None, Input::Get, Output::Indeterminate);
        assert_eq!(lost_acked_writes(&[&a, &nf, &r], &None), (1, 1));
        assert_eq!(lost_acked_writes(&[&nf, &r], &None), (0, 0));
    }

    #[test]
    fn the_report_serializes_to_exactly_the_contract_fields() {
        let v = serde_json::to_value(Report {
            unknown: 3,
            ..Report::default()
        })
        .unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "acked_writes",
                "checker_ms",
                "linearizability_violations",
                "lost_acked_writes",
                "ops",
                "runs"
            ]
        );
    }
}
