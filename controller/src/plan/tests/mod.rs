//! Planner tests, written from the operator's point of view.

mod assignment;
mod conflicts;
pub(crate) mod fixture;
mod no_leak;
mod node_plans;
mod properties;
mod selection;
mod shared_ips;
mod status;
