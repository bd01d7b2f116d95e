//! Agents for real: Debian's resource-agents (`ocf:heartbeat:Dummy`, `ocf:heartbeat:anything`)
//! called as Pacemaker calls them, the `exec` and `process` agents, timeouts that kill the whole
//! process group, bounded output, missing agents and exit reasons. `.ci/run` installs
//! resource-agents; without it these tests fail with a message saying so.

use phalanx_core::ocf::{AgentAction, Verdict};
use phalanx_core::resources::AgentSpec;
use phalanx_node::agents::{AgentCall, CallResult, Runner};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn runner(dir: &Path) -> Runner {
    let r = Runner {
        state_dir: dir.join("state"),
        ..Runner::new("n1")
    };
    assert!(
        r.ocf_root.join("resource.d/heartbeat/Dummy").is_file(),
        "Debian's resource-agents is not installed (apt-get install resource-agents; .ci/run does)"
    );
    r
}

async fn call(
    r: &Runner,
    agent: &AgentSpec,
    params: &BTreeMap<String, String>,
    action: AgentAction,
    timeout_ms: u64,
) -> CallResult {
    r.call(&AgentCall {
        agent,
        instance: "rsc1",
        params,
        meta: &BTreeMap::new(),
        action,
        timeout: Duration::from_millis(timeout_ms),
        interval: None,
    })
    .await
}

fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn ocf(kind: &str) -> AgentSpec {
    AgentSpec::Ocf {
        provider: "heartbeat".into(),
        kind: kind.into(),
    }
}

#[tokio::test]
async fn dummy_start_monitor_stop_as_pacemaker_calls_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path());
    let state = dir.path().join("dummy.state");
    let p = params(&[("state", state.to_str().unwrap())]);
    let dummy = ocf("Dummy");
    let probe = call(&r, &dummy, &p, AgentAction::Monitor, 20_000).await;
    assert_eq!(probe.verdict, Verdict::NotRunning, "{probe:?}");
    let start = call(&r, &dummy, &p, AgentAction::Start, 20_000).await;
    assert!(start.succeeded(), "{start:?}");
    assert!(state.exists(), "Dummy keeps its state in OCF_RESKEY_state");
    let mon = call(&r, &dummy, &p, AgentAction::Monitor, 20_000).await;
    assert_eq!(mon.verdict, Verdict::Ok, "{mon:?}");
    let stop = call(&r, &dummy, &p, AgentAction::Stop, 20_000).await;
    assert!(stop.succeeded(), "{stop:?}");
    let after = call(&r, &dummy, &p, AgentAction::Monitor, 20_000).await;
    assert_eq!(after.verdict, Verdict::NotRunning);
    let meta = call(&r, &dummy, &p, AgentAction::MetaData, 20_000).await;
    assert!(meta.succeeded() && meta.stdout.contains("<resource-agent"), "{meta:?}");
}

#[tokio::test]
async fn anything_wraps_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path());
    let port = free_port();
    let pidfile = dir.path().join("anything.pid");
    let p = params(&[
        ("binfile", "/usr/bin/python3"),
        (
            "cmdline_options",
            &format!(
                "-m http.server {port} --bind 127.0.0.1 --directory {}",
                dir.path().display()
            ),
        ),
        ("pidfile", pidfile.to_str().unwrap()),
        ("logfile", dir.path().join("anything.log").to_str().unwrap()),
    ]);
    let anything = ocf("anything");
    let start = call(&r, &anything, &p, AgentAction::Start, 20_000).await;
    assert!(start.succeeded(), "{start:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the wrapped server never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        call(&r, &anything, &p, AgentAction::Monitor, 20_000).await.verdict,
        Verdict::Ok
    );
    assert!(call(&r, &anything, &p, AgentAction::Stop, 20_000).await.succeeded());
    assert_eq!(
        call(&r, &anything, &p, AgentAction::Monitor, 20_000).await.verdict,
        Verdict::NotRunning
    );
}

#[tokio::test]
async fn a_missing_agent_is_a_hard_error_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path());
    let res = call(&r, &ocf("NoSuchAgent"), &BTreeMap::new(), AgentAction::Start, 1_000).await;
    assert_eq!(res.verdict, Verdict::HardError);
    assert!(res.exit_reason.unwrap().contains("not installed"));
    // and stopping it is "not running", so a missing agent never blocks recovery elsewhere
    let stop = call(&r, &ocf("NoSuchAgent"), &BTreeMap::new(), AgentAction::Stop, 1_000).await;
    assert!(stop.succeeded(), "{stop:?}");
}

#[tokio::test]
async fn a_hanging_agent_is_killed_with_its_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path());
    let child_pid = dir.path().join("child.pid");
    let p = params(&[(
        "start",
        &format!("sleep 60 & echo $! > {}; sleep 60", child_pid.display()),
    )]);
    // A timeout the shell reaches its `sleep` within even on a loaded machine (with 300 ms, a
    // busy CI run once killed the shell before it had written the child's pid).
    let t0 = Instant::now();
    let res = call(&r, &AgentSpec::Exec, &p, AgentAction::Start, 2_000).await;
    assert_eq!(res.verdict, Verdict::Timeout, "{res:?}");
    assert!(res.timed_out && !res.succeeded());
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the call must end at its timeout, not when the agent does (60 s)"
    );
    let pid: i32 = std::fs::read_to_string(&child_pid)
        .expect("the agent wrote its child's pid before its timeout")
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Gone, or a zombie of its dead parent awaiting init.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let dead = state
            .map(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
                    .unwrap_or(true)
            })
            .unwrap_or(true);
        if dead {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's background child {pid} survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn output_is_bounded_and_exit_reasons_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let r = Runner {
        output_limit: 1000,
        ..runner(dir.path())
    };
    let flood = params(&[("start", "head -c 5000000 /dev/zero | tr '\\0' x; exit 0")]);
    let res = call(&r, &AgentSpec::Exec, &flood, AgentAction::Start, 20_000).await;
    assert!(res.succeeded(), "{:?}", res.exit_reason);
    assert!(
        res.stdout.len() < 2000 && res.stdout.contains("more bytes dropped"),
        "{}",
        res.stdout.len()
    );
    let fatal = params(&[(
        "start",
        "echo 'ocf-exit-reason:config file /etc/x is missing' >&2; exit 6",
    )]);
    let res = call(&r, &AgentSpec::Exec, &fatal, AgentAction::Start, 20_000).await;
    assert_eq!(res.verdict, Verdict::Fatal);
    assert_eq!(res.exit_reason.as_deref(), Some("config file /etc/x is missing"));
}

#[tokio::test]
async fn exec_agents_see_the_ocf_environment() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path());
    let p = params(&[("start", "echo \"$OCF_RESOURCE_INSTANCE $OCF_RESKEY_color $OCF_RESKEY_CRM_meta_timeout $OCF_RESKEY_CRM_meta_on_node\""), ("color", "blue")]);
    let res = call(&r, &AgentSpec::Exec, &p, AgentAction::Start, 1234).await;
    assert_eq!(res.stdout.trim(), "rsc1 blue 1234 n1");
    let none = call(&r, &AgentSpec::Exec, &p, AgentAction::Promote, 1000).await;
    assert_eq!(none.verdict, Verdict::HardError, "no promote command: unimplemented");
}

#[tokio::test]
async fn the_process_agent_supervises_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path());
    let port = free_port();
    let p = params(&[
        ("command", &format!("python3 -m http.server {port} --bind 127.0.0.1")),
        ("check_tcp", &format!("127.0.0.1:{port}")),
    ]);
    let start = call(&r, &AgentSpec::Process, &p, AgentAction::Start, 20_000).await;
    assert!(start.succeeded(), "{start:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "start returns once the check passes"
    );
    assert_eq!(
        call(&r, &AgentSpec::Process, &p, AgentAction::Monitor, 5_000)
            .await
            .verdict,
        Verdict::Ok
    );
    // starting twice is a no-op
    assert!(call(&r, &AgentSpec::Process, &p, AgentAction::Start, 5_000)
        .await
        .succeeded());
    assert!(call(&r, &AgentSpec::Process, &p, AgentAction::Stop, 10_000)
        .await
        .succeeded());
    assert_eq!(
        call(&r, &AgentSpec::Process, &p, AgentAction::Monitor, 5_000)
            .await
            .verdict,
        Verdict::NotRunning
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "stopped means not listening"
    );
}

/// A free port on 127.0.0.1 for a service to bind (`phalanx_node::ports`).
fn free_port() -> u16 {
    phalanx_node::ports::free_tcp_port().unwrap()
}

/// An orphan of an earlier run (here: this test) holds the port: the service the agent starts
/// cannot bind it and dies. That is a failed start, even though the port answers.
#[tokio::test]
async fn a_start_whose_process_died_fails_although_another_answers_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path());
    let orphan = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = orphan.local_addr().unwrap().port();
    let p = params(&[
        (
            "command",
            &format!("python3 -c \"import socket; socket.socket().bind(('127.0.0.1', {port})); import time; time.sleep(60)\""),
        ),
        ("check_tcp", &format!("127.0.0.1:{port}")),
    ]);
    let start = call(&r, &AgentSpec::Process, &p, AgentAction::Start, 20_000).await;
    assert!(!start.succeeded(), "the service died, yet start said: {start:?}");
    assert!(
        !start.timed_out,
        "its death is seen at once, not at the timeout: {start:?}"
    );
    assert_eq!(
        call(&r, &AgentSpec::Process, &p, AgentAction::Monitor, 5_000)
            .await
            .verdict,
        Verdict::NotRunning
    );
    drop(orphan);
}

/// The monitor checks the process it started, not whoever has its pid or its port: once that
/// process is gone, the monitor says "not running" (7) while another process answers the port,
/// also when that other process now has the pid written in the pid file (pid reuse, e.g. after
/// a reboot with the pid file kept on disk).
#[tokio::test]
async fn the_monitor_checks_its_own_process_not_the_port_or_a_reused_pid() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path());
    let port = free_port();
    let p = params(&[
        ("command", &format!("python3 -m http.server {port} --bind 127.0.0.1")),
        ("check_tcp", &format!("127.0.0.1:{port}")),
    ]);
    let start = call(&r, &AgentSpec::Process, &p, AgentAction::Start, 20_000).await;
    assert!(start.succeeded(), "{start:?}");
    let pidfile = dir.path().join("state/rsc1.pid");
    let record = std::fs::read_to_string(&pidfile).unwrap();
    let pid: i32 = record.lines().next().unwrap().trim().parse().unwrap();
    // Its process dies; another process takes the port.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let other = loop {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            break l;
        }
        assert!(Instant::now() < deadline, "the port was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mon = call(&r, &AgentSpec::Process, &p, AgentAction::Monitor, 5_000).await;
    assert_eq!(mon.verdict, Verdict::NotRunning, "{mon:?}");
    // The pid in the pid file now belongs to the process that answers the port.
    let reused = record.replacen(&pid.to_string(), &std::process::id().to_string(), 1);
    std::fs::write(&pidfile, reused).unwrap();
    let mon = call(&r, &AgentSpec::Process, &p, AgentAction::Monitor, 5_000).await;
    assert_eq!(mon.verdict, Verdict::NotRunning, "{mon:?}");
    drop(other);
}

/// A typo in a process resource's params is a configuration error for its start, never a stop
/// failure (a failed stop gets a node fenced): stopping what does not run succeeds, and a probe
/// of it says not running.
#[tokio::test]
async fn bad_process_params_fail_the_start_but_never_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path());
    for p in [
        params(&[("command", "sleep 100"), ("check_tcp", "127.0.10.${NODE}:47000")]),
        params(&[("check_tcp", "127.0.0.1:1")]),
    ] {
        let start = call(&r, &AgentSpec::Process, &p, AgentAction::Start, 2000).await;
        assert_eq!(start.exit_code, Some(6), "{start:?}");
        let stop = call(&r, &AgentSpec::Process, &p, AgentAction::Stop, 2000).await;
        assert!(stop.succeeded(), "a stop of nothing running failed: {stop:?}");
        let probe = call(&r, &AgentSpec::Process, &p, AgentAction::Monitor, 2000).await;
        assert_eq!(probe.exit_code, Some(7), "{probe:?}");
    }
}

/// A clone's instance sees Pacemaker's clone meta attributes and feature set, as agents
/// written for Pacemaker test them (`ocf_is_clone`, `ocf_is_ms`, `notify`).
#[tokio::test]
async fn a_clone_instance_sees_the_clone_meta_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path());
    let out = dir.path().join("env");
    let p = params(&[(
        "start",
        &format!(
            "echo \"$OCF_RESKEY_CRM_meta_clone $OCF_RESKEY_CRM_meta_clone_max $OCF_RESKEY_CRM_meta_notify $OCF_RESKEY_CRM_meta_master_max $OCF_RESKEY_crm_feature_set\" > {}",
            out.display()
        ),
    )]);
    let meta = params(&[
        ("clone", "1"),
        ("clone_max", "3"),
        ("notify", "true"),
        ("master_max", "1"),
    ]);
    let res = r
        .call(&AgentCall {
            agent: &AgentSpec::Exec,
            instance: "pg",
            params: &p,
            meta: &meta,
            action: AgentAction::Start,
            timeout: Duration::from_secs(10),
            interval: None,
        })
        .await;
    assert!(res.succeeded(), "{res:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "1 3 true 1 3.16.1");
}
