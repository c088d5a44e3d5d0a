//! Node plans for dataplane tests, written the way the planner's contract describes them
//! (the dataplane is tested on its own, not through the planner).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use egressgw::plan::{GatewayNodePlan, HostedIp, NodePlan};

use super::topology::{NODE_IFACE, Testbed};

/// One gateway of a scenario.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    pub name: String,
    pub destinations: Vec<String>,
    pub excluded: Vec<String>,
    /// Egress IPs and the node (1-based) hosting each; empty = no egress IP anywhere.
    pub egress: Vec<(Ipv4Addr, usize)>,
    /// Selected pods (IP, node); pod `i` (in this order) leaves with egress IP `i % n`.
    pub pods: Vec<(Ipv4Addr, usize)>,
    /// Nodes that guard every pod of the gateway besides the hosting ones (candidates).
    pub candidates: Vec<usize>,
}

impl GatewaySpec {
    pub fn new(name: &str, destinations: &[&str]) -> Self {
        Self {
            name: name.into(),
            destinations: destinations.iter().map(|s| s.to_string()).collect(),
            excluded: Vec::new(),
            egress: Vec::new(),
            pods: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// `node` may host the gateway: it guards all of its pods.
    pub fn candidate(mut self, node: usize) -> Self {
        self.candidates.push(node);
        self
    }

    pub fn excluded(mut self, nets: &[&str]) -> Self {
        self.excluded = nets.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn egress(mut self, ip: Ipv4Addr, node: usize) -> Self {
        self.egress.push((ip, node));
        self
    }

    pub fn pod(mut self, ip: Ipv4Addr, node: usize) -> Self {
        self.pods.push((ip, node));
        self
    }
}

/// The plan of node `node` (1-based) for the given gateways. As the planner does, a node
/// guards its own selected pods, and a node that hosts (or is a candidate for) a gateway
/// guards every pod of it.
pub fn node_plan(tb: &Testbed, node: usize, gateways: &[GatewaySpec]) -> NodePlan {
    let mut plan = NodePlan::empty(tb.node(node).name());
    for g in gateways {
        let mut gp = GatewayNodePlan {
            destinations: g
                .destinations
                .iter()
                .map(|d| d.parse().expect("cidr"))
                .collect(),
            excluded: g
                .excluded
                .iter()
                .map(|d| d.parse().expect("cidr"))
                .collect(),
            egress_ips: g.egress.iter().map(|(e, _)| IpAddr::V4(*e)).collect(),
            ..Default::default()
        };
        let candidate = g.candidates.contains(&node) || g.egress.iter().any(|(_, h)| *h == node);
        for (pod, pod_node) in &g.pods {
            if candidate || *pod_node == node {
                gp.guard.insert(IpAddr::V4(*pod));
            }
        }
        gp.destinations.sort();
        gp.excluded.sort();
        for (e, host) in &g.egress {
            if *host == node {
                plan.hosted.insert(
                    IpAddr::V4(*e),
                    HostedIp {
                        gateway: g.name.clone(),
                        interface: NODE_IFACE.into(),
                    },
                );
                gp.snat.entry(IpAddr::V4(*e)).or_default();
            }
        }
        for (i, (pod, pod_node)) in g.pods.iter().enumerate() {
            if g.egress.is_empty() {
                if *pod_node == node {
                    gp.blocked.insert(IpAddr::V4(*pod));
                }
                continue;
            }
            let (e, host) = g.egress[i % g.egress.len()];
            if host == node {
                gp.snat
                    .entry(IpAddr::V4(e))
                    .or_default()
                    .insert(IpAddr::V4(*pod));
                if *pod_node != node {
                    gp.origins
                        .insert(IpAddr::V4(*pod), IpAddr::V4(tb.node(*pod_node).ip()));
                }
            } else if *pod_node == node {
                gp.steer
                    .entry(IpAddr::V4(tb.node(host).ip()))
                    .or_default()
                    .insert(IpAddr::V4(*pod));
            }
        }
        if !gp.is_empty() {
            plan.gateways.insert(g.name.clone(), gp);
        }
    }
    plan
}

/// Plans for every node of the testbed.
pub fn all_plans(tb: &Testbed, gateways: &[GatewaySpec]) -> BTreeMap<usize, NodePlan> {
    (1..=tb.nodes().len())
        .map(|n| (n, node_plan(tb, n, gateways)))
        .collect()
}

/// A kernel dataplane working inside `node`'s namespace, with the default configuration.
pub fn dataplane(node: &super::topology::Node) -> egressgw::dataplane::KernelDataplane {
    egressgw::dataplane::KernelDataplane::new(egressgw::dataplane::DataplaneConfig::in_netns(
        node.netns_path(),
    ))
    .expect("dataplane thread starts inside the node namespace")
}

/// Applies each node's plan with its dataplane (in node order); the reports.
pub fn apply_all(
    dps: &mut BTreeMap<usize, egressgw::dataplane::KernelDataplane>,
    plans: &BTreeMap<usize, NodePlan>,
) -> BTreeMap<usize, egressgw::dataplane::ApplyReport> {
    use egressgw::dataplane::Dataplane;
    plans
        .iter()
        .map(|(n, p)| {
            (
                *n,
                dps.get_mut(n)
                    .expect("a dataplane per node")
                    .apply(p)
                    .unwrap_or_else(|e| panic!("apply on node {n}: {e}")),
            )
        })
        .collect()
}

/// One dataplane per node of the testbed.
pub fn dataplanes(tb: &Testbed) -> BTreeMap<usize, egressgw::dataplane::KernelDataplane> {
    (1..=tb.nodes().len())
        .map(|n| (n, dataplane(tb.node(n))))
        .collect()
}
