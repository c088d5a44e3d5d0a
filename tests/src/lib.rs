//! Test harness for egressgw: a real control plane and a network-namespace testbed.
pub mod control_plane;
pub mod leak;
pub mod leak_scenarios;
pub mod plugin_bin;
pub mod proxy;
pub mod sim;
pub mod testbed;
