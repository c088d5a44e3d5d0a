//! The start-up guard (issue 18): a testbed or control plane refuses to start, creating
//! nothing, when its ranges overlap an address or route of the namespace it starts from.
//!
//! Each test plays "the root namespace" with a fresh network namespace, entered by the thread
//! that starts the testbed or control plane, so the machine's own network is never touched.

use egressgw_tests::control_plane::{ControlPlane, ControlPlaneError};
use egressgw_tests::testbed::netns::unique_prefix;
use egressgw_tests::testbed::ranges::{
    CONTROL_PLANE_RANGES, RootNetworkError, TESTBED_RANGES, check_root_namespace,
};
use egressgw_tests::testbed::{Netns, Testbed, in_netns};

/// A namespace standing in for a root namespace with a real network: `eth0` on
/// 198.18.0.0/24 (the testbed's node LAN) and a route to 198.18.0.0/16 in table 100.
fn clashing_root() -> Netns {
    let ns = Netns::create(&format!("{}-root", unique_prefix())).expect("netns");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .expect("veth");
    ns.ip(&["addr", "add", "198.18.0.2/24", "dev", "eth0"])
        .expect("address");
    ns.ip(&["link", "set", "eth0", "up"]).expect("up");
    ns.ip(&[
        "route",
        "add",
        "unreachable",
        "198.18.0.0/16",
        "table",
        "100",
    ])
    .expect("route");
    ns
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_clean_namespace_passes() {
    let ns = Netns::create(&format!("{}-root", unique_prefix())).expect("netns");
    let r = in_netns(ns.path(), || {
        check_root_namespace(&TESTBED_RANGES)
            .and_then(|()| check_root_namespace(&CONTROL_PLANE_RANGES))
            .map_err(|e| e.to_string())
    })
    .expect("thread");
    assert_eq!(r, Ok(()));
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_testbed_refuses_to_start_and_names_the_overlap() {
    let ns = clashing_root();
    let err = in_netns(ns.path(), || {
        Testbed::builder()
            .nodes(1)
            .build()
            .err()
            .map(|e| format!("{e:#}"))
    })
    .expect("thread")
    .expect("the testbed must refuse to start");
    for part in [
        "the node LAN 198.18.0.0/24 overlaps address 198.18.0.2/24 on eth0",
        "the node LAN 198.18.0.0/24 overlaps route unreachable 198.18.0.0/16 table 100",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(!err.contains("pod network"), "{err}");
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_control_plane_refuses_to_start_and_names_the_overlap() {
    let ns = clashing_root();
    let err = in_netns(ns.path(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(ControlPlane::start()).err()
    })
    .expect("thread")
    .expect("the control plane must refuse to start");
    match &err {
        ControlPlaneError::RootNetwork(RootNetworkError::Overlaps(o)) => {
            assert_eq!(o.len(), 1, "{err}");
        }
        other => panic!("wrong error: {other}"),
    }
    assert!(
        err.to_string().contains(
            "the Service range 198.18.192.0/20 overlaps route unreachable 198.18.0.0/16 table 100"
        ),
        "{err}"
    );
}
