//! Pods as the planner sees them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod as KubePod;
use k8s_openapi::jiff::Timestamp;

use super::intern::{LabelSet, Sym, intern, intern_labels};
use crate::api::LabelLookup;

/// A pod's identity: namespace and name (read as `key.namespace`, `key.name`). One pointer:
/// every clone (selections, memberships, rollouts, stores) shares one allocation, and the
/// namespace is interned.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey(Arc<PodName>);

/// The fields of a [`PodKey`]. Ordered by namespace, then name.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodName {
    pub namespace: Sym,
    pub name: Box<str>,
}

impl PodKey {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        Self(Arc::new(PodName {
            namespace: intern(namespace.as_ref()),
            name: name.as_ref().into(),
        }))
    }
}

impl std::ops::Deref for PodKey {
    type Target = PodName;

    fn deref(&self) -> &PodName {
        &self.0
    }
}

impl std::fmt::Debug for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodKey")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish()
    }
}

/// A pod's labels: sorted by key, interned as a whole (the pods of one workload share one
/// copy), keys and values interned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodLabels(LabelSet);

impl PodLabels {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Set `key` to `value`.
    pub fn insert(&mut self, key: &str, value: &str) {
        match self.position(key) {
            Ok(i) => {
                let mut v = self.0.to_vec();
                v[i].1 = intern(value);
                self.0 = intern_labels(v);
            }
            Err(i) => {
                let mut v = self.0.to_vec();
                v.insert(i, (intern(key), intern(value)));
                self.0 = intern_labels(v);
            }
        }
    }

    /// Remove `key`, returning whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let Ok(i) = self.position(key) else {
            return false;
        };
        let mut v = self.0.to_vec();
        v.remove(i);
        self.0 = intern_labels(v);
        true
    }

    pub fn clear(&mut self) {
        self.0 = LabelSet::default();
    }

    /// As a map (for code that wants owned labels).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }
}

impl LabelLookup for PodLabels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl std::ops::Index<&str> for PodLabels {
    type Output = str;

    fn index(&self, key: &str) -> &str {
        self.get(key).unwrap_or_else(|| panic!("no label {key:?}"))
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for PodLabels {
    /// A later duplicate key wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut v: Vec<(Sym, Sym)> = iter
            .into_iter()
            .map(|(k, v)| (intern(k.as_ref()), intern(v.as_ref())))
            .collect();
        // Stable: equal keys keep their order, then the last one is kept.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Sym, Sym)> = Vec::with_capacity(v.len());
        for kv in v {
            match out.last_mut() {
                Some(last) if last.0 == kv.0 => *last = kv,
                _ => out.push(kv),
            }
        }
        Self(intern_labels(out))
    }
}

impl From<BTreeMap<String, String>> for PodLabels {
    fn from(m: BTreeMap<String, String>) -> Self {
        m.iter().collect()
    }
}

impl From<&BTreeMap<String, String>> for PodLabels {
    fn from(m: &BTreeMap<String, String>) -> Self {
        m.iter().collect()
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether a pod in `phase` has a live network: Pending (with an IP, init containers run) or
/// Running, deletion timestamp or not. Succeeded, Failed and Unknown (the node is gone) do not.
pub fn network_alive(phase: Option<&str>) -> bool {
    matches!(phase, Some("Pending" | "Running"))
}

/// A pod cut down to what selection and planning need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub key: PodKey,
    pub labels: PodLabels,
    /// The node it runs on (`spec.nodeName`), once scheduled (interned).
    pub node: Option<Sym>,
    /// `status.podIPs` (IPv4 only is programmed today; the rest is kept for later).
    pub ips: Vec<IpAddr>,
    /// The pod's network is alive: phase Pending (init containers run with the pod's IP) or
    /// Running, also while it terminates (a graceful deletion keeps its connections until the
    /// object is gone); false once the phase is terminal (Succeeded, Failed) or unknown.
    pub running: bool,
    /// Host-network pods share the node's address and are never given an egress IP.
    pub host_network: bool,
    /// The pod has a `deletionTimestamp`: it is draining. When two pods list one IP, one that
    /// is not terminating owns it.
    pub terminating: bool,
    /// `metadata.creationTimestamp`: of two pods listing one IP, both terminating or both not,
    /// the newer owns it.
    pub created: Option<Timestamp>,
}

impl Pod {
    /// Whether the pod can carry egress traffic at all: alive ([`Pod::running`]), on a node,
    /// with an IP, not on the host network.
    pub fn is_routable(&self) -> bool {
        self.running && !self.host_network && self.node.is_some() && !self.ips.is_empty()
    }

    /// The pod's IPv4 addresses (what the dataplane programs today).
    pub fn ipv4(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ips.iter().copied().filter(IpAddr::is_ipv4)
    }

    /// Cut a Kubernetes Pod down. Unparseable IPs are skipped (the kubelet never writes them).
    pub fn from_kube(pod: &KubePod) -> Option<Self> {
        let meta = &pod.metadata;
        let key = PodKey::new(meta.namespace.as_deref()?, meta.name.as_deref()?);
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().filter_map(|p| p.ip.parse().ok()).collect())
            .unwrap_or_default();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        Some(Self {
            key,
            labels: meta.labels.iter().flatten().collect(),
            node: spec.and_then(|s| s.node_name.as_deref()).map(intern),
            ips,
            running: network_alive(status.and_then(|s| s.phase.as_deref())),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminating: meta.deletion_timestamp.is_some(),
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
        })
    }
}
