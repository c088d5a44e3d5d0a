//! Live heap of the planner's data structures for the benchmark's cluster (10,000 pods over
//! 100 nodes, 500 gateways): after building the index, after a full plan, after one gateway
//! node's plan; then what each part frees when dropped.
//!
//! Run: `cargo run -p egressgw --release --example plan_heap`

#[path = "../benches/fixture/mod.rs"]
mod fixture;

use fixture::{NODES, PODS, cluster};

/// Bytes in use on the heap (glibc): small-block arenas plus mmapped blocks.
fn heap() -> usize {
    // SAFETY: mallinfo2 only reads allocator statistics.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

struct Meter {
    last: usize,
}

impl Meter {
    fn step(&mut self, what: &str) {
        let now = heap();
        let delta = now as isize - self.last as isize;
        println!(
            "{what:<40} heap {:>8.2} MiB  delta {:>+9.2} MiB  {:>+7.0} B/pod",
            now as f64 / 1048576.0,
            delta as f64 / 1048576.0,
            delta as f64 / PODS as f64
        );
        self.last = now;
    }
}

fn main() {
    let mut m = Meter { last: heap() };
    m.step("start");
    let mut index = cluster();
    m.step("ClusterIndex built");
    let mut plan = egressgw::plan::plan(&index);
    m.step("plan::plan");
    let gateway_node = format!("node-{:03}", 0);
    assert!(
        index.nodes[&gateway_node]
            .labels
            .contains_key("egressgw.io/gateway")
    );
    let node_plan = plan.node_plan(&gateway_node);
    m.step(&format!("node_plan({gateway_node}) [gateway node]"));
    let worker_node = format!("node-{:03}", NODES - 1);
    let worker_plan = plan.node_plan(&worker_node);
    m.step(&format!("node_plan({worker_node}) [worker node]"));
    let entries: usize = node_plan.gateways.values().map(|g| g.pod_entries()).sum();
    println!(
        "  gateway node plan: {} gateways, {} hosted IPs, {entries} pod entries; worker: {} gateways",
        node_plan.gateways.len(),
        node_plan.hosted.len(),
        worker_plan.gateways.len()
    );

    println!("teardown (negative delta = what the part held):");
    drop((node_plan, worker_plan));
    m.step("  drop node plans");
    drop(std::mem::take(&mut plan.rollouts));
    m.step("  drop plan.rollouts");
    drop(std::mem::take(&mut plan.selections));
    m.step("  drop plan.selections");
    drop(plan);
    m.step("  drop rest of plan (memberships, assignments)");
    drop(std::mem::take(&mut index.pods));
    m.step("  drop index.pods");
    drop(index);
    m.step("  drop rest of index");
}
