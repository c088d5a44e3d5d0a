//! `kubectl egress explain pod`: which gateway and egress IP a pod uses for which
//! destinations, on which node, or exactly why none. Pure: the planner's own selection,
//! conflict and assignment functions run on the objects the API returned.
//!
//! What the pod uses comes from the assignments **recorded in status** (what the agents
//! program); the planner's current judgement is consulted only to explain an IP that status
//! leaves without a node.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::selector_text::mismatch;
use crate::api::EgressGatewayStatus;
use crate::index::{ClusterIndex, Ineligible, PodKey};
use crate::plan::assign::from_status;
use crate::plan::ip_claims::{Claim, IpClaims};
use crate::plan::select::{by_seniority, pod_gateways, selects};
use crate::plan::{Assignments, Unplaced, plan_with};

/// Why an egress IP of a gateway the pod uses carries none of its traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpTrouble {
    /// An older gateway lists the same IP.
    ClaimedBy(String),
    /// No node may host it; each reason with its nodes.
    NoEligibleNode(BTreeMap<Ineligible, Vec<String>>),
    /// No node may host it: the cluster already uses or reserves the address.
    Refused(crate::plan::Refusal),
    /// Status records no node, but a node is eligible now: the controller has not written
    /// the placement (yet).
    NotYetRecorded { eligible: String },
    /// Status records no node; the current state was not consulted.
    Unexplained,
}

/// How a pod's traffic to one gateway's destinations leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// From `ip`, hosted on `node`; `next_hop` is the gateway node's address when the pod
    /// runs elsewhere (its node steers the traffic there).
    Egress {
        ip: IpAddr,
        node: String,
        interface: Option<String>,
        since: Option<String>,
        next_hop: Option<IpAddr>,
    },
    /// Dropped (fail closed): no egress IP of the gateway has a node.
    Dropped { ips: Vec<(IpAddr, IpTrouble)> },
    /// Dropped: the node hosting the IP has no InternalIP to steer to.
    NoNextHop { ip: IpAddr, node: String },
    /// Dropped: other pods list the pod's IP `ip` and none of them owns it (same termination
    /// state, same creation time), so whose traffic it is cannot be told.
    SharedIp { ip: IpAddr, with: Vec<PodKey> },
}

/// A gateway whose destinations the pod's traffic uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub gateway: String,
    pub destinations: Vec<IpNetwork>,
    pub excluded: Vec<IpNetwork>,
    pub route: Route,
}

/// Why a gateway does not apply to the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    InvalidSpec(String),
    /// The namespace is unknown to the API (or unreadable).
    NamespaceUnknown,
    /// The namespace's labels fail the namespaceSelector: the selector, each requirement
    /// once, a failed one with what the namespace has ([`mismatch`]).
    NamespaceMismatch {
        mismatch: String,
    },
    /// The pod's labels fail the podSelector, the same way.
    PodMismatch {
        mismatch: String,
    },
    /// An older gateway selects the pod for overlapping destinations.
    Lost {
        winner: String,
    },
    /// It selects the pod, which carries no traffic yet (see `not_routable`).
    WouldSelect,
}

/// Everything said about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub pod: PodKey,
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
    /// Why the pod carries no traffic at all (empty: it does).
    pub not_routable: Vec<String>,
    pub uses: Vec<Usage>,
    /// Gateways that do not apply, oldest first.
    pub others: Vec<(String, Verdict)>,
}

impl Explanation {
    /// Whether an IP status leaves without a node is unexplained (the caller may judge agent
    /// liveness and explain again with the current assignments).
    pub fn needs_current_state(&self) -> bool {
        self.uses.iter().any(|u| {
            matches!(&u.route, Route::Dropped { ips } if ips.iter().any(|(_, t)| *t == IpTrouble::Unexplained))
        })
    }
}

/// Explain `pod` (which must be in `index`); `current` are assignments computed from the
/// current state, used to say why an IP has no node.
pub fn explain(
    index: &ClusterIndex,
    pod: &PodKey,
    statuses: &BTreeMap<String, EgressGatewayStatus>,
    current: Option<&Assignments>,
) -> Option<Explanation> {
    let p = index.pods.get(pod)?;
    let mut not_routable: Vec<String> = Vec::new();
    if !p.running {
        not_routable.push("its phase is not Pending or Running (it has finished)".into());
    }
    if p.node.is_none() {
        not_routable.push("it is not scheduled to a node".into());
    }
    if p.ips.is_empty() {
        not_routable.push("it has no IP yet".into());
    }
    if p.host_network {
        not_routable.push("it uses the host network (it shares the node's address and is never given an egress IP)".into());
    }
    let claims = IpClaims::build(index);
    let claim = claims.claim(index, p);
    if let Claim::Shadowed { ip, by } = &claim {
        not_routable.push(format!(
            "pod {by} also lists {ip} and owns it ({})",
            if p.terminating && !index.pods.get(by).is_some_and(|o| o.terminating) {
                "this pod is terminating, that one is not"
            } else {
                "that pod is newer"
            }
        ));
    }
    let mut out = Explanation {
        pod: pod.clone(),
        node: p.node.as_deref().map(str::to_string),
        ips: p.ips.clone(),
        not_routable,
        uses: Vec::new(),
        others: Vec::new(),
    };

    let mut invalid: Vec<(&str, String)> = index
        .gateways
        .values()
        .filter_map(|g| {
            g.spec
                .as_ref()
                .err()
                .map(|e| (g.name.as_str(), e.to_string()))
        })
        .collect();
    invalid.sort();
    let ordered = by_seniority(index);
    let ns_labels = index.namespace_labels(&pod.namespace);
    for (g, spec) in &ordered {
        let verdict = match ns_labels {
            None => Some(Verdict::NamespaceUnknown),
            Some(labels) if !spec.namespace_selector.matches(labels) => {
                Some(Verdict::NamespaceMismatch {
                    mismatch: mismatch(&spec.namespace_selector, labels),
                })
            }
            Some(_) if !spec.pod_selector.matches(&p.labels) => Some(Verdict::PodMismatch {
                mismatch: mismatch(&spec.pod_selector, &p.labels),
            }),
            Some(_) => None,
        };
        if let Some(v) = verdict {
            out.others.push((g.name.clone(), v));
        }
    }
    if !out.not_routable.is_empty() {
        for (g, spec) in &ordered {
            if selects(index, spec, p) {
                out.others.push((g.name.clone(), Verdict::WouldSelect));
            }
        }
    } else {
        let resolved = pod_gateways(index, &ordered, p, &claims);
        for (loser, winner) in &resolved.lost {
            out.others.push((
                loser.clone(),
                Verdict::Lost {
                    winner: winner.clone(),
                },
            ));
        }
        let recorded = from_status(index, None);
        let plan = plan_with(index, recorded.clone());
        for name in &resolved.won {
            let Some(Ok(spec)) = index.gateways.get(name).map(|g| g.spec.as_ref()) else {
                continue;
            };
            let rollout = plan.rollouts.get(name);
            let shared = match &claim {
                Claim::Ambiguous { ip, with } => Some(Route::SharedIp {
                    ip: *ip,
                    with: with.clone(),
                }),
                _ => None,
            };
            let route = match rollout.and_then(|r| r.pod_ip.get(pod)) {
                _ if shared.is_some() => shared.expect("checked"),
                Some(ip) => {
                    let (node, _) = &rollout.expect("pod_ip comes from the rollout").hosted[ip];
                    let status = statuses
                        .get(name)
                        .and_then(|s| s.assignments.iter().find(|a| a.egress_ip == ip.to_string()));
                    let local = p.node.as_deref() == Some(node.as_str());
                    let next_hop = index.nodes.get(node).and_then(|n| n.internal_ip);
                    match (local, next_hop) {
                        (false, None) => Route::NoNextHop {
                            ip: *ip,
                            node: node.clone(),
                        },
                        _ => Route::Egress {
                            ip: *ip,
                            node: node.clone(),
                            interface: status.and_then(|a| a.interface.clone()),
                            since: status
                                .and_then(|a| a.since.as_ref())
                                .map(|t| t.0.to_string()),
                            next_hop: if local { None } else { next_hop },
                        },
                    }
                }
                None => Route::Dropped {
                    ips: troubles(name, &recorded, current),
                },
            };
            // What the gateway really leaves out: its status says (cluster-internal ranges
            // included); without a status, what this view can tell.
            let from_status: Vec<IpNetwork> = statuses
                .get(name.as_str())
                .map(|s| {
                    s.effective_exclusions
                        .iter()
                        .filter_map(|c| c.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            let excluded = if from_status.is_empty() {
                let mut e = spec.excluded.clone();
                e.extend(crate::plan::guard::internal_overlapping(
                    &crate::plan::guard::cluster_internal(index),
                    &spec.destinations,
                ));
                e.sort();
                e.dedup();
                e
            } else {
                from_status
            };
            out.uses.push(Usage {
                gateway: name.clone(),
                destinations: spec.destinations.clone(),
                excluded,
                route,
            });
        }
    }
    out.others.extend(
        invalid
            .into_iter()
            .map(|(n, e)| (n.to_string(), Verdict::InvalidSpec(e))),
    );
    Some(out)
}

fn troubles(
    gateway: &str,
    recorded: &Assignments,
    current: Option<&Assignments>,
) -> Vec<(IpAddr, IpTrouble)> {
    let now = current.and_then(|c| c.by_gateway.get(gateway));
    recorded
        .by_gateway
        .get(gateway)
        .into_iter()
        .flatten()
        .map(|p| {
            let trouble = match &p.placement {
                Err(Unplaced::ClaimedBy(w)) => IpTrouble::ClaimedBy(w.clone()),
                _ => match now
                    .and_then(|c| c.iter().find(|q| q.ip == p.ip))
                    .map(|q| &q.placement)
                {
                    None => IpTrouble::Unexplained,
                    Some(Ok(pl)) => IpTrouble::NotYetRecorded {
                        eligible: pl.node.clone(),
                    },
                    Some(Err(Unplaced::ClaimedBy(w))) => IpTrouble::ClaimedBy(w.clone()),
                    Some(Err(Unplaced::NoEligibleNode(why))) => {
                        IpTrouble::NoEligibleNode(why.clone())
                    }
                    Some(Err(Unplaced::Refused(r))) => IpTrouble::Refused(r.clone()),
                },
            };
            (p.ip, trouble)
        })
        .collect()
}

fn cidr_list(nets: &[IpNetwork]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn ineligible(why: &BTreeMap<Ineligible, Vec<String>>) -> String {
    if why.is_empty() {
        return "no nodes exist".to_string();
    }
    why.iter()
        .map(|(reason, nodes)| format!("{}: {reason}", nodes.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn trouble_text(t: &IpTrouble) -> String {
    match t {
        IpTrouble::ClaimedBy(w) => format!("claimed by older gateway {w}, which uses it"),
        IpTrouble::NoEligibleNode(why) => format!("no eligible node ({})", ineligible(why)),
        IpTrouble::Refused(r) => format!("refused: it {r}"),
        IpTrouble::NotYetRecorded { eligible } => format!(
            "status records no node, yet node {eligible} is eligible now: the controller has not placed it \
             (is it running? kubectl -n egressgw-system get pods)"
        ),
        IpTrouble::Unexplained => "status records no node".to_string(),
    }
}

/// The explanation as text.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let ips = if e.ips.is_empty() {
        "no IP".to_string()
    } else {
        e.ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let node = e.node.as_deref().unwrap_or("<unscheduled>");
    out.push_str(&format!("Pod {} ({ips}) on node {node}\n", e.pod));
    if !e.not_routable.is_empty() {
        out.push_str(&format!(
            "\nNo egress gateway applies yet: {}.\n",
            e.not_routable.join("; ")
        ));
    }
    for u in &e.uses {
        out.push('\n');
        match &u.route {
            Route::Egress {
                ip,
                node: host,
                interface,
                since,
                next_hop,
            } => {
                out.push_str(&format!(
                    "Traffic to {} leaves from egress IP {ip}\n",
                    cidr_list(&u.destinations)
                ));
                out.push_str(&format!("  gateway:  {}\n", u.gateway));
                let iface = interface
                    .as_deref()
                    .map(|i| format!(" on {i}"))
                    .unwrap_or_default();
                let since = since
                    .as_deref()
                    .map(|s| format!(" since {s}"))
                    .unwrap_or_default();
                out.push_str(&format!("  hosted:   node {host}{iface}{since}\n"));
                match next_hop {
                    Some(hop) => out.push_str(&format!(
                        "  path:     node {node} steers it to node {host} ({hop}), which SNATs it to {ip}\n"
                    )),
                    None => out.push_str(&format!("  path:     SNATed to {ip} on this node, where the pod runs\n")),
                }
            }
            Route::Dropped { ips } => {
                out.push_str(&format!(
                    "Traffic to {} is DROPPED: gateway {} has no egress IP on any node (egressgw fails closed)\n",
                    cidr_list(&u.destinations),
                    u.gateway
                ));
                for (ip, t) in ips {
                    out.push_str(&format!("  {ip}: {}\n", trouble_text(t)));
                }
            }
            Route::SharedIp { ip, with } => {
                out.push_str(&format!(
                    "Traffic to {} is DROPPED: pod {} also lists {ip}, and none owns it (same termination state, same creation time)\n",
                    cidr_list(&u.destinations),
                    with.iter().map(ToString::to_string).collect::<Vec<_>>().join(", pod "),
                ));
                out.push_str(&format!("  gateway:  {}\n", u.gateway));
            }
            Route::NoNextHop { ip, node: host } => {
                out.push_str(&format!(
                    "Traffic to {} is DROPPED: egress IP {ip} of gateway {} is on node {host}, which has no InternalIP to steer to\n",
                    cidr_list(&u.destinations),
                    u.gateway
                ));
            }
        }
        if !u.excluded.is_empty() {
            out.push_str(&format!(
                "  excluded: {} (left alone)\n",
                cidr_list(&u.excluded)
            ));
        }
    }
    if !e.others.is_empty() {
        out.push_str("\nGateways that do not apply:\n");
        let width = e.others.iter().map(|(g, _)| g.len()).max().unwrap_or(0);
        for (g, v) in &e.others {
            let why = match v {
                Verdict::InvalidSpec(err) => format!("invalid spec: {err}"),
                Verdict::NamespaceUnknown => format!("namespace {} is unknown", e.pod.namespace),
                Verdict::NamespaceMismatch { mismatch } => format!(
                    "namespace {} does not match namespaceSelector {mismatch}",
                    e.pod.namespace
                ),
                Verdict::PodMismatch { mismatch } => {
                    format!("pod does not match podSelector {mismatch}")
                }
                Verdict::Lost { winner } => {
                    format!(
                        "conflict lost: older gateway {winner} also selects this pod for overlapping destinations"
                    )
                }
                Verdict::WouldSelect => "selects this pod once it carries traffic".to_string(),
            };
            out.push_str(&format!("  {g:width$}   {why}\n"));
        }
    }
    let rest = if e.uses.is_empty() {
        "All"
    } else {
        "All other"
    };
    out.push_str(&format!("\n{rest} traffic of this pod leaves as it would without egressgw (usually from its node's address).\n"));
    out
}

#[cfg(test)]
mod tests;
