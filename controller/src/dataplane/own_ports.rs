//! The netlink port ids of the sockets this dataplane changes the kernel through.
//!
//! Every nftables and rtnetlink notification carries the port id of the socket whose request
//! caused it (`nlmsg_pid`; 0 when the kernel itself acted, e.g. routes flushed by a link
//! going down). The drift monitor ignores notifications from these ports: our own commits are
//! not drift, so a repair never triggers another one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a port id counts as ours after its socket was last opened: longer than any one
/// apply, so the notifications of a commit are recognised however late the monitor reads
/// them. (Linux hands out a process's first port id as its PID and the others from a global
/// descending counter, so another process does not get one of ours within this time.)
pub const OWN_PORT_MEMORY: Duration = Duration::from_secs(60);

/// Port ids of our own netlink sockets, shared by the engine and the drift monitor.
#[derive(Clone, Debug, Default)]
pub struct OwnPorts(Arc<Mutex<HashMap<u32, Instant>>>);

impl OwnPorts {
    /// Remembers `port` as ours (called right after a socket is bound, before it sends).
    pub fn note(&self, port: u32) {
        let now = Instant::now();
        let mut m = self.0.lock().expect("own ports lock");
        m.retain(|_, t| now.duration_since(*t) < OWN_PORT_MEMORY);
        m.insert(port, now);
    }

    /// Whether a notification from `port` was caused by us. Port 0 is the kernel.
    pub fn contains(&self, port: u32) -> bool {
        port != 0
            && self
                .0
                .lock()
                .expect("own ports lock")
                .get(&port)
                .is_some_and(|t| t.elapsed() < OWN_PORT_MEMORY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noted_ports_are_ours_and_the_kernel_never_is() {
        let ports = OwnPorts::default();
        assert!(!ports.contains(4242));
        ports.note(4242);
        assert!(ports.contains(4242));
        assert!(ports.clone().contains(4242), "clones share the record");
        ports.note(0);
        assert!(!ports.contains(0));
    }
}
