//! The pods the benchmark plays kubelet for, and the expected `selectedPods` of every gateway
//! (kept by the oracle as pods come and go).

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::world::{Labels, Oracle};

/// Pod IPs of node `n`: 198.19.n.(FIRST_SLOT + slot).
pub const FIRST_SLOT: u8 = 20;
pub const SLOTS: usize = 230;

#[derive(Clone, Debug)]
pub struct PodRec {
    pub ns: String,
    pub name: String,
    pub node: usize,
    pub slot: u8,
    pub labels: Labels,
    pub churnable: bool,
}

impl PodRec {
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.node as u8, FIRST_SLOT + self.slot)
    }
}

/// Node names and InternalIPs by index (from 1).
#[derive(Clone, Debug)]
pub struct NodeDir {
    pub names: Vec<String>,
    pub ips: Vec<Ipv4Addr>,
}

impl NodeDir {
    pub fn name(&self, n: usize) -> &str {
        &self.names[n - 1]
    }
    pub fn ip(&self, n: usize) -> Ipv4Addr {
        self.ips[n - 1]
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// Live pods, free IP slots (reused oldest-first, so an IP is never reused at once), and the
/// expected selection count of every gateway.
pub struct Book {
    pub oracle: Oracle,
    pub live: Vec<PodRec>,
    free: Vec<VecDeque<u8>>,
    pub expected: Vec<i64>,
    counter: u64,
    rng: u64,
}

pub type SharedBook = Arc<Mutex<Book>>;

impl Book {
    pub fn new(oracle: Oracle, nodes: usize) -> Self {
        let n = oracle.gateways().len();
        Self {
            oracle,
            live: Vec::new(),
            free: (0..nodes).map(|_| (0..SLOTS as u8).collect()).collect(),
            expected: vec![0; n],
            counter: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// xorshift: deterministic runs.
    pub fn rand(&mut self, n: usize) -> usize {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x % n as u64) as usize
    }

    /// Reserve a new pod (name and IP slot) on `node`.
    pub fn reserve(
        &mut self,
        ns: &str,
        labels: Labels,
        node: usize,
        prefix: &str,
        churnable: bool,
    ) -> Option<PodRec> {
        let slot = self.free[node - 1].pop_front()?;
        self.counter += 1;
        Some(PodRec {
            ns: ns.into(),
            name: format!("{prefix}-{}", self.counter),
            node,
            slot,
            labels,
            churnable,
        })
    }

    /// The pod is Running with its IP: the gateways selecting it count it.
    pub fn added(&mut self, p: PodRec) -> Vec<usize> {
        let g = self.oracle.selecting(&p.ns, &p.labels);
        for i in &g {
            self.expected[*i] += 1;
        }
        self.live.push(p);
        g
    }

    /// Take a random churnable pod out of the live set (before deleting it).
    pub fn take_churnable(&mut self) -> Option<PodRec> {
        for _ in 0..64 {
            if self.live.is_empty() {
                return None;
            }
            let i = self.rand(self.live.len());
            if self.live[i].churnable {
                return Some(self.live.swap_remove(i));
            }
        }
        None
    }

    /// The pod is gone.
    pub fn removed(&mut self, p: &PodRec) -> Vec<usize> {
        let g = self.oracle.selecting(&p.ns, &p.labels);
        for i in &g {
            self.expected[*i] -= 1;
        }
        self.free[p.node - 1].push_back(p.slot);
        g
    }

    /// Give a failed reservation's slot back.
    pub fn release(&mut self, p: &PodRec) {
        self.free[p.node - 1].push_back(p.slot);
    }

    pub fn remove_live(&mut self, name: &str) -> Option<PodRec> {
        let i = self.live.iter().position(|p| p.name == name)?;
        Some(self.live.swap_remove(i))
    }
}

/// Create the pod bound to its node, then write IP, host IP and Running through the status
/// subresource (two requests, as scheduler+kubelet would cause).
pub async fn create(client: &Client, nodes: &NodeDir, p: &PodRec) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &p.ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": p.name, "namespace": p.ns, "labels": p.labels },
        "spec": {
            "nodeName": nodes.name(p.node),
            "terminationGracePeriodSeconds": 0,
            "containers": [{ "name": "app", "image": egressgw_tests::control_plane::PAUSE_IMAGE }],
        }
    }))?;
    api.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {}/{}", p.ns, p.name))?;
    let ip = p.ip().to_string();
    let host = nodes.ip(p.node).to_string();
    let status = json!({ "status": {
        "phase": "Running",
        "podIP": ip, "podIPs": [{ "ip": ip }],
        "hostIP": host, "hostIPs": [{ "ip": host }],
        "conditions": [{ "type": "Ready", "status": "True" }],
    }});
    api.patch_status(&p.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("setting the IP of pod {}/{}", p.ns, p.name))?;
    Ok(())
}

/// Delete with grace period 0 (no kubelet confirms); the pod is gone when this returns.
pub async fn delete(client: &Client, p: &PodRec) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &p.ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    match api.delete(&p.name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting pod {}/{}", p.ns, p.name)),
    }
}
