//! One reconcile: index from the watch stores, plan, statuses written where they changed,
//! events for what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node as KubeNode};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use thiserror::Error;
use tracing::{info, info_span};

use crate::api::{EgressGateway, EgressGatewayStatus};
use crate::index::{ClusterIndex, Gateway, GatewayCache, Labels, Node, PodKey};
use crate::k8s::lease::AgentReport;
use crate::k8s::pod_store::PodStore;
use crate::kernel_truth::{self, KernelDrift};
use crate::plan::{self, ClusterPlan};
use crate::status::{self, Programming};
use crate::telemetry::metrics::ControllerMetrics;

use super::liveness::AgentLiveness;
use super::status_writer::StatusWriter;

#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error("writing the status of EgressGateway {gateway}: {source}")]
    Status {
        gateway: String,
        source: kube::Error,
    },
    #[error("writing the status of EgressGateway {gateway}: no answer within {timeout:?}")]
    Timeout {
        gateway: String,
        timeout: std::time::Duration,
    },
    #[error("writing the status of EgressGateway {gateway}: this replica no longer leads")]
    NotLeader { gateway: String },
    #[error("encoding the status of EgressGateway {gateway}: {source}")]
    Encode {
        gateway: String,
        source: serde_json::Error,
    },
}

/// The watch stores the controller plans from.
#[derive(Clone)]
pub struct Stores {
    pub gateways: Store<EgressGateway>,
    pub nodes: Store<KubeNode>,
    pub pods: Arc<PodStore>,
    pub namespaces: Store<Namespace>,
    pub leases: Store<Lease>,
    /// ServiceCIDR objects (never waited for) and the `--service-cidr` ranges.
    pub service_cidrs: Store<k8s_openapi::api::networking::v1::ServiceCIDR>,
    pub extra_service_cidrs: Vec<ipnetwork::IpNetwork>,
}

/// What the last successful reconcile planned from (its pods are the view's).
pub struct PlanCache {
    gateways: BTreeMap<String, Gateway>,
    nodes: BTreeMap<String, Node>,
    namespaces: BTreeMap<String, Labels>,
    service_cidrs: Vec<ipnetwork::IpNetwork>,
    plan: ClusterPlan,
    reports: BTreeMap<String, AgentReport>,
}

/// The index, kept up to date between reconciles: pods arrive key by key from the
/// [`PodStore`]; gateways are re-parsed only when their resourceVersion changed.
#[derive(Default)]
pub struct View {
    index: ClusterIndex,
    gateway_cache: GatewayCache,
    /// Pods changed since the last successful plan.
    pending: BTreeSet<PodKey>,
    cache: Option<PlanCache>,
}

impl View {
    /// Forget the last plan (a new leadership term plans in full), keep the index.
    pub fn new_term(&mut self) {
        self.cache = None;
    }
}

/// Two reports of one agent say the same (the Lease version, a heartbeat, aside).
fn same_report(a: &AgentReport, b: &AgentReport) -> bool {
    a.epoch == b.epoch
        && a.interfaces == b.interfaces
        && a.programmed == b.programmed
        && a.kernel == b.kernel
        && a.idle == b.idle
}

pub struct Reconciler {
    pub stores: Stores,
    /// The index and the last plan, for incremental reconciles (no plan: plan in full).
    /// Kept across leadership terms: the pods arrive once from the [`PodStore`], so a
    /// replica that leads again must not start from an empty index.
    pub view: Arc<Mutex<View>>,
    pub liveness: Arc<Mutex<AgentLiveness>>,
    /// Since when nodes' kernels differ from the plan (status says so after the bound).
    pub kernel_drift: Arc<Mutex<KernelDrift>>,
    pub writer: Arc<StatusWriter>,
    pub metrics: ControllerMetrics,
    /// Taints nodes whose agent is not live (`None`: opted out).
    pub taints: Option<kube::Client>,
    /// Nodes being tainted now (one patch in flight per node).
    pub tainting: Arc<Mutex<BTreeSet<String>>>,
}

impl Reconciler {
    /// Bring the view's index up to date, with agent liveness judged at `now`.
    fn refresh(&self, view: &mut View, now: Instant, reports: &BTreeMap<String, AgentReport>) {
        let liveness = self.liveness.lock().expect("liveness lock");
        let index = &mut view.index;
        index.nodes.clear();
        for n in self.stores.nodes.state() {
            if let Some(mut node) = Node::from_kube(&n) {
                if let Some(r) = reports.get(&node.name) {
                    node.agent_alive = liveness.alive(&node.name, now);
                    node.agent_epoch = r.epoch;
                    node.agent_idle = r.idle;
                    node.interfaces = r.interfaces.clone();
                }
                index.nodes.insert(node.name.clone(), node);
            }
        }
        index.namespaces = self
            .stores
            .namespaces
            .state()
            .iter()
            .map(|ns| (ns.name_any(), ns.labels().clone()))
            .collect();
        index.service_cidrs = crate::k8s::service_cidrs::ranges(
            &self.stores.service_cidrs.state(),
            &self.stores.extra_service_cidrs,
        );
        index.gateways = view.gateway_cache.build(&self.stores.gateways.state());
        // Placements come from our own last write, not the watch's copy: a lagging watch
        // must not make an IP moved by a failover flap back.
        for (name, gw) in index.gateways.iter_mut() {
            if let Some(sent) = self.writer.sent(name) {
                gw.record_from(&sent);
            }
        }
        let changed = self.stores.pods.update(&mut index.pods);
        view.pending.extend(changed);
    }

    /// Which nodes have not reported the digest the plan expects for `gateway`, and what
    /// differs lastingly in nodes' kernels (`kernel`: from [`KernelDrift::observe`]).
    fn programming(
        &self,
        plan: &ClusterPlan,
        gateway: &str,
        reports: &BTreeMap<String, AgentReport>,
        kernel: &BTreeMap<String, Vec<String>>,
    ) -> Programming {
        let pending = plan
            .nodes_for(gateway)
            .into_iter()
            .filter(|node| {
                let expected = plan.expected_digest(gateway, node);
                reports.get(*node).and_then(|r| r.programmed.get(gateway)) != Some(&expected)
            })
            .map(str::to_string)
            .collect();
        Programming {
            pending,
            kernel: kernel.get(gateway).cloned().unwrap_or_default(),
        }
    }

    /// Plan, and hand every status that changed to the [`StatusWriter`]. Returns the number
    /// handed over.
    ///
    /// Incremental unless `full`: when gateways, nodes (liveness included) and namespaces are
    /// as in the last reconcile, only the pods that changed are re-planned
    /// ([`ClusterPlan::update_pod`]) and, when the agents' reports are unchanged too, only the
    /// statuses of the gateways those pods touch are recomputed. Status writes go out
    /// concurrently and are waited for; after a failed one the next reconcile is full.
    pub async fn reconcile(&self, full: bool) -> Result<usize, ReconcileError> {
        let started = Instant::now();
        let span = info_span!("reconcile");
        let _guard = span.enter();
        let reports: BTreeMap<String, AgentReport> = self
            .stores
            .leases
            .state()
            .iter()
            .filter_map(|l| AgentReport::from_lease(l))
            .map(|r| (r.node.clone(), r))
            .collect();
        // The view lock is held while planning only, never across the writes' await.
        let (changes, only, placed, unplaced) = {
            let mut guard = self.view.lock().expect("view lock");
            self.refresh(&mut guard, started, &reports);
            self.taint_dead_agents(&guard.index);
            let view = &mut *guard;
            let index = &view.index;
            let full = self.writer.take_failed() || full;
            let (plan, only): (ClusterPlan, Option<BTreeSet<String>>) = match view.cache.take() {
                Some(c)
                    if !full
                        && c.gateways == index.gateways
                        && c.nodes == index.nodes
                        && c.namespaces == index.namespaces
                        && c.service_cidrs == index.service_cidrs =>
                {
                    let mut plan = c.plan;
                    let touched = plan.update_pods(index, &view.pending);
                    let same_reports = c.reports.len() == reports.len()
                        && c.reports
                            .iter()
                            .all(|(n, r)| reports.get(n).is_some_and(|x| same_report(r, x)));
                    (plan, same_reports.then_some(touched))
                }
                _ => (plan::plan(index), None),
            };
            view.pending.clear();
            // What the agents say their kernels hold: a difference that outlasts the bound
            // changes status, so those gateways are recomputed whatever else changed.
            let nodes = &view.index.nodes;
            let current = kernel_truth::differences(&plan, &reports, |n| {
                nodes.get(n).is_some_and(|n| n.agent_alive)
            });
            let lasting = self
                .kernel_drift
                .lock()
                .expect("kernel drift lock")
                .observe(Instant::now(), current);
            let only = only.map(|mut o| {
                o.extend(lasting.changed.iter().cloned());
                o
            });
            let now = Timestamp::now();
            let (mut placed, mut unplaced) = (0i64, 0i64);
            let mut changes = Vec::new();
            for g in self.stores.gateways.state() {
                let name = g.name_any();
                if only.as_ref().is_some_and(|o| !o.contains(&name)) {
                    continue;
                }
                let Some(gw) = view.index.gateways.get(&name) else {
                    continue;
                };
                let programming = self.programming(&plan, &gw.name, &reports, &lasting.by_gateway);
                let current = self.writer.current(&g);
                let desired =
                    status::gateway_status(gw, &plan, &programming, current.as_ref(), now);
                for a in &desired.assignments {
                    if a.node.is_some() {
                        placed += 1
                    } else {
                        unplaced += 1
                    }
                }
                if !self.writer.needs_write(&g, &desired) {
                    continue;
                }
                self.count_failovers(current.as_ref(), &desired, started);
                changes.push((g, desired));
            }
            let cache = PlanCache {
                gateways: view.index.gateways.clone(),
                nodes: view.index.nodes.clone(),
                namespaces: view.index.namespaces.clone(),
                service_cidrs: view.index.service_cidrs.clone(),
                plan,
                reports,
            };
            view.cache = Some(cache);
            (changes, only, placed, unplaced)
        };
        let writes = changes.len();
        for (g, desired) in changes {
            self.writer.submit(g, desired);
        }
        self.writer.flushed().await;
        if only.is_none() {
            self.writer.retain(
                &self
                    .stores
                    .gateways
                    .state()
                    .iter()
                    .map(|g| g.name_any())
                    .collect(),
            );
            self.metrics.egress_ips_placed.set(placed);
            self.metrics.egress_ips_unplaced.set(unplaced);
        }
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(writes)
    }

    /// Taint the nodes whose agent is not live and that do not carry the taint yet (in the
    /// background: a slow patch never delays a reconcile).
    fn taint_dead_agents(&self, index: &ClusterIndex) {
        let Some(client) = &self.taints else { return };
        for node in index
            .nodes
            .values()
            .filter(|n| !n.agent_alive && !n.agent_not_ready_taint)
        {
            if !self
                .tainting
                .lock()
                .expect("tainting lock")
                .insert(node.name.clone())
            {
                continue;
            }
            let (client, name, inflight) =
                (client.clone(), node.name.clone(), self.tainting.clone());
            tokio::spawn(async move {
                match crate::k8s::taint::set(client, &name, true).await {
                    Ok(true) => {
                        info!(node = %name, "node tainted egressgw.io/agent-not-ready:NoSchedule: its agent is not live")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot taint a node whose agent is not live; retrying at the next reconcile")
                    }
                }
                inflight.lock().expect("tainting lock").remove(&name);
            });
        }
    }

    /// Count IPs that left a node whose agent is dead, and how long after its last heartbeat.
    fn count_failovers(
        &self,
        old: Option<&EgressGatewayStatus>,
        new: &EgressGatewayStatus,
        now: Instant,
    ) {
        let Some(old) = old else { return };
        let liveness = self.liveness.lock().expect("liveness lock");
        for a in &new.assignments {
            let before = old
                .assignments
                .iter()
                .find(|b| b.egress_ip == a.egress_ip)
                .and_then(|b| b.node.as_deref());
            if let Some(from) =
                before.filter(|from| a.node.as_deref() != Some(*from) && !liveness.alive(from, now))
            {
                self.metrics.failovers.inc();
                if let Some(last) = liveness.last_change(from) {
                    self.metrics
                        .failover_duration
                        .observe(now.duration_since(last).as_secs_f64());
                }
                info!(ip = %a.egress_ip, from, to = ?a.node, "failover: egress IP leaves a node whose agent is dead");
            }
        }
    }
}
