//! Planner tests, written from the operator's point of view.

mod assignment;
mod conflicts;
mod fixture;
mod node_plans;
mod properties;
mod selection;
mod status;
