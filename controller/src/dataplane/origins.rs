//! Anti-spoofing on gateway nodes (pure): where the SNATed pods of other nodes must come from.
//!
//! Traffic of another node's pod reaches the gateway node routed, unencapsulated: the source
//! node's policy route sends it `via` the gateway node's InternalIP, so it arrives on the
//! gateway's interface toward that node, in an Ethernet frame from the source node's MAC,
//! with the pod's address as source. Every host on that LAN arrives on the same interface,
//! so a reverse-path (`fib saddr . iif`) check cannot tell the pod's node from a spoofer
//! there; the frame's source MAC can. The `origins` set therefore holds, per SNATed pod of
//! another node, `pod . interface . MAC of its node`, taken from the node's neighbour entry
//! (which this node keeps resolved as a kernel-managed entry, tagged
//! [`super::config::NEIGHBOUR_PROTO`]). Pods on this node are checked by `fib saddr . iif`:
//! their veth is theirs alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use crate::plan::NodePlan;

/// Length of an `origins` key: IPv4 address (4) . interface index (4, host order) . MAC (6,
/// padded to 8 with zeros, as nftables lays out concatenations in 32-bit registers).
pub const ORIGIN_KEY_LEN: usize = 16;

/// One element of the `origins` set: pod `pod` may send from `mac` on interface `ifindex`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub pod: Ipv4Addr,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

impl Origin {
    /// The set key, as the rule's concatenation `ip saddr . iif . ether saddr` fills the
    /// registers.
    pub fn key(&self) -> [u8; ORIGIN_KEY_LEN] {
        let mut k = [0u8; ORIGIN_KEY_LEN];
        k[..4].copy_from_slice(&self.pod.octets());
        k[4..8].copy_from_slice(&self.ifindex.to_ne_bytes());
        k[8..14].copy_from_slice(&self.mac);
        k
    }

    /// Parses a key written by [`Origin::key`] (`None` for anything else).
    pub fn from_key(k: &[u8]) -> Option<Self> {
        if k.len() != ORIGIN_KEY_LEN || k[14..] != [0, 0] {
            return None;
        }
        Some(Self {
            pod: Ipv4Addr::new(k[0], k[1], k[2], k[3]),
            ifindex: u32::from_ne_bytes(k[4..8].try_into().ok()?),
            mac: k[8..14].try_into().ok()?,
        })
    }
}

/// Where a node is reached from here: the interface and the node's MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeLink {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// One IPv4 neighbour entry of the node, as far as anti-spoofing cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub ifindex: u32,
    /// The link-layer address, when the entry has one.
    pub mac: Option<[u8; 6]>,
    /// The entry is in a state whose address the kernel uses (`NUD_VALID`).
    pub valid: bool,
    /// Added by us: tagged [`super::config::NEIGHBOUR_PROTO`] and kernel-managed.
    pub ours: bool,
}

/// A change to the neighbour table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NeighOp {
    /// Make the kernel keep `ip` resolved on `ifindex` (a managed entry of ours), keeping
    /// the address it already knows, if any.
    Manage {
        ip: Ipv4Addr,
        ifindex: u32,
        mac: Option<[u8; 6]>,
    },
    /// Remove our managed entry: no SNATed pod comes from that node any more.
    Forget { ip: Ipv4Addr, ifindex: u32 },
}

fn v4(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(*v),
        IpAddr::V6(_) => None,
    }
}

/// The nodes (InternalIPs) whose pods `plan` SNATs on this node.
pub fn origin_nodes(plan: &NodePlan) -> BTreeSet<Ipv4Addr> {
    plan.gateways
        .values()
        .flat_map(|g| g.origins.values())
        .filter_map(v4)
        .collect()
}

/// Where each of `nodes` is reached, from the neighbour table: an entry with a MAC address
/// in a valid state (ours first, then the lowest interface index, so the choice is stable).
/// A node without one is missing from the result; its pods are not SNATed until it is.
pub fn node_links(
    nodes: &BTreeSet<Ipv4Addr>,
    neighbours: &[Neighbour],
) -> BTreeMap<Ipv4Addr, NodeLink> {
    let mut out: BTreeMap<Ipv4Addr, (bool, NodeLink)> = BTreeMap::new();
    for n in neighbours
        .iter()
        .filter(|n| n.valid && nodes.contains(&n.ip))
    {
        let Some(mac) = n.mac else { continue };
        let cand = (
            n.ours,
            NodeLink {
                ifindex: n.ifindex,
                mac,
            },
        );
        let better = |old: &(bool, NodeLink)| {
            (cand.0 && !old.0) || (cand.0 == old.0 && cand.1.ifindex < old.1.ifindex)
        };
        match out.get(&n.ip) {
            Some(old) if !better(old) => {}
            _ => {
                out.insert(n.ip, cand);
            }
        }
    }
    out.into_iter().map(|(ip, (_, l))| (ip, l)).collect()
}

/// The neighbour changes that keep every one of `nodes` resolved, and remove our entries of
/// nodes no longer in it. `link_toward` names the interface a node without any entry is
/// reached on (the one whose subnet holds it); a node on no subnet of ours gets no entry
/// (its pods stay unSNATed: fail closed).
pub fn neighbour_ops(
    nodes: &BTreeSet<Ipv4Addr>,
    neighbours: &[Neighbour],
    link_toward: impl Fn(Ipv4Addr) -> Option<u32>,
) -> Vec<NeighOp> {
    let mut ops = Vec::new();
    for ip in nodes {
        let entries: Vec<&Neighbour> = neighbours.iter().filter(|n| n.ip == *ip).collect();
        if entries.iter().any(|n| n.ours) {
            continue;
        }
        let known = entries.iter().find(|n| n.valid && n.mac.is_some());
        let ifindex = known.map(|n| n.ifindex).or_else(|| link_toward(*ip));
        if let Some(ifindex) = ifindex {
            ops.push(NeighOp::Manage {
                ip: *ip,
                ifindex,
                mac: known.and_then(|n| n.mac),
            });
        }
    }
    for n in neighbours
        .iter()
        .filter(|n| n.ours && !nodes.contains(&n.ip))
    {
        ops.push(NeighOp::Forget {
            ip: n.ip,
            ifindex: n.ifindex,
        });
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::GatewayNodePlan;

    const MAC1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
    const MAC2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn neigh(addr: &str, ifindex: u32, mac: Option<[u8; 6]>, valid: bool, ours: bool) -> Neighbour {
        Neighbour {
            ip: ip(addr),
            ifindex,
            mac,
            valid,
            ours,
        }
    }

    #[test]
    fn keys_round_trip_and_pad_the_mac_with_zeros() {
        let o = Origin {
            pod: ip("198.19.1.10"),
            ifindex: 7,
            mac: MAC1,
        };
        let k = o.key();
        assert_eq!(&k[..4], &[198, 19, 1, 10]);
        assert_eq!(&k[4..8], &7u32.to_ne_bytes());
        assert_eq!(&k[8..], &[0x02, 0, 0, 0, 0, 0x11, 0, 0]);
        assert_eq!(Origin::from_key(&k), Some(o));
        let mut bad = k;
        bad[15] = 1;
        assert_eq!(Origin::from_key(&bad), None);
        assert_eq!(Origin::from_key(&k[..12]), None);
    }

    #[test]
    fn origin_nodes_are_the_nodes_of_snated_pods_of_other_nodes() {
        let mut p = NodePlan::empty("gw");
        p.gateways.insert(
            "a".into(),
            GatewayNodePlan {
                origins: [
                    (
                        "198.19.1.10".parse().unwrap(),
                        "198.18.0.11".parse().unwrap(),
                    ),
                    (
                        "198.19.1.11".parse().unwrap(),
                        "198.18.0.11".parse().unwrap(),
                    ),
                    (
                        "2001:db8::1".parse().unwrap(),
                        "2001:db8::11".parse().unwrap(),
                    ),
                ]
                .into(),
                ..Default::default()
            },
        );
        p.gateways.insert(
            "b".into(),
            GatewayNodePlan {
                origins: [(
                    "198.19.3.10".parse().unwrap(),
                    "198.18.0.13".parse().unwrap(),
                )]
                .into(),
                ..Default::default()
            },
        );
        assert_eq!(
            origin_nodes(&p),
            [ip("198.18.0.11"), ip("198.18.0.13")].into()
        );
    }

    #[test]
    fn only_valid_entries_with_a_mac_locate_a_node_ours_first() {
        let nodes = [ip("198.18.0.11"), ip("198.18.0.12"), ip("198.18.0.13")].into();
        let table = [
            neigh("198.18.0.11", 5, Some(MAC2), true, false),
            neigh("198.18.0.11", 3, Some(MAC1), true, true),
            neigh("198.18.0.12", 3, Some(MAC2), false, false), // FAILED or INCOMPLETE
            neigh("198.18.0.13", 3, None, true, true),         // NOARP: no address
            neigh("198.18.0.99", 3, Some(MAC2), true, false),  // not a node we need
        ];
        let links = node_links(&nodes, &table);
        assert_eq!(
            links,
            [(
                ip("198.18.0.11"),
                NodeLink {
                    ifindex: 3,
                    mac: MAC1
                }
            )]
            .into()
        );
    }

    #[test]
    fn nodes_get_a_managed_entry_once_and_ours_go_when_unneeded() {
        let nodes: BTreeSet<Ipv4Addr> =
            [ip("198.18.0.11"), ip("198.18.0.12"), ip("198.18.0.13")].into();
        let table = [
            neigh("198.18.0.11", 3, Some(MAC1), true, true), // already ours: nothing
            neigh("198.18.0.12", 4, Some(MAC2), true, false), // learned: keep its MAC
            neigh("198.18.0.20", 3, Some(MAC2), true, true), // ours, no longer needed
            neigh("198.18.0.21", 3, Some(MAC2), true, false), // not ours: left alone
        ];
        let toward = |i: Ipv4Addr| (i == ip("198.18.0.13")).then_some(3);
        assert_eq!(
            neighbour_ops(&nodes, &table, toward),
            vec![
                NeighOp::Manage {
                    ip: ip("198.18.0.12"),
                    ifindex: 4,
                    mac: Some(MAC2)
                },
                NeighOp::Manage {
                    ip: ip("198.18.0.13"),
                    ifindex: 3,
                    mac: None
                },
                NeighOp::Forget {
                    ip: ip("198.18.0.20"),
                    ifindex: 3
                },
            ]
        );
        let off_subnet = [ip("203.0.113.9")].into();
        assert!(neighbour_ops(&off_subnet, &[], |_| None).is_empty());
    }
}
