//! egressgw: stable, allowlistable egress IPs for selected Kubernetes pods.
//!
//! - [`api`]: the `EgressGateway` custom resource and its CRD;
//! - [`index`]: the cluster as the planner sees it, cut down to the fields that matter;
//! - [`plan`]: the pure planner (selection, conflicts, IP assignment, per-node plans);
//! - [`status`]: the status each gateway should carry.

pub mod api;
pub mod dataplane;
pub mod index;
pub mod plan;
pub mod status;
