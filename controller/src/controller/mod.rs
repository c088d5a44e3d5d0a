//! `egressgw controller`: watches gateways, nodes, pods, namespaces and the agents' Leases,
//! plans, and writes status and events — only while it is the elected leader, and never
//! before every watch has synced.

pub mod liveness;
pub mod notices;
pub mod reconciler;
pub mod status_writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node as KubeNode};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::api::EgressGateway;
use crate::k8s::leader::{LeaderConfig, LeaderElector};
use crate::k8s::lease::AgentReport;
use crate::k8s::names::{
    AGENT_LEASE_NAMESPACE, CONTROLLER_LEASE, LABEL_AGENT_NODE, SYSTEM_NAMESPACE,
};
use crate::k8s::pod_store::{self, PodStore};
use crate::k8s::watch::{
    LEASE_WATCH_TIMEOUT_SECS, reflect, reflect_trimmed, trim_namespace, trim_node, watch_config,
};
use crate::telemetry::http::{Health, serve};
use crate::telemetry::metrics::ControllerMetrics;

use liveness::AgentLiveness;
use reconciler::{Reconciler, Stores};
use status_writer::StatusWriter;

/// An agent is dead when its Lease has not changed for this long (controller's clock). Must
/// exceed the agent's fencing bound (see `agent::fence`).
pub const DEFAULT_TAKEOVER: Duration = Duration::from_millis(1600);
/// How often the controller retries creating the agents' peer key.
const PEER_KEY_RETRY: Duration = Duration::from_secs(2);
/// Coalesce bursts of watch events into one reconcile.
pub const DEBOUNCE: Duration = Duration::from_millis(5);
/// Longest sleep without any event; the loop also wakes exactly when an agent's takeover
/// deadline passes.
pub const IDLE_TICK: Duration = Duration::from_millis(500);
/// Resync even when nothing seems to change (repairs a status someone else edited).
pub const RESYNC: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    /// kubeconfig file (default: in-cluster, then $KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the leader Lease and the peer key Secret.
    #[arg(long, env = "EGRESSGW_NAMESPACE", default_value = SYSTEM_NAMESPACE)]
    pub namespace: String,
    /// Namespace of the agents' Leases (watched, never written).
    #[arg(long, env = "EGRESSGW_AGENT_LEASE_NAMESPACE", default_value = AGENT_LEASE_NAMESPACE)]
    pub agent_lease_namespace: String,
    /// This replica's identity in leader election (default: the hostname and PID).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Address of /metrics, /healthz, /readyz.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// An agent whose Lease has not changed for this many milliseconds loses its egress IPs.
    #[arg(long, default_value_t = DEFAULT_TAKEOVER.as_millis() as u64)]
    pub takeover_ms: u64,
    /// Leader lease duration in seconds (the standby takes over after this long).
    #[arg(long, default_value_t = 4)]
    pub leader_lease_seconds: u64,
    /// Taint nodes whose agent is not live `egressgw.io/agent-not-ready:NoSchedule`, so no new
    /// pod lands where nothing would program it (the agent removes the taint once it has
    /// applied). `--taint-nodes=false` opts out.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub taint_nodes: bool,
    /// A Service range of the cluster (repeatable), excluded from every gateway's
    /// destinations like the ServiceCIDR objects; give agents the same.
    #[arg(long = "service-cidr")]
    pub service_cidrs: Vec<ipnetwork::IpNetwork>,
}

/// Pods per page of the controller's list (kube's default is 500): a restarted controller
/// lists every pod before it may write, and each page is one more round trip.
pub const POD_LIST_PAGE: u32 = 5000;

/// Run the controller until leadership is lost, a fatal error, or SIGTERM/SIGINT (then a
/// leader finishes its reconcile, releases the leader Lease for the standby, and returns).
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let mut stop = std::pin::pin!(crate::telemetry::signals::stop_requested()?);
    let client: Client = crate::k8s::client(args.kubeconfig.as_deref()).await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let mut registry = Registry::default();
    let metrics = ControllerMetrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health {
        ready: ready.clone(),
        registry: Arc::new(Mutex::new(registry)),
        refresh: None,
    };
    let metrics_addr = args.metrics_addr;
    tokio::spawn(async move {
        if let Err(e) = serve(metrics_addr, health).await {
            error!(error = %e, addr = %metrics_addr, "metrics server failed");
        }
    });

    {
        // The agents' peer key (agent::peers): made once, by whichever replica is first.
        let (client, namespace) = (client.clone(), args.namespace.clone());
        tokio::spawn(async move {
            loop {
                match crate::k8s::peer_key::ensure(client.clone(), &namespace).await {
                    Ok(true) => {
                        info!(namespace = %namespace, "created the agents' peer key secret");
                        break;
                    }
                    Ok(false) => break,
                    Err(e) => warn!(error = %e, "cannot ensure the agents' peer key; retrying"),
                }
                tokio::time::sleep(PEER_KEY_RETRY).await;
            }
        });
    }
    let notify = Arc::new(Notify::new());
    let takeover = Duration::from_millis(args.takeover_ms);
    let liveness = Arc::new(Mutex::new(AgentLiveness::new(takeover)));
    let gateways = reflect(
        Api::<EgressGateway>::all(client.clone()),
        watch_config(),
        notify.clone(),
        |_| {},
    );
    let nodes = reflect_trimmed(
        Api::<KubeNode>::all(client.clone()),
        watch_config(),
        notify.clone(),
        |_| {},
        trim_node,
    );
    let pods = PodStore::new();
    let _pod_watch = pod_store::feed(
        Api::all(client.clone()),
        watch_config().page_size(POD_LIST_PAGE),
        pods.clone(),
        0,
        notify.clone(),
        None,
        None,
    );
    let namespaces = reflect_trimmed(
        Api::<Namespace>::all(client.clone()),
        watch_config(),
        notify.clone(),
        |_| {},
        trim_namespace,
    );
    let lv = liveness.clone();
    // A heartbeat (a Lease whose report did not change) only feeds liveness, which the loop
    // judges by its own clock; only a changed report (epoch, interfaces, programmed digests)
    // wakes a reconcile. With 100 agents renewing every 500 ms, waking on every renewal
    // would reconcile without pause.
    let reported: Mutex<HashMap<String, AgentReport>> = Mutex::default();
    // Its own client (own connections, a short read timeout): the liveness of every agent
    // rides on this watch, so a silent stall must end in seconds.
    let lease_client = crate::k8s::client::client_with_read_timeout(
        args.kubeconfig.as_deref(),
        crate::k8s::client::lease_watch_read_timeout(),
    )
    .await?;
    let wake = notify.clone();
    let leases = reflect(
        Api::<Lease>::namespaced(lease_client, &args.agent_lease_namespace),
        watcher::Config::default()
            .timeout(LEASE_WATCH_TIMEOUT_SECS)
            .labels(LABEL_AGENT_NODE),
        Arc::new(Notify::new()),
        move |lease: &Lease| {
            if let Some(mut r) = AgentReport::from_lease(lease) {
                lv.lock().expect("liveness lock").observe_with(
                    &r.node,
                    &r.version,
                    Some(r.deadline(takeover)),
                    r.renew_interval,
                    Instant::now(),
                );
                r.version.clear();
                let mut seen = reported.lock().expect("reports lock");
                if seen.get(&r.node) != Some(&r) {
                    seen.insert(r.node.clone(), r);
                    wake.notify_one();
                }
            }
        },
    );
    let service_cidrs = crate::k8s::service_cidrs::watch(client.clone(), notify.clone());
    let stores = Stores {
        service_cidrs: service_cidrs.store.clone(),
        extra_service_cidrs: args.service_cidrs.clone(),
        gateways: gateways.store,
        nodes: nodes.store,
        pods: pods.clone(),
        namespaces: namespaces.store,
        leases: leases.store,
    };
    // Leadership is sought only once every watch has synced: a replica that is still listing
    // must not win a released Lease from a synced standby and then sit on it unrenewed.
    let elector = LeaderElector::new(
        client.clone(),
        LeaderConfig {
            namespace: args.namespace.clone(),
            name: CONTROLLER_LEASE.to_string(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.leader_lease_seconds),
            renew_deadline: Duration::from_secs(args.leader_lease_seconds) * 2 / 3,
            retry_period: Duration::from_millis(500),
        },
    );
    let synced = async {
        for (what, s) in [
            (
                "EgressGateways",
                stores.gateways.wait_until_ready().await.is_ok(),
            ),
            ("Nodes", stores.nodes.wait_until_ready().await.is_ok()),
            (
                "Namespaces",
                stores.namespaces.wait_until_ready().await.is_ok(),
            ),
            ("Leases", stores.leases.wait_until_ready().await.is_ok()),
        ] {
            anyhow::ensure!(s, "the {what} watch stopped before it synced");
        }
        while !pods.is_synced(0) {
            notify.notified().await;
        }
        notify.notify_one();
        info!("all watches synced");
        ready.store(true, Ordering::Relaxed);
        anyhow::Ok(())
    };
    tokio::select! {
        r = synced => r?,
        () = &mut stop => {
            info!("stopping (not the leader)");
            return Ok(());
        }
    }
    // Lead until stopped. A replica that loses leadership (it could not renew within the
    // renew deadline, or someone else holds the Lease) stays up as a standby, its watches
    // synced, and seeks leadership again.
    let view: Arc<Mutex<reconciler::View>> = Arc::default();
    loop {
        tokio::select! {
            r = elector.acquire() => r?,
            () = &mut stop => {
                // A take-over write may have landed as the attempt was dropped.
                elector.release().await?;
                info!("stopping (not the leader)");
                return Ok(());
            }
        }
        // Agents seen before we led were judged by nothing yet: give each a full takeover
        // window from now, so a fresh leader never fails an IP over on stale information.
        {
            let mut lv = liveness.lock().expect("liveness lock");
            *lv = AgentLiveness::new(takeover);
            for l in stores.leases.state() {
                if let Some(r) = AgentReport::from_lease(&l) {
                    lv.observe_with(
                        &r.node,
                        &r.version,
                        Some(r.deadline(takeover)),
                        r.renew_interval,
                        Instant::now(),
                    );
                }
            }
        }
        metrics.is_leader.set(1);
        let reporter = Reporter {
            controller: crate::k8s::names::FIELD_MANAGER_CONTROLLER.into(),
            instance: Some(identity.clone()),
        };
        let reconciler = Reconciler {
            stores: stores.clone(),
            view: {
                view.lock().expect("view lock").new_term();
                view.clone()
            },
            liveness: liveness.clone(),
            kernel_drift: Arc::default(),
            writer: StatusWriter::new(
                Api::all(client.clone()),
                Recorder::new(client.clone(), reporter),
                metrics.clone(),
                notify.clone(),
            ),
            metrics: metrics.clone(),
            taints: args.taint_nodes.then(|| client.clone()),
            tainting: Arc::default(),
        };
        tokio::select! {
            lost = elector.hold() => {
                reconciler.writer.stop();
                metrics.is_leader.set(0);
                warn!(reason = %lost, "stepped down; standing by to lead again");
            }
            r = control_loop(&reconciler, notify.clone(), stop.as_mut(), &elector) => {
                metrics.is_leader.set(0);
                return match r? {
                    // Stopped with its status writes done: nothing of ours is in flight when
                    // the standby takes over.
                    Stopped::Clean => {
                        elector.release().await?;
                        Ok(())
                    }
                    Stopped::WritesHung => Err(anyhow::anyhow!(
                        "status writes still unfinished {STOP_GRACE:?} after the stop request; leaving the leader Lease to expire"
                    )),
                };
            }
        }
    }
}

/// How long a stopping leader lets its reconcile (and its status writes) finish before it
/// exits without releasing the leader Lease (the standby then waits for it to expire, so a
/// write still on its way cannot land after the standby's).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The soonest the control loop wakes for a kernel difference crossing its bound.
const KERNEL_DUE_FLOOR: Duration = Duration::from_millis(50);

/// How the control loop stopped.
enum Stopped {
    /// Between reconciles: nothing in flight.
    Clean,
    /// A reconcile's status writes did not finish within [`STOP_GRACE`].
    WritesHung,
}

/// Reconcile until `stop` resolves. A reconcile under way when it does gets [`STOP_GRACE`] to
/// finish its status writes, so a clean stop leaves nothing in flight.
async fn control_loop(
    reconciler: &Reconciler,
    notify: Arc<Notify>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    elector: &LeaderElector,
) -> anyhow::Result<Stopped> {
    let mut alive = Vec::new();
    let mut last_full = Instant::now() - RESYNC;
    let mut dirty = true;
    let mut was_blind = None;
    loop {
        let now = Instant::now();
        let (alive_now, blind) = {
            let lv = reconciler.liveness.lock().expect("liveness lock");
            (lv.alive_set(now), lv.blind(now))
        };
        if blind != was_blind {
            match blind {
                Some(why) => warn!(
                    ?why,
                    "most agents fell silent at once: failover frozen until their renewals are seen (the control plane's trouble more likely than theirs)"
                ),
                None => info!("failover no longer frozen"),
            }
            was_blind = blind;
        }
        if alive_now != alive {
            info!(alive = ?alive_now, "agent liveness changed");
            alive = alive_now;
            dirty = true;
        }
        let full = now.duration_since(last_full) >= RESYNC;
        if (dirty || full) && !elector.valid() {
            // Not renewed within the renew deadline (a pause, a slow apiserver): write
            // nothing until the Lease is renewed, or the hold gives up and we stand by.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = &mut stop => return Ok(Stopped::Clean),
            }
            continue;
        }
        if dirty || full {
            let reconcile = reconciler.reconcile(full);
            tokio::pin!(reconcile);
            let result = tokio::select! {
                r = &mut reconcile => r,
                () = &mut stop => {
                    info!("stop requested during a reconcile: letting its status writes finish");
                    return Ok(match tokio::time::timeout(STOP_GRACE, reconcile).await {
                        Ok(_) => Stopped::Clean,
                        Err(_) => Stopped::WritesHung,
                    });
                }
            };
            match result {
                Ok(_) => {
                    dirty = false;
                    if full {
                        last_full = now;
                        crate::telemetry::memory::release_free_memory();
                    }
                }
                Err(e) => warn!(error = %e, "reconcile failed; retrying"),
            }
        }
        let now = Instant::now();
        // A kernel difference crossing its bound changes status without any watch event.
        let kernel_due = reconciler
            .kernel_drift
            .lock()
            .expect("kernel drift lock")
            .next_due();
        let liveness_due = reconciler
            .liveness
            .lock()
            .expect("liveness lock")
            .next_expiry(now);
        // (not sooner than a short floor: a reconcile that keeps failing must not spin)
        let kernel_due = kernel_due.map(|t| t.max(now + KERNEL_DUE_FLOOR));
        let due = liveness_due.into_iter().chain(kernel_due).min();
        let wake = due
            .map_or(IDLE_TICK, |t| {
                t.saturating_duration_since(now) + Duration::from_millis(1)
            })
            .min(IDLE_TICK);
        tokio::select! {
            _ = notify.notified() => {
                tokio::time::sleep(DEBOUNCE).await;
                dirty = true;
            }
            _ = tokio::time::sleep(wake) => {}
            () = &mut stop => {
                info!("stopping: leaving leadership to the standby");
                return Ok(Stopped::Clean);
            }
        }
        if kernel_due.is_some_and(|t| t <= Instant::now()) {
            dirty = true;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "egressgw".into())
}
