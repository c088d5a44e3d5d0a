//! Assignment: which node hosts each egress IP.
//!
//! Rules, in order: an egress IP claimed by two gateways belongs to the older one; an IP the
//! cluster refuses ([`super::refusal`]: a node's or interface's address, a subnet's network or
//! broadcast address, inside the pod or Service ranges) is never placed; an IP stays
//! on the node status records while that node is eligible (nothing flaps back when a node
//! recovers, nothing moves when a node is added); the others go to the eligible node with the
//! fewest IPs of the same gateway, then the fewest IPs overall, then the lowest name.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::index::{ClusterIndex, Gateway, GatewaySpec, Ineligible, Node};

use super::refusal::{Refusal, refusal};
use super::select::by_seniority;

/// Where an egress IP lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    pub node: String,
    pub interface: String,
    /// The node agent's epoch the placement is made for.
    pub epoch: i64,
    /// In the local agent's view only: the placement is on this node but for an older epoch
    /// of its agent. The IP keeps its pods (hashing is the same in every view, so other nodes
    /// keep steering them here), but this node may not hold it: it blocks them until status
    /// carries its current epoch.
    pub stale_epoch: bool,
}

/// Why an egress IP has no node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unplaced {
    /// An older gateway claims the same IP.
    ClaimedBy(String),
    /// No node is eligible; each reason with the nodes it applies to (sorted).
    NoEligibleNode(BTreeMap<Ineligible, Vec<String>>),
    /// No node may host it: the address is already in use or reserved in the cluster.
    Refused(Refusal),
}

/// One egress IP of a gateway and its fate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPlacement {
    pub ip: IpAddr,
    pub placement: Result<Placement, Unplaced>,
}

/// Every gateway's egress IPs, in spec order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignments {
    pub by_gateway: BTreeMap<String, Vec<IpPlacement>>,
}

impl Assignments {
    /// The IPs of `gateway` that have a node.
    pub fn placed<'a>(
        &'a self,
        gateway: &str,
    ) -> impl Iterator<Item = (IpAddr, &'a Placement)> + 'a {
        self.by_gateway
            .get(gateway)
            .into_iter()
            .flatten()
            .filter_map(|p| p.placement.as_ref().ok().map(|pl| (p.ip, pl)))
    }
}

/// Compute assignments from the index (the controller's job).
pub fn assign(index: &ClusterIndex) -> Assignments {
    let ordered = by_seniority(index);
    // Owner of each IP: the most senior gateway that lists it.
    let mut owner: HashMap<IpAddr, &str> = HashMap::new();
    for (g, spec) in &ordered {
        for ip in &spec.egress_ips {
            owner.entry(*ip).or_insert(g.name.as_str());
        }
    }
    let mut load: HashMap<&str, usize> = HashMap::new();
    let mut per_gateway: HashMap<(&str, &str), usize> = HashMap::new();
    let mut result: BTreeMap<String, Vec<IpPlacement>> = BTreeMap::new();
    let mut pending: Vec<(usize, usize)> = Vec::new();

    // Pass 1: conflicts, and recorded placements that still hold.
    for (gi, (g, spec)) in ordered.iter().enumerate() {
        let mut placements = Vec::with_capacity(spec.egress_ips.len());
        for (ii, ip) in spec.egress_ips.iter().enumerate() {
            let winner = owner[ip];
            let placement = if winner != g.name {
                Err(Unplaced::ClaimedBy(winner.to_string()))
            } else if g.spec.is_err() {
                // An invalid spec places nothing; its pods stay blocked by the last valid one.
                Err(Unplaced::NoEligibleNode(BTreeMap::new()))
            } else if let Some(r) = refusal(index, *ip, g.recorded.get(ip).map(|r| r.node.as_str()))
            {
                // Judged before the recorded placement: an IP that became a node's address
                // (or entered a pod range) leaves its node.
                Err(Unplaced::Refused(r))
            } else if let Some(p) = keep_recorded(index, g, spec, *ip) {
                *load.entry(index.nodes[&p.node].name.as_str()).or_default() += 1;
                *per_gateway
                    .entry((g.name.as_str(), index.nodes[&p.node].name.as_str()))
                    .or_default() += 1;
                Ok(p)
            } else {
                pending.push((gi, ii));
                Err(Unplaced::NoEligibleNode(BTreeMap::new()))
            };
            placements.push(IpPlacement { ip: *ip, placement });
        }
        result.insert(g.name.clone(), placements);
    }

    // Pass 2: place the rest, most senior gateway first.
    for (gi, ii) in pending {
        let (g, spec) = ordered[gi];
        let ip = spec.egress_ips[ii];
        let mut best: Option<(usize, usize, &Node, String)> = None;
        let mut why: BTreeMap<Ineligible, Vec<String>> = BTreeMap::new();
        for node in index.nodes.values() {
            match node.eligibility(&spec.node_selector, ip, spec.interface.as_deref()) {
                Ok(iface) => {
                    let score = (
                        per_gateway
                            .get(&(g.name.as_str(), node.name.as_str()))
                            .copied()
                            .unwrap_or(0),
                        load.get(node.name.as_str()).copied().unwrap_or(0),
                    );
                    if best.as_ref().is_none_or(|b| score < (b.0, b.1)) {
                        best = Some((score.0, score.1, node, iface.name.clone()));
                    }
                }
                Err(reason) => why.entry(reason).or_default().push(node.name.clone()),
            }
        }
        let slot = &mut result.get_mut(&g.name).expect("inserted in pass 1")[ii];
        slot.placement = match best {
            Some((_, _, node, interface)) => {
                *load.entry(node.name.as_str()).or_default() += 1;
                *per_gateway
                    .entry((g.name.as_str(), node.name.as_str()))
                    .or_default() += 1;
                Ok(Placement {
                    node: node.name.clone(),
                    interface,
                    epoch: node.agent_epoch,
                    stale_epoch: false,
                })
            }
            None => Err(Unplaced::NoEligibleNode(why)),
        };
    }
    Assignments { by_gateway: result }
}

/// The recorded placement of `ip`, if its node is still eligible (with the interface and
/// epoch refreshed).
fn keep_recorded(
    index: &ClusterIndex,
    g: &Gateway,
    spec: &GatewaySpec,
    ip: IpAddr,
) -> Option<Placement> {
    let rec = g.recorded.get(&ip)?;
    let node = index.nodes.get(&rec.node)?;
    let iface = node
        .eligibility(&spec.node_selector, ip, spec.interface.as_deref())
        .ok()?;
    Some(Placement {
        node: node.name.clone(),
        interface: iface.name.clone(),
        epoch: node.agent_epoch,
        stale_epoch: false,
    })
}

/// Assignments as status records them (the agent's view: it trusts status, not its own
/// judgement of other nodes). A placement on `local` is held only if it was made for the
/// local agent's current epoch, so an agent that was fenced never re-hosts an IP on the
/// strength of a status written before it was declared dead; until then it is kept, marked
/// [`Placement::stale_epoch`], so the pods keep the same IP in every node's view and this
/// node blocks them instead of rehashing them onto other IPs.
pub fn from_status(index: &ClusterIndex, local: Option<(&str, i64)>) -> Assignments {
    let ordered = by_seniority(index);
    let mut owner: HashMap<IpAddr, &str> = HashMap::new();
    for (g, spec) in &ordered {
        for ip in &spec.egress_ips {
            owner.entry(*ip).or_insert(g.name.as_str());
        }
    }
    let mut by_gateway = BTreeMap::new();
    for (g, spec) in &ordered {
        let placements = spec
            .egress_ips
            .iter()
            .map(|ip| {
                let placement = match g.recorded.get(ip) {
                    _ if owner[ip] != g.name => Err(Unplaced::ClaimedBy(owner[ip].to_string())),
                    _ if g.spec.is_err() => Err(Unplaced::NoEligibleNode(BTreeMap::new())),
                    Some(rec) => {
                        let stale_epoch = local.is_some_and(|(name, epoch)| {
                            rec.node == name && rec.epoch != Some(epoch)
                        });
                        Ok(Placement {
                            node: rec.node.clone(),
                            interface: rec.interface.clone().unwrap_or_default(),
                            epoch: rec.epoch.unwrap_or_default(),
                            stale_epoch,
                        })
                    }
                    None => Err(Unplaced::NoEligibleNode(BTreeMap::new())),
                };
                IpPlacement { ip: *ip, placement }
            })
            .collect();
        by_gateway.insert(g.name.clone(), placements);
    }
    Assignments { by_gateway }
}
