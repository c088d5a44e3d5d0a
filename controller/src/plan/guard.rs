//! Which traffic a node guards (the no-leak rule, DESIGN.md "Invariants", 1): the gateways
//! whose every pod it guards, and the pod ranges of the other nodes.

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;

use crate::index::ClusterIndex;

/// The gateways whose every pod `node` guards: those whose gatewayNodeSelector matches its
/// labels, and those status records an IP of on it (under any epoch: other nodes may steer
/// that IP's pods here). An invalid spec counts by its last valid one.
pub fn guarded_gateways(index: &ClusterIndex, node: &str) -> BTreeSet<String> {
    let empty = Default::default();
    let labels = index.nodes.get(node).map_or(&empty, |n| &n.labels);
    index
        .gateways
        .values()
        .filter(|g| {
            g.recorded.values().any(|r| r.node == node)
                || g.effective_spec()
                    .is_some_and(|s| s.node_selector.matches(labels))
        })
        .map(|g| g.name.clone())
        .collect()
}

/// The pod ranges of every node but `node` (none that overlaps its own): a packet from them
/// that `node` forwards toward a guarded gateway's destinations was steered here, whether or
/// not this node has heard of the pod yet, so it must leave SNATed or not at all.
pub fn remote_pod_ranges(index: &ClusterIndex, node: &str) -> Vec<IpNetwork> {
    let own: Vec<IpNetwork> = index
        .nodes
        .get(node)
        .map(|n| n.pod_cidrs.clone())
        .unwrap_or_default();
    let overlaps =
        |a: &IpNetwork, b: &IpNetwork| a.contains(b.network()) || b.contains(a.network());
    let ranges: BTreeSet<IpNetwork> = index
        .nodes
        .values()
        .filter(|n| n.name != node)
        .flat_map(|n| n.pod_cidrs.iter().copied())
        .filter(|r| !own.iter().any(|o| overlaps(o, r)))
        .collect();
    ranges.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::fixture::*;

    #[test]
    fn candidates_guard_by_selector_or_recorded_placement() {
        let mut c = Cluster::new();
        c.gw(gateway(
            "g",
            0,
            "billing",
            "inv",
            &["198.18.0.200"],
            &["203.0.113.0/24"],
        ))
        .node(gw_node("n1", 11))
        .node(worker("w1", 21));
        assert_eq!(
            guarded_gateways(&c.index, "n1"),
            BTreeSet::from(["g".to_string()])
        );
        assert!(guarded_gateways(&c.index, "w1").is_empty());
        // an IP recorded on the worker (its label was removed since): it still guards
        let mut a = c.plan().assignments;
        let p = a.by_gateway.get_mut("g").unwrap()[0]
            .placement
            .as_mut()
            .unwrap();
        p.node = "w1".into();
        c.record(&a);
        assert!(guarded_gateways(&c.index, "w1").contains("g"));
    }

    #[test]
    fn remote_ranges_are_the_other_nodes_pod_cidrs() {
        let mut c = Cluster::new();
        let mut n1 = gw_node("n1", 11);
        n1.pod_cidrs = vec!["198.19.1.0/24".parse().unwrap()];
        let mut n2 = gw_node("n2", 12);
        n2.pod_cidrs = vec!["198.19.2.0/24".parse().unwrap()];
        let mut n3 = worker("n3", 13);
        n3.pod_cidrs = vec!["198.19.0.0/16".parse().unwrap()]; // overlaps n1's: left out
        c.node(n1).node(n2).node(n3).node(worker("n4", 14));
        assert_eq!(
            remote_pod_ranges(&c.index, "n1"),
            vec!["198.19.2.0/24".parse::<IpNetwork>().unwrap()]
        );
    }
}
