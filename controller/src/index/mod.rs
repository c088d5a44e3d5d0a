//! The cluster as the planner sees it.
