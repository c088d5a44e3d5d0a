//! The pods an agent watches: its own node's pods (field selector), plus, on a gateway node,
//! the pods of each gateway it hosts an egress IP for (label selector = the gateway's
//! `podSelector`, filtered server-side). Nothing else, so an agent's memory and watch
//! traffic follow its own work, not the size of the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::info;

use crate::index::{Pod, PodKey};
use crate::k8s::watch::{Reflected, reflect_trimmed, trim_pod};

pub struct PodWatches {
    client: Client,
    notify: Arc<Notify>,
    local: Reflected<KubePod>,
    /// Label-selector query to its watch.
    by_selector: BTreeMap<String, Reflected<KubePod>>,
}

impl PodWatches {
    pub fn new(client: Client, node: &str, notify: Arc<Notify>) -> Self {
        let local = reflect_trimmed(
            Api::<KubePod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            notify.clone(),
            |_| {},
            trim_pod,
        );
        Self { client, notify, local, by_selector: BTreeMap::new() }
    }

    /// Make the per-gateway watches exactly `queries` (start new ones, stop old ones).
    pub fn set_selectors(&mut self, queries: &BTreeSet<String>) {
        self.by_selector.retain(|q, r| {
            let keep = queries.contains(q);
            if !keep {
                info!(selector = %q, "stopping pod watch: no hosted gateway selects with it");
                r.task.abort();
            }
            keep
        });
        for q in queries {
            if !self.by_selector.contains_key(q) {
                info!(selector = %q, "watching the pods of a hosted gateway");
                let cfg = if q.is_empty() { watcher::Config::default() } else { watcher::Config::default().labels(q) };
                let r = reflect_trimmed(Api::<KubePod>::all(self.client.clone()), cfg, self.notify.clone(), |_| {}, trim_pod);
                self.by_selector.insert(q.clone(), r);
            }
        }
    }

    /// Whether every watch has listed once.
    pub fn synced(&self) -> bool {
        std::iter::once(&self.local).chain(self.by_selector.values()).all(|r| r.is_ready())
    }

    /// Wait for the local watch's first list.
    pub async fn wait_local(&self) -> bool {
        self.local.store.wait_until_ready().await.is_ok()
    }

    /// Every pod any watch holds, cut down.
    pub fn pods(&self) -> BTreeMap<PodKey, Pod> {
        std::iter::once(&self.local)
            .chain(self.by_selector.values())
            .flat_map(|r| r.store.state())
            .filter_map(|p| Pod::from_kube(&p))
            .map(|p| (p.key.clone(), p))
            .collect()
    }

    /// Objects held in all stores (a pod seen by two watches counts twice): the agent's
    /// watch footprint.
    pub fn held(&self) -> usize {
        std::iter::once(&self.local).chain(self.by_selector.values()).map(|r| r.store.state().len()).sum()
    }
}

impl Drop for PodWatches {
    fn drop(&mut self) {
        self.local.task.abort();
        for r in self.by_selector.values() {
            r.task.abort();
        }
    }
}
