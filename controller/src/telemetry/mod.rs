//! Logs, metrics and the health endpoints of both binaries.

pub mod http;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod signals;
