//! The built-in `pgsql` agent's pure part (issue 18): its params as the config writes them
//! (checked by `config check` and read by the agent), PostgreSQL's LSNs, the libpq connection
//! string a replica follows its primary with, and what a monitor's observations mean as an OCF
//! code. The agent itself (processes, files, `psql`) is `phalanx_node::pgsql`.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Debian's PostgreSQL 15 binaries.
pub const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";
/// Debian's socket directory.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// WAL a primary keeps for replicas behind it (PostgreSQL's default is none).
pub const DEFAULT_WAL_KEEP_SIZE: &str = "512MB";
/// A replica further behind than this is not promoted (1 MiB, the default).
pub const DEFAULT_MAX_LAG_BYTES: u64 = 1 << 20;

/// How commits wait for a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Asynchronous replication.
    Off,
    /// A synchronous standby while one is connected.
    On,
    /// Writes wait rather than run without a synchronous standby.
    Strict,
}

/// The agent's params (see the README's "PostgreSQL").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub bindir: PathBuf,
    pub pgdata: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    /// The operating-system user PostgreSQL runs as.
    pub user: String,
    /// The address replicas reach this node's PostgreSQL at (None: the node's API address).
    pub host: Option<String>,
    pub replication_user: String,
    pub replication_password_file: Option<PathBuf>,
    pub max_lag_bytes: u64,
    pub sync: Sync,
    /// WAL kept for replicas behind (`wal_keep_size`, as PostgreSQL writes it): a replica that
    /// was behind a new primary catches up from it instead of needing a fresh copy.
    pub wal_keep_size: String,
}

/// The params the agent knows (anything else is a typo).
const KNOWN: &[&str] = &[
    "bindir",
    "pgdata",
    "port",
    "socket_dir",
    "user",
    "host",
    "replication_user",
    "replication_password_file",
    "max_lag_bytes",
    "sync",
    "wal_keep_size",
];

impl Params {
    /// Read and check `params` (already resolved for one node): every problem, not just the
    /// first.
    pub fn parse(params: &BTreeMap<String, String>) -> Result<Params, Vec<String>> {
        let mut errors = Vec::new();
        for k in params.keys() {
            if !KNOWN.contains(&k.as_str()) {
                errors.push(format!(
                    "unknown param {k:?} (the pgsql agent takes {})",
                    KNOWN.join(", ")
                ));
            }
        }
        let get = |k: &str| params.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
        let path = |k: &str| get(k).map(PathBuf::from);
        let pgdata = path("pgdata");
        match &pgdata {
            None => errors.push("the pgsql agent needs `pgdata` (the data directory)".into()),
            Some(p) if !p.is_absolute() => errors.push(format!("pgdata {:?} is not an absolute path", p.display())),
            _ => {}
        }
        let port = match get("port").map(str::parse::<u16>) {
            None => 5432,
            Some(Ok(p)) if p > 0 => p,
            Some(_) => {
                errors.push(format!("port {:?} is not a TCP port", params["port"]));
                0
            }
        };
        let max_lag_bytes = match get("max_lag_bytes").map(str::parse::<u64>) {
            None => DEFAULT_MAX_LAG_BYTES,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                errors.push(format!(
                    "max_lag_bytes {:?} is not a number of bytes",
                    params["max_lag_bytes"]
                ));
                0
            }
        };
        let sync = match get("sync") {
            None | Some("off") => Sync::Off,
            Some("on") => Sync::On,
            Some("strict") => Sync::Strict,
            Some(other) => {
                errors.push(format!("sync {other:?} is not one of \"off\", \"on\", \"strict\""));
                Sync::Off
            }
        };
        let wal_keep_size = get("wal_keep_size").unwrap_or(DEFAULT_WAL_KEEP_SIZE).to_string();
        let unit_ok = |s: &str| {
            let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let unit = &s[digits.len()..];
            !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit())
                && ["", "kB", "MB", "GB", "TB"].contains(&unit)
        };
        if !unit_ok(&wal_keep_size) {
            errors.push(format!(
                "wal_keep_size {wal_keep_size:?} is not a size PostgreSQL reads (e.g. \"512MB\")"
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Params {
            bindir: path("bindir").unwrap_or_else(|| DEFAULT_BINDIR.into()),
            pgdata: pgdata.unwrap_or_default(),
            port,
            socket_dir: path("socket_dir").unwrap_or_else(|| DEFAULT_SOCKET_DIR.into()),
            user: get("user").unwrap_or("postgres").to_string(),
            host: get("host").map(str::to_string),
            replication_user: get("replication_user").unwrap_or("replicator").to_string(),
            replication_password_file: path("replication_password_file"),
            max_lag_bytes,
            sync,
            wal_keep_size,
        })
    }
}

/// The node attribute a `pgsql` monitor publishes its instance's position in (`TL:LSN`).
pub fn position_attr(instance: &str) -> String {
    format!("pgsql-position-{instance}")
}

/// The node attribute a `pgsql` primary records its synchronous standby in, as
/// `TIMELINE:NODE` (its own timeline; no node: none), committed before that standby
/// acknowledges anything and cleared only after it no longer can. With `sync = "on"|"strict"`,
/// the record of the highest timeline (the last primary's: every promotion starts a new
/// timeline) names the only replica that may replace it. It outlives that primary's node
/// being fenced, and an older primary's stale record never outranks it.
pub fn sync_attr(instance: &str) -> String {
    format!("pgsql-sync-{instance}")
}

/// A synchronous-standby record as published: (timeline, node; empty: none).
pub fn parse_sync(s: &str) -> Option<(u32, &str)> {
    let (tl, node) = s.split_once(':')?;
    Some((tl.parse().ok()?, node))
}

/// `synchronous_standby_names` naming `names`, `count` of which must confirm a commit.
pub fn standby_names(count: usize, names: &[&str]) -> String {
    let quoted: Vec<String> = names
        .iter()
        .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect();
    let kind = if count == 1 { "FIRST" } else { "ANY" };
    format!("{kind} {count} ({})", quoted.join(", "))
}

/// A name no standby has: `synchronous_standby_names` naming it makes commits wait (strict
/// mode with no synchronous standby yet).
pub const NO_STANDBY: &str = "phalanx: none";

/// A position as published (`3:50331744`): (timeline, LSN).
pub fn parse_position(s: &str) -> Option<(u32, u64)> {
    let (tl, lsn) = s.split_once(':')?;
    Some((tl.parse().ok()?, lsn.parse().ok()?))
}

/// A PostgreSQL LSN (`16/B374D848`) as a byte position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

/// One libpq keyword value, quoted when it must be (spaces, quotes, backslashes, empty).
fn kv(key: &str, value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        return format!("{key}={value}");
    }
    let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
    format!("{key}='{escaped}'")
}

/// Where a replica streams from: the primary's node, address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub node: String,
    pub host: String,
    pub port: u16,
}

/// The `primary_conninfo` of a replica on node `me` following `up` (its `application_name` is
/// the node's name: what `synchronous_standby_names` and `pg_stat_replication` show).
pub fn primary_conninfo(up: &Upstream, user: &str, password: Option<&str>, me: &str) -> String {
    let mut parts = vec![kv("host", &up.host), kv("port", &up.port.to_string()), kv("user", user)];
    if let Some(p) = password {
        parts.push(kv("password", p));
    }
    parts.push(kv("application_name", me));
    parts.push("connect_timeout=2".into());
    parts.join(" ")
}

/// A value for a `postgresql.auto.conf` line (`key = 'value'`), quotes doubled.
pub fn conf_value(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn params_take_defaults_and_every_error_is_reported() {
        let p = Params::parse(&params(&[("pgdata", "/srv/pg")])).unwrap();
        assert_eq!(p.bindir, PathBuf::from(DEFAULT_BINDIR));
        assert_eq!((p.port, p.max_lag_bytes, p.sync), (5432, 1 << 20, Sync::Off));
        assert_eq!(p.user, "postgres");
        let errs = Params::parse(&params(&[
            ("pgdata", "relative"),
            ("port", "99999"),
            ("sync", "maybe"),
            ("max_lag", "1"),
        ]))
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("unknown param \"max_lag\"")), "{errs:?}");
        assert!(Params::parse(&params(&[])).unwrap_err()[0].contains("needs `pgdata`"));
    }

    #[test]
    fn lsns_are_byte_positions() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("garbage"), None);
        assert_eq!(parse_lsn("1/"), None);
    }

    #[test]
    fn conninfo_quotes_what_libpq_needs_quoted() {
        let up = Upstream {
            node: "n1".into(),
            host: "10.0.0.1".into(),
            port: 5432,
        };
        assert_eq!(
            primary_conninfo(&up, "rep", Some("it's a pass\\word"), "n2"),
            "host=10.0.0.1 port=5432 user=rep password='it\\'s a pass\\\\word' application_name=n2 connect_timeout=2"
        );
        assert_eq!(conf_value("a'b"), "'a''b'");
    }
}
