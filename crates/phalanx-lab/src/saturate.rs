//! A load that saturates the session store while another measurement runs (`bench failover`'s
//! loaded pass): C connections (`mcclient`) spread over the nodes' memcached ports, each writing
//! 512-byte session values as fast as the store acknowledges them, moving to the next node when
//! its own is dead or answers `SERVER_ERROR`. It counts acknowledged writes; it measures nothing
//! else.

use crate::mcclient::{McClient, Store};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running load; stops when dropped.
pub struct Load {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub acked: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Start `connections` writers over `addrs`.
pub fn start(addrs: Vec<SocketAddr>, connections: usize) -> Load {
    let (acked, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks = (0..connections)
        .map(|c| {
            let (addrs, acked, errors) = (addrs.clone(), acked.clone(), errors.clone());
            tokio::spawn(async move {
                let mut at = c;
                let value = vec![b's'; 512];
                let mut conn: Option<McClient> = None;
                for i in 0u64.. {
                    let client = match conn.as_mut() {
                        Some(client) => client,
                        None => {
                            let t = Duration::from_secs(5);
                            match McClient::connect(addrs[at % addrs.len()], t, t).await {
                                Ok(client) => conn.insert(client),
                                Err(_) => {
                                    at += 1;
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                    continue;
                                }
                            }
                        }
                    };
                    match client.set(&format!("load.{c}.{}", i % 1000), &value).await {
                        Ok(Store::Stored) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                            at += 1;
                        }
                    }
                }
            })
        })
        .collect();
    Load { tasks, acked, errors }
}
