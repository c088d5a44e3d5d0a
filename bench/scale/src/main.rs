//! Scale benchmark: 10,000 pods, 500 EgressGateways, 100 nodes — 3 real (network namespaces,
//! real agents programming their kernels) and 97 simulated (Node objects and agent Leases
//! renewed every 500 ms by this program) — against a real kube-apiserver and the real
//! controller. Measures controller and agent memory and CPU, status latency, the largest
//! agent's watch traffic and input-to-kernel latency under pod churn, the apiserver load,
//! the controller's resync after a cold restart, a leader handover to a hot standby, and
//! failover at full size.
//!
//! Run (as root): `cargo build --release -p egressgw -p egressgw-bench-scale &&
//! target/release/bench-scale` (`--help` for the sizes; `--baseline` is the 3-node run).

mod cluster;
mod leases;
mod measure;
mod pods;
mod world;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use egressgw::api::EgressGateway;
use egressgw_tests::testbed::client::connect_once;
use egressgw_tests::testbed::topology::{PROTECTED_SERVER, SERVER_PORT};
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, PostParams};

use cluster::{LEADER_IDENTITY, ScaleCluster};
use egressgw::k8s::names::{CONTROLLER_LEASE, SYSTEM_NAMESPACE};
use leases::{SimAgent, SimAgents};
use measure::{
    GatewayWatch, GwSeen, LeaseHolderWatch, ProcSample, apiserver_requests, histogram,
    histogram_count, histogram_quantile, metric_value, mib, ms, proc_sample, quantile,
};
use pods::{Book, NodeDir, PodRec, SharedBook};
use world::{
    Oracle, PROBE_APPS, PROBE_TEAMS, namespaces, pod_labels, real_gateways, sim_gateways, team_ns,
};

/// A probe's status not correct after this long counts as this long (and as a miss).
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
const LATENCY: &str = "egressgw_agent_program_latency_seconds";
const FENCES: &str = "egressgw_agent_fences";
const RENEWALS: &str = "egressgw_agent_lease_renewal_duration_seconds";
const RECONCILE: &str = "egressgw_controller_reconcile_duration_seconds";
const STATUS_WRITE: &str = "egressgw_controller_status_write_duration_seconds";
const IS_LEADER: &str = "egressgw_controller_leader";
/// Leader-election identity of the hot standby (the leader is `cluster::LEADER_IDENTITY`).
const STANDBY_IDENTITY: &str = "controller-1";
/// The standby lists every pod before /readyz says 200.
const STANDBY_READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the old leader may take to exit after SIGTERM, and the standby to lead.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug, Clone)]
#[command(about = "egressgw scale benchmark (run as root)")]
struct Args {
    /// Real nodes (network namespaces with real agents); nodes 2.. are gateway candidates.
    #[arg(long, default_value_t = 3)]
    real_nodes: usize,
    /// Simulated nodes (Node objects + agent Leases renewed by this program).
    #[arg(long, default_value_t = 97)]
    sim_nodes: usize,
    /// Of the simulated nodes, how many form the gateway pool (label egressgw.io/pool=sim,
    /// hosting the simulated gateways' IPs, renewing every 500 ms); the others are workers
    /// whose agents renew at the idle cadence. Set it to --sim-nodes for a cluster where
    /// every node is a gateway node.
    #[arg(long, default_value_t = 20)]
    sim_gateway_nodes: usize,
    /// Pods created up front, spread over all nodes.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Gateways hosted by simulated nodes (plus 5 hosted by the real nodes).
    #[arg(long, default_value_t = 495)]
    sim_gateways: usize,
    /// Pod changes per second during churn (half creates, half deletes, one burst a second).
    #[arg(long, default_value_t = 100)]
    churn_rate: usize,
    #[arg(long, default_value_t = 60)]
    churn_secs: u64,
    #[arg(long, default_value_t = 30)]
    steady_secs: u64,
    /// Status-latency probes (pod added, then deleted) in steady state and during churn.
    #[arg(long, default_value_t = 20)]
    probes: usize,
    /// Pod changes made while the controller is down, before the resync measurement (and
    /// again right after the leader is told to stop, in the handover measurement).
    #[arg(long, default_value_t = 100)]
    restart_changes: usize,
    /// Data-path failover trials (a real gateway node dies).
    #[arg(long, default_value_t = 3)]
    failover_trials: usize,
    /// Concurrent API requests when creating objects.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The 3-node comparison run: no simulated nodes, no pods, 5 gateways, no churn.
    #[arg(long)]
    baseline: bool,
}

struct Ctx {
    client: Client,
    nodes: NodeDir,
    book: SharedBook,
    watch: GatewayWatch,
    names: Vec<String>,
    args: Args,
}

impl Ctx {
    /// Every gateway's status shows the expected selection, is current, and places every IP
    /// on a node other than `avoid`.
    fn all_correct(&self, seen: &HashMap<String, GwSeen>, avoid: Option<&str>) -> bool {
        let book = self.book.lock().expect("book");
        self.names.iter().enumerate().all(|(i, n)| {
            seen.get(n).is_some_and(|g| {
                g.current
                    && g.selected == book.expected[i]
                    && !g.nodes.is_empty()
                    && g.nodes
                        .values()
                        .all(|v| v.as_deref().is_some_and(|node| Some(node) != avoid))
            })
        })
    }

    fn wrong(&self, avoid: Option<&str>) -> Vec<String> {
        let seen = self.watch.seen.lock().expect("watch");
        let book = self.book.lock().expect("book");
        self.names
            .iter()
            .enumerate()
            .filter(|(i, n)| {
                !seen.get(*n).is_some_and(|g| {
                    g.current
                        && g.selected == book.expected[*i]
                        && g.nodes
                            .values()
                            .all(|v| v.as_deref().is_some_and(|x| Some(x) != avoid))
                })
            })
            .map(|(i, n)| {
                format!(
                    "{n}(want {} seen {:?})",
                    book.expected[i],
                    seen.get(n).map(|g| (g.selected, g.nodes.clone()))
                )
            })
            .take(5)
            .collect()
    }

    async fn add_pod(
        &self,
        ns: &str,
        app: usize,
        canary: bool,
        node: usize,
        prefix: &str,
        churnable: bool,
    ) -> Result<(PodRec, Vec<usize>)> {
        let p = self
            .book
            .lock()
            .expect("book")
            .reserve(ns, pod_labels(app, canary), node, prefix, churnable)
            .context("no free pod IP on the node")?;
        if let Err(e) = pods::create(&self.client, &self.nodes, &p).await {
            self.book.lock().expect("book").release(&p);
            return Err(e);
        }
        let g = self.book.lock().expect("book").added(p.clone());
        Ok((p, g))
    }

    async fn delete_pod(&self, p: &PodRec) -> Result<Vec<usize>> {
        pods::delete(&self.client, p).await?;
        Ok(self.book.lock().expect("book").removed(p))
    }

    /// A random pod for churn: never in the probe teams.
    fn random_churn_pod(&self) -> (String, usize, bool, usize) {
        let mut b = self.book.lock().expect("book");
        let ns_count = world::TEAMS + world::SHARED;
        let ns = loop {
            let i = b.rand(ns_count);
            if !PROBE_TEAMS.contains(&i) {
                break i;
            }
        };
        let ns = if ns < world::TEAMS {
            team_ns(ns)
        } else {
            format!("shared-{}", ns - world::TEAMS)
        };
        let app = b.rand(world::APPS);
        let canary = b.rand(7) == 0;
        let node = 1 + b.rand(self.nodes.len());
        (ns, app, canary, node)
    }

    /// The pod changes of a controller restart or handover: `--restart-changes` at full size
    /// (half creates, half deletes); one pod of real-0's (named `prefix`-…) in the baseline.
    async fn restart_changes(&self, prefix: &str) -> Result<()> {
        if self.args.pods > 0 {
            self.burst(self.args.restart_changes.div_ceil(2)).await?;
        } else {
            self.add_pod(&team_ns(3), 0, false, 2, prefix, true).await?;
        }
        Ok(())
    }

    /// One churn burst: `n` creates and `n` deletes, concurrently.
    async fn burst(&self, n: usize) -> Result<usize> {
        let mut ops: Vec<Option<PodRec>> = Vec::new();
        for _ in 0..n {
            ops.push(None);
            if let Some(p) = self.book.lock().expect("book").take_churnable() {
                ops.push(Some(p));
            }
        }
        let done = futures::stream::iter(ops)
            .map(|op| async move {
                match op {
                    None => {
                        let (ns, app, canary, node) = self.random_churn_pod();
                        self.add_pod(&ns, app, canary, node, "churn", true)
                            .await
                            .map(|_| ())
                    }
                    Some(p) => self.delete_pod(&p).await.map(|_| ()),
                }
            })
            .buffer_unordered(self.args.concurrency)
            .collect::<Vec<_>>()
            .await;
        let mut ok = 0;
        for r in done {
            match r {
                Ok(()) => ok += 1,
                Err(e) => eprintln!("churn: {e:#}"),
            }
        }
        Ok(ok)
    }

    /// Probe: add a pod that only gateway `g` (index) selects, time until `g`'s status counts
    /// it; delete it, time until the status no longer does.
    async fn probe(&self, i: usize) -> Result<(Duration, Duration)> {
        let (t, app) = probe_target(&self.book, i);
        let node = 1 + (i * 7) % self.nodes.len();
        let (p, gs) = self
            .add_pod(&team_ns(t), app, false, node, "probe", false)
            .await?;
        let t0 = Instant::now();
        // A status not correct within the timeout counts as the timeout (reported as such).
        let add = self
            .wait_counts(&gs)
            .await
            .map_or(PROBE_TIMEOUT, |t| t - t0);
        self.book.lock().expect("book").remove_live(&p.name);
        let gs = self.delete_pod(&p).await?;
        let t1 = Instant::now();
        let del = self
            .wait_counts(&gs)
            .await
            .map_or(PROBE_TIMEOUT, |t| t - t1);
        Ok((add, del))
    }

    async fn wait_counts(&self, gs: &[usize]) -> Option<Instant> {
        let want: Vec<(String, i64)> = {
            let b = self.book.lock().expect("book");
            gs.iter()
                .map(|i| (self.names[*i].clone(), b.expected[*i]))
                .collect()
        };
        self.watch
            .wait(PROBE_TIMEOUT, |seen| {
                want.iter()
                    .all(|(n, c)| seen.get(n).is_some_and(|g| g.selected == *c))
            })
            .await
    }
}

/// (team, app) of probe `i`: a combination only a sim gateway selects (real-0 in the baseline).
fn probe_target(book: &SharedBook, i: usize) -> (usize, usize) {
    let b = book.lock().expect("book");
    let (t, k) = (PROBE_TEAMS[i % 2], PROBE_APPS[(i / 2) % 2]);
    if !b
        .oracle
        .selecting(&team_ns(t), &pod_labels(k, false))
        .is_empty()
    {
        (t, k)
    } else {
        (0, 0)
    }
}

/// Samples a process's RSS (max) and CPU over a window.
struct Window {
    start: Instant,
    first: HashMap<u32, ProcSample>,
    max_rss: Arc<Mutex<HashMap<u32, u64>>>,
    sampler: tokio::task::JoinHandle<()>,
    api: BTreeMap<(String, String), f64>,
    bytes: u64,
    hist: Vec<(f64, f64)>,
    fences: f64,
    renewals: Vec<(f64, f64)>,
    controller: String,
    /// Fences of every real agent at the start.
    all_fences: BTreeMap<usize, f64>,
}

/// A histogram's cumulative buckets: (upper bound, count).
type Buckets = Vec<(f64, f64)>;

struct WindowResult {
    secs: f64,
    proc: HashMap<u32, (u64, u64, Duration)>, // pid -> (rss at end, max rss, cpu used)
    api: BTreeMap<(String, String), f64>,
    agent_bytes: u64,
    hist: (Buckets, Buckets),
    /// Times the agent fenced itself in the window; pods it held and its live heap at the end.
    agent_fences: f64,
    /// The agent's lease renewal round trips (histogram before, after).
    agent_renewals: (Buckets, Buckets),
    /// The controller's /metrics at the start and the end of the window.
    controller: (String, String),
    /// Fences per real node in the window (the measured agent sits behind the counting
    /// proxy, the others talk to the apiserver directly).
    all_fences: BTreeMap<usize, f64>,
    agent_pods: f64,
    agent_heap: f64,
    /// apiserver and etcd pids (their CPU is printed too).
    control_plane: (Option<u32>, Option<u32>),
}

/// Each real agent's fence counter now.
fn all_fences(cl: &ScaleCluster) -> BTreeMap<usize, f64> {
    cl.agents
        .keys()
        .filter_map(|i| Some((*i, metric_value(&cl.agent_metrics(*i).ok()?, FENCES)?)))
        .collect()
}

async fn open_window(cl: &ScaleCluster, pids: &[u32], agent: usize) -> Result<Window> {
    let first: HashMap<u32, ProcSample> = pids
        .iter()
        .filter_map(|p| proc_sample(*p).ok().map(|s| (*p, s)))
        .collect();
    let max_rss: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
    let (m, ps) = (max_rss.clone(), pids.to_vec());
    let sampler = tokio::spawn(async move {
        loop {
            for p in &ps {
                if let Ok(s) = proc_sample(*p) {
                    let mut m = m.lock().expect("rss");
                    let e = m.entry(*p).or_insert(0);
                    *e = (*e).max(s.rss_kib);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Ok(Window {
        start: Instant::now(),
        first,
        max_rss,
        sampler,
        api: apiserver_requests(&cl.cp.client()).await?,
        bytes: cl.agents[&agent]
            .proxy
            .down
            .load(std::sync::atomic::Ordering::Relaxed),
        hist: histogram(&cl.agent_metrics(agent)?, LATENCY),
        fences: metric_value(&cl.agent_metrics(agent)?, FENCES).unwrap_or(0.0),
        renewals: histogram(&cl.agent_metrics(agent)?, RENEWALS),
        controller: cl.controller_metrics(),
        all_fences: all_fences(cl),
    })
}

async fn close_window(cl: &ScaleCluster, w: Window, agent: usize) -> Result<WindowResult> {
    w.sampler.abort();
    let secs = w.start.elapsed().as_secs_f64();
    let agent_text = cl.agent_metrics(agent)?;
    let api1 = apiserver_requests(&cl.cp.client()).await?;
    let api = api1
        .iter()
        .map(|(k, v)| (k.clone(), v - w.api.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let max = w.max_rss.lock().expect("rss").clone();
    let proc = w
        .first
        .iter()
        .filter_map(|(p, s0)| {
            let s1 = proc_sample(*p).ok()?;
            Some((
                *p,
                (
                    s1.rss_kib,
                    max.get(p).copied().unwrap_or(0).max(s1.rss_kib),
                    s1.cpu.saturating_sub(s0.cpu),
                ),
            ))
        })
        .collect();
    Ok(WindowResult {
        secs,
        proc,
        api,
        agent_bytes: cl.agents[&agent]
            .proxy
            .down
            .load(std::sync::atomic::Ordering::Relaxed)
            - w.bytes,
        hist: (w.hist, histogram(&agent_text, LATENCY)),
        agent_fences: metric_value(&agent_text, FENCES).unwrap_or(0.0) - w.fences,
        agent_renewals: (w.renewals, histogram(&agent_text, RENEWALS)),
        controller: (w.controller, cl.controller_metrics()),
        all_fences: all_fences(cl)
            .into_iter()
            .map(|(i, f)| (i, f - w.all_fences.get(&i).copied().unwrap_or(0.0)))
            .collect(),
        agent_pods: metric_value(&agent_text, "egressgw_agent_pods_held").unwrap_or(0.0),
        agent_heap: metric_value(&agent_text, "egressgw_agent_heap_bytes").unwrap_or(0.0),
        control_plane: cl.cp.pids(),
    })
}

fn print_window(name: &str, r: &WindowResult, controller: u32, agent_pid: u32) {
    println!("\n== {name} ({:.0} s)", r.secs);
    if let Some((rss, max, cpu)) = r.proc.get(&controller) {
        println!(
            "controller: RSS {} (max {}), CPU {:.2} s = {:.1}% of a core",
            mib(*rss),
            mib(*max),
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / r.secs
        );
    }
    if let Some((rss, max, cpu)) = r.proc.get(&agent_pid) {
        println!(
            "agent (largest sets): RSS {} (max {}), CPU {:.2} s = {:.1}% of a core",
            mib(*rss),
            mib(*max),
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / r.secs
        );
    }
    println!(
        "agent: holds {:.0} pods, live heap {:.1} MiB, fenced itself {:.0} times",
        r.agent_pods,
        r.agent_heap / 1048576.0,
        r.agent_fences
    );
    println!(
        "fences per real agent: {}",
        r.all_fences
            .iter()
            .map(|(i, f)| format!("node-{i} {f:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (what, name) in [
        ("reconcile (plan, statuses handed to the writer)", RECONCILE),
        ("one status write", STATUS_WRITE),
    ] {
        let (b, a) = (
            histogram(&r.controller.0, name),
            histogram(&r.controller.1, name),
        );
        let q =
            |p| histogram_quantile(&b, &a, p).map_or("-".into(), |s| format!("{:.0} ms", s * 1e3));
        println!(
            "controller {what} ({:.0}): p50 {}  p99 {}",
            histogram_count(&b, &a),
            q(0.5),
            q(0.99)
        );
    }
    let (b, a) = &r.agent_renewals;
    let q = |p| histogram_quantile(b, a, p).map_or("-".into(), |s| format!("{:.0} ms", s * 1e3));
    println!(
        "agent lease renewal round trip ({:.0} renewals): p50 {}  p99 {}",
        histogram_count(b, a),
        q(0.5),
        q(0.99)
    );
    for (what, pid) in [
        ("apiserver", r.control_plane.0),
        ("etcd", r.control_plane.1),
    ] {
        if let Some((_, _, cpu)) = pid.and_then(|p| r.proc.get(&p)) {
            println!(
                "{what}: CPU {:.1}% of a core",
                100.0 * cpu.as_secs_f64() / r.secs
            );
        }
    }
    println!(
        "agent bytes from apiserver: {:.0} KiB/min",
        r.agent_bytes as f64 / 1024.0 * 60.0 / r.secs
    );
    let (b, a) = &r.hist;
    let n = histogram_count(b, a);
    let q = |p| histogram_quantile(b, a, p).map_or("-".into(), |s| format!("{:.1} ms", s * 1e3));
    println!(
        "agent input-to-kernel ({n:.0} applies): p50 {}  p99 {}",
        q(0.5),
        q(0.99)
    );
    println!("apiserver requests/s (verb resource):");
    for ((verb, res), v) in &r.api {
        let rate = v / r.secs;
        if rate >= 0.05 {
            println!("    {verb:<8} {res:<32} {rate:>8.2}");
        }
    }
    let mut by_verb: BTreeMap<&str, f64> = BTreeMap::new();
    for ((verb, _), v) in &r.api {
        *by_verb.entry(verb).or_default() += v / r.secs;
    }
    println!(
        "    by verb: {}",
        by_verb
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A second replica starts and syncs while the leader leads; the leader gets SIGTERM and the
/// cold restart's pod changes are made at once; time from the signal until every status is
/// correct, with when the old leader exited and when the standby led. The standby is THE
/// controller afterwards (`ScaleCluster::stop_leader`).
async fn leader_handover(cl: &mut ScaleCluster, ctx: &Ctx) -> Result<()> {
    let watch = &ctx.watch;
    if watch
        .wait(Duration::from_secs(30), |s| ctx.all_correct(s, None))
        .await
        .is_none()
    {
        println!(
            "leader handover: statuses not settled before it (continuing): {:?}",
            ctx.wrong(None)
        );
    }
    let lease =
        LeaseHolderWatch::start(ctx.client.clone(), SYSTEM_NAMESPACE, CONTROLLER_LEASE).await;
    let t_start = Instant::now();
    let (standby_pid, standby_metrics) = cl.start_standby(STANDBY_IDENTITY)?;
    let Some(ready) = cluster::wait_ready(standby_metrics, STANDBY_READY_TIMEOUT).await else {
        println!(
            "\nleader handover: SKIPPED, standby {STANDBY_IDENTITY} (pid {standby_pid}) not ready within {STANDBY_READY_TIMEOUT:?}"
        );
        return cl.kill_standby();
    };
    let holder = lease.holder();
    println!(
        "\nhot standby {STANDBY_IDENTITY} (pid {standby_pid}): /readyz 200 (watches synced) {} after it started; leader Lease held by {holder:?}",
        ms(ready - t_start)
    );
    if holder != LEADER_IDENTITY {
        println!(
            "leader handover: the leader Lease is not held by {LEADER_IDENTITY} before the handover"
        );
    }

    let t0 = Instant::now();
    let old_pid = cl.stop_leader()?;
    let statuses = async {
        ctx.restart_changes("handover").await?;
        anyhow::Ok(
            watch
                .wait(Duration::from_secs(120), |s| ctx.all_correct(s, None))
                .await,
        )
    };
    let leading = lease.wait(t0, HANDOVER_TIMEOUT, |h| h == STANDBY_IDENTITY);
    let (correct, exited, leading) =
        tokio::join!(statuses, cl.reap_retiring(HANDOVER_TIMEOUT), leading);
    let (correct, exited) = (correct?, exited?);
    let released = lease.first_since(t0, str::is_empty);
    let new_rss = proc_sample(standby_pid).map(|s| s.rss_kib).unwrap_or(0);
    let gauge = metric_value(&cl.controller_metrics(), IS_LEADER);
    let after =
        |t: Option<Instant>| t.map_or(format!("NOT within {HANDOVER_TIMEOUT:?}"), |t| ms(t - t0));
    match correct {
        Some(t) => println!(
            "leader handover: {} pod changes; every status correct {} after SIGTERM to the leader (old leader exited after {}, standby leading after {})",
            ctx.args.restart_changes,
            ms(t - t0),
            after(exited.map(|e| e.0)),
            after(leading)
        ),
        None => println!(
            "leader handover: {} pod changes; statuses NOT correct 120 s after SIGTERM to the leader (old leader exited after {}, standby leading after {}): {:?}",
            ctx.args.restart_changes,
            after(exited.map(|e| e.0)),
            after(leading),
            ctx.wrong(None)
        ),
    }
    println!(
        "leader handover: old leader (pid {old_pid}) {}; leader Lease {}; new leader (pid {standby_pid}) RSS {}, {IS_LEADER} {}",
        exited.map_or(
            format!("still running {HANDOVER_TIMEOUT:?} after SIGTERM, SIGKILLed"),
            |e| e.1.to_string()
        ),
        released.map_or(
            "never seen released (taken over at expiry)".into(),
            |t| format!("seen released after {}", ms(t - t0))
        ),
        mib(new_rss),
        gauge.map_or("-".into(), |v| format!("{v:.0}"))
    );
    Ok(())
}

fn probe_connect(cl: &ScaleCluster, allowed: &[Ipv4Addr]) -> Result<bool> {
    let ns = cl.tb.pod(1, 0).netns().path();
    Ok(connect_once(
        ns,
        SocketAddrV4::new(PROTECTED_SERVER, SERVER_PORT),
        Duration::from_millis(300),
    )?
    .ok()
    .is_some_and(|a| allowed.contains(a.ip())))
}

/// After the run (its cluster already torn down), background tasks get this long to stop
/// before the process exits regardless: a benchmark left spinning would skew the next run.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run());
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let mut args = Args::parse();
    if args.baseline {
        (
            args.sim_nodes,
            args.pods,
            args.sim_gateways,
            args.churn_secs,
            args.restart_changes,
        ) = (0, 0, 0, 0, 1);
        args.steady_secs = args.steady_secs.min(15);
    }
    ensure!(
        args.real_nodes >= 3,
        "need node 1 for pods and two gateway candidates"
    );
    ensure!(
        args.real_nodes + args.sim_nodes <= 180,
        "node IPs must stay below the egress range"
    );
    let started = Instant::now();
    let reals = real_gateways();
    let allow: Vec<Ipv4Addr> = reals.iter().flat_map(|g| g.egress_ips.clone()).collect();
    let mut cl = ScaleCluster::start(args.real_nodes, &allow).await?;
    println!("logs: {}", cl.logs().display());
    let client = cl.cp.client();

    // Nodes: real ones exist; simulated ones get Node objects and Lease heartbeats.
    let total = args.real_nodes + args.sim_nodes;
    let mut names = Vec::new();
    let mut ips = Vec::new();
    for n in 1..=total {
        if n <= args.real_nodes {
            names.push(cl.tb.node(n).name().to_string());
            ips.push(cl.tb.node(n).ip());
        } else {
            names.push(format!("sim-{n:03}"));
            ips.push(Ipv4Addr::new(198, 18, 0, 16 + n as u8));
        }
    }
    let nodes = NodeDir { names, ips };
    let sims: Vec<usize> = (args.real_nodes + 1..=total).collect();
    futures::stream::iter(sims.iter().copied())
        .map(|n| {
            let (cp, nodes) = (&cl.cp, &nodes);
            let pool: &[(&str, &str)] = if n - args.real_nodes <= args.sim_gateway_nodes {
                &[world::SIM_POOL]
            } else {
                &[]
            };
            async move {
                cp.create_node(nodes.name(n), pool, IpAddr::V4(nodes.ip(n)), true)
                    .await
            }
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let sim_agents = SimAgents::start(
        client.clone(),
        &sims
            .iter()
            .map(|n| SimAgent {
                node: nodes.name(*n).to_string(),
                interfaces: format!("eth0={}/15", nodes.ip(*n)),
                idle: n - args.real_nodes > args.sim_gateway_nodes,
            })
            .collect::<Vec<_>>(),
    );

    let controller_pid = cl.start_controller()?;
    for i in 1..=args.real_nodes {
        cl.start_agent(i).await?;
    }

    // Namespaces, gateways, pods.
    let nsdefs = namespaces();
    for ns in &nsdefs {
        let labels: Vec<(&str, &str)> = ns
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        cl.cp.create_namespace(&ns.name, &labels).await?;
    }
    let mut gws = reals.clone();
    gws.extend(sim_gateways(args.sim_gateways));
    let gw_names: Vec<String> = gws.iter().map(|g| g.name.clone()).collect();
    let book: SharedBook = Arc::new(Mutex::new(Book::new(
        Oracle::new(&nsdefs, gws.clone()),
        total,
    )));
    let watch = GatewayWatch::start(client.clone());
    let t_objects = Instant::now();
    let api: Api<EgressGateway> = Api::all(client.clone());
    futures::stream::iter(gws.iter())
        .map(|g| {
            let api = api.clone();
            async move {
                let obj: EgressGateway = serde_json::from_value(g.to_json())?;
                api.create(&PostParams::default(), &obj)
                    .await
                    .with_context(|| format!("creating {}", g.name))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let ctx = Ctx {
        client: client.clone(),
        nodes: nodes.clone(),
        book: book.clone(),
        watch: watch.clone(),
        names: gw_names.clone(),
        args: args.clone(),
    };

    // The failover probe pod: the testbed's pod on node 1, selected by real-0.
    {
        let p = PodRec {
            ns: team_ns(0),
            name: "failover-probe".into(),
            node: 1,
            slot: 0,
            labels: pod_labels(0, false),
            churnable: false,
        };
        cl.cp
            .create_pod(
                &p.ns,
                &p.name,
                &[("app", "app-0"), ("track", "stable")],
                nodes.name(1),
            )
            .await?;
        cl.cp
            .set_pod_ip(&p.ns, &p.name, IpAddr::V4(cl.tb.pod(1, 0).ip()))
            .await?;
        book.lock().expect("book").added(p);
    }

    let n_ns = nsdefs.len();
    let specs: Vec<(String, usize, bool, usize)> = (0..args.pods)
        .map(|i| {
            let ns = &nsdefs[i % n_ns].name;
            (
                ns.clone(),
                (i / n_ns) % world::APPS,
                i % 7 == 0,
                1 + i % total,
            )
        })
        .collect();
    let results = futures::stream::iter(specs)
        .map(|(ns, app, canary, node)| {
            let ctx = &ctx;
            async move {
                let churnable = !PROBE_TEAMS.iter().any(|t| team_ns(*t) == ns);
                ctx.add_pod(&ns, app, canary, node, "p", churnable)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect::<Result<Vec<_>>>()?;
    let created = t_objects.elapsed();
    println!(
        "created {} nodes ({} simulated, {} of them gateway nodes), {} namespaces, {} gateways, {} pods in {:.1} s",
        total,
        args.sim_nodes,
        args.sim_gateway_nodes.min(args.sim_nodes),
        n_ns,
        gws.len(),
        args.pods + 1,
        created.as_secs_f64()
    );
    let Some(conv) = watch
        .wait(Duration::from_secs(300), |s| ctx.all_correct(s, None))
        .await
    else {
        bail!(
            "statuses did not converge within 300 s: {:?}",
            ctx.wrong(None)
        );
    };
    println!(
        "all statuses correct {:.1} s after the last object was created",
        (conv - t_objects - created).as_secs_f64()
    );

    // The agent holding the largest sets: the host of real-0's IP.
    let host_name = watch
        .get("real-0")
        .and_then(|g| g.nodes.values().next().cloned().flatten())
        .context("real-0 unplaced")?;
    let agent = cl
        .node_index(&host_name)
        .context("real-0 is not on a real node")?;
    let agent_pid = cl.agents[&agent].child.id();
    let real0 = book.lock().expect("book").expected[0];
    println!(
        "largest sets: node {host_name} (agent pid {agent_pid}) hosts real-0 with {real0} pods"
    );
    let mut pids = vec![controller_pid, agent_pid];
    let (apiserver, etcd) = cl.cp.pids();
    pids.extend(apiserver.into_iter().chain(etcd));

    // Steady state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let w = open_window(&cl, &pids, agent).await?;
    let mut steady_lat = Vec::new();
    for i in 0..args.probes {
        let (a, d) = ctx.probe(i).await?;
        steady_lat.extend([a, d]);
    }
    let left = Duration::from_secs(args.steady_secs).saturating_sub(w.start.elapsed());
    tokio::time::sleep(left).await;
    let steady = close_window(&cl, w, agent).await?;
    print_window("steady state", &steady, controller_pid, agent_pid);
    println!(
        "pod change -> status correct (steady, {} changes, {} not within {PROBE_TIMEOUT:?}): p50 {}  p99 {}  max {}",
        steady_lat.len(),
        steady_lat.iter().filter(|d| **d >= PROBE_TIMEOUT).count(),
        ms(quantile(&mut steady_lat, 0.5)),
        ms(quantile(&mut steady_lat, 0.99)),
        ms(quantile(&mut steady_lat, 1.0))
    );

    // Churn.
    if args.churn_secs > 0 {
        let w = open_window(&cl, &pids, agent).await?;
        let per_burst = args.churn_rate / 2;
        let churn = async {
            let mut changes = 0;
            let mut behind = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for _ in 0..args.churn_secs {
                tick.tick().await;
                let t = Instant::now();
                changes += ctx.burst(per_burst).await?;
                if t.elapsed() > Duration::from_secs(1) {
                    behind += 1;
                }
            }
            anyhow::Ok((changes, behind))
        };
        let probes = async {
            let mut v = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(args.churn_secs);
            let mut i = 1000;
            while Instant::now() < deadline && i < 1000 + 4 * args.probes {
                let (a, d) = ctx.probe(i).await?;
                v.extend([a, d]);
                i += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            anyhow::Ok(v)
        };
        let (c, p) = tokio::join!(churn, probes);
        let (changes, behind) = c?;
        let mut churn_lat = p?;
        let r = close_window(&cl, w, agent).await?;
        print_window(
            &format!(
                "churn: {} pod changes/s target, {changes} done = {:.0}/s, {behind} bursts overran their second",
                args.churn_rate,
                changes as f64 / r.secs
            ),
            &r,
            controller_pid,
            agent_pid,
        );
        println!(
            "pod change -> status correct (under churn, {} changes, {} not within {PROBE_TIMEOUT:?}): p50 {}  p99 {}  max {}",
            churn_lat.len(),
            churn_lat.iter().filter(|d| **d >= PROBE_TIMEOUT).count(),
            ms(quantile(&mut churn_lat, 0.5)),
            ms(quantile(&mut churn_lat, 0.99)),
            ms(quantile(&mut churn_lat, 1.0))
        );
        let t = Instant::now();
        match watch
            .wait(Duration::from_secs(120), |s| ctx.all_correct(s, None))
            .await
        {
            Some(at) => println!("every status correct {} after churn stopped", ms(at - t)),
            None => bail!(
                "statuses did not settle 120 s after churn: {:?}",
                ctx.wrong(None)
            ),
        }
    }

    // Cold restart of a single replica (no standby): changes while it is down, then time to
    // every status correct.
    cl.kill_controller()?;
    ctx.restart_changes("restart").await?;
    let t_restart = Instant::now();
    let new_pid = cl.start_controller()?;
    let resync = watch
        .wait(Duration::from_secs(120), |s| ctx.all_correct(s, None))
        .await
        .map(|t| t - t_restart);
    let resync_rss = proc_sample(new_pid).map(|s| s.rss_kib).unwrap_or(0);
    match resync {
        Some(d) => println!(
            "\ncontroller cold restart (single replica, no standby): {} pod changes while down; every status correct {} after the new process started (its RSS then {})",
            args.restart_changes,
            ms(d),
            mib(resync_rss)
        ),
        None => println!(
            "\ncontroller cold restart (single replica, no standby): statuses NOT correct 120 s after the restart: {:?}",
            ctx.wrong(None)
        ),
    }

    // Leader handover to a hot standby (a rolling update of the 2-replica deployment).
    leader_handover(&mut cl, &ctx).await?;

    // Failover of a simulated gateway node (control plane only: status moves its IPs).
    if !sims.is_empty() {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for g in watch.seen.lock().expect("watch").values() {
            for n in g.nodes.values().flatten() {
                *count.entry(n.clone()).or_default() += 1;
            }
        }
        let victim = count
            .iter()
            .filter(|(n, _)| n.starts_with("sim-"))
            .max_by_key(|(_, c)| **c)
            .map(|(n, c)| (n.clone(), *c))
            .context("no sim host")?;
        let t0 = Instant::now();
        sim_agents.fail(&victim.0);
        match watch
            .wait(Duration::from_secs(30), |s| {
                ctx.all_correct(s, Some(&victim.0))
            })
            .await
        {
            Some(t) => println!(
                "simulated gateway node {} (hosting {} egress IPs) stops renewing: all its IPs on other nodes in status after {}",
                victim.0,
                victim.1,
                ms(t - t0)
            ),
            None => println!(
                "simulated gateway node {} failover NOT done in 30 s: {:?}",
                victim.0,
                ctx.wrong(Some(&victim.0))
            ),
        }
    }

    // Data-path failover: real-0's host dies (link down + agent SIGKILLed), as in
    // bench/runtime's failover benchmark; time to the first new connection from real-0's IP.
    let egress = reals[0].egress_ips[0];
    let mut failovers = Vec::new();
    for trial in 1..=args.failover_trials {
        let Some(_) = watch
            .wait(Duration::from_secs(30), |s| ctx.all_correct(s, None))
            .await
        else {
            bail!("trial {trial}: statuses not settled: {:?}", ctx.wrong(None));
        };
        let host = watch
            .get("real-0")
            .and_then(|g| g.nodes.values().next().cloned().flatten())
            .context("real-0 unplaced")?;
        let host = cl.node_index(&host).context("real-0 not on a real node")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !probe_connect(&cl, &[egress])? {
            if Instant::now() > deadline {
                bail!("trial {trial}: no connectivity through {egress} before the kill");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let died = Instant::now();
        cl.tb.kill_node(host)?;
        cl.kill_agent(host)?;
        let took = loop {
            if probe_connect(&cl, &[egress])? {
                break died.elapsed();
            }
            if died.elapsed() > Duration::from_secs(20) {
                bail!("trial {trial}: no failover within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        println!(
            "failover trial {trial}: node-{host} died; first connection from {egress} through the new host after {}",
            ms(took)
        );
        failovers.push(took);
        cl.tb.revive_node(host)?;
        cl.start_agent(host).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if !failovers.is_empty() {
        println!(
            "data-path failover over {} trials: p50 {}  max {}",
            failovers.len(),
            ms(quantile(&mut failovers, 0.5)),
            ms(quantile(&mut failovers, 1.0))
        );
    }
    println!(
        "\nsimulated lease renewals: {} ok, {} failed; total run {:.0} s",
        sim_agents
            .renewals
            .load(std::sync::atomic::Ordering::Relaxed),
        sim_agents.errors.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    drop(sim_agents);
    Ok(())
}
