//! Reflectors: a watch kept in a local store, waking a [`Notify`] on every change.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::warn;

/// A store kept in sync by a background task; dropping the handle does not stop it, abort it.
pub struct Reflected<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    pub task: JoinHandle<()>,
    synced: Arc<AtomicBool>,
}

impl<K: Resource + 'static> Reflected<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    /// Whether the watch has completed its first list.
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// Watch `api` with `config` into a store; `on_event` sees every object applied (not deletes),
/// and `notify` is woken on every change.
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
    let (store, writer) = reflector::store::<K>();
    let kind = K::kind(&Default::default()).to_string();
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    let synced = Arc::new(AtomicBool::new(false));
    let flag = synced.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on_event(&o),
                Ok(watcher::Event::InitDone) => flag.store(true, Ordering::Release),
                Ok(_) => {}
                Err(e) => warn!(kind = %kind, error = %e, "watch error; retrying with backoff"),
            }
            notify.notify_one();
        }
    });
    Reflected { store, task, synced }
}
