//! A PostgreSQL commit writer for drills (`phalanx drill … --probe postgres://…`): a real
//! client (tokio-postgres) that commits one row per transaction into `phalanx_drill_commits`
//! through the address it is given (the write VIP), reconnecting after every failure, and
//! records every acknowledged commit. Afterwards [`PgWriter::stop`] looks every acknowledged id
//! up through the same address: one missing is an acknowledged commit lost (RPO > 0). Also the
//! drill's PostgreSQL probe ([`writable`]: a new connection to a primary).

use crate::session_writer::Figures;
use anyhow::{anyhow, Context, Result};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one connection or commit may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
const TABLE: &str = "phalanx_drill_commits";

/// Parse a `postgres://` or `postgresql://` URL (libpq's URI form).
pub fn parse(url: &str) -> Result<tokio_postgres::Config> {
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| anyhow!("{url}: not a PostgreSQL URL ({e})"))
}

async fn connect(cfg: &tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(OP_TIMEOUT, cfg.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| anyhow!("no answer within {OP_TIMEOUT:?}"))??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The probe: a new connection answers and is a primary (not in recovery).
pub async fn writable(cfg: &tokio_postgres::Config) -> bool {
    let Ok(c) = connect(cfg).await else { return false };
    matches!(
        tokio::time::timeout(OP_TIMEOUT, c.query_one("select pg_is_in_recovery()", &[])).await,
        Ok(Ok(row)) if !row.get::<_, bool>(0)
    )
}

/// The acknowledged commits (id, when) and the failed attempts.
type Log = (Vec<(i64, Instant)>, u64);

/// A running writer (stops at [`PgWriter::stop`], or when dropped).
pub struct PgWriter {
    cfg: tokio_postgres::Config,
    first: i64,
    log: Arc<Mutex<Log>>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgWriter {
    /// The writer's table, created if missing (on the primary `cfg` reaches).
    pub async fn prepare(cfg: &tokio_postgres::Config) -> Result<()> {
        let c = connect(cfg).await.context("connecting to PostgreSQL")?;
        c.batch_execute(&format!(
            "create table if not exists {TABLE} (id bigint primary key, at timestamptz default now())"
        ))
        .await
        .with_context(|| format!("creating {TABLE}"))
    }

    /// Commit ids `first`, `first + 1`, … one per transaction through `cfg`.
    pub fn start(cfg: tokio_postgres::Config, first: i64) -> PgWriter {
        let log = Arc::new(Mutex::new((Vec::new(), 0u64)));
        let (l, c) = (log.clone(), cfg.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut id = first;
            loop {
                let Some(conn) = client.as_ref() else {
                    match connect(&c).await {
                        Ok(k) => client = Some(k),
                        Err(_) => {
                            l.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    continue;
                };
                let sql = format!("insert into {TABLE} (id) values ($1)");
                match tokio::time::timeout(OP_TIMEOUT, conn.execute(sql.as_str(), &[&id])).await {
                    Ok(Ok(1)) => {
                        l.lock().unwrap_or_else(|p| p.into_inner()).0.push((id, Instant::now()));
                        id += 1;
                    }
                    _ => {
                        // Not acknowledged (it may still have committed: never counted).
                        l.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
                        client = None;
                        id += 1;
                    }
                }
            }
        });
        PgWriter {
            cfg,
            first,
            log,
            started: Instant::now(),
            task,
        }
    }

    /// Wait until a first commit is acknowledged.
    pub async fn ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.log.lock().unwrap_or_else(|p| p.into_inner()).0.is_empty() {
            if Instant::now() > deadline {
                return Err(anyhow!("PostgreSQL acknowledged no commit within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stop committing, look every acknowledged id up (retrying until `timeout` while the
    /// address answers nothing), and give the figures.
    pub async fn stop(self, timeout: Duration) -> Result<Figures> {
        self.task.abort();
        let stopped = Instant::now();
        let (acked, errors) = std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()));
        let mut prev = acked.first().map_or(self.started, |a| a.1);
        let mut longest = Duration::ZERO;
        for (_, t) in &acked {
            longest = longest.max(t.duration_since(prev));
            prev = *t;
        }
        longest = longest.max(stopped.duration_since(prev));
        let deadline = Instant::now() + timeout;
        let present: std::collections::BTreeSet<i64> = loop {
            let read = async {
                let c = connect(&self.cfg).await?;
                let q = format!("select id from {TABLE} where id >= $1");
                let rows = c.query(q.as_str(), &[&self.first]).await?;
                anyhow::Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
            };
            match read.await {
                Ok(p) => break p,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("reading the commits back within {timeout:?}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Ok(Figures {
            acked: acked.len() as u64,
            lost: acked.iter().filter(|(id, _)| !present.contains(id)).count() as u64,
            errors,
            outage_ms: longest.as_millis() as u64,
        })
    }
}
