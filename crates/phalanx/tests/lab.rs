//! Lab tests (network namespaces, root: CI runs as root; `PHALANX_NO_LAB=1` skips them on a
//! machine without root, saying so). A 3-node cluster with two links per node and a client, all
//! in namespaces; a group `web` = `web-ip` (the built-in vip agent, 10.77.0.100/24) + `web-svc`
//! (an HTTP server answering with its node name). A sampler in every node namespace reads its
//! addresses every ~5 ms for the whole test and fails it if two nodes ever held the VIP at once.

use phalanx::harness::{LocalCluster, Spec};
use phalanx::lab::{outage, wait_answer, web_config, web_node, Lab, Watch, PORT, VIP};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// One lab at a time: three daemons with 100 ms heartbeats per lab, several labs at once on a
/// 2-core machine starve each other into spurious node losses.
static ONE_LAB: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn lab_or_skip() -> Option<(tokio::sync::MutexGuard<'static, ()>, Lab)> {
    if std::env::var_os("PHALANX_NO_LAB").is_some() {
        eprintln!("lab test skipped: PHALANX_NO_LAB is set");
        return None;
    }
    let guard = ONE_LAB.lock().await;
    let lab = Lab::create(3, 2).expect("the lab needs root and iproute2 (CI runs as root; PHALANX_NO_LAB=1 skips)");
    Some((guard, lab))
}

fn cluster(lab: &Lab, failback: &str, prefer: Option<&str>) -> LocalCluster {
    cluster_with(lab, failback, prefer, "")
}

fn cluster_with(lab: &Lab, failback: &str, prefer: Option<&str>, cluster_extra: &str) -> LocalCluster {
    let mut c = LocalCluster::create_in_lab(
        Spec {
            nodes: 3,
            heartbeat: Duration::from_millis(100),
            links: 2,
            exe: PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
            keep: std::env::var_os("PHALANX_KEEP").is_some(),
            extra_config: web_config(std::path::Path::new(env!("CARGO_BIN_EXE_phalanx")), failback, prefer),
            cluster_extra: cluster_extra.into(),
        },
        lab,
    )
    .unwrap();
    c.start_all().unwrap();
    c
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
fn finish(w: Watch) -> phalanx::lab::ClientLog {
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
    let first = c
        .wait_for(T, "web running", |st| (st.len() == 3).then(|| web_node(st)).flatten())
        .await
        .unwrap();
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
    let active = c
        .wait_for(T, "web running", |st| (st.len() == 3).then(|| web_node(st)).flatten())
        .await
        .unwrap();
    let w = watch(&lab);
    lab.cut_link(num(&active), 0).unwrap();
    // Every node still sees every other on link 1.
    nothing_moves(&c, &active, "a link remained").await;
    lab.heal_link(num(&active), 0).unwrap();
    finish(w);
}

/// Cut both links of the active node: it is alone, loses quorum and stops its resources itself
/// (no_quorum_policy = "stop", VIP first); the majority recovers them once the lost node's quorum
/// lease must have run out (fencing = "watchdog", software lease). The sampler in every node
/// namespace, the isolated one included, must never see two holders. Healed, the node rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_both_links_fails_over_after_the_lease_with_one_holder() {
    let Some((_one, lab)) = lab_or_skip().await else { return };
    let c = cluster_with(&lab, "manual", None, "fencing = \"watchdog\"\n");
    let active = c
        .wait_for(T, "web running", |st| (st.len() == 3).then(|| web_node(st)).flatten())
        .await
        .unwrap();
    wait_answer(&lab, &vip_addr(), &active, T).unwrap();
    let w = watch(&lab);
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
    let active = c
        .wait_for(T, "web running", |st| (st.len() == 3).then(|| web_node(st)).flatten())
        .await
        .unwrap();
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
    let exe = env!("CARGO_BIN_EXE_phalanx");
    let vip6 = "fd00:77::100";
    let mut c = LocalCluster::create_in_lab(
        Spec {
            nodes: 3,
            heartbeat: Duration::from_millis(100),
            links: 2,
            exe: PathBuf::from(exe),
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
