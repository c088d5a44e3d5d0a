use std::collections::BTreeSet;

use super::fixture::*;

fn set(xs: &[&str]) -> BTreeSet<std::net::IpAddr> {
    xs.iter().map(|s| ip(s)).collect()
}

fn cluster() -> Cluster {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("gw1", 11))
    .node(worker("w2", 12))
    .pod(pod("billing", "on-gw", "inv", "gw1", "198.19.11.10"))
    .pod(pod("billing", "on-worker", "inv", "w2", "198.19.12.10"))
    .pod(pod("billing", "unselected", "web", "w2", "198.19.12.11"));
    c
}

#[test]
fn the_gateway_node_hosts_the_ip_and_snats_pods_from_every_node() {
    let plan = cluster().plan();
    let gw1 = plan.node_plan("gw1");
    let hosted = &gw1.hosted[&ip("198.18.0.200")];
    assert_eq!(
        (hosted.gateway.as_str(), hosted.interface.as_str()),
        ("g", "eth1")
    );
    let part = &gw1.gateways["g"];
    assert_eq!(
        part.snat[&ip("198.18.0.200")],
        set(&["198.19.11.10", "198.19.12.10"])
    );
    assert_eq!(part.destinations, vec!["203.0.113.0/24".parse().unwrap()]);
    assert!(part.steer.is_empty() && part.blocked.is_empty());
    assert_eq!(
        part.origins,
        [(ip("198.19.12.10"), ip("198.18.0.12"))].into(),
        "the worker's pod must come from the worker; the gateway's own pod has no origin"
    );
}

#[test]
fn a_pod_whose_node_has_no_address_is_not_snated_on_another_node() {
    let mut c = cluster();
    let mut w2 = worker("w2", 12);
    w2.internal_ip = None;
    c.node(w2);
    let part = &c.plan().node_plan("gw1").gateways["g"];
    assert_eq!(
        part.snat[&ip("198.18.0.200")],
        set(&["198.19.11.10"]),
        "where its packets must come from is unknown: not SNATed (the guard drops them)"
    );
    assert!(part.origins.is_empty());
}

#[test]
fn other_nodes_steer_their_selected_pods_to_the_gateway_node() {
    let plan = cluster().plan();
    let w2 = plan.node_plan("w2");
    assert!(w2.hosted.is_empty());
    let part = &w2.gateways["g"];
    assert_eq!(
        part.steer[&ip("198.18.0.11")],
        set(&["198.19.12.10"]),
        "only the selected pod, to gw1's InternalIP"
    );
    assert!(part.snat.is_empty());
}

#[test]
fn without_a_placed_ip_selected_pods_are_blocked_not_leaked() {
    let mut c = cluster();
    c.index.nodes.get_mut("gw1").unwrap().ready = false;
    let plan = c.plan();
    assert_eq!(
        plan.node_plan("w2").gateways["g"].blocked,
        set(&["198.19.12.10"])
    );
    assert_eq!(
        plan.node_plan("gw1").gateways["g"].blocked,
        set(&["198.19.11.10"])
    );
    assert!(plan.node_plan("gw1").hosted.is_empty());
}

#[test]
fn a_gateway_node_with_no_pods_yet_still_has_the_rule_ready() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("gw1", 11));
    let gw1 = c.plan().node_plan("gw1");
    assert!(gw1.gateways["g"].snat[&ip("198.18.0.200")].is_empty());
}

#[test]
fn pods_of_one_gateway_spread_over_its_ips_and_keep_them() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200", "198.18.0.201"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("gw1", 11))
    .node(gw_node("gw2", 12));
    for i in 0..40u8 {
        c.pod(pod(
            "billing",
            &format!("p{i}"),
            "inv",
            "gw1",
            &format!("198.19.11.{}", i + 10),
        ));
    }
    let plan = c.plan();
    let r = &plan.rollouts["g"];
    let on_200 = r
        .pod_ip
        .values()
        .filter(|e| **e == ip("198.18.0.200"))
        .count();
    assert!((10..=30).contains(&on_200), "{on_200} of 40 pods on .200");
    // A new pod does not move the others.
    c.pod(pod("billing", "late", "inv", "gw1", "198.19.11.99"));
    let again = c.plan();
    for (k, e) in &r.pod_ip {
        assert_eq!(again.rollouts["g"].pod_ip[k], *e, "{k} moved");
    }
    // gw1 hosts one IP and steers the pods hashed to the other to gw2.
    let gw1 = again.node_plan("gw1");
    assert_eq!(gw1.hosted.len(), 1);
    assert_eq!(
        gw1.gateways["g"].steer.keys().copied().collect::<Vec<_>>(),
        vec![ip("198.18.0.12")]
    );
}

#[test]
fn incremental_update_matches_a_full_plan() {
    let mut c = cluster();
    let mut plan = c.plan();
    let newcomer = pod("billing", "new", "inv", "w2", "198.19.12.50");
    let key = newcomer.key.clone();
    c.pod(newcomer);
    let touched = plan.update_pod(&c.index, &key);
    assert_eq!(
        touched.into_iter().collect::<Vec<_>>(),
        vec!["g".to_string()]
    );
    assert_eq!(plan, c.plan());
    c.index.pods.remove(&key);
    plan.update_pod(&c.index, &key);
    assert_eq!(plan, c.plan());
}

#[test]
fn digests_agree_between_controller_and_agent_views() {
    let plan = cluster().plan();
    for node in ["gw1", "w2"] {
        let np = plan.node_plan(node);
        assert_eq!(
            np.gateway_digest("g"),
            plan.expected_digest("g", node),
            "{node}"
        );
    }
    assert_ne!(
        plan.expected_digest("g", "gw1"),
        plan.expected_digest("g", "w2")
    );
}
