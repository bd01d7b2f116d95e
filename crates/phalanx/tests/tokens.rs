//! API tokens and roles (issue 17) on 3 real daemons running the demo service: the cluster
//! key's token opens the API until an admin token exists; `phalanx token create` prints a
//! secret once and the cluster keeps only its hash; a read token sees and may not act (403 with
//! the role needed), an operate token acts and may not apply a config or make tokens, an admin
//! may; missing, unknown, expired and revoked tokens get 401 — a revocation on every node within
//! one heartbeat interval of its commit, at once on the node that answered it —; the peer
//! routes take no user token; every write names its token in the event history; with every
//! admin token lost, a break-glass proof of the cluster key makes a new one (a forged or stale
//! proof gets 401).

use phalanx::harness::{runs_on, LocalCluster, Spec};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// A request to `api` with `token` (None: no Authorization header): its status and body.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    api: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut req = http.request(method, LocalCluster::url(api, path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Polls `GET path` on `api` with `token` until it answers `want` (at most `T` after `since`):
/// the answer's body. A token's creation or revocation reaches each node as it applies it: a node
/// other than the one that answered may take a moment.
async fn answers(http: &reqwest::Client, api: &str, path: &str, token: &str, want: u16, since: Instant) -> String {
    loop {
        let (code, body) = call(http, reqwest::Method::GET, api, path, Some(token), None).await;
        if code == want {
            return body;
        }
        assert!(since.elapsed() < T, "{api} {path} answers {code}, not {want}: {body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`answers`] 401 to `GET /v1/status`.
async fn refused(http: &reqwest::Client, api: &str, token: &str, since: Instant) -> String {
    answers(http, api, "/v1/status", token, 401, since).await
}

fn created(c: &LocalCluster, args: &[&str]) -> String {
    let mut all = vec!["--json", "token", "create"];
    all.extend_from_slice(args);
    let (code, out, err) = c.cli(&all).unwrap();
    assert_eq!(code, 0, "{args:?}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = v["token"].as_str().unwrap().to_string();
    assert_eq!(t.len(), 64, "{v}");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_have_roles_expire_and_are_revoked_everywhere() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let port = phalanx::demo::service_port(3).unwrap();
    let extra = phalanx::demo::service_resource(&exe, "web", port);
    let mut c = LocalCluster::create(Spec::loopback(3, exe, extra)).unwrap();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let web = c
        .wait_for(T, "web runs", |st| {
            let s = st.values().next()?;
            runs_on(s, "web").filter(|_| s.plan_pending == 0)
        })
        .await
        .unwrap();
    let other = if web == "n1" { "n2" } else { "n1" };
    let apis: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| c.node(n).unwrap().api.clone())
        .collect();
    let key_token = c.client.token().to_string();
    let http = c.operator_http().unwrap();
    use reqwest::Method;

    // No token, a wrong one: 401.
    let (code, body) = call(&http, Method::GET, &apis[0], "/v1/status", None, None).await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = call(&http, Method::GET, &apis[0], "/v1/status", Some(&"0".repeat(64)), None).await;
    assert_eq!(code, 401);

    // Tokens made with the key's token (no admin token yet): the secrets are never in the state.
    let ro = created(&c, &["ro", "--role", "read"]);
    let ops = created(&c, &["ops", "--role", "operate"]);
    let brief = created(&c, &["brief", "--role", "operate", "--ttl", "1s"]);
    let (code, out, err) = c.cli(&["token", "create", "ro", "--role", "read"]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("token \"ro\" already exists"), "{out}{err}");
    let (code, state) = call(&http, Method::GET, &apis[0], "/v1/state", Some(&key_token), None).await;
    assert_eq!(code, 200, "{state}");
    for secret in [&ro, &ops, &brief] {
        assert!(!state.contains(secret.as_str()), "a secret in the state");
    }
    answers(&http, &apis[1], "/v1/status", &ops, 200, Instant::now()).await; // n2 applied ops
    let list = answers(&http, &apis[1], "/v1/tokens", &key_token, 200, Instant::now()).await;
    assert!(list.contains("\"ops\"") && !list.contains("hash"), "{list}");

    // read: sees everything, changes nothing (403 with the role needed).
    for path in ["/v1/status", "/v1/events", "/metrics", "/v1/availability"] {
        answers(&http, &apis[2], path, &ro, 200, Instant::now()).await;
    }
    let move_it = format!(r#"{{"node":"{other}"}}"#);
    let (code, body) = call(
        &http,
        Method::POST,
        &apis[0],
        "/v1/resources/web/move",
        Some(&ro),
        Some(&move_it),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("POST /v1/resources/web/move needs the operate role; token ro has read"),
        "{body}"
    );
    // operate: acts, but may not make tokens or apply a config.
    let (code, body) = call(
        &http,
        Method::POST,
        &apis[0],
        "/v1/resources/web/move",
        Some(&ops),
        Some(&move_it),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = call(&http, Method::GET, &apis[0], "/v1/tokens", Some(&ops), None).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = call(&http, Method::POST, &apis[0], "/v1/config", Some(&ops), Some("{}")).await;
    assert!(code == 403 && body.contains("needs the admin role"), "{code} {body}");
    // A user token is no node: the peer routes refuse it, without a node certificate (403)
    // and even on a node's connection (401).
    let (code, _) = call(&http, Method::POST, &apis[0], "/peer/write", Some(&ops), Some("{}")).await;
    assert_eq!(code, 403);
    let as_node = c.node_http("n2").unwrap();
    let (code, _) = call(&as_node, Method::POST, &apis[0], "/peer/write", Some(&ops), Some("{}")).await;
    assert_eq!(code, 401);
    // The audit trail names the token.
    let (code, out, _) = c.cli(&["events", "--kind", "operator_command", "--json"]).unwrap();
    assert_eq!(code, 0);
    assert!(out.contains(&format!("(token ops): move web to {other}")), "{out}");

    // Expired: 401 once its time is up.
    let body = refused(&http, &apis[0], &brief, Instant::now()).await;
    assert!(body.contains("token brief expired"), "{body}");

    // An admin token: the key's token no longer opens the operator API (it still carries the
    // nodes' own traffic: the cluster keeps working) — on each node as it applies the entry.
    let root = created(&c, &["root", "--role", "admin"]);
    let made = Instant::now();
    let body = refused(&http, &apis[1], &key_token, made).await;
    assert!(body.contains("disabled since an admin token exists"), "{body}");
    assert!(made.elapsed() < Duration::from_secs(1), "{:?}", made.elapsed());
    c.use_token(root.clone());
    let (code, _, err) = c.cli(&["token", "list"]).unwrap();
    assert_eq!(code, 0, "{err}");

    // Revoked through a follower: refused there from its answer on (it forwarded the revocation
    // and answered once it applied it), and on every node within one heartbeat interval.
    let (code, st) = call(&http, Method::GET, &apis[0], "/v1/status", Some(&root), None).await;
    assert_eq!(code, 200, "{st}");
    let leader = serde_json::from_str::<serde_json::Value>(&st).unwrap()["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let follower = &apis[["n1", "n2", "n3"].iter().position(|n| *n != leader).unwrap()];
    let (code, body) = call(&http, Method::DELETE, follower, "/v1/tokens/ops", Some(&root), None).await;
    assert_eq!(code, 200, "{body}");
    let revoked = Instant::now();
    let (code, body) = call(&http, Method::GET, follower, "/v1/status", Some(&ops), None).await;
    assert_eq!(
        code, 401,
        "the follower that answered the revocation still takes the token: {body}"
    );
    let mut slowest = Duration::ZERO;
    for api in &apis {
        refused(&http, api, &ops, revoked).await;
        slowest = slowest.max(revoked.elapsed());
    }
    eprintln!("revocation refused on every node {slowest:?} after the revoke returned");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    let (code, _, err) = c.cli(&["token", "revoke", "ops"]).unwrap();
    assert!(code != 0 && err.contains("no token named \"ops\""), "{err}");

    // Every admin token lost (root revoked by itself): the holder of the cluster key gets back
    // in with a break-glass admin token, which the history records; a forged or stale proof
    // gets 401.
    let (code, _, err) = c.cli(&["token", "revoke", "root"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let (code, _) = call(&http, Method::GET, &apis[0], "/v1/status", Some(&root), None).await;
    assert_eq!(code, 401);
    let forged = serde_json::json!({
        "name": "mallory", "hash": "a".repeat(64), "at_ms": phalanx_node::mesh::unix_ms(), "proof": "b".repeat(64),
    })
    .to_string();
    let (code, body) = call(
        &http,
        Method::POST,
        &apis[0],
        "/v1/tokens/break-glass",
        None,
        Some(&forged),
    )
    .await;
    assert!(
        code == 401 && body.contains("does not match the cluster key"),
        "{code} {body}"
    );
    let key = phalanx_node::ClusterKey::load(&c.dir().join("phalanx.key")).unwrap();
    let (hash, stale_at) = ("c".repeat(64), phalanx_node::mesh::unix_ms() - 120_000);
    let stale = serde_json::json!({
        "name": "late", "hash": hash, "at_ms": stale_at, "proof": key.break_glass_proof("late", &hash, stale_at),
    })
    .to_string();
    let (code, body) = call(
        &http,
        Method::POST,
        &apis[0],
        "/v1/tokens/break-glass",
        None,
        Some(&stale),
    )
    .await;
    assert!(code == 401 && body.contains("make a new one"), "{code} {body}");
    let tokens_dir = tempfile::tempdir().unwrap();
    let rescue = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["--config"])
        .arg(c.dir().join("cluster.toml"))
        .args([
            "--json",
            "token",
            "create",
            "rescue",
            "--role",
            "admin",
            "--break-glass",
        ])
        .env(phalanx::token_cmd::TOKEN_DIR_ENV, tokens_dir.path())
        .env_remove(phalanx::token_cmd::TOKEN_ENV)
        .output()
        .unwrap();
    assert!(rescue.status.success(), "{}", String::from_utf8_lossy(&rescue.stderr));
    let v: serde_json::Value = serde_json::from_slice(&rescue.stdout).unwrap();
    let rescue = v["token"].as_str().unwrap().to_string();
    assert!(v["saved"].as_str().is_some(), "{v}");
    // The break-glass token is an admin's (on a node that may apply it a moment later).
    answers(&http, &apis[2], "/v1/tokens", &rescue, 200, Instant::now()).await;
    c.use_token(rescue);
    let (code, out, _) = c.cli(&["events", "--kind", "operator_command", "--json"]).unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("break-glass with the cluster key"), "{out}");
    // The cluster is fine throughout: web runs where the operate token moved it.
    let st = c.statuses().await;
    assert_eq!(st.len(), 3);
    assert!(st.values().all(|s| runs_on(s, "web").as_deref() == Some(other)));
    c.stop_all();
}
