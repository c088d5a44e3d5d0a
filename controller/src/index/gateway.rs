//! EgressGateways as the planner sees them: the spec parsed and re-validated, the age that
//! orders conflicts, and the assignments recorded in status.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::jiff::Timestamp;
use thiserror::Error;

use crate::api::label_grammar::{LabelProblem, check_key, check_value};
use crate::api::{EgressGateway, LabelSelector, SelectorOperator};

/// Why a gateway's spec cannot be programmed. Each names the field; the controller turns it
/// into `Ready=False` with reason [`SpecError::reason`] and an event.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("spec.{field} must not be empty")]
    Empty { field: &'static str },
    #[error("spec.{field}[{index}]: {value:?} is not a valid IP address")]
    BadIp {
        field: &'static str,
        index: usize,
        value: String,
    },
    #[error("spec.{field}[{index}]: {value:?} is not a valid CIDR")]
    BadCidr {
        field: &'static str,
        index: usize,
        value: String,
    },
    #[error("spec.{field}[{index}]: {value:?} has host bits set; write {network}")]
    HostBits {
        field: &'static str,
        index: usize,
        value: String,
        network: IpNetwork,
    },
    #[error("spec.{field}[{index}]: {value:?} appears more than once")]
    Duplicate {
        field: &'static str,
        index: usize,
        value: String,
    },
    #[error("spec.{field}[{index}]: {value:?} is not a unicast address a node can host")]
    NotUnicast {
        field: &'static str,
        index: usize,
        value: String,
    },
    #[error("spec.{field}[{index}]: IPv6 ({value}) is not supported yet")]
    Ipv6Unsupported {
        field: &'static str,
        index: usize,
        value: String,
    },
    #[error("spec.destinationCIDRs[{index}]: {value} has no egress IP of the same address family")]
    MixedFamily { index: usize, value: String },
    #[error(
        "spec.excludedCIDRs[{index}]: {value} lies outside every destination CIDR (it excludes nothing)"
    )]
    ExclusionOutside { index: usize, value: String },
    #[error(
        "spec.destinationCIDRs[{index}]: {value} is wholly covered by excludedCIDRs: nothing would be SNATed for it"
    )]
    DestinationExcluded { index: usize, value: String },
    /// `path` is the field, e.g. `spec.namespaceSelector.matchLabels[team]`; the problem
    /// quotes the value.
    #[error("{path}: {problem}")]
    BadSelector {
        path: String,
        problem: SelectorProblem,
    },
    #[error("spec.interface: {value:?} is not a valid interface name")]
    BadInterface { value: String },
}

/// What is wrong with one part of a label selector.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SelectorProblem {
    #[error("operator {0:?} needs at least one value")]
    NeedsValues(SelectorOperator),
    #[error("operator {0:?} takes no values")]
    TakesNoValues(SelectorOperator),
    #[error(transparent)]
    Label(#[from] LabelProblem),
}

impl SpecError {
    /// The condition reason for an invalid spec.
    pub fn reason(&self) -> &'static str {
        "InvalidSpec"
    }
}

/// A gateway spec that passed validation, addresses parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySpec {
    pub namespace_selector: LabelSelector,
    pub pod_selector: LabelSelector,
    /// Sorted, no duplicates.
    pub destinations: Vec<IpNetwork>,
    /// Sorted, no duplicates.
    pub excluded: Vec<IpNetwork>,
    /// In the spec's order (the order `kubectl get egw` prints), no duplicates.
    pub egress_ips: Vec<IpAddr>,
    pub node_selector: LabelSelector,
    pub interface: Option<String>,
}

/// Where status says an egress IP lives (the planner's memory across restarts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedAssignment {
    pub node: String,
    pub interface: Option<String>,
    /// The agent epoch the assignment was made for.
    pub epoch: Option<i64>,
    pub since: Option<Timestamp>,
}

/// One gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub name: String,
    pub generation: i64,
    /// `metadata.creationTimestamp`: the older gateway wins a conflict.
    pub created: Timestamp,
    pub spec: Result<GatewaySpec, SpecError>,
    /// The last valid spec this process saw of the gateway, kept while the current one is
    /// invalid: the gateway keeps blocking the pods it selected (fail closed) instead of
    /// letting them leave from their nodes' addresses.
    pub fallback: Option<GatewaySpec>,
    /// `status.assignments` as last written.
    pub recorded: BTreeMap<IpAddr, RecordedAssignment>,
}

impl Gateway {
    /// The total order conflicts are resolved by: older first, then name.
    pub fn seniority(&self) -> (Timestamp, &str) {
        (self.created, &self.name)
    }

    /// The spec to select and block pods by: the valid one, or else the last valid one seen.
    /// Only a valid spec places egress IPs.
    pub fn effective_spec(&self) -> Option<&GatewaySpec> {
        self.spec.as_ref().ok().or(self.fallback.as_ref())
    }

    /// Take the recorded placements from `status` (the controller's own last write, newer
    /// than the watch's copy while the watch lags).
    pub fn record_from(&mut self, status: &crate::api::EgressGatewayStatus) {
        self.recorded = recorded_from(status);
    }

    /// Cut an `EgressGateway` down, re-validating its spec.
    pub fn from_kube(gw: &EgressGateway) -> Option<Self> {
        let name = gw.metadata.name.clone()?;
        let created = gw
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let recorded = gw.status.as_ref().map(recorded_from).unwrap_or_default();
        Some(Self {
            name,
            generation: gw.metadata.generation.unwrap_or(0),
            created,
            spec: parse_spec(&gw.spec),
            fallback: None,
            recorded,
        })
    }
}

/// Validate and parse a spec: the controller's second line of defence behind the CRD schema.
pub fn parse_spec(spec: &crate::api::EgressGatewaySpec) -> Result<GatewaySpec, SpecError> {
    let egress_ips = parse_ips("egressIPs", &spec.egress_ips)?;
    let destinations = parse_cidrs("destinationCIDRs", &spec.destination_cidrs, true)?;
    let excluded = parse_cidrs("excludedCIDRs", &spec.excluded_cidrs, false)?;
    for (index, d) in destinations.iter().enumerate() {
        if !egress_ips.iter().any(|e| e.is_ipv4() == d.is_ipv4()) {
            return Err(SpecError::MixedFamily {
                index,
                value: d.to_string(),
            });
        }
    }
    for (index, x) in excluded.iter().enumerate() {
        if !destinations.iter().any(|d| {
            d.is_ipv4() == x.is_ipv4() && d.contains(x.network()) && d.prefix() <= x.prefix()
        }) {
            return Err(SpecError::ExclusionOutside {
                index,
                value: x.to_string(),
            });
        }
    }
    for (index, d) in destinations.iter().enumerate() {
        // wholly covered, also by several exclusions together
        if crate::plan::ranges::effective(std::slice::from_ref(d), &excluded).is_empty() {
            return Err(SpecError::DestinationExcluded {
                index,
                value: d.to_string(),
            });
        }
    }
    check_selector("namespaceSelector", &spec.namespace_selector)?;
    check_selector("podSelector", &spec.pod_selector)?;
    check_selector("gatewayNodeSelector", &spec.gateway_node_selector)?;
    if let Some(name) = &spec.interface {
        let ok = !name.is_empty()
            && name.len() <= crate::api::schema::MAX_INTERFACE_LEN as usize
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && name.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            return Err(SpecError::BadInterface {
                value: name.clone(),
            });
        }
    }
    let mut destinations = destinations;
    destinations.sort();
    let mut excluded = excluded;
    excluded.sort();
    Ok(GatewaySpec {
        namespace_selector: spec.namespace_selector.clone(),
        pod_selector: spec.pod_selector.clone(),
        destinations,
        excluded,
        egress_ips,
        node_selector: spec.gateway_node_selector.clone(),
        interface: spec.interface.clone(),
    })
}

fn parse_ips(field: &'static str, raw: &[String]) -> Result<Vec<IpAddr>, SpecError> {
    if raw.is_empty() {
        return Err(SpecError::Empty { field });
    }
    let mut out: Vec<IpAddr> = Vec::with_capacity(raw.len());
    for (index, value) in raw.iter().enumerate() {
        let ip: IpAddr = value.trim().parse().map_err(|_| SpecError::BadIp {
            field,
            index,
            value: value.clone(),
        })?;
        let err = |e: fn(&'static str, usize, String) -> SpecError| e(field, index, value.clone());
        if ip.is_ipv6() {
            return Err(err(|field, index, value| SpecError::Ipv6Unsupported {
                field,
                index,
                value,
            }));
        }
        if ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || is_link_local(ip)
            || is_broadcast(ip)
        {
            return Err(err(|field, index, value| SpecError::NotUnicast {
                field,
                index,
                value,
            }));
        }
        if out.contains(&ip) {
            return Err(err(|field, index, value| SpecError::Duplicate {
                field,
                index,
                value,
            }));
        }
        out.push(ip);
    }
    Ok(out)
}

fn parse_cidrs(
    field: &'static str,
    raw: &[String],
    required: bool,
) -> Result<Vec<IpNetwork>, SpecError> {
    if required && raw.is_empty() {
        return Err(SpecError::Empty { field });
    }
    let mut out: Vec<IpNetwork> = Vec::with_capacity(raw.len());
    for (index, value) in raw.iter().enumerate() {
        let bad = || SpecError::BadCidr {
            field,
            index,
            value: value.clone(),
        };
        if !value.contains('/') {
            return Err(bad());
        }
        let net: IpNetwork = value.trim().parse().map_err(|_| bad())?;
        let network = IpNetwork::new(net.network(), net.prefix()).map_err(|_| bad())?;
        if network.ip() != net.ip() {
            return Err(SpecError::HostBits {
                field,
                index,
                value: value.clone(),
                network,
            });
        }
        if net.is_ipv6() {
            return Err(SpecError::Ipv6Unsupported {
                field,
                index,
                value: value.clone(),
            });
        }
        if out.contains(&net) {
            return Err(SpecError::Duplicate {
                field,
                index,
                value: value.clone(),
            });
        }
        out.push(net);
    }
    Ok(out)
}

/// Check one selector: operators with the right values, keys and values in the label
/// grammar. `field` is the selector's name under `spec`.
fn check_selector(field: &'static str, s: &LabelSelector) -> Result<(), SpecError> {
    let bad = |path: String, problem: SelectorProblem| SpecError::BadSelector { path, problem };
    for (key, value) in &s.match_labels {
        check_key(key).map_err(|p| bad(format!("spec.{field}.matchLabels"), p.into()))?;
        check_value(value)
            .map_err(|p| bad(format!("spec.{field}.matchLabels[{key}]"), p.into()))?;
    }
    for (index, e) in s.match_expressions.iter().enumerate() {
        let at = format!("spec.{field}.matchExpressions[{index}]");
        let needs_values = matches!(e.operator, SelectorOperator::In | SelectorOperator::NotIn);
        if needs_values && e.values.is_empty() {
            return Err(bad(at, SelectorProblem::NeedsValues(e.operator)));
        }
        if !needs_values && !e.values.is_empty() {
            return Err(bad(at, SelectorProblem::TakesNoValues(e.operator)));
        }
        check_key(&e.key).map_err(|p| bad(format!("{at}.key"), p.into()))?;
        for (i, value) in e.values.iter().enumerate() {
            check_value(value).map_err(|p| bad(format!("{at}.values[{i}]"), p.into()))?;
        }
    }
    Ok(())
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// The placements a status records, by egress IP (IPs without a node are left out).
pub fn recorded_from(
    status: &crate::api::EgressGatewayStatus,
) -> BTreeMap<IpAddr, RecordedAssignment> {
    status
        .assignments
        .iter()
        .filter_map(|a| {
            let ip = a.egress_ip.parse().ok()?;
            let node = a.node.clone()?;
            Some((
                ip,
                RecordedAssignment {
                    node,
                    interface: a.interface.clone(),
                    epoch: a.epoch,
                    since: a.since.as_ref().map(|t| t.0),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EgressGatewaySpec, LabelSelectorRequirement};

    fn spec(ips: &[&str], dst: &[&str], excl: &[&str]) -> EgressGatewaySpec {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        EgressGatewaySpec {
            namespace_selector: LabelSelector::default(),
            pod_selector: LabelSelector::default(),
            destination_cidrs: v(dst),
            excluded_cidrs: v(excl),
            egress_ips: v(ips),
            gateway_node_selector: LabelSelector::default(),
            interface: None,
        }
    }

    #[test]
    fn a_good_spec_parses_sorted() {
        let s = parse_spec(&spec(
            &["198.18.0.201", "198.18.0.200"],
            &["203.0.113.0/24", "198.51.100.0/24"],
            &["203.0.113.128/25"],
        ))
        .unwrap();
        assert_eq!(
            s.egress_ips,
            vec![
                "198.18.0.201".parse::<IpAddr>().unwrap(),
                "198.18.0.200".parse().unwrap()
            ],
            "spec order kept"
        );
        assert_eq!(s.destinations[0].to_string(), "198.51.100.0/24");
        assert_eq!(s.excluded.len(), 1);
    }

    #[test]
    fn each_bad_input_names_its_field() {
        let cases: Vec<(EgressGatewaySpec, &str)> = vec![
            (
                spec(&[], &["203.0.113.0/24"], &[]),
                "spec.egressIPs must not be empty",
            ),
            (
                spec(&["198.18.0.200"], &[], &[]),
                "spec.destinationCIDRs must not be empty",
            ),
            (
                spec(&["198.18.0.300"], &["203.0.113.0/24"], &[]),
                "spec.egressIPs[0]",
            ),
            (
                spec(&["198.18.0.200"], &["203.0.113.0"], &[]),
                "spec.destinationCIDRs[0]",
            ),
            (
                spec(&["198.18.0.200"], &["203.0.113.7/24"], &[]),
                "host bits set; write 203.0.113.0/24",
            ),
            (
                spec(&["198.18.0.200", "198.18.0.200"], &["203.0.113.0/24"], &[]),
                "spec.egressIPs[1]: \"198.18.0.200\" appears more than once",
            ),
            (
                spec(&["198.18.0.200"], &["203.0.113.0/24"], &["203.0.113.0/33"]),
                "spec.excludedCIDRs[0]",
            ),
            (
                spec(&["127.0.0.1"], &["203.0.113.0/24"], &[]),
                "not a unicast address",
            ),
            (spec(&["2001:db8::1"], &["203.0.113.0/24"], &[]), "IPv6"),
        ];
        for (s, want) in cases {
            let err = parse_spec(&s).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn selector_operators_need_the_right_values() {
        let mut s = spec(&["198.18.0.200"], &["203.0.113.0/24"], &[]);
        s.pod_selector
            .match_expressions
            .push(LabelSelectorRequirement {
                key: "app".into(),
                operator: SelectorOperator::In,
                values: vec![],
            });
        let err = parse_spec(&s).unwrap_err().to_string();
        assert!(
            err.contains("spec.podSelector.matchExpressions[0]"),
            "{err}"
        );
        s.pod_selector.match_expressions[0] = LabelSelectorRequirement {
            key: "app".into(),
            operator: SelectorOperator::Exists,
            values: vec!["x".into()],
        };
        assert!(
            parse_spec(&s)
                .unwrap_err()
                .to_string()
                .contains("takes no values")
        );
    }

    #[test]
    fn label_keys_and_values_outside_the_grammar_are_refused_naming_field_and_value() {
        let base = spec(&["198.18.0.200"], &["203.0.113.0/24"], &[]);
        let with = |edit: &dyn Fn(&mut EgressGatewaySpec)| {
            let mut s = base.clone();
            edit(&mut s);
            parse_spec(&s).unwrap_err().to_string()
        };
        let err = with(&|s| {
            s.namespace_selector
                .match_labels
                .insert("team".into(), "billing team".into());
        });
        assert!(
            err.starts_with(
                "spec.namespaceSelector.matchLabels[team]: \"billing team\" is not a valid label value"
            ),
            "{err}"
        );
        let err = with(&|s| {
            s.pod_selector
                .match_labels
                .insert("app name".into(), "x".into());
        });
        assert!(
            err.starts_with("spec.podSelector.matchLabels: label key \"app name\" is not valid"),
            "{err}"
        );
        let err = with(&|s| {
            s.gateway_node_selector
                .match_expressions
                .push(LabelSelectorRequirement {
                    key: "Zone.Example/zone".into(),
                    operator: SelectorOperator::Exists,
                    values: vec![],
                });
        });
        assert!(
            err.starts_with(
                "spec.gatewayNodeSelector.matchExpressions[0].key: label key \"Zone.Example/zone\""
            ),
            "{err}"
        );
        let err = with(&|s| {
            s.pod_selector
                .match_expressions
                .push(LabelSelectorRequirement {
                    key: "app".into(),
                    operator: SelectorOperator::NotIn,
                    values: vec!["web".into(), "-web".into()],
                });
        });
        assert!(
            err.starts_with(
                "spec.podSelector.matchExpressions[0].values[1]: \"-web\" is not a valid label value"
            ),
            "{err}"
        );
        // the grammar's edge cases that are valid
        let mut ok = base.clone();
        ok.namespace_selector
            .match_labels
            .insert("kubernetes.io/metadata.name".into(), "billing".into());
        ok.pod_selector
            .match_labels
            .insert("empty".into(), String::new());
        assert!(parse_spec(&ok).is_ok());
    }

    #[test]
    fn bad_interface_names_are_refused() {
        let mut s = spec(&["198.18.0.200"], &["203.0.113.0/24"], &[]);
        s.interface = Some("eth0/../x".into());
        assert!(matches!(
            parse_spec(&s),
            Err(SpecError::BadInterface { .. })
        ));
        s.interface = Some("eth1".into());
        assert!(parse_spec(&s).is_ok());
    }

    #[test]
    fn an_exclusion_must_lie_inside_a_destination_and_leave_some_of_it() {
        let spec = |dst: &[&str], excl: &[&str]| crate::api::EgressGatewaySpec {
            namespace_selector: Default::default(),
            pod_selector: Default::default(),
            destination_cidrs: dst.iter().map(|s| s.to_string()).collect(),
            excluded_cidrs: excl.iter().map(|s| s.to_string()).collect(),
            egress_ips: vec!["198.18.0.200".into()],
            gateway_node_selector: Default::default(),
            interface: None,
        };
        assert!(parse_spec(&spec(&["203.0.113.0/24"], &["203.0.113.128/25"])).is_ok());
        let e = parse_spec(&spec(&["203.0.113.0/24"], &["198.51.100.0/24"])).unwrap_err();
        assert!(
            matches!(e, SpecError::ExclusionOutside { index: 0, .. }),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("spec.excludedCIDRs[0]: 198.51.100.0/24")
        );
        // two halves together cover the whole destination
        let e = parse_spec(&spec(
            &["203.0.113.0/24"],
            &["203.0.113.0/25", "203.0.113.128/25"],
        ))
        .unwrap_err();
        assert!(
            matches!(e, SpecError::DestinationExcluded { index: 0, .. }),
            "{e}"
        );
    }
}
