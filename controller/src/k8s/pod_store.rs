//! One store of cut-down pods fed by any number of pod watches, with the keys that changed
//! since the planner last looked.
//!
//! An agent on a gateway node watches the pods of every gateway it hosts or may host, one
//! watch per `podSelector`; selectors overlap, so one pod arrives through several watches.
//! Here it is held once, with the set of watches ("sources") that currently hold it, and the
//! planner drains [`PodStore::take_dirty`] to update its plan pod by pod instead of
//! rebuilding an index from every stored object on every event.
//!
//! A `DELETED` event of a label-filtered watch means "no longer matches this selector", not
//! "deleted": it only removes that source. A pod is gone when no source holds it. Two watches
//! can deliver one pod's versions at different times; the newest `resourceVersion` wins.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tracing::warn;

use super::slim::SlimPod;
use crate::index::{Pod, PodKey};

/// Identifies one watch feeding the store.
pub type SourceId = u64;

/// Which sources hold a pod, and the newest version seen. The pod itself is not kept here:
/// its content goes to the consumer's index through [`PodStore::update`], so every pod is
/// in memory once.
#[derive(Debug)]
struct Held {
    revision: Option<u64>,
    sources: Vec<SourceId>,
}

#[derive(Debug, Default)]
struct Inner {
    held: HashMap<PodKey, Held>,
    /// Content not yet taken by the consumer: `None` when no source holds the pod any more.
    pending: BTreeMap<PodKey, Option<Pod>>,
    /// Keys a source listed since its (re)list began.
    listing: HashMap<SourceId, HashSet<PodKey>>,
    synced: HashSet<SourceId>,
}

/// The pods of every source, deduplicated. Cheap to share (`Arc`), one lock.
#[derive(Debug, Default)]
pub struct PodStore {
    inner: Mutex<Inner>,
}

impl Inner {
    fn apply(&mut self, source: SourceId, pod: Pod, revision: Option<u64>) {
        match self.held.get_mut(&pod.key) {
            Some(held) => {
                if !held.sources.contains(&source) {
                    held.sources.push(source);
                }
                let newer = match (held.revision, revision) {
                    (Some(old), Some(new)) => new >= old,
                    _ => true,
                };
                if newer {
                    held.revision = revision;
                    self.pending.insert(pod.key.clone(), Some(pod));
                }
            }
            None => {
                self.held.insert(
                    pod.key.clone(),
                    Held {
                        revision,
                        sources: vec![source],
                    },
                );
                self.pending.insert(pod.key.clone(), Some(pod));
            }
        }
    }

    fn release(&mut self, source: SourceId, key: &PodKey) {
        if let Some(held) = self.held.get_mut(key) {
            held.sources.retain(|s| *s != source);
            if held.sources.is_empty() {
                self.held.remove(key);
                self.pending.insert(key.clone(), None);
            }
        }
    }
}

impl PodStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("pod store lock")
    }

    /// `source` saw the pod added or changed.
    pub fn apply(&self, source: SourceId, pod: &SlimPod) {
        if let Some(p) = pod.to_index() {
            let mut inner = self.lock();
            if let Some(seen) = inner.listing.get_mut(&source) {
                seen.insert(p.key.clone());
            }
            inner.apply(source, p, pod.revision());
        }
    }

    /// `source` no longer holds the pod (deleted, or out of its selector).
    pub fn release(&self, source: SourceId, pod: &SlimPod) {
        if let Some(p) = pod.to_index() {
            self.lock().release(source, &p.key);
        }
    }

    /// `source` starts a (re)list: what it does not list again it no longer holds.
    pub fn list_started(&self, source: SourceId) {
        self.lock().listing.insert(source, HashSet::new());
    }

    /// `source` finished its list.
    pub fn list_done(&self, source: SourceId) {
        let mut inner = self.lock();
        let seen = inner.listing.remove(&source).unwrap_or_default();
        let stale: Vec<PodKey> = inner
            .held
            .iter()
            .filter(|(k, h)| h.sources.contains(&source) && !seen.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            inner.release(source, &k);
        }
        inner.synced.insert(source);
    }

    /// `source` stopped: release everything it held.
    pub fn remove_source(&self, source: SourceId) {
        let mut inner = self.lock();
        inner.listing.remove(&source);
        inner.synced.remove(&source);
        let held: Vec<PodKey> = inner
            .held
            .iter()
            .filter(|(_, h)| h.sources.contains(&source))
            .map(|(k, _)| k.clone())
            .collect();
        for k in held {
            inner.release(source, &k);
        }
    }

    /// Whether `source` has listed once.
    pub fn is_synced(&self, source: SourceId) -> bool {
        self.lock().synced.contains(&source)
    }

    /// Bring `pods` (the consumer's copy, the only one) up to date; returns the keys whose
    /// pod was added, changed or removed.
    pub fn update(&self, pods: &mut BTreeMap<PodKey, Pod>) -> BTreeSet<PodKey> {
        let pending = std::mem::take(&mut self.lock().pending);
        let mut changed = BTreeSet::new();
        for (k, v) in pending {
            match v {
                Some(p) if pods.get(&k) != Some(&p) => {
                    pods.insert(k.clone(), p);
                    changed.insert(k);
                }
                Some(_) => {}
                None => {
                    if pods.remove(&k).is_some() {
                        changed.insert(k);
                    }
                }
            }
        }
        changed
    }

    /// Pods held (each once).
    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Run one pod watch into `store` as `source`, waking `notify` after every change. Retries
/// with backoff forever; abort the handle to stop it, then call [`PodStore::remove_source`].
///
/// With a `gate`, the watch's first list waits for a permit and holds it until it is done:
/// an agent starting tens of watches at once then does not hold tens of list pages in
/// memory at once. With `namespaces`, pods of other namespaces are dropped as they arrive
/// (a cluster-wide watch whose selector also matches pods no gateway selects).
pub fn feed(
    api: Api<SlimPod>,
    config: watcher::Config,
    store: Arc<PodStore>,
    source: SourceId,
    notify: Arc<Notify>,
    gate: Option<Arc<Semaphore>>,
    namespaces: Option<Arc<BTreeSet<String>>>,
) -> JoinHandle<()> {
    let wanted = move |p: &SlimPod| {
        namespaces.as_ref().is_none_or(|ns| {
            p.metadata
                .namespace
                .as_ref()
                .is_some_and(|n| ns.contains(n))
        })
    };
    tokio::spawn(async move {
        let mut permit = match gate {
            Some(g) => g.acquire_owned().await.ok(),
            None => None,
        };
        let stream = watcher(api, config).backoff(super::watch::watch_backoff());
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => store.list_started(source),
                Ok(watcher::Event::InitApply(p) | watcher::Event::Apply(p)) if wanted(&p) => {
                    store.apply(source, &p)
                }
                Ok(watcher::Event::InitApply(_) | watcher::Event::Apply(_)) => continue,
                Ok(watcher::Event::InitDone) => {
                    store.list_done(source);
                    permit.take();
                }
                Ok(watcher::Event::Delete(p)) => store.release(source, &p),
                Err(e) => {
                    warn!(source, error = %e, "pod watch error; retrying with backoff");
                    continue;
                }
            }
            notify.notify_one();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str, rv: u64) -> SlimPod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "n", "resourceVersion": rv.to_string(), "labels": { "app": app } },
            "spec": { "nodeName": "node-1" },
            "status": { "phase": "Running", "podIP": "198.19.1.10" }
        }))
        .unwrap()
    }

    fn key(name: &str) -> PodKey {
        PodKey::new("n", name)
    }

    #[test]
    fn a_pod_seen_by_two_watches_is_held_once_until_both_release_it() {
        let s = PodStore::new();
        let mut pods = BTreeMap::new();
        s.apply(1, &pod("a", "x", 10));
        s.apply(2, &pod("a", "x", 10));
        assert_eq!(s.len(), 1);
        assert_eq!(s.update(&mut pods), BTreeSet::from([key("a")]));
        // Out of watch 1's selector: still held by watch 2, nothing changed.
        s.release(1, &pod("a", "x", 10));
        assert!(s.update(&mut pods).is_empty() && pods.contains_key(&key("a")));
        s.release(2, &pod("a", "x", 10));
        assert_eq!(s.update(&mut pods), BTreeSet::from([key("a")]));
        assert!(pods.is_empty() && s.is_empty());
    }

    #[test]
    fn an_older_version_from_a_lagging_watch_does_not_overwrite_a_newer_one() {
        let s = PodStore::new();
        let mut pods = BTreeMap::new();
        s.apply(1, &pod("a", "new", 20));
        s.apply(2, &pod("a", "old", 10));
        s.update(&mut pods);
        assert_eq!(&pods[&key("a")].labels["app"], "new");
        s.apply(2, &pod("a", "newest", 30));
        s.update(&mut pods);
        assert_eq!(&pods[&key("a")].labels["app"], "newest");
    }

    #[test]
    fn a_relist_releases_what_it_no_longer_lists() {
        let s = PodStore::new();
        let mut pods = BTreeMap::new();
        s.list_started(1);
        s.apply(1, &pod("a", "x", 1));
        s.apply(1, &pod("b", "x", 2));
        s.list_done(1);
        assert!(s.is_synced(1));
        s.apply(2, &pod("b", "x", 2));
        s.update(&mut pods);
        s.list_started(1);
        s.apply(1, &pod("a", "x", 1));
        s.list_done(1);
        // b is still held by watch 2; a by the relist; nothing changed.
        assert!(s.update(&mut pods).is_empty());
        s.list_started(1);
        s.list_done(1);
        assert_eq!(s.update(&mut pods), BTreeSet::from([key("a")]));
        assert!(pods.contains_key(&key("b")));
        s.remove_source(2);
        assert_eq!(s.update(&mut pods), BTreeSet::from([key("b")]));
        assert!(s.is_empty() && pods.is_empty());
    }

    #[test]
    fn an_unchanged_pod_is_not_reported_changed() {
        let s = PodStore::new();
        let mut pods = BTreeMap::new();
        s.apply(1, &pod("a", "x", 1));
        s.apply(1, &pod("b", "x", 2));
        assert_eq!(s.update(&mut pods).len(), 2);
        s.apply(1, &pod("a", "x", 3)); // a new version, same fields the planner reads
        s.apply(1, &pod("b", "y", 4));
        assert_eq!(s.update(&mut pods), BTreeSet::from([key("b")]));
        assert_eq!(&pods[&key("b")].labels["app"], "y");
    }
}
