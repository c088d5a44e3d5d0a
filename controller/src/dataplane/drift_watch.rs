//! The drift monitor: a thread inside the node's network namespace listening to nftables
//! (`NFNLGRP_NFTABLES`) and rtnetlink (links, IPv4 addresses, routes, rules) notifications.
//! Each notification that is drift of ours ([`super::drift_events`]) is sent to the agent as
//! a [`DriftCause`]; before it is sent, a cause that needs our table read again marks the
//! engine's cached table stale, so the repair that follows diffs against the kernel.
//!
//! Both sockets live on one current-thread tokio runtime on this thread (the rtnetlink one
//! through the crate's multicast connection, the nftables one through `AsyncFd`), opened
//! after `setns`, like the engine's (see [`super::kernel`]).

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use futures::StreamExt;
use rtnetlink::MulticastGroup;
use rtnetlink::sys::AsyncSocket;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, info, warn};

use super::config::DataplaneConfig;
use super::drift_events::{DriftCause, LinkStates, classify_route_event, parse_nft_events};
use super::error::DataplaneError;
use super::kernel::enter_netns;
use super::own_ports::OwnPorts;

/// `NFNLGRP_NFTABLES`: the multicast group of nftables notifications.
const NFNLGRP_NFTABLES: libc::c_int = 7;
/// Receive buffer of the event sockets: a burst of notifications (a big transaction of ours
/// sends one per set element) must fit, or the kernel drops them (`ENOBUFS`, then we re-read).
const EVENT_RCVBUF: libc::c_int = 8 << 20;
/// One datagram of notifications.
const EVENT_BUF: usize = 64 * 1024;

/// The rtnetlink groups we listen to.
const ROUTE_GROUPS: [MulticastGroup; 5] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv4Rule,
    MulticastGroup::Neigh,
];

/// What the monitor shares with the engine.
#[derive(Clone, Debug)]
pub struct DriftShared {
    /// Our sockets' port ids: their notifications are not drift.
    pub own: OwnPorts,
    /// Set when our table may differ from the engine's cache: the next apply reads it.
    pub table_stale: Arc<AtomicBool>,
}

impl DriftShared {
    pub fn new() -> Self {
        Self {
            own: OwnPorts::default(),
            table_stale: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Records `cause`: marks the table stale when the cause needs it.
    pub fn mark(&self, cause: DriftCause) {
        if cause.needs_table_read() {
            self.table_stale.store(true, Ordering::SeqCst);
        }
    }
}

impl Default for DriftShared {
    fn default() -> Self {
        Self::new()
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn set_rcvbuf(fd: libc::c_int) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        let ok = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &EVENT_RCVBUF as *const _ as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if ok {
            return;
        }
    }
}

/// A non-blocking `NETLINK_NETFILTER` socket in the nftables notification group.
fn open_nft_events() -> io::Result<OwnedFd> {
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_NETFILTER,
        )
    })?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    })?;
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            &NFNLGRP_NFTABLES as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    set_rcvbuf(fd.as_raw_fd());
    Ok(fd)
}

/// Reads one datagram; `Ok(None)` when the kernel dropped notifications (`ENOBUFS`).
fn recv_nft(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOBUFS) => Ok(None),
        _ => Err(e),
    }
}

/// Starts the monitor for the namespace of `cfg` (its own thread). Drift causes arrive on
/// the returned channel; the monitor ends when the receiver is dropped.
pub fn spawn(
    cfg: DataplaneConfig,
    shared: DriftShared,
) -> Result<UnboundedReceiver<DriftCause>, DataplaneError> {
    let (tx, rx) = unbounded_channel();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), DataplaneError>>();
    std::thread::Builder::new()
        .name("egressgw-drift".into())
        .spawn(move || {
            let started = match &cfg.netns {
                Some(p) => enter_netns(p),
                None => Ok(()),
            };
            if let Err(e) = started {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ =
                        ready_tx.send(Err(DataplaneError::kernel("runtime", "drift monitor", e)));
                    return;
                }
            };
            rt.block_on(monitor(cfg, shared, tx, ready_tx));
        })
        .map_err(|e| DataplaneError::kernel("spawn", "drift monitor thread", e))?;
    ready_rx.recv().map_err(|_| DataplaneError::ThreadGone)??;
    Ok(rx)
}

async fn monitor(
    cfg: DataplaneConfig,
    shared: DriftShared,
    tx: UnboundedSender<DriftCause>,
    ready: mpsc::Sender<Result<(), DataplaneError>>,
) {
    let opened = (|| {
        let nft = open_nft_events()
            // SAFETY: the OwnedFd is moved in and stays open, unchanged, as long as the AsyncFd
            .and_then(|fd| unsafe { AsyncFd::register(fd) }.map_err(io::Error::from))
            .map_err(|e| {
                DataplaneError::kernel("socket(NETLINK_NETFILTER)", "nftables events", e)
            })?;
        let (mut conn, _handle, messages) = rtnetlink::new_multicast_connection(&ROUTE_GROUPS)
            .map_err(|e| DataplaneError::kernel("socket(NETLINK_ROUTE)", "rtnetlink events", e))?;
        set_rcvbuf(conn.socket_mut().socket_ref().as_raw_fd());
        tokio::spawn(conn);
        Ok((nft, messages))
    })();
    let (nft, mut messages) = match opened {
        Ok(v) => {
            let _ = ready.send(Ok(()));
            v
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    info!(netns = ?cfg.netns, "drift monitor listening to nftables and rtnetlink events");
    let mut links = LinkStates::default();
    let mut buf = vec![0u8; EVENT_BUF];
    let send = |cause: DriftCause| {
        shared.mark(cause);
        debug!(%cause, "drift event");
        tx.send(cause).is_ok()
    };
    loop {
        let alive = tokio::select! {
            readable = nft.readable() => {
                let mut guard = match readable {
                    Ok(g) => g,
                    Err(e) => {
                        warn!(error = %e, "nftables event socket failed: drift monitor stops");
                        return;
                    }
                };
                match guard.try_io(|fd| recv_nft(fd.get_ref(), &mut buf)) {
                    Ok(Ok(Some(n))) => {
                        let drift = parse_nft_events(&buf[..n])
                            .iter()
                            .any(|e| e.is_drift(&shared.own));
                        !drift || send(DriftCause::Nft)
                    }
                    Ok(Ok(None)) => {
                        warn!("nftables events were lost (ENOBUFS): reading everything again");
                        send(DriftCause::Overrun)
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "reading nftables events failed: drift monitor stops");
                        return;
                    }
                    Err(_would_block) => true,
                }
            }
            msg = messages.next() => match msg {
                Some((m, _)) => match classify_route_event(&m, &cfg, &shared.own, &mut links) {
                    Some(cause) => send(cause),
                    None => true,
                },
                None => {
                    warn!("rtnetlink event connection closed: drift monitor stops");
                    return;
                }
            },
            _ = tx.closed() => false,
        };
        if !alive {
            debug!("drift monitor: nobody listens any more");
            return;
        }
    }
}
