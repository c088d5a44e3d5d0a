//! End to end: egress IPs the controller must judge because they depend on the cluster (a
//! node's address, the node LAN's network or broadcast address, a pod range, the Service
//! range) and an interface no node has. Each is refused with a condition and a Warning event
//! that name the field and the value, and the IP is never put on any node's kernel.
//!
//! Real kube-apiserver + etcd, the real controller and agents, the kernel in network
//! namespaces. The selected pod's traffic is sampled with the leak probe (the open server
//! inside the destinations, which accepts any source): with no egress IP placed it must be
//! dropped, never seen from any source (a node address, or the refused IP).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use egressgw::api::EgressGateway;
use egressgw_tests::sim::SimCluster;
use egressgw_tests::testbed::OPEN_SERVER;
use egressgw_tests::testbed::ranges::{NODE_LAN, SERVICE_RANGE};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};

/// How long the controller may take to judge a new gateway.
const JUDGED: Duration = Duration::from_secs(20);
/// How long the IP is watched after the verdict, to see that no agent ever adds it.
const WATCH_KERNEL: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(100);
/// Events of cluster-scoped objects land in `default`.
const EVENT_NAMESPACE: &str = "default";
const GATEWAY: &str = "judged";

/// A gateway the controller must refuse to place, and what it must say.
struct Case {
    egress_ip: Ipv4Addr,
    interface: Option<&'static str>,
    /// Reason of the Ready condition and of the Warning event.
    reason: &'static str,
    /// Must appear in the Ready condition's message and in the event's note.
    says: String,
}

fn manifest(case: &Case) -> String {
    let interface = case
        .interface
        .map(|i| format!("  interface: {i}\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: egressgw.io/v1alpha1
kind: EgressGateway
metadata:
  name: {GATEWAY}
spec:
  namespaceSelector: {{ matchLabels: {{ team: billing }} }}
  podSelector: {{ matchLabels: {{ app: invoicer }} }}
  destinationCIDRs: [203.0.113.0/24]
  egressIPs: ["{ip}"]
  gatewayNodeSelector: {{ matchLabels: {{ egressgw.io/gateway: "true" }} }}
{interface}"#,
        ip = case.egress_ip
    )
}

/// Start a 3-node cluster (node 1 a worker, nodes 2 and 3 gateway candidates) with one
/// selected pod, apply the case's gateway and check the verdict, the event and the kernels.
async fn refused(case: Case) {
    let sim = SimCluster::start(3, &[2, 3], &[], 1)
        .await
        .expect("simulated cluster");
    sim.cp
        .create_namespace("billing", &[("team", "billing")])
        .await
        .unwrap();
    sim.add_pod("billing", "invoicer-0", &[("app", "invoicer")], 1, 0)
        .await
        .unwrap();
    sim.apply_yaml(&manifest(&case))
        .await
        .expect("the schema accepts it");

    let g = sim
        .wait_gateway(GATEWAY, JUDGED, |g| {
            ready(g).is_some_and(|(status, reason, message)| {
                status == "False" && reason == case.reason && message.contains(&case.says)
            })
        })
        .await
        .unwrap_or_else(|e| panic!("no Ready=False {} naming {:?}: {e}", case.reason, case.says));
    eprintln!("Ready: {:?}", ready(&g));
    let ip = case.egress_ip.to_string();
    assert_eq!(
        egressgw_tests::sim::status::node_of(&g, &ip),
        None,
        "status assigns the refused IP a node"
    );

    let events: Api<Event> = Api::namespaced(sim.cp.client(), EVENT_NAMESPACE);
    let deadline = Instant::now() + JUDGED;
    loop {
        let list = events.list(&ListParams::default()).await.unwrap();
        let warned = list.items.iter().any(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some(case.reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(GATEWAY)
                && e.note.as_deref().is_some_and(|n| n.contains(&case.says))
        });
        if warned {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Warning event {} naming {:?}; events: {:#?}",
            case.reason,
            case.says,
            list.items
                .iter()
                .map(|e| (&e.type_, &e.reason, &e.note))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(POLL).await;
    }

    // The selected pod is blocked (fail closed) once its node has programmed the verdict;
    // from then on the probe must never see it from any source.
    sim.wait_source(1, 0, OPEN_SERVER, None, JUDGED).await;
    let probe = sim.leak_probe(&[(1, 0)]).unwrap();

    // The kernel: no node holds the IP or SNATs to it, now or a moment later.
    let snat = format!("snat to {ip}");
    let until = Instant::now() + WATCH_KERNEL;
    while Instant::now() < until {
        assert_eq!(
            sim.holders(case.egress_ip).unwrap(),
            Vec::<usize>::new(),
            "a node holds the refused IP {ip}"
        );
        for (i, n) in sim.tb.nodes().iter().enumerate() {
            let rules = n.netns().exec("nft", &["list", "ruleset"]).unwrap();
            assert!(
                !rules.contains(&snat),
                "node {} SNATs to the refused IP {ip}:\n{rules}",
                i + 1
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let report = probe.stop();
    eprintln!(
        "== selected pod of a refused gateway\n{}",
        report.table(&[])
    );
    assert!(!report.samples.is_empty(), "the probe took no sample");
    report.assert_no_leaks(&[]);
}

/// The Ready condition's status, reason and message.
fn ready(g: &EgressGateway) -> Option<(String, String, String)> {
    let current = g.status.as_ref()?.observed_generation == g.metadata.generation;
    let c = g
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    current.then(|| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the control plane"]
async fn a_nodes_internal_ip_is_refused() {
    refused(Case {
        egress_ip: Ipv4Addr::new(198, 18, 0, 11),
        interface: None,
        reason: "InvalidEgressIP",
        says: "spec.egressIPs[0] 198.18.0.11 is the InternalIP of node node-1".into(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the control plane"]
async fn the_broadcast_address_of_the_node_lan_is_refused() {
    refused(Case {
        egress_ip: NODE_LAN.broadcast(),
        interface: None,
        reason: "InvalidEgressIP",
        says: format!(
            "spec.egressIPs[0] {} is the broadcast address of subnet {NODE_LAN}",
            NODE_LAN.broadcast()
        ),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the control plane"]
async fn the_network_address_of_the_node_lan_is_refused() {
    refused(Case {
        egress_ip: NODE_LAN.network(),
        interface: None,
        reason: "InvalidEgressIP",
        says: format!(
            "spec.egressIPs[0] {} is the network address of subnet {NODE_LAN}",
            NODE_LAN.network()
        ),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the control plane"]
async fn an_address_in_a_pod_range_is_refused() {
    refused(Case {
        egress_ip: Ipv4Addr::new(198, 19, 1, 77),
        interface: None,
        reason: "InvalidEgressIP",
        says:
            "spec.egressIPs[0] 198.19.1.77 lies inside the pod range 198.19.1.0/24 of node node-1"
                .into(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the control plane"]
async fn an_address_in_the_service_range_is_refused() {
    let ip = Ipv4Addr::new(198, 18, 192, 77);
    assert!(SERVICE_RANGE.contains(ip));
    refused(Case {
        egress_ip: ip,
        interface: None,
        reason: "InvalidEgressIP",
        says: format!("spec.egressIPs[0] {ip} lies inside the Service range {SERVICE_RANGE}"),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the control plane"]
async fn an_interface_no_node_has_is_named() {
    refused(Case {
        egress_ip: Ipv4Addr::new(198, 18, 0, 200),
        interface: Some("eth9"),
        reason: "NoEligibleNode",
        says: "node-2, node-3: has no interface eth9 (spec.interface)".into(),
    })
    .await;
}
