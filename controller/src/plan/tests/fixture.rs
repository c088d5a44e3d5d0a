//! Builders for planner tests: a small cluster described the way an operator would.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::jiff::Timestamp;

use crate::api::{EgressGatewaySpec, LabelSelector, LabelSelectorRequirement, SelectorOperator};
use crate::index::{
    ClusterIndex, Gateway, Node, NodeInterface, Pod, PodKey, RecordedAssignment,
    gateway::parse_spec,
};
use crate::plan::{Assignments, ClusterPlan};

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: vec![],
    }
}

pub fn expr(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }],
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A gateway selecting `app=<app>` pods in `team=<team>` namespaces, gateway nodes labelled
/// `egressgw.io/gateway=true`, created `age` seconds after the epoch (smaller = older).
pub fn gateway(
    name: &str,
    age: i64,
    team: &str,
    app: &str,
    ips: &[&str],
    dsts: &[&str],
) -> Gateway {
    let spec = EgressGatewaySpec {
        namespace_selector: sel(&[("team", team)]),
        pod_selector: sel(&[("app", app)]),
        destination_cidrs: dsts.iter().map(|s| s.to_string()).collect(),
        excluded_cidrs: vec![],
        egress_ips: ips.iter().map(|s| s.to_string()).collect(),
        gateway_node_selector: sel(&[("egressgw.io/gateway", "true")]),
        interface: None,
    };
    from_spec(name, age, &spec)
}

pub fn from_spec(name: &str, age: i64, spec: &EgressGatewaySpec) -> Gateway {
    Gateway {
        name: name.into(),
        generation: 1,
        created: Timestamp::from_second(1_700_000_000 + age).unwrap(),
        spec: parse_spec(spec),
        fallback: None,
        recorded: BTreeMap::new(),
    }
}

/// A Ready gateway node with a live agent, eth1 on the node LAN 198.18.0.0/24, address
/// 198.18.0.<n>.
pub fn gw_node(name: &str, n: u8) -> Node {
    Node {
        name: name.into(),
        labels: labels(&[("egressgw.io/gateway", "true")]),
        ready: true,
        agent_alive: true,
        agent_epoch: 1,
        agent_idle: false,
        internal_ip: Some(IpAddr::from([198, 18, 0, n])),
        addresses: vec![crate::index::NodeAddress {
            kind: crate::index::NodeAddressKind::InternalIp,
            ip: IpAddr::from([198, 18, 0, n]),
        }],
        pod_cidrs: vec![],
        agent_not_ready_taint: false,
        interfaces: vec![NodeInterface {
            name: "eth1".into(),
            network: format!("198.18.0.{n}/24").parse().unwrap(),
        }],
    }
}

/// A worker node (not a gateway candidate).
pub fn worker(name: &str, n: u8) -> Node {
    Node {
        labels: BTreeMap::new(),
        ..gw_node(name, n)
    }
}

/// A running pod with one IP.
pub fn pod(ns: &str, name: &str, app: &str, node: &str, addr: &str) -> Pod {
    Pod {
        key: PodKey::new(ns, name),
        labels: labels(&[("app", app)]).into(),
        node: Some(node.into()),
        ips: vec![ip(addr)],
        running: true,
        host_network: false,
        terminating: false,
        created: None,
    }
}

#[derive(Default)]
pub struct Cluster {
    pub index: ClusterIndex,
}

impl Cluster {
    pub fn new() -> Self {
        let mut c = Self::default();
        c.namespace("billing", &[("team", "billing")]);
        c.namespace("payments", &[("team", "payments")]);
        c.namespace("other", &[("team", "other")]);
        c
    }
    pub fn namespace(&mut self, name: &str, l: &[(&str, &str)]) -> &mut Self {
        self.index.namespaces.insert(name.into(), labels(l));
        self
    }
    pub fn gw(&mut self, g: Gateway) -> &mut Self {
        self.index.gateways.insert(g.name.clone(), g);
        self
    }
    pub fn node(&mut self, n: Node) -> &mut Self {
        self.index.nodes.insert(n.name.clone(), n);
        self
    }
    pub fn pod(&mut self, p: Pod) -> &mut Self {
        self.index.pods.insert(p.key.clone(), p);
        self
    }
    pub fn plan(&self) -> ClusterPlan {
        crate::plan::plan(&self.index)
    }
    /// Write the plan's assignments into the gateways' recorded status, as the controller does.
    pub fn record(&mut self, a: &Assignments) {
        for (name, placements) in &a.by_gateway {
            let g = self.index.gateways.get_mut(name).unwrap();
            g.recorded = placements
                .iter()
                .filter_map(|p| {
                    p.placement.as_ref().ok().map(|pl| {
                        (
                            p.ip,
                            RecordedAssignment {
                                node: pl.node.clone(),
                                interface: Some(pl.interface.clone()),
                                epoch: Some(pl.epoch),
                                since: None,
                            },
                        )
                    })
                })
                .collect();
        }
    }
}

/// The node each IP of `gateway` is placed on (None when unplaced), in spec order.
pub fn nodes_of(plan: &ClusterPlan, gateway: &str) -> Vec<Option<String>> {
    plan.assignments.by_gateway[gateway]
        .iter()
        .map(|p| p.placement.as_ref().ok().map(|pl| pl.node.clone()))
        .collect()
}
