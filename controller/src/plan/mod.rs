//! The pure planner.

pub mod node_plan;

pub use node_plan::{GatewayNodePlan, HostedIp, NodePlan};
