//! Errors of the node dataplane: each names the object and the kernel call that failed.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

/// A dataplane failure. A failed nftables transaction commits nothing: the kernel keeps the
/// previous state, and the next apply starts from a fresh read of the kernel.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("invalid dataplane configuration: {0}")]
    Config(String),

    #[error("entering network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },

    #[error("{call} for {object}: {source}")]
    Kernel {
        call: &'static str,
        object: String,
        source: io::Error,
    },

    #[error(
        "nftables transaction of {messages} messages rejected at \"{failed}\": {source} (nothing committed)"
    )]
    Transaction {
        messages: usize,
        failed: String,
        source: io::Error,
    },

    #[error("reading {what} from the kernel: {detail}")]
    Decode { what: &'static str, detail: String },

    #[error("egress IP {ip}: interface {interface} not found")]
    InterfaceNotFound { ip: IpAddr, interface: String },

    #[error("next hop {next_hop}: no free slot (mark mask {mask:#010x} allows {max} next hops)")]
    SlotsExhausted {
        next_hop: IpAddr,
        mask: u32,
        max: u32,
    },

    #[error("the kernel refuses an owned, persistent nftables table ({source}): needs Linux 6.9")]
    TableOwnershipUnsupported { source: io::Error },

    #[error("the dataplane thread has stopped")]
    ThreadGone,
}

impl DataplaneError {
    pub(crate) fn kernel(call: &'static str, object: impl Into<String>, source: io::Error) -> Self {
        DataplaneError::Kernel {
            call,
            object: object.into(),
            source,
        }
    }

    /// The errno of a failed kernel call, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            DataplaneError::Kernel { source, .. }
            | DataplaneError::Transaction { source, .. }
            | DataplaneError::Netns { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
