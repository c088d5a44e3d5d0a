//! Pods as the planner sees them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod as KubePod;

/// A pod's identity: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod cut down to what selection and planning need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub key: PodKey,
    pub labels: BTreeMap<String, String>,
    /// The node it runs on (`spec.nodeName`), once scheduled.
    pub node: Option<String>,
    /// `status.podIPs` (IPv4 only is programmed today; the rest is kept for later).
    pub ips: Vec<IpAddr>,
    /// Phase is Running and the pod is not being deleted.
    pub running: bool,
    /// Host-network pods share the node's address and are never given an egress IP.
    pub host_network: bool,
}

impl Pod {
    /// Whether the pod can carry egress traffic at all: running, on a node, with an IP, not
    /// on the host network.
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
        let key = PodKey::new(meta.namespace.clone()?, meta.name.clone()?);
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().filter_map(|p| p.ip.parse().ok()).collect())
            .unwrap_or_default();
        if ips.is_empty() {
            if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok()) {
                ips.push(ip);
            }
        }
        let phase_running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        Some(Self {
            key,
            labels: meta.labels.clone().unwrap_or_default(),
            node: spec.and_then(|s| s.node_name.clone()),
            ips,
            running: phase_running && meta.deletion_timestamp.is_none(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        })
    }
}
