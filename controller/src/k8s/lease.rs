//! The agent Lease: heartbeat, epoch and the agent's reports (interfaces, programmed
//! digests, what the kernel holds), encoded in annotations so the controller needs nothing
//! but the Lease watch.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use k8s_openapi::api::coordination::v1::Lease;

use std::time::Duration;

use super::names::{
    AGENT_LEASE_PREFIX, ANNOTATION_CADENCE, ANNOTATION_HANDOVER, ANNOTATION_INTERFACES,
    ANNOTATION_KERNEL, ANNOTATION_PROGRAMMED, ANNOTATION_RENEW_INTERVAL, CADENCE_IDLE,
    LABEL_AGENT_NODE,
};
use crate::dataplane::truth::KernelReport;
use crate::index::NodeInterface;

/// What an agent says about its node through its Lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    pub node: String,
    /// `spec.leaseTransitions`: the agent's epoch.
    pub epoch: i64,
    pub interfaces: Vec<NodeInterface>,
    /// Gateway name to the digest of what the agent committed for it.
    pub programmed: BTreeMap<String, u64>,
    /// What the node's kernel holds, read back (`None`: not reported yet, or an older agent).
    pub kernel: Option<KernelReport>,
    /// The Lease's resourceVersion: any change is a heartbeat.
    pub version: String,
    /// The agent renews at the idle cadence: its node may host nothing.
    pub idle: bool,
    /// The longest the agent says it waits between renewals.
    pub renew_interval: Option<Duration>,
    /// The agent is stopping and hands over to its successor within this window.
    pub handover: Option<Duration>,
}

/// An idle agent is judged dead after this many renewal intervals without a change.
pub const IDLE_MISSED_RENEWALS: u32 = 3;

impl AgentReport {
    /// How long after its last observed change the agent counts as dead: the takeover for an
    /// agent at the hosting cadence, several of its intervals for an idle one.
    pub fn deadline(&self, takeover: Duration) -> Duration {
        let base = match (self.idle, self.renew_interval) {
            (true, Some(i)) => takeover.max(i * IDLE_MISSED_RENEWALS),
            _ => takeover,
        };
        // A stopping agent's addresses live for the handover window: wait that much longer.
        base + self.handover.unwrap_or_default()
    }
}

/// `eth1=198.18.0.12/24,eth0=…` (sorted, so an unchanged report is an unchanged string).
pub fn encode_interfaces(interfaces: &[NodeInterface]) -> String {
    let mut v: Vec<String> = interfaces
        .iter()
        .map(|i| format!("{}={}", i.name, i.network))
        .collect();
    v.sort();
    v.join(",")
}

/// The inverse of [`encode_interfaces`]; malformed entries are skipped.
pub fn decode_interfaces(s: &str) -> Vec<NodeInterface> {
    s.split(',')
        .filter_map(|e| {
            let (name, net) = e.split_once('=')?;
            Some(NodeInterface {
                name: name.to_string(),
                network: net.parse::<IpNetwork>().ok()?,
            })
        })
        .collect()
}

/// The kernel report as the annotation carries it (compact JSON, stable for a stable kernel).
pub fn encode_kernel(k: &KernelReport) -> String {
    serde_json::to_string(k).unwrap_or_default()
}

/// The inverse of [`encode_kernel`]; `None` when malformed.
pub fn decode_kernel(s: &str) -> Option<KernelReport> {
    serde_json::from_str(s).ok()
}

/// `gateway=hex,…` sorted by gateway.
pub fn encode_programmed(p: &BTreeMap<String, u64>) -> String {
    p.iter()
        .map(|(g, d)| format!("{g}={d:016x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The inverse of [`encode_programmed`]; malformed entries are skipped.
pub fn decode_programmed(s: &str) -> BTreeMap<String, u64> {
    s.split(',')
        .filter_map(|e| {
            let (g, d) = e.split_once('=')?;
            Some((g.to_string(), u64::from_str_radix(d, 16).ok()?))
        })
        .collect()
}

impl AgentReport {
    /// Read an agent Lease; `None` when it is not one. The node is the one the Lease's
    /// *name* says (`egressgw-agent-<node>`: the name is what RBAC and admission can tie to
    /// the writer), and the node label, which the watch selects by, must say the same: a
    /// Lease whose label claims another node's identity is ignored.
    pub fn from_lease(lease: &Lease) -> Option<Self> {
        let node = lease
            .metadata
            .name
            .as_deref()?
            .strip_prefix(AGENT_LEASE_PREFIX)?
            .to_string();
        if lease.metadata.labels.as_ref()?.get(LABEL_AGENT_NODE) != Some(&node) {
            return None;
        }
        let ann = lease.metadata.annotations.clone().unwrap_or_default();
        Some(Self {
            node,
            epoch: lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_transitions)
                .map(i64::from)
                .unwrap_or(0),
            interfaces: ann
                .get(ANNOTATION_INTERFACES)
                .map(|s| decode_interfaces(s))
                .unwrap_or_default(),
            programmed: ann
                .get(ANNOTATION_PROGRAMMED)
                .map(|s| decode_programmed(s))
                .unwrap_or_default(),
            kernel: ann.get(ANNOTATION_KERNEL).and_then(|s| decode_kernel(s)),
            version: lease.metadata.resource_version.clone().unwrap_or_default(),
            idle: ann
                .get(ANNOTATION_CADENCE)
                .is_some_and(|c| c == CADENCE_IDLE),
            renew_interval: ann
                .get(ANNOTATION_RENEW_INTERVAL)
                .and_then(|s| s.parse().ok())
                .map(Duration::from_millis),
            handover: ann
                .get(ANNOTATION_HANDOVER)
                .and_then(|s| s.parse().ok())
                .map(Duration::from_millis),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_round_trip() {
        let ifs = vec![
            NodeInterface {
                name: "eth1".into(),
                network: "198.18.0.12/24".parse().unwrap(),
            },
            NodeInterface {
                name: "eth0".into(),
                network: "198.51.100.12/24".parse().unwrap(),
            },
        ];
        let s = encode_interfaces(&ifs);
        assert_eq!(s, "eth0=198.51.100.12/24,eth1=198.18.0.12/24");
        let mut back = decode_interfaces(&s);
        back.sort();
        let mut want = ifs.clone();
        want.sort();
        assert_eq!(back, want);
        let p: BTreeMap<String, u64> = [
            ("billing".to_string(), 0xabcdu64),
            ("pay".to_string(), u64::MAX),
        ]
        .into();
        assert_eq!(decode_programmed(&encode_programmed(&p)), p);
        assert!(decode_programmed("garbage,x=zz").is_empty());
        let k = KernelReport {
            digest: "00000000deadbeef".into(),
            elements: 42,
            addresses: ["198.18.0.200".parse().unwrap()].into(),
            ..KernelReport::default()
        };
        let s = encode_kernel(&k);
        assert_eq!(
            s,
            r#"{"digest":"00000000deadbeef","elements":42,"addresses":["198.18.0.200"]}"#
        );
        assert_eq!(decode_kernel(&s), Some(k));
        assert_eq!(decode_kernel("not json"), None);
    }

    #[test]
    fn an_idle_agent_gets_several_intervals_a_hosting_one_the_takeover() {
        let takeover = Duration::from_millis(1600);
        let lease = |ann: serde_json::Value| -> Lease {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "egressgw-agent-n", "labels": { LABEL_AGENT_NODE: "n" }, "annotations": ann },
                "spec": { "leaseTransitions": 2 }
            }))
            .unwrap()
        };
        let hosting = AgentReport::from_lease(&lease(
            serde_json::json!({ ANNOTATION_RENEW_INTERVAL: "500" }),
        ))
        .unwrap();
        assert!(!hosting.idle);
        assert_eq!(hosting.deadline(takeover), takeover);
        let idle = AgentReport::from_lease(&lease(
            serde_json::json!({ ANNOTATION_CADENCE: "idle", ANNOTATION_RENEW_INTERVAL: "5000" }),
        ))
        .unwrap();
        assert!(idle.idle && idle.epoch == 2);
        assert_eq!(idle.deadline(takeover), Duration::from_secs(15));
        let old = AgentReport::from_lease(&lease(serde_json::json!({}))).unwrap();
        assert_eq!(
            old.deadline(takeover),
            takeover,
            "an agent that says nothing is held to the takeover"
        );
    }

    #[test]
    fn the_node_is_the_one_the_lease_name_says_and_the_label_must_agree() {
        let lease = |name: &str, label: &str| -> Lease {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": name, "labels": { LABEL_AGENT_NODE: label } },
                "spec": { "leaseTransitions": 1 }
            }))
            .unwrap()
        };
        assert_eq!(
            AgentReport::from_lease(&lease("egressgw-agent-node-2", "node-2"))
                .unwrap()
                .node,
            "node-2"
        );
        assert!(
            AgentReport::from_lease(&lease("egressgw-agent-node-2", "node-3")).is_none(),
            "a label claiming another node's identity is ignored"
        );
        assert!(AgentReport::from_lease(&lease("egressgw-controller", "node-3")).is_none());
    }
}
