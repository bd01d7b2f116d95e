//! `phalanx demo-service`: the demo's HTTP service. It answers `GET /` (and any other path)
//! with `200 OK` and the name of the node it runs on, so a client can see where it is served
//! from; `GET /health` with `200 ok`; and `GET /ws` upgrades to a WebSocket that answers every
//! text message with `NAME: MESSAGE` (what the lab's balancer tests hold open across changes).
//! HTTP/1.1 with keep-alive (axum, as the daemon's API).

use anyhow::{Context, Result};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn serve(listen: &str, name: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let name: Arc<str> = Arc::from(name);
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ws", get(ws))
        .fallback(|State(name): State<Arc<str>>| async move { format!("{name}\n") })
        .with_state(name);
    axum::serve(listener, app).await.context("serving")?;
    Ok(())
}

async fn ws(upgrade: WebSocketUpgrade, State(name): State<Arc<str>>) -> impl IntoResponse {
    upgrade.on_upgrade(move |socket| echo(socket, name))
}

/// Answer each text message with `NAME: MESSAGE` until the client closes.
async fn echo(mut socket: WebSocket, name: Arc<str>) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(format!("{name}: {}", t.as_str()).into()),
            Message::Close(_) => return,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

/// One probe: a new TCP connection, a GET, a 200 within `timeout`. Returns who answered.
pub async fn probe(addr: &str, timeout: std::time::Duration) -> Option<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        (text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"))
            .then(|| text.rsplit("\r\n\r\n").next().unwrap_or("").trim().to_string())
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}
