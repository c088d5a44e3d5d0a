//! End to end, when things go wrong: a gateway node dies, an agent is cut off from the
//! apiserver, the controller leader dies, gateways conflict or cannot be placed, specs change.
//! Real apiserver, real controller and agents, real kernel, real TCP.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use egressgw::api::EgressGateway;
use egressgw_tests::sim::{SimCluster, status};
use egressgw_tests::testbed::topology::{OTHER_SERVER, PROTECTED_SERVER};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const GATEWAY: &str = "billing-to-mainframe";
const CONVERGE: Duration = Duration::from_secs(20);

/// The tests share two cores: one simulated cluster at a time keeps timings honest.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn connect(sim: &SimCluster, node: usize, k: usize, dst: Ipv4Addr) -> Option<Ipv4Addr> {
    sim.source_seen(node, k, dst).await
}

async fn wait_seen(
    sim: &SimCluster,
    node: usize,
    k: usize,
    dst: Ipv4Addr,
    want: Option<Ipv4Addr>,
    timeout: Duration,
) {
    sim.wait_source(node, k, dst, want, timeout).await;
}

/// A cluster with node 1 a worker and nodes 2, 3 gateway candidates, invoicer-0 on node 1,
/// and `examples/01-one-ip.yaml` applied and programmed. Returns the host node's index.
async fn cluster(controllers: usize) -> (SimCluster, usize) {
    let sim = SimCluster::start(3, &[2, 3], &[EGRESS_IP], controllers)
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
    let g = sim
        .wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    let host = sim
        .node_index(&status::node_of(&g, "198.18.0.200").unwrap())
        .unwrap();
    wait_seen(
        &sim,
        1,
        0,
        PROTECTED_SERVER,
        Some(EGRESS_IP),
        Duration::from_secs(5),
    )
    .await;
    (sim, host)
}

async fn apply_yaml(sim: &SimCluster, yaml: &str) {
    let path = sim.logs().join(format!(
        "manifest-{}.yaml",
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::write(&path, yaml).unwrap();
    sim.apply(path.to_str().unwrap()).await.unwrap();
}

fn other_gateway(host: usize) -> usize {
    if host == 2 { 3 } else { 2 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn gateway_node_death_keeps_established_connections() {
    let _serial = SERIAL.lock().await;
    let (mut sim, host) = cluster(1).await;
    let long = sim
        .tb
        .pod(1, 0)
        .long_lived(PROTECTED_SERVER, Duration::from_millis(50))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The node dies: its link goes down and its agent with it.
    let died = Instant::now();
    sim.tb.kill_node(host).unwrap();
    sim.kill_agent(host).unwrap();
    let new = other_gateway(host);
    sim.wait_gateway(GATEWAY, CONVERGE, |g| {
        status::node_of(g, "198.18.0.200").as_deref() == Some(sim.tb.node(new).name())
    })
    .await
    .unwrap();
    wait_seen(
        &sim,
        1,
        0,
        PROTECTED_SERVER,
        Some(EGRESS_IP),
        Duration::from_secs(5),
    )
    .await;
    let failover = died.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = long.finish();
    eprintln!(
        "node death: new connections from the egress IP after {failover:?}; established connection: {report:?}"
    );
    assert!(
        report.survived(),
        "the established connection must survive the gateway's death: {report:?}"
    );
    assert_eq!(report.seen.map(|s| *s.ip()), Some(EGRESS_IP));

    // The node and its agent come back: nothing moves back, one node holds the IP.
    sim.tb.revive_node(host).unwrap();
    sim.start_agent(host).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let g = sim
        .wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    assert_eq!(
        status::node_of(&g, "198.18.0.200").as_deref(),
        Some(sim.tb.node(new).name())
    );
    assert_eq!(sim.holders(EGRESS_IP).unwrap(), vec![new]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn an_agent_cut_off_from_the_apiserver_keeps_steering_and_fences_its_ips() {
    let _serial = SERIAL.lock().await;
    let (sim, host) = cluster(1).await;

    // A worker's agent cut off keeps its pods' dataplane: nothing to fence there.
    sim.cut_agent(1);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            connect(&sim, 1, 0, PROTECTED_SERVER).await,
            Some(EGRESS_IP),
            "the cut-off worker must keep steering"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sim.restore_agent(1);

    // The gateway node's agent cut off drops the address itself, before the controller moves it.
    let cut = Instant::now();
    sim.cut_agent(host);
    while sim.holders(EGRESS_IP).unwrap().contains(&host) {
        assert!(
            cut.elapsed() < Duration::from_millis(1600),
            "the cut-off agent must fence before the takeover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fenced = cut.elapsed();
    let new = other_gateway(host);
    sim.wait_gateway(GATEWAY, CONVERGE, |g| {
        status::node_of(g, "198.18.0.200").as_deref() == Some(sim.tb.node(new).name())
    })
    .await
    .unwrap();
    wait_seen(
        &sim,
        1,
        0,
        PROTECTED_SERVER,
        Some(EGRESS_IP),
        Duration::from_secs(5),
    )
    .await;
    eprintln!(
        "cut off: address dropped by the agent after {fenced:?}; service restored after {:?}",
        cut.elapsed()
    );

    // Reconnected, it comes back under a new epoch and takes nothing back.
    sim.restore_agent(host);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let g = sim
        .wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    assert_eq!(
        status::node_of(&g, "198.18.0.200").as_deref(),
        Some(sim.tb.node(new).name())
    );
    assert_eq!(sim.holders(EGRESS_IP).unwrap(), vec![new]);
    let lease: Lease =
        Api::namespaced(sim.cp.client(), egressgw::k8s::names::AGENT_LEASE_NAMESPACE)
            .get(&egressgw::k8s::names::agent_lease(sim.tb.node(host).name()))
            .await
            .unwrap();
    assert!(
        lease.spec.unwrap().lease_transitions.unwrap() >= 1,
        "a fenced agent returns under a new epoch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn the_standby_controller_takes_over_and_nothing_moves() {
    let _serial = SERIAL.lock().await;
    let (mut sim, host) = cluster(2).await;
    let leader = leader_holder(&sim).await;
    let idx: usize = leader.trim_start_matches("controller-").parse().unwrap();
    let before = sim.wait_gateway(GATEWAY, CONVERGE, |_| true).await.unwrap();
    sim.kill_controller(idx).unwrap();
    let killed = Instant::now();
    let took = wait_leader(
        &sim,
        killed + Duration::from_secs(15),
        |h| h != leader && !h.is_empty(),
        "the standby never took over",
    )
    .await;
    eprintln!("standby leader after {took:?}");
    // The new leader writes the same assignment (status is the record) ...
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sim
        .wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    assert_eq!(
        before.status.as_ref().unwrap().assignments,
        after.status.as_ref().unwrap().assignments,
        "no assignment changes"
    );
    assert_eq!(sim.holders(EGRESS_IP).unwrap(), vec![host]);
    // ... and acts: an extra egress IP is placed, on the other gateway node.
    let g = add_second_ip(&sim).await;
    assert_eq!(
        status::node_of(&g, "198.18.0.201").as_deref(),
        Some(sim.tb.node(other_gateway(host)).name()),
        "spread over both gateway nodes"
    );
}

/// A rolling update SIGTERMs the leader: it finishes its reconcile, releases the leader Lease,
/// exits 0, and the standby (watching the Lease) leads at once, not a lease duration later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn a_stopped_leader_hands_over_to_the_standby_at_once() {
    let _serial = SERIAL.lock().await;
    let (mut sim, host) = cluster(2).await;
    let leader = leader_holder(&sim).await;
    let idx: usize = leader.trim_start_matches("controller-").parse().unwrap();
    let standby = format!("controller-{}", 1 - idx);
    sim.wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    let stopped = Instant::now();
    let exit = sim.stop_controller(idx, Duration::from_secs(10)).unwrap();
    assert!(
        exit.success(),
        "the leader exits cleanly on SIGTERM: {exit}"
    );
    let lease_duration = Duration::from_secs(4);
    let took = wait_leader(
        &sim,
        stopped + lease_duration,
        |h| h == standby,
        "the standby did not take the released Lease before it would have expired anyway",
    )
    .await;
    eprintln!("standby leading {took:?} after SIGTERM to the leader");
    assert_eq!(sim.holders(EGRESS_IP).unwrap(), vec![host], "nothing moves");
    // The new leader acts: an extra egress IP is placed and programmed.
    add_second_ip(&sim).await;
}

/// The holder of the controllers' leader Lease ("" when released).
async fn leader_holder(sim: &SimCluster) -> String {
    let leases: Api<Lease> = Api::namespaced(sim.cp.client(), "egressgw-system");
    leases
        .get("egressgw-controller")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default()
}

/// Poll the leader Lease until its holder satisfies `want`; panics with `why` at `deadline`.
/// Returns the time spent polling.
async fn wait_leader(
    sim: &SimCluster,
    deadline: Instant,
    want: impl Fn(&str) -> bool,
    why: &str,
) -> Duration {
    let start = Instant::now();
    while !want(&leader_holder(sim).await) {
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Add a second egress IP to the gateway; returns it once that IP is placed and programmed.
async fn add_second_ip(sim: &SimCluster) -> EgressGateway {
    let out = sim
        .cp
        .kubectl([
            "patch",
            "egw",
            GATEWAY,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"egressIPs":["198.18.0.200","198.18.0.201"]}}"#,
        ])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sim.wait_gateway(GATEWAY, CONVERGE, |g| {
        status::node_of(g, "198.18.0.201").is_some() && status::ready_and_programmed(g)
    })
    .await
    .unwrap()
}

fn gateway_yaml(name: &str, ip: &str, dst: &str, node_selector: &str) -> String {
    format!(
        "apiVersion: egressgw.io/v1alpha1\nkind: EgressGateway\nmetadata: {{ name: {name} }}\nspec:\n  namespaceSelector: {{ matchLabels: {{ team: billing }} }}\n  podSelector: {{ matchLabels: {{ app: invoicer }} }}\n  destinationCIDRs: [{dst}]\n  egressIPs: [{ip}]\n  gatewayNodeSelector: {{ matchLabels: {{ {node_selector} }} }}\n"
    )
}

async fn events_for(sim: &SimCluster, name: &str) -> String {
    let out = sim
        .cp
        .kubectl([
            "get",
            "events",
            "-A",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
        ])
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn conflicts_and_unplaceable_ips_are_explained_and_fail_closed() {
    let _serial = SERIAL.lock().await;
    let (sim, _host) = cluster(1).await;
    let node1 = sim.tb.node(1).ip();
    assert_eq!(
        connect(&sim, 1, 0, OTHER_SERVER).await,
        Some(node1),
        "unrelated network: the node's address"
    );

    // A younger gateway claims the same egress IP for another destination: it loses the IP,
    // says so, and its pods' traffic to that destination is held back, not leaked.
    apply_yaml(
        &sim,
        &gateway_yaml(
            "partner-copycat",
            "198.18.0.200",
            "198.51.100.0/24",
            "egressgw.io/gateway: \"true\"",
        ),
    )
    .await;
    let g = sim
        .wait_gateway("partner-copycat", CONVERGE, |g| {
            status::condition(g, "Conflicted").as_deref() == Some("True")
        })
        .await
        .unwrap();
    let c = g
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Conflicted")
        .unwrap();
    assert!(
        c.message
            .contains("198.18.0.200 is claimed by older gateway billing-to-mainframe"),
        "{}",
        c.message
    );
    assert_eq!(status::condition(&g, "Ready").as_deref(), Some("False"));
    wait_seen(&sim, 1, 0, OTHER_SERVER, None, Duration::from_secs(5)).await;
    assert_eq!(
        connect(&sim, 1, 0, PROTECTED_SERVER).await,
        Some(EGRESS_IP),
        "the older gateway is untouched"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events_for(&sim, "partner-copycat")
        .await
        .contains("Conflict")
    {
        assert!(
            Instant::now() < deadline,
            "no Conflict event: {}",
            events_for(&sim, "partner-copycat").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An egress IP no node may host: Ready=False with every node's reason, and an event.
    apply_yaml(
        &sim,
        &gateway_yaml(
            "nowhere",
            "198.18.0.240",
            "198.51.100.128/25",
            "egressgw.io/zone: mars",
        ),
    )
    .await;
    let g = sim
        .wait_gateway("nowhere", CONVERGE, |g| {
            status::condition(g, "Ready").as_deref() == Some("False")
        })
        .await
        .unwrap();
    let ready = g
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready.reason, "NoEligibleNode");
    assert!(
        ready
            .message
            .contains("node-1, node-2, node-3: does not match gatewayNodeSelector"),
        "{}",
        ready.message
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events_for(&sim, "nowhere").await.contains("NoEligibleNode") {
        assert!(Instant::now() < deadline, "no NoEligibleNode event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let api: Api<EgressGateway> = Api::all(sim.cp.client());
    assert_eq!(
        api.get("nowhere")
            .await
            .unwrap()
            .status
            .unwrap()
            .gateway_nodes
            .as_deref(),
        Some("<none>")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn spec_changes_converge() {
    let _serial = SERIAL.lock().await;
    let (sim, _host) = cluster(1).await;
    sim.add_pod("billing", "reporter-0", &[("app", "reporter")], 2, 1)
        .await
        .unwrap();
    assert_eq!(
        connect(&sim, 2, 1, PROTECTED_SERVER).await,
        None,
        "not selected yet"
    );

    // A new destination.
    let sim = &sim;
    let patch = |p: &'static str| async move {
        sim.cp
            .kubectl(["patch", "egw", GATEWAY, "--type", "merge", "-p", p])
            .await
            .unwrap()
    };
    assert!(
        patch(r#"{"spec":{"destinationCIDRs":["203.0.113.0/24","198.51.100.0/24"]}}"#)
            .await
            .status
            .success()
    );
    wait_seen(
        sim,
        1,
        0,
        OTHER_SERVER,
        Some(EGRESS_IP),
        Duration::from_secs(10),
    )
    .await;

    // A selector change.
    assert!(patch(r#"{"spec":{"podSelector":{"matchLabels":null,"matchExpressions":[{"key":"app","operator":"In","values":["invoicer","reporter"]}]}}}"#).await.status.success());
    wait_seen(
        sim,
        2,
        1,
        PROTECTED_SERVER,
        Some(EGRESS_IP),
        Duration::from_secs(10),
    )
    .await;
    let g = sim
        .wait_gateway(GATEWAY, CONVERGE, |g| {
            g.status.as_ref().and_then(|s| s.selected_pods) == Some(2)
                && status::ready_and_programmed(g)
        })
        .await
        .unwrap();
    assert_eq!(g.status.unwrap().observed_generation, g.metadata.generation);

    // Shrinking back: the pod that left the selection loses the egress IP.
    assert!(patch(r#"{"spec":{"podSelector":{"matchExpressions":[{"key":"app","operator":"In","values":["invoicer"]}]}}}"#).await.status.success());
    wait_seen(sim, 2, 1, PROTECTED_SERVER, None, Duration::from_secs(10)).await;
}

/// A hung leader (SIGSTOP 10 s): the standby leads; the old leader, resumed, writes nothing
/// stale, steps down and stays up as a standby instead of exiting; nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn a_hung_leader_steps_down_and_stands_by_and_nothing_moves() {
    let _serial = SERIAL.lock().await;
    let (sim, host) = cluster(2).await;
    let leader = leader_holder(&sim).await;
    let idx: usize = leader.trim_start_matches("controller-").parse().unwrap();
    let before = sim
        .wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    let pid = sim.controller_pid(idx).unwrap() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    let took = wait_leader(
        &sim,
        stopped + Duration::from_secs(15),
        |h| h != leader && !h.is_empty(),
        "the standby never took over from the hung leader",
    )
    .await;
    eprintln!("standby leads {took:?} after the leader hung");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // The resumed replica notices it lost the Lease and stands by; it does not exit.
    let log = sim.logs().join(format!("controller-{idx}-{idx}.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("stepped down; standing by") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed leader never stood by; its log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        unsafe { libc::kill(pid, 0) },
        0,
        "the old leader keeps running as a standby"
    );
    assert_ne!(
        leader_holder(&sim).await,
        leader,
        "the new leader keeps the Lease"
    );
    let after = sim
        .wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    assert_eq!(
        before.status.as_ref().unwrap().assignments,
        after.status.as_ref().unwrap().assignments,
        "nothing moved"
    );
    assert_eq!(sim.holders(EGRESS_IP).unwrap(), vec![host]);
}
