//! Real `phalanx daemon` processes on loopback: leader crash and rejoin, no acknowledged write
//! lost across kill -9, redundant links, membership changes, the API's 400/401, a leader's
//! decision sent over the API refused (the `/v1/write` replay), a state over 20 MB installed
//! by snapshot on a node that joins late, and the CLI.

use phalanx::harness::{LocalCluster, Spec};
use phalanx_node::StatusReport;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(40);

fn cluster(nodes: usize) -> LocalCluster {
    cluster_with(nodes, "")
}

/// A started cluster with `extra` (resources...) appended to its config.
fn cluster_with(nodes: usize, extra: &str) -> LocalCluster {
    let mut c = LocalCluster::create(Spec {
        nodes,
        heartbeat: Duration::from_millis(100),
        links: 2,
        exe: PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        keep: std::env::var_os("PHALANX_KEEP").is_some(),
        extra_config: extra.to_string(),
        cluster_extra: String::new(),
    })
    .unwrap();
    c.start_all().unwrap();
    c
}

fn attrs_of(st: &StatusReport, node: &str) -> BTreeMap<String, String> {
    st.nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.attrs.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_new_leader_and_rejoin_with_log() {
    let mut c = cluster(3);
    let leader = c.wait_stable(T).await.unwrap();
    // A write before the crash, which the crashed node must still have when it comes back.
    let (code, _, err) = c.cli(&["node", "attr", "n1", "before-crash", "1"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let f = phalanx::demo::kill_leader(&mut c, T).await.unwrap();
    assert_eq!(f.killed, leader);
    assert_ne!(f.new_leader, leader);
    assert!(f.quorum_after_failure);
    for (name, st) in c.statuses().await {
        let dead = st.nodes.iter().find(|n| n.name == leader).unwrap();
        assert_eq!(dead.state, "offline", "{name} must see {leader} offline");
    }
    // The new leader records the liveness change in the replicated state.
    c.wait_for(T, "the leader to record the crash", |st| {
        let s = st.values().next()?;
        let rec = s.nodes.iter().find(|n| n.name == leader)?;
        (rec.liveness == phalanx_core::Liveness::Offline).then_some(())
    })
    .await
    .unwrap();
    phalanx::demo::rejoin(&mut c, &leader, T).await.unwrap();
    let st = c.status(&leader).await.unwrap();
    assert_eq!(attrs_of(&st, "n1").get("before-crash").map(String::as_str), Some("1"));
    assert!(st.term >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_across_kill_9() {
    let mut c = cluster(3);
    c.wait_stable(T).await.unwrap();
    // A writer hammers attribute writes through every node's API in turn (non-leaders forward).
    let apis: Vec<String> = c.nodes.iter().map(|n| n.api.clone()).collect();
    let client = c.client.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count2 = count.clone();
    let writer = tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        let mut i = 0u32;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let api = &apis[i as usize % apis.len()];
            let r: anyhow::Result<serde_json::Value> = client
                .put(
                    api,
                    &format!("/v1/nodes/n2/attrs/k{i}"),
                    &serde_json::json!({ "value": i.to_string() }),
                )
                .await;
            if r.is_ok() {
                acked.insert(i);
                count2.store(acked.len(), std::sync::atomic::Ordering::SeqCst);
            }
            i += 1;
        }
        acked
    });
    // Kill the leader, then a follower, in the middle of the burst.
    let leader = c.wait_stable(T).await.unwrap();
    c.wait_for(T, "the burst to be under way", |st| {
        st.get(&leader)
            .and_then(|s| (attrs_of(s, "n2").len() >= 10).then_some(()))
    })
    .await
    .unwrap();
    c.kill(&leader).unwrap();
    let new_leader = c.wait_for(T, "a new leader", |st| c.agreed_leader(st)).await.unwrap();
    c.start(&leader).unwrap();
    c.wait_stable(T).await.unwrap();
    let victim = c
        .running()
        .into_iter()
        .find(|n| *n != new_leader && *n != leader)
        .unwrap();
    c.kill(&victim).unwrap();
    c.start(&victim).unwrap();
    c.wait_stable(T).await.unwrap();
    // Let the burst run on until it has made real progress (bounded), however slow the machine.
    let deadline = std::time::Instant::now() + T;
    while count.load(std::sync::atomic::Ordering::SeqCst) <= 20 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 20,
        "the burst must have made progress: {} acks",
        acked.len()
    );
    // Every node (both restarted ones included) ends with every acknowledged write.
    let names: Vec<String> = c.running();
    c.wait_for(T, "every node to apply every acknowledged write", |st| {
        (st.len() == names.len()
            && st.values().all(|s| {
                let a = attrs_of(s, "n2");
                acked.iter().all(|i| a.get(&format!("k{i}")) == Some(&i.to_string()))
            }))
        .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_link_down_keeps_nodes_alive_both_down_kills() {
    let c = cluster(3);
    c.wait_stable(T).await.unwrap();
    for n in ["n1", "n2", "n3"] {
        let (code, _, err) = c.cli(&["link", "disable", "1", "--node", n]).unwrap();
        assert_eq!(code, 0, "{err}");
    }
    // Link 1 goes down everywhere (proof the cut took effect) ...
    c.wait_for(T, "link 1 down on every node", |st| {
        (st.len() == 3
            && st.values().all(|s| {
                s.nodes
                    .iter()
                    .filter(|n| !n.is_self)
                    .all(|n| n.links.len() == 2 && !n.links[1].up)
            }))
        .then_some(())
    })
    .await
    .unwrap();
    // ... and for ten detection times nobody is declared dead.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for (name, s) in c.statuses().await {
            assert!(
                s.nodes.iter().all(|n| n.state == "online"),
                "{name} declared a node dead with link 0 still up: {:?}",
                s.nodes
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Cut link 0 of n3 too: now every link to n3 is silent and it is declared dead.
    let (code, _, err) = c.cli(&["link", "disable", "0", "--node", "n3"]).unwrap();
    assert_eq!(code, 0, "{err}");
    c.wait_for(T, "n1 and n2 to declare n3 dead", |st| {
        ["n1", "n2"]
            .iter()
            .all(|me| {
                st.get(*me)
                    .map(|s| s.nodes.iter().any(|n| n.name == "n3" && n.state == "offline"))
                    .unwrap_or(false)
            })
            .then_some(())
    })
    .await
    .unwrap();
    c.wait_for(T, "n3, alone, to know it has no quorum", |st| {
        st.get("n3")
            .and_then(|s| (!s.quorum && s.leader.is_none()).then_some(()))
    })
    .await
    .unwrap();
    // Re-enable: it comes back.
    c.cli(&["link", "enable", "0", "--node", "n3"]).unwrap();
    c.wait_stable(T).await.unwrap();
}

/// The leader's links fail one peer at a time, while Raft still reaches every node over the API
/// addresses. First a partial partition: the leader's link 0 and node A's link 1 disabled, so
/// the leader and A no longer hear each other while B hears both: no node is recorded lost
/// (before, the leader recorded A lost, to be fenced, on its view alone). Then the leader's
/// link 1 too: it reaches nobody; it must not lead, and the other two record it lost, and only
/// it. Throughout, the power switch acts on nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_losing_its_links_peer_by_peer_gets_no_healthy_node_recorded_lost() {
    use phalanx_core::state::Liveness;
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let port = phalanx::demo::service_port(3).unwrap();
    let c = cluster_with(3, &phalanx::demo::service_resource(&exe, "web", port));
    let old = c.wait_stable(T).await.unwrap();
    let others: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .filter(|n| **n != old)
        .map(|n| n.to_string())
        .collect();
    let a = &others[0];
    let disable = |link: &str, node: &str| {
        let (code, _, err) = c.cli(&["link", "disable", link, "--node", node]).unwrap();
        assert_eq!(code, 0, "{err}");
    };
    // Recorded lost (replicated liveness, as any node's copy has it), other than `but`.
    let lost_but = |st: &BTreeMap<String, StatusReport>, but: Option<&str>| -> Option<String> {
        st.iter().find_map(|(who, s)| {
            s.nodes
                .iter()
                .find(|n| Some(n.name.as_str()) != but && n.liveness == Liveness::Offline)
                .map(|n| format!("{who}'s copy records {} lost; fenced: {:?}", n.name, c.fence_events()))
        })
    };
    disable("0", &old);
    disable("1", a);
    c.wait_for(T, "the leader and A to stop hearing each other", |st| {
        let silent = |me: &str, peer: &str| {
            st.get(me)
                .is_some_and(|s| s.nodes.iter().any(|n| n.name == peer && n.state == "offline"))
        };
        (silent(&old, a) && silent(a, &old)).then_some(())
    })
    .await
    .unwrap();
    // Three detection times: nobody recorded lost.
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        if let Some(bad) = lost_but(&c.statuses().await, None) {
            panic!("partial partition: {bad}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    disable("1", &old);
    let deadline = Instant::now() + T;
    loop {
        let st = c.statuses().await;
        if let Some(bad) = lost_but(&st, Some(&old)) {
            panic!("{old} isolated: {bad}");
        }
        let settled = others.iter().all(|o| {
            st.get(o).is_some_and(|s| {
                s.leader.as_ref().is_some_and(|l| *l != old)
                    && s.nodes.iter().any(|n| n.name == old && n.liveness == Liveness::Offline)
            })
        });
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the others never recorded {old} lost: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fenced: BTreeSet<String> = c.fence_events().into_iter().map(|(_, plug, _)| plug).collect();
    assert!(fenced.iter().all(|p| *p == old), "fenced {fenced:?}, only {old} may be");
}

/// A cluster state of 21 MiB (node attributes of 1 MiB, each under the API's 2 MB body limit),
/// then enough small writes that the log is compacted: a node added afterwards can only get the
/// state as a snapshot, larger than any one request may be, and must install it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_over_20_mb_installs_on_a_node_that_joins_late() {
    const BIG: usize = 21;
    let mut c = cluster(3);
    let leader = c.wait_stable(T).await.unwrap();
    let api = c.node(&leader).unwrap().api.clone();
    let client = c.client.clone().with_timeout(Duration::from_secs(20)).unwrap();
    let value = "x".repeat(1024 * 1024);
    // A write may meet a busy 2-core machine (a timeout, a 503 while a leader is elected): it is
    // retried until T has passed since its first attempt. (Setting an attribute twice is
    // harmless.)
    async fn put(client: &phalanx::client::Client, api: &str, path: &str, value: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({ "value": value });
        let deadline = Instant::now() + T;
        loop {
            match client.put::<_, serde_json::Value>(api, path, &body).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    for i in 0..BIG {
        put(&client, &api, &format!("/v1/nodes/n1/attrs/big-{i}"), &value)
            .await
            .unwrap();
    }
    // Past the snapshot policy (a snapshot every 2,000 entries; 500 kept behind it).
    let mut writes = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (client, api) = (client.clone(), api.clone());
        writes.spawn(async move {
            for i in 0..300 {
                put(&client, &api, &format!("/v1/nodes/n2/attrs/w{w}"), &i.to_string()).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = writes.join_next().await {
        r.unwrap().unwrap();
    }
    let (links, n4_api) = c.add_unlisted("n4").unwrap();
    let mut args = vec!["node", "add", "n4", "--node-api", n4_api.as_str()];
    for l in &links {
        args.extend(["--link", l.as_str()]);
    }
    // The same for the CLI, but only while no leader is known (nothing was written then): any
    // other answer counts.
    let deadline = Instant::now() + T;
    let (code, out, err) = loop {
        let (code, out, err) = c.cli(&args).unwrap();
        if code == 0 || !err.contains("no leader is known") || Instant::now() > deadline {
            break (code, out, err);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 0, "{out}{err}");
    let started = Instant::now();
    c.start("n4").unwrap();
    let deadline = started + Duration::from_secs(90);
    loop {
        if let Ok(st) = client.status(&n4_api).await {
            let attrs = attrs_of(&st, "n1");
            let big = attrs
                .iter()
                .filter(|(k, v)| k.starts_with("big-") && v.len() == value.len())
                .count();
            if big == BIG && attrs_of(&st, "n2").len() == 8 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "n4 never got the 21 MiB state");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(c.log_path("n4")).unwrap_or_default();
    eprintln!(
        "n4 has the {BIG} MiB state {} ms after its start",
        started.elapsed().as_millis()
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_add_and_remove_change_raft_membership() {
    let mut c = cluster(3);
    c.wait_stable(T).await.unwrap();
    let (links, api) = c.add_unlisted("n4").unwrap();
    let mut args = vec!["node", "add", "n4", "--node-api", api.as_str()];
    for l in &links {
        args.extend(["--link", l.as_str()]);
    }
    let (code, out, err) = c.cli(&args).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    c.start("n4").unwrap();
    c.wait_for(T, "n4 to become a voter seen online by all", |st| {
        (st.len() == 4
            && st
                .values()
                .all(|s| s.voters.len() == 4 && s.voters.contains(&"n4".to_string()))
            && st.values().all(|s| s.nodes.iter().all(|n| n.state == "online")))
        .then_some(())
    })
    .await
    .unwrap();
    // Adding a name twice is refused with a reason.
    let (code, _, err) = c.cli(&["node", "add", "n4", "--link", "127.0.0.9:1"]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");

    let (code, out, err) = c.cli(&["node", "remove", "n4"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    // The removed node learns it and exits, saying why (it used to stay up as a candidate with a
    // rising term).
    let status = c.wait_exit("n4", T).await.unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(c.log_path("n4")).unwrap();
    assert!(log.contains("removed from the cluster"), "{log}");
    c.wait_for(T, "n4 to leave the membership", |st| {
        (st.len() == 3
            && st
                .values()
                .all(|s| s.voters.len() == 3 && !s.nodes.iter().any(|n| n.name == "n4")))
        .then_some(())
    })
    .await
    .unwrap();
    let (code, out, _) = c.cli(&["--json", "node", "list"]).unwrap();
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_object().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_bad_tokens_and_malformed_json_and_serves_metrics() {
    let c = cluster(3);
    c.wait_stable(T).await.unwrap();
    let api = &c.node("n1").unwrap().api;
    let http = c.operator_http().unwrap();
    let r = http.get(LocalCluster::url(api, "/v1/status")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(LocalCluster::url(api, "/v1/status"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let token = c.api_token().unwrap();
    // Raft RPCs: a node's certificate and the key's token, both.
    let r = http
        .post(LocalCluster::url(api, "/raft/cluster/vote"))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "raft RPCs need a node certificate");
    let as_n2 = c.node_http("n2").unwrap();
    let r = as_n2
        .post(LocalCluster::url(api, "/raft/cluster/vote"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "raft RPCs need the token too");
    let r = as_n2
        .post(LocalCluster::url(api, "/raft/cluster/vote"))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "with both, a malformed vote is bad input");
    // Plain HTTP gets a clear answer, not a hang.
    let r = reqwest::get(format!("http://{api}/v1/status")).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("HTTPS only"));

    let post = |path: &str, body: &'static str| {
        http.post(LocalCluster::url(api, path))
            .bearer_auth(&token)
            .body(body)
            .send()
    };
    let bad = post("/v1/nodes/n1/standby", "{\"standby\": tru").await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["error"], "bad_input", "{body}");
    assert!(body["reason"].as_str().unwrap().contains("malformed JSON"), "{body}");
    assert_eq!(
        post("/v1/nodes/n1/standby", "{\"stanby\": true}")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post("/v1/nodes/zz/standby", "{\"standby\": true}")
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        post("/v1/nodes", "{\"name\": \"n9\", \"links\": [\"nope\"]}")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        as_n2
            .post(LocalCluster::url(api, "/raft/cluster/append"))
            .bearer_auth(&token)
            .body("\u{7f}\u{7f}\u{7f}")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    // standby through the CLI shows in status
    let (code, _, err) = c.cli(&["node", "standby", "n2"]).unwrap();
    assert_eq!(code, 0, "{err}");
    c.wait_for(T, "n2 in standby everywhere", |st| {
        st.values()
            .all(|s| s.nodes.iter().any(|n| n.name == "n2" && n.state == "standby"))
            .then_some(())
    })
    .await
    .unwrap();
    let (_, human, _) = c.cli(&["status"]).unwrap();
    assert!(human.contains("STANDBY") && human.contains("Quorum: yes"), "{human}");

    let m = c.client.metrics(api).await.unwrap();
    for family in [
        "phalanx_heartbeats_sent_total",
        "phalanx_link_up{",
        "phalanx_raft_term",
        "phalanx_quorum 1",
        "phalanx_heartbeats_dropped_total{reason=\"auth\"}",
    ] {
        assert!(m.contains(family), "metrics lack {family}:\n{m}");
    }
    // The node survived all of it.
    assert!(c.status("n1").await.unwrap().quorum);
}

/// Issue 11's repro: `POST /v1/write` with `{"SetLiveness": {"name": HOLDER, "liveness":
/// "offline"}}` and the API token made the leader start a second copy of a running resource
/// with no fence. Replayed at the leader's old `/v1/write` (gone: 404) and at the peer
/// forwarding route of the leader and of a follower (a leader's decision: 403); the resource
/// keeps running on one node, no node is recorded offline, and an allowed forwarded write
/// still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_decision_sent_over_the_api_is_refused() {
    let dir = std::env::temp_dir().join(format!(
        "phalanx-replay-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = format!("{}/web-${{OCF_RESKEY_CRM_meta_on_node}}", dir.display());
    let c = cluster_with(
        3,
        &format!(
            "\n[[resource]]\nid = \"web\"\nagent = \"exec\"\nparams = {{ start = \"touch {file}\", stop = \"rm -f {file}\", monitor = \"test -f {file} || exit 7\" }}\nmonitor = {{ interval = \"500ms\", timeout = \"5s\" }}\n"
        ),
    );
    let leader = c.wait_stable(T).await.unwrap();
    let web_on = |s: &StatusReport| -> Option<Vec<String>> {
        let r = s.resources.iter().find(|r| r.id == "web")?;
        Some(r.running.keys().cloned().collect())
    };
    let holder = c
        .wait_for(T, "web running on one node in every view", |st| {
            let first = web_on(st.values().next()?)?;
            (st.len() == 3
                && first.len() == 1
                && st
                    .values()
                    .all(|s| s.plan_pending == 0 && web_on(s).as_ref() == Some(&first)))
            .then(|| first[0].clone())
        })
        .await
        .unwrap();
    let markers = || -> Vec<String> {
        let mut m: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        m.sort();
        m
    };
    // A node fenced during start-up (a missed heartbeat on a loaded machine) keeps its marker:
    // the power switch kills the daemon, not the file. What counts is that nothing new starts.
    let baseline = markers();
    assert!(baseline.contains(&format!("web-{holder}")), "{baseline:?}");

    let token = c.api_token().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let forged = serde_json::json!({ "SetLiveness": { "name": holder, "liveness": "offline", "at_ms": now_ms } });
    let follower = c.running().into_iter().find(|n| *n != leader).unwrap();
    // As a node would send it (its certificate), with the key's token.
    let http = c.node_http(&follower).unwrap();
    let send = |node: &str, path: &str| {
        let api = c.node(node).unwrap().api.clone();
        http.post(LocalCluster::url(&api, path))
            .bearer_auth(&token)
            .json(&forged)
            .send()
    };
    let r = send(&leader, "/v1/write").await.unwrap();
    assert_eq!(r.status(), 404, "/v1/write is gone from the operator router");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found", "{body}");
    for node in [&leader, &follower] {
        let r = send(node, "/peer/write").await.unwrap();
        assert_eq!(r.status(), 403, "{node} must refuse to forward a leader's decision");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "forbidden", "{body}");
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .contains("SetLiveness is a leader's decision"),
            "{body}"
        );
    }

    // For 20 heartbeats and more, every view shows web once, on its holder, and every node online.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for (name, s) in c.statuses().await {
            assert_eq!(web_on(&s), Some(vec![holder.clone()]), "{name}'s view of web");
            for n in &s.nodes {
                assert_ne!(
                    n.liveness,
                    phalanx_core::Liveness::Offline,
                    "{name} sees {} offline",
                    n.name
                );
            }
        }
        assert_eq!(markers(), baseline, "no second copy of web started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What a follower may forward still goes through the peer route.
    let api = c.node(&follower).unwrap().api.clone();
    let r = http
        .post(LocalCluster::url(&api, "/peer/write"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "SetAttr": { "name": "n1", "key": "replayed", "value": "no" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), serde_json::json!("Ok"));
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_garbage_heartbeats_are_dropped_and_counted() {
    let c = cluster(3);
    c.wait_stable(T).await.unwrap();
    let target: std::net::SocketAddr = c.node("n1").unwrap().links[0].parse().unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let other_key = phalanx_node::ClusterKey::from_bytes(&[1u8; 32]);
    let forged = phalanx_node::mesh::wire::encode(
        &phalanx_node::mesh::wire::Heartbeat {
            cluster: "demo".into(),
            sender: "n2".into(),
            link: 0,
            incarnation: u64::MAX,
            seq: 1,
            log_index: 0,
            vote: 0,
            hears: true,
            to: "n1".into(),
            echo: None,
            lost: None,
        },
        &other_key,
    );
    for _ in 0..5 {
        sock.send_to(&forged, target).unwrap();
        sock.send_to(b"PHXH\x01garbage", target).unwrap();
        sock.send_to(&[0u8; 3000], target).unwrap();
    }
    c.wait_for(T, "n1 to count the forged and malformed datagrams", |st| {
        let m = &st.get("n1")?.mesh;
        (m.dropped_auth >= 5 && m.dropped_malformed >= 5).then_some(())
    })
    .await
    .unwrap();
    c.wait_stable(T).await.unwrap();
}

#[test]
fn config_check_prints_file_line_col_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    // (the key file is checked too: a valid one beside the config)
    let key = dir.path().join("phalanx.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let check = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"));
        if json {
            cmd.arg("--json");
        }
        cmd.args(["config", "check"]).arg(&f).output().unwrap()
    };
    let name = f.display().to_string();
    std::fs::write(
        &f,
        "[cluster]\nname = \"x\"\n\n[[node]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\nbogus = 1\n",
    )
    .unwrap();
    let out = check(false);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{name}:7:1: error: unknown field `bogus`")),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_slice(&check(true).stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["diagnostics"][0]["line"], 7);

    std::fs::write(
        &f,
        "[cluster]\nname = \"x\"\nheartbeat_interval = \"1ms\"\n\n[[node]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let out = check(false);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{name}:3:22: error: heartbeat_interval 1ms is outside")),
        "{text}"
    );

    std::fs::write(
        &f,
        "[cluster]\nname = \"x\"\n\n[[node]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let out = check(false);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn init_writes_a_0600_key_and_a_ca_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
            .args(["init", "--key"])
            .arg(&k)
            .output()
            .unwrap()
    };
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert!(run().status.success());
    assert_eq!(mode(&k), 0o600);
    let (ca_crt, ca_key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    assert_eq!(mode(&ca_key), 0o600);
    let ca = phalanx_node::pki::inspect_pem(&std::fs::read_to_string(&ca_crt).unwrap()).unwrap();
    assert!(ca.is_ca);
    assert_eq!(ca.permitted_dns, vec!["cluster.phalanx".to_string()]);
    let before = (std::fs::read(&k).unwrap(), std::fs::read(&ca_key).unwrap());
    assert!(!run().status.success());
    assert_eq!((std::fs::read(&k).unwrap(), std::fs::read(&ca_key).unwrap()), before);
    // A cluster from before the CA: init keeps its key and adds the CA.
    std::fs::remove_file(&ca_crt).unwrap();
    std::fs::remove_file(&ca_key).unwrap();
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Kept the cluster key"));
    assert_eq!(std::fs::read(&k).unwrap(), before.0);
    assert!(ca_crt.exists() && ca_key.exists());
}

#[test]
fn demo_json_reports_the_contract_fields() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["--json", "demo"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"], 3);
    assert_eq!(v["heartbeat_interval_ms"], 100);
    assert_eq!(v["quorum_after_failure"], true);
    assert_eq!(v["rejoined"], true);
    let detection = v["detection_ms"].as_u64().unwrap();
    let failover = v["leader_failover_ms"].as_u64().unwrap();
    // Not timing goals (those live in the benchmark): only that they are real measurements.
    assert!(detection > 0 && failover > 0, "{v}");
    assert_ne!(v["killed"], v["new_leader"]);
    // The demo HTTP service moved off the node killed under it, and the outage was measured.
    assert_ne!(v["service_node_before"], v["service_node_after"], "{v}");
    assert!(v["service_outage_ms"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn simulate_prints_the_plan_of_a_what_if() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
            .arg("--config")
            .arg(root.join("shop.toml"))
            .args(["simulate", "--state"])
            .arg(root.join("shop-state.toml"))
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(run(&[]).contains("Nothing to do"));
    let down = run(&["--node-down", "n1", "--explain"]);
    // As the live cluster does: a lost node is fenced before anything it held starts elsewhere.
    assert!(
        down.starts_with("Plan:\n  Fence n1 (by n2): n1 lost while it may hold resources\n"),
        "{down}"
    );
    assert!(down.contains("Order: fence n1 (n2) -> start web (n2)"), "{down}");
    assert!(down.contains("Recover web (n1 -> n2): n1 lost"), "{down}");
    assert!(down.contains("Promote pg on n2"), "{down}");
    assert!(down.contains("n1 lost: -INFINITY"), "{down}");
    let fail: serde_json::Value = serde_json::from_str(&run(&["--json", "--fail", "web@n1"])).unwrap();
    let actions = fail["actions"].as_array().unwrap();
    assert!(
        actions
            .iter()
            .any(|a| a["kind"] == "stop" && a["rsc"] == "web" && a["node"] == "n1"),
        "{fail}"
    );
    assert!(
        actions
            .iter()
            .any(|a| a["kind"] == "start" && a["rsc"] == "web" && a["node"] == "n1"),
        "{fail}"
    );
    // A bad state file is an error with its position, and nothing is planned.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "now_ms = 1\n[resources.web]\nrunning = { n1 = \"sleeping\" }\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .arg("--config")
        .arg(root.join("shop.toml"))
        .args(["simulate", "--state"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:") && err.contains("sleeping"), "{err}");
}

/// `config check` asks the OCF agents installed here (Debian's resource-agents) for their
/// meta-data: a missing required parameter is an error at the resource's `agent`, an unknown one
/// a warning.
#[test]
fn config_check_validates_params_against_agent_meta_data() {
    if !std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/IPaddr2").is_file() {
        panic!("Debian's resource-agents are not installed (.ci/run installs them)");
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("agents.toml");
    std::fs::write(
        &f,
        "[cluster]\nname = \"x\"\nfencing = \"off\"\n[[node]]\nname = \"a\"\nlinks = [\"127.0.0.1:1\"]\n\
         [[resource]]\nid = \"d\"\nagent = \"ocf:heartbeat:Dummy\"\nparams = { stat = \"/tmp/x\" }\n\
         [[resource]]\nid = \"ip\"\nagent = \"ocf:heartbeat:IPaddr2\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let name = f.display().to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "{name}:9:9: error: resource d: agent ocf:heartbeat:Dummy has no parameter \"stat\""
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{name}:13:9: error: resource ip: agent ocf:heartbeat:IPaddr2 requires the parameter \"ip\""
        )),
        "{text}"
    );
}

/// Two nodes and `phalanx witness`: the witness is the third Raft voter, so either node's crash
/// leaves the other quorate and leading; the killed node rejoins, then the other one crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_and_a_witness_survive_the_loss_of_either_node() {
    let mut c = cluster(2);
    assert!(c.witness.is_some(), "a two-node harness cluster runs a witness");
    let first = c.wait_stable(T).await.unwrap();
    // Stable is one leader and both nodes alive; each node counts the other's vote only once the
    // other's heartbeats say they hear it too, a heartbeat later, and a loaded machine can make
    // that later still: wait for it (a vote that never comes still fails here).
    let st = c
        .wait_for(T, "the leader to count both nodes' votes", |st| {
            st.get(&first).filter(|s| s.votes == 3).cloned()
        })
        .await
        .unwrap();
    assert!(st.voters.iter().any(|v| v == "witness"), "voters: {:?}", st.voters);
    let w = st.witness.clone().unwrap();
    assert!(w.reachable && w.granted, "{w:?}");
    assert_eq!((st.votes, st.votes_needed), (3, 2));
    for _ in 0..2 {
        let leader = crash_the_leader_and_the_other_leads_with_the_witness(&mut c).await;
        c.start(&leader).unwrap();
    }
    c.wait_stable(T).await.unwrap();
}

/// Two nodes and the witness: `ca rotate` and `key rotate` take the witness along (a member:
/// every step waits for it), and afterwards it still votes: the leader's crash leaves the other
/// node leading with the witness' vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_and_the_key_rotate_with_a_witness_and_it_still_votes() {
    let mut c = cluster(2);
    let first = c.wait_stable(T).await.unwrap();
    c.wait_for(T, "the leader to count both nodes' votes", |st| {
        st.get(&first).filter(|s| s.votes == 3).cloned()
    })
    .await
    .unwrap();
    // The harness's token derives from the cluster key, which `key rotate` replaces.
    c.use_admin_token().unwrap();
    for what in ["ca", "key"] {
        let (code, out, err) = tokio::task::block_in_place(|| c.cli(&["--json", what, "rotate"])).unwrap();
        assert_eq!(code, 0, "{what} rotate: {out}{err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        let members = r["members"].to_string();
        assert!(
            members.contains("witness"),
            "{what} rotate did not reach the witness: {r}"
        );
        assert_eq!(r["members"].as_array().map(Vec::len), Some(3), "{r}");
    }
    crash_the_leader_and_the_other_leads_with_the_witness(&mut c).await;
}

/// Two nodes and a witness: kill the leader; the other node leads with the witness' vote.
/// Returns the node killed.
async fn crash_the_leader_and_the_other_leads_with_the_witness(c: &mut LocalCluster) -> String {
    let leader = c.wait_stable(T).await.unwrap();
    let other = if leader == "n1" { "n2" } else { "n1" };
    c.kill(&leader).unwrap();
    c.wait_for(T, "the survivor to lead with the witness' vote", |st| {
        let s = st.get(other)?;
        let w = s.witness.as_ref()?;
        (s.quorum && s.leader.as_deref() == Some(other) && w.granted && w.vote.as_deref() == Some(other)).then_some(())
    })
    .await
    .unwrap();
    leader
}

/// `watchdog = PATH` (`{node}`: a file per node standing in for /dev/watchdog, which this
/// machine lacks): every node feeds its watchdog while quorate; a node cut off from the others
/// stops feeding it (the hardware would reset it), the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_only_with_quorum() {
    let dir = std::env::temp_dir().join(format!("phalanx-wd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for n in ["n1", "n2", "n3"] {
        std::fs::write(dir.join(format!("wd-{n}")), b"").unwrap();
    }
    let mut c = LocalCluster::create(Spec {
        nodes: 3,
        heartbeat: Duration::from_millis(100),
        links: 2,
        exe: PathBuf::from(env!("CARGO_BIN_EXE_phalanx")),
        keep: std::env::var_os("PHALANX_KEEP").is_some(),
        extra_config: String::new(),
        cluster_extra: format!("watchdog = \"{}/wd-{{node}}\"\n", dir.display()),
    })
    .unwrap();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    // Bytes written to node n's stand-in watchdog: one per feed.
    let feeds = |dir: &std::path::Path, n: &str| std::fs::metadata(dir.join(format!("wd-{n}"))).unwrap().len();
    let fed = |n: &str| feeds(&dir, n);
    let grows = |n: &'static str| {
        let dir = dir.clone();
        async move {
            let before = feeds(&dir, n);
            let deadline = Instant::now() + T;
            while feeds(&dir, n) < before + 3 {
                assert!(Instant::now() < deadline, "{n} stopped feeding its watchdog");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for n in ["n1", "n2", "n3"] {
        grows(n).await;
    }
    for l in ["0", "1"] {
        let (code, _, err) = c.cli(&["link", "disable", l, "--node", "n3"]).unwrap();
        assert_eq!(code, 0, "{err}");
    }
    c.wait_for(T, "n3 to know it has no quorum", |st| {
        st.get("n3").and_then(|s| (!s.quorum).then_some(()))
    })
    .await
    .unwrap();
    // n3 may feed once more in the round it learns (status and controller run apart); after
    // that, while n1 and n2 feed theirs three times over, n3 feeds nothing.
    let known = fed("n3");
    grows("n1").await;
    let stopped = fed("n3");
    assert!(stopped <= known + 1, "n3 went on feeding its watchdog without quorum");
    grows("n1").await;
    grows("n2").await;
    assert_eq!(fed("n3"), stopped, "n3 fed its watchdog without quorum");
    std::fs::remove_dir_all(&dir).unwrap();
}
