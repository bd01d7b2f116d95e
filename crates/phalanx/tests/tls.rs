//! Mutual TLS with the cluster CA (issue 17) on 3 real daemons: `phalanx cert issue` writes a
//! node's certificate, which its daemon then runs with as is; the nodes issue their own
//! otherwise; `cert list` shows them; every node-to-node and CLI connection is TLS 1.3 (the
//! cluster forms, the CLI works); a client with another cluster's certificate, or an expired one
//! of this cluster, is refused at the handshake, and each refusal is counted in `/metrics` and
//! recorded as an `auth_failed` event; plain HTTP gets a clear 400; the peer routes need a
//! node's certificate; a removed node's certificate is refused by every node, at the handshake
//! and on connections opened before, and the node cannot rejoin.

use phalanx::harness::{LocalCluster, Spec};
use phalanx_node::pki;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

const T: Duration = Duration::from_secs(60);

fn refused(metrics: &str, reason: &str) -> u64 {
    let series = format!("phalanx_tls_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the metrics"))
}

/// n3 runs from a folder of its own (`n3-etc`) holding the cluster key, `ca.crt` and a first
/// certificate of `lifetime` for its links, API and `extra` addresses, and no CA key (its local
/// config points there). The shared folder's paths, n3's, and the CA.
fn n3_without_the_ca_key(
    c: &mut LocalCluster,
    lifetime: Duration,
    extra: &[std::net::IpAddr],
) -> (pki::Paths, pki::Paths, pki::Issued) {
    let shared = pki::Paths::beside(&c.dir().join("phalanx.key"));
    let etc = c.dir().join("n3-etc");
    std::fs::create_dir_all(&etc).unwrap();
    for f in ["phalanx.key", "ca.crt"] {
        std::fs::copy(c.dir().join(f), etc.join(f)).unwrap();
    }
    let own = pki::Paths::beside(&etc.join("phalanx.key"));
    assert!(!own.ca_key().exists());
    let n3 = c.node("n3").unwrap();
    let ips: Vec<std::net::IpAddr> = n3
        .links
        .iter()
        .chain([&n3.api])
        .map(|a| a.parse::<std::net::SocketAddr>().unwrap().ip())
        .chain(extra.iter().copied())
        .collect();
    let ca = pki::load_ca(&shared).unwrap().unwrap();
    let first = pki::issue(&ca, "n3", &ips, SystemTime::now(), lifetime).unwrap();
    pki::store_node(&own, "n3", &first).unwrap();
    let text = std::fs::read_to_string(c.dir().join("cluster.toml"))
        .unwrap()
        .replace("key_file = \"phalanx.key\"", "key_file = \"n3-etc/phalanx.key\"");
    c.set_local_config("n3", &text).unwrap();
    (shared, own, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_tls_with_the_cluster_ca_and_strangers_are_refused_counted_and_recorded() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let mut c = LocalCluster::create(Spec::loopback(3, exe, String::new())).unwrap();
    let paths = pki::Paths::beside(&c.dir().join("phalanx.key"));

    // n3's certificate issued by hand, before it ever started: its daemon runs with it.
    let (code, out, err) = c.cli(&["--json", "cert", "issue", "n3"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let issued: serde_json::Value = serde_json::from_str(&out).unwrap();
    let api3 = c.node("n3").unwrap().api.clone();
    let ip3 = api3.rsplit_once(':').unwrap().0.to_string();
    assert!(issued["ips"].as_array().unwrap().iter().any(|i| i == &ip3), "{issued}");
    let by_hand = std::fs::read_to_string(paths.node_cert("n3")).unwrap();
    let (code, _, err) = c.cli(&["cert", "issue", "n9"]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("no node named \"n9\""), "{err}");

    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    assert_eq!(std::fs::read_to_string(paths.node_cert("n3")).unwrap(), by_hand);
    // A certificate in use is not replaced by mistake.
    let (code, _, err) = c.cli(&["cert", "issue", "n3", "--ip", "10.9.9.9"]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("--force replaces it"), "{err}");
    assert_eq!(std::fs::read_to_string(paths.node_cert("n3")).unwrap(), by_hand);
    let (code, out, err) = c.cli(&["--json", "cert", "list"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["phalanx CA demo", "n1", "n2", "n3"], "{out}");
    assert!(rows.iter().all(|r| r["state"] == "ok"), "{out}");
    let (_, human, _) = c.cli(&["cert", "list"]).unwrap();
    assert!(human.contains("n1.demo.phalanx"), "{human}");

    let api = c.node("n1").unwrap().api.clone();
    let ip: std::net::IpAddr = api.rsplit_once(':').unwrap().0.parse().unwrap();
    let ca_pem = std::fs::read_to_string(paths.ca_cert()).unwrap();
    let get = |tls: phalanx_node::transport::Tls| {
        let url = LocalCluster::url(&api, "/v1/status");
        async move { tls.http_client(Duration::from_secs(5)).unwrap().get(url).send().await }
    };
    let now = SystemTime::now();
    // Another cluster's node, even one named like ours: refused at the handshake.
    let other = pki::generate_ca("demo", now).unwrap();
    let stranger = pki::issue(&other, "n2", &[ip], now, pki::NODE_LIFETIME).unwrap();
    let tls = phalanx_node::transport::Tls::node(&ca_pem, &stranger.cert_pem, &stranger.key_pem).unwrap();
    assert!(get(tls).await.is_err(), "another cluster's certificate was accepted");
    // This cluster's, but expired.
    let ours = pki::load_ca(&paths).unwrap().unwrap();
    let long_ago = now - Duration::from_secs(100 * 86_400);
    let old = pki::issue(&ours, "n2", &[ip], long_ago, pki::NODE_LIFETIME).unwrap();
    let tls = phalanx_node::transport::Tls::node(&ca_pem, &old.cert_pem, &old.key_pem).unwrap();
    assert!(get(tls).await.is_err(), "an expired certificate was accepted");
    // Plain HTTP: a clear answer.
    let plain = reqwest::get(format!("http://{api}/v1/status")).await.unwrap();
    assert_eq!(plain.status(), 400);
    // The operator's client (no certificate) is TLS and gets to the token check.
    let r = get(phalanx_node::transport::Tls::client(&ca_pem).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let metrics = c.client.metrics(&api).await.unwrap();
    assert!(refused(&metrics, "unknown-ca") >= 1, "{metrics}");
    assert!(refused(&metrics, "expired") >= 1, "{metrics}");
    assert!(refused(&metrics, "not-tls") >= 1, "{metrics}");
    assert_eq!(refused(&metrics, "revoked"), 0);
    let expiry: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("phalanx_tls_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no certificate expiry in the metrics: {metrics}"));
    let now_s = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry > now_s + 89 * 86_400 && expiry <= now_s + 90 * 86_400,
        "{expiry}"
    );
    let deadline = Instant::now() + T;
    loop {
        let (code, out, err) = c.cli(&["--api", &api, "events", "--json"]).unwrap();
        assert_eq!(code, 0, "{err}");
        if out
            .lines()
            .any(|l| l.contains("auth_failed") && l.contains("TLS handshake: unknown-ca"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no auth_failed event for the handshake: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_certificate_is_refused_by_every_node_and_it_cannot_rejoin() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let mut c = LocalCluster::create(Spec::loopback(3, exe, String::new())).unwrap();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let (links, api4) = c.add_unlisted("n4").unwrap();
    let mut args = vec!["node", "add", "n4", "--node-api", api4.as_str()];
    for l in &links {
        args.extend(["--link", l.as_str()]);
    }
    let (code, out, err) = c.cli(&args).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    // `node add` issued n4's certificate here (this folder holds the CA key), for its addresses.
    assert!(out.contains("Issued its certificate"), "{out}");
    let issued = pki::inspect_pem(&std::fs::read_to_string(c.dir().join("certs/n4.crt")).unwrap()).unwrap();
    let api_ip: std::net::SocketAddr = api4.parse().unwrap();
    assert_eq!(issued.name, "n4");
    assert!(issued.ips.contains(&api_ip.ip()), "{issued:?}");
    c.start("n4").unwrap();
    c.wait_for(T, "n4 a voter, online everywhere", |st| {
        (st.len() == 4
            && st.values().all(|s| s.voters.len() == 4)
            && st.values().all(|s| s.nodes.iter().all(|n| n.state == "online")))
        .then_some(())
    })
    .await
    .unwrap();
    let token = c.api_token().unwrap();
    let apis: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| c.node(n).unwrap().api.clone())
        .collect();
    // n4's certificate, on a connection that stays open across the removal.
    let pooled = c.node_http("n4").unwrap();
    for api in &apis {
        let r = pooled
            .get(LocalCluster::url(api, "/v1/status"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let (code, out, err) = c.cli(&["node", "remove", "n4"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let removed = Instant::now();
    // Every node refuses n4's certificate at the handshake: the slowest, measured.
    let mut slowest = Duration::ZERO;
    for api in &apis {
        loop {
            let fresh = c.node_http("n4").unwrap();
            let r = fresh
                .get(LocalCluster::url(api, "/v1/status"))
                .bearer_auth(&token)
                .send()
                .await;
            if r.is_err() {
                slowest = slowest.max(removed.elapsed());
                break;
            }
            assert!(removed.elapsed() < T, "{api} still admits n4's certificate");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    eprintln!("n4's certificate refused by every node {slowest:?} after `node remove` returned");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // On the connection opened before: the node-to-node routes refuse it, naming why.
    let r = pooled
        .post(LocalCluster::url(&apis[0], "/raft/cluster/vote"))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("revoked"));
    }
    let metrics = c.client.metrics(&apis[0]).await.unwrap();
    assert!(refused(&metrics, "revoked") >= 1, "{metrics}");

    // It exits, and cannot come back as it was.
    let status = c.wait_exit("n4", T).await.unwrap();
    assert!(!status.success());
    c.start("n4").unwrap();
    let status = c.wait_exit("n4", T).await.unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(c.log_path("n4")).unwrap();
    assert!(log.contains("neither in the config file nor a member"), "{log}");
}

/// Node certificates renew themselves at 2/3 of their life while the cluster serves (a test
/// lifetime of 6 s through `PHALANX_CERT_LIFETIME`): in 15 s every node presents at least two
/// new certificates, and requests over new connections every 100 ms — an operator's to each
/// node, and one presenting a node's certificate (as read from its file at that moment) — never
/// fail: each handshake meets a certificate within its validity. No node is seen offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_renew_while_the_cluster_runs_and_no_request_fails() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let mut c = LocalCluster::create(Spec::loopback(3, exe, String::new())).unwrap();
    for n in ["n1", "n2", "n3"] {
        c.set_env(n, pki::LIFETIME_ENV, "6s").unwrap();
    }
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let paths = pki::Paths::beside(&c.dir().join("phalanx.key"));
    let ca_pem = std::fs::read_to_string(paths.ca_cert()).unwrap();
    let token = c.api_token().unwrap();
    let names = ["n1", "n2", "n3"];
    let apis: Vec<String> = names.iter().map(|n| c.node(n).unwrap().api.clone()).collect();
    let mut serials: std::collections::BTreeMap<&str, std::collections::BTreeSet<String>> = Default::default();
    let (mut requests, mut failed) = (0, Vec::new());
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        for (name, api) in names.iter().zip(&apis) {
            if let Ok(pem) = std::fs::read_to_string(paths.node_cert(name)) {
                if let Ok(info) = pki::inspect_pem(&pem) {
                    serials.entry(name).or_default().insert(info.serial);
                }
            }
            let operator = phalanx_node::transport::Tls::client(&ca_pem).unwrap();
            let as_node = c.node_http(name);
            for client in [operator.http_client(Duration::from_secs(5)).ok(), as_node.ok()] {
                requests += 1;
                let r = match client {
                    Some(h) => {
                        h.get(LocalCluster::url(api, "/v1/status"))
                            .bearer_auth(&token)
                            .send()
                            .await
                    }
                    None => continue,
                };
                match r {
                    Ok(r) if r.status() == 200 => {}
                    other => failed.push(format!("{api}: {other:?}")),
                }
            }
        }
        let st = c.statuses().await;
        for (who, s) in &st {
            for n in &s.nodes {
                assert_eq!(n.state, "online", "{who} sees {} {}", n.name, n.state);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{requests} requests over new connections, {} failed; certificates seen: {serials:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    for name in names {
        assert!(serials[name].len() >= 3, "{name} renewed fewer than twice: {serials:?}");
        let log = std::fs::read_to_string(c.log_path(name)).unwrap();
        assert!(log.contains("renewed this node's certificate"), "{log}");
    }
}

/// A node whose machine holds no CA key renews through a peer that does: n3 runs from a folder
/// of its own with the cluster key and `ca.crt` only, and a first 6 s certificate issued for it;
/// in 15 s its certificate is renewed at least twice by a peer (its log says so, and the files
/// change), and requests presenting n3's certificate as its folder holds it, over new
/// connections, never fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_ca_key_renews_its_certificate_through_a_peer() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let mut c = LocalCluster::create(Spec::loopback(3, exe, String::new())).unwrap();
    for n in ["n1", "n2", "n3"] {
        c.set_env(n, pki::LIFETIME_ENV, "6s").unwrap();
    }
    let (_, own, ca) = n3_without_the_ca_key(&mut c, Duration::from_secs(6), &[]);
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let api = c.node("n1").unwrap().api.clone();
    let token = c.api_token().unwrap();
    let mut serials = std::collections::BTreeSet::new();
    let (mut requests, mut failed) = (0, Vec::new());
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let files = (
            std::fs::read_to_string(own.node_cert("n3")),
            std::fs::read_to_string(own.node_key("n3")),
        );
        if let (Ok(cert), Ok(key)) = files {
            serials.insert(pki::inspect_pem(&cert).unwrap().serial);
            // A pair read between the two writes of a renewal does not match: skipped.
            if let Ok(tls) = phalanx_node::transport::Tls::node(&ca.cert_pem, &cert, &key) {
                requests += 1;
                let http = tls.http_client(Duration::from_secs(5)).unwrap();
                match http
                    .get(LocalCluster::url(&api, "/v1/status"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {}
                    other => failed.push(format!("{other:?}")),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{requests} requests with n3's certificate, {} failed; its certificates: {serials:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(serials.len() >= 3, "n3 renewed fewer than twice: {serials:?}");
    assert!(!own.ca_key().exists(), "n3's folder gained a CA key");
    let log = std::fs::read_to_string(c.log_path("n3")).unwrap();
    assert!(log.contains("a peer signed this node's renewed certificate"), "{log}");
    let signers: usize = ["n1", "n2"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(c.log_path(n))
                .unwrap()
                .matches("signed a peer's renewed certificate")
                .count()
        })
        .sum();
    assert!(signers >= 2, "{signers} signatures in n1's and n2's logs");
}

/// Issue 17's rotation drill: `phalanx ca rotate`, then `phalanx key rotate`, on 3 daemons —
/// n3 from a folder of its own without the CA key (its certificates come from a peer, its new
/// key and CA files over TLS) — while a session writer stores carts through the memcached port
/// and an operator client polls every node over new connections. Not one request or write
/// fails, every node sees every other online throughout, no heartbeat is dropped for its
/// signature; afterwards every folder holds the new CA alone, its key where the CA key was and
/// the new heartbeat key as the key file, and the cluster restarts from those files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_and_the_heartbeat_key_rotate_while_clients_run_and_nothing_fails() {
    use phalanx_node::ClusterKey;
    use std::sync::atomic::{AtomicBool, Ordering};
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx"));
    let ports: Vec<std::net::SocketAddr> = (1..=3)
        .map(|i| {
            std::net::TcpListener::bind(format!("127.0.12.{i}:0"))
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let listen: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, a)| format!("n{} = \"{a}\"", i + 1))
        .collect();
    let extra = format!("\n[sessions]\nlisten = {{ {} }}\n", listen.join(", "));
    let mut c = LocalCluster::create(Spec::loopback(3, exe, extra)).unwrap();
    let key_file = c.dir().join("phalanx.key");
    // n3's machine: the cluster key, ca.crt and its certificate, no CA key.
    let (shared, own, ca) = n3_without_the_ca_key(&mut c, pki::NODE_LIFETIME, &[ports[2].ip()]);
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let admin = c.use_admin_token().unwrap();
    let old_ca = pki::ca_id(&ca.cert_pem).unwrap();
    let old_key = ClusterKey::load(&key_file).unwrap().id();
    // A record that would cut the nodes off (another CA alone; a key nobody holds) is refused
    // before anything is committed, with why.
    let http = c.operator_http().unwrap();
    let stranger = pki::generate_ca("demo", SystemTime::now()).unwrap();
    for (trust, why) in [
        (
            serde_json::json!({"cas": [stranger.cert_pem], "issuer": 0, "keys": [], "send_key": 0}),
            "drops",
        ),
        (
            serde_json::json!({"cas": [], "issuer": 0, "keys": ["00ff00ff00ff00ff"], "send_key": 0}),
            "does not hold",
        ),
    ] {
        let empty = serde_json::json!({"cas": [], "issuer": 0, "keys": [], "send_key": 0});
        let r = http
            .post(LocalCluster::url(&c.node("n1").unwrap().api, "/v1/trust"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"expected": empty, "trust": trust}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 409, "{body}");
        assert!(body.contains(why), "{body}");
    }

    let writer = phalanx::session_writer::Writer::start(ports.clone(), "rot-");
    writer.ready(T).await.unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let apis: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| c.node(n).unwrap().api.clone())
        .collect();
    let prober = {
        let (stop, key_file, admin) = (stop.clone(), key_file.clone(), admin.clone());
        tokio::spawn(async move {
            let (mut requests, mut failed, mut dead) = (0u64, Vec::new(), Vec::new());
            while !stop.load(Ordering::SeqCst) {
                for api in &apis {
                    // As an operator's CLI: a new client trusting what the folder trusts now.
                    let http = phalanx::client::operator_tls(&key_file)
                        .unwrap()
                        .http_client(Duration::from_secs(5))
                        .unwrap();
                    requests += 1;
                    let r = http
                        .get(LocalCluster::url(api, "/v1/status"))
                        .bearer_auth(&admin)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            let s: phalanx_node::StatusReport = r.json().await.unwrap();
                            for n in s.nodes.iter().filter(|n| n.state != "online") {
                                dead.push(format!("{} sees {} {}", s.node, n.name, n.state));
                            }
                        }
                        other => failed.push(format!("{api}: {other:?}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (requests, failed, dead)
        })
    };

    let rotate = |what: &str| {
        let (code, out, err) = tokio::task::block_in_place(|| c.cli(&["--json", what, "rotate"])).unwrap();
        assert_eq!(code, 0, "{what} rotate: {err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["steps"].as_array().map(Vec::len), Some(3), "{r}");
        assert_eq!(r["members"].as_array().map(Vec::len), Some(3), "{r}");
        eprintln!("{what} rotate: {r}");
        r
    };
    // The clients run a second before, between and after the rotations (load, not a wait).
    let load = || tokio::time::sleep(Duration::from_secs(1));
    load().await;
    let ca_report = rotate("ca");
    load().await;
    let key_report = rotate("key");
    load().await;
    stop.store(true, Ordering::SeqCst);
    let (requests, failed, dead) = prober.await.unwrap();
    let figures = writer.stop(T).await.unwrap();
    eprintln!(
        "{requests} operator requests, {} failed; session writes {figures:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(dead.is_empty(), "{dead:?}");
    assert!(requests > 30, "{requests}");
    assert_eq!((figures.errors, figures.lost), (0, 0), "{figures:?}");
    assert!(figures.acked > 100, "{figures:?}");

    let new_ca = ca_report["new"].as_str().unwrap().to_string();
    let new_key = key_report["new"].as_str().unwrap().to_string();
    assert_eq!(ca_report["old"], old_ca.as_str());
    assert_eq!(key_report["old"], old_key.as_str());
    assert_ne!(new_ca, old_ca);
    assert_ne!(new_key, old_key);
    c.reload_trust().unwrap();
    for (who, s) in c.statuses().await {
        assert_eq!(s.mesh.dropped_auth, 0, "{who} dropped heartbeats for their signature");
    }
    let (code, out, err) = c.cli(&["--json", "events", "--kind", "node_lost"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().is_empty(), "a node was declared lost: {out}");
    // Every folder: the new CA alone, its key as the CA key (where there was one), the new key.
    for (paths, holds_ca_key) in [(&shared, true), (&own, false)] {
        let bundle = std::fs::read_to_string(paths.ca_cert()).unwrap();
        assert_eq!(pki::split(&bundle).len(), 1, "{}", paths.ca_cert().display());
        assert_eq!(pki::ca_id(&bundle).as_deref(), Some(new_ca.as_str()));
        assert_eq!(paths.ca_key().exists(), holds_ca_key);
        if holds_ca_key {
            assert!(pki::key_matches(
                &bundle,
                &std::fs::read_to_string(paths.ca_key()).unwrap()
            ));
        }
        assert!(!paths.next_ca_key().exists() && !paths.next_ca_cert().exists());
        assert_eq!(ClusterKey::load(paths.key_file()).unwrap().id(), new_key);
        assert!(!phalanx_node::key::next_path(paths.key_file()).exists());
        let n3_cert = std::fs::read_to_string(own.node_cert("n3")).unwrap();
        assert_eq!(
            pki::inspect_pem(&n3_cert).unwrap().issuer_key_id.as_deref(),
            Some(new_ca.as_str())
        );
    }
    // From those files alone, the cluster forms again; a client trusting only the old CA is
    // refused now.
    c.stop_all();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let stale = phalanx_node::transport::Tls::client(&ca.cert_pem)
        .unwrap()
        .http_client(Duration::from_secs(5))
        .unwrap();
    let api = c.node("n1").unwrap().api.clone();
    assert!(stale.get(LocalCluster::url(&api, "/v1/status")).send().await.is_err());
}
