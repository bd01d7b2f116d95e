//! `phalanx machine` (a playground node's machine, see `phalanx::power_switch`): a daemon
//! killed alone leaves what it started on the machine, and cutting the outlet (the machine's
//! pid) takes that too; a machine whose command is gone shuts down on SIGTERM.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};

fn alive(pid: i32) -> bool {
    // A zombie is dead: its parent has not reaped it yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state != Some('Z'))
}

fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Poll `f` for 10 s.
fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_pid(path: &Path) -> i32 {
    until(&format!("{} written", path.display()), || {
        std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))
    });
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// The machine's command: a "daemon" (a shell that becomes `sleep 61`) that started a
/// "service" (`sleep 60`, its child), both pids written down.
fn start_machine(dir: &Path) -> (std::process::Child, i32, i32) {
    let script = format!(
        "sleep 60 & echo $! > {dir}/service.pid; echo $$ > {dir}/daemon.pid; exec sleep 61",
        dir = dir.display()
    );
    let machine = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["machine", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let daemon = read_pid(&dir.join("daemon.pid"));
    let service = read_pid(&dir.join("service.pid"));
    (machine, daemon, service)
}

#[test]
fn a_daemon_killed_alone_leaves_its_service_on_the_machine_and_a_power_cut_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut machine, daemon, service) = start_machine(dir.path());
    let m = machine.id() as i32;
    assert_eq!(parent(daemon), Some(m));
    assert_eq!(parent(service), Some(daemon));

    // The daemon crashes: its service stays, adopted by the machine (not by init).
    kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
    until("the machine adopts the service", || parent(service) == Some(m));
    assert!(alive(service));
    assert!(alive(m), "the machine stays up while it runs something");

    // The outlet is cut: the machine and everything on it die.
    let killed = phalanx::power_switch::cut_power(m);
    assert!(killed.contains(&service), "{killed:?}");
    let _ = machine.wait();
    until("the service dies with the machine", || !alive(service));
}

#[test]
fn sigterm_goes_to_the_daemon_and_once_it_is_gone_shuts_the_machine_down() {
    let dir = tempfile::tempdir().unwrap();
    let (mut machine, daemon, service) = start_machine(dir.path());
    let m = Pid::from_raw(machine.id() as i32);
    // A running daemon gets the SIGTERM (sleep dies of it); its service is left running.
    kill(m, Signal::SIGTERM).unwrap();
    until("the daemon ends on SIGTERM", || !alive(daemon));
    assert!(alive(service));
    assert!(
        machine.try_wait().unwrap().is_none(),
        "the machine still runs the service"
    );
    // With the daemon gone, the next SIGTERM shuts the machine down, service and all.
    kill(m, Signal::SIGTERM).unwrap();
    let status = machine.wait().unwrap();
    assert!(!alive(service));
    // The daemon died of SIGTERM: the machine exits with 128 + 15.
    assert_eq!(status.code(), Some(128 + 15));
}
