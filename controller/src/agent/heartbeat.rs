//! The agent's Lease: renewed every `renew_interval` with a compare-and-swap, carrying the
//! epoch and the agent's reports (interfaces, programmed digests, what the kernel holds).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use thiserror::Error;

use crate::dataplane::truth::KernelReport;
use crate::index::NodeInterface;
use crate::k8s::lease::{encode_interfaces, encode_kernel, encode_programmed};
use crate::k8s::names::{
    ANNOTATION_CADENCE, ANNOTATION_HANDOVER, ANNOTATION_INTERFACES, ANNOTATION_KERNEL,
    ANNOTATION_PROGRAMMED, ANNOTATION_RENEW_INTERVAL, CADENCE_IDLE, LABEL_AGENT_NODE, agent_lease,
};

#[derive(Debug, Error)]
pub enum HeartbeatError {
    #[error("agent lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("agent lease {name} was changed by someone else; re-read it")]
    Conflict { name: String },
    #[error("agent lease {name}: no answer within {timeout:?}")]
    Timeout {
        name: String,
        timeout: std::time::Duration,
    },
}

/// What the agent reports in its Lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub interfaces: Vec<NodeInterface>,
    pub programmed: BTreeMap<String, u64>,
    /// What the kernel holds, read back (after the first apply).
    pub kernel: Option<KernelReport>,
    /// Renewing at the idle cadence (the node may host nothing).
    pub idle: bool,
    /// The longest wait until the next renewal.
    pub renew_interval: Duration,
    /// The agent is stopping: its successor takes over within this window.
    pub handover: Option<Duration>,
}

/// The agent's view of its own Lease.
pub struct Heartbeat {
    api: Api<Lease>,
    node: String,
    namespace: String,
    name: String,
    /// The last Lease we read or wrote (its resourceVersion is the CAS token).
    current: Option<Lease>,
    /// The epoch we renew under.
    pub epoch: i32,
    lease_seconds: i32,
}

impl Heartbeat {
    /// Read the Lease and decide the epoch: keep it when our last renewal (our own wall
    /// clock wrote it) is younger than `fence_after` — or than the handover window our
    /// predecessor on this node announced when it stopped — and bump it otherwise: an agent
    /// that was away longer must not trust assignments from before.
    pub async fn start(
        client: Client,
        namespace: &str,
        node: &str,
        fence_after: Duration,
        takeover: Duration,
    ) -> Result<Self, HeartbeatError> {
        let name = agent_lease(node);
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let current = api
            .get_opt(&name)
            .await
            .map_err(|source| HeartbeatError::Api {
                namespace: namespace.into(),
                name: name.clone(),
                source,
            })?;
        let epoch = match current.as_ref().and_then(|l| l.spec.as_ref()) {
            None => 0,
            Some(spec) => {
                let last = spec.lease_transitions.unwrap_or(0);
                let handover = current
                    .as_ref()
                    .and_then(|l| l.metadata.annotations.as_ref())
                    .and_then(|a| a.get(ANNOTATION_HANDOVER))
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(Duration::from_millis)
                    .unwrap_or_default();
                let recent = spec.renew_time.as_ref().is_some_and(|t| {
                    let age = Timestamp::now().duration_since(t.0);
                    age.is_positive() && age.unsigned_abs() < fence_after.max(handover)
                });
                if recent { last } else { last + 1 }
            }
        };
        Ok(Self {
            api,
            node: node.to_string(),
            namespace: namespace.to_string(),
            name,
            current,
            epoch,
            lease_seconds: takeover.as_secs_f64().ceil() as i32,
        })
    }

    /// The node this heartbeat is for.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn desired(&self, report: &Report) -> Lease {
        let mut meta = self
            .current
            .as_ref()
            .map(|l| l.metadata.clone())
            .unwrap_or_else(|| ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            });
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_AGENT_NODE.into(), self.node.clone());
        let ann = meta.annotations.get_or_insert_with(Default::default);
        ann.insert(
            ANNOTATION_INTERFACES.into(),
            encode_interfaces(&report.interfaces),
        );
        ann.insert(
            ANNOTATION_PROGRAMMED.into(),
            encode_programmed(&report.programmed),
        );
        match &report.kernel {
            Some(k) => {
                ann.insert(ANNOTATION_KERNEL.into(), encode_kernel(k));
            }
            None => {
                ann.remove(ANNOTATION_KERNEL);
            }
        }
        ann.insert(
            ANNOTATION_RENEW_INTERVAL.into(),
            report.renew_interval.as_millis().to_string(),
        );
        if report.idle {
            ann.insert(ANNOTATION_CADENCE.into(), CADENCE_IDLE.into());
        } else {
            ann.remove(ANNOTATION_CADENCE);
        }
        match report.handover {
            Some(w) => {
                ann.insert(ANNOTATION_HANDOVER.into(), w.as_millis().to_string());
            }
            None => {
                ann.remove(ANNOTATION_HANDOVER);
            }
        }
        Lease {
            metadata: meta,
            spec: Some(LeaseSpec {
                holder_identity: Some(self.node.clone()),
                lease_duration_seconds: Some(self.lease_seconds),
                renew_time: Some(MicroTime(Timestamp::now())),
                lease_transitions: Some(self.epoch),
                ..self
                    .current
                    .as_ref()
                    .and_then(|l| l.spec.clone())
                    .unwrap_or_default()
            }),
        }
    }

    /// One renewal. Returns when it was sent (the fencing clock counts from there).
    pub async fn renew(&mut self, report: &Report) -> Result<Instant, HeartbeatError> {
        let lease = self.desired(report);
        let sent = Instant::now();
        let err = |source| HeartbeatError::Api {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        };
        let written = if self.current.is_some() {
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(l) => l,
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                    // Someone else wrote it (or deleted it): re-read, renew next round.
                    self.current = self.api.get_opt(&self.name).await.map_err(err)?;
                    return Err(HeartbeatError::Conflict {
                        name: self.name.clone(),
                    });
                }
                Err(e) => return Err(err(e)),
            }
        } else {
            self.api
                .create(&PostParams::default(), &lease)
                .await
                .map_err(err)?
        };
        self.current = Some(written);
        Ok(sent)
    }
}
