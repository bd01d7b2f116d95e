//! A session writer: a real memcached-protocol client that writes session keys continuously
//! through the store's nodes, as a web app would (one connection; on `SERVER_ERROR` or a broken
//! connection it moves to the next node), and records every acknowledged write with its time.
//! Afterwards, [`Writer::verify`] reads every acknowledged key back: one missing or different
//! is an acknowledged write lost (RPO > 0), and the longest time without an acknowledgement is
//! the client-observed outage. Used by `phalanx demo`.

use anyhow::{anyhow, Result};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection, line protocol.
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        let s = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await??;
        s.set_nodelay(true)?;
        Ok(Conn { r: BufReader::new(s) })
    }

    async fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l).await? == 0 {
            return Err(anyhow!("connection closed"));
        }
        Ok(l.trim_end().to_string())
    }

    async fn set(&mut self, key: &str, value: &str) -> Result<String> {
        let req = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
        self.r.get_mut().write_all(req.as_bytes()).await?;
        self.line().await
    }

    async fn get(&mut self, key: &str) -> Result<Option<String>> {
        self.r.get_mut().write_all(format!("get {key}\r\n").as_bytes()).await?;
        let first = self.line().await?;
        if first == "END" {
            return Ok(None);
        }
        let n: usize = first
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("unexpected answer {first:?}"))?;
        let mut v = vec![0; n + 2];
        self.r.read_exact(&mut v).await?;
        if self.line().await? != "END" {
            return Err(anyhow!("no END after the value of {key}"));
        }
        v.truncate(n);
        Ok(Some(String::from_utf8_lossy(&v).into_owned()))
    }
}

/// What the writer recorded.
#[derive(Debug, Default)]
struct Log {
    /// (key, value, acknowledged at).
    acked: Vec<(String, String, Instant)>,
    errors: u64,
}

/// A running writer (stops when dropped or at [`Writer::stop`]).
pub struct Writer {
    addrs: Vec<SocketAddr>,
    log: Arc<Mutex<Log>>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

/// What the writer saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub acked: u64,
    pub lost: u64,
    pub errors: u64,
    /// The longest time without an acknowledged write (ms).
    pub outage_ms: u64,
}

impl Writer {
    /// Start writing `prefix<N>` keys through `addrs` (starting at the first).
    pub fn start(addrs: Vec<SocketAddr>, prefix: &str) -> Writer {
        let log = Arc::new(Mutex::new(Log::default()));
        let (l, a, prefix) = (log.clone(), addrs.clone(), prefix.to_string());
        let task = tokio::spawn(async move {
            let mut at = 0usize;
            let mut conn: Option<Conn> = None;
            for i in 0u64.. {
                let (key, value) = (format!("{prefix}{i}"), format!("cart-{i}-{}", "x".repeat(64)));
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::open(a[at % a.len()]).await {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            at += 1;
                            l.lock().unwrap_or_else(|p| p.into_inner()).errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                match tokio::time::timeout(OP_TIMEOUT, c.set(&key, &value)).await {
                    Ok(Ok(r)) if r == "STORED" => {
                        l.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .acked
                            .push((key, value, Instant::now()));
                    }
                    _ => {
                        // SERVER_ERROR, a broken connection or no answer: the next node.
                        l.lock().unwrap_or_else(|p| p.into_inner()).errors += 1;
                        conn = None;
                        at += 1;
                    }
                }
            }
        });
        Writer {
            addrs,
            log,
            started: Instant::now(),
            task,
        }
    }

    /// Wait until a first write is acknowledged (the store is up).
    pub async fn ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.log.lock().unwrap_or_else(|p| p.into_inner()).acked.is_empty() {
            if Instant::now() > deadline {
                return Err(anyhow!("the session store acknowledged no write within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stop writing, read every acknowledged key back through the first node that answers,
    /// and give the figures.
    pub async fn stop(self, timeout: Duration) -> Result<Figures> {
        self.task.abort();
        let _ = (&mut { self.task }).await;
        let stopped = Instant::now();
        let log = std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()));
        let mut gaps = Vec::with_capacity(log.acked.len() + 1);
        let mut prev = log.acked.first().map_or(self.started, |a| a.2);
        for (_, _, t) in &log.acked {
            gaps.push(t.duration_since(prev));
            prev = *t;
        }
        gaps.push(stopped.duration_since(prev));
        let deadline = Instant::now() + timeout;
        let mut lost = 0;
        let mut at = 0usize;
        let mut conn: Option<Conn> = None;
        for (key, value, _) in &log.acked {
            let got = loop {
                if Instant::now() > deadline {
                    return Err(anyhow!("no node answered the read-back within {timeout:?}"));
                }
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::open(self.addrs[at % self.addrs.len()]).await {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            at += 1;
                            continue;
                        }
                    },
                };
                match tokio::time::timeout(OP_TIMEOUT, c.get(key)).await {
                    Ok(Ok(v)) => break v,
                    _ => {
                        conn = None;
                        at += 1;
                    }
                }
            };
            if got.as_deref() != Some(value.as_str()) {
                lost += 1;
            }
        }
        Ok(Figures {
            acked: log.acked.len() as u64,
            lost,
            errors: log.errors,
            outage_ms: gaps.into_iter().max().unwrap_or_default().as_millis() as u64,
        })
    }
}
