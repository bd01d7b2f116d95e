//! The one place that builds the HTTP clients and listeners of phalanx: the Raft RPC client
//! (`raft::network`), the client that forwards writes to the leader (`forward`), the client of
//! HTTP fence devices (`fence`), the CLI's API client (`phalanx::client`), and the listeners
//! HTTP is served on (`phalanx daemon` and `phalanx witness`: the API and peer routers; the
//! demo's `phalanx power-switch`). Every URL of node-to-node and operator traffic is made by
//! [`url`]. Mutual TLS goes here, and only here: nothing else in the product calls
//! `reqwest::Client::builder`, binds an HTTP listener or calls `axum::serve` (the demo service,
//! a stand-in for the user's own service, is plain TCP and stays out of it).

use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::time::Duration;

/// Connect timeout of node-to-node traffic: peers are on the cluster network, and a dead peer
/// must not hold replication or forwarding for long.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Bound of a write forwarded to the leader (it waits for the commit).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections to peers are kept this long (Raft RPCs reuse them).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("building the {purpose} HTTP client: {source}")]
    Client {
        purpose: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving on {addr}: {source}")]
    Serve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

fn build(purpose: &'static str, b: reqwest::ClientBuilder) -> Result<reqwest::Client, TransportError> {
    b.build().map_err(|source| TransportError::Client { purpose, source })
}

/// The URL of `path` (starting with `/`) on the phalanx endpoint at `addr` (HOST:PORT).
pub fn url(addr: &str, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// The pooled client of Raft RPCs (each call sets its own deadline from openraft's TTL).
pub fn raft_client() -> Result<reqwest::Client, TransportError> {
    build(
        "raft",
        reqwest::Client::builder()
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .connect_timeout(PEER_CONNECT_TIMEOUT),
    )
}

/// The client a follower forwards writes to the leader with (see `api::peer`).
pub fn forward_client() -> Result<reqwest::Client, TransportError> {
    build(
        "forwarding",
        reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .tcp_nodelay(true)
            .connect_timeout(PEER_CONNECT_TIMEOUT),
    )
}

/// The operator's client of a node's API (the CLI, the demo, the process tests): every request
/// ends within `timeout`, and connecting within `timeout` or 500 ms, whichever is shorter.
pub fn api_client(timeout: Duration) -> Result<reqwest::Client, TransportError> {
    build(
        "api",
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(PEER_CONNECT_TIMEOUT)),
    )
}

/// The operator's client of a long-lived stream (`phalanx events --follow`): no bound on the
/// whole exchange, connecting within 500 ms (a dead node is left for the next one at once).
pub fn stream_client() -> Result<reqwest::Client, TransportError> {
    build(
        "api stream",
        reqwest::Client::builder().connect_timeout(PEER_CONNECT_TIMEOUT),
    )
}

/// The client of alert webhooks; each delivery sets its recipient's timeout.
pub fn alert_client() -> Result<reqwest::Client, TransportError> {
    build("alert webhook", reqwest::Client::builder())
}

/// The client of HTTP fence devices (power switches); each call sets its device's timeout.
pub fn device_client() -> Result<reqwest::Client, TransportError> {
    build("fence device", reqwest::Client::builder())
}

/// A bound listener for the node's HTTP endpoint (API and peer routes on one port).
pub struct Listener {
    inner: tokio::net::TcpListener,
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Bind an HTTP endpoint on `addr` (HOST:PORT): the node's API and peer routes, the witness,
/// the demo's power switch.
pub async fn bind<A: tokio::net::ToSocketAddrs + std::fmt::Display>(addr: A) -> Result<Listener, TransportError> {
    let inner = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| TransportError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    Ok(Listener { inner })
}

/// Serve `app` on `listener` until the process ends (or the listener fails).
pub async fn serve(listener: Listener, app: axum::Router) -> Result<(), TransportError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    // TCP_NODELAY on every accepted connection: Raft RPCs and forwarded writes are small
    // request/response exchanges on the failover path, which Nagle's algorithm would hold back.
    let listener = listener.inner.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .await
    .map_err(|source| TransportError::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_builds_and_urls_are_http() {
        raft_client().unwrap();
        forward_client().unwrap();
        api_client(Duration::from_secs(1)).unwrap();
        device_client().unwrap();
        assert_eq!(url("127.0.0.1:7480", "/v1/status"), "http://127.0.0.1:7480/v1/status");
    }

    #[tokio::test]
    async fn binds_an_ephemeral_port() {
        let l = bind("127.0.0.1:0").await.unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);
    }
}
