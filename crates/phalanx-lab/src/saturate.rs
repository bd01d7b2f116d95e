//! A load that saturates the session store while another measurement runs (`bench failover`'s
//! loaded pass): C connections spread over the nodes' memcached ports, each writing 512-byte
//! session values as fast as the store acknowledges them, moving to the next node when its own
//! is dead or answers `SERVER_ERROR`. It counts acknowledged writes; it measures nothing else.
//! Written by hand (a few lines of the text protocol) because it must live through node kills.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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

async fn set(r: &mut BufReader<TcpStream>, req: &[u8]) -> std::io::Result<bool> {
    r.get_mut().write_all(req).await?;
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line == "STORED\r\n")
}

/// Start `connections` writers over `addrs`.
pub fn start(addrs: Vec<SocketAddr>, connections: usize) -> Load {
    let (acked, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks = (0..connections)
        .map(|c| {
            let (addrs, acked, errors) = (addrs.clone(), acked.clone(), errors.clone());
            tokio::spawn(async move {
                let mut at = c;
                let value = "s".repeat(512);
                let mut conn: Option<BufReader<TcpStream>> = None;
                for i in 0u64.. {
                    let r = match conn.as_mut() {
                        Some(r) => r,
                        None => match TcpStream::connect(addrs[at % addrs.len()]).await {
                            Ok(s) => conn.insert(BufReader::new(s)),
                            Err(_) => {
                                at += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        },
                    };
                    let req = format!("set load.{c}.{} 0 0 {}\r\n{value}\r\n", i % 1000, value.len());
                    match tokio::time::timeout(Duration::from_secs(5), set(r, req.as_bytes())).await {
                        Ok(Ok(true)) => {
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
