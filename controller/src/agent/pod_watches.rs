//! The pods an agent watches: its own node's pods (field selector), plus, on a gateway node,
//! the pods of each gateway it hosts or may host (label selector = the gateway's
//! `podSelector`, filtered server-side, and scoped to the namespaces its
//! `namespaceSelector` matches when those are few). All watches feed one [`PodStore`], which
//! holds each pod once, cut down while it is decoded ([`SlimPod`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::k8s::watch::watch_config;
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
        write!(
            f,
            "{}:{{{}}}",
            self.namespace.as_deref().unwrap_or("*"),
            self.labels
        )
    }
}

/// Which pods of a watch to keep: all, or only those of these namespaces.
pub type Keep = Option<BTreeSet<String>>;

/// The watches a gateway's pods need, each with the namespaces whose pods to keep: a
/// cluster-wide watch (label selector only) delivers pods of every namespace, and those of
/// namespaces the gateway does not select are dropped on arrival.
pub fn scopes_for(index: &ClusterIndex, spec: &GatewaySpec) -> Vec<(Scope, Keep)> {
    let labels = spec.pod_selector.to_query();
    if spec.namespace_selector.is_empty() {
        return vec![(
            Scope {
                namespace: None,
                labels,
            },
            None,
        )];
    }
    let namespaces: BTreeSet<String> = index
        .namespaces
        .iter()
        .filter(|(_, l)| spec.namespace_selector.matches(l))
        .map(|(n, _)| n.clone())
        .collect();
    if namespaces.len() > NAMESPACED_WATCHES_MAX {
        return vec![(
            Scope {
                namespace: None,
                labels,
            },
            Some(namespaces),
        )];
    }
    namespaces
        .into_iter()
        .map(|n| {
            (
                Scope {
                    namespace: Some(n),
                    labels: labels.clone(),
                },
                None,
            )
        })
        .collect()
}

/// Merge the scopes of several gateways: one watch per scope, keeping the union.
pub fn merge_scopes(scopes: impl IntoIterator<Item = (Scope, Keep)>) -> BTreeMap<Scope, Keep> {
    let mut out: BTreeMap<Scope, Keep> = BTreeMap::new();
    for (scope, keep) in scopes {
        match out.entry(scope) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(keep);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let merged = match (o.get_mut().take(), keep) {
                    (Some(mut a), Some(b)) => {
                        a.extend(b);
                        Some(a)
                    }
                    _ => None,
                };
                *o.get_mut() = merged;
            }
        }
    }
    out
}

struct Watch {
    source: SourceId,
    task: JoinHandle<()>,
    keep: Keep,
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
            watch_config().fields(&format!("spec.nodeName={node}")),
            store.clone(),
            LOCAL,
            notify.clone(),
            None,
            None,
        );
        let lists = Arc::new(Semaphore::new(CONCURRENT_LISTS));
        Self {
            client,
            notify,
            store,
            local,
            by_scope: BTreeMap::new(),
            next_source: LOCAL + 1,
            lists,
        }
    }

    /// Make the gateway watches exactly `scopes` (start new ones, stop old ones, restart
    /// those whose namespace filter changed: a wider one needs a new list).
    pub fn set_scopes(&mut self, scopes: &BTreeMap<Scope, Keep>) {
        let store = self.store.clone();
        self.by_scope.retain(|s, w| {
            let keep = scopes.get(s).is_some_and(|k| *k == w.keep);
            if !keep {
                info!(scope = %s, "stopping pod watch: no hosted or candidate gateway needs it as it is");
                w.task.abort();
                store.remove_source(w.source);
            }
            keep
        });
        for (s, keep) in scopes {
            if self.by_scope.contains_key(s) {
                continue;
            }
            info!(scope = %s, "watching the pods of a hosted or candidate gateway");
            let api: Api<SlimPod> = match &s.namespace {
                Some(ns) => Api::namespaced(self.client.clone(), ns),
                None => Api::all(self.client.clone()),
            };
            let cfg = if s.labels.is_empty() {
                watch_config()
            } else {
                watch_config().labels(&s.labels)
            };
            let source = self.next_source;
            self.next_source += 1;
            let filter = keep.clone().map(Arc::new);
            let task = pod_store::feed(
                api,
                cfg,
                self.store.clone(),
                source,
                self.notify.clone(),
                Some(self.lists.clone()),
                filter,
            );
            self.by_scope.insert(
                s.clone(),
                Watch {
                    source,
                    task,
                    keep: keep.clone(),
                },
            );
        }
    }

    /// Whether every watch has listed once.
    pub fn synced(&self) -> bool {
        self.store.is_synced(LOCAL)
            && self
                .by_scope
                .values()
                .all(|w| self.store.is_synced(w.source))
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
        LabelSelector {
            match_labels: Labels::from([(k.into(), v.into())]),
            ..Default::default()
        }
    }

    #[test]
    fn few_namespaces_get_a_watch_each_many_or_all_get_one() {
        let mut index = ClusterIndex::default();
        for i in 0..40 {
            let tier = if i < 3 { "a" } else { "b" };
            index.namespaces.insert(
                format!("ns-{i:02}"),
                Labels::from([("tier".into(), tier.into())]),
            );
        }
        let few = scopes_for(&index, &spec(sel("tier", "a"), sel("app", "x")));
        assert_eq!(few.len(), 3);
        assert!(
            few.iter()
                .all(|(s, keep)| s.namespace.is_some() && s.labels == "app=x" && keep.is_none())
        );
        let many = scopes_for(&index, &spec(sel("tier", "b"), sel("app", "x")));
        assert_eq!(many.len(), 1);
        assert_eq!(
            many[0].0,
            Scope {
                namespace: None,
                labels: "app=x".into()
            }
        );
        assert_eq!(
            many[0].1.as_ref().map(BTreeSet::len),
            Some(37),
            "a cluster-wide watch keeps only the selected namespaces' pods"
        );
        let all = scopes_for(
            &index,
            &spec(LabelSelector::default(), LabelSelector::default()),
        );
        assert_eq!(
            all,
            vec![(
                Scope {
                    namespace: None,
                    labels: String::new()
                },
                None
            )]
        );
        assert!(scopes_for(&index, &spec(sel("tier", "none"), sel("app", "x"))).is_empty());
        // Two gateways on one cluster-wide watch keep the union; one keeping all keeps all.
        let wide = |ns: &[&str]| {
            (
                Scope {
                    namespace: None,
                    labels: "app=x".into(),
                },
                Some(ns.iter().map(|n| n.to_string()).collect()),
            )
        };
        let merged = merge_scopes([wide(&["a"]), wide(&["b"])]);
        assert_eq!(merged.values().next().unwrap().as_ref().unwrap().len(), 2);
        let merged = merge_scopes([
            wide(&["a"]),
            (
                Scope {
                    namespace: None,
                    labels: "app=x".into(),
                },
                None,
            ),
        ]);
        assert_eq!(merged.values().next().unwrap(), &None);
    }
}
