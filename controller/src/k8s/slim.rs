//! Pods decoded straight into the few fields the planner reads.
//!
//! A watch of 10,000 pods decoded as `k8s_openapi` Pods builds every container, volume,
//! condition and managed-field entry of every pod before anything can be thrown away; at
//! scale that decoding dominated both the agents' CPU and their peak memory. [`SlimPod`]
//! names only what [`crate::index::Pod`] needs, and serde skips the rest of each object
//! without allocating.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::ObjectMeta;
use serde::{Deserialize, Deserializer};

use crate::index::{Pod, PodKey, intern};

/// A Pod as a watch delivers it, cut down while it is decoded.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimPod {
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SlimPodSpec,
    #[serde(default)]
    pub status: SlimPodStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    pub node_name: Option<String>,
    pub host_network: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodStatus {
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<SlimPodIp>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimPodIp {
    pub ip: String,
}

/// The metadata fields the stores and the planner use; `managedFields`, annotations and
/// owner references are skipped while decoding.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        ..Default::default()
    })
}

impl Resource for SlimPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl SlimPod {
    /// The pod as the planner sees it (same rules as [`Pod::from_kube`]).
    pub fn to_index(&self) -> Option<Pod> {
        let meta = &self.metadata;
        let key = PodKey::new(meta.namespace.as_deref()?, meta.name.as_deref()?);
        let mut ips: Vec<_> = self
            .status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = self.status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        Some(Pod {
            key,
            labels: meta.labels.iter().flatten().collect(),
            node: self.spec.node_name.as_deref().map(intern),
            ips,
            running: crate::index::pod::network_alive(self.status.phase.as_deref()),
            host_network: self.spec.host_network.unwrap_or(false),
            terminating: meta.deletion_timestamp.is_some(),
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
        })
    }

    /// The object's resourceVersion as a number, when it is one (etcd's revision, on every
    /// apiserver backed by etcd): orders two events about one pod from different watches.
    pub fn revision(&self) -> Option<u64> {
        self.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod as KubePod;

    fn full_pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "p", "namespace": "n", "uid": "u1", "resourceVersion": "42",
                "labels": { "app": "a" }, "annotations": { "big": "x" },
                "managedFields": [{ "manager": "m", "fieldsV1": { "f:spec": {} } }],
                "ownerReferences": [{ "apiVersion": "v1", "kind": "ReplicaSet", "name": "r", "uid": "u" }] },
            "spec": { "nodeName": "node-1", "hostNetwork": false,
                "containers": [{ "name": "c", "image": "i", "ports": [{ "containerPort": 80 }] }] },
            "status": { "phase": "Running", "podIP": "198.19.1.10", "podIPs": [{ "ip": "198.19.1.10" }],
                "conditions": [{ "type": "Ready", "status": "True" }] }
        })
    }

    #[test]
    fn a_slim_pod_indexes_like_the_full_pod() {
        let slim: SlimPod = serde_json::from_value(full_pod()).unwrap();
        let full: KubePod = serde_json::from_value(full_pod()).unwrap();
        assert_eq!(slim.to_index(), Pod::from_kube(&full));
        assert_eq!(slim.revision(), Some(42));
        assert!(slim.metadata.managed_fields.is_none() && slim.metadata.annotations.is_none());
    }

    #[test]
    fn a_terminating_or_pending_pod_keeps_its_network_until_its_phase_ends() {
        let index = |v: serde_json::Value| {
            let slim: SlimPod = serde_json::from_value(v.clone()).unwrap();
            let full: KubePod = serde_json::from_value(v).unwrap();
            assert_eq!(slim.to_index(), Pod::from_kube(&full));
            slim.to_index().unwrap()
        };
        let mut v = full_pod();
        v["metadata"]["deletionTimestamp"] = "2026-11-28T20:00:00Z".into();
        assert!(index(v).is_routable(), "terminating: still selected");
        let mut v = full_pod();
        v["status"]["phase"] = "Pending".into();
        assert!(
            index(v).is_routable(),
            "init containers run with the pod's IP"
        );
        let mut v = full_pod();
        v["status"] = serde_json::json!({ "phase": "Pending" });
        assert!(!index(v).is_routable(), "no IP yet");
        for done in ["Succeeded", "Failed", "Unknown"] {
            let mut v = full_pod();
            v["status"]["phase"] = done.into();
            assert!(!index(v).is_routable(), "{done}");
        }
    }

    #[test]
    fn pod_ip_is_the_fallback_for_pod_ips() {
        let mut v = full_pod();
        v["status"] = serde_json::json!({ "phase": "Running", "podIP": "198.19.1.11" });
        let slim: SlimPod = serde_json::from_value(v).unwrap();
        assert_eq!(
            slim.to_index().unwrap().ips,
            vec!["198.19.1.11".parse::<std::net::IpAddr>().unwrap()]
        );
    }
}
