//! Egress IPs the controller refuses to place because of what the cluster is: an address some
//! node or interface already has, a subnet's network or broadcast address, an address inside
//! the pod or Service ranges. These depend on the cluster, not the spec alone, so they are
//! judged at every placement (a node that appears with the address unplaces the IP) and
//! reported per IP ([`super::Unplaced::Refused`]), never at `kubectl apply`.
//!
//! Not judged: the subnet's router. Agents report each interface's address and prefix, not the
//! node's default gateway (see docs/security.md, "Threat model").

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::index::{ClusterIndex, NodeAddressKind};

/// Prefixes at least this long (IPv4) have no network or broadcast address to avoid: /31
/// point-to-point links use both addresses (RFC 3021), /32 has one.
const V4_PREFIX_WITHOUT_BROADCAST: u8 = 31;

/// Why an egress IP may not be placed on any node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An InternalIP or ExternalIP of a node.
    NodeAddress { node: String, kind: NodeAddressKind },
    /// An address an agent reports on one of its node's interfaces.
    InterfaceAddress { node: String, interface: String },
    /// The network address of a subnet configured on a node's interface.
    NetworkAddress {
        subnet: IpNetwork,
        node: String,
        interface: String,
    },
    /// The broadcast address of a subnet configured on a node's interface.
    BroadcastAddress {
        subnet: IpNetwork,
        node: String,
        interface: String,
    },
    /// Inside a node's pod range.
    PodRange { range: IpNetwork, node: String },
    /// Inside a Service range.
    ServiceRange { range: IpNetwork },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NodeAddress { node, kind } => {
                write!(f, "is the {} of node {node}", kind.as_str())
            }
            Refusal::InterfaceAddress { node, interface } => write!(
                f,
                "is the address of interface {interface} on node {node}, as its agent reports it"
            ),
            Refusal::NetworkAddress {
                subnet,
                node,
                interface,
            } => write!(
                f,
                "is the network address of subnet {} (interface {interface} of node {node})",
                subnet_of(subnet)
            ),
            Refusal::BroadcastAddress {
                subnet,
                node,
                interface,
            } => write!(
                f,
                "is the broadcast address of subnet {} (interface {interface} of node {node})",
                subnet_of(subnet)
            ),
            Refusal::PodRange { range, node } => {
                write!(f, "lies inside the pod range {range} of node {node}")
            }
            Refusal::ServiceRange { range } => {
                write!(f, "lies inside the Service range {range}")
            }
        }
    }
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `198.18.0.0/24` for an interface network `198.18.0.12/24`.
fn subnet_of(net: &IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(*net)
}

/// The first reason `ip` may not be an egress IP in this cluster, or `None`. Nodes are judged
/// in name order, each check over every node before the next check, so the reason is stable.
///
/// `host` is the node status records as hosting `ip`: a host address (/32) equal to `ip` that
/// its agent reports is taken to be the egress IP itself. Agents leave their own addresses out
/// of the report by their `IFA_PROTO` mark, which kernels before 5.18 do not keep; without
/// this exception such a node would report the IP it hosts and lose it at the next plan. (A
/// foreign address equal to `ip` cannot be added beside ours on that node: the kernel refuses
/// a duplicate.)
pub fn refusal(index: &ClusterIndex, ip: IpAddr, host: Option<&str>) -> Option<Refusal> {
    let nodes = || index.nodes.values();
    for n in nodes() {
        let internal = n
            .internal_ip
            .filter(|a| *a == ip)
            .map(|_| NodeAddressKind::InternalIp);
        let listed = n.addresses.iter().find(|a| a.ip == ip).map(|a| a.kind);
        if let Some(kind) = internal.or(listed) {
            return Some(Refusal::NodeAddress {
                node: n.name.clone(),
                kind,
            });
        }
    }
    for n in nodes() {
        let hosted_here = host == Some(n.name.as_str());
        let own = |net: &IpNetwork| hosted_here && net.prefix() == host_prefix(ip);
        if let Some(i) = n
            .interfaces
            .iter()
            .find(|i| i.network.ip() == ip && !own(&i.network))
        {
            return Some(Refusal::InterfaceAddress {
                node: n.name.clone(),
                interface: i.name.clone(),
            });
        }
    }
    for n in nodes() {
        for i in n.interfaces.iter().filter(|i| i.network.contains(ip)) {
            let IpNetwork::V4(net) = i.network else {
                continue;
            };
            if net.prefix() >= V4_PREFIX_WITHOUT_BROADCAST {
                continue;
            }
            let (node, interface, subnet) = (n.name.clone(), i.name.clone(), i.network);
            if ip == IpAddr::V4(net.network()) {
                return Some(Refusal::NetworkAddress {
                    subnet,
                    node,
                    interface,
                });
            }
            if ip == IpAddr::V4(net.broadcast()) {
                return Some(Refusal::BroadcastAddress {
                    subnet,
                    node,
                    interface,
                });
            }
        }
    }
    for n in nodes() {
        if let Some(range) = n.pod_cidrs.iter().find(|r| r.contains(ip)) {
            return Some(Refusal::PodRange {
                range: *range,
                node: n.name.clone(),
            });
        }
    }
    index
        .service_cidrs
        .iter()
        .find(|r| r.contains(ip))
        .map(|range| Refusal::ServiceRange { range: *range })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Node, NodeAddress, NodeInterface};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, n: u8) -> Node {
        Node {
            name: name.into(),
            internal_ip: Some(ip(&format!("198.18.0.{n}"))),
            addresses: vec![
                NodeAddress {
                    kind: NodeAddressKind::InternalIp,
                    ip: ip(&format!("198.18.0.{n}")),
                },
                NodeAddress {
                    kind: NodeAddressKind::ExternalIp,
                    ip: ip(&format!("203.0.113.{n}")),
                },
            ],
            interfaces: vec![
                NodeInterface {
                    name: "eth1".into(),
                    network: format!("198.18.0.{n}/24").parse().unwrap(),
                },
                NodeInterface {
                    name: "eth2".into(),
                    network: format!("198.51.100.{n}/24").parse().unwrap(),
                },
                NodeInterface {
                    name: "p2p0".into(),
                    network: "198.18.1.0/31".parse().unwrap(),
                },
            ],
            pod_cidrs: vec![format!("198.19.{n}.0/24").parse().unwrap()],
            ..Default::default()
        }
    }

    fn cluster() -> ClusterIndex {
        let mut c = ClusterIndex::default();
        for (name, n) in [("node-1", 11), ("node-2", 12)] {
            c.nodes.insert(name.into(), node(name, n));
        }
        c.service_cidrs = vec!["198.18.192.0/20".parse().unwrap()];
        c
    }

    fn why(s: &str) -> Option<String> {
        refusal(&cluster(), ip(s), None).map(|r| r.to_string())
    }

    #[test]
    fn a_free_address_of_the_node_lan_is_accepted() {
        assert_eq!(why("198.18.0.200"), None);
        assert_eq!(why("198.51.100.200"), None);
    }

    #[test]
    fn node_addresses_are_refused_naming_the_node_and_the_kind() {
        assert_eq!(
            why("198.18.0.11").as_deref(),
            Some("is the InternalIP of node node-1")
        );
        assert_eq!(
            why("203.0.113.12").as_deref(),
            Some("is the ExternalIP of node node-2")
        );
    }

    #[test]
    fn an_internal_ip_known_only_as_the_next_hop_is_refused_too() {
        let mut c = cluster();
        c.nodes.get_mut("node-1").unwrap().addresses.clear();
        assert_eq!(
            refusal(&c, ip("198.18.0.11"), None),
            Some(Refusal::NodeAddress {
                node: "node-1".into(),
                kind: NodeAddressKind::InternalIp
            })
        );
    }

    #[test]
    fn addresses_agents_report_on_interfaces_are_refused() {
        assert_eq!(
            why("198.51.100.12").as_deref(),
            Some("is the address of interface eth2 on node node-2, as its agent reports it")
        );
    }

    #[test]
    fn network_and_broadcast_addresses_of_a_reported_subnet_are_refused() {
        assert_eq!(
            why("198.18.0.255").as_deref(),
            Some(
                "is the broadcast address of subnet 198.18.0.0/24 (interface eth1 of node node-1)"
            )
        );
        assert_eq!(
            why("198.18.0.0").as_deref(),
            Some("is the network address of subnet 198.18.0.0/24 (interface eth1 of node node-1)")
        );
        assert!(matches!(
            refusal(&cluster(), ip("198.51.100.255"), None),
            Some(Refusal::BroadcastAddress { .. })
        ));
    }

    #[test]
    fn a_point_to_point_subnet_has_no_broadcast_address_to_refuse() {
        // 198.18.1.0/31: both addresses are hosts (RFC 3021); .0 is the interface's own.
        assert_eq!(why("198.18.1.1"), None);
    }

    #[test]
    fn the_host_reporting_the_ip_it_hosts_keeps_it_but_any_other_node_refuses_it() {
        let mut c = cluster();
        let vip = NodeInterface {
            name: "eth1".into(),
            network: "198.18.0.200/32".parse().unwrap(),
        };
        c.nodes.get_mut("node-2").unwrap().interfaces.push(vip);
        let egress = ip("198.18.0.200");
        assert_eq!(refusal(&c, egress, Some("node-2")), None);
        assert_eq!(
            refusal(&c, egress, Some("node-1")),
            Some(Refusal::InterfaceAddress {
                node: "node-2".into(),
                interface: "eth1".into()
            }),
            "another node's address is refused"
        );
        assert!(
            refusal(&c, egress, None).is_some(),
            "never placed there first"
        );
    }

    #[test]
    fn pod_and_service_ranges_are_refused() {
        assert_eq!(
            why("198.19.12.7").as_deref(),
            Some("lies inside the pod range 198.19.12.0/24 of node node-2")
        );
        assert_eq!(
            why("198.18.192.10").as_deref(),
            Some("lies inside the Service range 198.18.192.0/20")
        );
    }

    #[test]
    fn removing_the_node_that_had_the_address_frees_it() {
        let mut c = cluster();
        assert!(refusal(&c, ip("198.18.0.12"), None).is_some());
        c.nodes.remove("node-2");
        assert_eq!(refusal(&c, ip("198.18.0.12"), None), None);
    }
}
