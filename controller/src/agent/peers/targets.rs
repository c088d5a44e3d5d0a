//! Which nodes an agent pings (pure): every Ready node that may host an egress IP of any
//! gateway (its labels match a `gatewayNodeSelector`) and every Ready node that status records
//! as holding one, by InternalIP (IPv4), never itself.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::index::ClusterIndex;

pub fn known_peers(index: &ClusterIndex, me: &str) -> BTreeMap<String, IpAddr> {
    let selectors: Vec<_> = index
        .gateways
        .values()
        .filter_map(|g| g.effective_spec())
        .map(|s| &s.node_selector)
        .collect();
    let recorded: Vec<&str> = index
        .gateways
        .values()
        .flat_map(|g| g.recorded.values().map(|r| r.node.as_str()))
        .collect();
    index
        .nodes
        .values()
        .filter(|n| n.name != me && n.ready)
        .filter(|n| {
            selectors.iter().any(|s| s.matches(&n.labels)) || recorded.contains(&n.name.as_str())
        })
        .filter_map(|n| {
            n.internal_ip
                .filter(IpAddr::is_ipv4)
                .map(|ip| (n.name.clone(), ip))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::fixture::*;

    #[test]
    fn candidates_and_recorded_holders_are_pinged_workers_and_dead_nodes_are_not() {
        let mut c = Cluster::new();
        c.gw(gateway(
            "g",
            0,
            "billing",
            "invoicer",
            &["198.18.0.200"],
            &["203.0.113.0/24"],
        ))
        .node(gw_node("n2", 12))
        .node(gw_node("n3", 13))
        .node(worker("n1", 11));
        let mut down = gw_node("n4", 14);
        down.ready = false;
        c.node(down);
        let peers = known_peers(&c.index, "n2");
        assert_eq!(peers.keys().collect::<Vec<_>>(), vec!["n3"]);
        assert_eq!(peers["n3"], "198.18.0.13".parse::<IpAddr>().unwrap());

        // A worker recorded as holding an IP (its labels changed since) is pinged too.
        let plan = c.plan();
        c.record(&plan.assignments);
        let holder = plan.assignments.by_gateway["g"][0]
            .placement
            .as_ref()
            .unwrap()
            .node
            .clone();
        c.index.nodes.get_mut(&holder).unwrap().labels.clear();
        let me = if holder == "n2" { "n3" } else { "n2" };
        assert!(known_peers(&c.index, me).contains_key(&holder));
    }
}
