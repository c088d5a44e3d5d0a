//! The plan turned into the kernel state it asks for (pure).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use super::config::{DataplaneConfig, OWNED_TABLE_FLAGS};
use super::names::{GatewayId, SetName, assign_gateway_ids};
use super::nft_model::{IpRange, NftSet, NftState, RuleSpec, SetContent, merge_ranges, our_chains};
use super::origins::{NodeLink, Origin};
use crate::plan::NodePlan;

/// What the node's kernel must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredNode {
    /// Our table, or `None` when the node has nothing to do (no table at all).
    pub nft: Option<NftState>,
    /// Egress IPs to hold as /32, and the interface of each.
    pub addresses: BTreeMap<Ipv4Addr, String>,
    /// Next hop -> slot (mark value and routing table).
    pub slots: BTreeMap<Ipv4Addr, u32>,
    /// IPv6 entries of the plan this IPv4 dataplane skipped.
    pub ipv6_ignored: usize,
}

/// A mark value as an element of the `marks` set: the 4 bytes the kernel compares with the
/// mark register (host order), carried in the address type our sets use.
pub fn mark_key(mark: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes(mark.to_ne_bytes()))
}

/// An interface index as an element of the `node_ifs` set (the 4 bytes `meta iif` loads,
/// host order), carried in the address type our sets use.
pub fn ifindex_key(ifindex: u32) -> Ipv4Addr {
    mark_key(ifindex)
}

/// The IPv4 next hops the plan steers to.
pub fn wanted_next_hops(plan: &NodePlan) -> BTreeSet<Ipv4Addr> {
    plan.gateways
        .values()
        .flat_map(|g| g.steer.keys())
        .filter_map(|ip| v4(*ip))
        .collect()
}

/// The IPv4 egress IPs the plan puts on this node, with their interface.
pub fn wanted_addresses(plan: &NodePlan) -> BTreeMap<Ipv4Addr, String> {
    plan.hosted
        .iter()
        .filter_map(|(ip, h)| Some((v4(*ip)?, h.interface.clone())))
        .collect()
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

struct V4Filter {
    ignored: usize,
}

impl V4Filter {
    fn addrs<'a>(&mut self, ips: impl IntoIterator<Item = &'a IpAddr>) -> BTreeSet<Ipv4Addr> {
        // collect() bulk-builds the tree from the (already sorted) input
        let mut ignored = 0;
        let out = ips
            .into_iter()
            .filter_map(|ip| {
                let v = v4(*ip);
                ignored += usize::from(v.is_none());
                v
            })
            .collect();
        self.ignored += ignored;
        out
    }

    fn ranges<'a>(&mut self, nets: impl IntoIterator<Item = &'a IpNetwork>) -> BTreeSet<IpRange> {
        let mut v = Vec::new();
        for net in nets {
            match net {
                IpNetwork::V4(n) => v.push(IpRange::of(*n)),
                IpNetwork::V6(_) => self.ignored += 1,
            }
        }
        merge_ranges(v)
    }
}

/// The desired kernel state for `plan`, with next hops on the given `slots`
/// (see [`super::slots::allocate_slots`]). A next hop this dataplane cannot steer to (IPv6,
/// or missing from `slots`) is never skipped: its pods are blocked, and the rest of the plan
/// applies. An egress IP in `refused` (the node holds it, not added by us: see
/// [`super::ownership::foreign_conflicts`]) is not hosted, recorded nor guarded here, and the
/// pods the plan SNATs to it are blocked instead (fail closed).
///
/// Anti-spoofing: a pod of another node ([`crate::plan::GatewayNodePlan::origins`]) is SNATed
/// only from its node's entry in `links` (interface and MAC, see [`super::origins`]); while its
/// node has none, the pod is blocked (fail closed). Every SNAT set gets the two `spoof` rules.
pub fn desired(
    plan: &NodePlan,
    cfg: &DataplaneConfig,
    slots: &BTreeMap<Ipv4Addr, u32>,
    refused: &BTreeSet<Ipv4Addr>,
    links: &BTreeMap<Ipv4Addr, NodeLink>,
) -> DesiredNode {
    let mut f = V4Filter { ignored: 0 };
    let mut addresses = BTreeMap::new();
    for (ip, hosted) in &plan.hosted {
        match v4(*ip) {
            Some(v) if refused.contains(&v) => {}
            Some(v) => {
                addresses.insert(v, hosted.interface.clone());
            }
            None => f.ignored += 1,
        }
    }
    let active: Vec<(&String, _)> = plan
        .gateways
        .iter()
        .filter(|(_, g)| !g.is_empty())
        .collect();
    let remote = f.ranges(&plan.remote_pod_ranges);
    if addresses.is_empty() && active.is_empty() {
        return DesiredNode {
            ipv6_ignored: f.ignored,
            ..DesiredNode::default()
        };
    }

    let ids = assign_gateway_ids(active.iter().map(|(n, _)| n.as_str()));
    let mut st = NftState {
        flags: if cfg.own_table { OWNED_TABLE_FLAGS } else { 0 },
        chains: our_chains(),
        ..NftState::default()
    };
    let set = |st: &mut NftState, name: SetName, comment: Option<String>, content: SetContent| {
        st.sets
            .insert(name.to_string(), NftSet { comment, content });
    };
    set(
        &mut st,
        SetName::Hosted,
        None,
        SetContent::Addrs(addresses.keys().copied().collect()),
    );
    st.rules.insert(RuleSpec::Guard, None);

    let guard_remote = !remote.is_empty() && active.iter().any(|(_, g)| g.guard_remote);
    if guard_remote {
        set(
            &mut st,
            SetName::RemotePods,
            None,
            SetContent::Ranges(remote),
        );
    }
    let mut used_slots = BTreeMap::new();
    let mut origins: BTreeSet<Origin> = BTreeSet::new();
    let mut node_ifs: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut snats = false;
    for (name, g) in active {
        let gid: GatewayId = ids[name.as_str()].clone();
        set(
            &mut st,
            SetName::Dst(gid.clone()),
            Some(name.clone()),
            SetContent::Ranges(f.ranges(&g.destinations)),
        );
        set(
            &mut st,
            SetName::Excl(gid.clone()),
            None,
            SetContent::Ranges(f.ranges(g.excluded.iter().chain(&plan.internal_exclusions))),
        );
        let mut blocked: BTreeSet<Ipv4Addr> = f.addrs(&g.blocked);
        for (egress, pods) in &g.snat {
            let Some(egress_ip) = v4(*egress) else {
                f.ignored += 1;
                continue;
            };
            let mut pods = f.addrs(pods);
            if refused.contains(&egress_ip) {
                blocked.extend(pods);
                continue;
            }
            if !g.origins.is_empty() {
                pods.retain(|pod| {
                    let Some(node) = g.origins.get(&IpAddr::V4(*pod)) else {
                        return true; // this node's own pod: checked by its route back
                    };
                    match v4(*node).and_then(|n| links.get(&n)) {
                        Some(l) => {
                            origins.insert(Origin {
                                pod: *pod,
                                ifindex: l.ifindex,
                                mac: l.mac,
                            });
                            node_ifs.insert(ifindex_key(l.ifindex));
                            true
                        }
                        None => {
                            // where its packets must come from is unknown yet: fail closed
                            blocked.insert(*pod);
                            false
                        }
                    }
                });
            }
            snats = true;
            set(
                &mut st,
                SetName::Snat(gid.clone(), egress_ip),
                None,
                SetContent::Addrs(pods),
            );
            st.rules.insert(
                RuleSpec::Snat {
                    gid: gid.clone(),
                    egress_ip,
                },
                None,
            );
            st.rules.insert(
                RuleSpec::Account {
                    gid: gid.clone(),
                    egress_ip,
                },
                None,
            );
            for spoof in [
                RuleSpec::SpoofRoute {
                    gid: gid.clone(),
                    egress_ip,
                },
                RuleSpec::SpoofNode {
                    gid: gid.clone(),
                    egress_ip,
                },
            ] {
                st.rules.insert(spoof, None);
            }
        }
        for (nh, pods) in &g.steer {
            let slot = v4(*nh).and_then(|n| Some((n, *slots.get(&n)?)));
            let Some((next_hop, slot)) = slot else {
                // No way there from this node: fail closed.
                blocked.extend(f.addrs(pods));
                continue;
            };
            used_slots.insert(next_hop, slot);
            let pods = f.addrs(pods);
            set(
                &mut st,
                SetName::Via(gid.clone(), next_hop),
                None,
                SetContent::Addrs(pods),
            );
            let (mark, mask) = (cfg.slot_mark(slot), cfg.mark_mask);
            st.rules.insert(
                RuleSpec::Steer {
                    gid: gid.clone(),
                    next_hop,
                    mark,
                    mask,
                },
                None,
            );
        }
        if !blocked.is_empty() {
            set(
                &mut st,
                SetName::Blocked(gid.clone()),
                None,
                SetContent::Addrs(blocked),
            );
            st.rules.insert(RuleSpec::Block { gid: gid.clone() }, None);
        }
        if guard_remote && g.guard_remote {
            st.rules.insert(
                RuleSpec::LeakRemote {
                    gid: gid.clone(),
                    mask: cfg.mark_mask,
                },
                None,
            );
        }
        if !g.guard.is_empty() || (guard_remote && g.guard_remote) {
            set(
                &mut st,
                SetName::Guard(gid.clone()),
                None,
                SetContent::Addrs(f.addrs(&g.guard)),
            );
            set(
                &mut st,
                SetName::Egress(gid.clone()),
                None,
                SetContent::Addrs(f.addrs(&g.egress_ips)),
            );
            st.rules.insert(
                RuleSpec::Leak {
                    gid: gid.clone(),
                    mask: cfg.mark_mask,
                },
                None,
            );
        }
    }
    // Each slot's exact mark: identity SNAT of what it steers, and the set the no-leak rule
    // tells steered packets by.
    for slot in used_slots.values() {
        st.rules.insert(
            RuleSpec::MarkSnat {
                mark: cfg.slot_mark(*slot),
                mask: cfg.mark_mask,
            },
            None,
        );
    }
    if snats {
        set(
            &mut st,
            SetName::Origins,
            None,
            SetContent::Origins(origins),
        );
        set(&mut st, SetName::NodeIfs, None, SetContent::Addrs(node_ifs));
    }
    set(
        &mut st,
        SetName::Marks,
        None,
        SetContent::Addrs(
            used_slots
                .values()
                .map(|s| mark_key(cfg.slot_mark(*s)))
                .collect(),
        ),
    );
    DesiredNode {
        nft: Some(st),
        addresses,
        slots: used_slots,
        ipv6_ignored: f.ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{GatewayNodePlan, HostedIp};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn plan() -> NodePlan {
        let mut p = NodePlan::empty("node-b");
        p.hosted.insert(
            ip("198.18.0.200"),
            HostedIp {
                gateway: "gw".into(),
                interface: "eth0".into(),
            },
        );
        let g = GatewayNodePlan {
            destinations: vec![
                "203.0.113.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            excluded: vec!["203.0.113.128/25".parse().unwrap()],
            snat: BTreeMap::from([(
                ip("198.18.0.200"),
                BTreeSet::from([ip("198.19.1.10"), ip("198.19.2.10")]),
            )]),
            origins: BTreeMap::from([(ip("198.19.1.10"), ip("198.18.0.11"))]),
            steer: BTreeMap::from([(ip("198.18.0.13"), BTreeSet::from([ip("198.19.2.11")]))]),
            blocked: BTreeSet::new(),
            guard: BTreeSet::from([ip("198.19.1.10"), ip("198.19.2.10"), ip("198.19.2.11")]),
            egress_ips: vec![ip("198.18.0.200"), ip("198.18.0.201")],
            guard_remote: false,
        };
        p.gateways.insert("gw".into(), g);
        p
    }

    const NODE1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

    /// Node 198.18.0.11 (the origin of pod 198.19.1.10 in [`plan`]) is reached on link 3.
    fn links() -> BTreeMap<Ipv4Addr, NodeLink> {
        BTreeMap::from([(
            "198.18.0.11".parse().unwrap(),
            NodeLink {
                ifindex: 3,
                mac: NODE1_MAC,
            },
        )])
    }

    #[test]
    fn the_snat_members_read_back_are_the_plans() {
        let d = desired(
            &plan(),
            &DataplaneConfig::default(),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &links(),
        );
        let e: Ipv4Addr = "198.18.0.200".parse().unwrap();
        let pods = BTreeSet::from([
            "198.19.1.10".parse().unwrap(),
            "198.19.2.10".parse().unwrap(),
        ]);
        assert_eq!(
            d.nft.unwrap().snat_members(),
            BTreeMap::from([("gw".to_string(), BTreeMap::from([(e, pods)]))])
        );
    }

    #[test]
    fn empty_plan_wants_no_table() {
        let d = desired(
            &NodePlan::empty("n"),
            &DataplaneConfig::default(),
            &BTreeMap::new(),
            &BTreeSet::new(),
            &BTreeMap::new(),
        );
        assert_eq!(d, DesiredNode::default());
    }

    #[test]
    fn gateway_plan_becomes_sets_and_rules() {
        let cfg = DataplaneConfig::default();
        let slots = BTreeMap::from([("198.18.0.13".parse().unwrap(), 2)]);
        let d = desired(&plan(), &cfg, &slots, &BTreeSet::new(), &links());
        let st = d.nft.unwrap();
        let gid = GatewayId::derive("gw", 0);
        let e: Ipv4Addr = "198.18.0.200".parse().unwrap();
        let nh: Ipv4Addr = "198.18.0.13".parse().unwrap();
        assert_eq!(st.gateway_name(&gid), Some("gw"));
        assert_eq!(st.addrs(&SetName::Snat(gid.clone(), e)).unwrap().len(), 2);
        assert_eq!(st.addrs(&SetName::Via(gid.clone(), nh)).unwrap().len(), 1);
        assert_eq!(st.ranges(&SetName::Dst(gid.clone())).unwrap().len(), 1);
        assert_eq!(st.hosted(), BTreeSet::from([e]));
        assert!(st.rules.contains_key(&RuleSpec::Snat {
            gid: gid.clone(),
            egress_ip: e
        }));
        assert!(st.rules.contains_key(&RuleSpec::Steer {
            gid: gid.clone(),
            next_hop: nh,
            mark: cfg.slot_mark(2),
            mask: cfg.mark_mask
        }));
        assert!(
            !st.sets
                .contains_key(&SetName::Blocked(gid.clone()).to_string())
        );
        assert_eq!(d.addresses[&e], "eth0");
        assert_eq!(d.slots[&nh], 2);
        assert_eq!(d.ipv6_ignored, 1);
        assert_eq!(wanted_next_hops(&plan()), BTreeSet::from([nh]));
        assert_eq!(st.addrs(&SetName::Guard(gid.clone())).unwrap().len(), 3);
        assert_eq!(st.addrs(&SetName::Egress(gid.clone())).unwrap().len(), 2);
        assert!(st.rules.contains_key(&RuleSpec::Leak {
            gid: gid.clone(),
            mask: cfg.mark_mask
        }));
    }

    #[test]
    fn cluster_internal_ranges_join_every_gateways_exclusions() {
        let cfg = DataplaneConfig::default();
        let mut p = plan();
        p.gateways.get_mut("gw").unwrap().destinations = vec!["0.0.0.0/0".parse().unwrap()];
        p.internal_exclusions = vec![
            "198.19.0.0/16".parse().unwrap(),
            "198.18.0.11/32".parse().unwrap(),
        ];
        let st = desired(&p, &cfg, &BTreeMap::new(), &BTreeSet::new(), &links())
            .nft
            .unwrap();
        let excl = st
            .ranges(&SetName::Excl(GatewayId::derive("gw", 0)))
            .unwrap();
        let has = |ip: &str| crate::dataplane::nft_model::ranges_contain(excl, ip.parse().unwrap());
        // the gateway's own exclusion, a pod range and a node address are left alone
        assert!(has("203.0.113.200") && has("198.19.3.7") && has("198.18.0.11"));
        // everything else leaving the cluster is the gateway's
        assert!(!has("198.18.0.12") && !has("203.0.113.10") && !has("198.51.100.10"));
    }

    #[test]
    fn a_next_hop_without_a_slot_or_in_ipv6_blocks_its_pods_and_the_rest_applies() {
        let cfg = DataplaneConfig::default();
        let mut p = plan();
        let g = p.gateways.get_mut("gw").unwrap();
        g.steer
            .insert(ip("2001:db8::13"), BTreeSet::from([ip("198.19.2.12")]));
        // no slot for 198.18.0.13 either
        let d = desired(&p, &cfg, &BTreeMap::new(), &BTreeSet::new(), &links());
        let st = d.nft.unwrap();
        let gid = GatewayId::derive("gw", 0);
        assert_eq!(
            st.addrs(&SetName::Blocked(gid.clone())).unwrap(),
            &BTreeSet::from([
                "198.19.2.11".parse().unwrap(),
                "198.19.2.12".parse().unwrap()
            ])
        );
        assert!(st.rules.contains_key(&RuleSpec::Block { gid: gid.clone() }));
        // the SNAT part still applies
        let e: Ipv4Addr = "198.18.0.200".parse().unwrap();
        assert_eq!(st.addrs(&SetName::Snat(gid, e)).unwrap().len(), 2);
        assert!(d.slots.is_empty());
    }

    #[test]
    fn a_refused_egress_ip_is_neither_held_nor_recorded_and_its_pods_are_blocked() {
        let cfg = DataplaneConfig::default();
        let e: Ipv4Addr = "198.18.0.200".parse().unwrap();
        let d = desired(
            &plan(),
            &cfg,
            &BTreeMap::new(),
            &BTreeSet::from([e]),
            &links(),
        );
        assert!(d.addresses.is_empty());
        let st = d.nft.unwrap();
        let gid = GatewayId::derive("gw", 0);
        assert!(
            st.hosted().is_empty(),
            "a foreign address is never recorded as ours"
        );
        assert!(st.addrs(&SetName::Snat(gid.clone(), e)).is_none());
        assert!(!st.rules.contains_key(&RuleSpec::Snat {
            gid: gid.clone(),
            egress_ip: e
        }));
        // the pods it would have SNATed are dropped, not let out with another source
        let blocked = st.addrs(&SetName::Blocked(gid.clone())).unwrap();
        assert!(blocked.contains(&"198.19.1.10".parse().unwrap()));
        assert!(blocked.contains(&"198.19.2.10".parse().unwrap()));
        assert!(st.rules.contains_key(&RuleSpec::Block { gid }));
    }

    #[test]
    fn other_nodes_pods_are_snated_only_from_their_node_and_blocked_while_it_is_unknown() {
        let cfg = DataplaneConfig::default();
        let gid = GatewayId::derive("gw", 0);
        let e: Ipv4Addr = "198.18.0.200".parse().unwrap();
        let pod1: Ipv4Addr = "198.19.1.10".parse().unwrap();
        let local: Ipv4Addr = "198.19.2.10".parse().unwrap();

        let st = desired(&plan(), &cfg, &BTreeMap::new(), &BTreeSet::new(), &links())
            .nft
            .unwrap();
        assert_eq!(
            st.sets[&SetName::Origins.to_string()].content,
            SetContent::Origins(BTreeSet::from([Origin {
                pod: pod1,
                ifindex: 3,
                mac: NODE1_MAC
            }])),
            "pod . interface toward its node . its node's MAC"
        );
        assert_eq!(
            st.addrs(&SetName::NodeIfs).unwrap(),
            &BTreeSet::from([ifindex_key(3)])
        );
        assert_eq!(
            st.addrs(&SetName::Snat(gid.clone(), e)).unwrap(),
            &BTreeSet::from([pod1, local])
        );
        for rule in [
            RuleSpec::SpoofRoute {
                gid: gid.clone(),
                egress_ip: e,
            },
            RuleSpec::SpoofNode {
                gid: gid.clone(),
                egress_ip: e,
            },
        ] {
            assert_eq!(rule.source_set(), SetName::Snat(gid.clone(), e));
            assert!(st.rules.contains_key(&rule), "{rule:?}");
        }

        // the node's MAC is not known yet: its pod is dropped, the local pod still SNATed
        let st = desired(
            &plan(),
            &cfg,
            &BTreeMap::new(),
            &BTreeSet::new(),
            &BTreeMap::new(),
        )
        .nft
        .unwrap();
        assert_eq!(
            st.addrs(&SetName::Snat(gid.clone(), e)).unwrap(),
            &BTreeSet::from([local])
        );
        let blocked = st.addrs(&SetName::Blocked(gid.clone())).unwrap();
        assert!(blocked.contains(&pod1) && !blocked.contains(&local));
        assert!(st.rules.contains_key(&RuleSpec::Block { gid }));
        assert!(st.sets[&SetName::Origins.to_string()].content.is_empty());
    }

    #[test]
    fn a_node_without_snat_has_no_anti_spoofing_sets() {
        let cfg = DataplaneConfig::default();
        let mut p = plan();
        p.hosted.clear();
        p.gateways.get_mut("gw").unwrap().snat.clear();
        let st = desired(&p, &cfg, &BTreeMap::new(), &BTreeSet::new(), &links())
            .nft
            .unwrap();
        assert!(!st.sets.contains_key(&SetName::Origins.to_string()));
        assert!(!st.sets.contains_key(&SetName::NodeIfs.to_string()));
        assert!(
            !st.rules
                .keys()
                .any(|r| matches!(r, RuleSpec::SpoofRoute { .. } | RuleSpec::SpoofNode { .. }))
        );
    }
}
