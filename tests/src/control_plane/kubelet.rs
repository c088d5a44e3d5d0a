//! The harness plays kubelet and CNI: Namespaces, Nodes with an InternalIP and a Ready
//! condition, and Pods bound to a node that get their IP and Running phase through the status
//! subresource, as a kubelet writes them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use super::ControlPlane;
use super::error::{ControlPlaneError, Result};

/// Image of every test pod. Never pulled: no kubelet runs.
pub const PAUSE_IMAGE: &str = "registry.invalid/egressgw/pause:test";
/// Name of the single container of a test pod.
const CONTAINER: &str = "app";
/// Name of the init container of a pod made by [`ControlPlane::create_pod_with_init_container`].
pub const INIT_CONTAINER: &str = "migrate";
/// Field manager of the harness's status writes.
const KUBELET_MANAGER: &str = "egressgw-test-kubelet";
/// How long a deleted pod may take to disappear.
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
const DELETE_POLL: Duration = Duration::from_millis(20);

fn label_map(labels: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn ready_condition(ready: bool) -> serde_json::Value {
    let (status, reason, message) = if ready {
        ("True", "KubeletReady", "kubelet is posting ready status")
    } else {
        ("False", "KubeletNotReady", "container runtime is down")
    };
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now(),
        "lastTransitionTime": now(),
    })
}

impl ControlPlane {
    /// Creates a namespace with `labels`.
    pub async fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<Namespace> {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: label_map(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(ControlPlaneError::api(format!("creating namespace {name}")))
    }

    /// Creates a node with `labels`, then gives it the status a kubelet posts: the
    /// `InternalIP` and `Hostname` addresses and a `Ready` condition.
    pub async fn create_node(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        internal_ip: IpAddr,
        ready: bool,
    ) -> Result<Node> {
        let api = Api::<Node>::all(self.client());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: label_map(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &node)
            .await
            .map_err(ControlPlaneError::api(format!("creating node {name}")))?;
        let status = json!({
            "status": {
                "addresses": [
                    { "type": "InternalIP", "address": internal_ip.to_string() },
                    { "type": "Hostname", "address": name },
                ],
                "conditions": [ready_condition(ready)],
            }
        });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(ControlPlaneError::api(format!(
                "writing the status of node {name}"
            )))
    }

    /// Gives the node its pod range (`spec.podCIDR` and `spec.podCIDRs`), as the node IPAM
    /// controller does.
    pub async fn set_node_pod_cidr(&self, name: &str, cidr: &str) -> Result<Node> {
        let spec = json!({ "spec": { "podCIDR": cidr, "podCIDRs": [cidr] } });
        Api::<Node>::all(self.client())
            .patch(name, &PatchParams::default(), &Patch::Merge(&spec))
            .await
            .map_err(ControlPlaneError::api(format!(
                "setting the pod range {cidr} of node {name}"
            )))
    }

    /// Sets the node's `Ready` condition (other conditions untouched), as a kubelet going
    /// healthy or unhealthy would.
    pub async fn set_node_ready(&self, name: &str, ready: bool) -> Result<Node> {
        let status = json!({ "status": { "conditions": [ready_condition(ready)] } });
        Api::<Node>::all(self.client())
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
            .await
            .map_err(ControlPlaneError::api(format!(
                "setting Ready={ready} on node {name}"
            )))
    }

    /// Creates a pod with `labels` already bound to `node` (`spec.nodeName`), Pending, no IP.
    pub async fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        node: &str,
    ) -> Result<Pod> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": namespace, "labels": label_map(labels) },
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 0,
                "containers": [{ "name": CONTAINER, "image": PAUSE_IMAGE }],
            }
        }))
        .map_err(|e| ControlPlaneError::Io {
            what: format!("building pod {namespace}/{name}"),
            source: std::io::Error::other(e),
        })?;
        Api::<Pod>::namespaced(self.client(), namespace)
            .create(&PostParams::default(), &pod)
            .await
            .map_err(ControlPlaneError::api(format!(
                "creating pod {namespace}/{name} on {node}"
            )))
    }

    /// Gives the pod its IP and the Running phase through the status subresource, as kubelet
    /// and CNI do: `podIP(s)`, `hostIP(s)` (the node's InternalIP), Ready conditions and a
    /// running container.
    pub async fn set_pod_ip(&self, namespace: &str, name: &str, ip: IpAddr) -> Result<Pod> {
        let api = Api::<Pod>::namespaced(self.client(), namespace);
        let pod = api.get(name).await.map_err(ControlPlaneError::api(format!(
            "reading pod {namespace}/{name}"
        )))?;
        let host_ip = match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(node) => self.internal_ip(&node).await?,
            None => None,
        };
        let started = now();
        let conditions: Vec<_> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
            .into_iter()
            .map(|t| json!({ "type": t, "status": "True", "lastTransitionTime": started }))
            .collect();
        let mut status = json!({
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{ "ip": ip.to_string() }],
            "startTime": started,
            "conditions": conditions,
            "containerStatuses": [{
                "name": CONTAINER,
                "image": PAUSE_IMAGE,
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": { "running": { "startedAt": started } },
            }],
        });
        if let Some(host_ip) = host_ip {
            status["hostIP"] = json!(host_ip);
            status["hostIPs"] = json!([{ "ip": host_ip }]);
        }
        api.patch_status(
            name,
            &PatchParams::apply(KUBELET_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "status": status,
            })),
        )
        .await
        .map_err(ControlPlaneError::api(format!(
            "setting IP {ip} on pod {namespace}/{name}"
        )))
    }

    /// Sets only the pod's phase (`Pending`, `Running`, `Succeeded`, `Failed`), e.g. to model a
    /// pod that finished.
    pub async fn set_pod_phase(&self, namespace: &str, name: &str, phase: &str) -> Result<Pod> {
        let status = json!({ "status": { "phase": phase } });
        Api::<Pod>::namespaced(self.client(), namespace)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(ControlPlaneError::api(format!(
                "setting phase {phase} on pod {namespace}/{name}"
            )))
    }

    /// Creates a pod like [`ControlPlane::create_pod`] whose spec also has an init container
    /// ([`INIT_CONTAINER`]), e.g. one that runs migrations against a legacy database before
    /// the app starts.
    pub async fn create_pod_with_init_container(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        node: &str,
    ) -> Result<Pod> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": namespace, "labels": label_map(labels) },
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 0,
                "initContainers": [{ "name": INIT_CONTAINER, "image": PAUSE_IMAGE }],
                "containers": [{ "name": CONTAINER, "image": PAUSE_IMAGE }],
            }
        }))
        .map_err(|e| ControlPlaneError::Io {
            what: format!("building pod {namespace}/{name}"),
            source: std::io::Error::other(e),
        })?;
        Api::<Pod>::namespaced(self.client(), namespace)
            .create(&PostParams::default(), &pod)
            .await
            .map_err(ControlPlaneError::api(format!(
                "creating pod {namespace}/{name} on {node}"
            )))
    }

    /// Gives a pod made by [`ControlPlane::create_pod_with_init_container`] the status a
    /// kubelet writes while its init container runs: phase `Pending`, but the sandbox and so
    /// `podIP(s)` and `hostIP(s)` already exist; `Initialized` is False, the init container
    /// runs, the app container waits (`PodInitializing`). [`ControlPlane::set_pod_ip`] later
    /// makes it Running (same field manager, so the init-phase fields go).
    pub async fn set_pod_initializing(
        &self,
        namespace: &str,
        name: &str,
        ip: IpAddr,
    ) -> Result<Pod> {
        let api = Api::<Pod>::namespaced(self.client(), namespace);
        let pod = api.get(name).await.map_err(ControlPlaneError::api(format!(
            "reading pod {namespace}/{name}"
        )))?;
        let host_ip = match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(node) => self.internal_ip(&node).await?,
            None => None,
        };
        let started = now();
        let condition = |t: &str, ok: bool| {
            let mut c = json!({
                "type": t,
                "status": if ok { "True" } else { "False" },
                "lastTransitionTime": started,
            });
            if !ok {
                c["reason"] = json!(if t == "Initialized" {
                    "ContainersNotInitialized"
                } else {
                    "ContainersNotReady"
                });
            }
            c
        };
        let mut status = json!({
            "phase": "Pending",
            "podIP": ip.to_string(),
            "podIPs": [{ "ip": ip.to_string() }],
            "startTime": started,
            "conditions": [
                condition("PodScheduled", true),
                condition("Initialized", false),
                condition("ContainersReady", false),
                condition("Ready", false),
            ],
            "initContainerStatuses": [{
                "name": INIT_CONTAINER,
                "image": PAUSE_IMAGE,
                "imageID": "",
                "ready": false,
                "started": true,
                "restartCount": 0,
                "state": { "running": { "startedAt": started } },
            }],
            "containerStatuses": [{
                "name": CONTAINER,
                "image": PAUSE_IMAGE,
                "imageID": "",
                "ready": false,
                "started": false,
                "restartCount": 0,
                "state": { "waiting": { "reason": "PodInitializing" } },
            }],
        });
        if let Some(host_ip) = host_ip {
            status["hostIP"] = json!(host_ip);
            status["hostIPs"] = json!([{ "ip": host_ip }]);
        }
        api.patch_status(
            name,
            &PatchParams::apply(KUBELET_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "status": status,
            })),
        )
        .await
        .map_err(ControlPlaneError::api(format!(
            "setting IP {ip} on initializing pod {namespace}/{name}"
        )))
    }

    /// Deletes the pod with a grace period of `grace_seconds`, as `kubectl delete` or a
    /// rollout does, and returns it as the apiserver left it: with a `deletionTimestamp`,
    /// still there. No kubelet confirms, so it stays until [`ControlPlane::delete_pod`]
    /// (grace period 0) removes it.
    pub async fn delete_pod_gracefully(
        &self,
        namespace: &str,
        name: &str,
        grace_seconds: u32,
    ) -> Result<Pod> {
        let api = Api::<Pod>::namespaced(self.client(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(grace_seconds),
            ..DeleteParams::default()
        };
        let what = format!("deleting pod {namespace}/{name} with grace period {grace_seconds} s");
        api.delete(name, &params)
            .await
            .map_err(ControlPlaneError::api(what.clone()))?
            .left()
            .ok_or_else(|| ControlPlaneError::Io {
                what,
                source: std::io::Error::other(
                    "the apiserver deleted the pod at once instead of marking it terminating",
                ),
            })
    }

    /// Deletes the pod with grace period 0 (no kubelet will confirm) and waits until it is gone.
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let api = Api::<Pod>::namespaced(self.client(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        api.delete(name, &params)
            .await
            .map_err(ControlPlaneError::api(format!(
                "deleting pod {namespace}/{name}"
            )))?;
        let deadline = Instant::now() + DELETE_TIMEOUT;
        loop {
            let still_there = api
                .get_opt(name)
                .await
                .map_err(ControlPlaneError::api(format!(
                    "reading pod {namespace}/{name}"
                )))?;
            if still_there.is_none() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ControlPlaneError::Timeout {
                    what: format!("pod {namespace}/{name} to disappear"),
                    waited: DELETE_TIMEOUT,
                });
            }
            tokio::time::sleep(DELETE_POLL).await;
        }
    }

    /// The node's `InternalIP` address, if it has one.
    async fn internal_ip(&self, node: &str) -> Result<Option<String>> {
        let node = Api::<Node>::all(self.client())
            .get(node)
            .await
            .map_err(ControlPlaneError::api(format!("reading node {node}")))?;
        Ok(node
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address))
    }
}
