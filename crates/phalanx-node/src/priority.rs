//! Thread priorities, so that the control plane keeps its deadlines when the machine is busy
//! (issue 14, item 8): the heartbeat mesh's thread asks for real-time round-robin scheduling
//! (`SCHED_RR`, as corosync runs totem), falling back to a raised nice value, and the load
//! balancer's threads lower theirs, so a saturated proxy yields the CPU to Raft, the API and
//! the controller. Both are per thread (Linux schedules threads; `0` / the thread id name the
//! calling one). Neither is required: without the privilege the thread runs as it is, and says
//! so in the log. Written with libc because no kept crate wraps `sched_setscheduler`. Also the
//! lowered runtimes' thread counts an operator may set in the environment ([`threads_from_env`]).

/// The real-time priority asked for the mesh (1..=99; low: it only has to beat normal threads,
/// and stays below the kernel's own real-time work).
const MESH_RT_PRIORITY: i32 = 10;
/// The nice value the mesh falls back to without real-time scheduling.
const MESH_NICE: i32 = -10;
/// The nice value of the balancer's threads.
pub const LB_NICE: i32 = 5;

/// The calling thread's id.
fn tid() -> libc::id_t {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as libc::id_t }
}

/// Set the calling thread's nice value.
fn nice(value: i32) -> std::io::Result<()> {
    // SAFETY: setpriority reads only its integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid(), value) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raise the calling thread (the heartbeat mesh's): real-time round robin, else nice -10.
/// What it got, for the log.
pub fn raise_mesh_thread() -> String {
    let param = libc::sched_param {
        sched_priority: MESH_RT_PRIORITY,
    };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is this thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) };
    if rc == 0 {
        return format!("SCHED_RR priority {MESH_RT_PRIORITY}");
    }
    let rt_error = std::io::Error::last_os_error();
    match nice(MESH_NICE) {
        Ok(()) => format!("nice {MESH_NICE} (no real-time scheduling: {rt_error})"),
        Err(e) => format!("normal (no real-time scheduling: {rt_error}; no nice {MESH_NICE}: {e})"),
    }
}

/// A runtime's thread count from the environment variable `var` (1..=`max`), else `default`
/// (a value out of range or not a number is logged and ignored).
pub fn threads_from_env(var: &str, max: usize, default: usize) -> usize {
    match std::env::var(var) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                tracing::warn!("{var}={v:?} is not a thread count 1..={max}; using {default}");
                default
            }
        },
        Err(_) => default,
    }
}

/// Lower the calling thread (a balancer thread) to nice [`LB_NICE`]; a failure is only logged
/// (lowering one's own priority is always allowed; this cannot really fail).
pub fn lower_lb_thread() {
    if let Err(e) = nice(LB_NICE) {
        tracing::debug!(error = %e, "could not lower a balancer thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_count_comes_from_the_environment_within_its_range() {
        // Names of this test's own: the environment is shared by the test threads.
        let var = "PHALANX_TEST_THREADS_FROM_ENV";
        assert_eq!(threads_from_env(var, 8, 2), 2);
        for (set, want) in [("3", 3), (" 8 ", 8), ("9", 2), ("0", 2), ("two", 2)] {
            std::env::set_var(var, set);
            assert_eq!(threads_from_env(var, 8, 2), want, "{var}={set:?}");
        }
        std::env::remove_var(var);
    }

    #[test]
    fn a_lowered_thread_reads_back_its_nice_value() {
        let v = std::thread::spawn(|| {
            lower_lb_thread();
            // SAFETY: as above.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, tid()) }
        })
        .join()
        .unwrap();
        assert!(v >= LB_NICE, "nice {v}");
        let got = std::thread::spawn(raise_mesh_thread).join().unwrap();
        assert!(!got.is_empty());
    }
}
