//! Rollout: what every node does for one gateway, given its selection and its placements.
//! Node plans are assembled from the rollouts of all gateways, so one gateway's change
//! rebuilds only that gateway's part.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::index::{ClusterIndex, GatewaySpec, PodKey, Sym, intern};

use super::assign::IpPlacement;
use super::hash;
use super::ip_claims::IpClaims;
use super::node_plan::{GatewayNodePlan, HostedIp, NodePlan};

/// One gateway's work, spread over the nodes.
///
/// Held for every gateway at once, so kept compact: each node's share is sorted slices
/// sized to fit, the destinations are stored once for all nodes, and
/// [`GatewayRollout::node_part`] expands one node's share into a [`GatewayNodePlan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayRollout {
    /// The gateway's destinations and exclusions (the same on every node).
    destinations: Box<[IpNetwork]>,
    excluded: Box<[IpNetwork]>,
    /// The gateway's egress IPs (spec order).
    egress_ips: Box<[IpAddr]>,
    /// The IPs of every pod the gateway selects (sorted): what a node that hosts or may host
    /// the gateway guards.
    all_pods: Box<[IpAddr]>,
    /// Node name (interned) to its share of the work, sorted by name; no empty shares.
    nodes: Box<[(Sym, NodeShare)]>,
    /// Egress IPs hosted, with the node hosting each.
    pub hosted: BTreeMap<IpAddr, (String, HostedIp)>,
    /// Which egress IP each selected pod uses (absent: none placed, the pod is blocked).
    pub pod_ip: BTreeMap<PodKey, IpAddr>,
}

/// One node's share of a gateway's work: [`GatewayNodePlan`] without the destinations, in
/// sorted slices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NodeShare {
    snat: Box<[(IpAddr, Box<[IpAddr]>)]>,
    /// Pod IP to its node's InternalIP, for the SNATed pods of other nodes.
    origins: Box<[(IpAddr, IpAddr)]>,
    steer: Box<[(IpAddr, Box<[IpAddr]>)]>,
    blocked: Box<[IpAddr]>,
    /// The node's own selected pods.
    local: Box<[IpAddr]>,
}

fn compact(m: BTreeMap<IpAddr, BTreeSet<IpAddr>>) -> Box<[(IpAddr, Box<[IpAddr]>)]> {
    m.into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}

fn expand(s: &[(IpAddr, Box<[IpAddr]>)]) -> BTreeMap<IpAddr, BTreeSet<IpAddr>> {
    s.iter()
        .map(|(k, v)| (*k, v.iter().copied().collect()))
        .collect()
}

impl GatewayRollout {
    /// The nodes with work for this gateway (rules; hosting is in [`Self::hosted`]), by name.
    pub fn node_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.nodes.iter().map(|(n, _)| &**n)
    }

    /// What `node` does for this gateway, if anything (its guard: its own pods).
    pub fn node_part(&self, node: &str) -> Option<GatewayNodePlan> {
        let i = self.nodes.binary_search_by(|(n, _)| (**n).cmp(node)).ok()?;
        let share = &self.nodes[i].1;
        Some(GatewayNodePlan {
            destinations: self.destinations.to_vec(),
            excluded: self.excluded.to_vec(),
            snat: expand(&share.snat),
            origins: share.origins.iter().copied().collect(),
            steer: expand(&share.steer),
            blocked: share.blocked.iter().copied().collect(),
            guard: share.local.iter().copied().collect(),
            egress_ips: self.egress_ips.to_vec(),
            guard_remote: false,
        })
    }

    /// What a node that hosts or may host the gateway does for it: its own part, and a guard
    /// over every pod the gateway selects (traffic steered to it that it will not SNAT is
    /// dropped, whatever the source node believed).
    pub fn candidate_part(&self, node: &str) -> GatewayNodePlan {
        let mut part = self.node_part(node).unwrap_or_else(|| GatewayNodePlan {
            destinations: self.destinations.to_vec(),
            excluded: self.excluded.to_vec(),
            egress_ips: self.egress_ips.to_vec(),
            ..GatewayNodePlan::default()
        });
        part.guard.extend(self.all_pods.iter().copied());
        part.guard_remote = true;
        part
    }
}

/// Build one gateway's rollout.
pub fn rollout(
    index: &ClusterIndex,
    gateway: &str,
    spec: &GatewaySpec,
    pods: &BTreeSet<PodKey>,
    placements: &[IpPlacement],
    claims: &IpClaims,
) -> GatewayRollout {
    let mut out = GatewayRollout {
        destinations: spec.destinations.as_slice().into(),
        excluded: spec.excluded.as_slice().into(),
        egress_ips: spec.egress_ips.as_slice().into(),
        ..Default::default()
    };
    let mut all_pods: BTreeSet<IpAddr> = BTreeSet::new();
    // Built with maps, then compacted.
    let mut nodes: BTreeMap<String, GatewayNodePlan> = BTreeMap::new();
    let fresh = GatewayNodePlan::default;
    let placed: Vec<(IpAddr, &super::assign::Placement)> = placements
        .iter()
        .filter_map(|p| p.placement.as_ref().ok().map(|pl| (p.ip, pl)))
        .collect();
    let placed_ips: Vec<IpAddr> = placed.iter().map(|(ip, _)| *ip).collect();
    for (ip, pl) in &placed {
        if pl.stale_epoch {
            continue; // this node may not hold it until status carries its current epoch
        }
        let hosted = HostedIp {
            gateway: gateway.to_string(),
            interface: pl.interface.clone(),
        };
        out.hosted.insert(*ip, (pl.node.clone(), hosted));
        // The SNAT rule exists even before the first pod arrives, so that pod is one element.
        nodes
            .entry(pl.node.clone())
            .or_insert_with(fresh)
            .snat
            .entry(*ip)
            .or_default();
    }
    for key in pods {
        let Some(pod) = index.pods.get(key) else {
            continue;
        };
        let Some(pod_node) = pod.node.as_deref() else {
            continue;
        };
        let ips: Vec<IpAddr> = pod.ipv4().collect();
        if ips.is_empty() {
            continue;
        }
        all_pods.extend(ips.iter().copied());
        let local = nodes.entry(pod_node.to_string()).or_insert_with(fresh);
        local.guard.extend(ips.iter().copied());
        if claims.ambiguous(index, pod) {
            // Another pod lists the same IP and neither owns it: whose traffic it is cannot
            // be told, so it leaves from no egress IP and from no node address.
            local.blocked.extend(ips);
            continue;
        }
        let Some(egress) = hash::choose(key, &placed_ips) else {
            local.blocked.extend(ips);
            continue;
        };
        out.pod_ip.insert(key.clone(), egress);
        let placement = placed
            .iter()
            .find(|(ip, _)| *ip == egress)
            .expect("chosen among placed")
            .1;
        let host = &placement.node;
        if placement.stale_epoch && host == pod_node {
            local.blocked.extend(ips); // held by nobody in this node's view: fail closed
            continue;
        }
        // A pod of another node is SNATed only when its packets can be told to come from
        // that node (by its InternalIP): without one, the host's guard drops them.
        let origin = match host == pod_node {
            true => None,
            false => index.nodes.get(pod_node).and_then(|n| n.internal_ip),
        };
        if !placement.stale_epoch && (host == pod_node || origin.is_some()) {
            let part = nodes.entry(host.clone()).or_insert_with(fresh);
            part.snat
                .entry(egress)
                .or_default()
                .extend(ips.iter().copied());
            if let Some(node_ip) = origin {
                part.origins.extend(ips.iter().map(|ip| (*ip, node_ip)));
            }
        } // else: another node's pod, steered to the stale host, whose guard drops it

        if host != pod_node {
            let local = nodes.entry(pod_node.to_string()).or_insert_with(fresh);
            match index.nodes.get(host).and_then(|n| n.internal_ip) {
                Some(next_hop) => local.steer.entry(next_hop).or_default().extend(ips),
                // Without the host's address there is no way there: fail closed.
                None => local.blocked.extend(ips),
            }
        }
    }
    out.nodes = nodes
        .into_iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(n, p)| {
            let share = NodeShare {
                snat: compact(p.snat),
                origins: p.origins.into_iter().collect(),
                steer: compact(p.steer),
                blocked: p.blocked.into_iter().collect(),
                local: p.guard.into_iter().collect(),
            };
            (intern(&n), share)
        })
        .collect();
    out.all_pods = all_pods.into_iter().collect();
    out
}

/// Assemble one node's plan from every gateway's rollout; `candidate` says which gateways
/// the node hosts or may host (it guards all of their pods).
pub fn node_plan<'a>(
    node: &str,
    rollouts: impl IntoIterator<Item = (&'a String, &'a GatewayRollout)>,
    candidate: impl Fn(&str) -> bool,
) -> NodePlan {
    let mut plan = NodePlan::empty(node);
    for (gateway, r) in rollouts {
        let part = if candidate(gateway) {
            Some(r.candidate_part(node))
        } else {
            r.node_part(node)
        };
        if let Some(part) = part {
            plan.gateways.insert(gateway.clone(), part);
        }
        for (ip, (host, hosted)) in &r.hosted {
            if host == node {
                plan.hosted.insert(*ip, hosted.clone());
            }
        }
    }
    plan
}
