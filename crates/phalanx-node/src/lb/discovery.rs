//! Which backends a balancer has now: its static `servers` (config order), then the running
//! instances of its `backends` resource as the replicated state records them (sorted by name,
//! so that every node derives the same order). An instance's address is its node's entry in
//! `addresses`, else its node's API host IP, with the balancer's `port`. A clone of a group is
//! served by the group's last member (started last, so the group is up when it runs).

use super::pool::Target;
use phalanx_core::config::{BalancerConfig, Config};
use phalanx_core::scheduler::Role;
use phalanx_core::state::ResourceRecord;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The primitive whose instances serve `backends` (a primitive, or a clone of a primitive or
/// of a group).
fn serving_primitive<'a>(config: &'a Config, backends: &'a str) -> Option<&'a str> {
    let r = &config.resources;
    if r.primitives.contains_key(backends) {
        return Some(backends);
    }
    let inner = r.clones.get(backends)?.resource.as_str();
    if r.primitives.contains_key(inner) {
        return Some(inner);
    }
    r.groups.get(inner)?.members.last().map(String::as_str)
}

/// The backends of `b` under `config`, with `running` the state's resource records.
pub fn targets(b: &BalancerConfig, config: &Config, running: &BTreeMap<String, ResourceRecord>) -> Vec<Target> {
    let mut out: Vec<Target> = b
        .servers
        .iter()
        .map(|s| Target {
            name: s.name.clone(),
            address: s.address,
            weight: s.weight,
        })
        .collect();
    let (Some(backends), Some(port)) = (&b.backends, b.port) else {
        return out;
    };
    let Some(prim) = serving_primitive(config, backends) else {
        return out;
    };
    let mut found: BTreeMap<String, Target> = BTreeMap::new();
    for (tracked, p) in config.resources.instances() {
        if p.id != prim {
            continue;
        }
        let Some(rec) = running.get(&tracked) else { continue };
        for (node, role) in &rec.running {
            if *role == Role::Failed {
                continue;
            }
            let ip = match b.addresses.get(node) {
                Some(ip) => *ip,
                None => match config.node(node) {
                    Some(n) => n.api.ip(),
                    None => continue,
                },
            };
            let name = format!("{prim}@{node}");
            found.entry(name.clone()).or_insert(Target {
                name,
                address: SocketAddr::new(ip, port),
                weight: 1,
            });
        }
    }
    out.extend(found.into_values());
    out
}

/// Every backend name `b` may ever have with these `members`: its static servers, and its
/// serving primitive on each member (what an operator may drain before it first runs).
pub fn possible(b: &BalancerConfig, config: &Config, members: &[String]) -> Vec<String> {
    let mut out: Vec<String> = b.servers.iter().map(|s| s.name.clone()).collect();
    if let Some(prim) = b.backends.as_deref().and_then(|r| serving_primitive(config, r)) {
        out.extend(members.iter().map(|m| format!("{prim}@{m}")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[cluster]
name = "t"
fencing = "off"

[[node]]
name = "n1"
links = ["127.0.0.1:7401"]
api = "127.0.0.1:8401"

[[node]]
name = "n2"
links = ["127.0.0.2:7401"]
api = "127.0.0.2:8401"

[[node]]
name = "n3"
links = ["127.0.0.3:7401"]
api = "127.0.0.3:8401"

[[resource]]
id = "web"
agent = "process"
params = { command = "sleep 100" }

[[clone]]
id = "webs"
resource = "web"

[[balancer]]
id = "lb"
listen = ["127.0.0.1:9000"]
backends = "webs"
port = 8080
addresses = { n3 = "10.0.0.3" }
servers = [{ name = "static", address = "127.0.0.9:80", weight = 2 }]
"#;

    #[test]
    fn static_servers_then_running_instances_by_node() {
        let config = phalanx_core::config::parse(CONFIG).unwrap();
        let b = config.balancer("lb").unwrap();
        let mut rec = ResourceRecord::default();
        rec.running.insert("n3".into(), Role::Started);
        rec.running.insert("n1".into(), Role::Started);
        rec.running.insert("n2".into(), Role::Failed);
        let running = BTreeMap::from([("web".to_string(), rec)]);
        let t = targets(b, &config, &running);
        let got: Vec<(String, String, u16)> = t
            .iter()
            .map(|t| (t.name.clone(), t.address.to_string(), t.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("static".to_string(), "127.0.0.9:80".to_string(), 2),
                ("web@n1".to_string(), "127.0.0.1:8080".to_string(), 1),
                ("web@n3".to_string(), "10.0.0.3:8080".to_string(), 1),
            ],
            "a failed instance is no backend; n3 has its own address"
        );
        assert_eq!(
            targets(b, &config, &BTreeMap::new()).len(),
            1,
            "nothing runs: static only"
        );
    }
}
