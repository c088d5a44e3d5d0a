//! What the API returned, turned into the planner's [`ClusterIndex`] with the same cut-downs
//! the controller uses.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node as KubeNode, Pod as KubePod};
use kube::ResourceExt;

use crate::api::{EgressGateway, EgressGatewayStatus};
use crate::index::{ClusterIndex, Gateway, Node, Pod};
use crate::k8s::lease::AgentReport;

/// The objects `explain` reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub gateways: Vec<EgressGateway>,
    pub nodes: Vec<KubeNode>,
    pub namespaces: Vec<Namespace>,
    pub leases: Vec<Lease>,
    pub pods: Vec<KubePod>,
}

impl Snapshot {
    /// The index, with the agents in `alive` judged alive (the others not).
    pub fn index(&self, alive: &BTreeSet<String>) -> ClusterIndex {
        let reports = reports(&self.leases);
        let mut index = ClusterIndex::default();
        for n in &self.nodes {
            if let Some(mut node) = Node::from_kube(n) {
                if let Some(r) = reports.get(&node.name) {
                    node.agent_alive = alive.contains(&node.name);
                    node.agent_epoch = r.epoch;
                    node.agent_idle = r.idle;
                    node.interfaces = r.interfaces.clone();
                }
                index.nodes.insert(node.name.clone(), node);
            }
        }
        for ns in &self.namespaces {
            index.namespaces.insert(ns.name_any(), ns.labels().clone());
        }
        for p in &self.pods {
            if let Some(pod) = Pod::from_kube(p) {
                index.pods.insert(pod.key.clone(), pod);
            }
        }
        for g in self
            .gateways
            .iter()
            .filter(|g| g.metadata.deletion_timestamp.is_none())
        {
            if let Some(gw) = Gateway::from_kube(g) {
                index.gateways.insert(gw.name.clone(), gw);
            }
        }
        index
    }

    /// Each gateway's status, by name.
    pub fn statuses(&self) -> BTreeMap<String, EgressGatewayStatus> {
        self.gateways
            .iter()
            .filter_map(|g| Some((g.metadata.name.clone()?, g.status.clone()?)))
            .collect()
    }
}

/// Agent reports by node.
pub fn reports(leases: &[Lease]) -> BTreeMap<String, AgentReport> {
    leases
        .iter()
        .filter_map(AgentReport::from_lease)
        .map(|r| (r.node.clone(), r))
        .collect()
}

/// Nodes whose agent Lease changed between two listings: alive by the controller's own rule
/// (a Lease that changes is a heartbeat; no clock of another machine is read).
pub fn renewed(before: &[Lease], after: &[Lease]) -> BTreeSet<String> {
    let before = reports(before);
    reports(after)
        .into_values()
        .filter(|r| before.get(&r.node).is_none_or(|b| b.version != r.version))
        .map(|r| r.node)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::names::{ANNOTATION_INTERFACES, LABEL_AGENT_NODE};

    fn lease(node: &str, version: &str) -> Lease {
        let mut l = Lease::default();
        l.metadata.name = Some(format!("egressgw-agent-{node}"));
        l.metadata.labels = Some([(LABEL_AGENT_NODE.to_string(), node.to_string())].into());
        l.metadata.annotations = Some(
            [(
                ANNOTATION_INTERFACES.to_string(),
                "eth1=198.18.0.12/24".to_string(),
            )]
            .into(),
        );
        l.metadata.resource_version = Some(version.into());
        l
    }

    #[test]
    fn only_leases_that_changed_count_as_alive() {
        let before = [lease("a", "1"), lease("b", "7")];
        let after = [lease("a", "2"), lease("b", "7"), lease("c", "1")];
        assert_eq!(
            renewed(&before, &after),
            ["a".to_string(), "c".to_string()].into()
        );
    }

    #[test]
    fn the_index_carries_interfaces_and_liveness_from_the_leases() {
        let mut node = KubeNode::default();
        node.metadata.name = Some("a".into());
        let s = Snapshot {
            nodes: vec![node],
            leases: vec![lease("a", "1")],
            ..Default::default()
        };
        let idx = s.index(&["a".to_string()].into());
        assert!(idx.nodes["a"].agent_alive);
        assert_eq!(idx.nodes["a"].interfaces[0].name, "eth1");
        assert!(!s.index(&BTreeSet::new()).nodes["a"].agent_alive);
    }
}
