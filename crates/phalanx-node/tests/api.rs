//! The operator and peer routers in-process, without sockets (`tower::ServiceExt::oneshot` on a
//! node running on the fake network, on paused time): every route needs the token (401), an
//! unknown resource, node or route is a 404, malformed JSON a 400, a refused command a 409, no
//! leader a 503 with `Retry-After`, each with a JSON `{error, reason}`; `/v1/write` is gone,
//! and the peer route refuses to forward a leader's decision (403) but commits an operator's
//! request. Raft RPCs are routed by group (`/raft/{group}/{rpc}`): the cluster group answers at
//! `/raft/cluster/…`, an unknown group is a 404.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use phalanx_core::Liveness;
use phalanx_node::fakenet::FakeNet;
use phalanx_node::{api, raft::store, ClusterKey, Node, NodeOptions};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

fn config(nodes: usize) -> phalanx_core::Config {
    let mut src = String::from("[cluster]\nname = \"api\"\nheartbeat_interval = \"100ms\"\n");
    for i in 1..=nodes {
        src += &format!("[[node]]\nname = \"n{i}\"\nlinks = [\"127.0.1.{i}:7400\"]\napi = \"127.0.3.{i}:7480\"\n");
    }
    phalanx_core::config::parse(&src).unwrap()
}

fn key() -> ClusterKey {
    ClusterKey::from_bytes(&[9u8; 32])
}

/// Node n1 of a cluster of `nodes` (only n1 runs: with more than one, it never has a leader).
async fn start(nodes: usize) -> Arc<Node> {
    start_with(config(nodes)).await
}

/// Node n1 of the cluster `cfg` describes (only n1 runs).
async fn start_with(cfg: phalanx_core::Config) -> Arc<Node> {
    let net = FakeNet::new(1);
    let n = &cfg.nodes[0];
    let (out, rx) = net.attach(&n.name, &n.links);
    let node = Node::start(
        NodeOptions {
            config: cfg.clone(),
            config_text: None,
            name: n.name.clone(),
            id: 1,
            links: n.links.clone(),
            api: n.api,
            key: key().into(),
            bootstrap: true,
            runner: None,
            seams: Default::default(),
            mesh_runtime: None,
            sessions_store: None,
            tls: phalanx_node::transport::Tls::ephemeral(&n.name),
            pki: None,
        },
        store::open_in_memory().unwrap(),
        net.raft_network(&n.name),
        out,
        rx,
    )
    .await
    .unwrap();
    net.register_raft(node.id, &node.name, node.raft.clone());
    node
}

/// A one-node cluster, led by its node, bootstrapped, its node recorded online.
async fn leader() -> Arc<Node> {
    leader_of("", "").await
}

/// [`leader`], with `extra` (resources, fence devices...) appended to its config and `cluster`
/// keys added to its `[cluster]` section.
async fn leader_of(cluster: &str, extra: &str) -> Arc<Node> {
    let src = format!(
        "[cluster]\nname = \"api\"\nheartbeat_interval = \"100ms\"\n{cluster}\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.1.1:7400\"]\napi = \"127.0.3.1:7480\"\n{extra}"
    );
    let node = start_with(phalanx_core::config::parse(&src).unwrap()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let online = |n: &Node| {
        n.members()
            .nodes
            .get("n1")
            .is_some_and(|r| r.liveness == Liveness::Online)
    };
    while node.status().leader.is_none() || !online(&node) {
        assert!(tokio::time::Instant::now() < deadline, "no leader: {:?}", node.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    json: serde_json::Value,
}

async fn call(app: &Router, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
    call_as(app, method, path, token, None, body).await
}

/// [`call`], the caller naming itself in `x-phalanx-operator` (as the CLI does: user@host).
async fn call_as(app: &Router, method: &str, path: &str, token: Option<&str>, who: Option<&str>, body: &str) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(w) = who {
        req = req.header("x-phalanx-operator", w);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        retry_after,
        json,
    }
}

/// An error answer: `status`, with body `{"error": kind, "reason": ...}`; returns the reason.
fn error(a: &Answer, status: StatusCode, kind: &str) -> String {
    assert_eq!(a.status, status, "{}", a.json);
    assert_eq!(a.json["error"], kind, "{}", a.json);
    let reason = a.json["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason: {}", a.json));
    assert!(!reason.is_empty() && !reason.contains('{'), "one human line: {reason}");
    reason.to_string()
}

#[tokio::test(start_paused = true)]
async fn every_route_needs_the_token() {
    let node = leader().await;
    let app = api::app(node.clone());
    for (method, path) in [
        ("GET", "/v1/status"),
        ("GET", "/metrics"),
        ("POST", "/raft/cluster/vote"),
        ("POST", "/peer/write"),
        ("GET", "/no/such/route"),
    ] {
        error(
            &call(&app, method, path, None, "").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        let wrong = call(&app, method, path, Some("wrong"), "").await;
        error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let t = key().api_token();
    assert_eq!(
        call(&app, "GET", "/v1/status", Some(&t), "").await.status,
        StatusCode::OK
    );
    node.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn unknown_things_are_404_and_bad_json_400() {
    let node = leader().await;
    let t = key().api_token();
    let app = api::operator::router(node.clone());
    let r = call(&app, "POST", "/v1/resources/nosuch/move", Some(&t), "{}").await;
    assert!(error(&r, StatusCode::NOT_FOUND, "not_found").contains("nosuch"));
    let r = call(&app, "GET", "/v1/why/nosuch", Some(&t), "").await;
    error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = call(&app, "POST", "/v1/nodes/zz/standby", Some(&t), r#"{"standby": true}"#).await;
    assert!(error(&r, StatusCode::NOT_FOUND, "not_found").contains("zz"));
    let r = call(&app, "GET", "/v1/nope", Some(&t), "").await;
    error(&r, StatusCode::NOT_FOUND, "not_found");

    let r = call(&app, "POST", "/v1/nodes/n1/standby", Some(&t), r#"{"standby": tru"#).await;
    assert!(error(&r, StatusCode::BAD_REQUEST, "bad_input").contains("malformed JSON"));
    let r = call(&app, "POST", "/v1/nodes/n1/standby", Some(&t), r#"{"stanby": true}"#).await;
    error(&r, StatusCode::BAD_REQUEST, "bad_input");
    let r = call(
        &app,
        "POST",
        "/v1/nodes",
        Some(&t),
        r#"{"name": "n9", "links": ["nope"]}"#,
    )
    .await;
    assert!(error(&r, StatusCode::BAD_REQUEST, "bad_input").contains("IP:PORT"));

    let peer = api::peer::router(node.clone());
    let r = call(&peer, "POST", "/peer/write", Some(&t), "{\"SetAttr\": ").await;
    error(&r, StatusCode::BAD_REQUEST, "bad_input");
    let r = call(&peer, "POST", "/raft/cluster/append", Some(&t), "\u{7f}\u{7f}\u{7f}").await;
    error(&r, StatusCode::BAD_REQUEST, "bad_input");
    let r = call(&peer, "POST", "/raft/cluster/nosuch", Some(&t), "").await;
    error(&r, StatusCode::NOT_FOUND, "not_found");

    let r = call(&peer, "GET", "/peer/write", Some(&t), "").await;
    error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    // Each router serves its own routes only.
    error(
        &call(&peer, "GET", "/v1/status", Some(&t), "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    error(
        &call(&app, "POST", "/raft/cluster/vote", Some(&t), "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    node.shutdown().await;
}

/// POST raw bytes (the Raft routes' postcard bodies) with the token: the status and the body.
async fn post_bytes(app: &Router, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {}", key().api_token()))
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, bytes.to_vec())
}

/// `/raft/{group}/{rpc}`: the cluster group's Raft answers at `/raft/cluster/…`; an unknown
/// group (or the old path without a group) is a JSON 404; the Raft routes keep their body limit.
#[tokio::test(start_paused = true)]
async fn raft_rpcs_are_routed_by_group() {
    use openraft::error::RaftError;
    use openraft::raft::{VoteRequest, VoteResponse};
    let node = leader().await;
    let t = key().api_token();
    let peer = api::peer::router(node.clone());
    assert_eq!(
        node.raft_groups().names().map(|g| g.as_str()).collect::<Vec<_>>(),
        ["cluster"]
    );

    // A stale candidate's vote request reaches the cluster group's Raft, which refuses it with
    // its own (the leader's) vote.
    let (term, me) = (node.raft.metrics().borrow().current_term, node.id);
    assert!(term >= 1);
    let stale = VoteRequest::new(openraft::Vote::new(0, 7), None);
    let (status, body) = post_bytes(&peer, "/raft/cluster/vote", postcard::to_allocvec(&stale).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Result<VoteResponse<u64>, RaftError<u64>> = postcard::from_bytes(&body).unwrap();
    let answer = answer.unwrap();
    assert!(!answer.vote_granted);
    assert_eq!((answer.vote.leader_id.term, answer.vote.leader_id.node_id), (term, me));

    let r = call(&peer, "POST", "/raft/nosuch/vote", Some(&t), "").await;
    assert!(error(&r, StatusCode::NOT_FOUND, "not_found").contains("nosuch"));
    let r = call(&peer, "POST", "/raft/vote", Some(&t), "").await;
    error(&r, StatusCode::NOT_FOUND, "not_found");

    // A 3 MB body is read (and refused as malformed) on a Raft route; elsewhere it is too large.
    let big = vec![0xffu8; 3 * 1024 * 1024];
    let (status, body) = post_bytes(&peer, "/raft/cluster/append", big.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
    let (status, _) = post_bytes(&peer, "/raft/nosuch/append", big.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post_bytes(&peer, "/peer/write", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    node.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_command_is_409_with_the_state_machines_reason() {
    let node = leader().await;
    let t = key().api_token();
    let app = api::app(node.clone());
    let r = call(
        &app,
        "POST",
        "/v1/nodes",
        Some(&t),
        r#"{"name": "n1", "links": ["127.0.9.9:7400"]}"#,
    )
    .await;
    assert_eq!(error(&r, StatusCode::CONFLICT, "refused"), "node \"n1\" already exists");
    node.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn no_leader_is_503_with_retry_after() {
    // n1 of three, alone: it never elects a leader.
    let node = start(3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = key().api_token();
    let app = api::app(node.clone());
    let r = call(&app, "POST", "/v1/nodes/n1/standby", Some(&t), r#"{"standby": true}"#).await;
    assert!(error(&r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").contains("no leader"));
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    node.shutdown().await;
}

/// Issue 11's repro, in-process: the raw `SetLiveness` is refused at the old `/v1/write` (gone)
/// and at the peer route (a leader's decision), and changes nothing; so are the other
/// decisions. What a follower may forward is committed.
#[tokio::test(start_paused = true)]
async fn the_peer_route_refuses_a_leaders_decision() {
    let node = leader().await;
    let t = key().api_token();
    let app = api::app(node.clone());
    let before = node.members();
    assert_eq!(before.nodes["n1"].liveness, Liveness::Online);
    let forged = r#"{"SetLiveness": {"name": "n1", "liveness": "offline", "at_ms": 1}}"#;
    error(
        &call(&app, "POST", "/v1/write", Some(&t), forged).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    for router in [app.clone(), api::peer::router(node.clone())] {
        let r = call(&router, "POST", "/peer/write", Some(&t), forged).await;
        let reason = error(&r, StatusCode::FORBIDDEN, "forbidden");
        assert!(reason.contains("SetLiveness is a leader's decision"), "{reason}");
    }
    for decision in [
        r#"{"SetPlan": {"actions": [], "edges": []}}"#,
        r#"{"Bootstrap": {"nodes": []}}"#,
    ] {
        let r = call(&app, "POST", "/peer/write", Some(&t), decision).await;
        error(&r, StatusCode::FORBIDDEN, "forbidden");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = node.members();
    assert_eq!(after.nodes["n1"].liveness, Liveness::Online, "n1 stays online");
    assert_eq!(after.plan, before.plan, "the plan is untouched");

    let allowed = r#"{"SetAttr": {"name": "n1", "key": "k", "value": "v"}}"#;
    let r = call(&app, "POST", "/peer/write", Some(&t), allowed).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json, serde_json::json!("Ok"));
    assert_eq!(node.members().nodes["n1"].attrs.get("k").map(String::as_str), Some("v"));
    // A forwarded command the state refuses comes back as data, for the forwarder to map.
    let dup = r#"{"AddNode": {"name": "n1", "id": null, "links": ["127.0.9.9:1"], "api": "127.0.9.9:2"}}"#;
    let r = call(&app, "POST", "/peer/write", Some(&t), dup).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["Rejected"]["kind"], "node_exists", "{}", r.json);
    node.shutdown().await;
}

const RESOURCES: &str = r#"
[[resource]]
id = "web"
agent = "ocf:heartbeat:Dummy"

[[resource]]
id = "ip"
agent = "ocf:heartbeat:Dummy"

[[group]]
id = "svc"
members = ["ip", "web"]

[[resource]]
id = "db"
agent = "ocf:heartbeat:Dummy"

[[constraint]]
location = "db"
node = "n1"
score = "-INFINITY"

[[resource]]
id = "cache"
agent = "ocf:heartbeat:Dummy"
"#;

/// Issue 12: a move to a node that cannot host the resource answered "Ok" and nothing
/// happened. Now it is a 409 that says why (or a 404 for an unknown node or resource); a move
/// the scheduler can honour is a 200.
#[tokio::test(start_paused = true)]
async fn a_move_to_a_node_that_cannot_host_it_is_refused_with_the_reason() {
    let node = leader_of("fencing = \"off\"", RESOURCES).await;
    let t = key().api_token();
    let app = api::app(node.clone());
    let post = |path: &'static str, body: &'static str| {
        let app = app.clone();
        let t = t.clone();
        async move { call(&app, "POST", path, Some(&t), body).await }
    };
    // A location constraint forbids it.
    let r = post("/v1/resources/db/move", r#"{"node": "n1"}"#).await;
    let reason = error(&r, StatusCode::CONFLICT, "refused");
    assert!(
        reason.contains("db cannot run on n1") && reason.contains("location"),
        "{reason}"
    );
    // A member: its group is what moves, and what is checked.
    let r = post("/v1/resources/web/move", r#"{"node": "n1"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // Unknown node, unknown resource: 404.
    let r = post("/v1/resources/web/move", r#"{"node": "zz"}"#).await;
    assert!(error(&r, StatusCode::NOT_FOUND, "not_found").contains("zz"));
    let r = post("/v1/resources/nosuch/ban", r#"{"node": "n1"}"#).await;
    assert!(error(&r, StatusCode::NOT_FOUND, "not_found").contains("nosuch"));
    let r = post("/v1/resources/cache/ban", r#"{"node": "zz"}"#).await;
    assert!(error(&r, StatusCode::NOT_FOUND, "not_found").contains("zz"));
    // A member that never came online (added, not started) cannot host anything yet.
    let r = post("/v1/nodes", r#"{"name": "n2", "links": ["127.0.1.2:7400"]}"#).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = post("/v1/resources/cache/move", r#"{"node": "n2"}"#).await;
    let reason = error(&r, StatusCode::CONFLICT, "refused");
    assert!(
        reason.contains("cache cannot run on n2") && reason.contains("n2"),
        "{reason}"
    );
    // An operator's ban on the node.
    let r = post("/v1/resources/cache/ban", r#"{"node": "n1"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = post("/v1/resources/cache/move", r#"{"node": "n1"}"#).await;
    let reason = error(&r, StatusCode::CONFLICT, "refused");
    assert!(reason.contains("banned from n1 by operator"), "{reason}");
    // Standby.
    let r = post("/v1/nodes/n1/standby", r#"{"standby": true}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = post("/v1/resources/svc/move", r#"{"node": "n1"}"#).await;
    let reason = error(&r, StatusCode::CONFLICT, "refused");
    assert!(reason.contains("standby"), "{reason}");
    // Nothing refused was recorded.
    let recorded: Vec<(String, String, bool)> = node
        .members()
        .operator
        .iter()
        .map(|o| (o.rsc.clone(), o.node.clone(), o.prefer))
        .collect();
    assert_eq!(
        recorded,
        [("web".into(), "n1".into(), true), ("cache".into(), "n1".into(), false)]
    );
    node.shutdown().await;
}

/// `GET /v1/constraints`: every move and ban, who made it (the caller's `x-phalanx-operator`)
/// and when, and when it expires; `clear` of a group clears what was made through its members,
/// and answers with what it cleared.
#[tokio::test(start_paused = true)]
async fn constraints_list_who_and_when_and_clear_of_a_group_clears_its_members() {
    let node = leader_of("fencing = \"off\"", RESOURCES).await;
    let t = key().api_token();
    let app = api::app(node.clone());
    let before = phalanx_node::mesh::unix_ms();
    let r = call_as(
        &app,
        "POST",
        "/v1/resources/web/move",
        Some(&t),
        Some("alice@ops1"),
        r#"{"node": "n1", "lifetime_ms": 60000}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = call(&app, "POST", "/v1/resources/cache/ban", Some(&t), r#"{"node": "n1"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = call(&app, "GET", "/v1/constraints", Some(&t), "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let list = r.json.as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{}", r.json);
    let web = &list[0];
    assert_eq!(web["resource"], "web");
    assert_eq!(web["kind"], "move");
    assert_eq!(web["node"], "n1");
    assert_eq!(web["by"], "alice@ops1");
    let made = web["made_ms"].as_u64().unwrap();
    assert!(made >= before, "{web}");
    assert_eq!(web["expires_ms"].as_u64(), Some(made + 60_000), "{web}");
    let cache = &list[1];
    assert_eq!(
        (cache["resource"].as_str(), cache["kind"].as_str()),
        (Some("cache"), Some("ban"))
    );
    assert!(cache["expires_ms"].is_null(), "{cache}");
    assert!(cache["by"].as_str().unwrap().contains("unidentified"), "{cache}");

    // Clearing the group clears its member's move, and says so.
    let r = call(&app, "POST", "/v1/resources/svc/clear", Some(&t), "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let cleared = r.json["cleared"].as_array().unwrap();
    assert_eq!(cleared.len(), 1, "{}", r.json);
    assert_eq!(
        (cleared[0]["resource"].as_str(), cleared[0]["kind"].as_str()),
        (Some("web"), Some("move"))
    );
    assert_eq!(node.members().operator.len(), 1, "the ban of cache stays");
    // A move through the group, cleared through a member.
    let r = call(&app, "POST", "/v1/resources/svc/move", Some(&t), r#"{"node": "n1"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = call(&app, "POST", "/v1/resources/ip/clear", Some(&t), "").await;
    assert_eq!(r.json["cleared"].as_array().map(Vec::len), Some(1), "{}", r.json);
    let r = call(&app, "POST", "/v1/resources/ip/clear", Some(&t), "").await;
    assert_eq!(r.json["cleared"].as_array().map(Vec::len), Some(0), "{}", r.json);
    node.shutdown().await;
}

const FENCED_N1_ONLY: &str = r#"
[[fence_device]]
name = "ipmi-n1"
agent = "fence_dummy"
host_map = { n1 = "1" }
"#;

/// Issue 12: nothing checked that an added node can be fenced. `node add` refuses a node no
/// fence device covers (unless fencing is off, or the caller says `no_fence_check`).
#[tokio::test(start_paused = true)]
async fn node_add_refuses_a_node_no_fence_device_covers() {
    let node = leader_of("", FENCED_N1_ONLY).await;
    let t = key().api_token();
    let app = api::app(node.clone());
    let r = call(
        &app,
        "POST",
        "/v1/nodes",
        Some(&t),
        r#"{"name": "n2", "links": ["127.0.1.2:7400"]}"#,
    )
    .await;
    let reason = error(&r, StatusCode::CONFLICT, "refused");
    assert!(
        reason.contains("no fence device") && reason.contains("n2") && reason.contains("--no-fence-check"),
        "{reason}"
    );
    assert!(!node.members().nodes.contains_key("n2"), "refused: not added");
    let r = call(
        &app,
        "POST",
        "/v1/nodes",
        Some(&t),
        r#"{"name": "n2", "links": ["127.0.1.2:7400"], "no_fence_check": true}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    node.shutdown().await;

    let off = leader_of("fencing = \"off\"", FENCED_N1_ONLY).await;
    let app = api::app(off.clone());
    let r = call(
        &app,
        "POST",
        "/v1/nodes",
        Some(&t),
        r#"{"name": "n2", "links": ["127.0.1.2:7400"]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "fencing off: {}", r.json);
    off.shutdown().await;
}
