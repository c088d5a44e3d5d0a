//! Lease cadence end to end: the agent of a node that matches no gatewayNodeSelector renews
//! its Lease at the idle cadence (every 5 s, annotated), so a large cluster's workers do not
//! load the apiserver with two writes a second each; once the node is labelled a gateway
//! node, its agent renews at the hosting cadence and the node can take an egress IP over.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use egressgw::k8s::names::{
    AGENT_LEASE_NAMESPACE, ANNOTATION_CADENCE, ANNOTATION_RENEW_INTERVAL, agent_lease,
};
use egressgw_tests::sim::{SimCluster, status};
use egressgw_tests::testbed::topology::PROTECTED_SERVER;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const GATEWAY: &str = "billing-to-mainframe";
const CONVERGE: Duration = Duration::from_secs(20);
/// The agents' default `--idle-renew-ms`.
const IDLE_RENEW_MS: &str = "5000";

/// (cadence annotation, renew interval annotation) of `node`'s agent Lease.
async fn cadence(leases: &Api<Lease>, node: &str) -> (Option<String>, Option<String>) {
    let Ok(Some(l)) = leases.get_opt(&agent_lease(node)).await else {
        return (None, None);
    };
    let ann = l.metadata.annotations.unwrap_or_default();
    (
        ann.get(ANNOTATION_CADENCE).cloned(),
        ann.get(ANNOTATION_RENEW_INTERVAL).cloned(),
    )
}

async fn wait_cadence(
    leases: &Api<Lease>,
    node: &str,
    want: (Option<&str>, &str),
    timeout: Duration,
) {
    let start = Instant::now();
    loop {
        let (c, i) = cadence(leases, node).await;
        if c.as_deref() == want.0 && i.as_deref() == Some(want.1) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "lease of {node}: cadence {c:?}, interval {i:?}; want {want:?} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn a_worker_renews_at_the_idle_cadence_and_hosts_once_labelled() {
    // node 1: a worker; nodes 2 and 3: gateway candidates.
    let mut sim = SimCluster::start(3, &[2, 3], &[EGRESS_IP], 1)
        .await
        .expect("simulated cluster");
    sim.cp
        .create_namespace("billing", &[("team", "billing")])
        .await
        .unwrap();
    sim.add_pod("billing", "invoicer-0", &[("app", "invoicer")], 1, 0)
        .await
        .unwrap();
    sim.apply("../examples/01-one-ip.yaml").await.unwrap();
    sim.wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();

    let leases: Api<Lease> = Api::namespaced(sim.cp.client(), AGENT_LEASE_NAMESPACE);
    let worker = sim.tb.node(1).name().to_string();
    wait_cadence(
        &leases,
        &worker,
        (Some("idle"), IDLE_RENEW_MS),
        Duration::from_secs(10),
    )
    .await;
    for i in [2, 3] {
        let (c, interval) = cadence(&leases, sim.tb.node(i).name()).await;
        assert_eq!(
            (c, interval.as_deref()),
            (None, Some("500")),
            "gateway node {i} renews at the hosting cadence"
        );
    }

    // Labelled, the worker's agent switches to the hosting cadence…
    let out = sim
        .cp
        .kubectl(["label", "node", &worker, "egressgw.io/gateway=true"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_cadence(&leases, &worker, (None, "500"), Duration::from_secs(5)).await;

    // …and takes the IP over when both gateway nodes die; its own pod leaves through it.
    sim.kill_agent(2).unwrap();
    sim.kill_agent(3).unwrap();
    sim.wait_gateway(GATEWAY, CONVERGE, |g| {
        status::node_of(g, "198.18.0.200").as_deref() == Some(worker.as_str())
    })
    .await
    .unwrap();
    sim.wait_source(
        1,
        0,
        PROTECTED_SERVER,
        Some(EGRESS_IP),
        Duration::from_secs(10),
    )
    .await;
}
