//! `phalanx power-switch`: an HTTP power switch for the lab and the local clusters, like a smart
//! PDU: each outlet powers one test machine, and cutting it leaves that machine dead at once
//! (every process frozen, then killed: none gets a last word out). The built-in `http-switch`
//! fence device speaks its API:
//!
//! - `GET /outlets` → `{"outlets": {"n1": "on", ...}}` (the device monitor);
//! - `GET /outlets/{plug}` → `{"plug": "n1", "state": "on" | "off"}`;
//! - `POST /outlets/{plug}/off | on | reboot` → the same, after acting; 404 for an unknown plug.
//!
//! An outlet is `NAME=pid:FILE` (the process whose pid FILE holds, with every descendant) or
//! `NAME=netns:NS` (every process in network namespace NS; its links keep only the addresses
//! they had when the switch started: a virtual IP dies with the machine, which boots without
//! it). `on` runs the outlet's `--boot NAME=COMMAND`, if given (the machine booting); without
//! one, power returns and nothing starts. With `--events FILE` every action is appended there
//! as `UNIX_MS PLUG ACTION`, after it took effect: the nemesis checks fence order against it.
//!
//! [`machine`] (`phalanx machine -- COMMAND`) is a pid outlet's machine on loopback: it runs
//! the node's daemon and adopts whatever the daemon started once the daemon is gone, so that a
//! daemon killed alone (a crash) leaves its services running on the "machine", as on a real
//! one, and cutting the outlet still takes them all.

use anyhow::{bail, Context, Result};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What an outlet powers.
#[derive(Debug, Clone)]
pub enum Machine {
    Pid(std::path::PathBuf),
    Netns(String),
}

#[derive(Debug, Clone)]
pub struct Outlet {
    pub machine: Machine,
    pub boot: Option<String>,
    /// netns outlets: (link, address/prefix) as at start (what the machine boots with).
    addresses: Vec<(String, String)>,
}

/// Parse `NAME=pid:FILE` or `NAME=netns:NS`.
pub fn parse_outlet(s: &str) -> Result<(String, Machine)> {
    let Some((name, spec)) = s.split_once('=') else {
        bail!("outlet {s:?}: write NAME=pid:FILE or NAME=netns:NS");
    };
    let machine = match spec.split_once(':') {
        Some(("pid", f)) if !f.is_empty() => Machine::Pid(f.into()),
        Some(("netns", ns)) if !ns.is_empty() => Machine::Netns(ns.into()),
        _ => bail!("outlet {s:?}: write NAME=pid:FILE or NAME=netns:NS"),
    };
    Ok((name.to_string(), machine))
}

struct Switch {
    outlets: Mutex<BTreeMap<String, Outlet>>,
    events: Option<std::path::PathBuf>,
}

type Outlets = Arc<Switch>;

/// Serve the switch on `listen` until the process ends.
pub async fn serve(
    listen: &str,
    outlets: Vec<(String, Machine)>,
    boot: BTreeMap<String, String>,
    events: Option<std::path::PathBuf>,
) -> Result<()> {
    let mut map = BTreeMap::new();
    for (name, machine) in outlets {
        let addresses = match &machine {
            Machine::Netns(ns) => own_addresses(ns)?,
            Machine::Pid(_) => Vec::new(),
        };
        let boot = boot.get(&name).cloned();
        map.insert(
            name,
            Outlet {
                machine,
                boot,
                addresses,
            },
        );
    }
    let state: Outlets = Arc::new(Switch {
        outlets: Mutex::new(map),
        events,
    });
    let app = Router::new()
        .route("/outlets", get(list))
        .route("/outlets/{plug}", get(one))
        .route("/outlets/{plug}/{action}", post(act))
        .with_state(state);
    let listener = phalanx_node::transport::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "power switch listening");
    phalanx_node::transport::serve(listener, app).await?;
    Ok(())
}

fn outlets(s: &Outlets) -> std::sync::MutexGuard<'_, BTreeMap<String, Outlet>> {
    s.outlets.lock().unwrap_or_else(|p| p.into_inner())
}

async fn list(State(s): State<Outlets>) -> Response {
    let all: BTreeMap<String, &str> = outlets(&s)
        .iter()
        .map(|(n, o)| (n.clone(), power_word(powered(&o.machine))))
        .collect();
    Json(json!({ "outlets": all })).into_response()
}

async fn one(State(s): State<Outlets>, Path(plug): Path<String>) -> Response {
    let Some(o) = outlets(&s).get(&plug).cloned() else {
        return (StatusCode::NOT_FOUND, format!("no outlet {plug:?}")).into_response();
    };
    Json(json!({ "plug": plug, "state": power_word(powered(&o.machine)) })).into_response()
}

async fn act(State(s): State<Outlets>, Path((plug, action)): Path<(String, String)>) -> Response {
    let Some(o) = outlets(&s).get(&plug).cloned() else {
        return (StatusCode::NOT_FOUND, format!("no outlet {plug:?}")).into_response();
    };
    let result = match action.as_str() {
        "off" => power_off(&o),
        "on" => power_on(&o),
        "reboot" => power_off(&o).and_then(|_| power_on(&o)),
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown action {other:?}: off, on or reboot"),
            )
                .into_response()
        }
    };
    match result {
        Ok(()) => {
            tracing::warn!(%plug, %action, "outlet switched");
            if let Some(path) = &s.events {
                use std::io::Write as _;
                let line = format!("{} {plug} {action}\n", phalanx_node::mesh::unix_ms());
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(line.as_bytes()));
                if let Err(e) = written {
                    tracing::error!(path = %path.display(), error = %e, "writing the event log");
                }
            }
            Json(json!({ "plug": plug, "state": power_word(powered(&o.machine)) })).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{action} {plug}: {e:#}")).into_response(),
    }
}

fn power_word(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// The processes an outlet powers.
fn processes(m: &Machine) -> Vec<i32> {
    match m {
        Machine::Netns(ns) => crate::netns::pids(ns),
        Machine::Pid(f) => {
            let Some(root) = root_of(f) else {
                return Vec::new();
            };
            let mut all = vec![root];
            all.extend(descendants(root));
            all
        }
    }
}

/// The live process whose pid `file` holds.
fn root_of(file: &std::path::Path) -> Option<i32> {
    let root = std::fs::read_to_string(file).ok()?.trim().parse::<i32>().ok()?;
    kill(Pid::from_raw(root), None).is_ok().then_some(root)
}

/// Cut the power to process `root` and every descendant, as to a machine: all are frozen
/// first, so none reacts to another's death, then killed. A process is listed again for
/// children once it is stopped, so a child forked while the tree was being frozen dies with it
/// too: a daemon's service spawned the moment the daemon was hit must not outlive it as an
/// orphan (the demo's harness found one: its own kill left a service running that the daemon
/// had started but not yet written a pid file for). Returns the processes killed.
pub fn cut_power(root: i32) -> Vec<i32> {
    let mut frozen: Vec<i32> = Vec::new();
    let mut next = vec![root];
    while !next.is_empty() {
        for p in &next {
            let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
        }
        for p in &next {
            wait_stopped(*p);
        }
        frozen.extend(next);
        next = descendants(root).into_iter().filter(|p| !frozen.contains(p)).collect();
    }
    for p in &frozen {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    frozen
}

/// Wait until every thread of `pid` is stopped (or gone), for 200 ms at most: a thread that is
/// running or asleep stops only once the kernel delivers the signal, and may fork until then.
/// (One in uninterruptible sleep, on a disk write, stops after it; it forks nothing meanwhile.)
fn wait_stopped(pid: i32) {
    let stopped = |stat: &str| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| matches!(state, 'T' | 't' | 'Z' | 'X' | 'D'))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    loop {
        let all = std::fs::read_dir(format!("/proc/{pid}/task")).map(|tasks| {
            tasks
                .flatten()
                .all(|t| std::fs::read_to_string(t.path().join("stat")).map_or(true, |s| stopped(&s)))
        });
        if all.unwrap_or(true) || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Every descendant of `root`, from /proc (parents before children).
fn descendants(root: i32) -> Vec<i32> {
    let mut parent: BTreeMap<i32, i32> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parens.
            if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
                if let Some(ppid) = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse().ok())
                {
                    parent.insert(pid, ppid);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (child, pp) in &parent {
            if *pp == p {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

fn powered(m: &Machine) -> bool {
    !processes(m).is_empty()
}

/// Freeze everything first (so nothing reacts to its siblings dying), then kill it.
fn power_off(o: &Outlet) -> Result<()> {
    let ns = match &o.machine {
        Machine::Pid(f) => {
            if let Some(root) = root_of(f) {
                cut_power(root);
            }
            return Ok(());
        }
        Machine::Netns(ns) => ns,
    };
    let pids = processes(&o.machine);
    for p in &pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
    }
    for p in &pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    // Its addresses go with it (a VIP it held is gone), its own come back: one `ip -batch`
    // (a spawn costs a few ms, and the fence's duration is part of every failover).
    let devs: std::collections::BTreeSet<&String> = o.addresses.iter().map(|(d, _)| d).collect();
    let mut batch: Vec<String> = devs.iter().map(|dev| format!("addr flush dev {dev}")).collect();
    for (dev, addr) in &o.addresses {
        let nodad = if addr.contains(':') { " nodad" } else { "" };
        batch.push(format!("addr add {addr} dev {dev}{nodad}"));
    }
    ip_batch(ns, &batch)?;
    Ok(())
}

fn power_on(o: &Outlet) -> Result<()> {
    if let Some(cmd) = &o.boot {
        let mut c = match &o.machine {
            Machine::Netns(ns) => crate::netns::command_in(ns, "sh"),
            Machine::Pid(_) => std::process::Command::new("sh"),
        };
        c.arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("booting: {cmd}"))?;
    }
    Ok(())
}

/// Run `command` as a machine (see the module comment): a child subreaper (orphans of its
/// descendants become its children, not init's, so they stay descendants of the outlet's
/// process), the command its child, SIGTERM/SIGINT/SIGHUP passed on to it. It reaps every
/// child; once the command has exited, a signal shuts the machine down (what is left is
/// killed), and it exits when nothing is left, with the command's exit code.
pub async fn machine(command: &[String]) -> Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use tokio::signal::unix::{signal, SignalKind};
    let Some((program, args)) = command.split_first() else {
        bail!("give the command the machine runs: phalanx machine -- COMMAND…");
    };
    nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    // A machine killed outright takes its command along (SIGKILL to it as the machine dies),
    // as a `kill -9` of the node's pid did before there were machines; what the command
    // started is left, as then.
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2),
    // which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let main = Pid::from_raw(child.id() as i32);
    // Reaping is `waitpid(-1)` here, for the command and every adopted orphan alike.
    drop(child);
    let (tx, mut exited) = tokio::sync::oneshot::channel::<i32>();
    let mut reaper = tokio::task::spawn_blocking(move || {
        let mut tx = Some(tx);
        loop {
            let code = match waitpid(None, None) {
                Ok(WaitStatus::Exited(p, c)) if p == main => c,
                Ok(WaitStatus::Signaled(p, sig, _)) if p == main => 128 + sig as i32,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            if let Some(tx) = tx.take() {
                let _ = tx.send(code);
            }
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut code = None;
    loop {
        tokio::select! {
            // The command's code was sent before the reaper ended: take it if not yet taken.
            _ = &mut reaper => return Ok(code.or_else(|| exited.try_recv().ok()).unwrap_or(0)),
            c = &mut exited, if code.is_none() => code = Some(c.unwrap_or(0)),
            _ = term.recv() => pass_on(main, code.is_some(), Signal::SIGTERM),
            _ = int.recv() => pass_on(main, code.is_some(), Signal::SIGINT),
            _ = hup.recv() => pass_on(main, code.is_some(), Signal::SIGHUP),
        }
    }
}

/// A signal to the machine: to its command while that runs, else the machine shuts down
/// (everything it still runs is killed).
fn pass_on(main: Pid, main_gone: bool, sig: Signal) {
    if !main_gone {
        let _ = kill(main, sig);
        return;
    }
    let me = std::process::id() as i32;
    for p in descendants(me) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// Run `lines` as one `ip -n NS -batch -`.
fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.join("\n").as_bytes())?;
        stdin.write_all(b"\n")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -n {ns} -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// (link, address/prefix) of every global address on the namespace's eth* links.
fn own_addresses(ns: &str) -> Result<Vec<(String, String)>> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-o", "addr", "show", "scope", "global"])
        .output()?;
    if !out.status.success() {
        bail!("namespace {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = f.get(1)?.split('@').next()?.to_string();
            let addr = f.get(3)?.to_string();
            dev.starts_with("eth").then_some((dev, addr))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gone, or a zombie waiting for a parent to reap it (init, for an orphan).
    fn dead(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| matches!(state, 'Z' | 'X'))
        })
    }

    #[test]
    fn cutting_the_power_kills_every_process_under_the_root() {
        // A root with a child that has a child of its own, each in its own process group (as
        // the process agent starts services): none may outlive the root as an orphan.
        let mut root = std::process::Command::new("sh")
            .args(["-c", "setsid sh -c 'sleep 60 & wait' & wait"])
            .spawn()
            .unwrap();
        let pid = root.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let comm = |p: &i32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        while !descendants(pid).iter().any(|p| comm(p).trim() == "sleep") {
            assert!(std::time::Instant::now() < deadline, "the tree never formed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let killed = cut_power(pid);
        assert!(
            killed.len() >= 3,
            "the root, the session's shell and its sleep: {killed:?}"
        );
        root.wait().unwrap();
        for p in &killed {
            while !dead(*p) {
                assert!(std::time::Instant::now() < deadline, "{p} outlived the cut");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    #[test]
    fn outlets_parse() {
        assert!(matches!(parse_outlet("n1=pid:/tmp/n1.pid"), Ok((n, Machine::Pid(_))) if n == "n1"));
        assert!(matches!(parse_outlet("n2=netns:px1n2"), Ok((n, Machine::Netns(ns))) if n == "n2" && ns == "px1n2"));
        for bad in ["n1", "n1=pid:", "n1=disk:/x"] {
            assert!(parse_outlet(bad).is_err(), "{bad}");
        }
    }
}
