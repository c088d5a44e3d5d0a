//! The status each gateway should carry, computed from the plan. Pure: the caller passes the
//! clock and the previous status so transition times survive unchanged conditions.

use ipnetwork::IpNetwork;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{EgressGatewayStatus, IpAssignment};
use crate::index::{Gateway, Ineligible};
use crate::plan::{ClusterPlan, Unplaced};

/// Condition types.
pub mod condition {
    /// Traffic of the selected pods leaves from at least one egress IP.
    pub const READY: &str = "Ready";
    /// Every node that must act for the gateway has committed its part to the kernel, and
    /// their kernels, as read back, hold it.
    pub const PROGRAMMED: &str = "Programmed";
    /// The gateway lost an egress IP or pods to an older gateway.
    pub const CONFLICTED: &str = "Conflicted";
    /// Some egress IP has no eligible node.
    pub const DEGRADED: &str = "Degraded";
}

/// Condition reasons.
pub mod reason {
    pub const EGRESS_IPS_PLACED: &str = "EgressIPsPlaced";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const NO_ELIGIBLE_NODE: &str = "NoEligibleNode";
    /// An egress IP is an address the cluster already uses or reserves (a node's address, a
    /// subnet's network or broadcast address, inside the pod or Service ranges): the spec must
    /// change.
    pub const INVALID_EGRESS_IP: &str = "InvalidEgressIP";
    /// Every node that could host the IP has an agent still at the idle cadence (it switches
    /// within about a second of seeing a gateway select its node): transient, no warning.
    pub const WAITING_FOR_AGENTS: &str = "WaitingForAgents";
    pub const EGRESS_IP_CONFLICT: &str = "EgressIPConflict";
    pub const POD_SELECTION_CONFLICT: &str = "PodSelectionConflict";
    pub const NO_CONFLICT: &str = "NoConflict";
    pub const ALL_PLACED: &str = "AllEgressIPsPlaced";
    pub const PROGRAMMED: &str = "Programmed";
    pub const PENDING: &str = "Pending";
    /// A node's kernel, as its agent read it back, has differed from the plan for longer
    /// than [`crate::kernel_truth::KERNEL_DIFFERS_BOUND`] (an egress IP absent, set
    /// elements or rules missing): the message names the node and what differs.
    pub const KERNEL_DIFFERS: &str = "KernelDiffers";
}

/// Placeholder in `gatewayNodes` for an IP without a node (alone when no IP has one).
pub const NO_NODE: &str = "<none>";
/// At most this many names are listed in a message before "and N more".
const MAX_NAMES_IN_MESSAGE: usize = 5;

/// Which nodes have not yet programmed a gateway as planned (empty: all have), and what
/// differs in nodes' kernels for longer than the bound (see [`crate::kernel_truth`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programming {
    pub pending: Vec<String>,
    /// "node: what differs", one per node whose kernel lastingly differs from the plan.
    pub kernel: Vec<String>,
}

/// Compute a gateway's status. Times are cut to whole seconds, the precision the API keeps
/// (`metav1.Time`): a status written and read back then compares equal to the next one
/// computed from it, instead of differing in its sub-second digits forever.
pub fn gateway_status(
    gateway: &Gateway,
    plan: &ClusterPlan,
    programming: &Programming,
    previous: Option<&EgressGatewayStatus>,
    now: Timestamp,
) -> EgressGatewayStatus {
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let generation = gateway.generation;
    let cond = |type_: &str, status: bool, reason: &str, message: String| Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: Some(generation),
        last_transition_time: Time(now),
    };
    let mut status = EgressGatewayStatus {
        observed_generation: Some(generation),
        ..Default::default()
    };
    let conditions = match &gateway.spec {
        Err(e) => {
            let msg = e.to_string();
            vec![
                cond(condition::READY, false, reason::INVALID_SPEC, msg.clone()),
                cond(
                    condition::PROGRAMMED,
                    false,
                    reason::INVALID_SPEC,
                    "nothing is programmed for an invalid spec".into(),
                ),
                cond(
                    condition::CONFLICTED,
                    false,
                    reason::NO_CONFLICT,
                    String::new(),
                ),
                cond(condition::DEGRADED, true, reason::INVALID_SPEC, msg),
            ]
        }
        Ok(spec) => {
            let mut excl: Vec<IpNetwork> = spec.excluded.clone();
            excl.extend(crate::plan::guard::internal_overlapping(
                &plan.cluster_internal,
                &spec.destinations,
            ));
            excl.sort();
            excl.dedup();
            status.effective_exclusions = excl.iter().map(|n| n.to_string()).collect();
            let placements = plan
                .assignments
                .by_gateway
                .get(&gateway.name)
                .cloned()
                .unwrap_or_default();
            let selection = plan
                .selections
                .by_gateway
                .get(&gateway.name)
                .cloned()
                .unwrap_or_default();
            status.selected_pods = Some(selection.pods.len() as i64);
            let mut nodes = Vec::with_capacity(placements.len());
            let mut claimed = Vec::new();
            let mut homeless = Vec::new();
            let mut refused = false;
            let mut all_waiting = true;
            for (index, p) in placements.iter().enumerate() {
                let ip = p.ip.to_string();
                let (node, interface, epoch) = match &p.placement {
                    Ok(pl) => (
                        Some(pl.node.clone()),
                        Some(pl.interface.clone()),
                        Some(pl.epoch),
                    ),
                    Err(Unplaced::ClaimedBy(w)) => {
                        claimed.push(format!("{ip} is claimed by older gateway {w}"));
                        (None, None, None)
                    }
                    Err(Unplaced::NoEligibleNode(why)) => {
                        let only_idle = why.contains_key(&Ineligible::AgentIdle)
                            && why.keys().all(|k| {
                                matches!(k, Ineligible::AgentIdle | Ineligible::SelectorMismatch)
                            });
                        if !only_idle {
                            all_waiting = false;
                        }
                        homeless.push(format!("{ip} has no eligible node ({})", explain(why)));
                        (None, None, None)
                    }
                    Err(Unplaced::Refused(r)) => {
                        refused = true;
                        all_waiting = false;
                        homeless.push(format!("spec.egressIPs[{index}] {ip} {r}"));
                        (None, None, None)
                    }
                };
                nodes.push(node.clone().unwrap_or_else(|| NO_NODE.to_string()));
                let prev = previous.and_then(|s| s.assignments.iter().find(|a| a.egress_ip == ip));
                let since = match prev {
                    Some(a) if a.node == node => a.since.clone().or(Some(Time(now))),
                    _ => Some(Time(now)),
                };
                status.assignments.push(IpAssignment {
                    egress_ip: ip,
                    node,
                    interface,
                    epoch,
                    since,
                });
            }
            status.egress_ip_list = Some(
                status
                    .assignments
                    .iter()
                    .map(|a| a.egress_ip.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            // One `<none>` when no IP has a node, not `<none>,<none>` (issue 16).
            status.gateway_nodes = Some(if nodes.iter().all(|n| n == NO_NODE) {
                NO_NODE.to_string()
            } else {
                nodes.join(",")
            });
            let placed = placements.iter().filter(|p| p.placement.is_ok()).count();
            let homeless_reason = if refused {
                reason::INVALID_EGRESS_IP
            } else if all_waiting {
                reason::WAITING_FOR_AGENTS
            } else {
                reason::NO_ELIGIBLE_NODE
            };

            let ready = if placed > 0 {
                let msg = format!(
                    "{placed} of {} egress IPs placed; {} pods selected",
                    placements.len(),
                    selection.pods.len()
                );
                cond(condition::READY, true, reason::EGRESS_IPS_PLACED, msg)
            } else if !homeless.is_empty() {
                let msg = format!(
                    "traffic of the selected pods to the destinations is dropped: {}",
                    homeless.join("; ")
                );
                cond(condition::READY, false, homeless_reason, msg)
            } else {
                let msg = format!(
                    "traffic of the selected pods to the destinations is dropped: {}",
                    claimed.join("; ")
                );
                cond(condition::READY, false, reason::EGRESS_IP_CONFLICT, msg)
            };

            let mut conflicts = claimed.clone();
            if !selection.lost.is_empty() {
                let mut by_winner: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for (pod, winner) in &selection.lost {
                    by_winner.entry(winner).or_default().push(pod.to_string());
                }
                for (winner, pods) in by_winner {
                    conflicts.push(format!(
                        "{} pods are also selected by older gateway {winner} for overlapping destinations and use it: {}",
                        pods.len(),
                        list(&pods)
                    ));
                }
            }
            let conflicted = if conflicts.is_empty() {
                cond(
                    condition::CONFLICTED,
                    false,
                    reason::NO_CONFLICT,
                    String::new(),
                )
            } else {
                let reason = if claimed.is_empty() {
                    reason::POD_SELECTION_CONFLICT
                } else {
                    reason::EGRESS_IP_CONFLICT
                };
                cond(condition::CONFLICTED, true, reason, conflicts.join("; "))
            };

            let degraded = if homeless.is_empty() {
                cond(
                    condition::DEGRADED,
                    false,
                    reason::ALL_PLACED,
                    String::new(),
                )
            } else {
                cond(
                    condition::DEGRADED,
                    true,
                    homeless_reason,
                    homeless.join("; "),
                )
            };

            let programmed = if !programming.kernel.is_empty() {
                let mut msg = format!(
                    "the kernel differs from the plan for longer than {:?}: {}",
                    crate::kernel_truth::KERNEL_DIFFERS_BOUND,
                    list(&programming.kernel)
                );
                if !programming.pending.is_empty() {
                    msg.push_str(&format!(
                        "; waiting for nodes to program the current plan: {}",
                        list(&programming.pending)
                    ));
                }
                cond(condition::PROGRAMMED, false, reason::KERNEL_DIFFERS, msg)
            } else if programming.pending.is_empty() {
                cond(
                    condition::PROGRAMMED,
                    true,
                    reason::PROGRAMMED,
                    "every node that acts for this gateway has programmed it".into(),
                )
            } else {
                let msg = format!(
                    "waiting for nodes to program the current plan: {}",
                    list(&programming.pending)
                );
                cond(condition::PROGRAMMED, false, reason::PENDING, msg)
            };
            vec![ready, programmed, conflicted, degraded]
        }
    };
    status.conditions = conditions
        .into_iter()
        .map(|mut c| {
            let prev = previous.and_then(|s| s.conditions.iter().find(|p| p.type_ == c.type_));
            if let Some(p) = prev.filter(|p| p.status == c.status) {
                c.last_transition_time = p.last_transition_time.clone();
            }
            c
        })
        .collect();
    status
}

/// "node-a is not Ready; node-b, node-c do not match gatewayNodeSelector".
fn explain(why: &BTreeMap<Ineligible, Vec<String>>) -> String {
    if why.is_empty() {
        return "no nodes known".to_string();
    }
    why.iter()
        .map(|(reason, nodes)| format!("{}: {reason}", list(nodes)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn list(names: &[String]) -> String {
    if names.len() <= MAX_NAMES_IN_MESSAGE {
        names.join(", ")
    } else {
        format!(
            "{} and {} more",
            names[..MAX_NAMES_IN_MESSAGE].join(", "),
            names.len() - MAX_NAMES_IN_MESSAGE
        )
    }
}
