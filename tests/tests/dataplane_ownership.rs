//! Addresses that are not ours (issue 15, item 2): an address equal to an egress IP that the
//! node already holds without egressgw having added it (a keepalived or kube-vip VIP) is never
//! adopted — not recorded, not refreshed, not removed on a move or on cleanup — and the
//! placement fails closed: the pods that would leave with it are dropped.

use std::net::{IpAddr, Ipv4Addr};

use egressgw::dataplane::{Dataplane, DataplaneConfig, KernelDataplane};
use egressgw_tests::testbed::{
    ConnectError, GatewaySpec, Node, OPEN_SERVER, Testbed, all_plans, apply_all, dataplanes,
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

/// The line of `ip -d addr` output for E1/32 on eth0, if any.
fn e1_line(node: &Node) -> Option<String> {
    let out = node
        .netns()
        .ip(&["-d", "-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        if l.contains(&format!("inet {E1}/32")) {
            let lifetimes = lines.next().unwrap_or_default();
            return Some(format!("{} | {}", l.trim(), lifetimes.trim()));
        }
    }
    None
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_preexisting_slash_32_equal_to_an_egress_ip_is_never_adopted_moved_or_cleaned_up() {
    let tb = testbed();
    let vip = tb.node(2);
    vip.netns()
        .ip(&["addr", "add", &format!("{E1}/32"), "dev", "eth0"])
        .unwrap();
    let foreign = e1_line(vip).expect("the VIP is there");
    assert!(foreign.contains("forever"), "{foreign}");

    let pod = tb.pod(2, 0);
    let gw = |node| {
        GatewaySpec::new("billing", &["203.0.113.0/24"])
            .egress(E1, node)
            .pod(pod.ip(), 2)
    };
    let mut dps = dataplanes(&tb);
    let reports = apply_all(&mut dps, &all_plans(&tb, &[gw(2)]));
    let refused = &reports[&2].foreign_addresses;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].ip, refused[0].interface.as_str()), (E1, "eth0"));
    assert!(reports[&2].addresses_added.is_empty());
    // What node-2 reports of its kernel (issue 14.8): its gateway differs from the plan, E1
    // is absent, held by an address egressgw did not add, on eth0.
    let truth = dps[&2]
        .truth()
        .unwrap()
        .expect("a kernel report after an apply");
    assert!(!truth.addresses.contains(&E1), "{truth:?}");
    let differs: Vec<_> = truth.differs.values().collect();
    assert_eq!(differs.len(), 1, "{truth:?}");
    assert_eq!(differs[0].missing, [E1].into());
    assert_eq!(differs[0].foreign, [(E1, "eth0".to_string())].into());
    assert!(
        !differs[0].table_differs,
        "the table is as rendered: {truth:?}"
    );
    let snap = dps[&2].snapshot().unwrap();
    assert!(
        !snap.table.as_ref().unwrap().hosted().contains(&E1),
        "a foreign address is never recorded as ours (nor guarded)"
    );
    assert_eq!(e1_line(vip).as_deref(), Some(foreign.as_str()));
    // the pod that would leave with E1 is dropped, never let out with another source
    assert_eq!(
        pod.connect(OPEN_SERVER).unwrap(),
        Err(ConnectError::Timeout)
    );

    // lifetime refreshes pass it by, on this kernel and without IFA_PROTO alike
    let refreshing = KernelDataplane::new(DataplaneConfig {
        address_lifetime_secs: Some(30),
        ..DataplaneConfig::in_netns(vip.netns_path())
    })
    .unwrap();
    refreshing.refresh_lifetimes().unwrap();
    assert_eq!(e1_line(vip).as_deref(), Some(foreign.as_str()));

    // E1 moves to node-3: node-2 leaves the VIP alone, node-3 holds E1 as ours
    let reports = apply_all(&mut dps, &all_plans(&tb, &[gw(3)]));
    assert!(reports[&2].addresses_removed.is_empty());
    assert_eq!(reports[&3].addresses_added, [IpAddr::V4(E1)]);
    let truth = dps[&3].truth().unwrap().expect("a kernel report");
    assert!(
        truth.addresses.contains(&E1) && truth.differs.is_empty(),
        "{truth:?}"
    );
    assert!(dps[&2].truth().unwrap().unwrap().differs.is_empty());
    assert_eq!(e1_line(vip).as_deref(), Some(foreign.as_str()));
    assert!(e1_line(tb.node(3)).is_some());

    // cleanup on every node: ours goes, the VIP stays
    for dp in dps.values_mut() {
        dp.cleanup().unwrap();
    }
    let mut fresh = KernelDataplane::new(DataplaneConfig::in_netns(vip.netns_path())).unwrap();
    assert!(fresh.cleanup().unwrap().addresses_removed.is_empty());
    assert_eq!(e1_line(vip).as_deref(), Some(foreign.as_str()));
    assert!(e1_line(tb.node(3)).is_none(), "our own E1 is cleaned up");
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn our_own_address_is_recognised_without_the_protocol_tag_after_a_restart() {
    let tb = testbed();
    let gw = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .pod(tb.pod(2, 0).ip(), 2);
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &all_plans(&tb, std::slice::from_ref(&gw)));
    // as an old kernel would show it: the same address without IFA_PROTO
    let node = tb.node(2);
    node.netns()
        .ip(&["addr", "del", &format!("{E1}/32"), "dev", "eth0"])
        .unwrap();
    node.netns()
        .ip(&["addr", "add", &format!("{E1}/32"), "dev", "eth0"])
        .unwrap();
    assert!(!e1_line(node).unwrap().contains("proto"));
    // a restarted agent (refreshing lifetimes) recovers its record from the hosted set of
    // its table: it never added this address itself
    drop(dps);
    let mut dps = dataplanes(&tb);
    dps.insert(
        2,
        KernelDataplane::new(DataplaneConfig {
            address_lifetime_secs: Some(30),
            ..DataplaneConfig::in_netns(node.netns_path())
        })
        .unwrap(),
    );
    let reports = apply_all(&mut dps, &all_plans(&tb, std::slice::from_ref(&gw)));
    assert!(
        reports[&2].foreign_addresses.is_empty(),
        "{:?}",
        reports[&2]
    );
    assert!(reports[&2].addresses_added.is_empty(), "{:?}", reports[&2]);
    assert_eq!(dps[&2].refresh_lifetimes().unwrap(), 1);
    assert!(
        !e1_line(node).unwrap().contains("forever"),
        "the lifetime is ours to extend"
    );
    // and a move removes it as ours
    let moved = GatewaySpec::new("billing", &["203.0.113.0/24"]).egress(E1, 3);
    let reports = apply_all(&mut dps, &all_plans(&tb, &[moved]));
    assert_eq!(reports[&2].addresses_removed, [IpAddr::V4(E1)]);
}
