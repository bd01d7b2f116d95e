//! The web dashboard in a real browser: headless Chromium (Debian's `chromium`, driven over
//! the DevTools protocol) opens `/ui` of a 3-node cluster running the demo web service, with
//! the link `phalanx ui` prints. The page shows three nodes online (screenshot saved); the node
//! running web is killed, and the same page — never reloaded — shows it offline and web
//! running elsewhere. Asserted: the page shows the change within 2 s of the API (the
//! dashboard's own lag), and it shows it at all within the test's bound; the time from the
//! kill is printed. Screenshots: `$CARGO_TARGET_TMPDIR/dashboard-*.png`. Also: the page's
//! assets need no token, the API behind them does, and the browser's favicon request records
//! no failed authentication.

use futures_util::{SinkExt, StreamExt};
use phalanx::harness::{runs_on, LocalCluster, Spec};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium and a DevTools connection to its page.
struct Browser {
    child: std::process::Child,
    ws: Ws,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "this test needs Debian's chromium (tests/run installs it)"
        );
        let profile = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1300,1400",
                // The nodes' certificates are the cluster CA's, which this fresh profile does
                // not trust (an operator imports ca.crt into the browser once).
                "--ignore-certificate-errors",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"; its stderr is read
        // to the end, so that it never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let port = url
                        .trim_start_matches("ws://127.0.0.1:")
                        .split('/')
                        .next()
                        .map(str::to_string);
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx.recv_timeout(T).ok().flatten().expect("chromium's DevTools address");
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let (ws, _) = tokio_tungstenite::connect_async(page["webSocketDebuggerUrl"].as_str().unwrap())
            .await
            .unwrap();
        Browser {
            child,
            ws,
            next_id: 1,
            _profile: profile,
        }
    }

    /// One DevTools command and its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::Text(msg.into())).await.unwrap();
        loop {
            let m = tokio::time::timeout(T, self.ws.next())
                .await
                .expect("DevTools answers")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true }))
            .await;
        r["result"]["value"].clone()
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the page shows: each node's state, and where web runs.
const SHOWN: &str = r#"JSON.stringify({
  nodes: Object.fromEntries([...document.querySelectorAll('#nodes tr[data-node]')].map(r => [r.dataset.node, r.dataset.state])),
  web: (document.querySelector('#resources tr[data-resource="web"]') || {dataset: {}}).dataset.where || null,
  marker: window.__notReloaded === true,
})"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_node_lost_and_its_service_moved_without_a_reload() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_phalanx-lab"))
        .parent()
        .unwrap()
        .join("phalanx");
    let port = phalanx::demo::service_port(3).unwrap();
    let extra = phalanx::demo::service_resource(&exe, "web", port);
    let mut c = LocalCluster::create(Spec::loopback(3, exe, extra)).unwrap();
    c.start_all().unwrap();
    c.wait_stable(T).await.unwrap();
    let victim = c
        .wait_for(T, "web runs", |st| {
            let s = st.values().next()?;
            runs_on(s, "web").filter(|_| s.plan_pending == 0)
        })
        .await
        .unwrap();
    // Open the dashboard of a node that survives.
    let viewer = ["n1", "n2", "n3"].into_iter().find(|n| *n != victim).unwrap();
    let (code, link, err) = c.cli(&["ui", "--node", viewer]).unwrap();
    assert_eq!(code, 0, "{err}");
    let link = link.trim().to_string();
    let base = link.split('#').next().unwrap().to_string();
    // The assets need no token; the API does; the favicon is no failed authentication.
    assert!(base.starts_with("https://"), "{base}");
    let http = c.operator_http().unwrap();
    let page = http.get(&base).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    let api = base.trim_end_matches("/ui");
    assert_eq!(http.get(format!("{api}/v1/status")).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(format!("{api}/favicon.ico")).send().await.unwrap().status(),
        204
    );

    let mut b = Browser::start().await;
    b.call("Page.enable", json!({})).await;
    b.call("Page.navigate", json!({ "url": link })).await;
    let deadline = Instant::now() + T;
    loop {
        let shown: Value = serde_json::from_str(b.eval(SHOWN).await.as_str().unwrap_or("{}")).unwrap_or_default();
        let online = shown["nodes"]
            .as_object()
            .is_some_and(|n| n.len() == 3 && n.values().all(|s| s == "online"));
        if online && shown["web"] == victim.as_str() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed 3 nodes online: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.eval("location.hash").await, "", "the token left the address bar");
    let shot = b.screenshot("dashboard-online.png").await;
    eprintln!("screenshot: {}", shot.display());
    b.eval("window.__notReloaded = true").await;

    c.kill(&victim).unwrap();
    let killed = Instant::now();
    let (mut api_at, mut page_at) = (None, None);
    while api_at.is_none() || page_at.is_none() {
        assert!(killed.elapsed() < T, "api {api_at:?}, page {page_at:?}");
        if api_at.is_none() {
            let st = c.statuses().await;
            let moved = st.get(viewer).is_some_and(|s| {
                s.nodes.iter().any(|n| n.name == victim && n.state == "offline")
                    && runs_on(s, "web").is_some_and(|n| n != victim)
            });
            if moved {
                api_at = Some(killed.elapsed());
            }
        }
        if page_at.is_none() {
            let shown: Value = serde_json::from_str(b.eval(SHOWN).await.as_str().unwrap_or("{}")).unwrap_or_default();
            assert_eq!(shown["marker"], true, "the page was reloaded: {shown}");
            let web = shown["web"].as_str().unwrap_or_default();
            if shown["nodes"][victim.as_str()] == "offline" && !web.is_empty() && web != victim {
                page_at = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (api_at, page_at) = (api_at.unwrap(), page_at.unwrap());
    let shot = b.screenshot("dashboard-failover.png").await;
    eprintln!(
        "{victim} killed: the API showed it offline and web moved after {api_at:?}, the page after {page_at:?}; screenshot: {}",
        shot.display()
    );
    assert!(
        page_at <= api_at + Duration::from_secs(2),
        "the page lagged the API by more than 2 s: {page_at:?} vs {api_at:?}"
    );
    // And the events timeline got the loss live.
    let lost = b
        .eval(&format!(
            "[...document.querySelectorAll('#events li[data-kind=\"node_lost\"]')].some(l => l.textContent.includes('{victim}'))"
        ))
        .await;
    assert_eq!(lost, true);
}
