//! Explanations for the situations an operator asks about.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::api::{EgressGatewaySpec, LabelSelector};
use crate::index::gateway::parse_spec;
use crate::index::{Gateway, Node, NodeInterface, Pod, RecordedAssignment};
use crate::plan::assign::assign;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: vec![],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Gateway selecting `app=<app>` in `team=<team>` namespaces, older when `age` is smaller;
/// `recorded` is what status says: (ip, node).
fn gateway(
    name: &str,
    age: i64,
    team: &str,
    app: &str,
    ips: &[&str],
    dst: &[&str],
    recorded: &[(&str, &str)],
) -> Gateway {
    let spec = EgressGatewaySpec {
        namespace_selector: sel(&[("team", team)]),
        pod_selector: sel(&[("app", app)]),
        destination_cidrs: dst.iter().map(|s| s.to_string()).collect(),
        excluded_cidrs: vec![],
        egress_ips: ips.iter().map(|s| s.to_string()).collect(),
        gateway_node_selector: sel(&[("egressgw.io/gateway", "true")]),
        interface: None,
    };
    Gateway {
        name: name.into(),
        generation: 1,
        created: Timestamp::from_second(1_700_000_000 + age).unwrap(),
        spec: parse_spec(&spec),
        fallback: None,
        recorded: recorded
            .iter()
            .map(|(i, n)| {
                (
                    ip(i),
                    RecordedAssignment {
                        node: n.to_string(),
                        interface: Some("eth1".into()),
                        epoch: Some(1),
                        since: None,
                    },
                )
            })
            .collect(),
    }
}

fn node(name: &str, n: u8, gateway: bool) -> Node {
    Node {
        name: name.into(),
        labels: if gateway {
            labels(&[("egressgw.io/gateway", "true")])
        } else {
            BTreeMap::new()
        },
        ready: true,
        agent_alive: true,
        agent_epoch: 1,
        agent_idle: false,
        internal_ip: Some(IpAddr::from([198, 18, 0, n])),
        addresses: vec![crate::index::NodeAddress {
            kind: crate::index::NodeAddressKind::InternalIp,
            ip: IpAddr::from([198, 18, 0, n]),
        }],
        pod_cidrs: vec![],
        agent_not_ready_taint: false,
        interfaces: vec![NodeInterface {
            name: "eth1".into(),
            network: format!("198.18.0.{n}/24").parse().unwrap(),
        }],
    }
}

fn cluster(gateways: Vec<Gateway>) -> (ClusterIndex, PodKey) {
    let mut index = ClusterIndex::default();
    index
        .namespaces
        .insert("billing".into(), labels(&[("team", "billing")]));
    for n in [
        node("node-1", 11, true),
        node("node-2", 12, true),
        node("node-3", 13, false),
    ] {
        index.nodes.insert(n.name.clone(), n);
    }
    let key = PodKey::new("billing", "invoicer-0");
    index.pods.insert(
        key.clone(),
        Pod {
            key: key.clone(),
            labels: labels(&[("app", "invoicer")]).into(),
            node: Some("node-3".into()),
            ips: vec![ip("198.19.3.10")],
            running: true,
            host_network: false,
            terminating: false,
            created: None,
        },
    );
    for g in gateways {
        index.gateways.insert(g.name.clone(), g);
    }
    (index, key)
}

fn no_status() -> BTreeMap<String, EgressGatewayStatus> {
    BTreeMap::new()
}

#[test]
fn a_selected_pod_on_another_node_is_steered_to_the_ip_status_records() {
    let (index, key) = cluster(vec![gateway(
        "billing",
        1,
        "billing",
        "invoicer",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
        &[("198.18.0.200", "node-2")],
    )]);
    let e = explain(&index, &key, &no_status(), None).unwrap();
    assert_eq!(e.uses.len(), 1);
    match &e.uses[0].route {
        Route::Egress {
            ip: egress,
            node,
            next_hop,
            ..
        } => {
            assert_eq!(
                (*egress, node.as_str(), *next_hop),
                (ip("198.18.0.200"), "node-2", Some(ip("198.18.0.12")))
            );
        }
        other => panic!("{other:?}"),
    }
    let text = render(&e);
    assert!(
        text.contains("Traffic to 203.0.113.0/24 leaves from egress IP 198.18.0.200"),
        "{text}"
    );
    assert!(
        text.contains(
            "node node-3 steers it to node node-2 (198.18.0.12), which SNATs it to 198.18.0.200"
        ),
        "{text}"
    );
}

#[test]
fn selectors_that_do_not_match_are_named_requirement_by_requirement() {
    let (index, key) = cluster(vec![
        gateway(
            "payments",
            1,
            "payments",
            "invoicer",
            &["198.18.0.200"],
            &["203.0.113.0/24"],
            &[],
        ),
        gateway(
            "web",
            2,
            "billing",
            "web",
            &["198.18.0.201"],
            &["203.0.113.0/24"],
            &[],
        ),
    ]);
    let e = explain(&index, &key, &no_status(), None).unwrap();
    assert!(e.uses.is_empty());
    let text = render(&e);
    assert!(text.contains("payments   namespace billing does not match namespaceSelector team=payments (has team=billing)\n"), "{text}");
    assert!(
        text.contains("web        pod does not match podSelector app=web (has app=invoicer)\n"),
        "{text}"
    );
    assert!(
        text.contains("All traffic of this pod leaves as it would without egressgw"),
        "{text}"
    );
}

#[test]
fn the_loser_of_a_pod_conflict_names_the_older_winner() {
    let (index, key) = cluster(vec![
        gateway(
            "older",
            1,
            "billing",
            "invoicer",
            &["198.18.0.200"],
            &["203.0.113.0/24"],
            &[("198.18.0.200", "node-1")],
        ),
        gateway(
            "newer",
            2,
            "billing",
            "invoicer",
            &["198.18.0.201"],
            &["203.0.113.0/25"],
            &[("198.18.0.201", "node-2")],
        ),
        gateway(
            "disjoint",
            3,
            "billing",
            "invoicer",
            &["198.18.0.202"],
            &["198.51.100.0/24"],
            &[("198.18.0.202", "node-2")],
        ),
    ]);
    let e = explain(&index, &key, &no_status(), None).unwrap();
    let used: Vec<&str> = e.uses.iter().map(|u| u.gateway.as_str()).collect();
    assert_eq!(
        used,
        ["older", "disjoint"],
        "non-overlapping destinations are used side by side"
    );
    assert_eq!(
        e.others,
        vec![(
            "newer".to_string(),
            Verdict::Lost {
                winner: "older".into()
            }
        )]
    );
    assert!(
        render(&e).contains("newer   conflict lost: older gateway older also selects this pod")
    );
}

#[test]
fn an_ip_without_a_node_says_which_nodes_are_ineligible_and_why() {
    let (mut index, key) = cluster(vec![gateway(
        "billing",
        1,
        "billing",
        "invoicer",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
        &[],
    )]);
    index.nodes.get_mut("node-1").unwrap().ready = false;
    index.nodes.get_mut("node-2").unwrap().agent_alive = false;
    let e = explain(&index, &key, &no_status(), None).unwrap();
    assert!(e.needs_current_state(), "status alone cannot say why");
    let current = assign(&index);
    let e = explain(&index, &key, &no_status(), Some(&current)).unwrap();
    assert!(!e.needs_current_state());
    let text = render(&e);
    assert!(
        text.contains(
            "Traffic to 203.0.113.0/24 is DROPPED: gateway billing has no egress IP on any node"
        ),
        "{text}"
    );
    assert!(
        text.contains("198.18.0.200: no eligible node (node-3: does not match gatewayNodeSelector; node-1: is not Ready; node-2: has no live egressgw agent)"),
        "{text}"
    );
}

#[test]
fn an_ip_claimed_by_an_older_gateway_is_named() {
    let (index, key) = cluster(vec![
        gateway(
            "first",
            1,
            "other",
            "x",
            &["198.18.0.200"],
            &["198.51.100.0/24"],
            &[("198.18.0.200", "node-1")],
        ),
        gateway(
            "second",
            2,
            "billing",
            "invoicer",
            &["198.18.0.200"],
            &["203.0.113.0/24"],
            &[],
        ),
    ]);
    let e = explain(&index, &key, &no_status(), None).unwrap();
    assert_eq!(
        e.uses[0].route,
        Route::Dropped {
            ips: vec![(ip("198.18.0.200"), IpTrouble::ClaimedBy("first".into()))]
        }
    );
}

#[test]
fn a_placement_the_controller_has_not_written_points_at_the_controller() {
    let (index, key) = cluster(vec![gateway(
        "billing",
        1,
        "billing",
        "invoicer",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
        &[],
    )]);
    let e = explain(&index, &key, &no_status(), Some(&assign(&index))).unwrap();
    assert!(
        matches!(&e.uses[0].route, Route::Dropped { ips } if matches!(&ips[0].1, IpTrouble::NotYetRecorded { eligible } if eligible == "node-1"))
    );
}

#[test]
fn a_pod_without_an_ip_is_told_so_with_the_gateways_waiting_for_it() {
    let (mut index, key) = cluster(vec![gateway(
        "billing",
        1,
        "billing",
        "invoicer",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
        &[],
    )]);
    index.pods.get_mut(&key).unwrap().ips.clear();
    let e = explain(&index, &key, &no_status(), None).unwrap();
    assert_eq!(e.not_routable, vec!["it has no IP yet".to_string()]);
    assert_eq!(
        e.others,
        vec![("billing".to_string(), Verdict::WouldSelect)]
    );
}

#[test]
fn invalid_gateways_are_listed_with_the_field_at_fault() {
    let mut bad = gateway(
        "broken",
        1,
        "billing",
        "invoicer",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
        &[],
    );
    bad.spec = parse_spec(&EgressGatewaySpec {
        namespace_selector: LabelSelector::default(),
        pod_selector: LabelSelector::default(),
        destination_cidrs: vec!["203.0.113.7/24".into()],
        excluded_cidrs: vec![],
        egress_ips: vec!["198.18.0.200".into()],
        gateway_node_selector: LabelSelector::default(),
        interface: None,
    });
    let (index, key) = cluster(vec![bad]);
    let text = render(&explain(&index, &key, &no_status(), None).unwrap());
    assert!(
        text.contains(
            "broken   invalid spec: spec.destinationCIDRs[0]: \"203.0.113.7/24\" has host bits set"
        ),
        "{text}"
    );
}

#[test]
fn an_unknown_pod_has_no_explanation() {
    let (index, _) = cluster(vec![]);
    assert!(explain(&index, &PodKey::new("billing", "nope"), &no_status(), None).is_none());
}

#[test]
fn an_ip_the_cluster_refuses_is_explained_with_the_reason() {
    let (index, key) = cluster(vec![gateway(
        "billing",
        1,
        "billing",
        "invoicer",
        &["198.18.0.12"],
        &["203.0.113.0/24"],
        &[],
    )]);
    let current = assign(&index);
    let text = render(&explain(&index, &key, &no_status(), Some(&current)).unwrap());
    assert!(
        text.contains("198.18.0.12: refused: it is the InternalIP of node node-2"),
        "{text}"
    );
}
