//! The status each gateway should carry.
