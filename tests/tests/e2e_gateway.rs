//! End to end: real kube-apiserver + etcd, the real controller and agents as processes, the
//! kernel dataplane in network namespaces, and real TCP traffic to a server that reports the
//! source IP it saw.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use egressgw_tests::sim::{SimCluster, status};
use egressgw_tests::testbed::topology::{OPEN_SERVER, PROTECTED_SERVER};

const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const GATEWAY: &str = "billing-to-mainframe";
const CONVERGE: Duration = Duration::from_secs(20);

async fn connect(sim: &SimCluster, node: usize, k: usize, dst: Ipv4Addr) -> Option<Ipv4Addr> {
    sim.source_seen(node, k, dst).await
}

/// Wait until pod (node, k) reaches `dst` from `want`.
async fn wait_seen(
    sim: &SimCluster,
    node: usize,
    k: usize,
    dst: Ipv4Addr,
    want: Ipv4Addr,
    timeout: Duration,
) -> Duration {
    sim.wait_source(node, k, dst, Some(want), timeout).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn gateway_lifecycle_failover_and_cleanup() {
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
    sim.add_pod("billing", "invoicer-1", &[("app", "invoicer")], 2, 0)
        .await
        .unwrap();
    sim.add_pod("billing", "web-0", &[("app", "web")], 1, 1)
        .await
        .unwrap();

    sim.apply("../examples/01-one-ip.yaml").await.unwrap();
    let g = sim
        .wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    assert_eq!(g.status.as_ref().unwrap().selected_pods, Some(2));
    let host = status::node_of(&g, "198.18.0.200").expect("assigned");
    let host_idx = sim.node_index(&host).unwrap();
    assert!(
        host_idx == 2 || host_idx == 3,
        "only labelled nodes host the IP, got {host}"
    );

    // The mission: selected pods on any node arrive from the egress IP.
    wait_seen(
        &sim,
        1,
        0,
        PROTECTED_SERVER,
        EGRESS_IP,
        Duration::from_secs(5),
    )
    .await;
    wait_seen(
        &sim,
        2,
        0,
        PROTECTED_SERVER,
        EGRESS_IP,
        Duration::from_secs(5),
    )
    .await;
    // The unselected pod is refused by the firewall, and reaches the open server from its node.
    assert_eq!(
        connect(&sim, 1, 1, PROTECTED_SERVER).await,
        None,
        "unselected pod must be rejected"
    );
    assert_eq!(
        connect(&sim, 1, 1, OPEN_SERVER).await,
        Some(sim.tb.node(1).ip())
    );

    // kubectl get egw shows the IP, the node and readiness.
    let out = sim.cp.kubectl(["get", "egw"]).await.unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.contains("198.18.0.200") && table.contains(&host) && table.contains("True"),
        "{table}"
    );

    // A new selected pod is SNATed without restarting anything; a deleted one is removed.
    sim.add_pod("billing", "invoicer-2", &[("app", "invoicer")], 3, 1)
        .await
        .unwrap();
    wait_seen(
        &sim,
        3,
        1,
        PROTECTED_SERVER,
        EGRESS_IP,
        Duration::from_secs(5),
    )
    .await;
    sim.cp.delete_pod("billing", "invoicer-2").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while connect(&sim, 3, 1, PROTECTED_SERVER).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "a deleted pod must lose the egress IP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // After its agent returns, the old host's own selected pod must be steered. The IP lands
    // on node 2 or 3 (whichever gateway node's agent is ready first), and node 3 has no
    // selected pod yet: give it one.
    if host_idx == 3 {
        sim.add_pod("billing", "invoicer-3", &[("app", "invoicer")], 3, 0)
            .await
            .unwrap();
        wait_seen(
            &sim,
            3,
            0,
            PROTECTED_SERVER,
            EGRESS_IP,
            Duration::from_secs(5),
        )
        .await;
    }

    // The gateway node's agent is SIGKILLed: the IP moves, the old node drops it (kernel
    // lifetime), new connections from every node arrive from the same IP.
    let killed = Instant::now();
    sim.kill_agent(host_idx).unwrap();
    let moved = wait_seen(
        &sim,
        1,
        0,
        PROTECTED_SERVER,
        EGRESS_IP,
        Duration::from_secs(10),
    )
    .await;
    let g = sim
        .wait_gateway(GATEWAY, CONVERGE, |g| {
            status::node_of(g, "198.18.0.200").is_some_and(|n| n != host)
        })
        .await
        .unwrap();
    let new_host = status::node_of(&g, "198.18.0.200").unwrap();
    let new_idx = sim.node_index(&new_host).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.holders(EGRESS_IP).unwrap() != vec![new_idx] {
        assert!(
            Instant::now() < deadline,
            "holders {:?}, want only {new_idx}",
            sim.holders(EGRESS_IP).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "failover after SIGKILL: status moved and old node clean {:?} after the kill ({moved:?} to the first new connection)",
        killed.elapsed()
    );
    // Pods on every node whose agent runs arrive from the same egress IP (the old host's own
    // pods wait for its agent: nobody else may touch that node's kernel).
    for (node, k) in [(1, 0), (2, 0)].into_iter().filter(|(n, _)| *n != host_idx) {
        wait_seen(
            &sim,
            node,
            k,
            PROTECTED_SERVER,
            EGRESS_IP,
            Duration::from_secs(5),
        )
        .await;
    }

    // The agent returns: nothing moves back, one node holds the IP, its pods are steered.
    sim.start_agent(host_idx).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let g = sim
        .wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    assert_eq!(
        status::node_of(&g, "198.18.0.200").as_deref(),
        Some(new_host.as_str()),
        "no flap back"
    );
    assert_eq!(sim.holders(EGRESS_IP).unwrap(), vec![new_idx]);
    wait_seen(
        &sim,
        host_idx,
        0,
        PROTECTED_SERVER,
        EGRESS_IP,
        Duration::from_secs(5),
    )
    .await;

    // Deleting the gateway removes every rule and address from every node.
    let out = sim.cp.kubectl(["delete", "egw", GATEWAY]).await.unwrap();
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rules: Vec<String> = sim
            .tb
            .nodes()
            .iter()
            .map(|n| {
                n.netns()
                    .exec("nft", &["list", "ruleset"])
                    .unwrap_or_default()
            })
            .collect();
        let clean = rules
            .iter()
            .all(|r| !r.contains("198.18.0.200") && !r.contains("snat to ip saddr"));
        if clean && sim.holders(EGRESS_IP).unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules or addresses left after delete: {rules:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        connect(&sim, 1, 0, PROTECTED_SERVER).await,
        None,
        "without a gateway the pod is just another node address"
    );
}
