//! Nodes as the planner sees them: labels, readiness, agent liveness and interfaces.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node as KubeNode;

/// An interface of a node that can carry egress IPs, as its agent reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeInterface {
    pub name: String,
    /// The subnet configured on it (address and prefix), e.g. 198.18.0.12/24.
    pub network: IpNetwork,
}

/// Which kind of node address (`status.addresses[].type`) an address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeAddressKind {
    InternalIp,
    ExternalIp,
}

impl NodeAddressKind {
    /// The `type` of a `NodeAddress` of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAddressKind::InternalIp => "InternalIP",
            NodeAddressKind::ExternalIp => "ExternalIP",
        }
    }

    fn from_type(t: &str) -> Option<Self> {
        match t {
            "InternalIP" => Some(NodeAddressKind::InternalIp),
            "ExternalIP" => Some(NodeAddressKind::ExternalIp),
            _ => None,
        }
    }
}

/// One IP address of a node (`status.addresses`, hostnames left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddress {
    pub kind: NodeAddressKind,
    pub ip: IpAddr,
}

/// A node cut down to what assignment and steering need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The node's `Ready` condition is True.
    pub ready: bool,
    /// Its agent renewed its Lease recently (judged by the observer's own clock).
    pub agent_alive: bool,
    /// The agent's lease epoch (`leaseTransitions`): bumps each time the agent comes back
    /// after having been fenced, so assignments made to an older epoch are not trusted.
    pub agent_epoch: i64,
    /// The agent renews at the idle cadence (its node matched no gatewayNodeSelector when it
    /// last looked): its liveness is judged too coarsely to host an IP.
    pub agent_idle: bool,
    /// The node's InternalIP: the next hop other nodes steer traffic to.
    pub internal_ip: Option<IpAddr>,
    /// Every InternalIP and ExternalIP of the node, in `status.addresses` order: no egress IP
    /// may be one of them.
    pub addresses: Vec<NodeAddress>,
    /// Interfaces the agent reported, with their subnets.
    pub interfaces: Vec<NodeInterface>,
    /// The node's pod ranges (`spec.podCIDRs`, or `spec.podCIDR`), when the cluster allocates
    /// them per node. Other nodes drop forwarded traffic from them that they will not SNAT.
    pub pod_cidrs: Vec<IpNetwork>,
    /// The node carries the `egressgw.io/agent-not-ready:NoSchedule` taint.
    pub agent_not_ready_taint: bool,
}

/// Why a node cannot host an egress IP.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ineligible {
    /// Labels do not match `gatewayNodeSelector`.
    SelectorMismatch,
    /// The node is not Ready.
    NotReady,
    /// The node's agent has not renewed its Lease in time.
    AgentDown,
    /// The node's agent renews at the idle cadence; it switches when it sees the node match.
    AgentIdle,
    /// No interface of the node has a subnet holding the IP.
    NoInterface,
    /// The node has no interface of the name `spec.interface` gives.
    MissingInterface(String),
}

impl std::fmt::Display for Ineligible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Ineligible::SelectorMismatch => "does not match gatewayNodeSelector",
            Ineligible::NotReady => "is not Ready",
            Ineligible::AgentDown => "has no live egressgw agent",
            Ineligible::AgentIdle => {
                "has an egressgw agent at the idle cadence (not yet renewing fast enough to host)"
            }
            Ineligible::NoInterface => "has no interface for the IP's subnet",
            Ineligible::MissingInterface(name) => {
                return write!(f, "has no interface {name} (spec.interface)");
            }
        };
        f.write_str(text)
    }
}

impl Node {
    /// The interface that would carry `ip`: `wanted` if given and present, else the interface
    /// whose subnet holds the IP (the longest prefix wins, then the name).
    pub fn interface_for(&self, ip: IpAddr, wanted: Option<&str>) -> Option<&NodeInterface> {
        match wanted {
            Some(name) => self.interfaces.iter().find(|i| i.name == name),
            None => self
                .interfaces
                .iter()
                .filter(|i| i.network.contains(ip))
                .max_by(|a, b| {
                    a.network
                        .prefix()
                        .cmp(&b.network.prefix())
                        .then_with(|| b.name.cmp(&a.name))
                }),
        }
    }

    /// Whether this node may host `ip` for a gateway with this node selector and interface,
    /// or the first reason it may not.
    pub fn eligibility(
        &self,
        selector: &crate::api::LabelSelector,
        ip: IpAddr,
        interface: Option<&str>,
    ) -> Result<&NodeInterface, Ineligible> {
        if !selector.matches(&self.labels) {
            return Err(Ineligible::SelectorMismatch);
        }
        if !self.ready {
            return Err(Ineligible::NotReady);
        }
        if !self.agent_alive {
            return Err(Ineligible::AgentDown);
        }
        if self.agent_idle {
            return Err(Ineligible::AgentIdle);
        }
        self.interface_for(ip, interface)
            .ok_or_else(|| match interface {
                Some(name) => Ineligible::MissingInterface(name.to_string()),
                None => Ineligible::NoInterface,
            })
    }

    /// Cut a Kubernetes Node down. Liveness, epoch and interfaces come from the agent's Lease
    /// and are filled in by the caller.
    pub fn from_kube(node: &KubeNode) -> Option<Self> {
        let name = node.metadata.name.clone()?;
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let addresses: Vec<NodeAddress> = status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some(NodeAddress {
                    kind: NodeAddressKind::from_type(&a.type_)?,
                    ip: a.address.parse().ok()?,
                })
            })
            .collect();
        let internal_ip = addresses
            .iter()
            .find(|a| a.kind == NodeAddressKind::InternalIp)
            .map(|a| a.ip);
        let spec = node.spec.as_ref();
        let mut pod_cidrs: Vec<IpNetwork> = spec
            .and_then(|s| s.pod_cidrs.as_ref())
            .into_iter()
            .flatten()
            .chain(spec.and_then(|s| s.pod_cidr.as_ref()))
            .filter_map(|c| c.parse().ok())
            .collect();
        pod_cidrs.sort();
        pod_cidrs.dedup();
        Some(Self {
            name,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            ready,
            internal_ip,
            addresses,
            pod_cidrs,
            agent_not_ready_taint: spec
                .and_then(|s| s.taints.as_deref())
                .is_some_and(crate::k8s::taint::has_ours),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LabelSelector;

    #[test]
    fn internal_and_external_addresses_are_kept_hostnames_are_not() {
        let kube: KubeNode = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "node-1" },
            "status": { "addresses": [
                { "type": "Hostname", "address": "node-1" },
                { "type": "ExternalIP", "address": "203.0.113.11" },
                { "type": "InternalIP", "address": "198.18.0.11" },
            ] }
        }))
        .unwrap();
        let n = Node::from_kube(&kube).unwrap();
        assert_eq!(n.internal_ip, Some("198.18.0.11".parse().unwrap()));
        assert_eq!(
            n.addresses,
            vec![
                NodeAddress {
                    kind: NodeAddressKind::ExternalIp,
                    ip: "203.0.113.11".parse().unwrap()
                },
                NodeAddress {
                    kind: NodeAddressKind::InternalIp,
                    ip: "198.18.0.11".parse().unwrap()
                },
            ]
        );
    }

    #[test]
    fn an_idle_agent_cannot_host_until_it_renews_at_the_hosting_cadence() {
        let mut n = Node {
            name: "n".into(),
            ready: true,
            agent_alive: true,
            agent_idle: true,
            interfaces: vec![NodeInterface {
                name: "eth0".into(),
                network: "198.18.0.0/15".parse().unwrap(),
            }],
            ..Default::default()
        };
        let ip: IpAddr = "198.18.0.200".parse().unwrap();
        assert_eq!(
            n.eligibility(&LabelSelector::default(), ip, None),
            Err(Ineligible::AgentIdle)
        );
        n.agent_alive = false;
        assert_eq!(
            n.eligibility(&LabelSelector::default(), ip, None),
            Err(Ineligible::AgentDown),
            "a dead agent is reported as dead"
        );
        n.agent_alive = true;
        n.agent_idle = false;
        assert!(n.eligibility(&LabelSelector::default(), ip, None).is_ok());
    }
}
