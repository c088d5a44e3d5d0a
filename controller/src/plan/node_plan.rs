//! What one node's kernel must hold: the contract between the planner and the dataplane.
//!
//! Pure data. The planner builds it from the cluster view; the dataplane diffs it against what
//! it finds in the kernel and commits the difference in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// Everything one node must program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// The node this plan is for.
    pub node: String,
    /// Egress IPs this node hosts (as /32 or /128 on `interface`), keyed by IP.
    pub hosted: BTreeMap<IpAddr, HostedIp>,
    /// Per gateway (by name), the work this node does for it. Only gateways with work here.
    pub gateways: BTreeMap<String, GatewayNodePlan>,
    /// Pod ranges of the other nodes: forwarded traffic from them toward the destinations of
    /// a gateway with [`GatewayNodePlan::guard_remote`] is guarded like a known pod's.
    pub remote_pod_ranges: Vec<IpNetwork>,
    /// Cluster-internal ranges (pod ranges, node addresses, Service ranges) that every gateway
    /// excludes on this node, on top of its own exclusions.
    pub internal_exclusions: Vec<IpNetwork>,
}

/// One egress IP this node hosts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostedIp {
    /// The gateway the IP belongs to.
    pub gateway: String,
    /// The interface that carries it.
    pub interface: String,
}

/// The work one node does for one gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayNodePlan {
    /// Traffic to these networks is handled (sorted, no duplicates).
    pub destinations: Vec<IpNetwork>,
    /// ...except traffic to these (sorted, no duplicates).
    pub excluded: Vec<IpNetwork>,
    /// SNAT on this node, which hosts the key egress IP: the pod IPs (from any node) that
    /// leave with it. Only egress IPs in [`NodePlan::hosted`] appear here.
    pub snat: BTreeMap<IpAddr, BTreeSet<IpAddr>>,
    /// Where the SNATed pods of other nodes come from: pod IP to the InternalIP of its node.
    /// The dataplane SNATs such a pod's packet only when it arrives from that node
    /// (anti-spoofing); a pod in `snat` but not here runs on this node.
    pub origins: BTreeMap<IpAddr, IpAddr>,
    /// Steering of this node's own pods whose egress IP lives on another node: next hop (the
    /// InternalIP of the node hosting the egress IP) to the local pod IPs sent there.
    pub steer: BTreeMap<IpAddr, BTreeSet<IpAddr>>,
    /// This node's selected pods whose gateway has no egress IP on any node right now: their
    /// traffic to the destinations is dropped rather than leaking from the node's address.
    pub blocked: BTreeSet<IpAddr>,
    /// Pods whose traffic to the destinations may leave this node only SNATed to one of
    /// `egress_ips` or steered, never otherwise (the no-leak rule, enforced after every NAT):
    /// this node's own selected pods, and on a node that hosts or may host the gateway every
    /// pod the gateway selects.
    pub guard: BTreeSet<IpAddr>,
    /// The gateway's egress IPs (all of them, wherever they live).
    pub egress_ips: Vec<IpAddr>,
    /// The node hosts or may host the gateway: it also guards the other nodes' pod ranges
    /// ([`NodePlan::remote_pod_ranges`]), covering pods it has not heard of yet.
    pub guard_remote: bool,
}

impl GatewayNodePlan {
    /// Whether the node has nothing to do for this gateway.
    pub fn is_empty(&self) -> bool {
        self.snat.is_empty()
            && self.steer.is_empty()
            && self.blocked.is_empty()
            && self.guard.is_empty()
    }

    /// Number of pod IPs programmed for this gateway on this node (all roles).
    pub fn pod_entries(&self) -> usize {
        self.snat.values().map(BTreeSet::len).sum::<usize>()
            + self.steer.values().map(BTreeSet::len).sum::<usize>()
            + self.blocked.len()
    }
}

impl NodePlan {
    /// An empty plan for `node`: the state `cleanup` leaves behind.
    pub fn empty(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            ..Default::default()
        }
    }
}

/// A stable digest of what a node does for one gateway: the agent reports it once it has
/// committed that state, the controller compares it with its own plan to tell whether the
/// gateway is `Programmed` on that node. The guard is left out: it depends on which gateways
/// the node may host and on pods the agent still guards for a while after they left.
pub fn digest<'a>(
    part: Option<&GatewayNodePlan>,
    hosted: impl IntoIterator<Item = (&'a IpAddr, &'a HostedIp)>,
) -> u64 {
    let mut text = String::new();
    for (ip, h) in hosted {
        text.push_str(&format!("H{ip}@{};", h.interface));
    }
    if let Some(p) = part {
        text.push_str(&format!(
            "D{:?}X{:?}S{:?}T{:?}B{:?}",
            p.destinations, p.excluded, p.snat, p.steer, p.blocked
        ));
    }
    super::hash::digest(text.as_bytes())
}

impl NodePlan {
    /// [`digest`] of this node's work for `gateway`.
    pub fn gateway_digest(&self, gateway: &str) -> u64 {
        digest(
            self.gateways.get(gateway),
            self.hosted.iter().filter(|(_, h)| h.gateway == gateway),
        )
    }

    /// Every gateway this node does anything for (rules or hosted IPs).
    pub fn gateway_names(&self) -> BTreeSet<&str> {
        self.gateways
            .keys()
            .map(String::as_str)
            .chain(self.hosted.values().map(|h| h.gateway.as_str()))
            .collect()
    }
}
