//! What one EgressGateway status write costs the apiserver, by patch kind: server-side apply
//! (what the controller sent until this benchmark) against a JSON patch that replaces
//! `/status` whole (what it sends now).
//!
//! Starts the real control plane (kube-apiserver + etcd built by `make control-plane`),
//! creates `GATEWAYS` gateways, then for each kind writes `ROUNDS` × `GATEWAYS` statuses that
//! differ from the stored one (the selected-pod count changes, as under pod churn), 16 in
//! flight like the controller. Reports the client-side latency (p50, p99) and the apiserver's
//! and etcd's CPU time per write, from /proc. The kinds alternate round by round so drift in
//! the machine's load hits both alike.
//!
//! Run: `make bench-status-write` (as root not needed).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use egressgw::api::EgressGateway;
use egressgw_bench_runtime::{exit_on_help, ms, quantile};
use egressgw_tests::control_plane::ControlPlane;
use futures::StreamExt;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

const GATEWAYS: usize = 100;
const ROUNDS: usize = 20;
const IN_FLIGHT: usize = 16;
const MANAGER: &str = "status-write-bench";
const USAGE: &str = "\
Usage: status-write

What one EgressGateway status write costs the apiserver: server-side apply against one JSON
patch of /status, 2,000 writes of each kind against a real kube-apiserver and etcd (built by
make control-plane). Takes no arguments; root is not needed.
";

#[derive(Clone, Copy, Debug)]
enum Kind {
    ServerSideApply,
    JsonPatch,
}

fn gateway(i: usize) -> Result<EgressGateway> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "egressgw.io/v1alpha1",
        "kind": "EgressGateway",
        "metadata": { "name": format!("gw-{i}") },
        "spec": {
            "namespaceSelector": { "matchLabels": { "team": format!("team-{}", i % 10) } },
            "podSelector": { "matchLabels": { "app": format!("app-{i}") } },
            "destinationCIDRs": ["203.0.113.0/24"],
            "egressIPs": [format!("198.18.{}.{}", 1 + i / 200, 10 + i % 200)],
            "gatewayNodeSelector": { "matchLabels": { "egressgw.io/gateway": "true" } }
        }
    }))?)
}

/// A status shaped like the controller's (one IP assignment, Ready, a count that changes).
fn status(i: usize, count: usize) -> serde_json::Value {
    serde_json::json!({
        "observedGeneration": 1,
        "assignments": [{
            "egressIP": format!("198.18.{}.{}", 1 + i / 200, 10 + i % 200),
            "node": format!("node-{}", i % 20),
            "interface": "eth0",
            "epoch": 3,
            "since": "2026-11-28T00:00:00Z"
        }],
        "gatewayNodes": format!("node-{}", i % 20),
        "selectedPods": count,
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "Hosted",
            "message": "every egress IP is hosted by a live gateway node",
            "lastTransitionTime": "2026-11-28T00:00:00Z",
            "observedGeneration": 1
        }]
    })
}

fn cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        v if v > 0 => v as f64,
        _ => 100.0,
    };
    Ok(Duration::from_secs_f64(ticks as f64 / hz))
}

async fn write(api: &Api<EgressGateway>, kind: Kind, i: usize, count: usize) -> Result<Duration> {
    let name = format!("gw-{i}");
    let t = Instant::now();
    match kind {
        Kind::ServerSideApply => {
            let patch = serde_json::json!({
                "apiVersion": "egressgw.io/v1alpha1",
                "kind": "EgressGateway",
                "status": status(i, count),
            });
            api.patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        }
        Kind::JsonPatch => {
            let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
                { "op": "add", "path": "/status", "value": status(i, count) }
            ]))?;
            let pp = PatchParams {
                field_manager: Some(MANAGER.into()),
                ..PatchParams::default()
            };
            api.patch_status(&name, &pp, &Patch::Json::<()>(patch))
                .await?;
        }
    }
    Ok(t.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    exit_on_help(USAGE);
    if let Some(extra) = std::env::args().nth(1) {
        anyhow::bail!("unexpected argument {extra:?}\n\n{USAGE}");
    }
    let cp = ControlPlane::start_with_crds().await?;
    let (apiserver, etcd) = cp.pids();
    let (apiserver, etcd) = (
        apiserver.context("apiserver pid")?,
        etcd.context("etcd pid")?,
    );
    let api: Api<EgressGateway> = Api::all(cp.client());
    for i in 0..GATEWAYS {
        api.create(&PostParams::default(), &gateway(i)?).await?;
    }
    // Both kinds start from a status written once, so neither pays for the first one.
    for i in 0..GATEWAYS {
        write(&api, Kind::JsonPatch, i, 0).await?;
    }
    let mut lat = [Vec::new(), Vec::new()];
    let mut used = [(Duration::ZERO, Duration::ZERO); 2];
    for round in 0..ROUNDS * 2 {
        // A count the stored status does not have yet, so every write changes it.
        let count = round + 2;
        let (slot, kind) = if round % 2 == 0 {
            (0, Kind::ServerSideApply)
        } else {
            (1, Kind::JsonPatch)
        };
        let (a0, e0) = (cpu(apiserver)?, cpu(etcd)?);
        let results: Vec<Result<Duration>> = futures::stream::iter(0..GATEWAYS)
            .map(|i| write(&api, kind, i, count))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let (a1, e1) = (cpu(apiserver)?, cpu(etcd)?);
        for r in results {
            lat[slot].push(r?);
        }
        used[slot].0 += a1 - a0;
        used[slot].1 += e1 - e0;
    }
    let n = (ROUNDS * GATEWAYS) as f64;
    println!(
        "{} status writes each, {GATEWAYS} gateways, {IN_FLIGHT} in flight, kinds alternating by round",
        ROUNDS * GATEWAYS
    );
    for (slot, kind) in [(0, Kind::ServerSideApply), (1, Kind::JsonPatch)] {
        let (a, e) = used[slot];
        println!(
            "{kind:?}: latency p50 {}  p99 {};  CPU per write: apiserver {:.2} ms, etcd {:.2} ms",
            ms(quantile(&mut lat[slot], 0.5)),
            ms(quantile(&mut lat[slot], 0.99)),
            a.as_secs_f64() * 1e3 / n,
            e.as_secs_f64() * 1e3 / n
        );
    }
    Ok(())
}
