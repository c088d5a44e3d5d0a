//! Planner benchmark: a full plan for 10,000 pods, 500 gateways and 100 nodes, and the
//! incremental update after one pod change.
//!
//! Run: `cargo bench -p egressgw --bench plan` (release build; prints medians and p99).

mod fixture;

use std::hint::black_box;
use std::time::{Duration, Instant};

use egressgw::index::PodKey;
use fixture::{APPS, GATEWAYS, NAMESPACES, NODES, PODS, cluster};

const FULL_RUNS: usize = 15;
const INCREMENTAL_RUNS: usize = 2_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let index = cluster();
    let plan = egressgw::plan::plan(&index);
    let selected: usize = plan
        .selections
        .by_gateway
        .values()
        .map(|s| s.pods.len())
        .sum();
    let lost: usize = plan
        .selections
        .by_gateway
        .values()
        .map(|s| s.lost.len())
        .sum();
    let placed = plan
        .assignments
        .by_gateway
        .values()
        .flatten()
        .filter(|p| p.placement.is_ok())
        .count();
    println!(
        "cluster: {PODS} pods, {GATEWAYS} gateways, {NODES} nodes; {selected} gateway-pod selections, {lost} lost to conflicts, {placed} egress IPs placed"
    );

    let mut full: Vec<Duration> = (0..FULL_RUNS)
        .map(|_| {
            let t = Instant::now();
            black_box(egressgw::plan::plan(black_box(&index)));
            t.elapsed()
        })
        .collect();
    full.sort();
    println!(
        "full plan:            median {:>9.3?}  p99 {:>9.3?}  ({FULL_RUNS} runs)",
        percentile(&full, 0.5),
        percentile(&full, 0.99)
    );

    let mut node_plans: Vec<Duration> = (0..NODES)
        .map(|n| {
            let t = Instant::now();
            black_box(plan.node_plan(&format!("node-{n:03}")));
            t.elapsed()
        })
        .collect();
    node_plans.sort();
    println!(
        "one node's plan:      median {:>9.3?}  p99 {:>9.3?}  ({NODES} nodes)",
        percentile(&node_plans, 0.5),
        percentile(&node_plans, 0.99)
    );

    // Incremental: relabel one pod at a time (it joins or leaves gateways), then update.
    let mut index = index;
    let mut plan = plan;
    let mut inc: Vec<Duration> = Vec::with_capacity(INCREMENTAL_RUNS);
    for i in 0..INCREMENTAL_RUNS {
        let p = (i * 7919) % PODS;
        let key = PodKey::new(format!("ns-{}", p % NAMESPACES), format!("pod-{p}"));
        let pod = index.pods.get_mut(&key).unwrap();
        pod.labels.insert("app", &format!("app-{}", (p + i) % APPS));
        let t = Instant::now();
        black_box(plan.update_pod(&index, &key));
        inc.push(t.elapsed());
    }
    inc.sort();
    let (med_full, med_inc) = (percentile(&full, 0.5), percentile(&inc, 0.5));
    println!(
        "incremental pod change: median {:>9.3?}  p99 {:>9.3?}  ({INCREMENTAL_RUNS} changes) -> {:.0}x cheaper than a full plan",
        med_inc,
        percentile(&inc, 0.99),
        med_full.as_secs_f64() / med_inc.as_secs_f64()
    );
    assert_eq!(
        plan,
        egressgw::plan::plan(&index),
        "incremental result must equal a full plan"
    );
    println!("check: incremental plan equals a full plan after {INCREMENTAL_RUNS} changes");
}
