//! The network-namespace lab (`tests/lab/README.md`): real network stacks as test hosts. A
//! switch namespace holds one bridge per link; each node namespace has one veth per link
//! (`eth0`, `eth1`, ...: 10.77.LINK.NODE/24) plugged into that link's bridge; a client namespace
//! sits on link 0 (10.77.0.250). Addresses exist only inside these namespaces; interfaces are
//! created directly in them, so the root namespace's are never touched. Names carry a per-run
//! prefix, and dropping the lab kills what runs inside and deletes it all, also when a test
//! fails or panics. Fault primitives: crash (freeze, kill, links down), cut one link, pause and
//! resume. Setup shells out to `ip` (test tooling; the product's `vip` agent uses netlink).

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

pub struct Lab {
    /// Per-run prefix of every namespace and interface name.
    pub prefix: String,
    pub nodes: usize,
    pub links: usize,
    namespaces: Vec<String>,
}

/// Run `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Lab {
    /// Whether this machine can run the lab (root, iproute2).
    pub fn available() -> Result<()> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the lab needs root (network namespaces)");
        }
        ip(&["netns", "list"]).context("iproute2 with netns support")
    }

    pub fn create(nodes: usize, links: usize) -> Result<Lab> {
        Lab::available()?;
        if !(1..=9).contains(&nodes) || !(1..=4).contains(&links) {
            bail!("the lab has 1 to 9 nodes and 1 to 4 links");
        }
        let prefix = format!("px{:04x}", rand::random::<u16>());
        let mut lab = Lab {
            prefix,
            nodes,
            links,
            namespaces: Vec::new(),
        };
        lab.build().with_context(|| format!("building lab {}", lab.prefix))?;
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// A veth from `ns` (named `dev` there, with `addr`) to link `l`'s bridge.
    fn plug(&self, ns: &str, tag: &str, dev: &str, addr: &str, l: usize) -> Result<()> {
        let sw = self.switch_ns();
        let (a, b) = (format!("{}{tag}", self.prefix), format!("{}{tag}s", self.prefix));
        ip(&[
            "link", "add", &a, "netns", ns, "type", "veth", "peer", "name", &b, "netns", &sw,
        ])?;
        ip(&["-n", ns, "link", "set", &a, "name", dev])?;
        ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", &sw, "link", "set", &b, "master", &format!("br{l}")])?;
        ip(&["-n", &sw, "link", "set", &b, "up"])
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.switch_ns();
        self.add_ns(&sw)?;
        for l in 0..self.links {
            let br = format!("br{l}");
            ip(&["-n", &sw, "link", "add", &br, "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", &br, "up"])?;
        }
        for i in 1..=self.nodes {
            let ns = self.node_ns(i);
            self.add_ns(&ns)?;
            for l in 0..self.links {
                let addr = format!("{}/24", self.node_ip(i, l));
                self.plug(&ns, &format!("n{i}l{l}"), &format!("eth{l}"), &addr, l)?;
            }
        }
        let c = self.client_ns();
        self.add_ns(&c)?;
        self.plug(&c, "c", "eth0", &format!("{}/24", Lab::client_ip()), 0)
    }

    pub fn switch_ns(&self) -> String {
        format!("{}sw", self.prefix)
    }

    pub fn node_ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    pub fn client_ns(&self) -> String {
        format!("{}c", self.prefix)
    }

    pub fn node_ip(&self, i: usize, link: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, link as u8, i as u8)
    }

    pub fn client_ip() -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 250)
    }

    /// A command run inside namespace `ns`.
    pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Every process inside namespace `ns`.
    pub fn pids(ns: &str) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn signal_all(ns: &str, sig: Signal) {
        for p in Lab::pids(ns) {
            let _ = kill(Pid::from_raw(p), sig);
        }
    }

    /// A dead machine answers nothing: freeze every process of node `i` (so none gets a last
    /// word out, as a dying keepalived's priority-0 advert would), kill them, take its links down.
    pub fn crash(&self, i: usize) -> Result<()> {
        let ns = self.node_ns(i);
        Lab::signal_all(&ns, Signal::SIGSTOP);
        Lab::signal_all(&ns, Signal::SIGKILL);
        for l in 0..self.links {
            self.cut_link(i, l)?;
        }
        Ok(())
    }

    /// Unplug node `i`'s link `l` at the switch (its side stays up, as with a broken cable).
    pub fn cut_link(&self, i: usize, l: usize) -> Result<()> {
        ip(&[
            "-n",
            &self.switch_ns(),
            "link",
            "set",
            &format!("{}n{i}l{l}s", self.prefix),
            "down",
        ])
    }

    pub fn heal_link(&self, i: usize, l: usize) -> Result<()> {
        ip(&[
            "-n",
            &self.switch_ns(),
            "link",
            "set",
            &format!("{}n{i}l{l}s", self.prefix),
            "up",
        ])
    }

    /// SIGSTOP every process of node `i` (a long GC pause, a stuck VM).
    pub fn pause(&self, i: usize) {
        Lab::signal_all(&self.node_ns(i), Signal::SIGSTOP);
    }

    pub fn resume(&self, i: usize) {
        Lab::signal_all(&self.node_ns(i), Signal::SIGCONT);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            Lab::signal_all(ns, Signal::SIGCONT);
            Lab::signal_all(ns, Signal::SIGKILL);
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Run `f` on a new thread inside namespace `ns` (a thread's network namespace is its own:
/// sockets it opens live there).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {path}"))?;
        f()
    })
}

/// One observation of whether a namespace held an address.
pub type Samples = Vec<(std::time::Instant, bool)>;

/// Sample, every `every`, whether namespace `ns` holds `address`, until `stop` is set.
pub fn sample_address(
    ns: &str,
    address: std::net::IpAddr,
    every: std::time::Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<Samples>> {
    in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let err = |e: phalanx_node::vip::VipError| anyhow::anyhow!("{e}");
        let probe = rt
            .block_on(async { phalanx_node::vip::AddressProbe::new() })
            .map_err(err)?;
        let mut out = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let t = std::time::Instant::now();
            let here = rt.block_on(probe.holds(address)).map_err(err)?;
            out.push((std::time::Instant::now(), here));
            std::thread::sleep(every.saturating_sub(t.elapsed()));
        }
        Ok(out)
    })
}

/// Moments when two namespaces held the address at once: B held it at t while A's samples just
/// before and just after t both show A holding it. (Comparing single samples would report the
/// lag between two samplers as an overlap.) `dead_after` excludes a crashed node's samples
/// from its crash on: a dead machine holds nothing, whatever its frozen namespace still shows.
pub fn double_holders(
    samples: &[(String, Samples)],
    dead_after: &std::collections::BTreeMap<String, std::time::Instant>,
) -> Vec<String> {
    let alive = |name: &str, t: std::time::Instant| dead_after.get(name).map(|d| t < *d).unwrap_or(true);
    let mut out = Vec::new();
    for (b, bs) in samples {
        for (a, as_) in samples {
            if a == b {
                continue;
            }
            for (tb, held) in bs {
                if !*held || !alive(b, *tb) || !alive(a, *tb) {
                    continue;
                }
                let before = as_.iter().rev().find(|(t, _)| t <= tb);
                let after = as_.iter().find(|(t, _)| t >= tb);
                if let (Some((_, true)), Some((ta, true))) = (before, after) {
                    if alive(a, *ta) {
                        out.push(format!("{a} and {b} both held it at {tb:?}"));
                        break;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_double_holder_check_fires_only_on_a_real_overlap() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // n1 holds it until 10 ms, n2 from 12 ms: samplers lag each other, no overlap.
        let handover = vec![
            (
                "n1".to_string(),
                vec![(at(0), true), (at(5), true), (at(10), true), (at(15), false)],
            ),
            (
                "n2".to_string(),
                vec![(at(2), false), (at(7), false), (at(12), true), (at(17), true)],
            ),
        ];
        assert!(double_holders(&handover, &Default::default()).is_empty());
        // n1 still holds it at 15 ms while n2 does at 12: a violation.
        let mut overlap = handover.clone();
        overlap[0].1[3].1 = true;
        assert!(!double_holders(&overlap, &Default::default()).is_empty());
        // ...unless n1 was crashed at 11 ms (a dead machine holds nothing).
        let dead = std::collections::BTreeMap::from([("n1".to_string(), at(11))]);
        assert!(double_holders(&overlap, &dead).is_empty());
    }
}
