//! `egressgw agent --node-name N`: one per node. Renews its Lease, watches what its node
//! needs, computes its node plan and commits it to the kernel; fences itself when it cannot
//! renew. Rules stay in place when it stops (`--cleanup` removes them).

pub mod decide;
pub mod drift;
pub mod fence;
pub mod heartbeat;
pub mod inputs;
pub mod lifetimes;
pub mod marks;
pub mod outage;
pub mod peers;
pub mod pod_watches;
pub mod programmed;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use kube::Client;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tracing::{error, info, info_span, warn};

use crate::dataplane::route_model::RoutingState;
use crate::dataplane::{CounterKind, Dataplane, DataplaneConfig, KernelDataplane};
use crate::index::NodeInterface;
use crate::k8s::names::{AGENT_LEASE_NAMESPACE, SYSTEM_NAMESPACE};
use crate::plan::{ClusterPlan, NodePlan, assign, plan_with};
use crate::telemetry::http::{Health, serve};
use crate::telemetry::metrics::{AgentMetrics, label};

use decide::{Retention, Situation};
use fence::{FenceClock, FenceTiming};
use heartbeat::{Heartbeat, Report};
use inputs::{Change, Inputs};

/// Coalesce bursts of watch events into one apply.
pub const DEBOUNCE: Duration = Duration::from_millis(2);
/// How often the fencing deadline is checked without any event.
pub const TICK: Duration = Duration::from_millis(50);
/// Freed heap memory is returned to the kernel at least this often (and after full plans).
pub const TRIM_EVERY: Duration = Duration::from_secs(60);
/// The shortest gap between two renewals, early ones included (the Lease write budget).
pub const MIN_RENEW_GAP: Duration = Duration::from_millis(100);
/// At most one attempt per this long to remove the agent-not-ready taint from the node.
pub const UNTAINT_RETRY: Duration = Duration::from_secs(1);
/// Interfaces are re-read every this many renewals.
pub const INTERFACES_EVERY: u32 = 10;

#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// The node this agent runs on (`spec.nodeName` of its pod, via the downward API).
    #[arg(long, env = "NODE_NAME", required_unless_present = "cleanup")]
    pub node_name: Option<String>,
    /// Remove everything egressgw owns on this node and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// kubeconfig file (default: in-cluster, then $KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace egressgw is installed in (the peer key Secret).
    #[arg(long, env = "EGRESSGW_NAMESPACE", default_value = SYSTEM_NAMESPACE)]
    pub namespace: String,
    /// Namespace of the agents' Leases (this agent writes its own there, nothing else).
    #[arg(long, env = "EGRESSGW_LEASE_NAMESPACE", default_value = AGENT_LEASE_NAMESPACE)]
    pub lease_namespace: String,
    /// Work in this network namespace (the testbed's simulated nodes); default: the agent's own.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Address of /metrics, /healthz, /readyz.
    #[arg(long, default_value = "0.0.0.0:9091")]
    pub metrics_addr: SocketAddr,
    /// Lease renewal period, milliseconds.
    #[arg(long, default_value_t = 500)]
    pub renew_ms: u64,
    /// Lease renewal period while the node matches no gateway's gatewayNodeSelector and hosts
    /// nothing, milliseconds (0: always renew every --renew-ms).
    #[arg(long, default_value_t = 5000)]
    pub idle_renew_ms: u64,
    /// Drop egress IPs when no renewal sent this many milliseconds ago has succeeded.
    #[arg(long, default_value_t = 1000)]
    pub fence_ms: u64,
    /// Extend egress IP lifetimes only after renewals that completed within this many ms.
    #[arg(long, default_value_t = 300)]
    pub refresh_window_ms: u64,
    /// The controller's takeover deadline, milliseconds (checked against the fencing bounds).
    #[arg(long, default_value_t = crate::controller::DEFAULT_TAKEOVER.as_millis() as u64)]
    pub takeover_ms: u64,
    /// Mark bits for steering (must not overlap the CNI's).
    #[arg(long, default_value_t = crate::dataplane::config::DEFAULT_MARK_MASK, value_parser = parse_u32)]
    pub mark_mask: u32,
    /// First routing table id of the steering tables.
    #[arg(long, default_value_t = crate::dataplane::config::DEFAULT_TABLE_BASE)]
    pub table_base: u32,
    /// Priority of the steering policy rules.
    #[arg(long, default_value_t = crate::dataplane::config::DEFAULT_RULE_PRIORITY)]
    pub rule_priority: u32,
    /// How long a pod stays in this node's no-leak guard after it left it (other nodes may
    /// still steer it here for a moment), milliseconds.
    #[arg(long, default_value_t = decide::DEFAULT_GUARD_RETENTION.as_millis() as u64)]
    pub guard_retention_ms: u64,
    /// A Service range of the cluster (repeatable), excluded from every gateway's
    /// destinations like the ServiceCIDR objects; give the controller the same.
    #[arg(long = "service-cidr")]
    pub service_cidrs: Vec<IpNetwork>,
    /// UDP port of the peer channel on the node's addresses (authenticated pings between
    /// gateway-candidate agents; see docs/security.md).
    #[arg(long, default_value_t = peers::DEFAULT_PEER_PORT)]
    pub peer_port: u16,
    /// On SIGTERM (an upgrade), keep this node's egress IPs this many milliseconds for the
    /// next agent on the node, and tell the controller to wait that long before judging the
    /// node; 0: no hand-over (the IPs fail over).
    #[arg(long, default_value_t = DEFAULT_HANDOVER.as_millis() as u64)]
    pub handover_ms: u64,
    /// Period of the full kernel read-and-diff that repairs drift the event monitor missed,
    /// milliseconds.
    #[arg(long, default_value_t = drift::DEFAULT_DRIFT_CHECK.as_millis() as u64)]
    pub drift_check_ms: u64,
}

/// The default hand-over window of a stopping agent (a DaemonSet rolling update replaces the
/// pod within it).
pub const DEFAULT_HANDOVER: Duration = Duration::from_secs(10);
/// How long a stopping agent waits for the renewal that announces its hand-over.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(3);

fn parse_u32(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?}: {e}"))
}

/// State shared by the heartbeat task and the apply loop.
struct Shared {
    fence: FenceClock,
    /// The first renewal of this process succeeded or failed: until then nothing inherited
    /// from a predecessor is touched.
    first_outcome: bool,
    /// The node may host nothing: renew at the idle cadence, host nothing, never fence.
    idle: bool,
    epoch: i32,
    needs_new_epoch: bool,
    /// The kernel holds fewer egress IPs than the last plan (a lifetime ran out): re-apply.
    needs_reapply: bool,
    hosted_planned: usize,
    /// Egress IPs the last committed plan put in the kernel (what the peers are told).
    held: Vec<std::net::Ipv4Addr>,
    /// The renewal announcing the hand-over succeeded and the lifetimes cover the window.
    handed_over: bool,
    /// An apply held an egress IP back (the address gate was closed): re-apply after the
    /// next renewal.
    adds_held_back: bool,
    report: Report,
}

type SharedDataplane = Arc<Mutex<KernelDataplane>>;

fn dataplane_config(args: &AgentArgs, timing: &FenceTiming) -> DataplaneConfig {
    DataplaneConfig {
        netns: args.netns.clone(),
        mark_mask: args.mark_mask,
        table_base: args.table_base,
        rule_priority: args.rule_priority,
        address_lifetime_secs: Some(timing.address_lifetime_secs),
        ..DataplaneConfig::default()
    }
}

/// The node's interfaces with their subnets, from the kernel: egress IPs (ours) and
/// loopback are not interfaces that can carry one.
pub fn node_interfaces(routing: &RoutingState) -> Vec<NodeInterface> {
    let ours = crate::dataplane::config::ADDRESS_PROTO;
    let mut v: Vec<NodeInterface> = routing
        .addresses
        .iter()
        .filter(|a| a.proto != Some(ours) && !a.ip.is_loopback())
        .filter_map(|a| {
            let link = routing.link_by_index(a.link)?;
            if SERVICE_ADDRESS_LINKS.contains(&link.name.as_str()) {
                return None;
            }
            let network = IpNetwork::new(a.ip.into(), a.prefix).ok()?;
            Some(NodeInterface {
                name: link.name.clone(),
                network,
            })
        })
        .collect();
    // Subnets first (what placement needs), then single addresses, then at most a bounded
    // number: the report is written on every renewal.
    v.sort_by_key(|i| (i.network.prefix() == 32, i.name.clone(), i.network));
    v.truncate(MAX_REPORTED_ADDRESSES);
    v
}

/// Interfaces that hold the cluster's Service addresses (kube-proxy IPVS mode puts every
/// ClusterIP on `kube-ipvs0`, NodeLocal DNSCache its address on `nodelocaldns`): never
/// reported; they can be thousands and never carry egress IPs.
pub const SERVICE_ADDRESS_LINKS: [&str; 2] = ["kube-ipvs0", "nodelocaldns"];
/// At most this many interface addresses go into the agent's Lease report.
pub const MAX_REPORTED_ADDRESSES: usize = 64;

/// Run the agent (or the cleanup).
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let timing = FenceTiming {
        renew_interval: Duration::from_millis(args.renew_ms),
        fence_after: Duration::from_millis(args.fence_ms),
        refresh_window: Duration::from_millis(args.refresh_window_ms),
        ..FenceTiming::default()
    };
    let takeover = Duration::from_millis(args.takeover_ms);
    timing
        .validate(takeover)
        .map_err(|e| anyhow::anyhow!("unsafe timing: {e}"))?;
    let cfg = dataplane_config(&args, &timing);
    if args.cleanup {
        let mut dp = KernelDataplane::new(cfg)?;
        let r = dp.cleanup()?;
        info!(
            rules_removed = r.rules_removed,
            addresses_removed = ?r.addresses_removed,
            routing_changes = r.routing_changes,
            "cleanup: removed everything egressgw owned on this node"
        );
        return Ok(());
    }
    let node = args
        .node_name
        .clone()
        .expect("clap requires --node-name without --cleanup");
    // Adding an egress IP starts a fresh kernel lifetime: only right after a renewal or
    // while the peers confirm an outage (opened by the heartbeat and the hold loop).
    let gate = crate::dataplane::config::AddressGate::default();
    let cfg = DataplaneConfig {
        address_gate: Some(gate.clone()),
        ..cfg
    };
    let client: Client = crate::k8s::client(args.kubeconfig.as_deref()).await?;
    let dp: SharedDataplane = Arc::new(Mutex::new(KernelDataplane::new(cfg.clone())?));
    let ours = dp.lock().expect("dataplane lock").ownership()?;
    let lifetimes = Arc::new(lifetimes::Lifetimes::start(cfg, ours)?);
    // One read of what a predecessor left: its egress IPs (ours by the record in our table;
    // IFA_PROTO only where the kernel keeps it) are held, not acquired, so the acquire rule
    // does not hold them back; and its SNAT is kept while the pod watches list
    // (decide::carry_inherited).
    let (inherited, mut inherited_snat): (BTreeSet<std::net::IpAddr>, Option<decide::Inherited>) =
        match dp.lock().expect("dataplane lock").snapshot() {
            Ok(s) => (
                s.routing
                    .addresses
                    .iter()
                    .map(|a| std::net::IpAddr::V4(a.ip))
                    .collect(),
                s.table.map(|t| t.snat_members()).filter(|m| !m.is_empty()),
            ),
            Err(e) => {
                warn!(error = %e, "cannot read what a predecessor left: nothing inherited");
                (BTreeSet::new(), None)
            }
        };
    let mut stop = std::pin::pin!(crate::telemetry::signals::stop_requested()?);

    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let (dp2, m2) = (dp.clone(), metrics.clone());
    let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        refresh_counters(&dp2, &m2);
        if let Some(b) = crate::telemetry::memory::heap_in_use() {
            m2.heap_bytes.set(b as i64);
        }
    });
    let health = Health {
        ready: ready.clone(),
        registry: Arc::new(Mutex::new(registry)),
        refresh: Some(refresh),
    };
    let metrics_addr = args.metrics_addr;
    tokio::spawn(async move {
        if let Err(e) = serve(metrics_addr, health).await {
            error!(error = %e, addr = %metrics_addr, "metrics server failed");
        }
    });

    let notify = Arc::new(Notify::new());
    let renew_now = Arc::new(Notify::new());
    let idle_renew = (args.idle_renew_ms > 0).then(|| Duration::from_millis(args.idle_renew_ms));
    let shared = Arc::new(Mutex::new(Shared {
        fence: FenceClock::new(timing),
        first_outcome: false,
        idle: false,
        epoch: 0,
        needs_new_epoch: false,
        needs_reapply: false,
        hosted_planned: 0,
        held: inherited
            .iter()
            .filter_map(|ip| match ip {
                std::net::IpAddr::V4(v4) => Some(*v4),
                std::net::IpAddr::V6(_) => None,
            })
            .collect(),
        handed_over: false,
        adds_held_back: false,
        report: Report {
            renew_interval: timing.renew_interval,
            ..Report::default()
        },
    }));
    let wakes = Wakes {
        apply: notify.clone(),
        renew: renew_now.clone(),
    };
    let epoch = spawn_heartbeat(
        &args,
        &node,
        takeover,
        shared.clone(),
        HeartbeatKernel {
            dp: dp.clone(),
            lifetimes: lifetimes.clone(),
            gate: gate.clone(),
        },
        wakes,
        metrics.clone(),
    )
    .await?;
    let peers: Arc<OnceLock<Arc<peers::Peers>>> = Arc::new(OnceLock::new());
    {
        let own = shared.clone();
        let state: peers::OwnState = Arc::new(move |now| {
            let s = own.lock().expect("agent state lock");
            peers::Own {
                cut_off: s.fence.degraded(now),
                fresh_age: s.fence.fresh_age(now),
                held: s.held.clone(),
            }
        });
        let (client, namespace, netns, port, me, slot) = (
            client.clone(),
            args.namespace.clone(),
            args.netns.clone(),
            args.peer_port,
            node.clone(),
            peers.clone(),
        );
        let bound = timing.kernel_bound() - timing.refresh_window;
        tokio::spawn(async move {
            match peers::start_when_keyed(client, namespace, netns, port, me, bound, state).await {
                Ok(p) => {
                    let _ = slot.set(p);
                }
                Err(e) => {
                    error!(error = %e, "the peer channel cannot start: this agent fences on its own deadline during any apiserver outage")
                }
            }
        });
        tokio::spawn(outage::hold_loop(
            peers.clone(),
            shared.clone(),
            (lifetimes.clone(), gate.clone()),
            notify.clone(),
            metrics.clone(),
        ));
    }
    info!(node = %node, epoch, "agent starting");
    for (who, bits, advice) in marks::collisions(args.mark_mask) {
        warn!(
            mark_mask = format_args!("{:#010x}", args.mark_mask),
            their_bits = format_args!("{bits:#010x}"),
            component = who,
            "--mark-mask overlaps the default marks of {who}: if it runs on this node, move one of them ({advice})"
        );
    }

    let drift = drift::DriftRepairs::start(
        &dp,
        notify.clone(),
        Duration::from_millis(args.drift_check_ms),
    )?;
    let mut inputs = Inputs::start(
        client.clone(),
        &node,
        notify.clone(),
        args.service_cidrs.clone(),
    )
    .await?;
    info!(node = %node, "watches synced");

    let mut last_plan: Option<NodePlan> = None;
    // The plan last committed (kept across failed applies, for the guard retention).
    let mut committed: Option<NodePlan> = None;
    let mut retention = Retention::new(Duration::from_millis(args.guard_retention_ms));
    let untainting = Arc::new(AtomicBool::new(false));
    let mut cluster: Option<ClusterPlan> = None;
    let mut last_fenced = false;
    let mut last_trim = Instant::now();
    let mut dirty_since: Option<Instant> = Some(Instant::now());
    let mut peers_known = false;
    let mut repairing = BTreeSet::new();
    let mut foreign_ips: BTreeSet<std::net::Ipv4Addr> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = notify.notified() => {
                dirty_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(DEBOUNCE).await;
            }
            _ = tokio::time::sleep(TICK) => {}
            () = &mut stop => {
                hand_over(&shared, &renew_now, Duration::from_millis(args.handover_ms)).await;
                return Ok(());
            }
        }
        let now = Instant::now();
        let (fenced, idle, epoch, first_outcome) = {
            // Past the deadline, the peers may confirm an outage for everyone (agent::peers).
            let hold = peers.get().map(|p| p.hold(now));
            let first_failed = shared
                .lock()
                .expect("agent state lock")
                .fence
                .first_failed_sent();
            // A peer that renewed after this node's first failed renewal shows the control
            // plane answers: this node is cut off alone, no confirmation will come.
            let alone = match (peers.get(), first_failed) {
                (Some(p), Some(t)) => p.renewed_after(t, now),
                _ => None,
            };
            let mut s = shared.lock().expect("agent state lock");
            let verdict = match (&hold, &alone) {
                (None, _) => fence::Hold::Unavailable,
                (Some(Ok(_)), _) => fence::Hold::Confirmed,
                (Some(Err(_)), Some(_)) => fence::Hold::Unavailable,
                (Some(Err(_)), None) => fence::Hold::Pending,
            };
            if !s.idle && s.fence.check_holding(now, verdict) {
                s.needs_new_epoch = true;
                metrics.fences.inc();
                let why = match &hold {
                    Some(Err(e)) => e.to_string(),
                    _ => "no peer channel".to_string(),
                };
                warn!(node = %node, peers = %why, "fencing: no lease renewal succeeded in time; dropping this node's egress IPs");
                dirty_since.get_or_insert(now);
            }
            if std::mem::take(&mut s.needs_reapply) {
                warn!(node = %node, "an egress IP is missing from the kernel (its lifetime ran out, or it was held back); re-applying");
                last_plan = None;
                dirty_since.get_or_insert(now);
            }
            (s.fence.is_fenced(), s.idle, s.epoch, s.first_outcome)
        };
        let drifted = drift.take();
        if !drifted.is_empty() {
            repairing.extend(drifted);
            last_plan = None; // re-apply against what the kernel holds now
            dirty_since.get_or_insert(now);
        }
        if retention.next_expiry().is_some_and(|t| t <= now) {
            dirty_since.get_or_insert(now);
        }
        let tainted = inputs
            .index
            .nodes
            .get(&node)
            .is_some_and(|n| n.agent_not_ready_taint);
        if tainted && (!fenced || idle) && !untainting.load(Ordering::SeqCst) {
            dirty_since.get_or_insert(now); // retry removing the taint
        }
        metrics.fenced.set(i64::from(fenced && !idle));
        if fenced != last_fenced {
            dirty_since.get_or_insert(now);
        }
        let Some(since) = dirty_since else { continue };
        let span = info_span!("apply", node = %node, epoch);
        let _guard = span.enter();

        let Some(change) = inputs.refresh(epoch) else {
            continue;
        };
        let unchanged = matches!(&change, Change::Pods(keys) if keys.is_empty());
        let everything = change == Change::Everything;
        if let Some(p) = peers.get()
            && (everything || !peers_known)
        {
            p.set_known(if idle {
                BTreeMap::new()
            } else {
                peers::targets::known_peers(&inputs.index, &node)
            });
            peers_known = true;
        }
        // Whether the node may host changes only with gateways or nodes: a full change.
        if let (true, Some(idle_renew)) = (everything, idle_renew) {
            let want_idle = !inputs.may_host();
            if want_idle != idle {
                set_cadence(&shared, &node, want_idle, timing, idle_renew);
                if !want_idle {
                    renew_now.notify_one();
                }
                dirty_since.get_or_insert(now);
            }
        }
        let plan_now = match (change, cluster.as_mut()) {
            (Change::Pods(keys), Some(plan)) => {
                if !keys.is_empty() {
                    plan.update_pods(&inputs.index, &keys);
                }
                plan
            }
            _ => cluster.insert(plan_with(
                &inputs.index,
                assign::from_status(&inputs.index, Some((&node, i64::from(epoch)))),
            )),
        };
        let retention_due = retention.next_expiry().is_some_and(|t| t <= now);
        if unchanged && fenced == last_fenced && last_plan.is_some() && !retention_due {
            dirty_since = None;
            continue;
        }
        let candidates = inputs.guarded_gateways();
        let situation = Situation {
            first_outcome_known: first_outcome,
            fenced,
            idle,
        };
        let Some(mut plan) = decide::program(
            plan_now.node_plan_guarding(&node, |g| candidates.contains(g)),
            situation,
        ) else {
            continue; // the first renewal outcome wakes the loop
        };
        plan.remote_pod_ranges = crate::plan::guard::remote_pod_ranges(&inputs.index, &node);
        let local_pods: BTreeSet<std::net::IpAddr> = inputs
            .index
            .pods
            .values()
            .filter(|p| p.node.as_deref() == Some(node.as_str()))
            .flat_map(|p| p.ipv4())
            .collect();
        retention.apply(now, &mut plan, committed.as_ref(), |ip| {
            local_pods.contains(&ip)
        });
        if inherited_snat.is_some() && inputs.pods_synced() {
            info!("pod watches listed: the predecessor's SNAT is no longer carried");
            inherited_snat = None;
        }
        if let Some(inherited) = &inherited_snat {
            let known: BTreeSet<std::net::IpAddr> =
                inputs.index.pods.values().flat_map(|p| p.ipv4()).collect();
            let origin = |ip: std::net::IpAddr| {
                inputs
                    .index
                    .nodes
                    .values()
                    .filter(|n| n.name != node)
                    .find(|n| n.pod_cidrs.iter().any(|r| r.contains(ip)))
                    .and_then(|n| n.internal_ip)
            };
            decide::carry_inherited(&mut plan, inherited, |ip| known.contains(&ip), origin);
        }
        let mut held_back = false;
        if let Some(p) = peers.get() {
            let held: BTreeSet<std::net::IpAddr> = committed
                .as_ref()
                .map(|c| c.hosted.keys().copied().collect())
                .unwrap_or_else(|| inherited.clone());
            if let Some(again) = outage::gate_acquisitions(&mut plan, &held, p, now, &metrics) {
                held_back = true;
                let wake = notify.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(again.into()).await;
                    wake.notify_one();
                });
            }
        }
        if last_plan.as_ref() != Some(&plan) {
            let dp = dp.clone();
            let p = plan.clone();
            let (result, truth) = tokio::task::spawn_blocking(move || {
                let mut d = dp.lock().expect("dataplane lock");
                let result = d.apply(&p);
                (result, d.truth())
            })
            .await?;
            match truth {
                Ok(truth) => report_kernel(&shared, &renew_now, truth),
                Err(e) => warn!(error = %e, "cannot read what the kernel holds"),
            }
            match result {
                Ok(r) => {
                    metrics.applies.get_or_create(&label("result", "ok")).inc();
                    metrics
                        .program_latency
                        .observe(since.elapsed().as_secs_f64());
                    metrics.garps_sent.inc_by(r.garps_sent as u64);
                    metrics.conntrack_deleted.inc_by(r.conntrack_deleted as u64);
                    if !r.is_noop() {
                        info!(
                            elements_added = r.elements_added,
                            elements_removed = r.elements_removed,
                            addresses_added = ?r.addresses_added,
                            addresses_removed = ?r.addresses_removed,
                            garps = r.garps_sent,
                            latency_ms = since.elapsed().as_secs_f64() * 1e3,
                            "committed node plan"
                        );
                    }
                    record_sizes(&metrics, &plan);
                    if !r.addresses_held_back.is_empty() {
                        shared.lock().expect("agent state lock").adds_held_back = true;
                        renew_now.notify_one();
                    }
                    drift::record_repair(
                        &metrics,
                        &std::mem::take(&mut repairing),
                        &r,
                        since.elapsed(),
                    );
                    foreign_ips = r.foreign_addresses.iter().map(|f| f.ip).collect();
                    // (an address that is not ours is not held here)
                    shared.lock().expect("agent state lock").held = plan
                        .hosted
                        .keys()
                        .filter_map(|ip| match ip {
                            std::net::IpAddr::V4(v4) => Some(*v4),
                            std::net::IpAddr::V6(_) => None,
                        })
                        .filter(|v4| !foreign_ips.contains(v4))
                        .collect();
                    committed = Some(plan.clone());
                }
                Err(e) => {
                    metrics
                        .applies
                        .get_or_create(&label("result", "error"))
                        .inc();
                    error!(error = %e, "applying the node plan failed; the previous state stays, retrying");
                    last_plan = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        dirty_since = None;
        last_fenced = fenced;
        metrics.pods_held.set(inputs.pods.store.len() as i64);
        metrics.pod_watches.set(inputs.pods.watches() as i64);
        let programmed = programmed::digests(&plan, &foreign_ips);
        {
            let mut s = shared.lock().expect("agent state lock");
            if s.report.programmed != programmed {
                // Report what was just committed now, whatever the cadence, so `Programmed`
                // follows the kernel within a round trip (the heartbeat keeps its budget).
                renew_now.notify_one();
            }
            s.report.programmed = programmed;
            s.hosted_planned = plan.hosted.len();
        }
        // A plan with an egress IP held back is not the plan: plan again when woken.
        last_plan = (!held_back).then_some(plan);
        ready.store(true, Ordering::Relaxed);
        let tainted = inputs
            .index
            .nodes
            .get(&node)
            .is_some_and(|n| n.agent_not_ready_taint);
        if tainted && (!fenced || idle) && !untainting.swap(true, Ordering::SeqCst) {
            // Applied and live: new pods may land here again.
            let (client, name, flag) = (client.clone(), node.clone(), untainting.clone());
            tokio::spawn(async move {
                match crate::k8s::taint::set(client, &name, false).await {
                    Ok(true) => {
                        info!(node = %name, "applied: removed the egressgw.io/agent-not-ready taint")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(error = %e, "cannot remove the agent-not-ready taint; retrying")
                    }
                }
                tokio::time::sleep(UNTAINT_RETRY).await;
                flag.store(false, Ordering::SeqCst);
            });
        }
        if everything || last_trim.elapsed() >= TRIM_EVERY {
            crate::telemetry::memory::release_free_memory();
            last_trim = Instant::now();
        }
    }
}

/// Puts what the kernel holds into the Lease report; a change is reported now (the
/// heartbeat keeps its write budget), an unchanged one rides on the next renewal as it is.
fn report_kernel(
    shared: &Mutex<Shared>,
    renew_now: &Notify,
    truth: Option<crate::dataplane::truth::KernelReport>,
) {
    let mut s = shared.lock().expect("agent state lock");
    if s.report.kernel == truth {
        return;
    }
    if let Some(t) = truth.as_ref().filter(|t| !t.differs.is_empty()) {
        let gateways: Vec<&String> = t.differs.keys().collect();
        warn!(
            ?gateways,
            truncated = t.truncated,
            "the kernel differs from the plan for these gateways"
        );
    } else if s
        .report
        .kernel
        .as_ref()
        .is_some_and(|k| !k.differs.is_empty())
    {
        info!("the kernel matches the plan again");
    }
    s.report.kernel = truth;
    renew_now.notify_one();
}

/// A stopping agent that hosts egress IPs hands them over to its successor on the node: one
/// renewal announces the window (the controller then waits that much longer before judging
/// the node), and right after it succeeds — within the refresh window of its send — the
/// addresses' lifetimes are extended to cover the window. The rules stay in the kernel; the
/// next agent keeps the epoch and adopts them.
async fn hand_over(shared: &Mutex<Shared>, renew_now: &Notify, window: Duration) {
    let hosting = {
        let mut s = shared.lock().expect("agent state lock");
        let hosting = !s.idle && !s.fence.is_fenced() && !s.held.is_empty();
        if hosting && !window.is_zero() {
            s.report.handover = Some(window);
        }
        hosting
    };
    if !hosting || window.is_zero() {
        info!("stopping: nothing to hand over; the rules stay in the kernel");
        return;
    }
    renew_now.notify_one();
    let deadline = Instant::now() + HANDOVER_WAIT;
    while Instant::now() < deadline {
        if shared.lock().expect("agent state lock").handed_over {
            info!(
                window_ms = window.as_millis() as u64,
                "stopping: handed this node's egress IPs over to the next agent"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    warn!(
        "stopping: the hand-over renewal did not succeed in time; the egress IPs will fail over unless the next agent renews first"
    );
}

/// Switch between the hosting and the idle cadence. Either way the fencing clock starts over
/// fenced: an idle agent hosts nothing, and one that may host again does so only after a
/// fresh renewal under a new epoch, so no assignment recorded before it went idle is trusted.
fn set_cadence(
    shared: &Mutex<Shared>,
    node: &str,
    idle: bool,
    timing: FenceTiming,
    idle_renew: Duration,
) {
    let mut s = shared.lock().expect("agent state lock");
    s.idle = idle;
    s.fence = FenceClock::new(timing);
    s.report.idle = idle;
    s.report.renew_interval = if idle {
        idle_renew
    } else {
        timing.renew_interval
    };
    if idle {
        info!(node, renew_every = ?idle_renew, "the node matches no gatewayNodeSelector and hosts nothing: idle cadence");
    } else {
        s.needs_new_epoch = true;
        info!(node, renew_every = ?timing.renew_interval, "the node may host egress IPs: hosting cadence under a new epoch");
    }
}

/// What the heartbeat reads and extends in the kernel: interfaces through the dataplane,
/// address lifetimes on their own thread.
struct HeartbeatKernel {
    dp: SharedDataplane,
    lifetimes: Arc<lifetimes::Lifetimes>,
    gate: crate::dataplane::config::AddressGate,
}

/// What the heartbeat wakes, and what wakes it.
struct Wakes {
    /// The apply loop.
    apply: Arc<Notify>,
    /// The heartbeat itself: renew now (the agent left the idle cadence).
    renew: Arc<Notify>,
}

/// Run the heartbeat on its own thread with its own runtime and API client, so nothing the
/// planner does (CPU-heavy planning, a burst of watch events) can delay a renewal and fence
/// the node. Returns the epoch it renews under.
async fn spawn_heartbeat(
    args: &AgentArgs,
    node: &str,
    takeover: Duration,
    shared: Arc<Mutex<Shared>>,
    kernel: HeartbeatKernel,
    wakes: Wakes,
    metrics: AgentMetrics,
) -> anyhow::Result<i32> {
    let (tx, rx) = tokio::sync::oneshot::channel::<anyhow::Result<i32>>();
    let (kubeconfig, namespace, node) = (
        args.kubeconfig.clone(),
        args.lease_namespace.clone(),
        node.to_string(),
    );
    let fence_after = shared
        .lock()
        .expect("agent state lock")
        .fence
        .timing()
        .fence_after;
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let started = async {
                    let client = crate::k8s::client(kubeconfig.as_deref()).await?;
                    anyhow::Ok(
                        Heartbeat::start(client, &namespace, &node, fence_after, takeover).await?,
                    )
                };
                match started.await {
                    Ok(hb) => {
                        shared.lock().expect("agent state lock").epoch = hb.epoch;
                        let _ = tx.send(Ok(hb.epoch));
                        heartbeat_loop(hb, shared, kernel, wakes, metrics).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the heartbeat thread ended before its first read"))?
}

async fn heartbeat_loop(
    mut hb: Heartbeat,
    shared: Arc<Mutex<Shared>>,
    kernel: HeartbeatKernel,
    wakes: Wakes,
    metrics: AgentMetrics,
) {
    let HeartbeatKernel {
        dp,
        lifetimes,
        gate,
    } = kernel;
    let refresh_window = shared
        .lock()
        .expect("agent state lock")
        .fence
        .timing()
        .refresh_window;
    let mut round: u32 = 0;
    let mut next = Instant::now();
    let renew_timeout = shared
        .lock()
        .expect("agent state lock")
        .fence
        .timing()
        .fence_after;
    let report_node = hb.node().to_string();
    let mut last_renewal: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = wakes.renew.notified() => {
                // An early renewal (a new report, a cadence change) within the write budget.
                if let Some(gap) = last_renewal.map(|t| t.elapsed()).filter(|e| *e < MIN_RENEW_GAP) {
                    tokio::time::sleep(MIN_RENEW_GAP - gap).await;
                }
            }
        }
        let started = Instant::now();
        last_renewal = Some(started);
        if round.is_multiple_of(INTERFACES_EVERY) {
            let dp = dp.clone();
            match tokio::task::spawn_blocking(move || dp.lock().expect("dataplane lock").routing())
                .await
            {
                Ok(Ok(routing)) => {
                    shared.lock().expect("agent state lock").report.interfaces =
                        node_interfaces(&routing)
                }
                Ok(Err(e)) => warn!(error = %e, "cannot read the node's interfaces"),
                Err(e) => warn!(error = %e, "interface read task failed"),
            }
        }
        round = round.wrapping_add(1);
        let (report, idle) = {
            let mut s = shared.lock().expect("agent state lock");
            if s.needs_new_epoch {
                hb.epoch += 1;
                s.needs_new_epoch = false;
                info!(epoch = hb.epoch, "renewing under a new epoch");
            }
            (s.report.clone(), s.idle)
        };
        next = started + report.renew_interval;
        // Every renewal has a timeout: a hung connection must not hold the heartbeat past the
        // fencing deadline (the fence clock fences on time anyway; this frees the next try).
        let result = match tokio::time::timeout(renew_timeout, hb.renew(&report)).await {
            Ok(r) => r,
            Err(_) => Err(heartbeat::HeartbeatError::Timeout {
                name: crate::k8s::names::agent_lease(&report_node),
                timeout: renew_timeout,
            }),
        };
        {
            let mut s = shared.lock().expect("agent state lock");
            if !std::mem::replace(&mut s.first_outcome, true) {
                info!(
                    renewed = result.is_ok(),
                    "first renewal outcome known: the apply loop may change the kernel"
                );
                wakes.apply.notify_one();
            }
        }
        match result {
            Ok(sent) => {
                metrics
                    .lease_renewals
                    .get_or_create(&label("result", "ok"))
                    .inc();
                metrics
                    .lease_renewal_duration
                    .observe(sent.elapsed().as_secs_f64());
                // A lifetime started before `sent + refresh window` ends before the
                // controller could move the IP (the same bound as the refresh below).
                gate.open_until(sent + refresh_window);
                let outcome = {
                    let mut s = shared.lock().expect("agent state lock");
                    s.epoch = hb.epoch;
                    if std::mem::take(&mut s.adds_held_back) {
                        s.needs_reapply = true;
                        wakes.apply.notify_one();
                    }
                    // An idle agent hosts nothing: its renewals prove nothing to fence on.
                    (!idle && !s.idle).then(|| s.fence.renewed(sent, Instant::now()))
                };
                let Some(outcome) = outcome else { continue };
                if let (Some(window), true) = (report.handover, outcome.refresh_lifetimes) {
                    let secs = window.as_secs_f64().ceil() as u32;
                    if let Ok(Some(_)) = lifetimes.extend_by(sent + refresh_window, secs).await {
                        shared.lock().expect("agent state lock").handed_over = true;
                    }
                    continue;
                }
                if outcome.unfenced {
                    info!(
                        epoch = hb.epoch,
                        "lease renewed: hosting egress IPs again under this epoch"
                    );
                    wakes.apply.notify_one();
                }
                if outcome.refresh_lifetimes {
                    // The bound holds only if the extension lands within the refresh window
                    // of the renewal's send: checked right before the netlink call, on the
                    // lifetime thread, which no apply can hold up.
                    match lifetimes.refresh_by(sent + refresh_window).await {
                        Ok(Some(n)) => {
                            let mut s = shared.lock().expect("agent state lock");
                            if n < s.hosted_planned && !s.fence.is_fenced() {
                                s.needs_reapply = true;
                                wakes.apply.notify_one();
                            }
                        }
                        Ok(None) => warn!(
                            window_ms = refresh_window.as_millis() as u64,
                            "the renewal's refresh window closed before the lifetimes could be extended: not extended"
                        ),
                        Err(e) => warn!(error = %e, "cannot refresh egress IP lifetimes"),
                    }
                }
            }
            Err(e) => {
                metrics
                    .lease_renewals
                    .get_or_create(&label("result", "error"))
                    .inc();
                shared
                    .lock()
                    .expect("agent state lock")
                    .fence
                    .failed(started);
                warn!(error = %e, "lease renewal failed");
            }
        }
    }
}

fn record_sizes(metrics: &AgentMetrics, plan: &NodePlan) {
    metrics.hosted_ips.set(plan.hosted.len() as i64);
    metrics.set_entries.clear();
    for (g, p) in &plan.gateways {
        let put = |role: &str, n: usize| {
            metrics
                .set_entries
                .get_or_create(&vec![
                    ("gateway".into(), g.clone()),
                    ("role".into(), role.into()),
                ])
                .set(n as i64);
        };
        put("snat", p.snat.values().map(BTreeSet::len).sum());
        put("steer", p.steer.values().map(BTreeSet::len).sum());
        put("blocked", p.blocked.len());
        put("guard", p.guard.len());
    }
}

fn refresh_counters(dp: &SharedDataplane, metrics: &AgentMetrics) {
    let Ok(counters) = dp
        .lock()
        .map_err(|_| ())
        .and_then(|mut d| d.counters().map_err(|_| ()))
    else {
        return;
    };
    let mut packets: BTreeMap<String, u64> = BTreeMap::new();
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    let mut spoofed: BTreeMap<String, u64> = BTreeMap::new();
    for c in counters {
        match (&c.gateway, &c.kind) {
            (Some(g), CounterKind::Snat { .. }) => {
                *packets.entry(g.clone()).or_default() += c.packets;
                *bytes.entry(g.clone()).or_default() += c.bytes;
            }
            (Some(g), CounterKind::LeakDropped | CounterKind::Blocked) => {
                *dropped.entry(g.clone()).or_default() += c.packets;
            }
            (Some(g), CounterKind::SpoofDropped) => {
                *spoofed.entry(g.clone()).or_default() += c.packets;
            }
            _ => {}
        }
    }
    set_per_gateway(&metrics.leak_dropped_packets, dropped);
    set_per_gateway(&metrics.spoof_dropped_packets, spoofed);
    set_per_gateway(&metrics.snat_packets, packets);
    set_per_gateway(&metrics.snat_bytes, bytes);
}

/// Replace the gauges of `family` with one per gateway (label `gateway`).
fn set_per_gateway(
    family: &prometheus_client::metrics::family::Family<
        crate::telemetry::metrics::Labels,
        prometheus_client::metrics::gauge::Gauge,
    >,
    by_gateway: BTreeMap<String, u64>,
) {
    family.clear();
    for (g, n) in by_gateway {
        family.get_or_create(&label("gateway", &g)).set(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::route_model::{AddrEntry, Link};

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: None,
        }
    }

    fn addr(link: u32, ip: std::net::Ipv4Addr, prefix: u8) -> AddrEntry {
        AddrEntry {
            link,
            ip,
            prefix,
            proto: None,
        }
    }

    #[test]
    fn the_interface_report_stays_bounded_with_ten_thousand_service_addresses() {
        let mut routing = RoutingState {
            links: vec![link(2, "eth0"), link(3, "kube-ipvs0"), link(4, "eth1")],
            ..RoutingState::default()
        };
        routing
            .addresses
            .push(addr(2, std::net::Ipv4Addr::new(198, 18, 0, 12), 24));
        routing
            .addresses
            .push(addr(4, std::net::Ipv4Addr::new(198, 51, 100, 12), 24));
        for i in 0..10_000u32 {
            let ip =
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 192, 0)) + i);
            routing.addresses.push(addr(3, ip, 32));
        }
        for i in 0..200u8 {
            routing
                .addresses
                .push(addr(2, std::net::Ipv4Addr::new(198, 19, 255, i), 32));
        }
        let report = node_interfaces(&routing);
        assert!(report.len() <= MAX_REPORTED_ADDRESSES);
        assert!(report.iter().all(|i| i.name != "kube-ipvs0"));
        assert_eq!(
            report[..2]
                .iter()
                .map(|i| i.network.to_string())
                .collect::<Vec<_>>(),
            vec!["198.18.0.12/24", "198.51.100.12/24"],
            "the subnets that place egress IPs always make it"
        );
        let encoded = crate::k8s::lease::encode_interfaces(&report);
        assert!(encoded.len() < 4096, "{} bytes", encoded.len());
    }
}
