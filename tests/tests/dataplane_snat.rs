//! The dataplane with real TCP traffic: which source address the legacy server sees.

use std::net::Ipv4Addr;

use egressgw::dataplane::{CounterKind, Dataplane};
use egressgw_tests::testbed::{
    ConnectError, GatewaySpec, OPEN_SERVER, OTHER_SERVER, PROTECTED_SERVER, Testbed, all_plans,
    apply_all, dataplanes,
};

const E1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const E2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 201);

fn testbed() -> Testbed {
    Testbed::builder()
        .nodes(3)
        .pods_per_node(2)
        .allow(E1)
        .allow(E2)
        .build()
        .expect("testbed")
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn selected_pod_on_the_gateway_node_leaves_with_the_egress_ip() {
    let tb = testbed();
    let pod = tb.pod(2, 0);
    assert_eq!(
        pod.connect(PROTECTED_SERVER).unwrap(),
        Err(ConnectError::Refused),
        "before: node IP, rejected"
    );

    let gw = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .pod(pod.ip(), 2);
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &all_plans(&tb, &[gw]));

    assert_eq!(pod.connect(PROTECTED_SERVER).unwrap(), Ok(E1));
    assert!(
        tb.server_peers(PROTECTED_SERVER)
            .iter()
            .any(|p| *p.ip() == E1)
    );

    let counters = dps.get_mut(&2).unwrap().counters().unwrap();
    let snat = counters
        .iter()
        .find(|c| {
            c.kind
                == CounterKind::Snat {
                    egress_ip: E1.into(),
                }
        })
        .expect("snat counter");
    assert_eq!(snat.gateway.as_deref(), Some("billing"));
    assert!(snat.packets > 0 && snat.bytes > 0, "{snat:?}");
    let conns = counters
        .iter()
        .find(|c| {
            c.kind
                == CounterKind::SnatConnections {
                    egress_ip: E1.into(),
                }
        })
        .unwrap();
    assert_eq!(conns.packets, 1, "one connection SNATed: {conns:?}");
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn selected_pod_on_another_node_is_steered_and_leaves_with_the_egress_ip() {
    let tb = testbed();
    let pod = tb.pod(1, 0);
    let gw = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .pod(pod.ip(), 1);
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &all_plans(&tb, &[gw]));

    // node-1 masquerades its pods (the CNI rule), yet the server sees the egress IP
    assert_eq!(pod.connect(PROTECTED_SERVER).unwrap(), Ok(E1));
    let steer = dps.get_mut(&1).unwrap().counters().unwrap();
    let c = steer
        .iter()
        .find(|c| {
            c.kind
                == CounterKind::Steer {
                    next_hop: tb.node(2).ip().into(),
                }
        })
        .expect("steer counter");
    assert!(c.packets > 0, "{c:?}");
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn unselected_pod_leaves_with_its_node_ip_and_is_rejected() {
    let tb = testbed();
    let gw = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .pod(tb.pod(1, 0).ip(), 1)
        .pod(tb.pod(2, 0).ip(), 2);
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &all_plans(&tb, &[gw]));

    for (node, pod) in [(1, tb.pod(1, 1)), (2, tb.pod(2, 1)), (3, tb.pod(3, 0))] {
        assert_eq!(
            pod.connect(PROTECTED_SERVER).unwrap(),
            Err(ConnectError::Refused),
            "pod {} on node {node}",
            pod.ip()
        );
        assert_eq!(
            pod.connect(OPEN_SERVER).unwrap(),
            Ok(tb.node(node).ip()),
            "pod {} is masqueraded",
            pod.ip()
        );
    }
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn traffic_outside_destinations_or_inside_exclusions_is_not_snated() {
    let tb = testbed();
    let (steered, local) = (tb.pod(1, 0), tb.pod(2, 0));
    let gw = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .excluded(&["203.0.113.128/25"])
        .egress(E1, 2)
        .pod(steered.ip(), 1)
        .pod(local.ip(), 2);
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &all_plans(&tb, &[gw]));

    for (pod, node) in [(steered, 1), (local, 2)] {
        assert_eq!(
            pod.connect(PROTECTED_SERVER).unwrap(),
            Ok(E1),
            "inside destinations"
        );
        assert_eq!(
            pod.connect(OPEN_SERVER).unwrap(),
            Ok(tb.node(node).ip()),
            "excluded: node IP"
        );
        assert_eq!(
            pod.connect(OTHER_SERVER).unwrap(),
            Ok(tb.node(node).ip()),
            "outside destinations: node IP"
        );
    }
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn two_egress_ips_on_two_nodes_carry_the_pods_the_plan_gives_them() {
    let tb = testbed();
    // pod i leaves with egress IP i % 2: E1 on node-2, E2 on node-3
    let order = [
        tb.pod(1, 0),
        tb.pod(1, 1),
        tb.pod(2, 0),
        tb.pod(3, 0),
        tb.pod(2, 1),
        tb.pod(3, 1),
    ];
    let mut gw = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .egress(E2, 3);
    for p in order {
        gw = gw.pod(p.ip(), p.node());
    }
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &all_plans(&tb, &[gw]));

    for (i, pod) in order.iter().enumerate() {
        let want = if i % 2 == 0 { E1 } else { E2 };
        assert_eq!(
            pod.connect(PROTECTED_SERVER).unwrap(),
            Ok(want),
            "pod {} (#{i})",
            pod.ip()
        );
    }
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn blocked_pod_traffic_to_the_destinations_is_dropped() {
    let tb = testbed();
    let blocked = tb.pod(1, 0);
    // a gateway without any egress IP: its pods must not leak from the node address
    let gw = GatewaySpec::new("billing", &["203.0.113.0/25"]).pod(blocked.ip(), 1);
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &all_plans(&tb, &[gw]));

    assert_eq!(
        blocked.connect(PROTECTED_SERVER).unwrap(),
        Err(ConnectError::Timeout),
        "dropped, not rejected by the firewall"
    );
    assert_eq!(
        blocked.connect(OPEN_SERVER).unwrap(),
        Ok(tb.node(1).ip()),
        "other destinations still work"
    );
    assert_eq!(
        tb.pod(1, 1).connect(PROTECTED_SERVER).unwrap(),
        Err(ConnectError::Refused),
        "unselected pod reaches the firewall"
    );
    let counters = dps.get_mut(&1).unwrap().counters().unwrap();
    let c = counters
        .iter()
        .find(|c| c.kind == CounterKind::Blocked)
        .expect("blocked counter");
    assert!(c.packets > 0, "{c:?}");
}
