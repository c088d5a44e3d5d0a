//! Status tells the kernel truth, end to end (issue 14.8; DESIGN.md "Invariants" 4): real
//! apiserver, controller and agents, the kernel in network namespaces, the leak probe on a
//! selected pod of every node.
//!
//! 1. A repaired drift does not flap the condition: the egress IP removed by hand on its
//!    node comes back within tens of milliseconds, and `Programmed` stays True throughout.
//! 2. A drift the agent cannot repair shows: the worker node's `eth0` goes down (a cable, a
//!    switch port, a link flap that lasts). The kernel flushes the steering route to the
//!    gateway node and refuses it back while the link is down; the steering table's
//!    blackhole drops its pods' traffic (fail closed), and the kernel no longer does what the
//!    plan says. Past the bound, status is `Programmed=False, KernelDiffers` naming the node
//!    and the next hop, with a Warning event; the agent's Lease report says the same. When
//!    the link is back, status is True again with a Normal event, and the pods leave from
//!    the egress IP. The probe never sees another source.

use std::time::{Duration, Instant};

use egressgw::api::EgressGateway;
use egressgw::controller::notices::event_reason;
use egressgw::dataplane::truth::KernelReport;
use egressgw::k8s::lease::decode_kernel;
use egressgw::k8s::names::{AGENT_LEASE_NAMESPACE, ANNOTATION_KERNEL, agent_lease};
use egressgw::kernel_truth::KERNEL_DIFFERS_BOUND;
use egressgw::status::reason;
use egressgw_tests::leak_scenarios::{self as scenario, E1, GATEWAY, HOLD, ONE_PER_NODE, SETTLE};
use egressgw_tests::sim::SimCluster;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};

/// How long status may take to show or clear a lasting difference after the bound.
const SHOWN: Duration = Duration::from_secs(15);
/// How long `Programmed` is watched after a repaired drift.
const NO_FLAP_WATCH: Duration = Duration::from_secs(3);
/// How long the link stays down at least: longer than the bound.
const LINK_DOWN_AT_LEAST: Duration = Duration::from_secs(4);
const POLL: Duration = Duration::from_millis(50);
/// Events of cluster-scoped objects land in `default`.
const EVENT_NAMESPACE: &str = "default";
/// The kernel report must stay small: it rides on every renewal.
const REPORT_MAX_BYTES: usize = 1024;

/// `Programmed`: (status, reason, message).
fn programmed(g: &EgressGateway) -> Option<(String, String, String)> {
    let c = g
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Programmed")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn gateway(sim: &SimCluster) -> EgressGateway {
    Api::<EgressGateway>::all(sim.cp.client())
        .get(GATEWAY)
        .await
        .expect("the gateway")
}

/// The kernel report in the Lease of node `i`'s agent, and its size.
async fn kernel_report(sim: &SimCluster, i: usize) -> Option<(KernelReport, usize)> {
    let lease = Api::<Lease>::namespaced(sim.cp.client(), AGENT_LEASE_NAMESPACE)
        .get(&agent_lease(sim.tb.node(i).name()))
        .await
        .ok()?;
    let raw = lease.metadata.annotations?.get(ANNOTATION_KERNEL)?.clone();
    Some((decode_kernel(&raw)?, raw.len()))
}

/// Waits until the gateway has an event of `reason` whose note contains `says`.
async fn wait_event(sim: &SimCluster, reason: &str, says: &str, warning: bool) {
    let events: Api<Event> = Api::namespaced(sim.cp.client(), EVENT_NAMESPACE);
    let deadline = Instant::now() + SHOWN;
    loop {
        let list = events.list(&ListParams::default()).await.unwrap();
        let found = list.items.iter().any(|e| {
            e.type_.as_deref() == Some(if warning { "Warning" } else { "Normal" })
                && e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(GATEWAY)
                && e.note.as_deref().is_some_and(|n| n.contains(says))
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event naming {says:?}: {:#?}",
            list.items
                .iter()
                .map(|e| (&e.type_, &e.reason, &e.note))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the control plane"]
async fn status_shows_a_kernel_that_differs_beyond_the_bound_and_recovers() {
    let sim = scenario::cluster(&ONE_PER_NODE, &[E1]).await.unwrap();
    let host = scenario::host_of(&sim, E1).await.unwrap();
    let worker = 1;
    let worker_name = sim.tb.node(worker).name().to_string();
    let next_hop = sim.tb.node(host).ip();
    let probe = sim.leak_probe(&ONE_PER_NODE).unwrap();
    probe.wait_steady(&[E1], HOLD, SETTLE).await.unwrap();

    // What the agents report of their kernels: the host holds E1, nothing differs.
    let (host_report, size) = kernel_report(&sim, host).await.expect("a kernel report");
    assert!(
        host_report.addresses.contains(&E1) && host_report.differs.is_empty(),
        "{host_report:?}"
    );
    assert!(size <= REPORT_MAX_BYTES, "{size} bytes: {host_report:?}");
    println!(
        "kernel-truth report_bytes={size} elements={}",
        host_report.elements
    );

    // 1. A drift the monitor repairs does not flap Programmed.
    let e1 = format!("{E1}/32");
    probe.mark("ip addr del E1 on the host");
    sim.tb
        .node(host)
        .netns()
        .exec("ip", &["addr", "del", &e1, "dev", "eth0"])
        .unwrap();
    let until = Instant::now() + NO_FLAP_WATCH;
    while Instant::now() < until {
        let p = programmed(&gateway(&sim).await).expect("Programmed");
        assert_eq!(p.0, "True", "a repaired drift flapped Programmed: {p:?}");
        tokio::time::sleep(POLL).await;
    }
    probe.wait_steady(&[E1], HOLD, SETTLE).await.unwrap();

    // 2. The worker's link goes down: its pods cannot be steered to the host any more.
    let node = sim.tb.node(worker).netns();
    let routes = node.exec("ip", &["-4", "route", "show"]).unwrap();
    probe.mark("worker eth0 down");
    let down = Instant::now();
    node.exec("ip", &["link", "set", "eth0", "down"]).unwrap();
    let g = sim
        .wait_gateway(GATEWAY, SHOWN, |g| {
            programmed(g).is_some_and(|(s, r, m)| {
                s == "False" && r == reason::KERNEL_DIFFERS && m.contains(&worker_name)
            })
        })
        .await
        .unwrap_or_else(|e| panic!("no Programmed=False KernelDiffers for {worker_name}: {e}"));
    let shown_after = down.elapsed();
    let (_, _, message) = programmed(&g).unwrap();
    println!(
        "kernel-truth shown_after_ms={:.0} message={message:?}",
        shown_after.as_secs_f64() * 1e3
    );
    assert!(
        shown_after >= KERNEL_DIFFERS_BOUND,
        "shown {shown_after:?} after the link went down: before the bound"
    );
    assert!(
        message.contains(&format!(
            "pods steered to {next_hop} are dropped: no steering route"
        )),
        "{message}"
    );
    wait_event(&sim, event_reason::KERNEL_DIFFERS, &worker_name, true).await;
    let (worker_report, size) = kernel_report(&sim, worker).await.expect("a kernel report");
    let d = worker_report
        .differs
        .get(GATEWAY)
        .unwrap_or_else(|| panic!("the worker reports no difference: {worker_report:?}"));
    assert!(d.unsteered.contains(&next_hop), "{d:?}");
    assert!(size <= REPORT_MAX_BYTES, "{size} bytes: {worker_report:?}");

    // The link comes back (with the node's routes, as its network configuration would).
    if let Some(rest) = LINK_DOWN_AT_LEAST.checked_sub(down.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    probe.mark("worker eth0 up");
    node.exec("ip", &["link", "set", "eth0", "up"]).unwrap();
    for line in routes.lines().filter(|l| !l.contains("proto kernel")) {
        let args: Vec<&str> = ["-4", "route", "replace"]
            .into_iter()
            .chain(line.split_whitespace())
            .collect();
        node.exec("ip", &args)
            .unwrap_or_else(|e| panic!("restoring route {line:?}: {e}"));
    }
    sim.wait_gateway(GATEWAY, SHOWN, |g| {
        programmed(g).is_some_and(|(s, r, _)| s == "True" && r == reason::PROGRAMMED)
    })
    .await
    .expect("Programmed=True again once the kernel matches");
    wait_event(
        &sim,
        event_reason::KERNEL_MATCHES,
        "holds the plan again",
        false,
    )
    .await;
    let (worker_report, _) = kernel_report(&sim, worker).await.expect("a kernel report");
    assert!(worker_report.differs.is_empty(), "{worker_report:?}");
    probe.wait_steady(&[E1], HOLD, SETTLE).await.unwrap();

    let report = probe.stop();
    eprintln!("{}", report.table(&[E1]));
    report.assert_no_leaks(&[E1]);
}
