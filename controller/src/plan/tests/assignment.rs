use super::fixture::*;
use crate::index::{Ineligible, NodeInterface};
use crate::plan::Unplaced;

fn why(c: &Cluster, gw: &str) -> std::collections::BTreeMap<Ineligible, Vec<String>> {
    match &c.plan().assignments.by_gateway[gw][0].placement {
        Err(Unplaced::NoEligibleNode(why)) => why.clone(),
        other => panic!("expected no eligible node, got {other:?}"),
    }
}

#[test]
fn two_ips_spread_over_two_gateway_nodes() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200", "198.18.0.201"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11))
    .node(gw_node("n2", 12))
    .node(worker("w3", 13));
    let nodes = nodes_of(&c.plan(), "g");
    assert_eq!(nodes.len(), 2);
    assert_ne!(
        nodes[0], nodes[1],
        "one gateway's IPs go to different nodes when possible"
    );
    assert!(nodes.iter().all(|n| n.as_deref() != Some("w3")));
}

#[test]
fn load_is_spread_across_gateways() {
    let mut c = Cluster::new();
    c.node(gw_node("n1", 11)).node(gw_node("n2", 12));
    for i in 0..4 {
        c.gw(gateway(
            &format!("g{i}"),
            i,
            "billing",
            "inv",
            &[&format!("198.18.0.{}", 200 + i)],
            &["203.0.113.0/24"],
        ));
    }
    let plan = c.plan();
    let on_n1 = (0..4)
        .filter(|i| nodes_of(&plan, &format!("g{i}"))[0].as_deref() == Some("n1"))
        .count();
    assert_eq!(on_n1, 2);
}

#[test]
fn each_reason_an_ip_cannot_be_placed_is_reported_per_node() {
    let mut c = Cluster::new();
    let mut not_ready = gw_node("not-ready", 11);
    not_ready.ready = false;
    let mut agent_down = gw_node("agent-down", 12);
    agent_down.agent_alive = false;
    let mut elsewhere = gw_node("elsewhere", 13);
    elsewhere.interfaces = vec![NodeInterface {
        name: "eth1".into(),
        network: "198.51.100.13/24".parse().unwrap(),
    }];
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(not_ready)
    .node(agent_down)
    .node(elsewhere)
    .node(worker("worker", 14));
    let why = why(&c, "g");
    assert_eq!(why[&Ineligible::NotReady], vec!["not-ready"]);
    assert_eq!(why[&Ineligible::AgentDown], vec!["agent-down"]);
    assert_eq!(why[&Ineligible::NoInterface], vec!["elsewhere"]);
    assert_eq!(why[&Ineligible::SelectorMismatch], vec!["worker"]);
}

#[test]
fn an_explicit_interface_must_exist_on_the_node() {
    let mut c = Cluster::new();
    let mut g = gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    );
    g.spec.as_mut().unwrap().interface = Some("bond0".into());
    c.gw(g).node(gw_node("n1", 11));
    assert_eq!(
        why(&c, "g")[&Ineligible::MissingInterface("bond0".into())],
        vec!["n1"],
        "the reason names the interface the spec asks for"
    );
    let mut n2 = gw_node("n2", 12);
    n2.interfaces.push(NodeInterface {
        name: "bond0".into(),
        network: "198.51.100.12/24".parse().unwrap(),
    });
    c.node(n2);
    let plan = c.plan();
    let pl = plan.assignments.by_gateway["g"][0]
        .placement
        .as_ref()
        .unwrap();
    assert_eq!((pl.node.as_str(), pl.interface.as_str()), ("n2", "bond0"));
}

#[test]
fn the_interface_whose_subnet_holds_the_ip_is_chosen() {
    let mut c = Cluster::new();
    let mut n1 = gw_node("n1", 11);
    n1.interfaces.insert(
        0,
        NodeInterface {
            name: "eth0".into(),
            network: "198.51.100.11/24".parse().unwrap(),
        },
    );
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(n1);
    assert_eq!(
        c.plan().assignments.by_gateway["g"][0]
            .placement
            .as_ref()
            .unwrap()
            .interface,
        "eth1"
    );
}

#[test]
fn a_recorded_assignment_stays_while_its_node_is_eligible_and_nothing_flaps_back() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11));
    let first = c.plan();
    c.record(&first.assignments);
    assert_eq!(nodes_of(&first, "g"), vec![Some("n1".into())]);
    // A new, empty node arrives: nothing moves to it.
    c.node(gw_node("n0", 10));
    let second = c.plan();
    assert_eq!(nodes_of(&second, "g"), vec![Some("n1".into())]);
    // n1's agent dies: the IP moves to n0.
    c.index.nodes.get_mut("n1").unwrap().agent_alive = false;
    let third = c.plan();
    assert_eq!(nodes_of(&third, "g"), vec![Some("n0".into())]);
    c.record(&third.assignments);
    // n1 recovers: the IP stays on n0.
    c.index.nodes.get_mut("n1").unwrap().agent_alive = true;
    assert_eq!(nodes_of(&c.plan(), "g"), vec![Some("n0".into())]);
}

#[test]
fn an_agent_back_with_a_new_epoch_gets_an_assignment_for_that_epoch() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11));
    let first = c.plan();
    c.record(&first.assignments);
    c.index.nodes.get_mut("n1").unwrap().agent_epoch = 2;
    let pl = c.plan().assignments.by_gateway["g"][0]
        .placement
        .clone()
        .unwrap();
    assert_eq!((pl.node.as_str(), pl.epoch), ("n1", 2));
    // The agent, reading the old status, does not host the IP until status carries epoch 2,
    // but keeps the placement (marked stale) so its pods keep the IP in every view.
    let from_status = crate::plan::assign::from_status(&c.index, Some(("n1", 2)));
    let stale = from_status.by_gateway["g"][0].placement.clone().unwrap();
    assert!(stale.stale_epoch);
    let from_status = crate::plan::assign::from_status(&c.index, Some(("n1", 1)));
    assert!(
        !from_status.by_gateway["g"][0]
            .placement
            .clone()
            .unwrap()
            .stale_epoch
    );
    // Planned from the stale view, n1 hosts nothing and blocks its pods hashing to the IP.
    c.pod(pod("billing", "p1", "inv", "n1", "198.19.1.10"));
    let view = crate::plan::plan_with(
        &c.index,
        crate::plan::assign::from_status(&c.index, Some(("n1", 2))),
    );
    let n1 = view.node_plan("n1");
    assert!(n1.hosted.is_empty());
    let g = &n1.gateways["g"];
    assert!(g.snat.is_empty());
    assert!(g.blocked.contains(&"198.19.1.10".parse().unwrap()));
}

#[test]
fn an_egress_ip_the_cluster_uses_or_reserves_is_never_placed() {
    use crate::plan::Refusal;
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        // n1's InternalIP, the LAN's broadcast address, a free address
        &["198.18.0.11", "198.18.0.255", "198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11))
    .node(gw_node("n2", 12));
    let plan = c.plan();
    let ps = &plan.assignments.by_gateway["g"];
    assert!(matches!(
        &ps[0].placement,
        Err(Unplaced::Refused(Refusal::NodeAddress { node, .. })) if node == "n1"
    ));
    assert!(matches!(
        &ps[1].placement,
        Err(Unplaced::Refused(Refusal::BroadcastAddress { .. }))
    ));
    assert!(ps[2].placement.is_ok(), "a free address is placed");
    for n in ["n1", "n2"] {
        let hosted = plan.node_plan(n).hosted;
        assert!(
            !hosted.contains_key(&ip("198.18.0.11")) && !hosted.contains_key(&ip("198.18.0.255")),
            "{n} hosts a refused IP: {hosted:?}"
        );
    }
}

#[test]
fn a_placed_ip_that_becomes_a_node_address_leaves_its_node() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11));
    let before = c.plan();
    assert!(before.assignments.by_gateway["g"][0].placement.is_ok());
    c.record(&before.assignments);
    // A node joins whose InternalIP is the egress IP: the recorded placement is not kept.
    c.node(worker("n9", 200));
    assert!(matches!(
        &c.plan().assignments.by_gateway["g"][0].placement,
        Err(Unplaced::Refused(_))
    ));
}

#[test]
fn the_controllers_own_last_write_outranks_a_lagging_watch() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11))
    .node(gw_node("n0", 10));
    let first = c.plan();
    c.record(&first.assignments);
    let host = nodes_of(&first, "g")[0].clone().unwrap();
    let other = if host == "n1" { "n0" } else { "n1" };
    // The host dies and the controller writes the failover...
    c.index.nodes.get_mut(&host).unwrap().agent_alive = false;
    let failover = c.plan();
    assert_eq!(nodes_of(&failover, "g"), vec![Some(other.to_string())]);
    let written = crate::api::EgressGatewayStatus {
        assignments: vec![crate::api::IpAssignment {
            egress_ip: "198.18.0.200".into(),
            node: Some(other.into()),
            interface: Some("eth1".into()),
            epoch: Some(1),
            since: None,
        }],
        ..Default::default()
    };
    // ...the host recovers while the watch still shows the old status (it lags): planned
    // from the watch's copy, the IP would flap back; from the controller's write, it stays.
    c.index.nodes.get_mut(&host).unwrap().agent_alive = true;
    assert_eq!(
        nodes_of(&c.plan(), "g"),
        vec![Some(host.clone())],
        "the lagging copy alone flaps back"
    );
    c.index.gateways.get_mut("g").unwrap().record_from(&written);
    assert_eq!(nodes_of(&c.plan(), "g"), vec![Some(other.to_string())]);
}
