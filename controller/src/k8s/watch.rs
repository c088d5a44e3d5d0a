//! Reflectors: a watch kept in a local store, waking a [`Notify`] on every change.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, NodeCondition, NodeSpec, NodeStatus};
use kube::api::ObjectMeta;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::warn;

/// Every watch asks the apiserver to end it after this many seconds, and kube-runtime takes a
/// watch that delivered nothing for that long (plus 5 s) for dead and watches again from the
/// last version: a connection that stalls silently (an apiserver lost without a reset, a
/// middlebox that drops the flow) is noticed within about a minute, not the 295 s of the
/// default. Cheap: a re-watch lists nothing.
pub const WATCH_TIMEOUT_SECS: u32 = 60;
/// The agents' Lease watch carries a renewal every 500 ms from every busy agent and every
/// 5 s from idle ones: 15 s without one is a stalled connection (see `controller::liveness`,
/// which kills nobody meanwhile). Re-watched this often.
pub const LEASE_WATCH_TIMEOUT_SECS: u32 = 10;

/// The watch configuration every watch of egressgw starts from ([`WATCH_TIMEOUT_SECS`]).
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

/// A store kept in sync by a background task; dropping the handle does not stop it, abort it.
pub struct Reflected<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    pub task: JoinHandle<()>,
    synced: Arc<AtomicBool>,
    changed: Arc<AtomicBool>,
}

impl<K: Resource + 'static> Reflected<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    /// Whether the watch has completed its first list.
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether the store changed since the last call (set before `notify` is woken, so a
    /// consumer woken by it sees the change).
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }
}

/// Watch `api` with `config` into a store; `on_event` sees every object applied (not deletes),
/// and `notify` is woken on every change. `managedFields` are dropped before objects are
/// stored (nothing reads them; they are often the largest part of an object).
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: Arc<Notify>,
    on_event: impl Fn(&K) + Send + 'static,
) -> Reflected<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    reflect_trimmed(api, config, notify, on_event, |_| {})
}

/// [`reflect`], with `trim` cutting every object down before it is stored: the store (and
/// the memory of the process) then holds only the fields the planner reads.
pub fn reflect_trimmed<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: Arc<Notify>,
    on_event: impl Fn(&K) + Send + 'static,
    mut trim: impl FnMut(&mut K) + Send + 'static,
) -> Reflected<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let kind = K::kind(&Default::default()).to_string();
    let trimmed = watcher(api, config).modify(move |o: &mut K| {
        o.meta_mut().managed_fields = None;
        trim(o);
    });
    let stream = reflector(writer, trimmed).backoff(watch_backoff());
    let synced = Arc::new(AtomicBool::new(false));
    let changed = Arc::new(AtomicBool::new(true));
    let flag = synced.clone();
    let dirty = changed.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on_event(&o),
                Ok(watcher::Event::InitDone) => flag.store(true, Ordering::Release),
                Ok(_) => {}
                Err(e) => {
                    warn!(kind = %kind, error = %e, "watch error; retrying with backoff");
                    continue;
                }
            }
            dirty.store(true, Ordering::Release);
            notify.notify_one();
        }
    });
    Reflected {
        store,
        task,
        synced,
        changed,
    }
}

/// First retry delay of a failed watch. kube-runtime's default starts at 800 ms: an agent
/// whose gateway watch hit one error (a `410 Expired` right after its first list) then saw a
/// new gateway that much later, and its pods left from the node meanwhile (issue 11's
/// new-gateway window). Retries start at 50 ms and back off to 5 s.
pub const WATCH_RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest retry delay of a failed watch.
pub const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);
/// A backoff that has seen no error for this long starts over from [`WATCH_RETRY_MIN`].
pub const WATCH_RETRY_RESET: Duration = Duration::from_secs(60);

/// Exponential retry delays, doubling from [`WATCH_RETRY_MIN`] to [`WATCH_RETRY_MAX`].
#[derive(Clone, Debug)]
pub struct Doubling {
    next: Duration,
}

impl Default for Doubling {
    fn default() -> Self {
        Self {
            next: WATCH_RETRY_MIN,
        }
    }
}

impl Iterator for Doubling {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(WATCH_RETRY_MAX);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for Doubling {
    fn reset(&mut self) {
        self.next = WATCH_RETRY_MIN;
    }
}

/// The retry policy of every watch of ours.
pub fn watch_backoff() -> kube::runtime::utils::ResetTimerBackoff<Doubling> {
    kube::runtime::utils::ResetTimerBackoff::new(Doubling::default(), WATCH_RETRY_RESET)
}

/// Metadata the planner and the stores use: identity, labels, deletion, version.
fn trim_meta(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        labels: meta.labels.take(),
        deletion_timestamp: meta.deletion_timestamp.take(),
        creation_timestamp: meta.creation_timestamp.take(),
        ..Default::default()
    };
}

/// A Node cut down to what [`crate::index::Node::from_kube`] reads: labels, addresses and the
/// Ready condition (images, capacity, node info and the other conditions go).
pub fn trim_node(node: &mut Node) {
    trim_meta(&mut node.metadata);
    node.spec = node.spec.take().map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        // only ours: the agent-not-ready taint
        taints: s
            .taints
            .map(|ts| {
                ts.into_iter()
                    .filter(|t| t.key == super::names::TAINT_AGENT_NOT_READY)
                    .collect::<Vec<_>>()
            })
            .filter(|ts| !ts.is_empty()),
        ..Default::default()
    });
    node.status = node.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        conditions: s.conditions.map(|cs| {
            cs.into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| NodeCondition {
                    type_: c.type_,
                    status: c.status,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
}

/// A Namespace cut down to its name and labels.
pub fn trim_namespace(ns: &mut Namespace) {
    trim_meta(&mut ns.metadata);
    ns.spec = None;
    ns.status = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index;

    #[test]
    fn a_trimmed_node_indexes_the_same() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "node-1", "labels": { "egressgw.io/gateway": "true" } },
            "spec": { "podCIDR": "198.19.1.0/24" },
            "status": { "addresses": [{ "type": "InternalIP", "address": "198.18.0.11" }],
                "conditions": [{ "type": "MemoryPressure", "status": "False" }, { "type": "Ready", "status": "True", "message": "m" }],
                "images": [{ "names": ["x"], "sizeBytes": 1 }] }
        }))
        .unwrap();
        let mut t = node.clone();
        trim_node(&mut t);
        assert_eq!(index::Node::from_kube(&t), index::Node::from_kube(&node));
        assert!(t.status.as_ref().unwrap().images.is_none());
    }

    #[test]
    fn watch_retries_start_fast_double_and_cap() {
        use kube::runtime::utils::Backoff;
        let mut b = Doubling::default();
        let first: Vec<Duration> = (&mut b).take(9).collect();
        assert_eq!(first[0], WATCH_RETRY_MIN);
        assert_eq!(first[1], WATCH_RETRY_MIN * 2);
        assert_eq!(*first.last().unwrap(), WATCH_RETRY_MAX);
        b.reset();
        assert_eq!(b.next(), Some(WATCH_RETRY_MIN));
    }
}
