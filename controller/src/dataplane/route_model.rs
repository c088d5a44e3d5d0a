//! Addresses, policy rules and routes: what the kernel holds, what we want, the steps
//! between (pure).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::config::{ADDRESS_PROTO, DataplaneConfig};

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
}

/// An IPv4 address on an interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddrEntry {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub link: u32,
    /// `IFA_PROTO`, when the kernel reports one.
    pub proto: Option<u8>,
}

/// An IPv4 policy-routing rule (only the fields we use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleEntry {
    pub priority: u32,
    pub mark: u32,
    pub mask: u32,
    pub table: u32,
}

/// An IPv4 route in one of our tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteEntry {
    pub table: u32,
    pub dst: Ipv4Addr,
    pub dst_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl RouteEntry {
    /// `default via <nh> table <table>`.
    pub fn default_via(table: u32, nh: Ipv4Addr) -> Self {
        Self {
            table,
            dst: Ipv4Addr::UNSPECIFIED,
            dst_len: 0,
            gateway: Some(nh),
        }
    }
}

/// The routing side of the node as read from the kernel (rules and routes already cut down
/// to the ones in our priority / tables).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingState {
    pub links: Vec<Link>,
    pub addresses: Vec<AddrEntry>,
    pub rules: Vec<RuleEntry>,
    pub routes: Vec<RouteEntry>,
}

impl RoutingState {
    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    /// Next hop -> slot, recovered from the default routes in our tables.
    pub fn slots(&self, cfg: &DataplaneConfig) -> BTreeMap<Ipv4Addr, u32> {
        self.routes
            .iter()
            .filter(|r| r.dst_len == 0)
            .filter_map(|r| Some((r.gateway?, cfg.table_slot(r.table)?)))
            .collect()
    }

    /// Every slot with any rule or route of ours.
    /// Whether `nh` lies in a subnet configured on one of the node's interfaces (a next hop a
    /// `default via` route can use).
    pub fn on_link(&self, nh: Ipv4Addr) -> bool {
        self.addresses.iter().any(|a| {
            a.prefix < 32
                && ipnetwork::Ipv4Network::new(a.ip, a.prefix).is_ok_and(|n| n.contains(nh))
        })
    }

    pub fn busy_slots(&self, cfg: &DataplaneConfig) -> BTreeSet<u32> {
        self.routes
            .iter()
            .map(|r| r.table)
            .chain(self.rules.iter().map(|r| r.table))
            .filter_map(|t| cfg.table_slot(t))
            .collect()
    }

    /// The addresses that are ours: recorded as hosted in our table, or carrying our
    /// `IFA_PROTO` marker. Only /32s qualify.
    pub fn owned_addresses(&self, recorded: &BTreeSet<Ipv4Addr>) -> Vec<&AddrEntry> {
        self.addresses
            .iter()
            .filter(|a| {
                a.prefix == 32 && (recorded.contains(&a.ip) || a.proto == Some(ADDRESS_PROTO))
            })
            .collect()
    }
}

/// One rtnetlink change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtOp {
    AddAddress {
        ip: Ipv4Addr,
        link: u32,
        ifname: String,
    },
    DelAddress {
        ip: Ipv4Addr,
        prefix: u8,
        link: u32,
        ifname: String,
    },
    ReplaceRoute(RouteEntry),
    DelRoute(RouteEntry),
    AddRule(RuleEntry),
    DelRule(RuleEntry),
}

/// The rtnetlink steps of one apply, in the phases the engine runs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingPlan {
    /// Before the nftables transaction: addresses we stop hosting (the address goes before
    /// its guard and SNAT), routes and rules of new or changed next hops (they exist before
    /// any packet carries their mark).
    pub before_nft: Vec<RtOp>,
    /// After the transaction: new addresses (their guard is in place by then).
    pub add_addresses: Vec<RtOp>,
    /// Last: rules and routes nobody marks for any more.
    pub after_nft: Vec<RtOp>,
}

impl RoutingPlan {
    pub fn is_empty(&self) -> bool {
        self.before_nft.is_empty() && self.add_addresses.is_empty() && self.after_nft.is_empty()
    }
}

/// An interface named by the plan that does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingInterface {
    pub ip: Ipv4Addr,
    pub interface: String,
}

/// The steps from `observed` to the wanted addresses (IP -> interface) and next-hop slots.
/// `recorded` is the hosted record read from our table.
pub fn plan_routing(
    observed: &RoutingState,
    recorded: &BTreeSet<Ipv4Addr>,
    addresses: &BTreeMap<Ipv4Addr, String>,
    slots: &BTreeMap<Ipv4Addr, u32>,
    cfg: &DataplaneConfig,
) -> Result<RoutingPlan, MissingInterface> {
    let mut p = RoutingPlan::default();
    let ifname = |idx: u32| {
        observed
            .link_by_index(idx)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("#{idx}"))
    };

    // Addresses we hold but should not (gone, or on another interface).
    let owned = observed.owned_addresses(recorded);
    for a in &owned {
        let keep = addresses.get(&a.ip).is_some_and(|want| {
            observed
                .link_by_name(want)
                .is_some_and(|l| l.index == a.link)
        });
        if !keep {
            p.before_nft.push(RtOp::DelAddress {
                ip: a.ip,
                prefix: a.prefix,
                link: a.link,
                ifname: ifname(a.link),
            });
        }
    }
    for (ip, want) in addresses {
        let link = observed
            .link_by_name(want)
            .ok_or_else(|| MissingInterface {
                ip: *ip,
                interface: want.clone(),
            })?;
        let present = observed
            .addresses
            .iter()
            .any(|a| a.ip == *ip && a.prefix == 32 && a.link == link.index);
        if !present {
            p.add_addresses.push(RtOp::AddAddress {
                ip: *ip,
                link: link.index,
                ifname: link.name.clone(),
            });
        }
    }

    // Routes and rules of the next-hop slots.
    let want_routes: BTreeSet<RouteEntry> = slots
        .iter()
        .map(|(nh, slot)| RouteEntry::default_via(cfg.slot_table(*slot), *nh))
        .collect();
    let want_rules: BTreeSet<RuleEntry> = slots
        .values()
        .map(|slot| RuleEntry {
            priority: cfg.rule_priority,
            mark: cfg.slot_mark(*slot),
            mask: cfg.mark_mask,
            table: cfg.slot_table(*slot),
        })
        .collect();
    for r in &want_routes {
        if !observed.routes.contains(r) {
            p.before_nft.push(RtOp::ReplaceRoute(*r));
        }
    }
    for r in &want_rules {
        if !observed.rules.contains(r) {
            p.before_nft.push(RtOp::AddRule(*r));
        }
    }
    for r in &observed.rules {
        if cfg.table_slot(r.table).is_some()
            && r.priority == cfg.rule_priority
            && !want_rules.contains(r)
        {
            p.after_nft.push(RtOp::DelRule(*r));
        }
    }
    for r in &observed.routes {
        // a replaced default route is gone already; anything else in our tables goes
        let replaced = r.dst_len == 0 && want_routes.iter().any(|w| w.table == r.table);
        if cfg.table_slot(r.table).is_some() && !want_routes.contains(r) && !replaced {
            p.after_nft.push(RtOp::DelRoute(*r));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn state() -> RoutingState {
        RoutingState {
            links: vec![
                Link {
                    index: 1,
                    name: "lo".into(),
                    mac: None,
                },
                Link {
                    index: 2,
                    name: "eth0".into(),
                    mac: Some([2, 0, 0, 0, 0, 1]),
                },
                Link {
                    index: 3,
                    name: "eth1".into(),
                    mac: Some([2, 0, 0, 0, 0, 2]),
                },
            ],
            addresses: vec![
                AddrEntry {
                    ip: ip("198.18.0.12"),
                    prefix: 24,
                    link: 2,
                    proto: None,
                },
                AddrEntry {
                    ip: ip("198.18.0.200"),
                    prefix: 32,
                    link: 2,
                    proto: None,
                },
                // someone else's /32: not recorded, no marker
                AddrEntry {
                    ip: ip("198.18.0.240"),
                    prefix: 32,
                    link: 2,
                    proto: None,
                },
            ],
            rules: vec![],
            routes: vec![],
        }
    }

    #[test]
    fn owned_addresses_come_from_the_record_or_the_marker() {
        let mut st = state();
        st.addresses.push(AddrEntry {
            ip: ip("198.18.0.201"),
            prefix: 32,
            link: 3,
            proto: Some(ADDRESS_PROTO),
        });
        let owned: Vec<Ipv4Addr> = st
            .owned_addresses(&[ip("198.18.0.200")].into())
            .iter()
            .map(|a| a.ip)
            .collect();
        assert_eq!(owned, [ip("198.18.0.200"), ip("198.18.0.201")]);
    }

    #[test]
    fn addresses_move_between_interfaces_and_foreign_ones_stay() {
        let cfg = DataplaneConfig::default();
        let want = BTreeMap::from([
            (ip("198.18.0.200"), "eth1".to_string()),
            (ip("198.18.0.202"), "eth0".to_string()),
        ]);
        let p = plan_routing(
            &state(),
            &[ip("198.18.0.200")].into(),
            &want,
            &BTreeMap::new(),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            p.before_nft,
            [RtOp::DelAddress {
                ip: ip("198.18.0.200"),
                prefix: 32,
                link: 2,
                ifname: "eth0".into()
            }]
        );
        assert_eq!(
            p.add_addresses,
            [
                RtOp::AddAddress {
                    ip: ip("198.18.0.200"),
                    link: 3,
                    ifname: "eth1".into()
                },
                RtOp::AddAddress {
                    ip: ip("198.18.0.202"),
                    link: 2,
                    ifname: "eth0".into()
                },
            ]
        );
        assert!(p.after_nft.is_empty());
        let missing = BTreeMap::from([(ip("198.18.0.200"), "eth9".to_string())]);
        assert!(
            plan_routing(&state(), &BTreeSet::new(), &missing, &BTreeMap::new(), &cfg).is_err()
        );
    }

    #[test]
    fn next_hop_change_adds_before_and_removes_after() {
        let cfg = DataplaneConfig::default();
        let mut st = state();
        let old = RuleEntry {
            priority: cfg.rule_priority,
            mark: cfg.slot_mark(1),
            mask: cfg.mark_mask,
            table: cfg.slot_table(1),
        };
        st.rules.push(old);
        st.routes.push(RouteEntry::default_via(
            cfg.slot_table(1),
            ip("198.18.0.12"),
        ));
        // a foreign rule at our priority pointing elsewhere is left alone
        st.rules.push(RuleEntry {
            priority: cfg.rule_priority,
            mark: 0x1,
            mask: 0x1,
            table: 100,
        });
        assert_eq!(st.slots(&cfg), BTreeMap::from([(ip("198.18.0.12"), 1)]));
        let slots = BTreeMap::from([(ip("198.18.0.13"), 2)]);
        let p = plan_routing(&st, &BTreeSet::new(), &BTreeMap::new(), &slots, &cfg).unwrap();
        let new_rule = RuleEntry {
            priority: cfg.rule_priority,
            mark: cfg.slot_mark(2),
            mask: cfg.mark_mask,
            table: cfg.slot_table(2),
        };
        assert_eq!(
            p.before_nft,
            [
                RtOp::ReplaceRoute(RouteEntry::default_via(
                    cfg.slot_table(2),
                    ip("198.18.0.13")
                )),
                RtOp::AddRule(new_rule)
            ]
        );
        assert_eq!(
            p.after_nft,
            [
                RtOp::DelRule(old),
                RtOp::DelRoute(RouteEntry::default_via(
                    cfg.slot_table(1),
                    ip("198.18.0.12")
                ))
            ]
        );
        // unchanged: nothing to do
        let mut done = st.clone();
        done.rules = vec![new_rule];
        done.routes = vec![RouteEntry::default_via(
            cfg.slot_table(2),
            ip("198.18.0.13"),
        )];
        assert!(
            plan_routing(&done, &BTreeSet::new(), &BTreeMap::new(), &slots, &cfg)
                .unwrap()
                .is_empty()
        );
    }
}
