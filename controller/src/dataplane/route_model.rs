//! Addresses, policy rules and routes: what the kernel holds, what we want, the steps
//! between (pure).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::config::{DataplaneConfig, FAIL_CLOSED_METRIC};
use super::ownership::AddressRecord;

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

/// What a route does with a packet (only the types we write).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKind {
    /// Forward it (through `gateway`).
    Unicast,
    /// Drop it silently.
    Blackhole,
    /// Any other type read from the kernel (never written; deleted from our tables).
    Other,
}

/// An IPv4 route in one of our tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteEntry {
    pub table: u32,
    pub dst: Ipv4Addr,
    pub dst_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// `RTA_PRIORITY` (the metric): with two default routes the lower one wins.
    pub metric: u32,
    pub kind: RouteKind,
}

impl RouteEntry {
    /// `default via <nh> table <table>` (metric 0).
    pub fn default_via(table: u32, nh: Ipv4Addr) -> Self {
        Self {
            table,
            dst: Ipv4Addr::UNSPECIFIED,
            dst_len: 0,
            gateway: Some(nh),
            metric: 0,
            kind: RouteKind::Unicast,
        }
    }

    /// `blackhole default table <table> metric FAIL_CLOSED_METRIC`: the steering table's last
    /// resort. When the route via the next hop vanishes (a link flap flushes it), marked
    /// packets are dropped here instead of falling through to the main table unSNATed.
    pub fn fail_closed(table: u32) -> Self {
        Self {
            table,
            dst: Ipv4Addr::UNSPECIFIED,
            dst_len: 0,
            gateway: None,
            metric: FAIL_CLOSED_METRIC,
            kind: RouteKind::Blackhole,
        }
    }

    /// A default route through a next hop (the routes that carry a slot).
    pub fn is_default_via(&self) -> bool {
        self.dst_len == 0 && self.kind == RouteKind::Unicast && self.gateway.is_some()
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
            .filter(|r| r.is_default_via())
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

    /// The interface whose configured subnet holds `ip` (the link a neighbour `ip` is on).
    pub fn link_toward(&self, ip: Ipv4Addr) -> Option<u32> {
        self.addresses
            .iter()
            .find(|a| {
                a.prefix < 32
                    && ipnetwork::Ipv4Network::new(a.ip, a.prefix).is_ok_and(|n| n.contains(ip))
            })
            .map(|a| a.link)
    }

    pub fn busy_slots(&self, cfg: &DataplaneConfig) -> BTreeSet<u32> {
        self.routes
            .iter()
            .map(|r| r.table)
            .chain(self.rules.iter().map(|r| r.table))
            .filter_map(|t| cfg.table_slot(t))
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
/// `record` tells our addresses (only those are ever removed); `addresses` holds no foreign
/// one (see [`super::ownership::foreign_conflicts`]).
pub fn plan_routing(
    observed: &RoutingState,
    record: &AddressRecord,
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
    let owned = record.owned(observed);
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

    // Routes and rules of the next-hop slots: the route via the next hop, and under it the
    // fail-closed blackhole.
    let want_routes: BTreeSet<RouteEntry> = slots
        .iter()
        .flat_map(|(nh, slot)| {
            let table = cfg.slot_table(*slot);
            [
                RouteEntry::default_via(table, *nh),
                RouteEntry::fail_closed(table),
            ]
        })
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
        // a default route replaced by a wanted one (same table, destination and metric) is
        // gone already; anything else in our tables goes
        let replaced = r.dst_len == 0
            && want_routes.iter().any(|w| {
                w.table == r.table
                    && w.dst_len == 0
                    && w.metric == r.metric
                    && !observed.routes.contains(w)
            });
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

    fn record(ips: &[&str]) -> AddressRecord {
        let mut r = AddressRecord::default();
        for i in ips {
            r.added(ip(i));
        }
        r
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
            &record(&["198.18.0.200"]),
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
        assert!(plan_routing(&state(), &record(&[]), &missing, &BTreeMap::new(), &cfg).is_err());
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
        let p = plan_routing(&st, &record(&[]), &BTreeMap::new(), &slots, &cfg).unwrap();
        let new_rule = RuleEntry {
            priority: cfg.rule_priority,
            mark: cfg.slot_mark(2),
            mask: cfg.mark_mask,
            table: cfg.slot_table(2),
        };
        assert_eq!(
            p.before_nft,
            [
                // the blackhole first: the table fails closed before it routes
                RtOp::ReplaceRoute(RouteEntry::fail_closed(cfg.slot_table(2))),
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
        done.routes = vec![
            RouteEntry::default_via(cfg.slot_table(2), ip("198.18.0.13")),
            RouteEntry::fail_closed(cfg.slot_table(2)),
        ];
        assert!(
            plan_routing(&done, &record(&[]), &BTreeMap::new(), &slots, &cfg)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_steering_table_fails_closed_and_a_flap_restores_only_the_next_hop_route() {
        let cfg = DataplaneConfig::default();
        let table = cfg.slot_table(3);
        let nh = ip("198.18.0.13");
        let rule = RuleEntry {
            priority: cfg.rule_priority,
            mark: cfg.slot_mark(3),
            mask: cfg.mark_mask,
            table,
        };
        let slots = BTreeMap::from([(nh, 3)]);
        // after a link flap: the route via the next hop is gone, the blackhole stays
        let mut st = state();
        st.rules.push(rule);
        st.routes.push(RouteEntry::fail_closed(table));
        assert!(st.slots(&cfg).is_empty(), "a blackhole carries no next hop");
        let p = plan_routing(&st, &record(&[]), &BTreeMap::new(), &slots, &cfg).unwrap();
        assert_eq!(
            p.before_nft,
            [RtOp::ReplaceRoute(RouteEntry::default_via(table, nh))]
        );
        assert!(p.after_nft.is_empty(), "{:?}", p.after_nft);
        // when the slot goes, the blackhole goes with it
        let mut done = st.clone();
        done.routes.push(RouteEntry::default_via(table, nh));
        let p = plan_routing(
            &done,
            &record(&[]),
            &BTreeMap::new(),
            &BTreeMap::new(),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            p.after_nft,
            [
                RtOp::DelRule(rule),
                RtOp::DelRoute(RouteEntry::fail_closed(table)),
                RtOp::DelRoute(RouteEntry::default_via(table, nh)),
            ]
        );
    }

    #[test]
    fn a_moved_next_hop_replaces_the_route_and_keeps_the_blackhole() {
        let cfg = DataplaneConfig::default();
        let table = cfg.slot_table(1);
        let mut st = state();
        st.routes
            .push(RouteEntry::default_via(table, ip("198.18.0.12")));
        st.routes.push(RouteEntry::fail_closed(table));
        let slots = BTreeMap::from([(ip("198.18.0.13"), 1)]);
        let p = plan_routing(&st, &record(&[]), &BTreeMap::new(), &slots, &cfg).unwrap();
        assert!(
            p.before_nft
                .contains(&RtOp::ReplaceRoute(RouteEntry::default_via(
                    table,
                    ip("198.18.0.13")
                )))
        );
        assert!(
            p.after_nft
                .iter()
                .all(|op| !matches!(op, RtOp::DelRoute(_))),
            "the replaced route is gone already and the blackhole stays: {:?}",
            p.after_nft
        );
    }
}
