//! Test harness for egressgw: a real control plane and a network-namespace testbed.
pub mod testbed;
