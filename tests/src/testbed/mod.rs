//! The network-namespace testbed (DESIGN.md, "The testbed"): a bridge LAN with nodes, pods,
//! a CNI-like masquerade on every node, a firewall that only lets allowlisted egress IPs
//! reach the legacy server, and legacy servers that answer with the source address they saw.
//!
//! Everything lives in namespaces named uniquely per testbed and is deleted on drop, so tests
//! run in parallel and clean up on panic. No process outlives a call: servers and clients are
//! threads whose sockets were opened inside the right namespace. Needs root.

pub mod client;
pub mod netns;
pub mod plans;
pub mod ranges;
pub mod server;
pub mod topology;

pub use client::{ConnectError, LongLived, LongLivedReport};
pub use netns::{Netns, in_netns};
pub use plans::{GatewaySpec, all_plans, apply_all, dataplane, dataplanes, node_plan};
pub use ranges::{
    LEGACY_NETWORK, NODE_LAN, OTHER_NETWORK, POD_NETWORK, RootNetworkError, SERVICE_RANGE,
    TESTBED_RANGES,
};
pub use topology::{
    NODE_IFACE, Node, OPEN_SERVER, OTHER_SERVER, PROTECTED_NET, PROTECTED_SERVER, Pod, ROUTER,
    SERVER_PORT, Testbed, TestbedBuilder,
};
