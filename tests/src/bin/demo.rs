//! `make demo`: egressgw on a simulated 3-node cluster, narrated.
//!
//! A real kube-apiserver and etcd, three nodes as network namespaces behind a firewall that
//! allowlists one egress IP, the real controller and agents, and a legacy server that says
//! which source IP it saw.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use egressgw_tests::sim::{SimCluster, status};
use egressgw_tests::testbed::client::connect_once;
use egressgw_tests::testbed::topology::{PROTECTED_SERVER, SERVER_PORT};

const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const GATEWAY: &str = "billing-to-mainframe";

fn say(s: &str) {
    println!("\n==> {s}");
}

fn connect(sim: &SimCluster, node: usize, k: usize) -> Result<Option<Ipv4Addr>> {
    let ns = sim.tb.pod(node, k).netns().path();
    Ok(connect_once(
        ns,
        SocketAddrV4::new(PROTECTED_SERVER, SERVER_PORT),
        Duration::from_millis(500),
    )?
    .ok()
    .map(|a| *a.ip()))
}

fn show(sim: &SimCluster, who: &str, node: usize, k: usize) -> Result<Option<Ipv4Addr>> {
    let seen = connect(sim, node, k)?;
    match seen {
        Some(ip) => println!(
            "    {who:<34} -> legacy server {PROTECTED_SERVER}: ACCEPTED, it saw source {ip}"
        ),
        None => {
            println!("    {who:<34} -> legacy server {PROTECTED_SERVER}: REJECTED by the firewall")
        }
    }
    Ok(seen)
}

async fn kubectl(sim: &SimCluster, args: &[&str]) -> Result<()> {
    println!("    $ kubectl {}", args.join(" "));
    let out = sim.cp.kubectl(args).await?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("    {line}");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    say(
        "Starting a real kube-apiserver + etcd, a 3-node cluster in network namespaces, the egressgw controller and one agent per node",
    );
    println!("    node-1 is a worker; node-2 and node-3 are labelled egressgw.io/gateway=true.");
    println!(
        "    The firewall in front of the legacy network 203.0.113.0/25 accepts only source {EGRESS_IP}."
    );
    let t = Instant::now();
    let mut sim = SimCluster::start(3, &[2, 3], &[EGRESS_IP], 1)
        .await
        .context("starting the simulated cluster")?;
    println!(
        "    ready in {:.1} s (process logs: {})",
        t.elapsed().as_secs_f64(),
        sim.logs().display()
    );

    say(
        "Pods: billing/invoicer-0 on node-1, billing/invoicer-1 on node-2 (app=invoicer), billing/web-0 on node-1 (app=web)",
    );
    sim.cp
        .create_namespace("billing", &[("team", "billing")])
        .await?;
    sim.add_pod("billing", "invoicer-0", &[("app", "invoicer")], 1, 0)
        .await?;
    sim.add_pod("billing", "invoicer-1", &[("app", "invoicer")], 2, 0)
        .await?;
    sim.add_pod("billing", "web-0", &[("app", "web")], 1, 1)
        .await?;

    say(
        "Before any EgressGateway: every pod leaves from its node's address, and the firewall says no",
    );
    show(&sim, "invoicer-0 (node-1)", 1, 0)?;
    show(&sim, "web-0 (node-1)", 1, 1)?;

    say(
        "Applying examples/01-one-ip.yaml: app=invoicer pods in team=billing namespaces leave from 198.18.0.200 to 203.0.113.0/24",
    );
    kubectl(
        &sim,
        &[
            "apply",
            "-f",
            &format!(
                "{}/examples/01-one-ip.yaml",
                egressgw_tests::control_plane::repo_root().display()
            ),
        ],
    )
    .await?;
    let t = Instant::now();
    let g = sim
        .wait_gateway(
            GATEWAY,
            Duration::from_secs(30),
            status::ready_and_programmed,
        )
        .await?;
    let host = status::node_of(&g, "198.18.0.200").context("no node holds the egress IP")?;
    let host_idx = sim.node_index(&host).context("unknown node")?;
    println!(
        "    Ready and Programmed after {:.0} ms; {EGRESS_IP} lives on {host}",
        t.elapsed().as_secs_f64() * 1e3
    );
    kubectl(&sim, &["get", "egw", "-o", "wide"]).await?;

    say("Traffic now");
    show(&sim, "invoicer-0 (node-1, steered)", 1, 0)?;
    show(&sim, "invoicer-1 (node-2)", 2, 0)?;
    show(&sim, "web-0 (node-1, not selected)", 1, 1)?;

    let other = (1..=3)
        .find(|n| *n != host_idx && *n != 1)
        .expect("a second gateway node");
    say(&format!(
        "Killing the agent of {host} with SIGKILL (its node keeps running): the IP must move to node-{other}"
    ));
    let killed = Instant::now();
    sim.kill_agent(host_idx)?;
    let mut gaps = 0usize;
    let mut first_via_new = None;
    let mut moved_at = None;
    while killed.elapsed() < Duration::from_secs(15) {
        let ok = connect(&sim, 1, 0)? == Some(EGRESS_IP);
        if !ok {
            gaps += 1;
        }
        if moved_at.is_none() {
            let g = sim
                .wait_gateway(GATEWAY, Duration::from_secs(1), |_| true)
                .await?;
            if status::node_of(&g, "198.18.0.200").is_some_and(|n| n != host) {
                moved_at = Some(killed.elapsed());
            }
        }
        if ok && sim.holders(EGRESS_IP)? == vec![other] {
            first_via_new = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = first_via_new.context("the egress IP never moved")?;
    println!(
        "    status moved the IP after        {:>6.0} ms",
        moved_at.unwrap_or(first).as_secs_f64() * 1e3
    );
    println!(
        "    first connection via node-{other} after {:>6.0} ms  (old node already dropped the address: kernel lifetime fencing)",
        first.as_secs_f64() * 1e3
    );
    println!("    failed connection attempts meanwhile: {gaps}");
    kubectl(&sim, &["get", "egw"]).await?;
    show(&sim, "invoicer-0 (node-1, steered)", 1, 0)?;

    say(&format!(
        "Restarting the agent on {host}: nothing moves back"
    ));
    let was_programmed = status::ready_and_programmed(
        &sim.wait_gateway(GATEWAY, Duration::from_secs(1), |_| true)
            .await?,
    );
    let restarted = Instant::now();
    sim.start_agent(host_idx)?;
    // Programmed was False while that node's agent was dead (its own pod's rules could not
    // follow the move); the restarted agent applies and reports at once.
    sim.wait_gateway(
        GATEWAY,
        Duration::from_secs(10),
        status::ready_and_programmed,
    )
    .await?;
    if was_programmed {
        println!("    Programmed all along: {host} had nothing left to do for the gateway");
    } else {
        println!(
            "    Programmed again {:.0} ms after the agent of {host} restarted (its own pod's rules waited for it)",
            restarted.elapsed().as_secs_f64() * 1e3
        );
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(restarted.elapsed())).await;
    kubectl(&sim, &["get", "egw"]).await?;
    println!(
        "    nodes holding {EGRESS_IP}: {:?}",
        sim.holders(EGRESS_IP)?
            .iter()
            .map(|i| format!("node-{i}"))
            .collect::<Vec<_>>()
    );
    kubectl(&sim, &["describe", "egw", GATEWAY]).await?;

    say("Cleaning up: processes, network namespaces, control plane");
    drop(sim);
    println!("    done.");
    Ok(())
}
