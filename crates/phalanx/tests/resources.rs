//! Resources for real: a 3-node cluster of daemon processes runs a group of two Debian
//! `ocf:heartbeat:Dummy` resources (each node keeps its agents' state in its own folder). Kill
//! the node holding them: they start on another node, in group order. Break the monitor three
//! times: migration-threshold moves the group; cleanup lifts the failures.

use phalanx::harness::{LocalCluster, Spec};
use phalanx_core::scheduler::Role;
use phalanx_node::StatusReport;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

const STACK: &str = r#"
[[resource]]
id = "web-ip"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "1s", timeout = "10s" }

[[resource]]
id = "web"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "500ms", timeout = "10s" }
migration_threshold = 3

[[group]]
id = "stack"
members = ["web-ip", "web"]
"#;

/// A started 3-node cluster (one link each) with `extra` resources in its config.
fn cluster_with(extra: &str) -> LocalCluster {
    assert!(
        std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").is_file(),
        "Debian's resource-agents is not installed (.ci/run installs it)"
    );
    let mut c = LocalCluster::create(Spec {
        nodes: 3,
        heartbeat: Duration::from_millis(100),
        links: 1,
        exe: PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        keep: std::env::var_os("PHALANX_KEEP").is_some(),
        extra_config: extra.into(),
        cluster_extra: String::new(),
    })
    .unwrap();
    c.start_all().unwrap();
    c
}

fn cluster() -> LocalCluster {
    cluster_with(STACK)
}

/// Where every member of the stack runs, if all run Started on one node and nothing is pending.
fn stack_node(st: &StatusReport) -> Option<String> {
    if st.plan_pending > 0 {
        return None;
    }
    let nodes: Vec<&BTreeMap<String, Role>> = st.resources.iter().map(|r| &r.running).collect();
    let first = nodes.first()?.iter().next()?;
    let all_there = nodes
        .iter()
        .all(|m| m.len() == 1 && m.get(first.0) == Some(&Role::Started));
    all_there.then(|| first.0.clone())
}

fn state_file(c: &LocalCluster, node: &str, rsc: &str) -> PathBuf {
    c.node(node)
        .unwrap()
        .data_dir
        .join(format!("agents/rsctmp/Dummy-{rsc}.state"))
}

async fn wait_stack(c: &LocalCluster, what: &str, pred: impl Fn(&str, &StatusReport) -> bool) -> String {
    c.wait_for(T, what, |st| {
        let s = st.values().next()?;
        let n = stack_node(s)?;
        (st.values().all(|x| stack_node(x).as_deref() == Some(n.as_str())) && pred(&n, s)).then_some(n)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocf_anything_wraps_a_server_that_fails_over() {
    // Debian's ocf:heartbeat:anything runs a real server (phalanx's demo service, answering
    // with its node name on 127.0.11.<node number>), in a group after a Dummy.
    let port = std::net::TcpListener::bind("127.0.11.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exe = env!("CARGO_BIN_EXE_phalanx");
    let extra = format!(
        r#"
[[resource]]
id = "state"
agent = "ocf:heartbeat:Dummy"

[[resource]]
id = "server"
agent = "ocf:heartbeat:anything"
params = {{ binfile = "{exe}", cmdline_options = "demo-service --listen 127.0.11.${{OCF_RESKEY_CRM_meta_on_node#n}}:{port} --name ${{OCF_RESKEY_CRM_meta_on_node}}" }}
monitor = {{ interval = "1s", timeout = "10s" }}

[[group]]
id = "svc"
members = ["state", "server"]
"#
    );
    let mut c = cluster_with(&extra);
    c.wait_stable(T).await.unwrap();
    let answer = |node: String| async move {
        let addr = format!("127.0.11.{}:{port}", node.trim_start_matches('n'));
        let deadline = std::time::Instant::now() + T;
        loop {
            if let Some(who) = phalanx::service::probe(&addr, Duration::from_millis(200)).await {
                return who;
            }
            assert!(std::time::Instant::now() < deadline, "nothing answers on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let first = wait_stack(&c, "the service group to start", |_, _| true).await;
    assert_eq!(
        answer(first.clone()).await,
        first,
        "the wrapped server answers with its node"
    );
    c.kill(&first).unwrap();
    let second = wait_stack(&c, "the service group to recover", |n, _| n != first).await;
    assert_eq!(answer(second.clone()).await, second);
    let dead = format!("127.0.11.{}:{port}", first.trim_start_matches('n'));
    assert!(
        phalanx::service::probe(&dead, Duration::from_millis(200))
            .await
            .is_none(),
        "the dead node answers nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_real_ocf_agents_fails_over_in_order() {
    let mut c = cluster();
    c.wait_stable(T).await.unwrap();
    let first = wait_stack(&c, "the stack to start on one node", |_, _| true).await;
    for rsc in ["web-ip", "web"] {
        assert!(state_file(&c, &first, rsc).exists(), "Dummy {rsc} runs on {first}");
    }
    c.kill(&first).unwrap();
    let second = wait_stack(&c, "the stack to recover elsewhere", |n, _| n != first).await;
    let ip = std::fs::metadata(state_file(&c, &second, "web-ip"))
        .unwrap()
        .modified()
        .unwrap();
    let web = std::fs::metadata(state_file(&c, &second, "web"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(ip <= web, "group order: web-ip starts before web");
    // why explains the placement
    let (code, out, err) = c.cli(&["why", "web"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("placed as stack") && out.contains(&format!("{first} lost")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_threshold_moves_the_group_and_cleanup_lifts_it() {
    let c = cluster();
    c.wait_stable(T).await.unwrap();
    let home = wait_stack(&c, "the stack to start", |_, _| true).await;
    // Make web's monitor fail (Dummy's state file vanishes) until it is moved away.
    for n in 1..=3usize {
        let f = state_file(&c, &home, "web");
        c.wait_for(T, "the state file to be back", |_| f.exists().then_some(()))
            .await
            .unwrap();
        std::fs::remove_file(&f).unwrap();
        let home2 = home.clone();
        c.wait_for(T, &format!("failure {n} to be counted"), |st| {
            let s = st.values().next()?;
            let web = s.resources.iter().find(|r| r.id == "web")?;
            (web.failures.get(&home2).copied().unwrap_or(0) >= n).then_some(())
        })
        .await
        .unwrap();
    }
    let moved = wait_stack(&c, "migration-threshold to move the stack", |n, _| n != home).await;
    assert_ne!(moved, home);
    let st = c.status(&moved).await.unwrap();
    let web = st.resources.iter().find(|r| r.id == "web").unwrap();
    assert_eq!(web.failures.get(&home), Some(&3), "{web:?}");
    let (_, human, _) = c.cli(&["status"]).unwrap();
    assert!(
        human.contains("fail counts:") && human.contains(&format!("{home}=3")),
        "{human}"
    );
    let (_, why, _) = c.cli(&["why", "web"]).unwrap();
    assert!(why.contains("migration-threshold 3 reached"), "{why}");
    // cleanup lifts it
    let (code, _, err) = c.cli(&["resource", "cleanup", "web"]).unwrap();
    assert_eq!(code, 0, "{err}");
    c.wait_for(T, "the failures to be forgotten", |st| {
        st.values()
            .all(|s| s.resources.iter().all(|r| r.failures.is_empty()))
            .then_some(())
    })
    .await
    .unwrap();
}

/// A monitor answering 1 (`OCF_ERR_GENERIC`) is a soft error, as in Pacemaker: the resource
/// is stopped and started again where it runs, the failure counted there and the node not
/// banned. (It was a hard error here before: one slow answer banned the node until cleanup.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_answering_1_restarts_the_resource_in_place_without_a_ban() {
    let dir = tempfile::tempdir().unwrap();
    let (run, starts, flag) = (
        dir.path().join("run"),
        dir.path().join("starts"),
        dir.path().join("fail-once"),
    );
    let c = cluster_with(&format!(
        r#"
[[resource]]
id = "svc"
agent = "exec"
params = {{ start = "echo started >> {s}; touch {r}", stop = "rm -f {r}", monitor = "if [ -f {f} ]; then rm -f {f}; exit 1; fi; test -f {r} || exit 7" }}
monitor = {{ interval = "500ms", timeout = "10s" }}
"#,
        s = starts.display(),
        r = run.display(),
        f = flag.display()
    ));
    c.wait_stable(T).await.unwrap();
    let home = c
        .wait_for(T, "svc to start", |st| {
            let s = st.values().next()?;
            (s.plan_pending == 0).then_some(())?;
            where_runs(s, "svc")
        })
        .await
        .unwrap();
    let starts_now = || std::fs::read_to_string(&starts).unwrap_or_default().lines().count();
    assert_eq!(starts_now(), 1);
    std::fs::write(&flag, b"").unwrap();
    let h = home.clone();
    let svc = c
        .wait_for(T, "the failure to be counted and svc started again", |st| {
            let s = st.values().next()?;
            let r = s.resources.iter().find(|r| r.id == "svc")?;
            let again = r.failures.get(&h) == Some(&1)
                && r.running.get(&h) == Some(&Role::Started)
                && s.plan_pending == 0
                && starts_now() == 2;
            again.then(|| r.clone())
        })
        .await
        .unwrap();
    assert!(svc.banned.is_empty(), "a soft error bans nothing: {svc:?}");
    assert_eq!(svc.running.len(), 1, "restarted in place, nowhere else: {svc:?}");
    assert!(!flag.exists(), "the monitor answered 1");
}

fn where_runs(st: &StatusReport, rsc: &str) -> Option<String> {
    st.resources
        .iter()
        .find(|r| r.id == rsc)?
        .running
        .keys()
        .next()
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_immediate_delayed_and_manual() {
    let policies = [
        ("fb-now", "immediate"),
        ("fb-later", "delayed:2s"),
        ("fb-never", "manual"),
    ];
    let mut extra = String::new();
    for (id, policy) in policies {
        extra += &format!(
            "[[resource]]\nid = \"{id}\"\nagent = \"ocf:heartbeat:Dummy\"\nfailback = \"{policy}\"\n[[constraint]]\nlocation = \"{id}\"\nnode = \"n1\"\nscore = 100\n"
        );
    }
    let mut c = cluster_with(&extra);
    c.wait_stable(T).await.unwrap();
    // Read a survivor's view (n2): a restarted node answers from its own stale copy at first.
    let all_on = |st: &std::collections::BTreeMap<String, StatusReport>, node: &str, ids: &[&str]| {
        st.get("n2")
            .map(|s| ids.iter().all(|id| where_runs(s, id).as_deref() == Some(node)))
            .unwrap_or(false)
    };
    let ids = ["fb-now", "fb-later", "fb-never"];
    // Everything prefers n1, but if n1 came up late (a loaded machine), the first plan put some
    // of it elsewhere, where `manual` (and a not yet due `delayed`) keeps it: bring those to n1
    // by hand, then drop the moves.
    let placed = c
        .wait_for(T, "everything placed", |st| {
            let s = st.get("n2")?;
            (s.plan_pending == 0)
                .then(|| ids.iter().map(|id| where_runs(s, id)).collect::<Option<Vec<String>>>())
                .flatten()
        })
        .await
        .unwrap();
    let moved: Vec<&str> = ids
        .iter()
        .zip(&placed)
        .filter(|(_, node)| *node != "n1")
        .map(|(id, _)| *id)
        .collect();
    for id in &moved {
        let (code, out, err) = c.cli(&["resource", "move", id, "--to", "n1"]).unwrap();
        assert_eq!(code, 0, "{out}{err}");
    }
    c.wait_for(T, "everything on n1", |st| all_on(st, "n1", &ids).then_some(()))
        .await
        .unwrap();
    // The moves must be gone, or they would bring everything back at once whatever the policy.
    for id in &moved {
        let (code, out, err) = c.cli(&["resource", "clear", id]).unwrap();
        assert_eq!(code, 0, "{out}{err}");
    }
    c.kill("n1").unwrap();
    c.wait_for(T, "everything moved off n1", |st| {
        let s = st.get("n2")?;
        ids.iter()
            .all(|id| where_runs(s, id).map(|n| n != "n1").unwrap_or(false))
            .then_some(())
    })
    .await
    .unwrap();
    c.restart("n1", T).await.unwrap();
    let back = std::time::Instant::now();
    c.wait_for(T, "immediate failback", |st| {
        all_on(st, "n1", &["fb-now"]).then_some(())
    })
    .await
    .unwrap();
    let immediate = back.elapsed();
    c.wait_for(T, "delayed failback", |st| {
        all_on(st, "n1", &["fb-later"]).then_some(())
    })
    .await
    .unwrap();
    let delayed = back.elapsed();
    assert!(
        delayed >= immediate + Duration::from_millis(1500),
        "delayed:2s came back {delayed:?} after n1, immediate {immediate:?}"
    );
    // manual: never by itself (watch for twice the delay)
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        let st = c.status("n2").await.unwrap();
        assert_ne!(
            where_runs(&st, "fb-never").as_deref(),
            Some("n1"),
            "manual failback must wait for an operator"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and an operator move brings it home.
    let (code, _, err) = c.cli(&["resource", "move", "fb-never", "--to", "n1"]).unwrap();
    assert_eq!(code, 0, "{err}");
    c.wait_for(T, "the operator's move", |st| {
        all_on(st, "n1", &["fb-never"]).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_and_missing_agents_show_in_status_and_why() {
    let extra = r#"
[[resource]]
id = "hang"
agent = "exec"
params = { start = "sleep 30", stop = "true", monitor = "exit 7" }
start_timeout = "500ms"
migration_threshold = 1

[[resource]]
id = "ghost"
agent = "ocf:heartbeat:NoSuchAgent"
"#;
    let c = cluster_with(extra);
    c.wait_stable(T).await.unwrap();
    // The missing agent is a hard error on every node in turn: banned everywhere, cannot run.
    c.wait_for(T, "ghost banned from every node", |st| {
        let s = st.values().next()?;
        let g = s.resources.iter().find(|r| r.id == "ghost")?;
        (g.banned.len() == 3 && g.running.is_empty()).then_some(())
    })
    .await
    .unwrap();
    // The hanging start times out (its process group killed), is recorded with its reason,
    // and bans the node it hung on, as any failed start does (Pacemaker's
    // start-failure-is-fatal): it is tried on another node, not again there.
    c.wait_for(T, "the hanging start to time out and ban its node", |st| {
        let s = st.values().next()?;
        let h = s.resources.iter().find(|r| r.id == "hang")?;
        let timed_out = h.last_error.as_ref().is_some_and(|e| e.contains("timed out"));
        (timed_out && !h.banned.is_empty()).then_some(())
    })
    .await
    .unwrap();
    let (_, status, _) = c.cli(&["status"]).unwrap();
    assert!(
        status.contains("not installed") && status.contains("timed out"),
        "{status}"
    );
    let (_, why, _) = c.cli(&["why", "ghost"]).unwrap();
    assert!(why.contains("cannot run anywhere") && why.contains("banned"), "{why}");
}

/// A clone with clone_node_max = 2 runs its instances one by one (worker:0..3), at most two per
/// node, each with its own Dummy state file (OCF_RESOURCE_INSTANCE is the instance name); when a
/// node holding instances dies they restart on the survivors within that limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_node_max_runs_two_instances_per_node() {
    let mut c = cluster_with(
        r#"
[[resource]]
id = "worker"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "1s", timeout = "10s" }

[[clone]]
id = "workers"
resource = "worker"
clone_max = 5
clone_node_max = 2
"#,
    );
    // Instance → node, once all five run, nothing is pending and every view agrees.
    let placement = |st: &StatusReport| -> Option<BTreeMap<String, String>> {
        if st.plan_pending > 0 || st.resources.len() != 5 {
            return None;
        }
        st.resources
            .iter()
            .map(|r| match r.running.iter().next() {
                Some((n, Role::Started)) if r.running.len() == 1 => Some((r.id.clone(), n.clone())),
                _ => None,
            })
            .collect()
    };
    let per_node = |p: &BTreeMap<String, String>| {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for n in p.values() {
            *count.entry(n.clone()).or_default() += 1;
        }
        count
    };
    let before = c
        .wait_for(T, "five instances placed", |st| {
            let views: Vec<_> = st.values().map(placement).collect();
            let first = views.first()?.clone()?;
            let ok = views.iter().all(|v| v.as_ref() == Some(&first)) && per_node(&first).values().all(|n| *n <= 2);
            ok.then_some(first)
        })
        .await
        .unwrap();
    assert_eq!(per_node(&before).len(), 3, "spread over all three nodes: {before:?}");
    for (id, n) in &before {
        assert!(state_file(&c, n, id).is_file(), "{id} has its own state file on {n}");
    }
    // Kill a node holding two instances: the two survivors have room for 2 × 2 = 4 of the five,
    // so four run, two per node, and those that ran on survivors stay where they were.
    let busy = per_node(&before)
        .into_iter()
        .find(|(_, k)| *k == 2)
        .map(|(n, _)| n)
        .unwrap();
    c.kill(&busy).unwrap();
    let after = c
        .wait_for(T, "instances back within the limit", |st| {
            let s = st.values().next()?;
            if s.plan_pending > 0 {
                return None;
            }
            let running: BTreeMap<String, String> = s
                .resources
                .iter()
                .filter_map(|r| r.running.iter().next().map(|(n, _)| (r.id.clone(), n.clone())))
                .collect();
            (running.len() == 4
                && !running.values().any(|n| *n == busy)
                && per_node(&running).values().all(|k| *k == 2))
            .then_some(running)
        })
        .await
        .unwrap();
    for (id, n) in &before {
        if *n != busy {
            assert_eq!(after.get(id), Some(n), "{id} stayed where it ran");
        }
    }
}

/// Recurring monitors run from their own deadlines, start to start: the period a real `exec`
/// agent measures (it appends the time of every call to a file) is the configured 300 ms, at a
/// slow (1 s) and a fast (20 ms) heartbeat alike. (They used to fire on the executor's
/// heartbeat ticks: a 1 s heartbeat made it ≈ 1 s.) The median of the periods is checked, so
/// one late wake-up on this shared machine does not decide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_run_at_their_interval_whatever_the_heartbeat() {
    for hb in [1000, 20] {
        let dir = tempfile::tempdir().unwrap();
        let (state, calls) = (dir.path().join("state"), dir.path().join("calls"));
        let extra = format!(
            r#"
[[resource]]
id = "ticker"
agent = "exec"
params = {{ start = "touch {s}", stop = "rm -f {s}", monitor = "date +%s%N >> {c}; test -f {s} || exit 7" }}
monitor = {{ interval = "300ms", timeout = "5s" }}
"#,
            s = state.display(),
            c = calls.display()
        );
        let mut c = LocalCluster::create(Spec {
            nodes: 1,
            heartbeat: Duration::from_millis(hb),
            links: 1,
            exe: PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
            keep: std::env::var_os("PHALANX_KEEP").is_some(),
            extra_config: extra,
            cluster_extra: String::new(),
        })
        .unwrap();
        c.start_all().unwrap();
        // The probe and the first monitor come at once; then 12 periods.
        let deadline = std::time::Instant::now() + T;
        let times: Vec<u64> = loop {
            let t: Vec<u64> = std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .map(|ns| ns / 1_000_000)
                .collect();
            if t.len() >= 16 {
                break t;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "heartbeat {hb} ms: only {} monitor calls",
                t.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Skip the probe and the first monitor; the rest are recurring.
        let mut periods: Vec<u64> = times[2..].windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
        periods.sort_unstable();
        let median = periods[periods.len() / 2];
        assert!(
            (290..=310).contains(&median),
            "heartbeat {hb} ms: median monitor period {median} ms, not 300 ± 10 (periods {periods:?})"
        );
    }
}

/// SIGTERM of the daemon holding a group (what `systemctl stop` sends): the node leaves
/// cleanly. The group moves to another node, the node is recorded STOPPED (not lost, never
/// fenced: no fence event at all), its daemon exits 0, and no process its agents started
/// survives it (a `process` resource's service used to stay behind with ppid 1). Started again,
/// it rejoins as an online member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_a_group_away_and_the_node_is_stopped_not_fenced() {
    let extra = format!(
        "{STACK}\n[[resource]]\nid = \"svc\"\nagent = \"process\"\nparams = {{ command = \"sleep 1000\" }}\nmonitor = {{ interval = \"1s\", timeout = \"10s\" }}\n"
    )
    .replace("members = [\"web-ip\", \"web\"]", "members = [\"web-ip\", \"web\", \"svc\"]");
    let mut c = cluster_with(&extra);
    c.wait_stable(T).await.unwrap();
    let holder = wait_stack(&c, "the stack placed", |_, _| true).await;
    let pid_file = c.node(&holder).unwrap().data_dir.join("agents/svc.pid");
    let svc_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    assert!(alive(svc_pid));
    let status = c.terminate(&holder, T).await.unwrap();
    assert!(status.success(), "{holder} exited with {status}");
    assert!(!alive(svc_pid), "the service {holder} started outlived its daemon");
    let moved = wait_stack(&c, "the stack moved away", |n, _| n != holder).await;
    assert_ne!(moved, holder);
    c.wait_for(T, "the node recorded stopped", |st| {
        st.values()
            .all(|s| {
                s.nodes
                    .iter()
                    .any(|n| n.name == holder && n.state == "stopped" && n.liveness == phalanx_core::Liveness::Stopped)
            })
            .then_some(())
    })
    .await
    .unwrap();
    assert!(c.fence_events().is_empty(), "fenced: {:?}", c.fence_events());
    let (_, human, _) = c.cli(&["status"]).unwrap();
    assert!(human.contains("STOPPED") && human.contains("not fenced"), "{human}");
    // Back: online again, and hosting (a move there works).
    c.start(&holder).unwrap();
    c.wait_for(T, "the node back online", |st| {
        st.values()
            .all(|s| {
                s.nodes
                    .iter()
                    .any(|n| n.name == holder && n.state == "online" && n.liveness == phalanx_core::Liveness::Online)
            })
            .then_some(())
    })
    .await
    .unwrap();
    let (code, out, err) = c.cli(&["resource", "move", "stack", "--to", &holder]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    wait_stack(&c, "the stack back on the restarted node", |n, _| n == holder).await;
    assert!(c.fence_events().is_empty(), "fenced: {:?}", c.fence_events());
}

/// `phalanx node stop` through another node's API: the named node leaves cleanly and its daemon
/// exits by itself, STOPPED and not fenced. Stopping a second one would leave 1 of 3 voters:
/// refused (409) with the reason, and nothing changes; `--json` says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stop_leaves_cleanly_and_refuses_to_break_quorum() {
    let mut c = cluster();
    c.wait_stable(T).await.unwrap();
    let holder = wait_stack(&c, "the stack placed", |_, _| true).await;
    let (code, out, err) = c.cli(&["--json", "node", "stop", &holder]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["fenced"].as_bool()),
        (Some("stopped"), Some(false)),
        "{v}"
    );
    let status = c.wait_exit(&holder, T).await.unwrap();
    assert!(status.success(), "{status}");
    wait_stack(&c, "the stack moved away", |n, _| n != holder).await;
    let other = c.running().into_iter().find(|n| *n != holder).unwrap();
    let (code, out, err) = c.cli(&["node", "stop", &other]).unwrap();
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("quorum needs 2") && err.contains("--force"), "{err}");
    assert_eq!(c.running().len(), 2);
    let st = c.status(&other).await.unwrap();
    assert!(
        st.nodes.iter().any(|n| n.name == other && n.state == "online"),
        "{:?}",
        st.nodes
    );
    assert!(c.fence_events().is_empty(), "fenced: {:?}", c.fence_events());
}

/// `node stop --now` stops a node at once, whatever it runs: its daemon exits, says in its log
/// what it left running, and stops the services it started; the cluster treats the node as lost
/// (it held the group) and fences it before the group starts elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stop_now_exits_at_once_and_the_node_is_fenced_for_what_it_held() {
    let mut c = cluster();
    c.wait_stable(T).await.unwrap();
    let holder = wait_stack(&c, "the stack placed", |_, _| true).await;
    let (code, out, err) = c.cli(&["--json", "node", "stop", &holder, "--now"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"].as_str(), Some("offline"), "{v}");
    c.wait_exit(&holder, T).await.unwrap();
    let log = std::fs::read_to_string(c.log_path(&holder)).unwrap();
    assert!(log.contains("stopping at once") && log.contains("web"), "{log}");
    wait_stack(&c, "the stack recovered elsewhere", |n, _| n != holder).await;
    c.wait_for(T, "the node fenced", |st| {
        st.values()
            .flat_map(|s| s.nodes.iter())
            .any(|n| n.name == holder && n.fence.fenced_at_ms.is_some())
            .then_some(())
    })
    .await
    .unwrap();
}

/// `node remove` of a running node that holds the stack: the removed node learns it, stops what
/// it ran with its agents (the Dummy state files are gone) and exits saying why; the stack
/// starts on a remaining member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_stops_what_it_ran_and_exits() {
    let mut c = cluster();
    c.wait_stable(T).await.unwrap();
    let holder = wait_stack(&c, "the stack placed", |_, _| true).await;
    assert!(state_file(&c, &holder, "web").is_file());
    let (code, out, err) = c.cli(&["node", "remove", &holder]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let status = c.wait_exit(&holder, T).await.unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(c.log_path(&holder)).unwrap();
    assert!(log.contains("removed from the cluster"), "{log}");
    for rsc in ["web-ip", "web"] {
        assert!(
            !state_file(&c, &holder, rsc).exists(),
            "{rsc} still runs on the removed {holder}"
        );
    }
    c.wait_for(T, "the stack on a remaining member", |st| {
        let s = st.values().next()?;
        let n = stack_node(s)?;
        (n != holder).then_some(())
    })
    .await
    .unwrap();
}

/// Every instance of a clone sees Pacemaker's clone meta attributes (issue 18: Debian's `pgsql`
/// and PAF test them): a clone of an exec agent over the three nodes records, on each node, what
/// its start saw — its own instance number (the node's rank by id: n1 0, n2 1, n3 2), the
/// clone's size, `notify` and the feature set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_instances_see_the_clone_meta_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let c = cluster_with(&format!(
        r#"
[[resource]]
id = "meta"
agent = "exec"
params = {{ start = "echo $OCF_RESOURCE_INSTANCE $OCF_RESKEY_CRM_meta_clone $OCF_RESKEY_CRM_meta_clone_max $OCF_RESKEY_CRM_meta_notify $OCF_RESKEY_crm_feature_set > {d}/$OCF_RESKEY_CRM_meta_on_node", stop = "rm -f {d}/$OCF_RESKEY_CRM_meta_on_node", monitor = "test -f {d}/$OCF_RESKEY_CRM_meta_on_node || exit 7" }}

[[clone]]
id = "metas"
resource = "meta"
notify = true
"#
    ));
    c.wait_for(T, "the clone on every node", |st| {
        let s = st.values().next()?;
        (s.plan_pending == 0 && s.resources.iter().any(|r| r.id == "meta" && r.running.len() == 3)).then_some(())
    })
    .await
    .unwrap();
    for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
        let seen = std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(seen.trim(), format!("meta {i} 3 true 3.16.1"), "{n}");
    }
}

/// Clone notifications (issue 18) reach real agents in Pacemaker's order with its lists: a
/// promotable clone of an exec agent with `notify = true` logs every notification and its own
/// promote and demote, with the lists each saw. First start (the transition that promoted):
/// post-start on all three, then pre-promote on all three, the promote, post-promote on all
/// three. Then the operator bans the primary's node: demote
/// notifications around its demote (which sees the lists too), stop notifications (post-stop
/// not to the stopped one), then the promotion of another node between promote notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_clones_tell_their_agents_before_and_after_each_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let me = "$OCF_RESKEY_CRM_meta_on_node";
    // What every logged call saw of the transition's lists.
    let lists = format!(
        "stop=$OCF_RESKEY_CRM_meta_notify_stop_uname promote=$OCF_RESKEY_CRM_meta_notify_promote_uname \
         active=$OCF_RESKEY_CRM_meta_notify_active_resource >> {d}/log"
    );
    // The clone is applied once all three nodes are online voters: started with the cluster,
    // its first placement could come while a node is still joining (CI: promoted on n1 and n3,
    // n2 started by a later transition), and the test is about one transition's notifications.
    let c = cluster_with("");
    c.wait_for(T, "three online voters and the config committed", |st| {
        (st.len() == 3
            && st.values().all(|s| {
                s.quorum && s.config_version > 0 && s.voters.len() == 3 && s.nodes.iter().all(|n| n.state == "online")
            }))
        .then_some(())
    })
    .await
    .unwrap();
    let clone = format!(
        r#"
[[resource]]
id = "pg"
agent = "exec"
params = {{ start = "touch {d}/{me}.run", stop = "rm -f {d}/{me}.run {d}/{me}.pri", promote = "touch {d}/{me}.pri; echo {me} promote {lists}", demote = "rm -f {d}/{me}.pri; echo {me} demote {lists}", monitor = "test -f {d}/{me}.run || exit 7; test -f {d}/{me}.pri && exit 8; exit 0", notify = "echo {me} $OCF_RESKEY_CRM_meta_notify_type-$OCF_RESKEY_CRM_meta_notify_operation {lists}" }}

[[clone]]
id = "db"
resource = "pg"
promotable = true
notify = true
"#
    );
    let (code, shown, err) = c.cli(&["config", "show"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let file = dir.path().join("with-clone.toml");
    std::fs::write(&file, format!("{shown}\n{clone}")).unwrap();
    let (code, out, err) = c.cli(&["config", "apply", file.to_str().unwrap(), "--yes"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let primary = c
        .wait_for(T, "three instances, one promoted", |st| {
            let s = st.values().next()?;
            let pg = s.resources.iter().find(|r| r.id == "pg")?;
            let primary = pg.running.iter().find(|(_, r)| **r == Role::Promoted)?.0.clone();
            (s.plan_pending == 0 && pg.running.len() == 3).then_some(primary)
        })
        .await
        .unwrap();
    let lines = || -> Vec<String> {
        std::fs::read_to_string(dir.path().join("log"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let all = lines();
    // The transition that made the primary is the one whose lists name it.
    let first: Vec<String> = all
        .iter()
        .filter(|l| l.contains(&format!("promote={primary} ")))
        .cloned()
        .collect();
    // Words of each line: node, what, then the lists.
    let what: Vec<String> = first.iter().map(|l| l.split(' ').nth(1).unwrap().to_string()).collect();
    let count = |w: &str| what.iter().filter(|x| *x == w).count();
    assert_eq!(
        (
            count("post-start"),
            count("pre-promote"),
            count("promote"),
            count("post-promote")
        ),
        (3, 3, 1, 3),
        "{first:#?}"
    );
    let last = |w: &str| what.iter().rposition(|x| x == w).unwrap();
    let first_of = |w: &str| what.iter().position(|x| x == w).unwrap();
    assert!(last("post-start") < first_of("pre-promote"), "{first:#?}");
    assert!(last("pre-promote") < first_of("promote"), "{first:#?}");
    assert!(last("promote") < first_of("post-promote"), "{first:#?}");

    let (code, out, err) = c.cli(&["resource", "ban", "db", "--node", &primary]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let moved = c
        .wait_for(T, "the primary moved off the banned node", |st| {
            let s = st.values().next()?;
            let pg = s.resources.iter().find(|r| r.id == "pg")?;
            let p = pg.running.iter().find(|(_, r)| **r == Role::Promoted)?.0.clone();
            (s.plan_pending == 0 && p != primary && pg.running.len() == 2).then_some(p)
        })
        .await
        .unwrap();
    let second: Vec<String> = lines()[all.len()..].to_vec();
    let what: Vec<(String, String)> = second
        .iter()
        .map(|l| {
            let mut w = l.split(' ');
            (w.next().unwrap().to_string(), w.next().unwrap().to_string())
        })
        .collect();
    let on = |w: &str| -> Vec<&str> {
        let mut v: Vec<&str> = what.iter().filter(|(_, x)| x == w).map(|(n, _)| n.as_str()).collect();
        v.sort();
        v
    };
    let others: Vec<&str> = {
        let mut v: Vec<&str> = ["n1", "n2", "n3"].into_iter().filter(|n| *n != primary).collect();
        v.sort();
        v
    };
    assert_eq!(on("pre-demote"), ["n1", "n2", "n3"], "{second:#?}");
    assert_eq!(on("demote"), [primary.as_str()], "{second:#?}");
    assert_eq!(on("post-demote"), ["n1", "n2", "n3"], "{second:#?}");
    assert_eq!(on("pre-stop"), ["n1", "n2", "n3"], "{second:#?}");
    assert_eq!(on("post-stop"), others, "not to the stopped one: {second:#?}");
    assert_eq!(on("pre-promote"), others, "{second:#?}");
    assert_eq!(on("promote"), [moved.as_str()], "{second:#?}");
    assert_eq!(on("post-promote"), others, "{second:#?}");
    let order = [
        "pre-demote",
        "demote",
        "post-demote",
        "pre-stop",
        "post-stop",
        "pre-promote",
        "promote",
        "post-promote",
    ];
    let pos: Vec<(usize, usize)> = order
        .iter()
        .map(|w| {
            let idx: Vec<usize> = what
                .iter()
                .enumerate()
                .filter(|(_, (_, x))| x == w)
                .map(|(i, _)| i)
                .collect();
            (idx[0], idx[idx.len() - 1])
        })
        .collect();
    for (a, b) in pos.iter().zip(&pos[1..]) {
        assert!(a.1 < b.0, "out of order: {second:#?}");
    }
    assert!(
        second.iter().all(|l| l.contains(&format!("stop={primary}"))),
        "every call names the stopping node: {second:#?}"
    );
}
