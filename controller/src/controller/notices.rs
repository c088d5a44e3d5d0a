//! Events worth telling an operator, derived from how a gateway's status changed. Pure.

use crate::api::EgressGatewayStatus;
use crate::status::{condition, reason};

/// Event reasons.
pub mod event_reason {
    pub const ASSIGNED: &str = "EgressIPAssigned";
    pub const MOVED: &str = "EgressIPMoved";
    pub const UNASSIGNED: &str = "EgressIPUnassigned";
    pub const NO_ELIGIBLE_NODE: &str = "NoEligibleNode";
    pub const CONFLICT: &str = "Conflict";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const INVALID_EGRESS_IP: &str = "InvalidEgressIP";
    /// A node's kernel lastingly differs from the plan (Warning).
    pub const KERNEL_DIFFERS: &str = "KernelDiffers";
    /// Every node's kernel holds the plan again after a difference (Normal).
    pub const KERNEL_MATCHES: &str = "KernelMatches";
}

/// One event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

fn cond<'a>(
    s: Option<&'a EgressGatewayStatus>,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s?.conditions.iter().find(|c| c.type_ == t)
}

/// Events for the change from `old` to `new`.
pub fn notices(old: Option<&EgressGatewayStatus>, new: &EgressGatewayStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    for a in &new.assignments {
        let before = old
            .and_then(|o| o.assignments.iter().find(|b| b.egress_ip == a.egress_ip))
            .and_then(|b| b.node.clone());
        match (before.as_deref(), a.node.as_deref()) {
            (None, Some(n)) => out.push(Notice {
                warning: false,
                reason: event_reason::ASSIGNED,
                action: "Assign",
                note: format!("egress IP {} is now hosted by node {n}", a.egress_ip),
            }),
            (Some(b), Some(n)) if b != n => out.push(Notice {
                warning: true,
                reason: event_reason::MOVED,
                action: "Move",
                note: format!("egress IP {} moved from node {b} to node {n}", a.egress_ip),
            }),
            (Some(b), None) => out.push(Notice {
                warning: true,
                reason: event_reason::UNASSIGNED,
                action: "Unassign",
                note: format!(
                    "egress IP {} left node {b} and has no node now",
                    a.egress_ip
                ),
            }),
            _ => {}
        }
    }
    let changed = |t: &str| {
        let n = cond(Some(new), t);
        let o = cond(old, t);
        n.map(|c| (&c.status, &c.reason, &c.message))
            != o.map(|c| (&c.status, &c.reason, &c.message))
    };
    if let Some(r) = cond(Some(new), condition::READY).filter(|_| changed(condition::READY)) {
        // Waiting for agents to leave the idle cadence is transient (about a second): the
        // condition says so; no warning.
        if r.status == "False" && r.reason != reason::WAITING_FOR_AGENTS {
            let reason = match r.reason.as_str() {
                reason::INVALID_SPEC => event_reason::INVALID_SPEC,
                reason::NO_ELIGIBLE_NODE => event_reason::NO_ELIGIBLE_NODE,
                reason::INVALID_EGRESS_IP => event_reason::INVALID_EGRESS_IP,
                _ => event_reason::CONFLICT,
            };
            out.push(Notice {
                warning: true,
                reason,
                action: "Reconcile",
                note: r.message.clone(),
            });
        }
    }
    if let Some(d) = cond(Some(new), condition::DEGRADED).filter(|_| changed(condition::DEGRADED)) {
        let ready_false = cond(Some(new), condition::READY).is_some_and(|r| r.status == "False");
        let event = match d.reason.as_str() {
            reason::NO_ELIGIBLE_NODE => Some(event_reason::NO_ELIGIBLE_NODE),
            reason::INVALID_EGRESS_IP => Some(event_reason::INVALID_EGRESS_IP),
            _ => None,
        };
        if let Some(reason) = event.filter(|_| d.status == "True" && !ready_false) {
            out.push(Notice {
                warning: true,
                reason,
                action: "Assign",
                note: d.message.clone(),
            });
        }
    }
    if let Some(p) =
        cond(Some(new), condition::PROGRAMMED).filter(|_| changed(condition::PROGRAMMED))
    {
        let was_differing = cond(old, condition::PROGRAMMED)
            .is_some_and(|o| o.status == "False" && o.reason == reason::KERNEL_DIFFERS);
        if p.status == "False" && p.reason == reason::KERNEL_DIFFERS {
            out.push(Notice {
                warning: true,
                reason: event_reason::KERNEL_DIFFERS,
                action: "Verify",
                note: p.message.clone(),
            });
        } else if p.status == "True" && was_differing {
            out.push(Notice {
                warning: false,
                reason: event_reason::KERNEL_MATCHES,
                action: "Verify",
                note: "every node's kernel holds the plan again".into(),
            });
        }
    }
    if let Some(c) =
        cond(Some(new), condition::CONFLICTED).filter(|_| changed(condition::CONFLICTED))
        && c.status == "True"
    {
        out.push(Notice {
            warning: true,
            reason: event_reason::CONFLICT,
            action: "Resolve",
            note: c.message.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IpAssignment;

    fn status(node: Option<&str>) -> EgressGatewayStatus {
        EgressGatewayStatus {
            assignments: vec![IpAssignment {
                egress_ip: "198.18.0.200".into(),
                node: node.map(String::from),
                interface: None,
                epoch: None,
                since: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn assignment_moves_and_losses_are_announced() {
        let n = notices(None, &status(Some("a")));
        assert_eq!(n[0].reason, event_reason::ASSIGNED);
        let n = notices(Some(&status(Some("a"))), &status(Some("b")));
        assert_eq!(
            (n[0].reason, n[0].note.as_str()),
            (
                event_reason::MOVED,
                "egress IP 198.18.0.200 moved from node a to node b"
            )
        );
        let n = notices(Some(&status(Some("b"))), &status(None));
        assert_eq!(n[0].reason, event_reason::UNASSIGNED);
        assert!(
            notices(Some(&status(Some("b"))), &status(Some("b"))).is_empty(),
            "no change, no event"
        );
    }
}
