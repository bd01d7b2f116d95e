//! Which node checks a backend: one node per backend, spread over the cluster, so N balancer
//! nodes do not send N× the check traffic (HAProxy's instances each check everything) and all
//! of them read one verdict. Rendezvous hashing over the nodes that can check (online, not
//! leaving): every node computes the same answer from the replicated state, and when a node
//! goes only its backends move to others.

use super::hash::stable_hash;

/// The node, of `nodes`, that checks `backend` of `balancer` (None: no node).
pub fn checker<'a>(balancer: &str, backend: &str, nodes: &[&'a str]) -> Option<&'a str> {
    nodes
        .iter()
        .copied()
        .max_by_key(|n| (stable_hash(format!("{balancer}\0{backend}\0{n}").as_bytes()), *n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn assignment<'a>(nodes: &[&'a str], backends: usize) -> BTreeMap<String, &'a str> {
        (0..backends)
            .map(|i| {
                let b = format!("web@{i}");
                let c = checker("lb", &b, nodes).unwrap();
                (b, c)
            })
            .collect()
    }

    #[test]
    fn checks_spread_over_the_nodes_and_only_a_gone_nodes_move() {
        let three = assignment(&["n1", "n2", "n3"], 600);
        for n in ["n1", "n2", "n3"] {
            let count = three.values().filter(|c| **c == n).count();
            assert!((150..=250).contains(&count), "{n} checks {count} of 600");
        }
        let two = assignment(&["n1", "n3"], 600);
        for (b, c) in &three {
            if *c != "n2" {
                assert_eq!(two[b], *c, "{b} moved although its checker stayed");
            }
        }
        assert_eq!(checker("lb", "x", &[]), None);
        assert_eq!(
            checker("lb", "x", &["n2", "n1"]),
            checker("lb", "x", &["n1", "n2"]),
            "order of the list does not matter"
        );
    }
}
