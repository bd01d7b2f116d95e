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
    let mut avoid = None;
    for _ in 0..MAX_ATTEMPTS {
        let Some(lease) = shared.pool.lease(avoid) else {
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
