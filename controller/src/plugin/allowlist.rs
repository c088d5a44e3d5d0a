//! `kubectl egress allowlist`: which source IPs a firewall in front of the destinations must
//! allow, per gateway. Every egress IP a gateway owns is listed whether or not a node hosts it
//! right now: failover moves an IP between nodes, never to another address.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::cidrs;
use crate::api::EgressGateway;
use crate::index::{ClusterIndex, Gateway};
use crate::plan::ranges;
use crate::plan::select::by_seniority;

/// What one gateway's pods send, from which addresses, to which networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowEntry {
    pub gateway: String,
    /// The egress IPs this gateway owns (an IP claimed by an older gateway belongs to that one).
    #[serde(rename = "egressIPs")]
    pub egress_ips: Vec<IpAddr>,
    /// Destinations minus exclusions (clipped to `--destination`), as the fewest CIDRs.
    #[serde(serialize_with = "as_strings")]
    pub destinations: Vec<IpNetwork>,
}

fn as_strings<S: serde::Serializer>(nets: &[IpNetwork], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(ToString::to_string))
}

/// A gateway left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub gateway: String,
    pub reason: String,
}

/// The whole allowlist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub entries: Vec<AllowEntry>,
    pub skipped: Vec<Skipped>,
}

impl Allowlist {
    /// `(source, destination)` pairs, sorted, without duplicates.
    pub fn pairs(&self) -> BTreeSet<(IpAddr, IpNetwork)> {
        self.entries
            .iter()
            .flat_map(|e| {
                e.egress_ips
                    .iter()
                    .flat_map(|s| e.destinations.iter().map(move |d| (*s, *d)))
            })
            .collect()
    }
}

/// The allowlist of `gateways`, limited to what reaches `within` when given.
pub fn allowlist(gateways: &[EgressGateway], within: Option<&IpNetwork>) -> Allowlist {
    let mut index = ClusterIndex::default();
    let mut out = Allowlist::default();
    for g in gateways
        .iter()
        .filter(|g| g.metadata.deletion_timestamp.is_none())
    {
        let Some(gw) = Gateway::from_kube(g) else {
            continue;
        };
        if let Err(e) = &gw.spec {
            out.skipped.push(Skipped {
                gateway: gw.name.clone(),
                reason: format!("invalid spec: {e}"),
            });
        }
        index.gateways.insert(gw.name.clone(), gw);
    }
    let mut owned: BTreeSet<IpAddr> = BTreeSet::new();
    for (gw, spec) in by_seniority(&index) {
        let egress_ips: Vec<IpAddr> = spec
            .egress_ips
            .iter()
            .copied()
            .filter(|ip| owned.insert(*ip))
            .collect();
        if egress_ips.is_empty() {
            out.skipped.push(Skipped {
                gateway: gw.name.clone(),
                reason: "every egress IP is claimed by an older gateway".into(),
            });
            continue;
        }
        let effective = ranges::effective(&spec.destinations, &spec.excluded);
        let destinations = cidrs::to_cidrs(&cidrs::clip(&effective, within));
        if destinations.is_empty() {
            continue;
        }
        out.entries.push(AllowEntry {
            gateway: gw.name.clone(),
            egress_ips,
            destinations,
        });
    }
    out.entries.sort_by(|a, b| a.gateway.cmp(&b.gateway));
    out
}

/// `SOURCE DESTINATION` per line.
pub fn render_lines(list: &Allowlist) -> String {
    list.pairs()
        .into_iter()
        .map(|(s, d)| format!("{s} {d}\n"))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{EgressGatewaySpec, LabelSelector};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    pub fn gateway(
        name: &str,
        age: i64,
        ips: &[&str],
        dst: &[&str],
        excl: &[&str],
    ) -> EgressGateway {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        let mut g = EgressGateway::new(
            name,
            EgressGatewaySpec {
                namespace_selector: LabelSelector::default(),
                pod_selector: LabelSelector::default(),
                destination_cidrs: v(dst),
                excluded_cidrs: v(excl),
                egress_ips: v(ips),
                gateway_node_selector: LabelSelector::default(),
                interface: None,
            },
        );
        g.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(1_700_000_000 + age).unwrap()));
        g
    }

    #[test]
    fn sources_are_the_owned_ips_and_destinations_exclude_carve_outs() {
        let list = allowlist(
            &[
                gateway(
                    "billing",
                    1,
                    &["198.18.0.200", "198.18.0.201"],
                    &["203.0.113.0/24"],
                    &["203.0.113.128/25"],
                ),
                gateway(
                    "late",
                    2,
                    &["198.18.0.201", "198.18.0.202"],
                    &["198.51.100.0/24"],
                    &[],
                ),
            ],
            None,
        );
        assert_eq!(list.entries.len(), 2);
        assert_eq!(
            list.entries[0].destinations[0].to_string(),
            "203.0.113.0/25"
        );
        assert_eq!(
            list.entries[1].egress_ips,
            vec!["198.18.0.202".parse::<IpAddr>().unwrap()],
            "201 belongs to the older gateway"
        );
        assert_eq!(
            render_lines(&list),
            "198.18.0.200 203.0.113.0/25\n198.18.0.201 203.0.113.0/25\n198.18.0.202 198.51.100.0/24\n"
        );
    }

    #[test]
    fn a_destination_filter_keeps_only_what_reaches_it() {
        let gws = [
            gateway("wide", 1, &["198.18.0.200"], &["203.0.0.0/16"], &[]),
            gateway("other", 2, &["198.18.0.210"], &["198.51.100.0/24"], &[]),
        ];
        let within: IpNetwork = "203.0.113.0/24".parse().unwrap();
        let list = allowlist(&gws, Some(&within));
        assert_eq!(render_lines(&list), "198.18.0.200 203.0.113.0/24\n");
    }

    #[test]
    fn invalid_and_fully_claimed_gateways_are_reported_not_listed() {
        let list = allowlist(
            &[
                gateway("bad", 1, &["198.18.0.300"], &["203.0.113.0/24"], &[]),
                gateway("first", 2, &["198.18.0.200"], &["203.0.113.0/24"], &[]),
                gateway("second", 3, &["198.18.0.200"], &["198.51.100.0/24"], &[]),
            ],
            None,
        );
        assert_eq!(
            list.entries
                .iter()
                .map(|e| e.gateway.as_str())
                .collect::<Vec<_>>(),
            ["first"]
        );
        let skipped: Vec<&str> = list.skipped.iter().map(|s| s.gateway.as_str()).collect();
        assert_eq!(skipped, ["bad", "second"]);
        assert!(
            list.skipped[0].reason.contains("spec.egressIPs[0]"),
            "{:?}",
            list.skipped[0]
        );
    }
}
