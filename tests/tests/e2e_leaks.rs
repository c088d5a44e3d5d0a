//! No leaks, end to end (DESIGN.md, "Invariants" 1 and "The leak probe"; issue 11): selected
//! pods on every node connect to the open server inside the destinations every ~20 ms while
//! something changes or fails; every source the server saw must be one of the gateway's
//! egress IPs. A refused or timed-out sample is not a leak (fail closed); a node or pod
//! address is.
//!
//! Node 1 is a worker (never a gateway); nodes 2 and 3 are gateway candidates, so the probed
//! pods always include pods on the node hosting the IP, on the other candidate and on a
//! node that can never host it. Real apiserver, controller and agents, real kernel, real TCP.

use std::net::Ipv4Addr;
use std::time::Duration;

use egressgw::k8s::names::{SYSTEM_NAMESPACE, agent_lease};
use egressgw_tests::leak::{LeakProbe, LeakReport, Outcome};
use egressgw_tests::sim::{SimCluster, status};
use egressgw_tests::testbed::Testbed;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const E1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const E2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 201);
/// An egress IP no node may host (its gateway selects nodes in a zone that does not exist).
const NOWHERE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 240);
const GATEWAY: &str = "billing-to-mainframe";
const CONVERGE: Duration = Duration::from_secs(20);
/// "Things settled": every probed pod reached the server only from an allowed source for
/// this long.
const HOLD: Duration = Duration::from_millis(500);
/// How long a pod may take to reach the server steadily again after an event.
const SETTLE: Duration = Duration::from_secs(15);
/// One selected pod per node: node 1 never hosts, nodes 2 and 3 host or stand by.
const ONE_PER_NODE: [(usize, usize); 3] = [(1, 0), (2, 0), (3, 0)];
/// Both pods of every node (more pods, so two egress IPs each get some).
const ALL_PODS: [(usize, usize); 6] = [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)];

/// The gateway of the examples (`examples/01-one-ip.yaml`) with egress IPs `ips`.
fn gateway_yaml(name: &str, app: &str, ips: &[Ipv4Addr], node_selector: &str) -> String {
    let ips: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
    format!(
        "apiVersion: egressgw.io/v1alpha1\nkind: EgressGateway\nmetadata: {{ name: {name} }}\n\
         spec:\n  namespaceSelector: {{ matchLabels: {{ team: billing }} }}\n  \
         podSelector: {{ matchLabels: {{ app: {app} }} }}\n  \
         destinationCIDRs: [203.0.113.0/24]\n  egressIPs: [{}]\n  \
         gatewayNodeSelector: {{ matchLabels: {{ {node_selector} }} }}\n",
        ips.join(", ")
    )
}

fn billing_gateway(ips: &[Ipv4Addr]) -> String {
    gateway_yaml(GATEWAY, "invoicer", ips, "egressgw.io/gateway: \"true\"")
}

/// Three nodes (2 and 3 gateway candidates), the testbed pods `pods` created as selected
/// pods (`app=invoicer` in namespace billing), and, unless `ips` is empty, the billing
/// gateway with `ips` applied and programmed.
async fn cluster(pods: &[(usize, usize)], ips: &[Ipv4Addr]) -> SimCluster {
    let sim = SimCluster::start(3, &[2, 3], &[E1, E2], 1)
        .await
        .expect("simulated cluster");
    sim.cp
        .create_namespace("billing", &[("team", "billing")])
        .await
        .unwrap();
    for &(node, k) in pods {
        sim.add_pod(
            "billing",
            &format!("invoicer-{node}-{k}"),
            &[("app", "invoicer")],
            node,
            k,
        )
        .await
        .unwrap();
    }
    if !ips.is_empty() {
        sim.apply_yaml(&billing_gateway(ips)).await.unwrap();
        sim.wait_gateway(GATEWAY, CONVERGE, |g| {
            status::ready_and_programmed(g)
                && ips
                    .iter()
                    .all(|ip| status::node_of(g, &ip.to_string()).is_some())
        })
        .await
        .unwrap();
    }
    sim
}

/// The node index status assigns `ip` to.
async fn host_of(sim: &SimCluster, ip: Ipv4Addr) -> usize {
    let g = sim.wait_gateway(GATEWAY, CONVERGE, |_| true).await.unwrap();
    let node = status::node_of(&g, &ip.to_string()).expect("assigned");
    sim.node_index(&node).unwrap()
}

fn other_gateway(host: usize) -> usize {
    if host == 2 { 3 } else { 2 }
}

/// Waits until status assigns `ip` to node `to`.
async fn wait_assigned(sim: &SimCluster, ip: Ipv4Addr, to: usize) {
    let want = sim.tb.node(to).name().to_string();
    sim.wait_gateway(GATEWAY, CONVERGE, |g| {
        status::node_of(g, &ip.to_string()).as_deref() == Some(want.as_str())
    })
    .await
    .unwrap();
}

/// Indices (into the probe) of the pods in `pods` that do not run on node `node`.
fn not_on(pods: &[(usize, usize)], node: usize) -> Vec<usize> {
    (0..pods.len()).filter(|&i| pods[i].0 != node).collect()
}

/// Starts the probe on `pods` and waits until all reach the server from `allowed`.
async fn probe(sim: &SimCluster, pods: &[(usize, usize)], allowed: &[Ipv4Addr]) -> LeakProbe {
    let probe = sim.leak_probe(pods).expect("leak probe");
    probe
        .wait_steady(allowed, HOLD, Duration::from_secs(10))
        .await
        .expect("before the event, every selected pod leaves from the egress IP");
    probe
}

/// Stops the probe, prints its table (passing runs give data too), asserts 0 leaks.
fn finish(probe: LeakProbe, allowed: &[Ipv4Addr], what: &str) -> LeakReport {
    let report = probe.stop();
    eprintln!("== {what}\n{}", report.table(allowed));
    report.assert_no_leaks(allowed);
    report
}

/// The epoch of node `i`: its agent Lease's transitions.
async fn epoch(sim: &SimCluster, i: usize) -> i32 {
    let leases: Api<Lease> = Api::namespaced(sim.cp.client(), SYSTEM_NAMESPACE);
    leases
        .get(&agent_lease(sim.tb.node(i).name()))
        .await
        .unwrap()
        .spec
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

/// The probe itself, without a control plane: pods without a gateway reach the open server
/// from their node's address, which the report counts as leaks; a pod whose traffic is
/// dropped gives timeouts, not a stalled probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and network namespaces"]
async fn the_probe_reports_node_addresses_as_leaks_and_drops_as_timeouts() {
    let tb = Testbed::builder()
        .nodes(2)
        .pods_per_node(1)
        .build()
        .expect("testbed");
    let probe = LeakProbe::start(&tb, &[(1, 0), (2, 0)]).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Pod (2, 0) loses its way out: every later sample must time out.
    tb.pod(2, 0)
        .netns()
        .nft("table ip blackhole {\n chain out {\n  type filter hook output priority 0;\n  ip daddr 203.0.113.200 drop\n }\n}\n")
        .unwrap();
    probe.mark("drop");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let report = probe.stop();
    let t = report.table(&[E1]);
    eprintln!("{t}");
    let (n1, n2) = (tb.node(1).ip(), tb.node(2).ip());
    assert_eq!(report.sources(), [n1, n2].into());
    let sum = report.summary(&[E1]);
    assert!(
        sum[0].samples >= 30 && sum[0].seen[&n1] == sum[0].samples,
        "{t}"
    );
    let after = report.since_offset(report.mark_at("drop").unwrap() + Duration::from_millis(50));
    let dropped = &after.summary(&[E1])[1];
    assert!(
        dropped.timeouts >= 3 && dropped.timeouts == dropped.samples,
        "a dropped pod's samples time out, about one every 150 ms: {t}"
    );
    assert!(t.contains(&format!("{n1} LEAK")), "{t}");
    assert_eq!(
        report.leaks(&[E1]).len(),
        sum[0].samples + sum[1].seen[&n2],
        "node addresses are leaks"
    );
    report.assert_no_leaks(&[n1, n2]);
}

/// The gateway node's agent is cut off from the apiserver: it fences, the IP moves to the
/// other candidate, the agent comes back under a new epoch. Before issue 11 the fenced
/// node's own address reached the server for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn a_gateway_agent_cut_off_fences_without_leaking() {
    let sim = cluster(&ONE_PER_NODE, &[E1]).await;
    let host = host_of(&sim, E1).await;
    let probe = probe(&sim, &ONE_PER_NODE, &[E1]).await;
    probe.mark(&format!("cut agent of node-{host}"));
    sim.cut_agent(host);
    wait_assigned(&sim, E1, other_gateway(host)).await;
    probe.mark("moved");
    // The cut-off node's own pod may wait for its agent; the others resume at once.
    probe
        .wait_steady_pods(&not_on(&ONE_PER_NODE, host), &[E1], HOLD, SETTLE)
        .await
        .unwrap();
    sim.restore_agent(host);
    probe.mark("restored");
    probe.wait_steady(&[E1], HOLD, SETTLE).await.unwrap();
    finish(probe, &[E1], "gateway agent cut off");
}

/// The gateway node dies (link down, agent gone): the IP moves; later the node returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn gateway_node_death_and_return_without_leaking() {
    let mut sim = cluster(&ONE_PER_NODE, &[E1]).await;
    let host = host_of(&sim, E1).await;
    let probe = probe(&sim, &ONE_PER_NODE, &[E1]).await;
    probe.mark(&format!("node-{host} dies"));
    sim.tb.kill_node(host).unwrap();
    sim.kill_agent(host).unwrap();
    wait_assigned(&sim, E1, other_gateway(host)).await;
    probe.mark("moved");
    probe
        .wait_steady_pods(&not_on(&ONE_PER_NODE, host), &[E1], HOLD, SETTLE)
        .await
        .unwrap();
    sim.tb.revive_node(host).unwrap();
    sim.start_agent(host).unwrap();
    probe.mark(&format!("node-{host} back"));
    probe.wait_steady(&[E1], HOLD, SETTLE).await.unwrap();
    finish(probe, &[E1], "gateway node death and return");
}

/// The hosting node loses its gateway label: the IP moves between two live nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn an_ip_moved_between_live_nodes_without_leaking() {
    let sim = cluster(&ONE_PER_NODE, &[E1]).await;
    let host = host_of(&sim, E1).await;
    let probe = probe(&sim, &ONE_PER_NODE, &[E1]).await;
    probe.mark(&format!("label removed from node-{host}"));
    sim.label_node(host, "egressgw.io/gateway-").await.unwrap();
    wait_assigned(&sim, E1, other_gateway(host)).await;
    probe.mark("moved");
    probe.wait_steady(&[E1], HOLD, SETTLE).await.unwrap();
    finish(probe, &[E1], "IP moved between live nodes");
}

/// A second egress IP is added (pods rehash over two IPs on two nodes), then the first is
/// removed (its pods move to the second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn egress_ips_added_and_removed_without_leaking() {
    let sim = cluster(&ALL_PODS, &[E1]).await;
    let probe = probe(&sim, &ALL_PODS, &[E1]).await;
    probe.mark("E2 added");
    sim.apply_yaml(&billing_gateway(&[E1, E2])).await.unwrap();
    sim.wait_gateway(GATEWAY, CONVERGE, |g| {
        status::node_of(g, &E2.to_string()).is_some() && status::ready_and_programmed(g)
    })
    .await
    .unwrap();
    probe.wait_steady(&[E1, E2], HOLD, SETTLE).await.unwrap();
    probe.mark("E1 removed");
    sim.apply_yaml(&billing_gateway(&[E2])).await.unwrap();
    sim.wait_gateway(GATEWAY, CONVERGE, |g| {
        status::node_of(g, &E1.to_string()).is_none() && status::ready_and_programmed(g)
    })
    .await
    .unwrap();
    probe.wait_steady(&[E2], HOLD, SETTLE).await.unwrap();
    let report = finish(probe, &[E1, E2], "egress IP added, then one removed");
    let both = report.since("E2 added").sources();
    assert!(
        both.contains(&E1) && both.contains(&E2),
        "with two IPs the pods spread over both: {both:?}"
    );
}

/// How long after `kubectl apply` returns the agents may take to see a new gateway: the
/// watch event and one transaction. A selected pod's traffic before that leaves from its
/// node, as it did before the gateway existed; the same holds for a pod the API does not
/// know yet (no IP in any view), which no agent can cover.
const SEE_NEW_GATEWAY: Duration = Duration::from_millis(300);

/// A gateway applied while its pods send: once the agents can have seen it, its pods leave
/// from its egress IP or not at all, also while the IP is not placed yet. A second gateway
/// whose IP no node may host keeps its pods blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn a_new_gateway_applied_while_pods_send_fails_closed() {
    let sim = cluster(&ONE_PER_NODE, &[]).await;
    for node in 1..=3 {
        sim.add_pod(
            "billing",
            &format!("reporter-{node}"),
            &[("app", "reporter")],
            node,
            1,
        )
        .await
        .unwrap();
    }
    let unselected: Vec<Ipv4Addr> = (1..=3).map(|i| sim.tb.node(i).ip()).collect();
    let probe = probe(&sim, &ONE_PER_NODE, &unselected).await;
    probe.mark("apply");
    sim.apply_yaml(&billing_gateway(&[E1])).await.unwrap();
    let applied = probe.mark("applied");
    sim.wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    probe.wait_steady(&[E1], HOLD, SETTLE).await.unwrap();
    let report = probe.stop();
    eprintln!("== new gateway\n{}", report.table(&[E1]));
    if let Some(last) = report
        .since("applied")
        .leak_runs(&[E1])
        .into_iter()
        .max_by_key(|r| r.to)
    {
        eprintln!(
            "node addresses seen until {} (allowed until +{} ms)",
            report.when(last.to),
            SEE_NEW_GATEWAY.as_millis()
        );
    }
    report
        .since_offset(applied + SEE_NEW_GATEWAY)
        .assert_no_leaks(&[E1]);
    assert_closed_for_good(&report, applied, &[E1]);

    // An egress IP no node can host: Ready=False, and its pods get nowhere.
    let pods = [(1, 1), (2, 1), (3, 1)];
    let probe = probe_unsteady(&sim, &pods).await;
    probe.mark("apply unplaceable");
    sim.apply_yaml(&gateway_yaml(
        "nowhere",
        "reporter",
        &[NOWHERE_IP],
        "egressgw.io/zone: mars",
    ))
    .await
    .unwrap();
    let applied = probe.mark("applied");
    sim.wait_gateway("nowhere", CONVERGE, |g| {
        status::condition(g, "Ready").as_deref() == Some("False")
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = probe.stop();
    eprintln!(
        "== new gateway with an IP no node may host\n{}",
        report.table(&[])
    );
    let after = report.since_offset(applied + SEE_NEW_GATEWAY);
    after.assert_no_leaks(&[]);
    assert!(!after.samples.is_empty());
    assert_closed_for_good(&report, applied, &[]);
}

/// Within the grace too: once a pod's traffic after `applied` stopped leaving from its node
/// (blocked, or from an allowed source), it never leaves from there again.
fn assert_closed_for_good(report: &LeakReport, applied: Duration, allowed: &[Ipv4Addr]) {
    let after = report.since_offset(applied);
    for pod in 0..after.pods.len() {
        let one = after.pods_only(&[pod]);
        if let Some(closed) = one
            .samples
            .iter()
            .find(|s| !matches!(s.outcome, Outcome::Seen(ip) if !allowed.contains(&ip)))
        {
            one.since_offset(closed.at).assert_no_leaks(allowed);
        }
    }
}

/// A probe that does not wait for a steady state (the pods are not selected yet).
async fn probe_unsteady(sim: &SimCluster, pods: &[(usize, usize)]) -> LeakProbe {
    let probe = sim.leak_probe(pods).expect("leak probe");
    tokio::time::sleep(Duration::from_millis(200)).await;
    probe
}

/// SIGKILL and an immediate restart of the agent of a source node (node 1): its kernel
/// state stays while it is gone, and the new agent must not remove it before it knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn a_source_agent_killed_and_restarted_without_leaking() {
    let mut sim = cluster(&ONE_PER_NODE, &[E1]).await;
    let probe = probe(&sim, &ONE_PER_NODE, &[E1]).await;
    restart_agent(&mut sim, &probe, 1).await;
    finish(probe, &[E1], "source agent SIGKILL and restart");
}

/// The same on the node hosting the egress IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn a_gateway_agent_killed_and_restarted_without_leaking() {
    let mut sim = cluster(&ONE_PER_NODE, &[E1]).await;
    let host = host_of(&sim, E1).await;
    let probe = probe(&sim, &ONE_PER_NODE, &[E1]).await;
    restart_agent(&mut sim, &probe, host).await;
    finish(probe, &[E1], "gateway agent SIGKILL and restart");
}

/// SIGKILL node `i`'s agent, start a new one 300 ms later (a crash-looping pod's restart),
/// wait until the pods reach the server steadily for a second.
async fn restart_agent(sim: &mut SimCluster, probe: &LeakProbe, i: usize) {
    probe.mark(&format!("agent of node-{i} killed"));
    sim.kill_agent(i).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.start_agent(i).unwrap();
    probe.mark("restarted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    probe
        .wait_steady(&[E1], Duration::from_secs(1), SETTLE)
        .await
        .unwrap();
}

/// A gateway node's agent is cut off for 1.2 s: long enough to fence (1 s) and come back
/// under a new epoch, too short for the controller to move its IP (1.6 s). With two IPs the
/// node's pods hash over both; a new epoch must not rehash them in one view only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn an_epoch_change_without_leaking() {
    let sim = cluster(&ALL_PODS, &[E1, E2]).await;
    let host = host_of(&sim, E1).await;
    let before = epoch(&sim, host).await;
    let probe = probe(&sim, &ALL_PODS, &[E1, E2]).await;
    probe.mark(&format!("cut agent of node-{host}"));
    sim.cut_agent(host);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sim.restore_agent(host);
    probe.mark("restored");
    tokio::time::sleep(Duration::from_secs(2)).await;
    probe.wait_steady(&[E1, E2], HOLD, SETTLE).await.unwrap();
    finish(probe, &[E1, E2], "epoch change");
    assert!(
        epoch(&sim, host).await > before,
        "the cut must change node-{host}'s epoch, or this test tests nothing"
    );
}
