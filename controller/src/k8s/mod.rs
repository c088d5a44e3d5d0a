//! Talking to the Kubernetes API: client set-up, the Leases that carry heartbeats and
//! leadership, events. Everything else (index, plan, status) is pure.

pub mod client;
pub mod leader;
pub mod lease;
pub mod names;
pub mod peer_key;
pub mod pod_store;
pub mod service_cidrs;
pub mod slim;
pub mod taint;
pub mod watch;

pub use client::{ClientError, client};
