//! The pure planner: no I/O, plain data in, plain data out.
//!
//! - [`select`]: which pods each gateway selects, conflicts over pods;
//! - [`assign`]: which node hosts each egress IP, conflicts over IPs;
//! - [`rollout`]: one gateway's work on every node, pods spread over its IPs by [`hash`];
//! - [`node_plan`]: what one node's kernel must hold (the dataplane's input);
//! - [`cluster`]: all of it, in full or updated after one pod change;
//! - [`guard`]: which traffic a node guards against leaks;
//! - [`ip_claims`]: which pod owns an IP that several pods list;
//! - [`refusal`]: egress IPs the cluster's own addresses and ranges rule out.

pub mod assign;
pub mod cluster;
pub mod guard;
pub mod hash;
pub mod ip_claims;
pub mod node_plan;
pub mod ranges;
pub mod refusal;
pub mod rollout;
pub mod select;

pub use assign::{Assignments, IpPlacement, Placement, Unplaced};
pub use cluster::{ClusterPlan, plan, plan_with};
pub use node_plan::{GatewayNodePlan, HostedIp, NodePlan};
pub use refusal::Refusal;
pub use rollout::GatewayRollout;
pub use select::{GatewaySelection, Selections};

#[cfg(test)]
pub(crate) mod tests;
