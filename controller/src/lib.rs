//! egressgw: stable, allowlistable egress IPs for selected Kubernetes pods.
//!
//! - [`api`]: the `EgressGateway` custom resource and its CRD;
//! - [`index`]: the cluster as the planner sees it, cut down to the fields that matter;
//! - [`plan`]: the pure planner (selection, conflicts, IP assignment, per-node plans);
//! - [`status`]: the status each gateway should carry;
//! - [`dataplane`]: one node's kernel (nftables, addresses, routing, conntrack);
//! - [`controller`], [`agent`]: the two runtimes; [`k8s`]: their API plumbing;
//! - [`telemetry`]: logs, metrics, health endpoints.

pub mod agent;
pub mod api;
pub mod controller;
pub mod dataplane;
pub mod index;
pub mod k8s;
pub mod kernel_truth;
pub mod plan;
pub mod plugin;
pub mod status;
pub mod telemetry;
