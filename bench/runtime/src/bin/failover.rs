//! Failover benchmark: a gateway node dies (its link goes down and its agent is SIGKILLed)
//! while a pod on another node holds an established TCP connection that keeps sending.
//! Per trial: time from the death to the first successful new connection from the egress IP,
//! whether the established connection survived, and its longest stall. The dead node is
//! revived and its agent restarted before the next trial, which kills the new host.
//!
//! Run (as root): `make bench-failover [ARGS=TRIALS]` (it builds the release `egressgw` binary
//! the simulated cluster runs, then this one).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use egressgw_bench_runtime::{exit_on_help, ms, quantile};
use egressgw_tests::sim::{SimCluster, status};
use egressgw_tests::testbed::client::connect_once;
use egressgw_tests::testbed::topology::{PROTECTED_SERVER, SERVER_PORT};

const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const GATEWAY: &str = "billing-to-mainframe";
const DEFAULT_TRIALS: usize = 20;
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Shorter than TCP's first SYN retransmission (1 s): a probe whose first SYN was lost cannot
/// succeed late and be counted from its early start.
const PROBE_TIMEOUT: Duration = Duration::from_millis(900);
const GIVE_UP: Duration = Duration::from_secs(15);
const USAGE: &str = "\
Usage: failover [TRIALS]

Failover benchmark on the simulated cluster (as root): each trial kills the node hosting the
egress IP while a pod holds an established connection, and measures the time to the first new
connection from the egress IP. TRIALS defaults to 20. Needs the release egressgw binary beside
this one (make bench-failover builds both).
";

fn probe(sim: &SimCluster) -> Result<bool> {
    let ns = sim.tb.pod(1, 0).netns().path();
    Ok(connect_once(
        ns,
        SocketAddrV4::new(PROTECTED_SERVER, SERVER_PORT),
        Duration::from_millis(300),
    )?
    .ok()
    .map(|a| *a.ip())
        == Some(EGRESS_IP))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    exit_on_help(USAGE);
    let trials: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(DEFAULT_TRIALS);
    let mut sim = SimCluster::start(3, &[2, 3], &[EGRESS_IP], 1).await?;
    sim.cp
        .create_namespace("billing", &[("team", "billing")])
        .await?;
    sim.add_pod("billing", "invoicer-0", &[("app", "invoicer")], 1, 0)
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
    let mut failovers = Vec::new();
    let mut stalls = Vec::new();
    let mut survived = 0;
    println!("trial  host    failover    established  max-stall");
    for trial in 1..=trials {
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while !probe(&sim)? {
            if Instant::now() > deadline {
                bail!("trial {trial}: no connectivity before the kill");
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
        let long = sim
            .tb
            .pod(1, 0)
            .long_lived(PROTECTED_SERVER, Duration::from_millis(50))?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let died = Instant::now();
        sim.tb.kill_node(host)?;
        sim.kill_agent(host)?;
        // Probes start every PROBE_EVERY, each in its own thread, so a probe stuck waiting for
        // a SYN answer does not hide the moment the path comes back: the failover is the start
        // time of the first probe that succeeds.
        let (tx, rx) = std::sync::mpsc::channel::<Duration>();
        let failover = loop {
            let ns = sim.tb.pod(1, 0).netns().path();
            let (tx, started) = (tx.clone(), died.elapsed());
            std::thread::spawn(move || {
                let ok = connect_once(
                    ns,
                    SocketAddrV4::new(PROTECTED_SERVER, SERVER_PORT),
                    PROBE_TIMEOUT,
                )
                .ok()
                .and_then(Result::ok)
                .is_some_and(|a| *a.ip() == EGRESS_IP);
                if ok {
                    let _ = tx.send(started);
                }
            });
            if let Ok(first) = rx.try_recv() {
                tokio::time::sleep(PROBE_TIMEOUT).await; // let earlier-started probes report
                break rx.try_iter().fold(first, Duration::min);
            }
            if died.elapsed() > GIVE_UP {
                bail!("trial {trial}: no failover within {GIVE_UP:?}");
            }
            tokio::time::sleep(PROBE_EVERY).await;
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = long.finish();
        let ok = report.survived();
        survived += usize::from(ok);
        println!(
            "{trial:>5}  node-{host}  {:>10}  {:>11}  {:>9}",
            ms(failover),
            if ok { "survived" } else { "LOST" },
            ms(report.max_stall)
        );
        failovers.push(failover);
        stalls.push(report.max_stall);
        sim.tb.revive_node(host)?;
        sim.start_agent(host)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Ok(dir) = std::env::var("EGRESSGW_KEEP_LOGS") {
        let status = std::process::Command::new("cp")
            .args(["-r", &sim.logs().display().to_string(), &dir])
            .status()?;
        println!("process logs copied to {dir}: {status}");
    }
    println!(
        "\nfailover (death -> first new connection from {EGRESS_IP}): p50 {}  p99 {}  max {}  over {trials} trials",
        ms(quantile(&mut failovers, 0.5)),
        ms(quantile(&mut failovers, 0.99)),
        ms(quantile(&mut failovers, 1.0))
    );
    println!(
        "established connections survived: {survived}/{trials}; stall p50 {}  p99 {}",
        ms(quantile(&mut stalls, 0.5)),
        ms(quantile(&mut stalls, 0.99))
    );
    Ok(())
}
