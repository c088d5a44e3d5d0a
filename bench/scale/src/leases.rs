//! Simulated agents: the Lease `egressgw-agent-<node>` of each simulated node renewed at the
//! real agents' cadence, with the label and annotations a real agent writes: every 500 ms on
//! a gateway node, every 5 s with `egressgw.io/cadence: idle` on a node that matches no
//! gatewayNodeSelector (as `egressgw agent --idle-renew-ms` does).
//! Renewal is a compare-and-swap `replace`, as `agent::heartbeat` does. A node "fails" when
//! its renewals stop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use egressgw::k8s::names::{
    AGENT_LEASE_NAMESPACE, ANNOTATION_CADENCE, ANNOTATION_INTERFACES, ANNOTATION_RENEW_INTERVAL,
    CADENCE_IDLE, LABEL_AGENT_NODE, agent_lease,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::task::JoinHandle;

pub const RENEW: Duration = Duration::from_millis(500);
/// The agents' default `--idle-renew-ms`.
pub const IDLE_RENEW: Duration = Duration::from_secs(5);

/// A simulated node's agent.
pub struct SimAgent {
    pub node: String,
    /// The interfaces annotation.
    pub interfaces: String,
    /// The node matches no gatewayNodeSelector: idle cadence.
    pub idle: bool,
}

pub struct SimAgents {
    stop: BTreeMap<String, Arc<AtomicBool>>,
    tasks: Vec<JoinHandle<()>>,
    pub renewals: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
}

impl SimAgents {
    /// Start renewing one Lease per simulated agent.
    pub fn start(client: Client, nodes: &[SimAgent]) -> Self {
        let renewals = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut stop = BTreeMap::new();
        let mut tasks = Vec::new();
        for (
            i,
            SimAgent {
                node,
                interfaces: ifaces,
                idle,
            },
        ) in nodes.iter().enumerate()
        {
            let idle = *idle;
            let period = if idle { IDLE_RENEW } else { RENEW };
            let flag = Arc::new(AtomicBool::new(false));
            stop.insert(node.clone(), flag.clone());
            let api: Api<Lease> = Api::namespaced(client.clone(), AGENT_LEASE_NAMESPACE);
            let (node, ifaces) = (node.clone(), ifaces.clone());
            let (r, e) = (renewals.clone(), errors.clone());
            // Spread the renewals over the period, as independent agents would be.
            let offset = period * i as u32 / nodes.len().max(1) as u32;
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let name = agent_lease(&node);
                let mut current: Option<Lease> = None;
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !flag.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut meta =
                        current
                            .as_ref()
                            .map(|l| l.metadata.clone())
                            .unwrap_or_else(|| ObjectMeta {
                                name: Some(name.clone()),
                                namespace: Some(AGENT_LEASE_NAMESPACE.into()),
                                ..Default::default()
                            });
                    meta.labels
                        .get_or_insert_with(Default::default)
                        .insert(LABEL_AGENT_NODE.into(), node.clone());
                    let ann = meta.annotations.get_or_insert_with(Default::default);
                    ann.insert(ANNOTATION_INTERFACES.into(), ifaces.clone());
                    ann.insert(
                        ANNOTATION_RENEW_INTERVAL.into(),
                        period.as_millis().to_string(),
                    );
                    if idle {
                        ann.insert(ANNOTATION_CADENCE.into(), CADENCE_IDLE.into());
                    }
                    let lease = Lease {
                        metadata: meta,
                        spec: Some(LeaseSpec {
                            holder_identity: Some(node.clone()),
                            lease_duration_seconds: Some(2),
                            renew_time: Some(MicroTime(Timestamp::now())),
                            lease_transitions: Some(0),
                            ..Default::default()
                        }),
                    };
                    let res = if current.is_some() {
                        api.replace(&name, &PostParams::default(), &lease).await
                    } else {
                        api.create(&PostParams::default(), &lease).await
                    };
                    match res {
                        Ok(l) => {
                            current = Some(l);
                            r.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            e.fetch_add(1, Ordering::Relaxed);
                            current = api.get_opt(&name).await.ok().flatten();
                        }
                    }
                }
            }));
        }
        Self {
            stop,
            tasks,
            renewals,
            errors,
        }
    }

    /// Stop renewing `node`'s Lease (the node's agent "dies").
    pub fn fail(&self, node: &str) {
        if let Some(f) = self.stop.get(node) {
            f.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for SimAgents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
