//! Names shared by the controller, the agent and the install manifests.

/// The namespace egressgw is installed in: the controller's leader Lease and the peer key.
pub const SYSTEM_NAMESPACE: &str = "egressgw-system";
/// The namespace of the agents' Leases, and nothing else: agents may write Leases only here
/// (never the leader Lease), each only its own (a ValidatingAdmissionPolicy ties the Lease
/// name to the node in the agent's ServiceAccount token, deploy/admission/).
pub const AGENT_LEASE_NAMESPACE: &str = "egressgw-agents";
/// Server-side-apply field manager of the controller.
pub const FIELD_MANAGER_CONTROLLER: &str = "egressgw-controller";
/// Field manager of the agents (their Leases).
pub const FIELD_MANAGER_AGENT: &str = "egressgw-agent";
/// The controller's leader-election Lease.
pub const CONTROLLER_LEASE: &str = "egressgw-controller";
/// Prefix of each agent's Lease; the node name follows.
pub const AGENT_LEASE_PREFIX: &str = "egressgw-agent-";
/// Label on agent Leases carrying the node name (names can be cut, labels are exact).
pub const LABEL_AGENT_NODE: &str = "egressgw.io/node";
/// Agent Lease annotation: the node's interfaces and subnets, `eth1=198.18.0.12/24,…`.
pub const ANNOTATION_INTERFACES: &str = "egressgw.io/interfaces";
/// Agent Lease annotation: per gateway, the digest of what the agent last committed,
/// `gateway=0123abcd…,…`.
pub const ANNOTATION_PROGRAMMED: &str = "egressgw.io/programmed";
/// Agent Lease annotation: what the node's kernel holds, read back (JSON of
/// [`crate::dataplane::truth::KernelReport`]): digest and size of our table, our egress IPs
/// present, and the gateways whose kernel part differs from the plan.
pub const ANNOTATION_KERNEL: &str = "egressgw.io/kernel";
/// Agent Lease annotation: `idle` while the agent's node cannot host any gateway's egress IP
/// (its labels match no gatewayNodeSelector): it then renews only every
/// `egressgw.io/renew-interval-ms` and the controller places no IP on it. Absent: hosting
/// cadence.
pub const ANNOTATION_CADENCE: &str = "egressgw.io/cadence";
/// Value of [`ANNOTATION_CADENCE`] for an idle agent.
pub const CADENCE_IDLE: &str = "idle";
/// Agent Lease annotation: milliseconds until the agent's next renewal at the latest.
pub const ANNOTATION_RENEW_INTERVAL: &str = "egressgw.io/renew-interval-ms";
/// Agent Lease annotation: the agent fenced itself at least once in this epoch (`true`).
pub const ANNOTATION_FENCED: &str = "egressgw.io/fenced";
/// Agent Lease annotation: the agent is stopping and its successor on the node takes over
/// within this many milliseconds; its addresses live that long, and the controller waits that
/// much longer than the takeover before it judges the node's agent dead.
pub const ANNOTATION_HANDOVER: &str = "egressgw.io/handover-ms";

/// Taint (effect NoSchedule) on a node whose egressgw agent is not live: no new pods there.
pub const TAINT_AGENT_NOT_READY: &str = "egressgw.io/agent-not-ready";

/// The Lease name of the agent on `node`.
pub fn agent_lease(node: &str) -> String {
    format!("{AGENT_LEASE_PREFIX}{node}")
}
