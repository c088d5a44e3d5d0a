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
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::warn;

use super::slim::SlimPod;
use crate::index::{Pod, PodKey};

/// Identifies one watch feeding the store.
pub type SourceId = u64;

#[derive(Debug)]
struct Held {
    pod: Pod,
    revision: Option<u64>,
    sources: BTreeSet<SourceId>,
}

#[derive(Debug, Default)]
struct Inner {
    pods: HashMap<PodKey, Held>,
    dirty: BTreeSet<PodKey>,
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
    fn apply(&mut self, source: SourceId, key: PodKey, pod: Pod, revision: Option<u64>) {
        match self.pods.get_mut(&key) {
            Some(held) => {
                held.sources.insert(source);
                let newer = match (held.revision, revision) {
                    (Some(old), Some(new)) => new >= old,
                    _ => true,
                };
                if newer {
                    held.revision = revision;
                    if held.pod != pod {
                        held.pod = pod;
                        self.dirty.insert(key);
                    }
                }
            }
            None => {
                self.pods.insert(key.clone(), Held { pod, revision, sources: BTreeSet::from([source]) });
                self.dirty.insert(key);
            }
        }
    }

    fn release(&mut self, source: SourceId, key: &PodKey) {
        if let Some(held) = self.pods.get_mut(key) {
            held.sources.remove(&source);
            if held.sources.is_empty() {
                self.pods.remove(key);
                self.dirty.insert(key.clone());
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
            inner.apply(source, p.key.clone(), p, pod.revision());
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
            .pods
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
        let held: Vec<PodKey> = inner.pods.iter().filter(|(_, h)| h.sources.contains(&source)).map(|(k, _)| k.clone()).collect();
        for k in held {
            inner.release(source, &k);
        }
    }

    /// Whether `source` has listed once.
    pub fn is_synced(&self, source: SourceId) -> bool {
        self.lock().synced.contains(&source)
    }

    /// Keys added, changed or removed since the last call.
    pub fn take_dirty(&self) -> BTreeSet<PodKey> {
        std::mem::take(&mut self.lock().dirty)
    }

    /// The pod as it is now, if any source holds it.
    pub fn get(&self, key: &PodKey) -> Option<Pod> {
        self.lock().pods.get(key).map(|h| h.pod.clone())
    }

    /// Every pod held, and clears the dirty keys (the caller now has everything).
    pub fn snapshot(&self) -> BTreeMap<PodKey, Pod> {
        let mut inner = self.lock();
        inner.dirty.clear();
        inner.pods.iter().map(|(k, h)| (k.clone(), h.pod.clone())).collect()
    }

    /// Bring `pods` up to date with the changes since the last call; returns the keys.
    pub fn update(&self, pods: &mut BTreeMap<PodKey, Pod>) -> BTreeSet<PodKey> {
        let mut inner = self.lock();
        let dirty = std::mem::take(&mut inner.dirty);
        for k in &dirty {
            match inner.pods.get(k) {
                Some(h) => {
                    pods.insert(k.clone(), h.pod.clone());
                }
                None => {
                    pods.remove(k);
                }
            }
        }
        dirty
    }

    /// Pods held (each once).
    pub fn len(&self) -> usize {
        self.lock().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Run one pod watch into `store` as `source`, waking `notify` after every change. Retries
/// with backoff forever; abort the handle to stop it, then call [`PodStore::remove_source`].
pub fn feed(api: Api<SlimPod>, config: watcher::Config, store: Arc<PodStore>, source: SourceId, notify: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stream = watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => store.list_started(source),
                Ok(watcher::Event::InitApply(p) | watcher::Event::Apply(p)) => store.apply(source, &p),
                Ok(watcher::Event::InitDone) => store.list_done(source),
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
        s.apply(1, &pod("a", "x", 10));
        s.apply(2, &pod("a", "x", 10));
        assert_eq!(s.len(), 1);
        assert_eq!(s.take_dirty(), BTreeSet::from([key("a")]));
        // Out of watch 1's selector: still held by watch 2, nothing changed.
        s.release(1, &pod("a", "x", 10));
        assert!(s.get(&key("a")).is_some() && s.take_dirty().is_empty());
        s.release(2, &pod("a", "x", 10));
        assert!(s.get(&key("a")).is_none());
        assert_eq!(s.take_dirty(), BTreeSet::from([key("a")]));
    }

    #[test]
    fn an_older_version_from_a_lagging_watch_does_not_overwrite_a_newer_one() {
        let s = PodStore::new();
        s.apply(1, &pod("a", "new", 20));
        s.apply(2, &pod("a", "old", 10));
        assert_eq!(s.get(&key("a")).unwrap().labels["app"], "new");
        s.apply(2, &pod("a", "newest", 30));
        assert_eq!(s.get(&key("a")).unwrap().labels["app"], "newest");
    }

    #[test]
    fn a_relist_releases_what_it_no_longer_lists() {
        let s = PodStore::new();
        s.list_started(1);
        s.apply(1, &pod("a", "x", 1));
        s.apply(1, &pod("b", "x", 2));
        s.list_done(1);
        assert!(s.is_synced(1));
        s.apply(2, &pod("b", "x", 2));
        s.take_dirty();
        s.list_started(1);
        s.apply(1, &pod("a", "x", 1));
        s.list_done(1);
        // b is still held by watch 2; a by the relist.
        assert!(s.take_dirty().is_empty());
        s.list_started(1);
        s.list_done(1);
        assert_eq!(s.take_dirty(), BTreeSet::from([key("a")]));
        assert!(s.get(&key("b")).is_some());
        s.remove_source(2);
        assert!(s.is_empty());
    }

    #[test]
    fn update_brings_a_copy_up_to_date() {
        let s = PodStore::new();
        let mut copy = s.snapshot();
        s.apply(1, &pod("a", "x", 1));
        s.apply(1, &pod("b", "x", 2));
        assert_eq!(s.update(&mut copy).len(), 2);
        s.release(1, &pod("a", "x", 3));
        s.apply(1, &pod("b", "y", 4));
        s.update(&mut copy);
        assert_eq!(copy.len(), 1);
        assert_eq!(copy[&key("b")].labels["app"], "y");
    }
}
