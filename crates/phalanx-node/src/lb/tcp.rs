//! The TCP (L4) proxy: accept, lease a backend from the pool, connect under the balancer's
//! `connect_timeout`; when the connect fails, observe the error and redispatch to another
//! backend (at most [`MAX_ATTEMPTS`] in all), then copy both ways until either side closes.
//! When the balancer stops, its listeners close at once and the connections still open get
//! [`STOP_GRACE`] to finish before they are dropped.

use super::health::HealthView;
use super::pool::Pool;
use phalanx_core::lb::Observation;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Connect attempts per client connection (the first pick and its redispatches).
pub const MAX_ATTEMPTS: usize = 3;
/// How long open connections may go on after their balancer stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// What every connection of one balancer shares.
pub struct Shared {
    pub balancer: String,
    pub pool: Arc<Pool>,
    pub health: Arc<dyn HealthView>,
    /// Read per connection (a config change applies to the next one).
    pub connect_timeout: Box<dyn Fn() -> Duration + Send + Sync>,
    /// Becomes true when the balancer stops.
    pub stopping: watch::Receiver<bool>,
}

/// Accept on `listener` until aborted.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move { serve(client, shared).await });
            }
            Err(e) => {
                // Out of descriptors or memory: back off a little instead of spinning.
                tracing::warn!(balancer = %shared.balancer, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One client connection, to its end.
async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    // The stick key of source affinity (used only when the balancer has it).
    let source = client.peer_addr().ok().map(|a| a.ip());
    let mut avoid = None;
    for _ in 0..MAX_ATTEMPTS {
        let Some(lease) = shared.pool.lease_for(source, avoid) else {
            tracing::debug!(balancer = %shared.balancer, "no backend takes new connections: closing the client's");
            return;
        };
        let limit = (shared.connect_timeout)();
        match tokio::time::timeout(limit, TcpStream::connect(lease.address)).await {
            Ok(Ok(mut upstream)) => {
                shared.health.observed(lease.id, Observation::Success);
                let _ = upstream.set_nodelay(true);
                let mut stopping = shared.stopping.clone();
                let stopped = async move {
                    let _ = stopping.wait_for(|s| *s).await;
                    tokio::time::sleep(STOP_GRACE).await;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    _ = stopped => {}
                }
                drop(lease);
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(balancer = %shared.balancer, backend = %lease.name, error = %e, "connect failed: redispatching");
            }
            Err(_) => {
                tracing::debug!(balancer = %shared.balancer, backend = %lease.name, "connect timed out: redispatching");
            }
        }
        shared.health.observed(lease.id, Observation::ConnError);
        avoid = Some(lease.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::health::LocalHealth;
    use crate::lb::pool::Target;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn config() -> phalanx_core::config::BalancerConfig {
        let text = "[cluster]\nname = \"t\"\nfencing = \"off\"\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:7401\"]\n[[balancer]]\nid = \"lb\"\nlisten = [\"127.0.0.1:9000\"]\nalgorithm = \"roundrobin\"\nservers = [{ name = \"a\", address = \"127.0.0.1:1\" }]\n";
        phalanx_core::config::parse(text).unwrap().balancers.remove(0)
    }

    /// An echo server; its address.
    async fn echo() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// A port nothing listens on.
    fn dead() -> std::net::SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    async fn round_trip(addr: std::net::SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn connect_failures_are_redispatched_and_a_stop_closes_the_listener() {
        let cfg = config();
        let pool = Arc::new(Pool::new(cfg.algorithm(), cfg.check.health.clone(), None));
        let live = echo().await;
        let targets = vec![
            Target {
                name: "dead".into(),
                address: dead(),
                weight: 1,
            },
            Target {
                name: "live".into(),
                address: live,
                weight: 1,
            },
        ];
        pool.update(&cfg, targets, None);
        let (stop, stopping) = watch::channel(false);
        let shared = Arc::new(Shared {
            balancer: "lb".into(),
            pool: pool.clone(),
            health: Arc::new(LocalHealth {
                on_change: None,
                balancer: "lb".into(),
                pool: pool.clone(),
            }),
            connect_timeout: Box::new(|| Duration::from_secs(1)),
            stopping,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(accept_loop(listener, shared));
        for _ in 0..6 {
            assert_eq!(round_trip(addr).await.unwrap(), b"ping", "every connection is served");
        }
        let st = pool.status(|_| None);
        // Round robin picks the dead one first each time (the redispatch moved the cursor past
        // the live one), until the checks or the passive error limit take it out.
        assert_eq!(st[0].errors_total, 6);
        assert_eq!(st[0].state, "up", "6 errors are below the passive limit (10)");
        assert_eq!(st[1].connections_total, 6);

        // An open connection outlives the stop (for the grace); new ones are refused.
        let mut open = TcpStream::connect(addr).await.unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.unwrap();
        accept.abort();
        let _ = accept.await;
        stop.send(true).unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
        open.write_all(b"pong").await.unwrap();
        open.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong", "the open connection goes on within the grace");
        assert_eq!(pool.status(|_| None)[1].in_flight, 1);
    }
}
