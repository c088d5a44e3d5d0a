//! What the agent plans from, kept up to date from its watches without rebuilding it on
//! every event: gateways, nodes and namespaces are re-read only when their watch changed
//! (and gateways re-parsed only when their resourceVersion changed), pods arrive key by key
//! from the [`PodStore`](crate::k8s::pod_store::PodStore).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::k8s::watch::watch_config;
use k8s_openapi::api::core::v1::{Namespace, Node as KubeNode};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

use crate::api::EgressGateway;
use crate::index::{ClusterIndex, GatewayCache, Node, PodKey};
use crate::k8s::watch::{Reflected, reflect, reflect_trimmed, trim_namespace, trim_node};

use super::pod_watches::{Keep, PodWatches, Scope, merge_scopes, scopes_for};

/// What changed since the last [`Inputs::refresh`].
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Gateways (as the planner sees them), nodes, namespaces or the epoch: plan in full.
    Everything,
    /// Only these pods.
    Pods(BTreeSet<PodKey>),
}

pub struct Inputs {
    node: String,
    gateways: Reflected<EgressGateway>,
    nodes: Reflected<KubeNode>,
    namespaces: Reflected<Namespace>,
    service_cidrs: Reflected<k8s_openapi::api::networking::v1::ServiceCIDR>,
    extra_service_cidrs: Vec<ipnetwork::IpNetwork>,
    pub pods: PodWatches,
    gateway_cache: GatewayCache,
    pub index: ClusterIndex,
    epoch: Option<i32>,
    /// A structural change seen while a pod watch was still listing.
    pending_full: bool,
}

impl Inputs {
    /// Start every watch; returns once gateways, nodes, namespaces and the node's own pods
    /// have listed (an error when one of them stopped first).
    pub async fn start(
        client: Client,
        node: &str,
        notify: Arc<Notify>,
        extra_service_cidrs: Vec<ipnetwork::IpNetwork>,
    ) -> anyhow::Result<Self> {
        let service_cidrs = crate::k8s::service_cidrs::watch(client.clone(), notify.clone());
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
        let namespaces = reflect_trimmed(
            Api::<Namespace>::all(client.clone()),
            watch_config(),
            notify.clone(),
            |_| {},
            trim_namespace,
        );
        let pods = PodWatches::new(client, node, notify);
        anyhow::ensure!(
            gateways.store.wait_until_ready().await.is_ok(),
            "the EgressGateway watch stopped before it synced"
        );
        anyhow::ensure!(
            nodes.store.wait_until_ready().await.is_ok(),
            "the Node watch stopped before it synced"
        );
        anyhow::ensure!(
            namespaces.store.wait_until_ready().await.is_ok(),
            "the Namespace watch stopped before it synced"
        );
        pods.wait_local().await;
        Ok(Self {
            node: node.to_string(),
            gateways,
            nodes,
            namespaces,
            service_cidrs,
            extra_service_cidrs,
            pods,
            gateway_cache: GatewayCache::default(),
            index: ClusterIndex::default(),
            epoch: None,
            pending_full: true,
        })
    }

    /// Bring the index up to date for planning under `epoch`. Never waits for a listing pod
    /// watch: while one lists, every call is a full change (see the comment inside).
    pub fn refresh(&mut self, epoch: i32) -> Option<Change> {
        let mut structural = self.epoch != Some(epoch);
        self.epoch = Some(epoch);
        if self.gateways.take_changed() {
            let gws = self.gateway_cache.build(&self.gateways.store.state());
            if gws != self.index.gateways {
                self.index.gateways = gws;
                structural = true;
            }
        }
        if self.nodes.take_changed() {
            let nodes: BTreeMap<String, Node> = self
                .nodes
                .store
                .state()
                .iter()
                .filter_map(|n| Node::from_kube(n))
                .map(|n| (n.name.clone(), n))
                .collect();
            if nodes != self.index.nodes {
                self.index.nodes = nodes;
                structural = true;
            }
        }
        if self.namespaces.take_changed() {
            let namespaces: BTreeMap<String, _> = self
                .namespaces
                .store
                .state()
                .iter()
                .map(|ns| (ns.name_any(), ns.labels().clone()))
                .collect();
            if namespaces != self.index.namespaces {
                self.index.namespaces = namespaces;
                structural = true;
            }
        }
        if self.service_cidrs.take_changed() || self.index.service_cidrs.is_empty() {
            let ranges = crate::k8s::service_cidrs::ranges(
                &self.service_cidrs.store.state(),
                &self.extra_service_cidrs,
            );
            if ranges != self.index.service_cidrs {
                self.index.service_cidrs = ranges;
                structural = true;
            }
        }
        if structural {
            let scopes = self.scopes();
            self.pods.set_scopes(&scopes);
            self.pending_full = true;
        }
        let changed = self.pods.store.update(&mut self.index.pods);
        if !self.pods.synced() {
            // A watch of a gateway this node newly guards is still listing. Plan with what is
            // known (the node's own pods always are): a new gateway's local pods are blocked at
            // once, and a pod this node has not heard of yet is dropped by the other nodes'
            // pod ranges. Plan in full again once the listing is done (its sync wakes us).
            self.pending_full = true;
            return Some(Change::Everything);
        }
        if std::mem::take(&mut self.pending_full) {
            return Some(Change::Everything);
        }
        Some(Change::Pods(changed))
    }

    /// Whether every pod watch (the node's own, each guarded gateway's) has listed once.
    pub fn pods_synced(&self) -> bool {
        self.pods.synced()
    }

    /// Whether this node may host an egress IP: its labels match some gateway's
    /// gatewayNodeSelector, or a status still records an IP on it. Otherwise the agent renews
    /// at the idle cadence.
    pub fn may_host(&self) -> bool {
        let empty = Default::default();
        let my_labels = self
            .index
            .nodes
            .get(&self.node)
            .map_or(&empty, |n| &n.labels);
        self.index.gateways.values().any(|g| {
            g.recorded.values().any(|r| r.node == self.node)
                || g.spec
                    .as_ref()
                    .is_ok_and(|s| s.node_selector.matches(my_labels))
        })
    }

    /// The gateways whose every pod this node guards (see [`crate::plan::guard`]).
    pub fn guarded_gateways(&self) -> BTreeSet<String> {
        crate::plan::guard::guarded_gateways(&self.index, &self.node)
    }

    /// Pod watches for the gateways this node guards ([`Self::guarded_gateways`]: those it
    /// hosts or may host): a standby already holds the pods when an IP fails over to it,
    /// instead of listing them first, and drops what it will not SNAT.
    fn scopes(&self) -> BTreeMap<Scope, Keep> {
        let guarded = self.guarded_gateways();
        merge_scopes(
            guarded
                .iter()
                .filter_map(|name| self.index.gateways.get(name)?.effective_spec())
                .flat_map(|spec| scopes_for(&self.index, spec)),
        )
    }
}
