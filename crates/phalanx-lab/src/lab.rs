//! The network-namespace lab (`tests/lab/README.md`): real network stacks as test hosts. A
//! switch namespace holds one bridge per link; each node namespace has one veth per link
//! (`eth0`, `eth1`, ...: 10.77.LINK.NODE/24) plugged into that link's bridge; a client namespace
//! sits on link 0 (10.77.0.250). Addresses exist only inside these namespaces; interfaces are
//! created directly in them, so the root namespace's are never touched. Names carry a per-run
//! prefix, and dropping the lab kills what runs inside and deletes it all, also when a test
//! fails or panics. Fault primitives: crash (freeze, kill, links down), cut one link,
//! partitions (also one-way) and random loss (nftables bridge rules in the switch namespace),
//! pause and resume. Setup shells out to `ip` (test tooling; the product's `vip` agent uses netlink).

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use phalanx::harness::{LocalCluster, Spec};
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

    /// A veth from `ns` (named `dev` there, with `addrs`, IPv6 ones without DAD) to link `l`'s
    /// bridge.
    fn plug(&self, ns: &str, tag: &str, dev: &str, addrs: [String; 2], l: usize) -> Result<()> {
        let sw = self.switch_ns();
        let (a, b) = (format!("{}{tag}", self.prefix), format!("{}{tag}s", self.prefix));
        ip(&[
            "link", "add", &a, "netns", ns, "type", "veth", "peer", "name", &b, "netns", &sw,
        ])?;
        ip(&["-n", ns, "link", "set", &a, "name", dev])?;
        ip(&["-n", ns, "addr", "add", &addrs[0], "dev", dev])?;
        ip(&["-n", ns, "addr", "add", &addrs[1], "dev", dev, "nodad"])?;
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
                self.plug(&ns, &format!("n{i}l{l}"), &format!("eth{l}"), self.own_addrs(i, l), l)?;
            }
        }
        let c = self.client_ns();
        self.add_ns(&c)?;
        let addrs = [format!("{}/24", Lab::client_ip()), format!("{}/64", Lab::client_ip6())];
        self.plug(&c, "c", "eth0", addrs, 0)
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

    /// IPv6: fd00:77:LINK::NODE/64 beside every IPv4 address (the client: fd00:77::250).
    pub fn node_ip6(&self, i: usize, link: usize) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0xfd00, 0x77, link as u16, 0, 0, 0, 0, i as u16)
    }

    pub fn client_ip6() -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x250)
    }

    /// Node `i`'s own addresses on link `l` (IPv4 /24, IPv6 /64).
    fn own_addrs(&self, i: usize, l: usize) -> [String; 2] {
        [
            format!("{}/24", self.node_ip(i, l)),
            format!("{}/64", self.node_ip6(i, l)),
        ]
    }

    fn signal_all(ns: &str, sig: Signal) {
        for p in phalanx::netns::pids(ns) {
            let _ = kill(Pid::from_raw(p), sig);
        }
    }

    /// A dead machine answers nothing and holds nothing: freeze every process of node `i` (so
    /// none gets a last word out, as a dying keepalived's priority-0 advert would), kill them,
    /// unplug its links, and drop every address but its own (a VIP dies with the machine; it
    /// boots without it). `revive` plugs it back in.
    pub fn crash(&self, i: usize) -> Result<()> {
        let ns = self.node_ns(i);
        Lab::signal_all(&ns, Signal::SIGSTOP);
        Lab::signal_all(&ns, Signal::SIGKILL);
        for l in 0..self.links {
            self.cut_link(i, l)?;
            let dev = format!("eth{l}");
            ip(&["-n", &ns, "addr", "flush", "dev", &dev])?;
            let [v4, v6] = self.own_addrs(i, l);
            ip(&["-n", &ns, "addr", "add", &v4, "dev", &dev])?;
            ip(&["-n", &ns, "addr", "add", &v6, "dev", &dev, "nodad"])?;
        }
        Ok(())
    }

    /// Plug a crashed node's links back in (then start its processes again).
    pub fn revive(&self, i: usize) -> Result<()> {
        (0..self.links).try_for_each(|l| self.heal_link(i, l))
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

    /// Switch port of node `i`'s link `l` (its veth end in the switch namespace).
    fn port(&self, i: usize, l: usize) -> String {
        format!("{}n{i}l{l}s", self.prefix)
    }

    /// Run an nft script in the switch namespace (bridge family: it filters bridged frames).
    fn nft(&self, script: &str) -> Result<()> {
        use std::io::Write as _;
        let mut child = phalanx::netns::command_in(&self.switch_ns(), "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (nftables)")?;
        child
            .stdin
            .take()
            .context("nft's stdin")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// The switch's filter table (created on first use).
    fn filter(&self, rules: &[String]) -> Result<()> {
        let mut script = String::from(
            "table bridge lab {\n  chain forward { type filter hook forward priority 0; policy accept; }\n}\n",
        );
        for r in rules {
            script += &format!("add rule bridge lab forward {r}\n");
        }
        self.nft(&script)
    }

    /// Partition: frames from nodes `from` to nodes `to` are dropped at the switch, on every link;
    /// both ways unless `one_way` (then `to` still reaches `from`: an asymmetric link).
    pub fn partition(&self, from: &[usize], to: &[usize], one_way: bool) -> Result<()> {
        let set = |nodes: &[usize], l: usize| {
            let ports: Vec<String> = nodes.iter().map(|i| format!("\"{}\"", self.port(*i, l))).collect();
            format!("{{ {} }}", ports.join(", "))
        };
        let mut rules = Vec::new();
        for l in 0..self.links {
            rules.push(format!("iifname {} oifname {} drop", set(from, l), set(to, l)));
            if !one_way {
                rules.push(format!("iifname {} oifname {} drop", set(to, l), set(from, l)));
            }
        }
        self.filter(&rules)
    }

    /// Drop TCP between node `client`'s side and port `port` on node `server`, both ways, on
    /// every link (one service's traffic cut while heartbeats flow: a stalled replication
    /// stream, say).
    pub fn block_tcp(&self, client: usize, server: usize, port: u16) -> Result<()> {
        let mut rules = Vec::new();
        for l in 0..self.links {
            let (c, s) = (self.port(client, l), self.port(server, l));
            rules.push(format!("iifname \"{c}\" oifname \"{s}\" tcp dport {port} drop"));
            rules.push(format!("iifname \"{s}\" oifname \"{c}\" tcp sport {port} drop"));
        }
        self.filter(&rules)
    }

    /// Random loss of `percent` % of the frames to and from node `i` on link `l` (nft `numgen`:
    /// this kernel has no netem).
    pub fn loss(&self, i: usize, l: usize, percent: u8) -> Result<()> {
        let port = self.port(i, l);
        let p = percent.min(100);
        self.filter(&[
            format!("iifname \"{port}\" numgen random mod 100 < {p} drop"),
            format!("oifname \"{port}\" numgen random mod 100 < {p} drop"),
        ])
    }

    /// Remove every partition and loss rule.
    pub fn heal_network(&self) -> Result<()> {
        self.nft("table bridge lab {\n  chain forward { type filter hook forward priority 0; policy accept; }\n}\nflush chain bridge lab forward\n")
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

/// The chassis-control hook of a lab BMC (`ipmi_sim` calls it for power get/set): powering off
/// crashes the lab node like `Lab::crash` (every process frozen, then killed, the VIP gone);
/// powering on does nothing (the harness restarts the node). It must return quickly: ipmi_sim
/// answers nothing while it runs. Power state lives in `$DIR/power`; every action is logged to
/// `$DIR/hook.log`.
const CHASSIS_HOOK: &str = r#"#!/bin/sh
DIR=$(dirname "$0"); NS=$(cat "$DIR/netns"); VIP=$(cat "$DIR/vip")
mc=$1; op=$2; shift 2
case $op in
get) for p in "$@"; do case $p in power) echo "power:$(cat "$DIR/power" 2>/dev/null || echo 1)";; boot) echo "boot:default";; *) exit 1;; esac; done;;
set) while [ $# -ge 2 ]; do p=$1; v=$2; shift 2
       case $p in
       power) [ "$v" = 0 ] || v=1
              [ "$(cat "$DIR/power" 2>/dev/null || echo 1)" = "$v" ] && continue
              echo "$(date +%s%3N) power $v" >>"$DIR/hook.log"
              if [ "$v" = 0 ]; then
                for p in $(ip netns pids "$NS"); do kill -STOP "$p"; done
                for p in $(ip netns pids "$NS"); do kill -KILL "$p"; done
                ip -n "$NS" addr del "$VIP/24" dev eth0 2>/dev/null
              fi
              echo "$v" >"$DIR/power";;
       reset|boot|shutdown|identify) ;;
       *) exit 1;;
       esac
     done;;
*) exit 1;;
esac
exit 0
"#;

/// Start an emulated BMC for lab node `i` (Debian's `ipmi_sim`, IPMI over LAN on the client's
/// address, UDP port `9600 + i`, user admin, password in `DIR/password`) whose power-off
/// crashes that node. Real fencing over a real protocol: `fence_ipmilan` talks to it.
pub fn start_bmc(lab: &Lab, i: usize, dir: &std::path::Path) -> Result<std::process::Child> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir.join("state"))?;
    let hook = dir.join("chassis.sh");
    std::fs::write(&hook, CHASSIS_HOOK)?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(dir.join("netns"), lab.node_ns(i))?;
    std::fs::write(dir.join("vip"), VIP)?;
    std::fs::write(dir.join("power"), "1")?;
    std::fs::write(dir.join("password"), "lab-bmc-secret")?;
    // A secret file the daemons refuse unless only its owner may read it.
    std::fs::set_permissions(
        dir.join("password"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let auths = "none md2 md5 straight";
    std::fs::write(
        dir.join("lan.conf"),
        format!(
            "name \"bmc-n{i}\"\nset_working_mc 0x20\n  startlan 1\n    addr {} {}\n    priv_limit admin\n    \
             allowed_auths_callback {auths}\n    allowed_auths_user {auths}\n    allowed_auths_operator {auths}\n    \
             allowed_auths_admin {auths}\n    guid a123456789abcdefa123456789abcde{i}\n  endlan\n  \
             chassis_control \"{} 0x20\"\n  user 2 true \"admin\" \"lab-bmc-secret\" admin 10 {auths}\n",
            Lab::client_ip(),
            9600 + i,
            hook.display()
        ),
    )?;
    std::fs::write(
        dir.join("bmc.emu"),
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n",
    )?;
    let log = std::fs::File::create(dir.join("ipmi_sim.log"))?;
    // -n: no console on stdio (it is detached); -p: no persistence; -s: its state folder.
    phalanx::netns::command_in(&lab.client_ns(), "ipmi_sim")
        .args(["-n", "-p", "-c"])
        .arg(dir.join("lan.conf"))
        .arg("-f")
        .arg(dir.join("bmc.emu"))
        .arg("-s")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting ipmi_sim (Debian package openipmi)")
}

/// The `[[fence_device]]` and `[[fence_level]]` entries fencing lab nodes 1..=n through their
/// BMCs with `fence_ipmilan` (lanplus, cipher suite 3; the password read from a file).
pub fn bmc_fencing_config(nodes: usize, dirs: &[std::path::PathBuf]) -> String {
    let mut s = String::new();
    for (i, dir) in (1..=nodes).zip(dirs) {
        s += &format!(
            "\n[[fence_device]]\nname = \"ipmi-n{i}\"\nagent = \"fence_ipmilan\"\n\
             params = {{ ip = \"{}\", ipport = \"{}\", username = \"admin\", lanplus = \"1\", cipher = \"3\" }}\n\
             secret_files = {{ password = \"{}\" }}\nhost_map = {{ n{i} = \"n{i}\" }}\ntimeout = \"20s\"\n\
             \n[[fence_level]]\ntarget = \"n{i}\"\nlevel = 1\ndevices = [\"ipmi-n{i}\"]\n",
            Lab::client_ip(),
            9600 + i,
            dir.join("password").display()
        );
    }
    s
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

/// One observation of whether a namespace held an address: the kernel answered `held` at some
/// instant between `asked` and `answered`. Both bounds are kept because a sampler thread can be
/// descheduled between the kernel's answer and reading the clock; stamping one instant would
/// then date an old answer late, and a quick handover could look like an overlap.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub asked: std::time::Instant,
    pub answered: std::time::Instant,
    pub held: bool,
}

/// A namespace's observations, in time order.
pub type Samples = Vec<Sample>;

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
            let asked = std::time::Instant::now();
            let held = rt.block_on(probe.holds(address)).map_err(err)?;
            out.push(Sample {
                asked,
                answered: std::time::Instant::now(),
                held,
            });
            std::thread::sleep(every.saturating_sub(asked.elapsed()));
        }
        Ok(out)
    })
}

/// Moments when two namespaces held the address at once: B held it at some instant of one
/// sample while A's samples from the last one answered before that sample was asked to the
/// first one asked after it was answered all show A holding it. (Comparing single samples would
/// report the lag between two samplers as an overlap.) At most one per ordered pair: see
/// `overlaps` for all.
pub fn double_holders(samples: &[(String, Samples)]) -> Vec<String> {
    let mut out = Vec::new();
    for (a, b, t) in overlaps(samples) {
        let line = format!("{a} and {b} both held it at {t:?}");
        if !out.iter().any(|l: &String| l.starts_with(&format!("{a} and {b} "))) {
            out.push(line);
        }
    }
    out
}

/// Every overlap (A, B, when B's sample was asked), by the rule of `double_holders`; samples
/// are in time order, so A's neighbours are found by binary search (long nemesis runs hold
/// millions of samples).
pub fn overlaps(samples: &[(String, Samples)]) -> Vec<(String, String, std::time::Instant)> {
    let mut out = Vec::new();
    for (b, bs) in samples {
        for (a, as_) in samples {
            if a == b {
                continue;
            }
            for sb in bs.iter().filter(|s| s.held) {
                let Some(first) = as_.partition_point(|s| s.answered <= sb.asked).checked_sub(1) else {
                    continue;
                };
                let last = as_.partition_point(|s| s.asked < sb.answered);
                if last < as_.len() && as_[first..=last].iter().all(|s| s.held) {
                    out.push((a.clone(), b.clone(), sb.asked));
                }
            }
        }
    }
    out
}

/// SIGKILL every process of lab node `i` whose command line contains all of `patterns` (a
/// service dying under its agent); returns how many.
pub fn kill_processes(lab: &Lab, i: usize, patterns: &[&str]) -> usize {
    let mut killed = 0;
    for pid in phalanx::netns::pids(&lab.node_ns(i)) {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if patterns.iter().all(|p| cmd.contains(p)) && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    killed
}

/// Which hosts ran a process, from when (unix ms): one entry per change.
pub type ProcessLog = Vec<(u64, std::collections::BTreeSet<String>)>;

/// The lab hosts running a process whose command line contains every one of `patterns`, as
/// changes over time: (unix ms, hosts). One thread scans /proc every `every` and maps each
/// match to its host by its network namespace. A host counts while its process exists, even
/// frozen: a paused machine still holds what it ran.
pub fn sample_processes(
    hosts: Vec<(String, String)>,
    patterns: Vec<String>,
    every: std::time::Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<ProcessLog>> {
    use std::os::unix::fs::MetadataExt as _;
    std::thread::spawn(move || {
        // Host by namespace inode (`/run/netns/NS` is a bind mount of the namespace).
        let by_inode: std::collections::BTreeMap<u64, String> = hosts
            .iter()
            .filter_map(|(name, ns)| Some((std::fs::metadata(format!("/run/netns/{ns}")).ok()?.ino(), name.clone())))
            .collect();
        let mut out: ProcessLog = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let t = std::time::Instant::now();
            let mut found = std::collections::BTreeSet::new();
            for e in std::fs::read_dir("/proc")?.flatten() {
                let pid = e.file_name();
                if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let dir = e.path();
                let Ok(cmd) = std::fs::read(dir.join("cmdline")) else {
                    continue;
                };
                let cmd = String::from_utf8_lossy(&cmd);
                if !patterns.iter().all(|p| cmd.contains(p.as_str())) {
                    continue;
                }
                let Ok(ns) = std::fs::metadata(dir.join("ns/net")) else {
                    continue;
                };
                if let Some(h) = by_inode.get(&ns.ino()) {
                    found.insert(h.clone());
                }
            }
            if out.last().map(|(_, h)| *h != found).unwrap_or(true) {
                out.push((phalanx_node::mesh::unix_ms(), found));
            }
            std::thread::sleep(every.saturating_sub(t.elapsed()));
        }
        Ok(out)
    })
}

/// When each client probe was sent, and who answered (None: no answer within its timeout).
pub type ClientLog = Vec<(std::time::Instant, Option<String>)>;

/// The lab client, in the client namespace: a new TCP connection to `addr` every 20 ms, an HTTP
/// GET, 100 ms to answer; records who answered, until `stop` is set. Probes overlap: one whose
/// SYN went to a dead holder hangs for its 100 ms while the next ones go out on time, so an
/// outage is measured to 20 ms. (Sequential probes made every outage a multiple of the hanging
/// probe's timeout: 304 or 405 ms for the same failover.)
pub fn client(
    lab: &Lab,
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<ClientLog>> {
    client_in(&lab.client_ns(), addr, stop)
}

/// [`client`], from network namespace `ns` (another lab's client: `tests/lab/pacemaker`'s).
pub fn client_in(
    ns: &str,
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Result<ClientLog>> {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let out = rt.block_on(async move {
            // Each probe's start, and its answer once it has one (None inside: no answer).
            type Pending = Vec<(Instant, Option<Option<String>>)>;
            let log: Arc<Mutex<Pending>> = Arc::default();
            let mut tasks = Vec::new();
            // Once stopped, keep probing until an answer closes the log (bounded), so an outage
            // always has its end in the log.
            let mut stopped_at: Option<(Instant, usize)> = None;
            loop {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let (since, from) = *stopped_at
                        .get_or_insert_with(|| (Instant::now(), log.lock().unwrap_or_else(|p| p.into_inner()).len()));
                    let answered = log.lock().unwrap_or_else(|p| p.into_inner())[from..]
                        .iter()
                        .any(|(_, w)| matches!(w, Some(Some(_))));
                    if answered || since.elapsed() > Duration::from_secs(5) {
                        break;
                    }
                }
                let t = Instant::now();
                let index = {
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    l.push((t, None));
                    l.len() - 1
                };
                let (log2, addr2) = (log.clone(), addr.clone());
                tasks.push(tokio::spawn(async move {
                    let who = phalanx::service::probe(&addr2, Duration::from_millis(100)).await;
                    log2.lock().unwrap_or_else(|p| p.into_inner())[index].1 = Some(who);
                }));
                tokio::time::sleep_until((t + Duration::from_millis(20)).into()).await;
            }
            for t in tasks {
                let _ = t.await;
            }
            let log = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
            log.into_iter().map(|(t, w)| (t, w.flatten())).collect::<ClientLog>()
        });
        Ok(out)
    })
}

/// Client-observed outage after `from`: from the first failed probe at or after it to the first
/// answered probe after that (zero when no probe failed).
pub fn outage(log: &ClientLog, from: std::time::Instant) -> Option<std::time::Duration> {
    let Some(first_fail) = log.iter().find(|(t, w)| *t >= from && w.is_none()).map(|x| x.0) else {
        return log
            .iter()
            .any(|(t, w)| *t >= from && w.is_some())
            .then_some(std::time::Duration::ZERO);
    };
    let back = log.iter().find(|(t, w)| *t > first_fail && w.is_some())?.0;
    Some(back - first_fail)
}

/// Poll `addr` from the client namespace until `node` answers (bounded by `within`).
pub fn wait_answer(lab: &Lab, addr: &str, node: &str, within: std::time::Duration) -> Result<()> {
    let (addr, node) = (addr.to_string(), node.to_string());
    in_netns(&lab.client_ns(), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let deadline = std::time::Instant::now() + within;
        loop {
            let who = rt.block_on(phalanx::service::probe(&addr, std::time::Duration::from_millis(100)));
            if who.as_deref() == Some(node.as_str()) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("{node} never answered on {addr} (last answer: {who:?})");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// Everything watched during a lab run: a sampler of the VIP in every node namespace and the
/// client.
pub struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    samplers: Vec<(String, std::thread::JoinHandle<Result<Samples>>)>,
    client: std::thread::JoinHandle<Result<ClientLog>>,
}

/// What a watch saw.
pub struct Seen {
    pub client: ClientLog,
    /// Moments two nodes held the VIP at once (must be empty).
    pub violations: Vec<String>,
    /// Per node: samples taken and the widest gap between two.
    pub sampling: Vec<(String, usize, std::time::Duration)>,
    /// Every sample, per node (for checks over windows: see `overlaps`).
    pub samples: Vec<(String, Samples)>,
}

impl Watch {
    /// Start watching `vip` (and the client on `vip:port`) in `nodes` (lab node numbers).
    pub fn start(lab: &Lab, nodes: &[usize], vip: std::net::IpAddr, port: u16) -> Watch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let every = std::time::Duration::from_millis(5);
        let samplers = nodes
            .iter()
            .map(|i| {
                (
                    format!("n{i}"),
                    sample_address(&lab.node_ns(*i), vip, every, stop.clone()),
                )
            })
            .collect();
        Watch {
            client: client(lab, format!("{vip}:{port}"), stop.clone()),
            stop,
            samplers,
        }
    }

    pub fn finish(self) -> Result<Seen> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let join = |h: std::thread::JoinHandle<Result<Samples>>| {
            h.join().map_err(|_| anyhow::anyhow!("a sampler panicked"))?
        };
        let samples: Vec<(String, Samples)> = self
            .samplers
            .into_iter()
            .map(|(n, h)| join(h).map(|s| (n, s)))
            .collect::<Result<_>>()?;
        let sampling = samples
            .iter()
            .map(|(n, s)| {
                let widest = s.windows(2).map(|w| w[1].asked - w[0].asked).max().unwrap_or_default();
                (n.clone(), s.len(), widest)
            })
            .collect();
        let client = self
            .client
            .join()
            .map_err(|_| anyhow::anyhow!("the client panicked"))??;
        Ok(Seen {
            client,
            violations: double_holders(&samples),
            sampling,
            samples,
        })
    }
}

/// The lab's service: group `web` = `web-ip` (the vip agent, [`VIP`]/24 on link 0) + `web-svc`
/// (`phalanx demo-service` on port [`PORT`], answering with its node name), with a failback
/// policy and optionally a preferred node.
pub fn web_config(exe: &std::path::Path, failback: &str, prefer: Option<&str>) -> String {
    let exe = exe.display();
    let mut s = format!(
        r#"
[[resource]]
id = "web-ip"
agent = "vip"
params = {{ address = "{VIP}/24" }}
monitor = {{ interval = "1s", timeout = "5s" }}
migration_threshold = 1
failure_timeout = "5s"

[[resource]]
id = "web-svc"
agent = "process"
params = {{ command = "{exe} demo-service --listen 0.0.0.0:{PORT} --name ${{OCF_RESKEY_CRM_meta_on_node}}", check_tcp = "127.0.0.1:{PORT}" }}
monitor = {{ interval = "500ms", timeout = "5s" }}

[[group]]
id = "web"
members = ["web-ip", "web-svc"]
failback = "{failback}"
"#
    );
    if let Some(n) = prefer {
        s += &format!("\n[[constraint]]\nlocation = \"web\"\nnode = \"{n}\"\nscore = 100\n");
    }
    s
}

/// The lab's virtual IP and service port.
pub const VIP: &str = "10.77.0.100";
pub const PORT: u16 = 8080;

/// Where the whole `web` group (or `web6`) runs, if every view agrees and nothing is pending
/// (other resources are not looked at).
pub fn web_node(st: &std::collections::BTreeMap<String, phalanx_node::StatusReport>) -> Option<String> {
    let mut found: Option<String> = None;
    for s in st.values() {
        if s.plan_pending > 0 {
            return None;
        }
        let nodes: Vec<String> = s
            .resources
            .iter()
            .filter(|r| r.parent.as_deref().is_some_and(|p| p.starts_with("web")))
            .map(|r| {
                (r.running.len() == 1)
                    .then(|| r.running.keys().next().cloned())
                    .flatten()
            })
            .collect::<Option<_>>()?;
        let n = nodes.first()?.clone();
        if nodes.iter().any(|x| *x != n) || found.as_ref().is_some_and(|f| *f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// Poll `addr` from the client namespace until anyone answers; returns who (bounded).
pub fn wait_any_answer(lab: &Lab, addr: &str, within: std::time::Duration) -> Result<String> {
    let addr = addr.to_string();
    in_netns(&lab.client_ns(), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(who) = rt.block_on(phalanx::service::probe(&addr, std::time::Duration::from_millis(100))) {
                return Ok(who);
            }
            if std::time::Instant::now() > deadline {
                bail!("nobody answered on {addr}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// Lab tests of one test process take the lab one at a time: three daemons with 100 ms
/// heartbeats per lab, several labs at once on a 2-core machine starve each other into
/// spurious node losses.
pub static ONE_LAB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// For a lab test: [`ONE_LAB`] held and a lab of 3 hosts with 2 links; None, said on stderr,
/// when `PHALANX_NO_LAB` is set.
pub async fn lab_or_skip() -> Option<(tokio::sync::MutexGuard<'static, ()>, Lab)> {
    if std::env::var_os("PHALANX_NO_LAB").is_some() {
        eprintln!("lab test skipped: PHALANX_NO_LAB is set");
        return None;
    }
    let guard = ONE_LAB.lock().await;
    let lab = Lab::create(3, 2).expect("the lab needs root and iproute2 (CI runs as root; PHALANX_NO_LAB=1 skips)");
    Some((guard, lab))
}

/// The usual lab cluster: `nodes` nodes of `exe` with the lab's links, 100 ms heartbeats,
/// `extra_config` appended (what [`cluster_in`] places in the lab).
pub fn spec(lab: &Lab, nodes: usize, exe: &std::path::Path, extra_config: String) -> Spec {
    Spec {
        links: lab.links,
        ..Spec::loopback(nodes, exe.to_path_buf(), extra_config)
    }
}

/// A local cluster inside `lab`: node i runs in its namespace, links on 10.77.LINK.i, the API on
/// 10.77.0.i; the harness reaches the APIs from the lab's client namespace. A lab with one host
/// more than the spec has nodes runs the witness on that last host (10.77.0.N:7600).
pub fn cluster_in(spec: Spec, lab: &Lab) -> Result<LocalCluster> {
    let with_witness = lab.nodes == spec.nodes + 1;
    if (spec.nodes != lab.nodes && !with_witness) || spec.links != lab.links {
        bail!("the spec must match the lab ({} nodes, {} links)", lab.nodes, lab.links);
    }
    let witness = with_witness.then(|| format!("{}:7600", lab.node_ip(lab.nodes, 0)));
    let mut c = LocalCluster::create_with(
        spec,
        |i, l| Ok(format!("{}:7400", lab.node_ip(i, l))),
        |i| Ok(format!("{}:7480", lab.node_ip(i, 0))),
        format!("{}:7500", Lab::client_ip()),
        witness,
    )?;
    c.place_in_namespaces((1..=lab.nodes).map(|i| lab.node_ns(i)).collect(), lab.client_ns());
    Ok(c)
}

/// A started 3-node cluster of `exe` in `lab` (2 links, `heartbeat`, `extra_config`), once
/// every node agrees where `web` runs and it answers on the VIP: the cluster and that node
/// (the benchmarks' common start).
pub async fn web_cluster(
    lab: &Lab,
    exe: &std::path::Path,
    heartbeat: std::time::Duration,
    extra_config: String,
) -> Result<(LocalCluster, String)> {
    let within = std::time::Duration::from_secs(60);
    let mut c = cluster_in(
        Spec {
            heartbeat,
            ..spec(lab, 3, exe, extra_config)
        },
        lab,
    )?;
    c.start_all()?;
    let first = c
        .wait_for(within, "web running", |st| {
            (st.len() == 3).then(|| web_node(st)).flatten()
        })
        .await?;
    wait_answer(lab, &format!("{VIP}:{PORT}"), &first, within)?;
    Ok((c, first))
}

/// The `phalanx` binary the lab runs (daemons, power switch, witness, demo service): `PHALANX_BIN`
/// if set, else the one beside this executable (`target/*/phalanx` next to `phalanx-lab`, or
/// next to the `deps/` folder a test runs from). `cargo build` and `cargo test --workspace` build it.
pub fn phalanx_exe() -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("PHALANX_BIN") {
        return Ok(p.into());
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let mut dir = me.parent();
    while let Some(d) = dir {
        let candidate = d.join("phalanx");
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent();
    }
    bail!(
        "no phalanx binary beside {} (build it: cargo build -p phalanx; or set PHALANX_BIN)",
        me.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_double_holder_check_fires_only_on_a_real_overlap() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Samples taken every 5 ms, each answered 1 ms after it was asked.
        let run = |from: u64, held: &[bool]| -> Samples {
            held.iter()
                .enumerate()
                .map(|(k, h)| Sample {
                    asked: at(from + 5 * k as u64),
                    answered: at(from + 5 * k as u64 + 1),
                    held: *h,
                })
                .collect()
        };
        // n1 holds it until 10 ms, n2 from 12 ms: samplers lag each other, no overlap.
        let handover = vec![
            ("n1".to_string(), run(0, &[true, true, true, false])),
            ("n2".to_string(), run(2, &[false, false, true, true])),
        ];
        assert!(double_holders(&handover).is_empty());
        // n1 still holds it at 15 ms while n2 does at 12: a violation.
        let mut overlap = handover.clone();
        overlap[0].1[3].held = true;
        assert!(!double_holders(&overlap).is_empty());
        // A sampler descheduled after the kernel answered: n1's third answer ("held", asked at
        // 10 ms) is only read at 40 ms, while n2 took over at 12 ms. Not an overlap.
        let mut late = handover.clone();
        late[0].1[2].answered = at(40);
        late[0].1[3] = Sample {
            asked: at(41),
            answered: at(42),
            held: false,
        };
        assert!(double_holders(&late).is_empty());
    }
}
