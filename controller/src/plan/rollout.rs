//! Rollout: what every node does for one gateway, given its selection and its placements.
//! Node plans are assembled from the rollouts of all gateways, so one gateway's change
//! rebuilds only that gateway's part.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::index::{ClusterIndex, GatewaySpec, PodKey};

use super::assign::IpPlacement;
use super::hash;
use super::node_plan::{GatewayNodePlan, HostedIp, NodePlan};

/// One gateway's work, spread over the nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayRollout {
    /// Node name to its share of the work.
    pub nodes: BTreeMap<String, GatewayNodePlan>,
    /// Egress IPs hosted, with the node hosting each.
    pub hosted: BTreeMap<IpAddr, (String, HostedIp)>,
    /// Which egress IP each selected pod uses (absent: none placed, the pod is blocked).
    pub pod_ip: BTreeMap<PodKey, IpAddr>,
}

/// Build one gateway's rollout.
pub fn rollout(
    index: &ClusterIndex,
    gateway: &str,
    spec: &GatewaySpec,
    pods: &BTreeSet<PodKey>,
    placements: &[IpPlacement],
) -> GatewayRollout {
    let mut out = GatewayRollout::default();
    let fresh = || GatewayNodePlan {
        destinations: spec.destinations.clone(),
        excluded: spec.excluded.clone(),
        ..Default::default()
    };
    let placed: Vec<(IpAddr, &super::assign::Placement)> =
        placements.iter().filter_map(|p| p.placement.as_ref().ok().map(|pl| (p.ip, pl))).collect();
    let placed_ips: Vec<IpAddr> = placed.iter().map(|(ip, _)| *ip).collect();
    for (ip, pl) in &placed {
        let hosted = HostedIp { gateway: gateway.to_string(), interface: pl.interface.clone() };
        out.hosted.insert(*ip, (pl.node.clone(), hosted));
        // The SNAT rule exists even before the first pod arrives, so that pod is one element.
        out.nodes.entry(pl.node.clone()).or_insert_with(fresh).snat.entry(*ip).or_default();
    }
    for key in pods {
        let Some(pod) = index.pods.get(key) else { continue };
        let Some(pod_node) = pod.node.as_deref() else { continue };
        let ips: Vec<IpAddr> = pod.ipv4().collect();
        if ips.is_empty() {
            continue;
        }
        let Some(egress) = hash::choose(key, &placed_ips) else {
            out.nodes.entry(pod_node.to_string()).or_insert_with(fresh).blocked.extend(ips);
            continue;
        };
        out.pod_ip.insert(key.clone(), egress);
        let host = &placed.iter().find(|(ip, _)| *ip == egress).expect("chosen among placed").1.node;
        out.nodes.entry(host.clone()).or_insert_with(fresh).snat.entry(egress).or_default().extend(ips.iter().copied());
        if host != pod_node {
            let local = out.nodes.entry(pod_node.to_string()).or_insert_with(fresh);
            match index.nodes.get(host).and_then(|n| n.internal_ip) {
                Some(next_hop) => local.steer.entry(next_hop).or_default().extend(ips),
                // Without the host's address there is no way there: fail closed.
                None => local.blocked.extend(ips),
            }
        }
    }
    out.nodes.retain(|_, p| !p.is_empty());
    out
}

/// Assemble one node's plan from every gateway's rollout.
pub fn node_plan<'a>(node: &str, rollouts: impl IntoIterator<Item = (&'a String, &'a GatewayRollout)>) -> NodePlan {
    let mut plan = NodePlan::empty(node);
    for (gateway, r) in rollouts {
        if let Some(part) = r.nodes.get(node) {
            plan.gateways.insert(gateway.clone(), part.clone());
        }
        for (ip, (host, hosted)) in &r.hosted {
            if host == node {
                plan.hosted.insert(*ip, hosted.clone());
            }
        }
    }
    plan
}
