//! Which conntrack entries a change makes stale (pure).
//!
//! A flow keeps the NAT binding it got on its first packet. When a pod's role for a gateway
//! on this node changes or ends (stops being SNATed here, is steered to another next hop,
//! becomes blocked, leaves the gateway), its entries towards that gateway's destinations are
//! deleted so the next packet is classified afresh. When an egress IP leaves the node, every
//! entry NATed to it goes. A newly selected pod's existing flows are left alone: they keep
//! their old path until they end, and no conntrack dump (which walks the whole, global
//! conntrack hash) is paid for every pod that starts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::names::{GatewayId, SetName};
use super::nft_model::{IpRange, NftState, ranges_contain};

type Scope = (BTreeSet<IpRange>, BTreeSet<IpRange>);

fn scope(st: &NftState, gid: &GatewayId) -> Scope {
    (
        st.ranges(&SetName::Dst(gid.clone()))
            .cloned()
            .unwrap_or_default(),
        st.ranges(&SetName::Excl(gid.clone()))
            .cloned()
            .unwrap_or_default(),
    )
}

/// Selects the conntrack entries to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtSelector {
    /// Pod -> destination scopes (networks, minus exclusions) whose flows are stale.
    pods: BTreeMap<Ipv4Addr, Vec<Scope>>,
    /// Egress IPs that left the node: entries NATed to them are stale.
    nat_to: BTreeSet<Ipv4Addr>,
}

impl CtSelector {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.nat_to.is_empty()
    }

    /// Pods whose flows are affected (for logs).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Whether the entry with this original source/destination and reply destination (the
    /// address replies go to: the SNAT address for NATed flows) is stale.
    pub fn matches(&self, orig_src: Ipv4Addr, orig_dst: Ipv4Addr, reply_dst: Ipv4Addr) -> bool {
        if self.nat_to.contains(&reply_dst) && reply_dst != orig_src {
            return true;
        }
        self.pods.get(&orig_src).is_some_and(|scopes| {
            scopes
                .iter()
                .any(|(dst, excl)| ranges_contain(dst, orig_dst) && !ranges_contain(excl, orig_dst))
        })
    }
}

/// The stale entries when the table goes from `old` to `new` (`None` = no table).
///
/// A pod's role for a gateway is the one pod set of that gateway (`_snat_E`, `_via_NH`,
/// `_blocked`) holding it, so a role that changed or ended is exactly a pod missing from the
/// same-named set in `new`: one ordered difference per set, no per-pod bookkeeping.
pub fn select_stale(old: Option<&NftState>, new: Option<&NftState>) -> CtSelector {
    let empty = NftState::default();
    let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let mut sel = CtSelector::default();
    for (name, set) in &old.sets {
        let gid = match name.parse::<SetName>() {
            Ok(SetName::Snat(g, _) | SetName::Via(g, _) | SetName::Blocked(g)) => g,
            _ => continue,
        };
        let Some(before) = set.content.addrs() else {
            continue;
        };
        let after = new.sets.get(name).and_then(|s| s.content.addrs());
        let gone: Vec<Ipv4Addr> = match after {
            Some(a) => before.difference(a).copied().collect(),
            None => before.iter().copied().collect(),
        };
        if gone.is_empty() {
            continue;
        }
        let scopes = [scope(old, &gid), scope(new, &gid)];
        for pod in gone {
            let entry = sel.pods.entry(pod).or_default();
            for sc in &scopes {
                if !sc.0.is_empty() && !entry.contains(sc) {
                    entry.push(sc.clone());
                }
            }
        }
    }
    sel.nat_to = old.hosted().difference(&new.hosted()).copied().collect();
    sel
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::nft_model::{NftSet, SetContent};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn st(hosted: &[&str], snat: &[(&str, &[&str])], via: &[(&str, &[&str])]) -> NftState {
        let g = GatewayId::derive("gw", 0);
        let mut s = NftState::default();
        let addrs = |v: &[&str]| SetContent::Addrs(v.iter().map(|x| ip(x)).collect());
        s.sets.insert(
            SetName::Hosted.to_string(),
            NftSet {
                comment: None,
                content: addrs(hosted),
            },
        );
        s.sets.insert(
            SetName::Dst(g.clone()).to_string(),
            NftSet {
                comment: Some("gw".into()),
                content: SetContent::Ranges(
                    [IpRange::of("203.0.113.0/24".parse().unwrap())].into(),
                ),
            },
        );
        s.sets.insert(
            SetName::Excl(g.clone()).to_string(),
            NftSet {
                comment: None,
                content: SetContent::Ranges(
                    [IpRange::of("203.0.113.128/25".parse().unwrap())].into(),
                ),
            },
        );
        for (e, pods) in snat {
            s.sets.insert(
                SetName::Snat(g.clone(), ip(e)).to_string(),
                NftSet {
                    comment: None,
                    content: addrs(pods),
                },
            );
        }
        for (nh, pods) in via {
            s.sets.insert(
                SetName::Via(g.clone(), ip(nh)).to_string(),
                NftSet {
                    comment: None,
                    content: addrs(pods),
                },
            );
        }
        s
    }

    #[test]
    fn unchanged_roles_select_nothing() {
        let a = st(
            &["198.18.0.200"],
            &[("198.18.0.200", &["198.19.1.10"])],
            &[],
        );
        assert!(select_stale(Some(&a), Some(&a)).is_empty());
    }

    #[test]
    fn moved_next_hop_selects_the_pod_towards_destinations_only() {
        let a = st(
            &[],
            &[],
            &[("198.18.0.12", &["198.19.1.10", "198.19.1.11"])],
        );
        let b = st(
            &[],
            &[],
            &[
                ("198.18.0.12", &["198.19.1.11"]),
                ("198.18.0.13", &["198.19.1.10"]),
            ],
        );
        let sel = select_stale(Some(&a), Some(&b));
        assert_eq!(sel.pod_count(), 1);
        let (pod, other) = (ip("198.19.1.10"), ip("198.19.1.11"));
        assert!(sel.matches(pod, ip("203.0.113.10"), pod));
        assert!(
            !sel.matches(pod, ip("203.0.113.200"), pod),
            "excluded destination"
        );
        assert!(
            !sel.matches(pod, ip("198.51.100.10"), ip("198.18.0.12")),
            "other destination"
        );
        assert!(!sel.matches(other, ip("203.0.113.10"), other));
    }

    #[test]
    fn newly_selected_pods_keep_their_flows() {
        let a = st(&[], &[], &[("198.18.0.12", &["198.19.1.10"])]);
        let b = st(
            &[],
            &[],
            &[("198.18.0.12", &["198.19.1.10", "198.19.1.11"])],
        );
        assert!(select_stale(Some(&a), Some(&b)).is_empty());
        assert!(select_stale(None, Some(&b)).is_empty());
        assert_eq!(
            select_stale(Some(&b), Some(&a)).pod_count(),
            1,
            "a pod that leaves is selected"
        );
    }

    #[test]
    fn leaving_egress_ip_selects_everything_natted_to_it() {
        let a = st(
            &["198.18.0.200"],
            &[("198.18.0.200", &["198.19.1.10"])],
            &[],
        );
        let sel = select_stale(Some(&a), None);
        let e = ip("198.18.0.200");
        assert!(sel.matches(ip("198.19.3.7"), ip("198.51.100.1"), e));
        assert!(sel.matches(ip("198.19.1.10"), ip("203.0.113.10"), e));
        // traffic addressed to the node itself is not "NATed to" it
        assert!(!sel.matches(e, ip("198.18.0.1"), e));
    }
}
