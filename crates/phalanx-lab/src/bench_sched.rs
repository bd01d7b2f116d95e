//! `phalanx-lab bench scheduler`: the scheduler on generated clusters (N primitives × M nodes, each
//! primitive with a monitor and a location preference, every 10th colocated with the one before,
//! nothing running yet, so everything must be placed), timed beside Pacemaker's
//! `crm_simulate -x CIB -R -Q` on an equivalent generated CIB, in the same run. A benchmark, not a
//! test: it prints figures and asserts nothing.

use anyhow::{Context, Result};
use phalanx_core::scheduler::{schedule, Input};
use serde::Serialize;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const CRM_SIMULATE: &str = "/usr/sbin/crm_simulate";

#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    pub primitives: usize,
    pub nodes: usize,
    /// Median of the runs, in ms.
    pub phalanx_ms: f64,
    pub phalanx_min_ms: f64,
    pub actions: usize,
    pub crm_simulate_ms: Option<f64>,
    /// Why crm_simulate has no figure (not installed, over the bound, failed).
    pub crm_note: Option<String>,
    /// crm_simulate time ÷ phalanx time (how many times faster phalanx is).
    pub speedup: Option<f64>,
}

pub struct Args {
    pub sizes: Vec<usize>,
    pub nodes: usize,
    pub runs: usize,
    pub crm_bound: Duration,
}

pub fn config_text(n: usize, nodes: usize) -> String {
    let mut s = String::from("[cluster]\nname = \"bench\"\nfencing = \"off\"\n");
    for i in 1..=nodes {
        let _ = write!(
            s,
            "[[node]]\nname = \"n{i}\"\nlinks = [\"127.0.{}.{}:7400\"]\napi = \"127.0.{}.{}:7480\"\n",
            i / 250,
            i % 250 + 1,
            i / 250,
            i % 250 + 1
        );
    }
    for i in 1..=n {
        let _ = write!(s, "[[resource]]\nid = \"r{i}\"\nagent = \"ocf:heartbeat:Dummy\"\nmonitor = {{ interval = \"10s\", timeout = \"20s\" }}\n");
        let _ = write!(
            s,
            "[[constraint]]\nlocation = \"r{i}\"\nnode = \"n{}\"\nscore = 100\n",
            i % nodes + 1
        );
        if i % 10 == 0 && i > 1 {
            let _ = write!(s, "[[constraint]]\ncolocate = \"r{i}\"\nwith = \"r{}\"\n", i - 1);
        }
    }
    s
}

pub fn cib_xml(n: usize, nodes: usize) -> String {
    let mut s = String::from(
        "<cib crm_feature_set=\"3.16.2\" validate-with=\"pacemaker-3.9\" epoch=\"1\" num_updates=\"0\" admin_epoch=\"0\">\n<configuration>\n<crm_config><cluster_property_set id=\"opts\"><nvpair id=\"o1\" name=\"stonith-enabled\" value=\"false\"/></cluster_property_set></crm_config>\n<nodes>\n",
    );
    for i in 1..=nodes {
        let _ = writeln!(s, "<node id=\"{i}\" uname=\"n{i}\"/>");
    }
    s += "</nodes>\n<resources>\n";
    for i in 1..=n {
        let _ = writeln!(
            s,
            "<primitive id=\"r{i}\" class=\"ocf\" provider=\"heartbeat\" type=\"Dummy\"><operations><op id=\"r{i}-mon\" name=\"monitor\" interval=\"10s\" timeout=\"20s\"/></operations></primitive>"
        );
    }
    s += "</resources>\n<constraints>\n";
    for i in 1..=n {
        let _ = writeln!(
            s,
            "<rsc_location id=\"l{i}\" rsc=\"r{i}\" node=\"n{}\" score=\"100\"/>",
            i % nodes + 1
        );
        if i % 10 == 0 && i > 1 {
            let _ = writeln!(
                s,
                "<rsc_colocation id=\"c{i}\" rsc=\"r{i}\" with-rsc=\"r{}\" score=\"INFINITY\"/>",
                i - 1
            );
        }
    }
    s += "</constraints>\n</configuration>\n<status>\n";
    for i in 1..=nodes {
        let _ = writeln!(s, "<node_state id=\"{i}\" uname=\"n{i}\" in_ccm=\"true\" crmd=\"online\" join=\"member\" expected=\"member\"/>");
    }
    s += "</status>\n</cib>\n";
    s
}

fn crm_simulate(cib: &str, bound: Duration) -> (Option<f64>, Option<String>) {
    if !std::path::Path::new(CRM_SIMULATE).exists() {
        return (
            None,
            Some(format!("{CRM_SIMULATE} not found: apt-get install pacemaker-cli-utils")),
        );
    }
    let dir = std::env::temp_dir().join(format!("phalanx-crm-{}-{}", std::process::id(), rand::random::<u32>()));
    if std::fs::create_dir_all(&dir).is_err() {
        return (None, Some("cannot create a scratch folder".into()));
    }
    let path = dir.join("cib.xml");
    let result = (|| {
        std::fs::write(&path, cib).ok()?;
        let t0 = Instant::now();
        let mut child = Command::new(CRM_SIMULATE)
            .arg("-x")
            .arg(&path)
            .args(["-R", "-Q"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let ms = t0.elapsed().as_secs_f64() * 1000.0;
                    return Some(if status.success() {
                        (Some(ms), None)
                    } else {
                        (None, Some(format!("crm_simulate failed: {status}")))
                    });
                }
                Ok(None) if t0.elapsed() > bound => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Some((None, Some(format!("did not finish within {bound:?} (killed)"))));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Some((None, Some(e.to_string()))),
            }
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap_or((None, Some("could not run crm_simulate".into())))
}

pub fn run(args: &Args, progress: &dyn Fn(&str)) -> Result<Vec<SizeResult>> {
    let mut out = Vec::new();
    for &n in &args.sizes {
        progress(&format!("{n} primitives × {} nodes: phalanx", args.nodes));
        let cfg = phalanx_core::config::parse(&config_text(n, args.nodes))
            .map_err(|e| anyhow::anyhow!("{}", e.render("generated")))
            .context("the generated config")?;
        let input = Input::default();
        let mut times = Vec::new();
        let mut actions = 0;
        for _ in 0..args.runs.max(1) {
            let t0 = Instant::now();
            let plan = schedule(&cfg, &input);
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            actions = plan.actions.len();
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        progress(&format!(
            "{n} primitives × {} nodes: crm_simulate (bound {:?})",
            args.nodes, args.crm_bound
        ));
        let (crm, note) = crm_simulate(&cib_xml(n, args.nodes), args.crm_bound);
        out.push(SizeResult {
            primitives: n,
            nodes: args.nodes,
            phalanx_ms: median,
            phalanx_min_ms: times[0],
            actions,
            speedup: crm.map(|c| c / median.max(1e-6)),
            crm_simulate_ms: crm,
            crm_note: note,
        });
    }
    Ok(out)
}

pub fn render(r: &[SizeResult]) -> String {
    let mut o = String::from(
        "primitives × nodes | phalanx ms (median, min) | actions | crm_simulate ms | crm_simulate ÷ phalanx\n",
    );
    for x in r {
        let crm = x
            .crm_simulate_ms
            .map(|c| format!("{c:.0}"))
            .unwrap_or_else(|| x.crm_note.clone().unwrap_or_default());
        let sp = x.speedup.map(|s| format!("{s:.0}×")).unwrap_or_else(|| "-".into());
        o += &format!(
            "{:>6} × {:<3}       | {:>8.2} ({:.2})          | {:>7} | {crm} | {sp}\n",
            x.primitives, x.nodes, x.phalanx_ms, x.phalanx_min_ms, x.actions
        );
    }
    o
}
