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
    /// The addresses PostgreSQL listens on (`listen_addresses`; None: `host`, else what
    /// postgresql.conf says). `*` also answers on a write VIP that comes later.
    pub listen: Option<String>,
    pub replication_user: String,
    pub replication_password_file: Option<PathBuf>,
    pub max_lag_bytes: u64,
    pub sync: Sync,
    /// WAL kept for replicas behind (`wal_keep_size`, as PostgreSQL writes it): a replica that
    /// was behind a new primary catches up from it instead of needing a fresh copy.
    pub wal_keep_size: String,
}

/// The system identifier in `pg_controldata`'s output ("Database system identifier: N"), the
/// number every copy of one `initdb` shares.
pub fn system_identifier(controldata: &str) -> Option<String> {
    controldata.lines().find_map(|l| {
        let v = l.strip_prefix("Database system identifier:")?.trim();
        (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.to_string())
    })
}

/// The params the agent knows (anything else is a typo).
const KNOWN: &[&str] = &[
    "bindir",
    "pgdata",
    "port",
    "socket_dir",
    "user",
    "host",
    "listen",
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
            listen: get("listen").map(str::to_string),
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

/// A byte count as people read it (`2.0 MiB`, `512 B`).
pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// A PostgreSQL LSN (`16/B374D848`) as a byte position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

/// Whether a replica on timeline `tli` that has replayed up to `replay` has gone past where
/// its upstream's history left that timeline: the upstream's timeline `upstream_tli` and that
/// timeline's history file (`TIMELINE_HISTORY`: one `parent-tli<TAB>switch-LSN<TAB>reason` line
/// per ancestor). `Some(why)` when it has: it replayed WAL the upstream never had (an
/// asynchronous replica ahead of the promoted one when the old primary crashed) and can never
/// stream again ("new timeline forked off … before current recovery point") until it is
/// rewound. A replica on the upstream's timeline or a later one, or one whose timeline the
/// history does not name although it is older (a branch the upstream never followed: the
/// same), is judged the same way; a history that cannot be read says nothing.
pub fn diverged(tli: u32, replay: u64, upstream_tli: u32, history: &str) -> Option<String> {
    if tli >= upstream_tli {
        return None;
    }
    let entries: Vec<(u32, u64)> = history
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse::<u32>().ok()?, parse_lsn(f.next()?)?))
        })
        .collect::<Option<_>>()
        .filter(|e: &Vec<_>| !e.is_empty())?;
    let lsn = |v: u64| format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF);
    match entries.iter().find(|(t, _)| *t == tli) {
        Some((_, switch)) if replay > *switch => Some(format!(
            "diverged: replayed timeline {tli} up to {}, past {} where the primary's timeline {upstream_tli} left it",
            lsn(replay),
            lsn(*switch)
        )),
        Some(_) => None,
        None => Some(format!(
            "diverged: on timeline {tli}, which the primary's timeline {upstream_tli} does not descend from"
        )),
    }
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

/// What a node's health endpoints answer from (the replicated state): its instance's role, the
/// positions its and the primary's monitors published, and the recorded synchronous standby.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    pub node: String,
    /// Promoted, Started (a replica) or Failed; None: not running here.
    pub role: Option<crate::model::Role>,
    pub position: Option<(u32, u64)>,
    pub primary_position: Option<(u32, u64)>,
    pub sync_standby: Option<String>,
}

impl NodeView {
    /// How far this replica is behind the primary, in bytes (None: unknown).
    pub fn lag(&self) -> Option<u64> {
        let ((tl, lsn), (ptl, plsn)) = (self.position?, self.primary_position?);
        (tl == ptl).then(|| plsn.saturating_sub(lsn))
    }
}

/// A size as Patroni's `?lag=` takes it: bytes, or with a unit (`16kB`, `1MB`, `1GB`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.trim().parse().ok()?;
    let mult: u64 = match s[digits.len()..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Patroni's health endpoints (its REST API's `GET /primary`, `/replica?lag=`, ...), answered
/// for this node as Patroni answers them: 200 when the node is what the path asks, else 503,
/// with a JSON body describing it. None: not one of them. HAProxy configurations written for
/// Patroni (`option httpchk GET /primary`) route through phalanx unchanged.
pub fn health(path: &str, lag_limit: Option<u64>, v: &NodeView) -> Option<(u16, HealthBody)> {
    use crate::model::Role;
    let primary = v.role == Some(Role::Promoted);
    let replica = v.role == Some(Role::Started);
    let running = primary || replica;
    let sync = replica && v.sync_standby.as_deref() == Some(v.node.as_str());
    let lag_ok = || match (lag_limit, v.lag()) {
        (None, _) => true,
        (Some(max), Some(lag)) => lag <= max,
        (Some(_), None) => false,
    };
    let ok = match path.trim_end_matches('/') {
        "/primary" | "/master" | "/leader" | "/read-write" => primary,
        "/replica" => replica && lag_ok(),
        "/read-only" => primary || (replica && lag_ok()),
        "/sync" | "/synchronous" => sync,
        "/async" | "/asynchronous" => replica && !sync && lag_ok(),
        "/health" => running,
        "/liveness" => true,
        "/readiness" => primary || replica,
        _ => return None,
    };
    let body = HealthBody {
        state: if running { "running" } else { "stopped" },
        role: if primary {
            "primary"
        } else if replica {
            "replica"
        } else {
            "none"
        },
        node: v.node.clone(),
        timeline: v.position.map(|p| p.0),
        xlog: v.position.map(|(_, lsn)| Xlog {
            location: primary.then_some(lsn),
            received_location: (!primary).then_some(lsn),
        }),
        sync_standby: replica.then_some(sync),
        lag: if replica { v.lag() } else { None },
    };
    Some((if ok { 200 } else { 503 }, body))
}

/// The body of a health answer (the fields of Patroni's that phalanx knows).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthBody {
    pub state: &'static str,
    pub role: &'static str,
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xlog: Option<Xlog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_standby: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// Where the WAL is: written (a primary) or received (a replica).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Xlog {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_location: Option<u64>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_system_identifier_is_read_from_pg_controldata() {
        let out = "pg_control version number:            1300\nDatabase system identifier:           7300123456789012345\nDatabase cluster state:               shut down\n";
        assert_eq!(super::system_identifier(out).as_deref(), Some("7300123456789012345"));
        assert_eq!(
            super::system_identifier("pg_controldata: error: could not open file"),
            None
        );
        assert_eq!(super::system_identifier("Database system identifier: 12ab"), None);
    }

    use super::*;

    #[test]
    fn a_replica_past_the_fork_point_of_the_primarys_timeline_has_diverged() {
        // Timeline 3 left timeline 2 at 0/4024988 (the lab's case: the other replica replayed
        // 168 bytes more of the crashed primary's WAL).
        let history = "1\t0/3000000\tno recovery target specified\n2\t0/4024988\tno recovery target specified\n";
        let why = diverged(2, 0x4024A30, 3, history).unwrap();
        assert!(why.contains("0/4024A30") && why.contains("0/4024988"), "{why}");
        assert_eq!(diverged(2, 0x4024988, 3, history), None, "exactly at the switch point");
        assert_eq!(diverged(2, 0x4000000, 3, history), None);
        assert_eq!(diverged(1, 0x2FFFFFF, 3, history), None);
        assert!(diverged(1, 0x3000001, 3, history).is_some());
        assert_eq!(diverged(3, 0x9000000, 3, history), None, "on the primary's timeline");
        assert_eq!(diverged(4, 0x9000000, 3, history), None);
        // A branch timeline 3 does not descend from.
        let branch = "1\t0/3000000\tno recovery target specified\n";
        assert!(diverged(2, 0x3000100, 3, branch).unwrap().contains("does not descend"));
        // Unreadable: no verdict.
        assert_eq!(diverged(2, 0x9000000, 3, ""), None);
        assert_eq!(diverged(2, 0x9000000, 3, "garbage"), None);
    }

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

    fn view(role: Option<crate::model::Role>, pos: u64, sync: Option<&str>) -> NodeView {
        NodeView {
            node: "n2".into(),
            role,
            position: Some((2, pos)),
            primary_position: Some((2, 3 << 20)),
            sync_standby: sync.map(str::to_string),
        }
    }

    /// Patroni's semantics: 200 when the node is what the path asks, else 503.
    #[test]
    fn health_endpoints_answer_as_patronis() {
        use crate::model::Role;
        let code = |path: &str, lag: Option<u64>, v: &NodeView| health(path, lag, v).map(|x| x.0);
        let primary = NodeView {
            role: Some(Role::Promoted),
            ..view(None, 3 << 20, None)
        };
        let sync_replica = view(Some(Role::Started), 3 << 20, Some("n2"));
        let lagging = view(Some(Role::Started), 1 << 20, Some("n3"));
        let stopped = view(None, 0, None);
        for p in ["/primary", "/master", "/leader", "/read-write"] {
            assert_eq!(code(p, None, &primary), Some(200), "{p}");
            assert_eq!(code(p, None, &sync_replica), Some(503), "{p}");
        }
        assert_eq!(code("/replica", None, &primary), Some(503));
        assert_eq!(code("/replica", None, &lagging), Some(200));
        assert_eq!(code("/replica", Some(1 << 20), &lagging), Some(503), "2 MiB behind");
        assert_eq!(code("/replica", Some(4 << 20), &lagging), Some(200));
        assert_eq!(code("/sync", None, &sync_replica), Some(200));
        assert_eq!(code("/sync", None, &lagging), Some(503));
        assert_eq!(code("/async", None, &lagging), Some(200));
        assert_eq!(code("/read-only", None, &primary), Some(200));
        assert_eq!(code("/health", None, &stopped), Some(503));
        assert_eq!(code("/liveness", None, &stopped), Some(200));
        assert_eq!(code("/readiness", None, &stopped), Some(503));
        assert_eq!(code("/nope", None, &primary), None);
        let (_, body) = health("/replica", None, &lagging).unwrap();
        assert_eq!(body.role, "replica");
        assert_eq!(body.lag, Some(2 << 20));
        assert_eq!(body.timeline, Some(2));
        assert_eq!(body.xlog.and_then(|x| x.received_location), Some(1 << 20));
        assert_eq!(parse_size("1MB"), Some(1 << 20));
        assert_eq!(parse_size("16kB"), Some(16 << 10));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("1 parsec"), None);
    }
}
