//! The members of a cluster: the `[[node]]` sections (name, heartbeat links, API address, an
//! optional token-free metrics address) and
//! the `[witness]`, validated together because their addresses must not collide, and the
//! warnings about the membership as a whole (a two-node cluster without a witness, more nodes
//! than Raft voters).

use crate::diag::Checker;
use crate::model::valid_name;
use crate::quorum::MAX_VOTERS;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use toml::Spanned;

/// The port a node's API listens on when its `api` is not given (on its first link's address).
pub const DEFAULT_API_PORT: u16 = 7480;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub name: String,
    pub links: Vec<SocketAddr>,
    pub api: SocketAddr,
    /// Where the node's daemon also serves `/metrics`, read-only and without the token (for a
    /// Prometheus scraper that holds no cluster key); None: only on `api`, behind the token.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessConfig {
    pub address: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    name: Option<Spanned<String>>,
    links: Option<Spanned<Vec<Spanned<String>>>>,
    api: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWitness {
    address: Spanned<String>,
}

/// The `[[node]]` sections, validated.
pub(super) struct Nodes {
    /// The nodes without errors, in config order.
    pub nodes: Vec<NodeConfig>,
    /// Every valid, unique node name (also of nodes dropped for a bad address): what the other
    /// sections may refer to.
    pub names: BTreeSet<String>,
}

/// Every address claimed so far: owner node and where it was written.
#[derive(Default)]
struct Addresses(BTreeMap<SocketAddr, (String, usize)>);

impl Addresses {
    /// Claim `addr` for `node`; a second claim of one address is an error.
    fn claim(&mut self, c: &mut Checker, node: &str, addr: SocketAddr, span: Range<usize>, what: &str) {
        if let Some((owner, at)) = self.0.get(&addr) {
            let line = c.line_of(*at);
            c.error(
                span,
                format!("{what} address {addr} is already used by node {owner} (line {line})"),
            );
        } else {
            self.0.insert(addr, (node.to_string(), span.start));
        }
    }
}

/// Validate the `[[node]]` sections; `cluster` is where "no node at all" is reported.
pub(super) fn validate(c: &mut Checker, raw: Vec<Spanned<RawNode>>, cluster: &Range<usize>) -> Nodes {
    if raw.is_empty() {
        c.error(
            cluster.clone(),
            "no [[node]] is defined: a cluster needs at least one node",
        );
    }
    // name → where it was first written
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut addrs = Addresses::default();
    let mut nodes = Vec::new();
    for node in raw {
        let span = node.span();
        let rn = node.into_inner();
        let Some(name) = name(c, &rn.name, &span, &mut names) else {
            continue;
        };
        let links = links(c, &rn.links, &name, &span, &mut addrs);
        let api = api(c, &rn.api, &links, &name, &span, &mut addrs);
        let metrics_listen = rn
            .metrics_listen
            .as_ref()
            .and_then(|m| match m.get_ref().parse::<SocketAddr>() {
                Ok(addr) => {
                    addrs.claim(c, &name, addr, m.span(), "metrics_listen");
                    Some(addr)
                }
                Err(_) => {
                    c.error(
                        m.span(),
                        format!("metrics_listen {:?} is not an IP:PORT address", m.get_ref()),
                    );
                    None
                }
            });
        if let Some(api) = api {
            if !links.is_empty() {
                nodes.push(NodeConfig {
                    name,
                    links,
                    api,
                    metrics_listen,
                });
            }
        }
    }
    Nodes {
        nodes,
        names: names.into_keys().collect(),
    }
}

/// A node's name, if it is valid and not taken.
fn name(
    c: &mut Checker,
    v: &Option<Spanned<String>>,
    node: &Range<usize>,
    names: &mut BTreeMap<String, usize>,
) -> Option<String> {
    let Some(n) = v else {
        c.error(node.clone(), "[[node]] needs a `name`");
        return None;
    };
    if !valid_name(n.get_ref()) {
        c.error(
            n.span(),
            format!(
                "node name {:?} must be 1-63 characters of A-Z a-z 0-9 - _ .",
                n.get_ref()
            ),
        );
        return None;
    }
    if n.get_ref() == "witness" {
        c.error(n.span(), "node name \"witness\" is reserved for the [witness]");
        return None;
    }
    if let Some(first) = names.get(n.get_ref()) {
        let line = c.line_of(*first);
        c.error(
            n.span(),
            format!("duplicate node name {:?} (first defined on line {line})", n.get_ref()),
        );
        return None;
    }
    names.insert(n.get_ref().clone(), n.span().start);
    Some(n.get_ref().clone())
}

/// A node's heartbeat link addresses (the valid ones; each is claimed).
fn links(
    c: &mut Checker,
    v: &Option<Spanned<Vec<Spanned<String>>>>,
    name: &str,
    node: &Range<usize>,
    addrs: &mut Addresses,
) -> Vec<SocketAddr> {
    let mut links = Vec::new();
    match v {
        None => c.error(
            node.clone(),
            format!("node {name} has no `links`: it needs at least one heartbeat link address (\"IP:PORT\")"),
        ),
        Some(l) if l.get_ref().is_empty() => c.error(
            l.span(),
            format!("node {name} has an empty `links` list: it needs at least one heartbeat link address"),
        ),
        Some(l) => {
            for link in l.get_ref() {
                match link.get_ref().parse::<SocketAddr>() {
                    Ok(a) if a.port() == 0 => c.error(
                        link.span(),
                        format!("link address {} needs a port other than 0", link.get_ref()),
                    ),
                    Ok(a) => {
                        addrs.claim(c, name, a, link.span(), "link");
                        links.push(a);
                    }
                    Err(_) => c.error(
                        link.span(),
                        format!(
                            "link {:?} is not an IP:PORT address (e.g. \"10.0.0.1:7400\" or \"[fd00::1]:7400\")",
                            link.get_ref()
                        ),
                    ),
                }
            }
        }
    }
    links
}

/// A node's API address: as written, else its first link's IP on [`DEFAULT_API_PORT`].
fn api(
    c: &mut Checker,
    v: &Option<Spanned<String>>,
    links: &[SocketAddr],
    name: &str,
    node: &Range<usize>,
    addrs: &mut Addresses,
) -> Option<SocketAddr> {
    match v {
        Some(a) => match a.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                addrs.claim(c, name, addr, a.span(), "api");
                Some(addr)
            }
            Err(_) => {
                c.error(a.span(), format!("api {:?} is not an IP:PORT address", a.get_ref()));
                None
            }
        },
        None => links.first().map(|l| {
            let addr = SocketAddr::new(l.ip(), DEFAULT_API_PORT);
            addrs.claim(c, name, addr, node.clone(), "default api");
            addr
        }),
    }
}

/// Validate the `[witness]` section.
pub(super) fn witness(c: &mut Checker, raw: Option<Spanned<RawWitness>>) -> Option<WitnessConfig> {
    let w = raw?;
    let a = &w.get_ref().address;
    match a.get_ref().parse::<SocketAddr>() {
        Ok(addr) => Some(WitnessConfig { address: addr }),
        Err(_) => {
            c.error(
                a.span(),
                format!("witness address {:?} is not an IP:PORT address", a.get_ref()),
            );
            None
        }
    }
}

/// Warnings about the membership as a whole, reported at the `[cluster]` section.
pub(super) fn quorum_warnings(c: &mut Checker, nodes: usize, witness: bool, cluster: &Range<usize>) {
    if nodes == 2 && !witness {
        c.warn(
            cluster.clone(),
            "a two-node cluster without a [witness]: if the link between the nodes breaks, neither side holds a majority (2 of 2 votes needed), so both apply no_quorum_policy and the service stops; add a [witness] or a third node",
        );
    }
    if nodes > MAX_VOTERS {
        c.warn(
            cluster.clone(),
            format!("{nodes} nodes: only {MAX_VOTERS} vote in Raft, the others join as non-voting members"),
        );
    }
}
