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

/// Cluster-internal addresses, excluded from every gateway's destinations automatically (a
/// gateway for `0.0.0.0/0` means "everything leaving the cluster"): every node's pod ranges
/// and InternalIP, and the Service ranges. Sorted, without duplicates.
pub fn cluster_internal(index: &ClusterIndex) -> Vec<IpNetwork> {
    let mut out: BTreeSet<IpNetwork> = index
        .nodes
        .values()
        .flat_map(|n| {
            n.pod_cidrs.iter().copied().chain(
                n.internal_ip
                    .and_then(|ip| IpNetwork::new(ip, host_prefix(ip)).ok()),
            )
        })
        .collect();
    out.extend(index.service_cidrs.iter().copied());
    out.into_iter().collect()
}

fn host_prefix(ip: std::net::IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// The cluster-internal ranges that overlap `destinations`: what a gateway for them excludes
/// on top of its `excludedCIDRs` (shown in its status).
pub fn internal_overlapping(internal: &[IpNetwork], destinations: &[IpNetwork]) -> Vec<IpNetwork> {
    let overlaps = |a: &IpNetwork, b: &IpNetwork| {
        a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
    };
    internal
        .iter()
        .filter(|r| destinations.iter().any(|d| overlaps(d, r)))
        .copied()
        .collect()
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
    fn cluster_internal_is_pod_ranges_node_addresses_and_service_ranges() {
        let mut c = Cluster::new();
        let mut n1 = gw_node("n1", 11);
        n1.pod_cidrs = vec!["198.19.1.0/24".parse().unwrap()];
        c.node(n1).node(worker("n2", 12));
        c.index.service_cidrs = vec!["198.18.192.0/20".parse().unwrap()];
        let got = cluster_internal(&c.index);
        let want: Vec<IpNetwork> = [
            "198.18.0.11/32",
            "198.18.0.12/32",
            "198.18.192.0/20",
            "198.19.1.0/24",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(got, want);
        let everything: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert_eq!(internal_overlapping(&got, &[everything]), want);
        let legacy: IpNetwork = "203.0.113.0/24".parse().unwrap();
        assert!(internal_overlapping(&got, &[legacy]).is_empty());
        let lan: IpNetwork = "198.18.0.0/24".parse().unwrap();
        assert_eq!(internal_overlapping(&got, &[lan]), want[..2].to_vec());
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
