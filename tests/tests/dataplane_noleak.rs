//! The no-leak guard in the kernel (DESIGN.md, "Invariants", 1): a guarded pod's traffic to
//! its gateway's destinations leaves SNATed to an egress IP, steered, or not at all — also
//! when the node that receives steered traffic will not SNAT it (fenced, or a view skew).
//! Probed against the open server, which accepts any source: a leak shows as a node address,
//! not as a refused connection.

use std::net::Ipv4Addr;

use egressgw::agent::decide;
use egressgw::dataplane::{CounterKind, Dataplane};
use egressgw_tests::testbed::{
    ConnectError, GatewaySpec, OPEN_SERVER, Testbed, all_plans, apply_all, dataplanes, node_plan,
};

const E1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

fn testbed() -> Testbed {
    Testbed::builder()
        .nodes(3)
        .pods_per_node(2)
        .allow(E1)
        .build()
        .expect("testbed")
}

fn dropped(counters: &[egressgw::dataplane::RuleCounter]) -> u64 {
    counters
        .iter()
        .filter(|c| matches!(c.kind, CounterKind::LeakDropped | CounterKind::Blocked))
        .map(|c| c.packets)
        .sum()
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_fenced_gateway_node_drops_steered_and_local_traffic_and_keeps_its_table() {
    let tb = testbed();
    let (remote, local) = (tb.pod(1, 0), tb.pod(2, 0));
    let gw = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .pod(remote.ip(), 1)
        .pod(local.ip(), 2);
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &all_plans(&tb, std::slice::from_ref(&gw)));
    assert_eq!(remote.connect(OPEN_SERVER).unwrap(), Ok(E1));
    assert_eq!(local.connect(OPEN_SERVER).unwrap(), Ok(E1));

    // node-2's agent fences: no address, SNAT turned into drops, table kept
    let mut fenced = node_plan(&tb, 2, &[gw]);
    decide::fence(&mut fenced);
    let dp2 = dps.get_mut(&2).unwrap();
    let before = dropped(&dp2.counters().unwrap());
    dp2.apply(&fenced).unwrap();

    for pod in [&remote, &local] {
        let got = pod.connect(OPEN_SERVER).unwrap();
        assert_eq!(
            got,
            Err(ConnectError::Timeout),
            "pod {} must be dropped, not leave from a node address",
            pod.ip()
        );
    }
    let node_ips: Vec<Ipv4Addr> = tb.nodes().iter().map(|n| n.ip()).collect();
    let leaked: Vec<_> = tb
        .server_peers(OPEN_SERVER)
        .into_iter()
        .filter(|p| node_ips.contains(p.ip()))
        .collect();
    assert!(
        leaked.is_empty(),
        "the open server saw node addresses: {leaked:?}"
    );
    let dp2 = dps.get_mut(&2).unwrap();
    assert!(
        dropped(&dp2.counters().unwrap()) > before,
        "the drop counters rise"
    );
    let snap = dp2.snapshot().unwrap();
    assert!(snap.table.is_some(), "the fenced node keeps its table");
    assert!(
        snap.routing.addresses.iter().all(|a| a.ip != E1),
        "the fenced node holds no egress IP"
    );
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_gateway_node_that_will_not_snat_a_steered_pod_drops_it() {
    let tb = testbed();
    let pod = tb.pod(1, 0);
    // node-1 (one view) steers the pod to node-2; node-2 (another view) hosts E1 but does not
    // SNAT that pod yet, and node-3 is a candidate that receives it by mistake
    let source_view = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .pod(pod.ip(), 1);
    let gateway_view = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .pod(tb.pod(3, 1).ip(), 3)
        .candidate(2);
    let mut dps = dataplanes(&tb);
    let plans = [
        (1, node_plan(&tb, 1, std::slice::from_ref(&source_view))),
        (2, {
            let mut p = node_plan(&tb, 2, std::slice::from_ref(&gateway_view));
            // node-2 knows the pod is selected (it guards it) but has it in no SNAT set
            p.gateways
                .get_mut("billing")
                .unwrap()
                .guard
                .insert(pod.ip().into());
            p
        }),
    ]
    .into_iter()
    .collect();
    apply_all(&mut dps, &plans);
    assert_eq!(
        pod.connect(OPEN_SERVER).unwrap(),
        Err(ConnectError::Timeout)
    );
    assert!(
        !tb.server_peers(OPEN_SERVER)
            .iter()
            .any(|p| *p.ip() == tb.node(2).ip()),
        "node-2 forwarded the steered pod through its masquerade"
    );
    assert!(dropped(&dps.get_mut(&2).unwrap().counters().unwrap()) > 0);
    // the pod node-2 does SNAT still leaves with E1; an unselected pod is untouched
    assert_eq!(
        tb.pod(2, 1).connect(OPEN_SERVER).unwrap(),
        Ok(tb.node(2).ip())
    );
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_candidate_drops_a_steered_pod_it_has_not_heard_of_by_the_source_nodes_pod_range() {
    let tb = testbed();
    let pod = tb.pod(1, 0);
    let source_view = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .pod(pod.ip(), 1);
    // node-2 hosts E1 and knows no pod of the gateway at all, only the other nodes' ranges
    let gateway_view = GatewaySpec::new("billing", &["203.0.113.0/24"]).egress(E1, 2);
    let mut gw_plan = node_plan(&tb, 2, std::slice::from_ref(&gateway_view));
    gw_plan.gateways.get_mut("billing").unwrap().guard_remote = true;
    gw_plan.remote_pod_ranges = vec![
        tb.node(1).pod_cidr().parse().unwrap(),
        tb.node(3).pod_cidr().parse().unwrap(),
    ];
    let mut dps = dataplanes(&tb);
    let plans = [
        (1, node_plan(&tb, 1, std::slice::from_ref(&source_view))),
        (2, gw_plan),
    ]
    .into_iter()
    .collect();
    apply_all(&mut dps, &plans);
    assert_eq!(
        pod.connect(OPEN_SERVER).unwrap(),
        Err(ConnectError::Timeout)
    );
    assert!(
        !tb.server_peers(OPEN_SERVER)
            .iter()
            .any(|p| *p.ip() == tb.node(2).ip()),
        "node-2 forwarded an unknown steered pod through its masquerade"
    );
    // node-2's own unselected pod is not in a remote range: it still leaves as before
    assert_eq!(
        tb.pod(2, 1).connect(OPEN_SERVER).unwrap(),
        Ok(tb.node(2).ip())
    );
}
