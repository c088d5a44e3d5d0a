//! End to end: a node without a live agent gets no new pods. The controller taints it
//! `egressgw.io/agent-not-ready:NoSchedule`; the agent removes the taint once it has applied.

use std::time::{Duration, Instant};

use egressgw::k8s::names::TAINT_AGENT_NOT_READY;
use egressgw_tests::sim::SimCluster;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

const WAIT: Duration = Duration::from_secs(20);

async fn tainted(sim: &SimCluster, node: &str) -> bool {
    let n = Api::<Node>::all(sim.cp.client()).get(node).await.unwrap();
    n.spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == TAINT_AGENT_NOT_READY && t.effect == "NoSchedule")
}

async fn wait_tainted(sim: &SimCluster, node: &str, want: bool) -> Duration {
    let started = Instant::now();
    while tainted(sim, node).await != want {
        assert!(
            started.elapsed() < WAIT,
            "{node}: taint {TAINT_AGENT_NOT_READY} still {} after {WAIT:?}",
            if want { "absent" } else { "present" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test]
#[ignore = "needs root, network namespaces and the control plane; run by make test"]
async fn a_node_whose_agent_is_dead_is_tainted_until_its_agent_has_applied() {
    let mut sim = SimCluster::start(2, &[2], &[], 1)
        .await
        .expect("simulated cluster");
    // Every agent applies and removes the taint the controller may give its node at start;
    // then, with every agent live, no node is tainted for a while.
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_secs(3) {
        for n in ["node-1", "node-2"] {
            if tainted(&sim, n).await {
                wait_tainted(&sim, n, false).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in ["node-1", "node-2"] {
        assert!(!tainted(&sim, n).await, "{n}: live agent, yet tainted");
    }
    // node-2 (a gateway candidate, judged dead 1.6 s after its last renewal)
    sim.kill_agent(2).unwrap();
    let after = wait_tainted(&sim, "node-2", true).await;
    eprintln!("node-2 tainted {after:?} after its agent was killed");
    assert!(
        after >= Duration::from_secs(1),
        "tainted before the controller could judge the agent dead: {after:?}"
    );
    assert!(
        !tainted(&sim, "node-1").await,
        "a live agent's node stays untainted"
    );
    sim.start_agent(2).unwrap();
    let back = wait_tainted(&sim, "node-2", false).await;
    eprintln!("node-2 untainted {back:?} after its agent restarted");
}
