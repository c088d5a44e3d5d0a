//! Programming-latency benchmark: 1,000 selected pods get their IPs in a burst; for each, the
//! time from its status write (acknowledged by the apiserver) to its IP being in the gateway
//! node's SNAT set in the kernel, and the agent's own input-to-commit histogram.
//!
//! Run (as root): `make bench-programming [ARGS=PODS]` (it builds the release `egressgw` binary
//! the simulated cluster runs, then this one).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use egressgw_bench_runtime::{exit_on_help, ms, quantile};
use egressgw_tests::sim::{SimCluster, status};
use futures::StreamExt;

const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const GATEWAY: &str = "billing-to-mainframe";
const DEFAULT_PODS: usize = 1000;
const PODS_PER_NODE_CIDR: usize = 240;
const CONCURRENCY: usize = 32;
const POLL: Duration = Duration::from_millis(5);
const USAGE: &str = "\
Usage: programming [PODS]

Programming-latency benchmark on the simulated cluster (as root): PODS selected pods (default
1000) get their IPs in a burst; for each, the time from its status write to its IP being in the
gateway node's nftables set. Needs the release egressgw binary beside this one (make
bench-programming builds both).
";

/// Every IPv4 element of every set of our table in the node's namespace.
fn kernel_elements(netns: &str) -> Vec<Ipv4Addr> {
    let Ok(out) = std::process::Command::new("ip")
        .args([
            "netns", "exec", netns, "nft", "-j", "list", "table", "ip", "egressgw",
        ])
        .output()
    else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    let mut ips = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            if let Some(ip) = e.as_str().and_then(|s| s.parse().ok()) {
                ips.push(ip);
            }
        }
    }
    ips
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    exit_on_help(USAGE);
    let pods: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(DEFAULT_PODS);
    let sim = SimCluster::start(3, &[2, 3], &[EGRESS_IP], 1).await?;
    sim.cp
        .create_namespace("billing", &[("team", "billing")])
        .await?;
    let out = sim
        .cp
        .kubectl([
            "apply",
            "-f",
            &format!(
                "{}/examples/01-one-ip.yaml",
                egressgw_tests::control_plane::repo_root().display()
            ),
        ])
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = sim
        .wait_gateway(
            GATEWAY,
            Duration::from_secs(30),
            status::ready_and_programmed,
        )
        .await?;
    let host = sim
        .node_index(&status::node_of(&g, "198.18.0.200").context("unassigned")?)
        .context("unknown node")?;

    // Pod objects (no network namespaces needed): IPs in the nodes' pod CIDRs.
    let specs: Vec<(String, usize, Ipv4Addr)> = (0..pods)
        .map(|i| {
            let node = 1 + (i / PODS_PER_NODE_CIDR) % 3;
            let block = i / (PODS_PER_NODE_CIDR * 3);
            let ip = Ipv4Addr::new(
                198,
                19,
                (node + 10 * block) as u8,
                (10 + i % PODS_PER_NODE_CIDR) as u8,
            );
            (format!("burst-{i}"), node, ip)
        })
        .collect();
    for (name, node, _) in &specs {
        sim.cp
            .create_pod(
                "billing",
                name,
                &[("app", "invoicer")],
                sim.tb.node(*node).name(),
            )
            .await?;
    }
    println!("{pods} pods created (Pending, no IP); gateway node: node-{host}");

    // Watch the gateway node's kernel while the IPs arrive.
    let written: Arc<Mutex<HashMap<Ipv4Addr, Instant>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<Ipv4Addr, Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ns = sim.tb.node(host).netns().name().to_string();
    let (s2, stop2) = (seen.clone(), stop.clone());
    let watcher = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let now = Instant::now();
            let els = kernel_elements(&ns);
            let mut s = s2.lock().expect("lock");
            for ip in els {
                s.entry(ip).or_insert(now);
            }
            drop(s);
            std::thread::sleep(POLL);
        }
    });

    let start = Instant::now();
    let cp = &sim.cp;
    let w = written.clone();
    futures::stream::iter(specs.iter().cloned())
        .map(|(name, _, ip)| {
            let w = w.clone();
            async move {
                cp.set_pod_ip("billing", &name, IpAddr::V4(ip)).await?;
                w.lock().expect("lock").insert(ip, Instant::now());
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let burst = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().expect("lock").len() < pods && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().expect("watcher");

    let written = written.lock().expect("lock").clone();
    let seen = seen.lock().expect("lock").clone();
    let mut lat: Vec<Duration> = written
        .iter()
        .filter_map(|(ip, t)| seen.get(ip).map(|s| s.saturating_duration_since(*t)))
        .collect();
    let missing = pods - lat.len();
    println!(
        "status writes of {pods} pod IPs took {} ({} concurrent)",
        ms(burst),
        CONCURRENCY
    );
    println!(
        "status write -> SNAT entry in the gateway node's kernel: p50 {}  p99 {}  max {}  ({missing} missing; {} ms polling)",
        ms(quantile(&mut lat, 0.5)),
        ms(quantile(&mut lat, 0.99)),
        ms(quantile(&mut lat, 1.0)),
        POLL.as_millis()
    );
    let metrics = sim.agent_metrics(host)?;
    let hist: BTreeMap<String, String> = metrics
        .lines()
        .filter(|l| l.starts_with("egressgw_agent_program_latency_seconds"))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    println!(
        "agent input-to-commit histogram on node-{host} (egressgw_agent_program_latency_seconds):"
    );
    for (k, v) in hist {
        println!("    {k} {v}");
    }
    Ok(())
}
