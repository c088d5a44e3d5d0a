//! What the kernel holds, compared with what the plan asks for (pure): the agent's report of
//! kernel truth (issue 14, "Status tells the kernel truth").
//!
//! The engine keeps [`TableParts`] of our table as it last knew it from the kernel: read
//! back (first apply, after a failure, after the drift monitor saw our table change, at the
//! periodic check) with the transactions the kernel acknowledged since applied on top. After
//! every apply, successful or not, [`kernel_report`] compares those parts and the egress IPs
//! present on the node (read from the kernel by the same apply) with what the plan renders,
//! gateway by gateway. No second reader: the monitor's read is the one reused.
//!
//! The report is small and stable, because it rides on every Lease renewal: one digest, two
//! counts and the egress IPs of the node, plus an entry only for a gateway whose kernel part
//! differs (at most [`MAX_REPORTED_DIFFERENCES`]). It changes only when the kernel does.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::names::{GatewayId, SetName};
use super::nft_model::{NftState, SetContent};
use super::ownership::ForeignAddress;
use crate::plan::NodePlan;
use crate::plan::hash::Digester;

/// At most this many gateways that differ are listed in one report (sorted by name); the
/// report says when more differ.
pub const MAX_REPORTED_DIFFERENCES: usize = 32;

/// One gateway's part of our table: its sets and rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Part {
    pub digest: u64,
    pub elements: usize,
    pub rules: usize,
}

/// Our table cut into per-gateway parts, plus the digest and size of the whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableParts {
    /// Digest of the whole table (flags, chains, every set and rule), 0 without a table.
    pub digest: u64,
    pub elements: usize,
    /// By gateway name (the comment of its `<id>_dst` set).
    pub gateways: BTreeMap<String, Part>,
}

fn feed_content(h: &mut Digester, content: &SetContent) {
    match content {
        SetContent::Addrs(a) => {
            h.write_u8(0);
            a.hash(h);
        }
        SetContent::Ranges(r) => {
            h.write_u8(1);
            r.hash(h);
        }
        SetContent::Origins(o) => {
            h.write_u8(2);
            o.hash(h);
        }
    }
}

impl TableParts {
    /// The parts of `table` (`None`: no table in the kernel). One pass over sets and rules.
    pub fn of(table: Option<&NftState>) -> Self {
        let Some(t) = table else {
            return Self::default();
        };
        let mut whole = Digester::default();
        t.flags.hash(&mut whole);
        for (name, c) in &t.chains {
            name.hash(&mut whole);
            format!("{c:?}").hash(&mut whole);
        }
        let mut by_gid: BTreeMap<GatewayId, (Digester, Part)> = BTreeMap::new();
        let mut names: BTreeMap<GatewayId, String> = BTreeMap::new();
        for (name, set) in &t.sets {
            // Each element is hashed once, into its set's digest.
            let mut one = Digester::default();
            name.hash(&mut one);
            set.comment.hash(&mut one);
            feed_content(&mut one, &set.content);
            let digest = one.finish();
            whole.write_u64(digest);
            let Some(role) = name.parse::<SetName>().ok() else {
                continue;
            };
            let Some(gid) = role.gateway() else { continue };
            if let (SetName::Dst(_), Some(c)) = (&role, &set.comment) {
                names.insert(gid.clone(), c.clone());
            }
            let (h, part) = by_gid.entry(gid.clone()).or_default();
            h.write_u64(digest);
            part.elements += set.content.len();
        }
        for spec in t.rules.keys() {
            spec.hash(&mut whole);
            if let Some(gid) = spec.gateway() {
                let (h, part) = by_gid.entry(gid.clone()).or_default();
                spec.hash(h);
                part.rules += 1;
            }
        }
        t.foreign_rules.len().hash(&mut whole);
        let gateways = by_gid
            .into_iter()
            .filter_map(|(gid, (h, part))| {
                let name = names.get(&gid)?.clone();
                Some((
                    name,
                    Part {
                        digest: h.finish(),
                        ..part
                    },
                ))
            })
            .collect();
        Self {
            digest: whole.finish(),
            elements: t.element_count(),
            gateways,
        }
    }
}

/// How one gateway's part of the kernel differs from the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayDifference {
    /// Set elements and rules of the gateway in the kernel, and what the plan renders.
    pub elements: usize,
    pub want_elements: usize,
    pub rules: usize,
    pub want_rules: usize,
    /// The table part differs in content (same counts can still differ).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub table_differs: bool,
    /// Egress IPs the plan puts on this node for the gateway that the node does not hold
    /// as ours.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub missing: BTreeSet<Ipv4Addr>,
    /// Of those, the ones an address egressgw did not add occupies: IP -> interface.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub foreign: BTreeMap<Ipv4Addr, String>,
    /// Next hops the plan steers the gateway's pods to without a steering route in the
    /// kernel (the route could not be added: the interface is down, the next hop is not
    /// on-link, no mark slot is free): those pods' traffic is dropped.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unsteered: BTreeSet<Ipv4Addr>,
}

/// What the agent reports of its kernel (annotation `egressgw.io/kernel`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelReport {
    /// Digest (hex) of our table and our egress IPs as read back.
    pub digest: String,
    /// Set elements in our table.
    pub elements: usize,
    /// Our egress IPs present on the node's interfaces.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub addresses: BTreeSet<Ipv4Addr>,
    /// Gateways whose kernel part differs from the plan, by name (the first
    /// [`MAX_REPORTED_DIFFERENCES`] by name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub differs: BTreeMap<String, GatewayDifference>,
    /// More gateways differ than listed: those named after the last listed one are unknown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl KernelReport {
    /// Whether the report says nothing about `gateway` because the list was cut.
    pub fn unknown(&self, gateway: &str) -> bool {
        self.truncated
            && self
                .differs
                .keys()
                .next_back()
                .is_none_or(|last| gateway > last.as_str())
    }
}

/// What the node can do of its plan: the egress IPs of ours `present` on its interfaces,
/// the `foreign` addresses that occupy planned egress IPs, and the next hops that have a
/// steering route in the kernel (`routed`: a slot and its `default via` route).
#[derive(Clone, Copy, Debug)]
pub struct NodeFacts<'a> {
    pub present: &'a BTreeSet<Ipv4Addr>,
    pub foreign: &'a BTreeMap<Ipv4Addr, ForeignAddress>,
    pub routed: &'a BTreeSet<Ipv4Addr>,
}

/// The report for `plan`: the kernel's table parts against the parts of the table the plan
/// renders, and what the plan asks that the node cannot do ([`NodeFacts`]).
pub fn kernel_report(
    plan: &NodePlan,
    kernel: &TableParts,
    want: &TableParts,
    facts: NodeFacts<'_>,
) -> KernelReport {
    let NodeFacts {
        present,
        foreign,
        routed,
    } = facts;
    let mut planned_ips: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for (ip, h) in &plan.hosted {
        if let IpAddr::V4(v4) = ip {
            planned_ips
                .entry(h.gateway.as_str())
                .or_default()
                .insert(*v4);
        }
    }
    let names: BTreeSet<&str> = plan
        .gateway_names()
        .into_iter()
        .chain(planned_ips.keys().copied())
        .chain(want.gateways.keys().map(String::as_str))
        .collect();
    let mut digest = Digester::default();
    kernel.digest.hash(&mut digest);
    present.hash(&mut digest);
    let mut report = KernelReport {
        digest: format!("{:016x}", digest.finish()),
        elements: kernel.elements,
        addresses: present.clone(),
        ..KernelReport::default()
    };
    for name in names {
        let k = kernel.gateways.get(name).copied().unwrap_or_default();
        let w = want.gateways.get(name).copied().unwrap_or_default();
        let missing: BTreeSet<Ipv4Addr> = planned_ips
            .get(name)
            .map(|ips| ips.difference(present).copied().collect())
            .unwrap_or_default();
        let unsteered: BTreeSet<Ipv4Addr> = plan
            .gateways
            .get(name)
            .into_iter()
            .flat_map(|g| g.steer.keys())
            .filter_map(|nh| match nh {
                IpAddr::V4(v4) if !routed.contains(v4) => Some(*v4),
                _ => None,
            })
            .collect();
        if k == w && missing.is_empty() && unsteered.is_empty() {
            continue;
        }
        if report.differs.len() == MAX_REPORTED_DIFFERENCES {
            report.truncated = true;
            break;
        }
        let foreign = missing
            .iter()
            .filter_map(|ip| Some((*ip, foreign.get(ip)?.interface.clone())))
            .collect();
        report.differs.insert(
            name.to_string(),
            GatewayDifference {
                elements: k.elements,
                want_elements: w.elements,
                rules: k.rules,
                want_rules: w.rules,
                table_differs: k.digest != w.digest,
                missing,
                foreign,
                unsteered,
            },
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::config::DataplaneConfig;
    use crate::dataplane::desired::desired;
    use crate::plan::{GatewayNodePlan, HostedIp};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// node-2 hosts 198.18.0.200 for billing and SNATs two pods to it.
    fn plan() -> NodePlan {
        let mut plan = NodePlan::empty("node-2");
        plan.hosted.insert(
            "198.18.0.200".parse().unwrap(),
            HostedIp {
                gateway: "billing".into(),
                interface: "eth0".into(),
            },
        );
        let mut part = GatewayNodePlan {
            destinations: vec!["203.0.113.0/24".parse().unwrap()],
            ..GatewayNodePlan::default()
        };
        part.snat.insert(
            "198.18.0.200".parse().unwrap(),
            ["198.19.2.10", "198.19.3.10"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        );
        plan.gateways.insert("billing".into(), part);
        plan
    }

    static NOT_ROUTED: BTreeSet<Ipv4Addr> = BTreeSet::new();

    fn facts<'a>(
        present: &'a BTreeSet<Ipv4Addr>,
        foreign: &'a BTreeMap<Ipv4Addr, ForeignAddress>,
    ) -> NodeFacts<'a> {
        NodeFacts {
            present,
            foreign,
            routed: &NOT_ROUTED,
        }
    }

    fn want(plan: &NodePlan, refused: &BTreeSet<Ipv4Addr>) -> NftState {
        desired(
            plan,
            &DataplaneConfig::default(),
            &BTreeMap::new(),
            refused,
            &BTreeMap::new(),
        )
        .nft
        .expect("a table")
    }

    #[test]
    fn a_kernel_on_plan_reports_no_difference_and_a_stable_digest() {
        let plan = plan();
        let table = want(&plan, &BTreeSet::new());
        let parts = TableParts::of(Some(&table));
        assert_eq!(
            parts.gateways["billing"].elements,
            table.element_count() - 1
        ); // hosted is node-wide
        let present = BTreeSet::from([ip("198.18.0.200")]);
        let r = kernel_report(&plan, &parts, &parts, facts(&present, &BTreeMap::new()));
        assert!(r.differs.is_empty(), "{r:?}");
        assert_eq!(r.addresses, present);
        assert_eq!(r.elements, table.element_count());
        let again = kernel_report(
            &plan,
            &TableParts::of(Some(&table.clone())),
            &parts,
            facts(&present, &BTreeMap::new()),
        );
        assert_eq!(again, r, "the same kernel gives the same report");
    }

    #[test]
    fn a_removed_element_and_a_missing_address_are_reported_for_their_gateway() {
        let plan = plan();
        let table = want(&plan, &BTreeSet::new());
        let mut kernel = table.clone();
        let snat = kernel
            .sets
            .iter_mut()
            .find(|(n, _)| n.contains("_snat_"))
            .map(|(_, s)| s)
            .unwrap();
        if let SetContent::Addrs(a) = &mut snat.content {
            a.remove(&ip("198.19.3.10"));
        }
        let r = kernel_report(
            &plan,
            &TableParts::of(Some(&kernel)),
            &TableParts::of(Some(&table)),
            facts(&BTreeSet::new(), &BTreeMap::new()),
        );
        let d = &r.differs["billing"];
        assert!(d.table_differs);
        assert_eq!(d.elements + 1, d.want_elements);
        assert_eq!(d.rules, d.want_rules);
        assert_eq!(d.missing, BTreeSet::from([ip("198.18.0.200")]));
        assert!(d.foreign.is_empty());
        assert_ne!(
            r.digest,
            kernel_report(
                &plan,
                &TableParts::of(Some(&table)),
                &TableParts::of(Some(&table)),
                facts(&BTreeSet::from([ip("198.18.0.200")]), &BTreeMap::new())
            )
            .digest,
            "the digest is of what the kernel holds"
        );
    }

    #[test]
    fn a_foreign_address_on_a_planned_egress_ip_is_named_with_its_interface() {
        let plan = plan();
        let refused = BTreeSet::from([ip("198.18.0.200")]);
        // The refused IP's pods are blocked instead: the table is as rendered, the IP absent.
        let table = TableParts::of(Some(&want(&plan, &refused)));
        let foreign = BTreeMap::from([(
            ip("198.18.0.200"),
            ForeignAddress {
                ip: ip("198.18.0.200"),
                prefix: 32,
                interface: "eth0".into(),
            },
        )]);
        let r = kernel_report(&plan, &table, &table, facts(&BTreeSet::new(), &foreign));
        let d = &r.differs["billing"];
        assert!(!d.table_differs);
        assert_eq!(
            d.foreign,
            BTreeMap::from([(ip("198.18.0.200"), "eth0".to_string())])
        );
    }

    #[test]
    fn pods_steered_to_a_next_hop_without_a_route_are_reported() {
        let mut plan = NodePlan::empty("node-1");
        let mut part = GatewayNodePlan {
            destinations: vec!["203.0.113.0/24".parse().unwrap()],
            ..GatewayNodePlan::default()
        };
        part.steer.insert(
            "198.18.0.12".parse().unwrap(),
            ["198.19.1.10".parse().unwrap()].into(),
        );
        plan.gateways.insert("billing".into(), part);
        // eth0 is down: the kernel flushed the route via the next hop and refuses it back
        let table = TableParts::of(Some(&want(&plan, &BTreeSet::new())));
        let r = kernel_report(
            &plan,
            &table,
            &table,
            facts(&BTreeSet::new(), &BTreeMap::new()),
        );
        assert_eq!(
            r.differs["billing"].unsteered,
            BTreeSet::from([ip("198.18.0.12")])
        );
        let routed = BTreeSet::from([ip("198.18.0.12")]);
        let (present, foreign) = (BTreeSet::new(), BTreeMap::new());
        let steering = NodeFacts {
            routed: &routed,
            ..facts(&present, &foreign)
        };
        assert!(
            kernel_report(&plan, &table, &table, steering)
                .differs
                .is_empty(),
            "with its route the steering is in place"
        );
    }

    #[test]
    fn the_report_is_bounded_and_says_which_gateways_it_cannot_vouch_for() {
        let mut plan = NodePlan::empty("node-2");
        for i in 0..(MAX_REPORTED_DIFFERENCES + 8) {
            plan.hosted.insert(
                IpAddr::V4(Ipv4Addr::new(198, 18, 1, i as u8)),
                HostedIp {
                    gateway: format!("gw-{i:03}"),
                    interface: "eth0".into(),
                },
            );
        }
        let none = TableParts::default();
        let r = kernel_report(
            &plan,
            &none,
            &none,
            facts(&BTreeSet::new(), &BTreeMap::new()),
        );
        assert_eq!(r.differs.len(), MAX_REPORTED_DIFFERENCES);
        assert!(r.truncated);
        assert!(!r.unknown("gw-000"), "listed");
        assert!(
            !r.unknown("gw-0001"),
            "sorted before the last listed: not cut"
        );
        assert!(r.unknown("gw-039"), "after the last listed: unknown");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.len() < 8 * 1024, "{} bytes", json.len());
        assert_eq!(serde_json::from_str::<KernelReport>(&json).unwrap(), r);
    }
}
