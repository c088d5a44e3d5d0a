//! The pods an agent watches: its own node's pods (field selector), plus, on a gateway node,
//! the pods of each gateway it hosts or may host (label selector = the gateway's
//! `podSelector`, filtered server-side, and scoped to the namespaces its
//! `namespaceSelector` matches when those are few). All watches feed one [`PodStore`], which
//! holds each pod once, cut down while it is decoded ([`SlimPod`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tracing::info;

use crate::index::{ClusterIndex, GatewaySpec};
use crate::k8s::pod_store::{self, PodStore, SourceId};
use crate::k8s::slim::SlimPod;

/// A gateway whose `namespaceSelector` matches at most this many namespaces gets one watch
/// per namespace; above it, one cluster-wide watch (label selector only).
pub const NAMESPACED_WATCHES_MAX: usize = 16;

/// Gateway pod watches that may be in their first list at once.
pub const CONCURRENT_LISTS: usize = 4;

/// The source id of the node's own pods.
const LOCAL: SourceId = 0;

/// One pod watch: a label selector, in one namespace or cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scope {
    pub namespace: Option<String>,
    pub labels: String,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{{{}}}", self.namespace.as_deref().unwrap_or("*"), self.labels)
    }
}

/// The watches a gateway's pods need.
pub fn scopes_for(index: &ClusterIndex, spec: &GatewaySpec) -> Vec<Scope> {
    let labels = spec.pod_selector.to_query();
    let namespaces: Vec<&String> =
        index.namespaces.iter().filter(|(_, l)| spec.namespace_selector.matches(l)).map(|(n, _)| n).collect();
    if spec.namespace_selector.is_empty() || namespaces.len() > NAMESPACED_WATCHES_MAX {
        return vec![Scope { namespace: None, labels }];
    }
    namespaces.into_iter().map(|n| Scope { namespace: Some(n.clone()), labels: labels.clone() }).collect()
}

struct Watch {
    source: SourceId,
    task: JoinHandle<()>,
}

pub struct PodWatches {
    client: Client,
    notify: Arc<Notify>,
    pub store: Arc<PodStore>,
    local: JoinHandle<()>,
    by_scope: BTreeMap<Scope, Watch>,
    next_source: SourceId,
    lists: Arc<Semaphore>,
}

impl PodWatches {
    pub fn new(client: Client, node: &str, notify: Arc<Notify>) -> Self {
        let store = PodStore::new();
        let local = pod_store::feed(
            Api::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            store.clone(),
            LOCAL,
            notify.clone(),
            None,
        );
        let lists = Arc::new(Semaphore::new(CONCURRENT_LISTS));
        Self { client, notify, store, local, by_scope: BTreeMap::new(), next_source: LOCAL + 1, lists }
    }

    /// Make the gateway watches exactly `scopes` (start new ones, stop old ones).
    pub fn set_scopes(&mut self, scopes: &BTreeSet<Scope>) {
        let store = self.store.clone();
        self.by_scope.retain(|s, w| {
            let keep = scopes.contains(s);
            if !keep {
                info!(scope = %s, "stopping pod watch: no hosted or candidate gateway needs it");
                w.task.abort();
                store.remove_source(w.source);
            }
            keep
        });
        for s in scopes {
            if self.by_scope.contains_key(s) {
                continue;
            }
            info!(scope = %s, "watching the pods of a hosted or candidate gateway");
            let api: Api<SlimPod> = match &s.namespace {
                Some(ns) => Api::namespaced(self.client.clone(), ns),
                None => Api::all(self.client.clone()),
            };
            let cfg = if s.labels.is_empty() { watcher::Config::default() } else { watcher::Config::default().labels(&s.labels) };
            let source = self.next_source;
            self.next_source += 1;
            let task = pod_store::feed(api, cfg, self.store.clone(), source, self.notify.clone(), Some(self.lists.clone()));
            self.by_scope.insert(s.clone(), Watch { source, task });
        }
    }

    /// Whether every watch has listed once.
    pub fn synced(&self) -> bool {
        self.store.is_synced(LOCAL) && self.by_scope.values().all(|w| self.store.is_synced(w.source))
    }

    /// Wait for the local watch's first list.
    pub async fn wait_local(&self) {
        while !self.store.is_synced(LOCAL) {
            self.notify.notified().await;
        }
        self.notify.notify_one(); // the loop that waits next must not miss the wake-up
    }

    /// Number of gateway watches.
    pub fn watches(&self) -> usize {
        self.by_scope.len()
    }
}

impl Drop for PodWatches {
    fn drop(&mut self) {
        self.local.abort();
        for w in self.by_scope.values() {
            w.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LabelSelector;
    use crate::index::Labels;

    fn spec(ns: LabelSelector, pods: LabelSelector) -> GatewaySpec {
        GatewaySpec {
            namespace_selector: ns,
            pod_selector: pods,
            destinations: vec![],
            excluded: vec![],
            egress_ips: vec![],
            node_selector: LabelSelector::default(),
            interface: None,
        }
    }

    fn sel(k: &str, v: &str) -> LabelSelector {
        LabelSelector { match_labels: Labels::from([(k.into(), v.into())]), ..Default::default() }
    }

    #[test]
    fn few_namespaces_get_a_watch_each_many_or_all_get_one() {
        let mut index = ClusterIndex::default();
        for i in 0..40 {
            let tier = if i < 3 { "a" } else { "b" };
            index.namespaces.insert(format!("ns-{i:02}"), Labels::from([("tier".into(), tier.into())]));
        }
        let few = scopes_for(&index, &spec(sel("tier", "a"), sel("app", "x")));
        assert_eq!(few.len(), 3);
        assert!(few.iter().all(|s| s.namespace.is_some() && s.labels == "app=x"));
        let many = scopes_for(&index, &spec(sel("tier", "b"), sel("app", "x")));
        assert_eq!(many, vec![Scope { namespace: None, labels: "app=x".into() }]);
        let all = scopes_for(&index, &spec(LabelSelector::default(), LabelSelector::default()));
        assert_eq!(all, vec![Scope { namespace: None, labels: String::new() }]);
        assert!(scopes_for(&index, &spec(sel("tier", "none"), sel("app", "x"))).is_empty());
    }
}
