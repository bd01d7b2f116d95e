//! The `[sessions]` section (issue 15): the replicated session store that speaks memcached.
//! Where it listens — every node, on its API host IP and `port` (memcached's 11211 by default),
//! or at a per-node `listen` address, and also on the address of a `vip` resource if one is
//! named — how much it holds (`memory_limit`, the least recently written items evicted beyond
//! it), the largest item (`max_item_size`), and which nodes vote in its Raft group (`voters`,
//! default: the cluster's), which clients it serves (`allow`: addresses and networks;
//! default: any), and whether they speak TLS (`tls`, default false). Sizes are bytes, or a number with `KiB`, `MiB` or `GiB`.

use crate::diag::Checker;
use crate::resources::{AgentSpec, Resources};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use toml::Spanned;

pub const DEFAULT_SESSIONS_PORT: u16 = 11211;
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;
pub const DEFAULT_MAX_ITEM_SIZE: u64 = 1 << 20;
/// The largest item accepted: one Raft entry carries it.
pub const MAX_ITEM_SIZE: u64 = 64 << 20;

/// A validated `[sessions]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsConfig {
    pub port: u16,
    /// Node → the address it listens on instead of its API host IP and `port`.
    pub listen: BTreeMap<String, SocketAddr>,
    /// A `vip` resource whose address (with `port`) it also listens on, where the VIP is up.
    pub vip: Option<String>,
    pub memory_limit: u64,
    pub max_item_size: u64,
    /// Its Raft group's voters; empty: the cluster's.
    pub voters: Vec<String>,
    /// The clients it serves, by source address (empty: any); others are disconnected at once.
    #[serde(default)]
    pub allow: Vec<ipnet::IpNet>,
    /// Clients speak TLS 1.3 to it (the node's certificate of the cluster CA), as memcached's
    /// own TLS does; plain clients are refused.
    #[serde(default)]
    pub tls: bool,
}

impl SessionsConfig {
    /// Whether a client from `ip` is served.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        Self::allows_in(&self.allow, ip)
    }

    /// Whether a client from `ip` is served by allowlist `allow` (empty: anyone; an IPv4
    /// client on an IPv6 socket is matched as IPv4).
    pub fn allows_in(allow: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        allow.is_empty() || allow.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    port: Option<Spanned<i64>>,
    listen: Option<BTreeMap<String, Spanned<String>>>,
    vip: Option<Spanned<String>>,
    memory_limit: Option<Spanned<toml::Value>>,
    max_item_size: Option<Spanned<toml::Value>>,
    voters: Option<Spanned<Vec<String>>>,
    allow: Option<Spanned<Vec<String>>>,
    tls: Option<bool>,
}

/// `"64MiB"`, `"512KiB"`, `"1GiB"`, or a whole number of bytes (a string or an integer).
pub fn parse_size(v: &toml::Value) -> Result<u64, String> {
    let text = match v {
        toml::Value::Integer(n) if *n >= 0 => return Ok(*n as u64),
        toml::Value::String(s) => s.trim().to_string(),
        other => {
            return Err(format!(
                "{other} is not a size (bytes, or a number with KiB, MiB or GiB)"
            ))
        }
    };
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number with KiB, MiB or GiB)"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unit {other:?} is not one of B, KiB, MiB, GiB")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))
}

/// Validate `[sessions]` against the nodes and the resources.
pub(super) fn validate(
    c: &mut Checker,
    raw: Option<Spanned<RawSessions>>,
    nodes: &BTreeSet<String>,
    resources: &Resources,
) -> Option<SessionsConfig> {
    let raw = raw?;
    let section: Range<usize> = raw.span();
    let r = raw.into_inner();
    let errors = c.error_count();
    let port = match &r.port {
        None => DEFAULT_SESSIONS_PORT,
        Some(p) if (1..=65535).contains(p.get_ref()) => *p.get_ref() as u16,
        Some(p) => {
            c.error(p.span(), format!("sessions port {} is outside 1..65535", p.get_ref()));
            DEFAULT_SESSIONS_PORT
        }
    };
    let mut listen = BTreeMap::new();
    for (node, addr) in r.listen.iter().flatten() {
        if !nodes.contains(node) {
            c.error(addr.span(), format!("sessions listen: {node:?} is not a [[node]]"));
        }
        match addr.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => {
                listen.insert(node.clone(), a);
            }
            _ => c.error(
                addr.span(),
                format!("sessions listen: {:?} is not an IP:PORT address", addr.get_ref()),
            ),
        }
    }
    if let Some(v) = &r.vip {
        let is_vip = resources
            .primitives
            .get(v.get_ref())
            .is_some_and(|p| p.agent == AgentSpec::Vip);
        if !is_vip {
            c.error(
                v.span(),
                format!(
                    "sessions vip: {:?} is not a [[resource]] with agent = \"vip\"",
                    v.get_ref()
                ),
            );
        }
    }
    let mut size = |what: &str, v: &Option<Spanned<toml::Value>>, default: u64, min: u64, max: u64| -> u64 {
        let Some(v) = v else { return default };
        match parse_size(v.get_ref()) {
            Ok(n) if (min..=max).contains(&n) => n,
            Ok(n) => {
                c.error(v.span(), format!("sessions {what} {n} bytes is outside {min}..={max}"));
                default
            }
            Err(e) => {
                c.error(v.span(), format!("sessions {what}: {e}"));
                default
            }
        }
    };
    let memory_limit = size("memory_limit", &r.memory_limit, DEFAULT_MEMORY_LIMIT, 1 << 20, 1 << 40);
    let max_item_size = size(
        "max_item_size",
        &r.max_item_size,
        DEFAULT_MAX_ITEM_SIZE,
        1 << 10,
        MAX_ITEM_SIZE,
    );
    if max_item_size > memory_limit {
        let at = r.max_item_size.as_ref().map_or(section.clone(), |v| v.span());
        c.error(at, "sessions max_item_size is above memory_limit");
    }
    let mut voters = Vec::new();
    if let Some(v) = &r.voters {
        for n in v.get_ref() {
            if !nodes.contains(n) {
                c.error(v.span(), format!("sessions voters: {n:?} is not a [[node]]"));
            } else if voters.contains(n) {
                c.error(v.span(), format!("sessions voters: {n:?} is given twice"));
            } else {
                voters.push(n.clone());
            }
        }
        if v.get_ref().is_empty() {
            c.error(
                v.span(),
                "sessions voters is empty (leave it out for the cluster's voters)",
            );
        }
    }
    let mut allow = Vec::new();
    if let Some(a) = &r.allow {
        for s in a.get_ref() {
            let net = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                Ok(n) => allow.push(n),
                Err(_) => c.error(
                    a.span(),
                    format!("sessions allow: {s:?} is not an address or a network (10.0.0.0/24, 127.0.0.1, ::1)"),
                ),
            }
        }
        if a.get_ref().is_empty() {
            c.error(
                a.span(),
                "sessions allow is empty: no client could connect (leave it out for any)",
            );
        }
    }
    (c.error_count() == errors).then_some(SessionsConfig {
        port,
        listen,
        vip: r.vip.map(|v| v.into_inner()),
        memory_limit,
        max_item_size,
        voters,
        allow,
        tls: r.tls.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_matches_addresses_and_networks() {
        let allow: Vec<ipnet::IpNet> = ["10.0.2.0/24", "10.0.0.5/32", "fd00::/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ok = |ip: &str| SessionsConfig::allows_in(&allow, ip.parse().unwrap());
        assert!(ok("10.0.2.77") && ok("10.0.0.5") && ok("fd00::1"));
        assert!(ok("::ffff:10.0.2.9"), "an IPv4 client on an IPv6 socket");
        assert!(!ok("10.0.3.1") && !ok("10.0.0.6") && !ok("::1"));
        assert!(
            SessionsConfig::allows_in(&[], "192.0.2.1".parse().unwrap()),
            "empty: anyone"
        );
        let parsed = crate::config::parse(
            "[cluster]\nname = \"c\"\n\n[[node]]\nname = \"n1\"\nlinks = [\"127.0.0.1:7400\"]\n\n[sessions]\nallow = [\"10.0.2.0/33\"]\n",
        )
        .unwrap_err()
        .render("c.toml");
        assert!(
            parsed.contains("c.toml:9:9: error: sessions allow: \"10.0.2.0/33\" is not an address or a network"),
            "{parsed}"
        );
    }
}
