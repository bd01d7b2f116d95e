//! Operator commands against real daemons (issue 12): `resource clear` of a group clears a
//! move made through its member; `resource constraints` lists every move and ban with who made
//! it and when it expires; a node added with `node add` hosts resources (a move to it works);
//! `node remove` of a down, unfenced node needs `--confirm-down`.

use phalanx::harness::{LocalCluster, Spec};
use phalanx_core::scheduler::Role;
use phalanx_node::StatusReport;
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

const GROUP: &str = r#"
[[resource]]
id = "a"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "1s", timeout = "10s" }

[[resource]]
id = "web"
agent = "ocf:heartbeat:Dummy"
monitor = { interval = "1s", timeout = "10s" }

[[group]]
id = "svc"
members = ["a", "web"]
"#;

/// A started cluster of `nodes` (one link each) with `extra` appended to its config.
fn cluster_with(nodes: usize, extra: &str) -> LocalCluster {
    if extra.contains("ocf:heartbeat:Dummy") {
        assert!(
            std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").is_file(),
            "Debian's resource-agents is not installed (.ci/run installs it)"
        );
    }
    let mut c = LocalCluster::create(Spec {
        nodes,
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

/// The one node where `rsc` runs Started, if it runs on exactly one.
fn runs_on(st: &StatusReport, rsc: &str) -> Option<String> {
    let r = st.resources.iter().find(|r| r.id == rsc)?;
    let mut nodes = r.running.iter().filter(|(_, role)| **role == Role::Started);
    let (n, _) = nodes.next()?;
    (nodes.next().is_none() && r.running.len() == 1).then(|| n.clone())
}

/// Wait until every answering node sees all of `rscs` Started on one node, with nothing pending,
/// and `pred` holds for it; returns that node.
async fn wait_on(c: &LocalCluster, what: &str, rscs: &[&str], pred: impl Fn(&str) -> bool) -> String {
    c.wait_for(T, what, |st| {
        let first = st.values().next()?;
        let n = runs_on(first, rscs[0])?;
        let all = st
            .values()
            .all(|s| s.plan_pending == 0 && rscs.iter().all(|r| runs_on(s, r).as_deref() == Some(n.as_str())));
        (all && pred(&n)).then_some(n)
    })
    .await
    .unwrap()
}

/// The operator constraints as the replicated state holds them (`GET /v1/state`).
async fn operator_constraints(c: &LocalCluster) -> Vec<serde_json::Value> {
    let leader = c.wait_stable(T).await.unwrap();
    let api = c.node(&leader).unwrap().api.clone();
    let st: serde_json::Value = c.client.get(&api, "/v1/state").await.unwrap();
    st["operator"].as_array().cloned().unwrap_or_default()
}

/// Issue 12: `resource move web --to n2` moves web's group; `resource clear svc` said "moves
/// and bans cleared" and left the move in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_of_a_group_clears_a_move_made_through_its_member() {
    let c = cluster_with(3, GROUP);
    c.wait_stable(T).await.unwrap();
    let first = wait_on(&c, "svc to start", &["a", "web"], |_| true).await;
    let target = if first == "n2" { "n3" } else { "n2" };
    let (code, out, err) = c.cli(&["resource", "move", "web", "--to", target]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    wait_on(&c, "svc to follow its member's move", &["a", "web"], |n| n == target).await;
    assert_eq!(operator_constraints(&c).await.len(), 1);

    let (code, out, err) = c.cli(&["resource", "clear", "svc"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let left = operator_constraints(&c).await;
    assert!(left.is_empty(), "the member's move is cleared with its group: {left:?}");
    assert!(
        out.contains("web") && out.contains(target),
        "clear says what it cleared: {out}"
    );
    // Nothing left to clear: said so, not "cleared".
    let (code, out, err) = c.cli(&["resource", "clear", "web"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to clear"), "{out}");
}

/// `resource constraints` lists every move and ban: resource, kind, node, who, when, expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_constraints_lists_moves_and_bans_with_their_expiry() {
    let c = cluster_with(3, GROUP);
    c.wait_stable(T).await.unwrap();
    let first = wait_on(&c, "svc to start", &["a", "web"], |_| true).await;
    let target = if first == "n2" { "n3" } else { "n2" };
    let before = phalanx_node::mesh::unix_ms();
    let (code, out, err) = c
        .cli(&["resource", "move", "web", "--to", target, "--lifetime", "10m"])
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = c.cli(&["resource", "ban", "a", "--node", &first]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let after = phalanx_node::mesh::unix_ms();

    let (code, out, err) = c.cli(&["--json", "resource", "constraints"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 2, "{out}");
    let find = |rsc: &str| {
        list.iter()
            .find(|e| e["resource"] == rsc)
            .unwrap_or_else(|| panic!("{out}"))
    };
    let mv = find("web");
    assert_eq!((mv["kind"].as_str(), mv["node"].as_str()), (Some("move"), Some(target)));
    let made = mv["made_ms"].as_u64().unwrap();
    assert!((before..=after).contains(&made), "{mv}");
    let expires = mv["expires_ms"].as_u64().unwrap();
    assert!(
        (before + 600_000..=after + 600_000).contains(&expires),
        "a 10m lifetime: {mv}"
    );
    let by = mv["by"].as_str().unwrap();
    assert!(by.contains('@'), "who made it (user@host): {mv}");
    let ban = find("a");
    assert_eq!(
        (ban["kind"].as_str(), ban["node"].as_str()),
        (Some("ban"), Some(first.as_str()))
    );
    assert!(ban["expires_ms"].is_null(), "no lifetime: never expires: {ban}");

    let (code, out, err) = c.cli(&["resource", "constraints"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let line = |rsc: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(rsc))
            .unwrap_or_else(|| panic!("no line for {rsc}: {out}"))
            .to_string()
    };
    let (web, a) = (line("web"), line("a"));
    assert!(
        web.contains("move") && web.contains(target) && web.contains(by),
        "{out}"
    );
    assert!(a.contains("ban") && a.contains("never"), "{out}");
    assert!(!web.contains("never"), "{out}");
}

/// Start node `name` as `phalanx node add` (its addresses chosen by the harness) and wait until
/// every node sees it online.
async fn add_and_start(c: &mut LocalCluster, name: &str) {
    let (links, api) = c.add_unlisted(name).unwrap();
    let mut args = vec!["node", "add", name, "--node-api", api.as_str()];
    for l in &links {
        args.extend(["--link", l.as_str()]);
    }
    let (code, out, err) = c.cli(&args).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    c.start(name).unwrap();
    c.wait_for(T, &format!("{name} online everywhere"), |st| {
        (st.len() == 4
            && st.values().all(|s| {
                // Online as the mesh sees it and as the replicated state records it (what the
                // scheduler and the fence rules go by).
                s.nodes.len() == 4
                    && s.nodes
                        .iter()
                        .all(|n| n.state == "online" && n.liveness == phalanx_core::Liveness::Online)
                    && s.plan_pending == 0
            }))
        .then_some(())
    })
    .await
    .unwrap();
}

/// Issue 12: "`resource move anyweb --to n4` answers Ok and nothing happens": a node added
/// with `node add` is a full member that hosts resources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_with_node_add_hosts_a_resource_moved_to_it() {
    let mut c = cluster_with(3, GROUP);
    c.wait_stable(T).await.unwrap();
    wait_on(&c, "svc to start", &["a", "web"], |_| true).await;
    add_and_start(&mut c, "n4").await;
    let (code, out, err) = c.cli(&["resource", "move", "svc", "--to", "n4"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    wait_on(&c, "svc to run on n4", &["a", "web"], |n| n == "n4").await;
    let dummy = c.node("n4").unwrap().data_dir.join("agents/rsctmp/Dummy-web.state");
    assert!(dummy.exists(), "the agent really ran on n4: {}", dummy.display());
}

/// Issue 12: `node remove` of a dead, unfenced node was accepted silently; it may still run
/// resources, so the operator must say it is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_down_unfenced_node_needs_confirm_down() {
    let mut c = cluster_with(3, "");
    c.wait_stable(T).await.unwrap();
    // n4 has no outlet on the harness' power switch (it was not in the file when the switch
    // started): once lost, its fence fails and it stays down and unfenced.
    add_and_start(&mut c, "n4").await;
    c.kill("n4").unwrap();
    c.wait_for(T, "n4 recorded offline", |st| {
        st.values()
            .all(|s| {
                s.nodes
                    .iter()
                    .any(|n| n.name == "n4" && n.liveness == phalanx_core::Liveness::Offline && !n.fence.fenced)
            })
            .then_some(())
    })
    .await
    .unwrap();
    let (code, out, err) = c.cli(&["node", "remove", "n4"]).unwrap();
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("--confirm-down") && err.contains("not fenced"),
        "the refusal says why and what to do: {err}"
    );
    let st = c.status("n1").await.unwrap();
    assert!(st.nodes.iter().any(|n| n.name == "n4"), "n4 is still a member");

    let (code, out, err) = c.cli(&["node", "remove", "n4", "--confirm-down"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    c.wait_for(T, "n4 to leave the membership", |st| {
        st.values()
            .all(|s| !s.nodes.iter().any(|n| n.name == "n4"))
            .then_some(())
    })
    .await
    .unwrap();
}
