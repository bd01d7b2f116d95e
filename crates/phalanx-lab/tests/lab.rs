//! Lab tests (network namespaces, root: CI runs as root; `PHALANX_NO_LAB=1` skips them on a
//! machine without root, saying so). A 3-node cluster with two links per node and a client, all
//! in namespaces; a group `web` = `web-ip` (the built-in vip agent, 10.77.0.100/24) + `web-svc`
//! (an HTTP server answering with its node name). A sampler in every node namespace reads its
//! addresses every ~5 ms for the whole test and fails it if two nodes ever held the VIP at once.

use phalanx::harness::{LocalCluster, Spec};
use phalanx_lab::lab::{lab_or_skip, outage, wait_answer, web_config, web_node, Lab, Watch, ONE_LAB, PORT, VIP};
use phalanx_node::StatusReport;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn cluster(lab: &Lab, failback: &str, prefer: Option<&str>) -> LocalCluster {
    cluster_with(lab, failback, prefer, "")
}

fn cluster_with(lab: &Lab, failback: &str, prefer: Option<&str>, cluster_extra: &str) -> LocalCluster {
    started(lab, 3, web_config(exe(), failback, prefer), cluster_extra)
}

/// The `phalanx` binary (built by `cargo test --workspace`, beside this test's `deps/`).
fn exe() -> &'static std::path::Path {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| phalanx_lab::lab::phalanx_exe().expect("the phalanx binary"))
}

/// A started lab cluster of `nodes` nodes (100 ms heartbeats, 2 links) with `extra_config`.
fn started(lab: &Lab, nodes: usize, extra_config: String, cluster_extra: &str) -> LocalCluster {
    let mut c = phalanx_lab::lab::cluster_in(
        Spec {
            cluster_extra: cluster_extra.into(),
            ..phalanx_lab::lab::spec(lab, nodes, exe(), extra_config)
        },
        lab,
    )
    .unwrap();
    c.start_all().unwrap();
    c
}

/// Where web runs once all `nodes` views agree.
async fn web_running(c: &LocalCluster, nodes: usize) -> String {
    c.wait_for(T, "web running", |st| {
        (st.len() == nodes).then(|| web_node(st)).flatten()
    })
    .await
    .unwrap()
}

/// The views of every answering node but `node`.
fn without(st: &BTreeMap<String, StatusReport>, node: &str) -> BTreeMap<String, StatusReport> {
    st.iter()
        .filter(|(n, _)| *n != node)
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect()
}

/// `node`'s fence record as the first of `views` that shows it fenced sees it.
fn fenced_in(views: &BTreeMap<String, StatusReport>, node: &str) -> Option<phalanx_core::state::FenceRecord> {
    views
        .values()
        .flat_map(|s| s.nodes.iter())
        .find(|n| n.name == node && n.fence.fenced_at_ms.is_some())
        .map(|n| n.fence.clone())
}

/// For 2 s (the dead-after window several times over): no node declares another lost and web
/// stays on `active`, failing on any change.
async fn nothing_moves(c: &LocalCluster, active: &str, why: &str) {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let st = c.statuses().await;
        for (n, s) in &st {
            assert!(
                s.nodes.iter().all(|x| x.liveness != phalanx_core::Liveness::Offline),
                "{n} lost a node although {why}: {:?}",
                s.nodes
            );
        }
        if let Some(n) = web_node(&st) {
            assert_eq!(n, active, "web moved although {why}");
        }
    }
}

/// Where the two survivors (every view but the isolated `active` node's) agree web now runs,
/// once it runs elsewhere.
async fn recovered_by_majority(c: &LocalCluster, active: &str) -> String {
    c.wait_for(T, "web recovered by the majority", |st| {
        let majority: std::collections::BTreeMap<_, _> = st
            .iter()
            .filter(|(n, _)| *n != active)
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        (majority.len() == 2)
            .then(|| web_node(&majority))
            .flatten()
            .filter(|n| n != active)
    })
    .await
    .unwrap()
}

fn vip_addr() -> String {
    format!("{VIP}:{PORT}")
}

fn watch(lab: &Lab) -> Watch {
    Watch::start(lab, &[1, 2, 3], VIP.parse().unwrap(), PORT)
}

/// Stop watching, fail on any double holder, return the client's log.
fn finish(w: Watch) -> phalanx_lab::lab::ClientLog {
    let seen = w.finish().unwrap();
    for (n, count, widest) in &seen.sampling {
        assert!(*count > 20, "{n}: the sampler ran ({count} samples)");
        eprintln!("{n}: {count} samples, widest gap {widest:?}");
    }
    assert!(
        seen.violations.is_empty(),
        "two holders of the VIP: {:?}",
        seen.violations
    );
    seen.client
}

fn num(node: &str) -> usize {
    node.trim_start_matches('n').parse().unwrap()
}

async fn running_on(c: &LocalCluster, what: &str, pred: impl Fn(&str) -> bool) -> String {
    c.wait_for(T, what, |st| web_node(st).filter(|n| pred(n)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_the_active_node_and_the_vip_moves_with_one_holder_at_a_time() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let mut c = cluster(&lab, "manual", None);
    let first = web_running(&c, 3).await;
    wait_answer(&lab, &vip_addr(), &first, T).unwrap();
    let w = watch(&lab);
    let crash_at = Instant::now();
    lab.crash(num(&first)).unwrap();
    c.reap(&first).unwrap();
    let second = running_on(&c, "web moved", |n| n != first).await;
    wait_answer(&lab, &vip_addr(), &second, T).unwrap();
    let log = finish(w);
    eprintln!(
        "client outage after crashing {first}: {:?} (now on {second})",
        outage(&log, crash_at)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_one_of_two_links_moves_nothing() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let c = cluster(&lab, "manual", None);
    let active = web_running(&c, 3).await;
    let w = watch(&lab);
    lab.cut_link(num(&active), 0).unwrap();
    // Every node still sees every other on link 1.
    nothing_moves(&c, &active, "a link remained").await;
    lab.heal_link(num(&active), 0).unwrap();
    finish(w);
}

/// A 3-node cluster with `fencing = "watchdog"` (no fence device), web answering on its VIP,
/// and a watch started: (cluster, web's node, watch).
async fn watchdog_cluster_serving(lab: &Lab) -> (LocalCluster, String, Watch) {
    let c = cluster_with(lab, "manual", None, "fencing = \"watchdog\"\n");
    let active = web_running(&c, 3).await;
    wait_answer(lab, &vip_addr(), &active, T).unwrap();
    let w = watch(lab);
    (c, active, w)
}

/// Cut both links of the active node: it is alone, loses quorum and stops its resources itself
/// (no_quorum_policy = "stop", VIP first); the majority recovers them once the lost node's quorum
/// lease must have run out (fencing = "watchdog", software lease). The sampler in every node
/// namespace, the isolated one included, must never see two holders. Healed, the node rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_both_links_fails_over_after_the_lease_with_one_holder() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let (c, active, w) = watchdog_cluster_serving(&lab).await;
    let i = num(&active);
    let cut_at = Instant::now();
    lab.cut_link(i, 0).unwrap();
    lab.cut_link(i, 1).unwrap();
    let other = recovered_by_majority(&c, &active).await;
    wait_answer(&lab, &vip_addr(), &other, T).unwrap();
    let log = finish(w);
    eprintln!(
        "both links of {active} cut: {other} answered after a client outage of {:?}",
        outage(&log, cut_at)
    );
    lab.heal_link(i, 0).unwrap();
    lab.heal_link(i, 1).unwrap();
    // Back as one cluster agreeing where web runs (see the partition test on where that is).
    c.wait_for(T, "the isolated node back", |st| {
        (st.len() == 3).then(|| web_node(st)).flatten()
    })
    .await
    .unwrap();
}

/// Failback through the VIP: web prefers n1; crash n1, web goes elsewhere; bring n1 back. With
/// `immediate` the VIP returns to n1 at once, with `delayed:2s` about 2 s after n1 is back, with
/// `manual` never (within a window past the delay); then a planned move brings it to n3, and the
/// client outage of that move is printed.
async fn failback_case(policy: &str) {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let mut c = cluster(&lab, policy, Some("n1"));
    // web prefers n1, but if n1 came up late (or stalled at start-up), web may have started
    // elsewhere, where `manual` keeps it: bring it to n1 by hand first.
    if running_on(&c, "web running", |_| true).await != "n1" {
        let (code, out, err) = c.cli(&["resource", "move", "web", "--to", "n1"]).unwrap();
        assert_eq!(code, 0, "{out}{err}");
        running_on(&c, "web on n1", |n| n == "n1").await;
        let (code, out, err) = c.cli(&["resource", "clear", "web"]).unwrap();
        assert_eq!(code, 0, "{out}{err}");
    }
    wait_answer(&lab, &vip_addr(), "n1", T).unwrap();
    let w = watch(&lab);
    lab.crash(1).unwrap();
    c.reap("n1").unwrap();
    let away = running_on(&c, "web moved off n1", |n| n != "n1").await;
    wait_answer(&lab, &vip_addr(), &away, T).unwrap();
    lab.revive(1).unwrap();
    c.restart("n1", T).await.unwrap();
    // n1 counts as back once every view sees it online.
    c.wait_for(T, "n1 back", |st| {
        (st.len() == 3
            && st
                .values()
                .all(|s| s.nodes.iter().all(|x| x.liveness != phalanx_core::Liveness::Offline)))
        .then_some(())
    })
    .await
    .unwrap();
    let back_at = Instant::now();
    match policy {
        "manual" => {
            // Past the delayed case's 2 s and then some: web must stay where it went.
            while back_at.elapsed() < Duration::from_secs(4) {
                if let Some(n) = web_node(&c.statuses().await) {
                    assert_eq!(n, away, "failback = manual moved web");
                }
            }
        }
        _ => {
            running_on(&c, "web back on n1", |n| n == "n1").await;
            wait_answer(&lab, &vip_addr(), "n1", T).unwrap();
            let took = back_at.elapsed();
            eprintln!("failback {policy}: VIP on n1 {took:?} after n1 was back");
            // (How much sooner immediate is than delayed is checked side by side, in one cluster,
            // by the process test `failback_immediate_delayed_and_manual`; a lower bound cannot
            // be made flaky by a slow machine.)
            if policy != "immediate" {
                assert!(
                    took >= Duration::from_millis(1500),
                    "delayed:2s came back after {took:?}"
                );
            }
        }
    }
    // A planned move to n3: the VIP follows.
    let move_at = Instant::now();
    let (code, out, err) = c.cli(&["resource", "move", "web", "--to", "n3"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    running_on(&c, "web on n3", |n| n == "n3").await;
    wait_answer(&lab, &vip_addr(), "n3", T).unwrap();
    let log = finish(w);
    eprintln!("planned move to n3: client outage {:?}", outage(&log, move_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_immediate_through_the_vip() {
    failback_case("immediate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_delayed_through_the_vip() {
    failback_case("delayed:2s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_manual_through_the_vip() {
    failback_case("manual").await;
}

/// Network faults at the switch (nftables): 30 % loss on link 0 of every node moves nothing
/// (link 1 is clean); then a partition {active} | {the others} on every link: the majority
/// recovers web after the lost node's lease, the isolated node (still reachable from the client)
/// has stopped its VIP itself, never two holders; healed, one cluster again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_moves_nothing_and_a_partition_leaves_the_majority_in_charge() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let c = cluster_with(&lab, "manual", None, "fencing = \"watchdog\"\n");
    let active = web_running(&c, 3).await;
    let w = watch(&lab);
    for i in 1..=3 {
        lab.loss(i, 0, 30).unwrap();
    }
    nothing_moves(&c, &active, "only link 0 lost frames").await;
    lab.heal_network().unwrap();
    let i = num(&active);
    let others: Vec<usize> = (1..=3).filter(|x| *x != i).collect();
    lab.partition(&[i], &others, false).unwrap();
    let other = recovered_by_majority(&c, &active).await;
    wait_answer(&lab, &vip_addr(), &other, T).unwrap();
    let isolated = c.status(&active).await.unwrap();
    assert!(!isolated.quorum, "{active} alone must know it has no quorum");
    lab.heal_network().unwrap();
    // One cluster again: every view agrees where web runs. (Usually still on `other`; the
    // rejoining node's higher Raft term forces an election on heal, no pre-vote in openraft 0.9,
    // and one CI run saw web end up elsewhere after that churn: noted for issue 5.)
    let after = c
        .wait_for(T, "one cluster again", |st| {
            (st.len() == 3).then(|| web_node(st)).flatten()
        })
        .await
        .unwrap();
    if after != other {
        eprintln!("after the heal web runs on {after}, not on {other}");
    }
    finish(w);
}

/// IPv6: a VIP fd00:77::100/64 (added without DAD, announced with unsolicited neighbour
/// advertisements) in front of a server on [::]:8081. Crash its holder: the client, over IPv6,
/// gets answers from the new holder (its neighbour cache follows the override flag), and never
/// two holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_vip_moves_on_a_crash_with_one_holder() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let exe = exe().display();
    let vip6 = "fd00:77::100";
    let mut c = phalanx_lab::lab::cluster_in(
        Spec {
            nodes: 3,
            heartbeat: Duration::from_millis(100),
            links: 2,
            exe: phalanx_lab::lab::phalanx_exe().expect("the phalanx binary"),
            keep: std::env::var_os("PHALANX_KEEP").is_some(),
            extra_config: format!(
                r#"
[[resource]]
id = "web6-ip"
agent = "vip"
params = {{ address = "{vip6}/64", interface = "eth0" }}
monitor = {{ interval = "1s", timeout = "5s" }}

[[resource]]
id = "web6-svc"
agent = "process"
params = {{ command = "{exe} demo-service --listen [::]:8081 --name ${{OCF_RESKEY_CRM_meta_on_node}}", check_tcp = "[::1]:8081" }}

[[group]]
id = "web6"
members = ["web6-ip", "web6-svc"]
failback = "manual"
"#
            ),
            cluster_extra: String::new(),
        },
        &lab,
    )
    .unwrap();
    c.start_all().unwrap();
    let addr = format!("[{vip6}]:8081");
    let first = c
        .wait_for(T, "web6 running", |st| (st.len() == 3).then(|| web_node(st)).flatten())
        .await
        .unwrap();
    wait_answer(&lab, &addr, &first, T).unwrap();
    let w = Watch::start(&lab, &[1, 2, 3], vip6.parse().unwrap(), 8081);
    let at = Instant::now();
    lab.crash(num(&first)).unwrap();
    c.reap(&first).unwrap();
    let second = running_on(&c, "web6 moved", |n| n != first).await;
    wait_answer(&lab, &addr, &second, T).unwrap();
    let log = finish(w);
    eprintln!("IPv6 VIP: client outage {:?} ({first} -> {second})", outage(&log, at));
}

/// Two nodes and `phalanx witness` (on the lab's third host). Split the nodes from each other
/// while both still reach the witness: exactly one side keeps quorum, the one the witness backs
/// (the leader's); it fences the other and keeps or takes over web, one VIP holder throughout.
/// Healed and restarted, the fenced node rejoins; then crashing web's holder moves web to the
/// other node, which is quorate with the witness' vote alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_and_a_witness_a_split_leaves_exactly_one_side_quorate() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let mut c = started(&lab, 2, web_config(exe(), "manual", None), "");
    web_running(&c, 2).await;
    let leader = c.wait_stable(T).await.unwrap();
    let loser = if leader == "n1" { "n2" } else { "n1" };
    let before = c.status(&leader).await.unwrap();
    let w = before.witness.clone().expect("the config has a witness");
    assert_eq!(
        w.vote.as_deref(),
        Some(leader.as_str()),
        "the witness backs the leader: {w:?}"
    );
    let watch = Watch::start(&lab, &[1, 2], VIP.parse().unwrap(), PORT);
    lab.partition(&[1], &[2], false).unwrap();
    c.wait_for(T, "the witness' side to fence the other and run web", |st| {
        let s = st.get(&leader)?;
        let fenced = s.nodes.iter().any(|n| n.name == loser && n.fence.fenced);
        let one: std::collections::BTreeMap<_, _> = [(leader.clone(), s.clone())].into();
        (s.quorum && s.witness.as_ref()?.granted && fenced && web_node(&one)? == leader).then_some(())
    })
    .await
    .unwrap();
    wait_answer(&lab, &vip_addr(), &leader, T).unwrap();
    if let Ok(s) = c.status(loser).await {
        assert!(!s.quorum, "{loser} answers after the fence and believes it has quorum");
    }
    lab.heal_network().unwrap();
    c.reap(loser).unwrap();
    c.restart(loser, T).await.unwrap();
    c.wait_stable(T).await.unwrap();
    let holder = c
        .wait_for(T, "one cluster again", |st| {
            (st.len() == 2).then(|| web_node(st)).flatten()
        })
        .await
        .unwrap();
    let survivor = if holder == "n1" { "n2" } else { "n1" };
    lab.crash(num(&holder)).unwrap();
    c.reap(&holder).unwrap();
    c.wait_for(T, "the survivor to run web with the witness' vote", |st| {
        let s = st.get(survivor)?;
        (s.quorum && s.witness.as_ref()?.granted && web_node(st)? == survivor).then_some(())
    })
    .await
    .unwrap();
    wait_answer(&lab, &vip_addr(), survivor, T).unwrap();
    finish(watch);
}

/// The nemesis, short (`tests/lab/nemesis --steps 50 --seed 2026`, about 3 minutes): every
/// kind of fault over a 3-node lab cluster, with the checkers running throughout. Any safety
/// violation fails it; so does a cluster that stops settling after its faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_short_run_finds_no_violation() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    drop(lab); // the nemesis builds its own lab; the guard keeps other lab tests out meanwhile
    let seed = std::env::var("PHALANX_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026);
    let r = phalanx_lab::nemesis::run(phalanx_lab::nemesis::Args {
        steps: 50,
        seed,
        target: phalanx_lab::nemesis::Target::Phalanx,
        nodes: 3,
        only: None,
        exe: exe().to_path_buf(),
        json: true,
    })
    .await
    .unwrap();
    eprint!("{}", phalanx_lab::nemesis::render(&r));
    assert_eq!(r.violations, 0, "seed {seed}: {:?}", r.violation_details);
    assert_eq!(r.faults, 50, "seed {seed}: {:?}", r.notes);
    assert!(r.fault_kinds.len() >= 7, "every kind of fault ran: {:?}", r.fault_kinds);
    assert!(r.fences > 0 && r.failovers > 0, "the faults did something: {r:?}");
    assert!(
        r.unsettled <= 2,
        "seed {seed}: steps that did not settle: {:?}",
        r.notes
    );
}

/// Real fencing over a real protocol: each node's power is an emulated BMC (Debian's `ipmi_sim`)
/// whose chassis-control hook crashes that lab node, and the cluster's fence devices are Debian's
/// `fence_ipmilan`. Freeze web's node: the others fence it through its BMC (not the lab's power
/// switch, which is not in its fencing levels), then web moves, one VIP holder throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_ipmilan_against_ipmi_sim_fences_a_frozen_node() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    for tool in ["/usr/bin/ipmi_sim", "/usr/bin/ipmitool", "/usr/sbin/fence_ipmilan"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: .ci/run installs openipmi, ipmitool and fence-agents"
        );
    }
    let scratch = std::env::temp_dir().join(format!("phalanx-bmc-{}", std::process::id()));
    let dirs: Vec<PathBuf> = (1..=3).map(|i| scratch.join(format!("n{i}"))).collect();
    let mut bmcs: Vec<std::process::Child> = (1..=3)
        .map(|i| phalanx_lab::lab::start_bmc(&lab, i, &dirs[i - 1]).unwrap())
        .collect();
    let mut c = started(
        &lab,
        3,
        web_config(exe(), "manual", None) + &phalanx_lab::lab::bmc_fencing_config(3, &dirs),
        "",
    );
    let first = web_running(&c, 3).await;
    wait_answer(&lab, &vip_addr(), &first, T).unwrap();
    let w = watch(&lab);
    lab.pause(num(&first));
    let second = c
        .wait_for(T, "web moved after the fence", |st| {
            let others = without(st, &first);
            let fenced_by = fenced_in(&others, &first)?.fenced_by?;
            (others.len() == 2)
                .then(|| web_node(&others))
                .flatten()
                .map(|n| (n, fenced_by))
        })
        .await
        .unwrap();
    let (second, fenced_by) = second;
    assert!(fenced_by.contains(&format!("ipmi-{first}")), "fenced by {fenced_by}");
    wait_answer(&lab, &vip_addr(), &second, T).unwrap();
    let hook = std::fs::read_to_string(dirs[num(&first) - 1].join("hook.log")).unwrap_or_default();
    assert!(
        hook.contains("power 0"),
        "the BMC's chassis hook powered {first} off: {hook:?}"
    );
    assert!(
        c.fence_events().iter().all(|(_, plug, _)| *plug != first),
        "the power switch was not used: {:?}",
        c.fence_events()
    );
    finish(w);
    c.reap(&first).unwrap();
    for b in &mut bmcs {
        let _ = b.kill();
        let _ = b.wait();
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Service failure in the lab: web's service is killed on its node. Its monitor fails, the
/// cluster recovers web (restart in place: the node is healthy, nothing is fenced), the failure
/// is counted, and the client gets answers through the VIP again; one holder throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_failure_is_recovered_without_fencing() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let c = cluster(&lab, "manual", None);
    let active = web_running(&c, 3).await;
    wait_answer(&lab, &vip_addr(), &active, T).unwrap();
    let w = watch(&lab);
    let killed_at = Instant::now();
    let killed = phalanx_lab::lab::kill_processes(&lab, num(&active), &["demo-service"]);
    assert_eq!(killed, 1, "web's service was running on {active}");
    let now = c
        .wait_for(T, "the failure counted and web running again", |st| {
            let s = st.get(&active)?;
            let svc = s.resources.iter().find(|r| r.id == "web-svc")?;
            (svc.failures.values().sum::<usize>() >= 1)
                .then(|| web_node(st))
                .flatten()
        })
        .await
        .unwrap();
    wait_answer(&lab, &vip_addr(), &now, T).unwrap();
    for s in c.statuses().await.values() {
        assert!(
            s.nodes.iter().all(|n| n.fence.fenced_at_ms.is_none()),
            "a service failure fenced a node: {:?}",
            s.nodes
        );
    }
    let log = finish(w);
    eprintln!(
        "service killed on {active}: back on {now} after {:?}",
        outage(&log, killed_at)
    );
}

/// Storage failure in the lab: the state directory of a resource becomes read-only on its node
/// (a read-only bind mount inside that node's mount namespace, as a failing disk remounted
/// read-only). Its monitor fails, its stop fails too, so the node is fenced (the lab's power
/// switch) and the resource is recovered on a node whose storage works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_failure_fences_the_node_and_moves_the_resource() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let dir = std::env::temp_dir().join(format!("phalanx-lab-storage-{}", std::process::id()));
    let d = format!("{}/${{OCF_RESKEY_CRM_meta_on_node}}", dir.display());
    let store = format!(
        "\n[[resource]]\nid = \"store\"\nagent = \"exec\"\nparams = {{ start = \"mkdir -p {d} && date > {d}/alive\", stop = \"rm -f {d}/alive\", monitor = \"test -f {d}/alive || exit 7; date > {d}/alive\" }}\nmonitor = {{ interval = \"500ms\", timeout = \"5s\" }}\nmigration_threshold = 1\n"
    );
    let mut c = started(&lab, 3, web_config(exe(), "manual", None) + &store, "");
    let store_on = |st: &std::collections::BTreeMap<String, phalanx_node::StatusReport>| {
        let mut on = st.values().map(|s| {
            let r = s.resources.iter().find(|r| r.id == "store")?;
            (r.running.len() == 1 && s.plan_pending == 0)
                .then(|| r.running.keys().next().cloned())
                .flatten()
        });
        let first = on.next()??;
        on.all(|o| o.as_deref() == Some(first.as_str())).then_some(first)
    };
    let from = c
        .wait_for(T, "store running", |st| (st.len() == 3).then(|| store_on(st)).flatten())
        .await
        .unwrap();
    let w = watch(&lab);
    // Inside the node's mount namespace (its daemon's): what its agents see.
    let pid = c.node(&from).unwrap().pid().unwrap().to_string();
    let p = dir.join(&from).display().to_string();
    for args in [vec!["--bind", &p, &p], vec!["-o", "remount,bind,ro", &p]] {
        let ok = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-m", "mount"])
            .args(&args)
            .status()
            .unwrap();
        assert!(ok.success(), "mount {args:?} in {from}'s mount namespace");
    }
    let to = c
        .wait_for(T, "store recovered elsewhere after the fence", |st| {
            let others = without(st, &from);
            let fenced = fenced_in(&others, &from).is_some();
            (fenced && others.len() == 2).then(|| store_on(&others)).flatten()
        })
        .await
        .unwrap();
    assert_ne!(to, from);
    finish(w);
    c.reap(&from).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An asymmetric link, with `fencing = "watchdog"` (no fence device to shoot anyone): frames
/// from web's node to the others are dropped, frames to it still arrive. It hears everyone, but
/// the others' heartbeats say they do not hear it, so it knows it has no quorum (reachability
/// counts both ways) and drops the VIP itself, while the majority recovers web after the lease.
/// One VIP holder throughout; healed, it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_link_leaves_the_node_without_quorum_and_one_vip_holder() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let (c, active, w) = watchdog_cluster_serving(&lab).await;
    let i = num(&active);
    let others: Vec<usize> = (1..=3).filter(|x| *x != i).collect();
    lab.partition(&[i], &others, true).unwrap();
    c.wait_for(T, "the one-way node to know it has no quorum and why", |st| {
        let s = st.get(&active)?;
        // It still hears the others, and its status says they do not hear it.
        let one_way = s
            .nodes
            .iter()
            .filter(|n| !n.is_self)
            .all(|n| n.state == "online" && n.hears_me == Some(false));
        (!s.quorum && one_way).then_some(())
    })
    .await
    .unwrap();
    let other = recovered_by_majority(&c, &active).await;
    wait_answer(&lab, &vip_addr(), &other, T).unwrap();
    lab.heal_network().unwrap();
    c.wait_for(T, "one cluster again", |st| {
        (st.len() == 3).then(|| web_node(st)).flatten()
    })
    .await
    .unwrap();
    finish(w);
}

/// The longest run of unanswered probes in a client log: from the first failed probe of the
/// run to the next answered one.
fn longest_outage(log: &phalanx_lab::lab::ClientLog) -> Duration {
    let mut longest = Duration::ZERO;
    let mut failing_since: Option<Instant> = None;
    for (t, who) in log {
        match (who, failing_since) {
            (None, None) => failing_since = Some(*t),
            (Some(_), Some(since)) => {
                longest = longest.max(*t - since);
                failing_since = None;
            }
            _ => {}
        }
    }
    longest
}

/// A rolling restart of all three nodes, one at a time with `phalanx node stop` (then the daemon
/// started again), under the lab client probing the VIP every 20 ms: nothing is fenced (no
/// fence event, no fenced record), one holder of the VIP throughout, and the client's longest
/// outage is a planned move's (web stops on its node and starts on the next; no node lost, so
/// no detection and no fence). Measured: 41-107 ms in 40 runs (README), 180 ms once in CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_node_stop_fences_nothing_and_moves_web_as_planned() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let mut c = cluster(&lab, "manual", None);
    let first = web_running(&c, 3).await;
    wait_answer(&lab, &vip_addr(), &first, T).unwrap();
    let w = watch(&lab);
    for n in ["n1", "n2", "n3"] {
        let (code, out, err) = c.cli(&["node", "stop", n]).unwrap();
        assert_eq!(code, 0, "node stop {n}: {out}{err}");
        let status = c.wait_exit(n, T).await.unwrap();
        assert!(status.success(), "{n} exited with {status}");
        c.start(n).unwrap();
        // Back as the replicated state records it (what `node stop` checks quorum against), not
        // only as the mesh sees it.
        c.wait_for(T, &format!("{n} back online, web running"), |st| {
            let all_online = st.len() == 3
                && st.values().all(|s| {
                    s.nodes
                        .iter()
                        .all(|x| x.state == "online" && x.liveness == phalanx_core::Liveness::Online)
                });
            all_online.then(|| web_node(st)).flatten()
        })
        .await
        .unwrap();
    }
    let last = web_running(&c, 3).await;
    wait_answer(&lab, &vip_addr(), &last, T).unwrap();
    let log = finish(w);
    let longest = longest_outage(&log);
    eprintln!("rolling restart: web {first} -> {last}, longest client outage {longest:?}");
    assert!(c.fence_events().is_empty(), "fenced: {:?}", c.fence_events());
    for s in c.statuses().await.values() {
        assert!(
            s.nodes.iter().all(|n| n.fence.fenced_at_ms.is_none()),
            "a node stop fenced a node: {:?}",
            s.nodes
        );
    }
    // Not a failover: nobody was lost (a stop ends as `node_stopped`), so every move was planned.
    let (code, out, err) = c
        .cli(&["events", "--kind", "node_lost,node_stopped", "--json"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let kinds: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].to_string())
        .collect();
    assert!(
        !kinds.iter().any(|k| k.contains("node_lost")),
        "a node stop was seen as a loss: {out}"
    );
    assert!(
        kinds.iter().filter(|k| k.contains("node_stopped")).count() >= 3,
        "{out}"
    );
    // web moved before its node left, not after the node came back (a daemon restart takes
    // seconds). The outage's length is a measurement, not a test (README: p50 43 ms, ≈ 1/7 of a
    // failover's, from the command there); a noisy machine stretched it to 180 ms once.
    assert!(
        longest <= Duration::from_secs(1),
        "the longest outage ({longest:?}) lasted as long as a restart: web waited for its node"
    );
}

/// Whether a log line names lab node `i`: its addresses (`10.77.L.i:`), its Raft id as openraft
/// prints a target (`target=i`, `target: i`, `3->i`), or its name as a whole word.
fn mentions(line: &str, i: usize) -> bool {
    let id = i.to_string();
    let words: Vec<&str> = line.split(|ch: char| !ch.is_ascii_alphanumeric()).collect();
    words.contains(&format!("n{i}").as_str())
        || (0..2).any(|l| line.contains(&format!("10.77.{l}.{i}:")))
        || ["target=", "target: ", "->"].iter().any(|p| {
            line.match_indices(p)
                .any(|(at, _)| line[at + p.len()..].split(|ch: char| !ch.is_ascii_digit()).next() == Some(id.as_str()))
        })
}

/// Logs (issue 13): n3 cut off from n1 and n2 for 10 s on every link. Raft keeps calling the
/// peer it cannot reach (replication from the leader, votes from the isolated node); each file
/// must hold at most a few lines per peer for those 10 s, and no file any escape character
/// (the daemons' stderr is a file, not a terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_partition_logs_a_few_lines_per_peer_and_no_escape_codes() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let up = Instant::now();
    let c = started(&lab, 3, String::new(), "");
    c.wait_stable(T).await.unwrap();
    // A cluster up for more than one rate-limit interval: what its start-up logged (peers not
    // up yet) no longer holds back the partition's first lines.
    tokio::time::sleep_until((up + Duration::from_secs(11)).into()).await;
    let names = ["n1", "n2", "n3"];
    let size = |n: &str| std::fs::metadata(c.log_path(n)).map(|m| m.len()).unwrap_or(0);
    let from: Vec<u64> = names.iter().map(|n| size(n)).collect();
    lab.partition(&[3], &[1, 2], false).unwrap();
    let cut = Instant::now();
    // Proof the cut took effect: the majority loses n3.
    c.wait_for(T, "n1 and n2 see n3 offline", |st| {
        ["n1", "n2"]
            .iter()
            .all(|me| {
                st.get(*me)
                    .is_some_and(|s| s.nodes.iter().any(|n| n.name == "n3" && n.state == "offline"))
            })
            .then_some(())
    })
    .await
    .unwrap();
    // The fault lasts 10 s (not a synchronisation: the length of the partition under test).
    tokio::time::sleep_until((cut + Duration::from_secs(10)).into()).await;
    let during: Vec<String> = names
        .iter()
        .zip(&from)
        .map(|(n, at)| {
            let bytes = std::fs::read(c.log_path(n)).unwrap();
            String::from_utf8_lossy(&bytes[*at as usize..]).into_owned()
        })
        .collect();
    lab.heal_network().unwrap();
    c.wait_stable(T).await.unwrap();
    // What was held back is said once its interval (10 s from the first line) is over: wait
    // for the count of the partition's RPC errors.
    let deadline = Instant::now() + T;
    let summarised = |n: &str, at: u64| {
        let bytes = std::fs::read(c.log_path(n)).unwrap_or_default();
        String::from_utf8_lossy(&bytes[at as usize..])
            .lines()
            .any(|l| l.contains("were not logged") && (l.contains("Unreachable") || l.contains("timeout")))
    };
    while !names.iter().zip(&from).any(|(n, at)| summarised(n, *at)) {
        assert!(Instant::now() < deadline, "no line says how many lines were held back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The whole episode: the partition, the heal, and the lines saying how many were held back.
    let episode: Vec<String> = names
        .iter()
        .zip(&from)
        .map(|(n, at)| {
            let bytes = std::fs::read(c.log_path(n)).unwrap();
            String::from_utf8_lossy(&bytes[*at as usize..]).into_owned()
        })
        .collect();
    let per_peer = |texts: &[String], what: &str| {
        let mut worst = 0;
        for (me, text) in names.iter().zip(texts) {
            eprintln!("--- {me}: {} lines {what}", text.lines().count());
            for line in text.lines() {
                eprintln!("{line}");
            }
            for peer in (1..=3).filter(|p| *me != format!("n{p}")) {
                let n = text.lines().filter(|l| mentions(l, peer)).count();
                eprintln!("{me}: {n} lines about n{peer} {what}");
                worst = worst.max(n);
            }
        }
        worst
    };
    let worst = per_peer(&during, "during the partition");
    let worst_episode = per_peer(&episode, "from the cut until healed");
    for n in names {
        let bytes = std::fs::read(c.log_path(n)).unwrap();
        assert!(!bytes.contains(&0x1b), "{n}'s log holds an escape character");
    }
    // Before the rate limit: 210-228 lines about one peer in these 10 s; with it, 7 (3 of them
    // the mesh's link down x2 and node dead), and a margin for an interval that rolls over just
    // before the 10 s are read (README, Logs).
    assert!(
        worst <= 10,
        "a 10 s partition wrote {worst} lines about one peer in one log"
    );
    assert!(
        worst_episode <= 16,
        "the partition and its heal wrote {worst_episode} lines about one peer"
    );
}

/// The lab's balancer: a clone of the demo service on every node (port [`PORT`]) behind a
/// `[[balancer]]` listening on the VIP (port 80), grouped with it.
/// Run the CLI against the lab cluster; it must succeed.
fn cli_ok(c: &LocalCluster, args: &[&str]) {
    let (code, out, err) = c.cli(args).unwrap();
    assert_eq!(code, 0, "phalanx {}: {out}{err}", args.join(" "));
}

fn balancer_config(exe: &std::path::Path, mode: &str) -> String {
    let exe = exe.display();
    // HTTP mode: HTTP checks of /health, a short server_timeout (a request in flight to a host
    // that dies is tried again elsewhere after it), and the sticky balancer's cookie.
    let (check, more, sticky) = match mode {
        "http" => (
            r#"kind = "http", http_path = "/health""#,
            "server_timeout = \"1s\"",
            r#"cookie = "PHALANXID", max_idle = "10m""#,
        ),
        _ => (r#"kind = "tcp""#, "", r#"source = true, max_idle = "10m""#),
    };
    format!(
        r#"
[[resource]]
id = "web-svc"
agent = "process"
params = {{ command = "{exe} demo-service --listen 0.0.0.0:{PORT} --name ${{OCF_RESKEY_CRM_meta_on_node}}", check_tcp = "127.0.0.1:{PORT}" }}
monitor = {{ interval = "500ms", timeout = "5s" }}

[[clone]]
id = "webs"
resource = "web-svc"

[[resource]]
id = "front-ip"
agent = "vip"
params = {{ address = "{VIP}/24" }}
monitor = {{ interval = "1s", timeout = "5s" }}

[[balancer]]
id = "front"
listen = ["{VIP}:80"]
mode = "{mode}"
algorithm = "weighted"
backends = "webs"
port = {PORT}
check = {{ {check}, interval = "200ms", rise = 2, fall = 3, timeout = "100ms" }}
connect_timeout = "300ms"
{more}

[[balancer]]
id = "front-sticky"
listen = ["{VIP}:81"]
mode = "{mode}"
algorithm = "roundrobin"
backends = "webs"
port = {PORT}
check = {{ {check}, interval = "200ms", rise = 2, fall = 3, timeout = "100ms" }}
connect_timeout = "300ms"
{more}
sticky = {{ {sticky} }}

[[group]]
id = "front-stack"
members = ["front-ip", "front", "front-sticky"]
"#
    )
}

/// The client host's extra addresses, for clients with their own source address.
fn client_sources(lab: &Lab, n: u8) -> Vec<std::net::Ipv4Addr> {
    (1..=n)
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(10, 77, 0, 200 + i);
            let ok = std::process::Command::new("ip")
                .args([
                    "-n",
                    &lab.client_ns(),
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    "eth0",
                ])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "adding {ip} to the client host");
            ip
        })
        .collect()
}

/// One request from the client host with source address `from`: who answered.
fn ask_from(lab: &Lab, from: std::net::Ipv4Addr, addr: &str) -> Option<String> {
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    phalanx_lab::lab::in_netns(&lab.client_ns(), move || {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(rt.block_on(async move {
            let go = async {
                let sock = tokio::net::TcpSocket::new_v4().ok()?;
                sock.bind(std::net::SocketAddr::new(from.into(), 0)).ok()?;
                let mut s = sock.connect(addr).await.ok()?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.ok()?;
                let text = String::from_utf8_lossy(&out).to_string();
                (text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"))
                    .then(|| text.rsplit("\r\n\r\n").next().unwrap_or("").trim().to_string())
            };
            tokio::time::timeout(Duration::from_secs(3), go).await.ok().flatten()
        }))
    })
    .join()
    .ok()?
    .ok()?
}

/// Requests one after another from the client host until `stop`: each one's start and who
/// answered (or why not), with a generous timeout (a request may wait for a redispatch).
fn lb_load(
    lab: &Lab,
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<phalanx_lab::lab::ClientLog>> {
    phalanx_lab::lab::in_netns(&lab.client_ns(), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(rt.block_on(async move {
            let mut log = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                log.push((t, phalanx::service::probe(&addr, Duration::from_secs(3)).await));
                tokio::time::sleep_until((t + Duration::from_millis(10)).into()).await;
            }
            log
        }))
    })
}

/// `n` requests from the client host: answers per node.
fn lb_spread(lab: &Lab, addr: &str, n: usize) -> BTreeMap<String, usize> {
    let addr = addr.to_string();
    phalanx_lab::lab::in_netns(&lab.client_ns(), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let who = rt.block_on(phalanx::service::probe(&addr, Duration::from_secs(3)));
            *counts.entry(who.unwrap_or_else(|| "(failed)".into())).or_insert(0) += 1;
        }
        Ok(counts)
    })
    .join()
    .unwrap()
    .unwrap()
}

/// Where `front-stack` runs and how many instances of `webs` run, once every view agrees.
fn front_and_instances(st: &BTreeMap<String, StatusReport>) -> Option<(String, usize)> {
    let mut out = None;
    for s in st.values() {
        if s.plan_pending > 0 {
            return None;
        }
        let on = |id: &str| {
            s.resources
                .iter()
                .find(|r| r.id == id)
                .map(|r| r.running.keys().cloned().collect::<Vec<_>>())
        };
        let (ip, lb, sticky) = (on("front-ip")?, on("front")?, on("front-sticky")?);
        if ip.len() != 1 || ip != lb || ip != sticky {
            return None;
        }
        let instances = s
            .resources
            .iter()
            .filter(|r| r.id.starts_with("web-svc"))
            .map(|r| r.running.len())
            .sum();
        let here = (ip[0].clone(), instances);
        if out.as_ref().is_some_and(|o| *o != here) {
            return None;
        }
        out = Some(here);
    }
    out
}

/// The balancer in the lab (issue 14): round robin over a clone's instances on three hosts, as
/// a client host sees it through the VIP; a backend host crashed under load: no request fails
/// (connect failures are redispatched) and it leaves rotation; a drained instance takes no new
/// request; and when the balancer's host crashes, the VIP and the balancer move together and
/// the new balancer serves every live instance, knowing the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_behind_the_vip_spreads_survives_a_backend_crash_and_fails_over() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let mut c = started(&lab, 3, balancer_config(exe(), "tcp"), "");
    let addr = format!("{VIP}:80");
    let front = front_on(&c, "the balancer and three instances", 3, 3, |_| true).await;
    phalanx_lab::lab::wait_any_answer(&lab, &addr, T).unwrap();
    let counts = lb_spread(&lab, &addr, 30);
    assert_eq!(
        counts,
        BTreeMap::from([("n1".into(), 10), ("n2".into(), 10), ("n3".into(), 10)]),
        "equal weights through the VIP"
    );
    // An operator's weight: smooth weighted round robin gives exactly 3:1:1 over 50 requests.
    cli_ok(&c, &["balancer", "weight", "web-svc@n1", "3", "--balancer", "front"]);
    wait_lb(&c, "front", "weight 3 on web-svc@n1", |v| {
        v["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["name"] == "web-svc@n1"))
            .is_some_and(|b| b["weight"] == 3)
    })
    .await;
    let counts = lb_spread(&lab, &addr, 50);
    assert_eq!(
        counts,
        BTreeMap::from([("n1".into(), 30), ("n2".into(), 10), ("n3".into(), 10)]),
        "weights 3:1:1"
    );
    cli_ok(
        &c,
        &["balancer", "weight", "web-svc@n1", "config", "--balancer", "front"],
    );

    // `phalanx drill lb-backend-down` from the client host: an instance on another host than
    // the balancer's is killed, probed through the VIP every 10 ms; the monitor restarts it and
    // the run ends with every backend up again, within the scenario's bound (100 ms: no outage),
    // never fenced.
    let probe = format!("http://{addr}/");
    let (code, out, err) = c
        .cli(&[
            "drill",
            "lb-backend-down",
            "--resource",
            "front",
            "--probe",
            &probe,
            "--json",
        ])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let run = &r["runs"][0];
    let backend = run["from"].as_str().unwrap_or_default();
    assert!(
        backend.starts_with("web-svc@") && !backend.ends_with(&format!("@{front}")),
        "{r:#}"
    );
    assert_eq!(run["to"], run["from"], "{r:#}");
    assert_eq!(run["within_bound"], true, "{r:#}");
    assert!(run["fenced_ms"].is_null() && run["detected_ms"].is_u64(), "{r:#}");
    eprintln!(
        "lb-backend-down {backend}: {} of {} probes failed, RTO {} ms",
        run["failed"], run["probes"], run["rto_ms"]
    );

    // A backend host (not the balancer's) crashes under load: no request fails.
    let (victim, stop, load, crash_at) = crash_under_load(&lab, &addr, &front).await;
    c.reap(&victim).unwrap();
    // Out of rotation: marked down (checks or live traffic) or gone from the backends (its
    // host fenced), as the balancer's status says.
    let gone = format!("web-svc@{victim}");
    wait_lb(&c, "front", "out of rotation", |v| {
        v["backends"].is_array() && lb_state(v, &gone).is_none_or(|s| s != "up")
    })
    .await;
    let out_after = crash_at.elapsed();
    // fall × interval = 600 ms, plus the failure detector (300 ms) when the crashed host was
    // the backend's checker, plus the status poll.
    eprintln!("{gone} out of rotation {out_after:?} after the crash");
    assert!(
        out_after < Duration::from_millis(2500),
        "{gone} left rotation after {out_after:?}"
    );
    front_on(&c, "the crashed host's instance gone", 2, 2, |_| true).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = load.join().unwrap().unwrap();
    let failed = log.iter().filter(|(_, w)| w.is_none()).count();
    // In TCP mode a request already sent to the crashing host when it died cannot be replayed
    // (the proxy does not know the protocol): only requests started after the crash must all
    // succeed (their connects to the dead host are redispatched).
    let failed_after = log.iter().filter(|(t, w)| *t >= crash_at && w.is_none()).count();
    eprintln!(
        "{} requests while {victim} crashed: {failed} failed, {failed_after} of those started after the crash",
        log.len()
    );
    assert!(log.len() > 20, "the load ran");
    assert_eq!(failed_after, 0, "requests started after {victim} crashed failed");
    let counts = lb_spread(&lab, &addr, 20);
    assert!(
        !counts.contains_key(&victim) && counts.values().sum::<usize>() == 20,
        "{counts:?}"
    );

    // Drain the other live instance: every new request goes to the balancer's own host.
    let other = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != front && *n != victim)
        .unwrap()
        .to_string();
    let backend = format!("web-svc@{other}");
    cli_ok(
        &c,
        &[
            "balancer",
            "drain",
            &backend,
            "--balancer",
            "front",
            "--wait",
            "--timeout",
            "30s",
        ],
    );
    let counts = lb_spread(&lab, &addr, 10);
    assert_eq!(
        counts,
        BTreeMap::from([(front.clone(), 10)]),
        "a drained instance takes no request"
    );
    cli_ok(
        &c,
        &[
            "balancer",
            "ready",
            &backend,
            "--balancer",
            "front",
            "--wait",
            "--timeout",
            "30s",
        ],
    );

    // The crashed host comes back; then the balancer's host crashes: VIP and balancer move
    // together, and the new balancer serves both live instances.
    lab.revive(num(&victim)).unwrap();
    c.restart(&victim, T).await.unwrap();
    front_on(&c, "three instances again", 3, 3, |_| true).await;
    // Sticky clients (their own source addresses) through the second balancer.
    let sticky_addr = format!("{VIP}:81");
    wait_lb(&c, "front-sticky", "three backends up", |v| up_count(v) == 3).await;
    let sources = client_sources(&lab, 9);
    let mut stuck = BTreeMap::new();
    for from in &sources {
        let who: Vec<Option<String>> = (0..3).map(|_| ask_from(&lab, *from, &sticky_addr)).collect();
        assert!(who[0].is_some() && who.iter().all(|w| *w == who[0]), "{from}: {who:?}");
        stuck.insert(*from, who[0].clone().unwrap_or_default());
    }
    let used: std::collections::BTreeSet<&String> = stuck.values().collect();
    assert!(used.len() >= 2, "sticky clients are spread: {stuck:?}");
    // Committed every 0.5 s: wait until the cluster's table holds them all.
    wait_lb(&c, "front-sticky", "the stick table committed", |v| {
        v["sticky_committed"]
            .as_u64()
            .is_some_and(|n| n >= sources.len() as u64)
    })
    .await;
    lab.crash(num(&front)).unwrap();
    c.reap(&front).unwrap();
    let second = front_on(&c, "the balancer moved with its VIP", 2, 2, |n| n != front).await;
    phalanx_lab::lab::wait_any_answer(&lab, &addr, T).unwrap();
    let counts = lb_spread(&lab, &addr, 20);
    assert_eq!(counts.len(), 2, "both live instances serve behind {second}: {counts:?}");
    assert!(!counts.contains_key("(failed)"), "{counts:?}");
    // Sticky clients land where they were (those on the crashed host, elsewhere).
    for (from, was) in stuck.iter().rev() {
        let now = ask_from(&lab, *from, &sticky_addr);
        if *was == front {
            assert!(now.is_some_and(|n| n != front), "{from} was on the crashed host");
        } else {
            assert_eq!(
                now.as_ref(),
                Some(was),
                "{from} changed backends across the balancer failover"
            );
        }
    }
}

/// Requests through `addr` from the client host, then a crash of a backend host that is not
/// `front`: (the victim, the load's stop switch, the load, when the crash was done).
async fn crash_under_load(
    lab: &Lab,
    addr: &str,
    front: &str,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<anyhow::Result<phalanx_lab::lab::ClientLog>>,
    Instant,
) {
    let victim = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != front)
        .unwrap()
        .to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = lb_load(lab, addr.to_string(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await; // load before the crash (not a sync)
    lab.crash(num(&victim)).unwrap();
    (victim, stop, load, Instant::now())
}

/// A WebSocket through the balancer, held open by a thread in the client namespace.
struct Ws {
    ask: tokio::sync::mpsc::UnboundedSender<String>,
    answers: std::sync::mpsc::Receiver<Option<String>>,
}

impl Ws {
    /// Open `url` (None: the handshake failed).
    fn open(lab: &Lab, url: String) -> Option<Ws> {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (ask, mut asked) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (answer, answers) = std::sync::mpsc::channel::<Option<String>>();
        let _detached = phalanx_lab::lab::in_netns(&lab.client_ns(), move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let Ok(Ok((mut ws, _))) =
                    tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url.as_str())).await
                else {
                    let _ = answer.send(None);
                    return;
                };
                let _ = answer.send(Some("open".into()));
                while let Some(line) = asked.recv().await {
                    let got = async {
                        ws.send(Message::text(line)).await.ok()?;
                        match ws.next().await? {
                            Ok(Message::Text(t)) => Some(t.to_string()),
                            _ => None,
                        }
                    };
                    let _ = answer.send(tokio::time::timeout(Duration::from_secs(5), got).await.ok().flatten());
                }
                let _ = ws.close(None).await;
            });
            Ok(())
        });
        (answers.recv_timeout(Duration::from_secs(10)).ok()?.is_some()).then_some(Ws { ask, answers })
    }

    /// Send `line`; the answer (None: none within 5 s).
    fn ask(&self, line: &str) -> Option<String> {
        self.ask.send(line.to_string()).ok()?;
        self.answers.recv_timeout(Duration::from_secs(10)).ok().flatten()
    }
}

/// One HTTP/1.0 GET from the client host with `cookie`: who answered and the sticky cookie it
/// set (`NAME=VALUE`), if any.
fn get_with_cookie(lab: &Lab, addr: &str, cookie: Option<&str>) -> Option<(String, Option<String>)> {
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let request = match cookie {
        Some(c) => format!("GET / HTTP/1.0\r\nCookie: {c}\r\n\r\n"),
        None => "GET / HTTP/1.0\r\n\r\n".to_string(),
    };
    phalanx_lab::lab::in_netns(&lab.client_ns(), move || {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(rt.block_on(async move {
            let go = async {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                s.write_all(request.as_bytes()).await.ok()?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.ok()?;
                let text = String::from_utf8_lossy(&out).to_string();
                let (head, body) = text.split_once("\r\n\r\n")?;
                if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
                    return None;
                }
                let set = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("set-cookie: ")
                            .or_else(|| l.strip_prefix("Set-Cookie: "))
                    })
                    .and_then(|v| v.split(';').next())
                    .map(str::to_string);
                Some((body.trim().to_string(), set))
            };
            tokio::time::timeout(Duration::from_secs(5), go).await.ok().flatten()
        }))
    })
    .join()
    .ok()?
    .ok()?
}

/// `phalanx balancer status ID --json` (Null when it does not answer).
fn lb_json(c: &LocalCluster, id: &str) -> serde_json::Value {
    let (_, out, _) = c.cli(&["balancer", "status", id, "--json"]).unwrap();
    serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default()[0]["status"].take()
}

/// Poll balancer `id`'s status until `ok` holds of it (its `status` JSON), within [`T`].
async fn wait_lb(c: &LocalCluster, id: &str, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + T;
    loop {
        let v = lb_json(c, id);
        if ok(&v) {
            return;
        }
        assert!(Instant::now() < deadline, "{id}: never {what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A backend's state in a balancer's status (None: not among its backends).
fn lb_state<'a>(v: &'a serde_json::Value, backend: &str) -> Option<&'a str> {
    v["backends"].as_array()?.iter().find(|b| b["name"] == backend)?["state"].as_str()
}

/// How many of a status's backends are up.
fn up_count(v: &serde_json::Value) -> usize {
    v["backends"]
        .as_array()
        .map_or(0, |bs| bs.iter().filter(|b| b["state"] == "up").count())
}

/// Wait until every one of `nodes` views agrees that the front stack runs on a node `where_`
/// accepts, with `instances` instances of the service; that node.
async fn front_on(
    c: &LocalCluster,
    what: &str,
    nodes: usize,
    instances: usize,
    where_: impl Fn(&str) -> bool,
) -> String {
    c.wait_for(T, what, |st| {
        (st.len() == nodes)
            .then(|| front_and_instances(st))
            .flatten()
            .filter(|(n, k)| *k == instances && where_(n))
            .map(|(n, _)| n)
    })
    .await
    .unwrap()
}

/// HTTP mode in the lab (issue 14): a WebSocket through the VIP survives a config apply that
/// does not touch the balancer, and holds its backend busy so that `drain --wait` waits for it
/// while no new request reaches that backend; a backend host crashed under load fails no
/// request (retries, redispatch); and after the balancer's host crashes, clients holding the
/// sticky cookie land on the backends they had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_balancer_keeps_websockets_drains_retries_and_sticks_across_failover() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let mut c = started(&lab, 3, balancer_config(exe(), "http"), "");
    let addr = format!("{VIP}:80");
    let front = front_on(&c, "the balancers and three instances", 3, 3, |_| true).await;
    phalanx_lab::lab::wait_any_answer(&lab, &addr, T).unwrap();
    wait_lb(&c, "front", "three backends up", |v| up_count(v) == 3).await;
    let counts = lb_spread(&lab, &addr, 30);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{counts:?}");

    // A WebSocket through the balancer, then a config apply that adds an unrelated resource.
    let ws = Ws::open(&lab, format!("ws://{addr}/ws")).expect("the WebSocket opens through the balancer");
    let first = ws.ask("hello").expect("an answer");
    let (held_on, _) = first.split_once(": ").expect("NAME: hello");
    let held_on = held_on.to_string();
    let text = std::fs::read_to_string(&c.config_path).unwrap();
    let newer = c.config_path.with_extension("newer.toml");
    std::fs::write(
        &newer,
        format!("{text}\n[[resource]]\nid = \"unrelated\"\nagent = \"ocf:heartbeat:Dummy\"\n"),
    )
    .unwrap();
    cli_ok(&c, &["config", "apply", newer.to_str().unwrap(), "--yes"]);
    c.wait_for(T, "the unrelated resource started", |st| {
        st.values()
            .all(|s| s.plan_pending == 0 && s.resources.iter().any(|r| r.id == "unrelated" && !r.running.is_empty()))
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        ws.ask("after the apply").as_deref(),
        Some(format!("{held_on}: after the apply").as_str()),
        "the WebSocket survives a config apply that does not touch the balancer"
    );

    // Drain the WebSocket's backend: --wait waits for it, and no new request goes there.
    let backend = format!("web-svc@{held_on}");
    let mut drain = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.client_ns()])
        .arg(exe())
        .arg("--config")
        .arg(&c.config_path)
        .args([
            "balancer",
            "drain",
            &backend,
            "--balancer",
            "front",
            "--wait",
            "--timeout",
            "60s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_lb(&c, "front", "draining", |v| lb_state(v, &backend) == Some("drain")).await;
    let counts = lb_spread(&lab, &addr, 20);
    assert!(
        !counts.contains_key(&held_on) && counts.values().sum::<usize>() == 20,
        "{counts:?}"
    );
    assert!(
        drain.try_wait().unwrap().is_none(),
        "--wait returned with the WebSocket open"
    );
    assert_eq!(
        ws.ask("draining").as_deref(),
        Some(format!("{held_on}: draining").as_str()),
        "an open connection to a draining backend goes on"
    );
    drop(ws);
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = drain.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "--wait never returned after the WebSocket closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "drain --wait failed");
    cli_ok(
        &c,
        &[
            "balancer",
            "ready",
            &backend,
            "--balancer",
            "front",
            "--wait",
            "--timeout",
            "30s",
        ],
    );

    // A backend host (not the balancer's) crashes under load: no request fails.
    let (victim, stop, load, _) = crash_under_load(&lab, &addr, &front).await;
    c.reap(&victim).unwrap();
    front_on(&c, "the crashed host's instance gone", 2, 2, |_| true).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = load.join().unwrap().unwrap();
    let failed = log.iter().filter(|(_, w)| w.is_none()).count();
    eprintln!("HTTP: {} requests while {victim} crashed, {failed} failed", log.len());
    assert!(log.len() > 20, "the load ran");
    assert_eq!(
        failed, 0,
        "requests failed while {victim} crashed (HTTP mode retries them)"
    );

    // The crashed host comes back; cookie clients stick; then the balancer's host crashes.
    lab.revive(num(&victim)).unwrap();
    c.restart(&victim, T).await.unwrap();
    front_on(&c, "three instances again", 3, 3, |_| true).await;
    wait_lb(&c, "front-sticky", "three backends up", |v| up_count(v) == 3).await;
    let sticky_addr = format!("{VIP}:81");
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (who, cookie) = get_with_cookie(&lab, &sticky_addr, None).expect("an answer");
        let cookie = cookie.expect("a sticky cookie is set");
        for _ in 0..2 {
            let (again, _) = get_with_cookie(&lab, &sticky_addr, Some(&cookie)).expect("an answer");
            assert_eq!(again, who, "the cookie sticks");
        }
        clients.push((who, cookie));
    }
    lab.crash(num(&front)).unwrap();
    c.reap(&front).unwrap();
    c.wait_for(T, "the balancers moved with their VIP", |st| {
        (st.len() == 2)
            .then(|| front_and_instances(st))
            .flatten()
            .filter(|(n, k)| *n != front && *k == 2)
    })
    .await
    .unwrap();
    phalanx_lab::lab::wait_any_answer(&lab, &sticky_addr, T).unwrap();
    for (was, cookie) in &clients {
        let (now, _) = get_with_cookie(&lab, &sticky_addr, Some(cookie)).expect("an answer after the failover");
        if *was == front {
            assert_ne!(now, front, "a client of the crashed host goes elsewhere");
        } else {
            assert_eq!(
                &now, was,
                "a cookie client changed backends across the balancer failover"
            );
        }
    }
}

/// The session store under faults (issue 15): 8 clients in the client namespace run a mix of
/// get/gets/set/add/cas/incr/delete for 15 s while the nemesis kills the store's leader, pauses
/// nodes and partitions a node or the leader; the history is linearizable and no acknowledged
/// write is lost. The same check, run against daemons with a planted bug (followers answering
/// reads from their own copy), reports violations: the check can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_store_is_linearizable_under_faults_and_a_planted_stale_read_is_caught() {
    if std::env::var_os("PHALANX_NO_LAB").is_some() {
        eprintln!("lab test skipped: PHALANX_NO_LAB is set");
        return;
    }
    let _one = ONE_LAB.lock().await;
    use phalanx_lab::session_nemesis::{run, Args};
    let check = |seconds: f64, plant_stale_reads: bool| {
        tokio::task::spawn_blocking(move || {
            run(
                Args {
                    runs: 1,
                    seconds,
                    seed: 15,
                    plant_stale_reads,
                },
                |_, seed, r, f| {
                    eprintln!(
                        "seed {seed}: {} ops, {} acked writes, {} lost, {} violations, {} undecided; {} kills, {} pauses, {} partitions {:?}",
                        r.ops, r.acked_writes, r.lost_acked_writes, r.violations.len(), r.unknown, f.kills, f.pauses, f.partitions, f.notes
                    )
                },
            )
        })
    };
    let r = check(15.0, false).await.unwrap().unwrap();
    assert!(r.acked_writes > 100, "{r:?}");
    assert_eq!(r.lost_acked_writes, 0, "{r:?}");
    assert_eq!(r.linearizability_violations, 0, "{r:?}");
    let planted = check(5.0, true).await.unwrap().unwrap();
    assert!(
        planted.linearizability_violations > 0,
        "the planted stale reads went unseen: {planted:?}"
    );
}

/// `phalanx link-check` on the lab's switch: 2 % of the frames through n1's link-1 port are
/// dropped (nftables), so n2's view of n1 on link 1 fails the verdict (loss > 0.1 %) while its
/// other links pass, with round trips from the heartbeats' echoes. Beside it, over the same
/// seconds, seed 004's tool: ping from n2 to n1's link-1 address (its loss counts a request
/// and a reply through the lossy port, about twice the heartbeats' one-way loss).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_check_fails_the_lossy_link_and_passes_the_others() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let c = started(&lab, 3, String::new(), "");
    c.wait_stable(T).await.unwrap();
    lab.loss(1, 1, 2).unwrap();
    const SECONDS: u64 = 45;
    let ping = {
        let (ns, to) = (lab.node_ns(2), lab.node_ip(1, 1).to_string());
        let count = (SECONDS * 10).to_string();
        std::thread::spawn(move || {
            phalanx::netns::command_in(&ns, "ping")
                .args(["-q", "-n", "-i", "0.1", "-W", "1", "-c", &count, &to])
                .output()
        })
    };
    let (code, out, err) = c
        .cli(&[
            "link-check",
            "--node",
            "n2",
            "--seconds",
            &SECONDS.to_string(),
            "--json",
        ])
        .unwrap();
    let ping = ping.join().unwrap().expect("ping runs (iputils-ping)");
    let ping = String::from_utf8_lossy(&ping.stdout);
    lab.heal_network().unwrap();
    assert_eq!(code, 1, "a link fails: exit 1 ({err})");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let peers = r[0]["peers"].as_array().unwrap();
    let link = |peer: &str, l: usize| {
        peers
            .iter()
            .find(|p| p["peer"] == peer)
            .and_then(|p| p["links"].as_array()?.iter().find(|x| x["link"] == l).cloned())
            .unwrap_or_else(|| panic!("no {peer} link {l}: {r:#}"))
    };
    let lossy = link("n1", 1);
    let loss = lossy["loss_pct"].as_f64().unwrap();
    assert_eq!(lossy["pass"], false, "{r:#}");
    assert!((0.2..10.0).contains(&loss), "about 2 %: {r:#}");
    for (peer, l) in [("n1", 0), ("n3", 0), ("n3", 1)] {
        let x = link(peer, l);
        assert_eq!(x["pass"], true, "{peer} link {l}: {r:#}");
        assert!(x["received"].as_u64().unwrap() >= SECONDS * 10 - 20, "{r:#}");
        assert!(x["rtt_p50_ms"].as_f64().is_some_and(|ms| ms > 0.0), "echoes: {r:#}");
    }
    let ping_loss = ping
        .split(", ")
        .find(|p| p.ends_with("packet loss"))
        .unwrap_or_else(|| panic!("ping's summary: {ping}"));
    eprintln!(
        "n2's view of n1, link 1, with 2 % dropped at n1's port: link-check loss {loss:.2} % (one way, {} of {}), ping {ping_loss} (round trips)",
        lossy["lost"], lossy["expected"]
    );
}

/// Every scenario of `phalanx drill`, run by the CLI from the client host against a lab cluster
/// (100 ms x 3 heartbeats, fencing by the lab's power switch, group `web` = the VIP + the demo
/// service monitored every 500 ms, the session store on): each run ends with the service back,
/// the run's RTO within issue 16's bound for the scenario (kill-node, pause-node, cut-link:
/// detection + 300 ms = 600 ms; kill-service: the monitor interval + the restart; switchover:
/// 150 ms; a drill over its bound is repeated once, as a p99 allows), the victim fenced where
/// the scenario takes a node out, and RPO = 0: every session write the writer got acknowledged
/// reads back afterwards. A node taken out is started again before the next scenario. Then
/// `phalanx availability` gives what the events give by hand (every outage planned). Then a fence-fail whose devices keep failing past `--settle`:
/// the drill is aborted, says why and what it undid, and the healed devices let the cluster
/// finish the recovery. One VIP holder throughout (the lab's samplers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_drill_scenario_runs_end_to_end_within_its_bound_and_loses_no_session_write() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let mut c = started(&lab, 3, web_config(exe(), "manual", None) + "\n[sessions]\n", "");
    let active = web_running(&c, 3).await;
    wait_answer(&lab, &vip_addr(), &active, T).unwrap();
    let w = watch(&lab);
    let probe = format!("http://{}/", vip_addr());
    let (mut summary, mut repeated) = (Vec::new(), 0);
    for scenario in [
        "switchover",
        "kill-service",
        "kill-node",
        "pause-node",
        "cut-link",
        "fence-fail",
    ] {
        // The bound is a p99: a run over it (a noisy shared machine) is repeated once; two in
        // a row fail the test.
        for attempt in 0..2 {
            let r = drill_in_lab(&mut c, scenario, &probe, &mut summary).await;
            let over = r["within_bounds"] == false;
            if !over {
                break;
            }
            assert_eq!(attempt, 0, "{scenario}: over its bound twice in a row: {r:#}");
            eprintln!("{scenario}: over its bound once, repeated: {r:#}");
            repeated += 1;
        }
    }
    for line in &summary {
        eprintln!("{line}");
    }

    // Availability after this sequence of drills: web's service down from its stop, its
    // monitor's failure or its node's loss to its next start, computed here by hand from the
    // events, is what `phalanx availability` reports, all of it planned (a drill's).
    let (code, out, err) = c.cli(&["events", "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let (mut on, mut down_since, mut planned, mut outages) = (None::<String>, None::<u64>, 0u64, 0);
    for e in out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
    {
        let (kind, node, t) = (
            e["kind"].as_str().unwrap().to_string(),
            e["node"].as_str().unwrap().to_string(),
            e["time_ms"].as_u64().unwrap(),
        );
        let svc = e["resource"].as_str() == Some("web-svc");
        match kind.as_str() {
            "resource_started" if svc => {
                if let Some(since) = down_since.take() {
                    planned += t - since;
                    outages += 1;
                }
                on = Some(node);
            }
            "resource_stopped" | "monitor_failed" if svc && on.as_ref() == Some(&node) => {
                down_since.get_or_insert(t);
                on = None;
            }
            "node_lost" | "fence_succeeded" if on.as_ref() == Some(&node) => {
                down_since.get_or_insert(t);
                on = None;
            }
            _ => {}
        }
    }
    let (code, out, err) = c.cli(&["availability", "--resource", "web-svc", "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let svc = &r["resources"][0];
    assert_eq!(
        outages,
        6 + repeated,
        "one outage per drill that takes the service down: {out}"
    );
    assert_eq!(svc["planned_down_ms"].as_u64(), Some(planned), "{out}");
    assert_eq!(
        (svc["down_ms"].as_u64(), svc["failures"].as_u64()),
        (Some(0), Some(0)),
        "{out}"
    );
    eprintln!("availability: {outages} planned outages, {planned} ms, as computed by hand");

    // Devices that keep failing past --settle: the drill is aborted, says why and what it undid;
    // healed, they let the cluster fence the node and recover web.
    let active = web_running(&c, 3).await;
    let (code, _, err) = c
        .cli(&[
            "drill",
            "fence-fail",
            "--resource",
            "web",
            "--probe",
            &probe,
            "--fence-failures",
            "100",
            "--settle",
            "3s",
        ])
        .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("did not settle within 3s: the drill is aborted (the fence devices healed)"),
        "{err}"
    );
    let now = recovered_by_majority(&c, &active).await;
    assert_ne!(now, active);
    wait_answer(&lab, &vip_addr(), &now, T).unwrap();
    let (code, out, _) = c.cli(&["events", "--kind", "drill_ended", "--json"]).unwrap();
    assert_eq!(code, 0);
    assert!(out.lines().last().is_some_and(|l| l.contains("aborted")), "{out}");
    finish(w);
}

/// One `phalanx drill SCENARIO` of the lab test above, from the client host: checks every run
/// (the service back, the session writer's writes all read back, the victim fenced where the
/// scenario takes a node out), starts that node again, and returns the report (whose
/// `within_bounds` the caller judges).
async fn drill_in_lab(
    c: &mut LocalCluster,
    scenario: &str,
    probe: &str,
    summary: &mut Vec<String>,
) -> serde_json::Value {
    // kill-service kills one primitive's process: the group's service.
    let rsc = if scenario == "kill-service" { "web-svc" } else { "web" };
    let (code, out, err) = c
        .cli(&[
            "drill",
            scenario,
            "--resource",
            rsc,
            "--probe",
            probe,
            "--settle",
            "30s",
            "--json",
        ])
        .unwrap();
    assert_eq!(code, 0, "{scenario}: {err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = r["runs"].as_array().unwrap();
    assert!(!runs.is_empty(), "{scenario}: {r:#}");
    for run in runs {
        let rto = run["rto_ms"].as_u64();
        assert!(rto.is_some(), "{scenario}: the service came back: {r:#}");
        let acked = run["session_writes_acked"].as_u64().unwrap_or(0);
        assert!(acked > 0, "{scenario}: the session writer wrote: {r:#}");
        assert_eq!(run["rpo_writes"], 0, "{scenario}: no acknowledged write lost: {r:#}");
        let after = |k: &str| {
            run[k].as_u64().map_or("-".into(), |t| {
                t.saturating_sub(run["fault_ms"].as_u64().unwrap_or(0)).to_string()
            })
        };
        summary.push(format!(
            "{scenario}: {} -> {}: RTO {rto:?} ms (bound {}), detect/fence/start {}/{}/{} ms after the fault, \
             {acked} session writes acknowledged, 0 lost",
            run["from"],
            run["to"],
            run["rto_bound_ms"],
            after("detected_ms"),
            after("fenced_ms"),
            after("started_ms")
        ));
    }
    let last = runs.last().unwrap();
    if matches!(scenario, "kill-node" | "pause-node" | "cut-link" | "fence-fail") {
        // Taken out, fenced, recovered elsewhere; started again for the next drill.
        let victim = last["from"].as_str().unwrap().to_string();
        assert_ne!(last["to"].as_str(), Some(victim.as_str()), "{scenario}: {r:#}");
        assert!(
            last["fenced_ms"].as_u64().is_some(),
            "{scenario}: {victim} fenced: {r:#}"
        );
        if scenario == "fence-fail" {
            assert!(last["fence_failures"].as_u64() >= Some(1), "{r:#}");
        }
        c.reap(&victim).unwrap();
        c.restart(&victim, T).await.unwrap();
        c.wait_stable(T).await.unwrap();
    } else {
        assert!(last["fenced_ms"].is_null(), "{scenario} fenced nothing: {r:#}");
    }
    web_running(c, 3).await;
    r
}

/// A memcached exchange from the client host: send `req`, read until `until` ends the reply.
fn memcached_from_client(lab: &Lab, addr: std::net::SocketAddr, req: Vec<u8>, until: &'static [u8]) -> Vec<u8> {
    phalanx_lab::lab::in_netns(&lab.client_ns(), move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(&req)?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(until) {
            let n = s.read(&mut buf)?;
            anyhow::ensure!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    })
    .join()
    .unwrap()
    .unwrap()
}

/// A capture of what crosses the lab's switch (tcpdump on every port of the switch namespace:
/// frames a bridge forwards between its ports never reach the bridge device itself), until
/// stopped.
struct Capture {
    child: std::process::Child,
    file: PathBuf,
    said: std::thread::JoinHandle<String>,
}

impl Capture {
    fn start(lab: &Lab, file: PathBuf, filter: &str) -> Capture {
        use std::io::BufRead;
        let mut child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.switch_ns(),
                "tcpdump",
                "-Z",
                "root",
                "--immediate-mode",
                "-i",
                "any",
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(&file)
            .args(filter.split_whitespace())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tcpdump (tests/run installs it)");
        // Ready once it says it listens (after a line about the link type).
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        while !said.contains("listening on any") {
            let mut line = String::new();
            assert!(err.read_line(&mut line).unwrap() > 0, "tcpdump: {said}");
            said += &line;
        }
        let said = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut rest);
            said + &rest
        });
        Capture { child, file, said }
    }

    /// Stop it; the bytes it captured.
    fn stop(mut self) -> Vec<u8> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        eprintln!("{}", self.said.join().unwrap_or_default().trim());
        std::fs::read(&self.file).unwrap()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Nothing the cluster holds crosses its network in the clear (issue 17): tcpdump on the lab's
/// switch while a client stores a session value through n1's memcached port, an operator sets a
/// node attribute, and both replicate to n2 and n3 (read back there). Node-to-node traffic (the
/// capture without the client host) never shows either value, though it holds the Raft traffic
/// that carried them; the capture of everything does show the session value, on the client's
/// own plain memcached hop, so the search would find a value sent in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_of_the_cluster_network_shows_no_session_value_and_no_state() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let c = started(&lab, 3, web_config(exe(), "manual", None) + "\n[sessions]\n", "");
    web_running(&c, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let nodes_only = Capture::start(
        &lab,
        dir.path().join("nodes.pcap"),
        &format!("not host {}", Lab::client_ip()),
    );
    let everything = Capture::start(&lab, dir.path().join("all.pcap"), "");

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let value = format!("cart-of-alice-{stamp}");
    let attr = format!("rack-secret-{stamp}");
    let port = phalanx_core::config::DEFAULT_SESSIONS_PORT;
    let at = |i: usize| std::net::SocketAddr::new(lab.node_ip(i, 0).into(), port);
    let set = format!("set alice 0 0 {}\r\n{value}\r\n", value.len()).into_bytes();
    assert_eq!(memcached_from_client(&lab, at(1), set, b"\r\n"), b"STORED\r\n");
    cli_ok(&c, &["node", "attr", "n1", "rack", &attr]);
    for i in [2, 3] {
        let got = memcached_from_client(&lab, at(i), b"get alice\r\n".to_vec(), b"END\r\n");
        assert!(
            contains(&got, value.as_bytes()),
            "n{i}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    c.wait_for(T, "the attribute on every node", |st| {
        st.values()
            .all(|s| {
                s.nodes
                    .iter()
                    .any(|n| n.name == "n1" && n.attrs.get("rack") == Some(&attr))
            })
            .then_some(())
    })
    .await
    .unwrap();

    let (nodes, all) = (nodes_only.stop(), everything.stop());
    eprintln!("captured {} bytes between nodes, {} in all", nodes.len(), all.len());
    // Not empty (a pcap header alone is 24 bytes): the nodes' traffic over these seconds. Since
    // the session store's RPCs share one stream per peer (no HTTP request per RPC), it was
    // 13.5 KB in one run (over 20 KB in the two before, and always before the streams).
    assert!(
        nodes.len() > 4_096,
        "the capture holds the cluster's traffic: {} bytes",
        nodes.len()
    );
    assert!(
        contains(&all, value.as_bytes()),
        "the client's plain hop was not captured: the search proves nothing"
    );
    assert!(
        !contains(&nodes, value.as_bytes()),
        "a session value crossed the cluster network in the clear"
    );
    assert!(
        !contains(&nodes, attr.as_bytes()),
        "the replicated state crossed the cluster network in the clear"
    );
    assert!(
        !contains(&all, attr.as_bytes()),
        "the operator's command crossed the network in the clear"
    );
}
