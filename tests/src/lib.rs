//! Test harness for egressgw: a real control plane and a network-namespace testbed.
pub mod control_plane;
pub mod testbed;
pub mod sim;
pub mod plugin_bin;
pub mod proxy;
