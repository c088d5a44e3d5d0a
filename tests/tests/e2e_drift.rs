//! Self-healing end to end (DESIGN.md, "Invariants" 4, failure table: "someone deletes our
//! table / rule / route / address"): real apiserver, controller and agents. On the node that
//! hosts the egress IP and on a worker node, someone deletes our table, flushes the whole
//! ruleset, or removes the egress IP. The agents own their table (Linux ≥ 6.9), so the first
//! is refused and the second passes it by; the address is put back by the agent's drift
//! monitor. The leak probe (selected pods on every node, every ~20 ms) sees the egress IP
//! again within 1 s and never another source. Each event prints
//! `drift-e2e node=<role> tamper=<what> interruption_ms=<longest>`.

use std::time::Duration;

use egressgw_tests::leak_scenarios::{self as scenario, E1, HOLD, ONE_PER_NODE, SETTLE};

/// The bound of the invariant, on the longest interruption any probed pod saw.
const REPAIR_BOUND: Duration = Duration::from_secs(1);
/// Quiet time between two events.
const BETWEEN: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the control plane"]
async fn tampering_on_a_gateway_and_a_source_node_is_repaired_within_a_second() {
    let sim = scenario::cluster(&ONE_PER_NODE, &[E1]).await.unwrap();
    let host = scenario::host_of(&sim, E1).await.unwrap();
    let worker = 1;
    let probe = sim.leak_probe(&ONE_PER_NODE).unwrap();
    probe.wait_steady(&[E1], HOLD, SETTLE).await.unwrap();

    let e1 = format!("{E1}/32");
    // (what, node, command, refused because the agent owns the table)
    let delete = vec!["nft", "delete", "table", "ip", "egressgw"];
    let flush = vec!["nft", "flush", "ruleset"];
    let events: Vec<(&str, usize, Vec<&str>, bool)> = vec![
        ("nft delete table ip egressgw", host, delete.clone(), true),
        ("nft flush ruleset", host, flush.clone(), false),
        (
            "ip addr del E/32",
            host,
            vec!["ip", "addr", "del", &e1, "dev", "eth0"],
            false,
        ),
        ("nft delete table ip egressgw", worker, delete, true),
        ("nft flush ruleset", worker, flush, false),
    ];
    let mut windows = Vec::new();
    for (i, (what, node, cmd, refused)) in events.iter().enumerate() {
        let role = if *node == host { "gateway" } else { "source" };
        let label = format!("{i}: {role} {what}");
        let at = probe.mark(&label);
        let done = sim.tb.node(*node).netns().exec(cmd[0], &cmd[1..]);
        match (done, refused) {
            (Ok(_), false) => {}
            (Err(e), true) => assert!(
                e.to_string().contains("Operation not permitted"),
                "{label}: {e}"
            ),
            (Ok(_), true) => panic!("{label}: our owned table was changed by someone else"),
            (Err(e), false) => panic!("{label}: {e}"),
        }
        probe
            .wait_steady(&[E1], HOLD, SETTLE)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        tokio::time::sleep(BETWEEN).await;
        windows.push((role, *what, at, probe.elapsed()));
    }
    let report = probe.stop();
    eprintln!("{}", report.table(&[E1]));
    let mut over = Vec::new();
    for (role, what, from, to) in &windows {
        let window = report.since_offset(*from).until_offset(*to);
        let longest = (0..ONE_PER_NODE.len())
            .map(|p| window.longest_interruption(p, &[E1]))
            .max()
            .unwrap_or_default();
        println!(
            "drift-e2e node={role} tamper={what:?} interruption_ms={:.0}",
            longest.as_secs_f64() * 1e3
        );
        if longest > REPAIR_BOUND {
            over.push(format!("{role} {what}: {longest:?}"));
        }
    }
    let metrics = sim.agent_metrics(host).unwrap_or_default();
    assert!(
        metrics.contains("egressgw_agent_drift_repairs_total{kind=\"address\"}"),
        "the gateway agent counts its repair of the address:\n{metrics}"
    );
    report.assert_no_leaks(&[E1]);
    assert!(over.is_empty(), "repaired too late: {over:?}");
}
