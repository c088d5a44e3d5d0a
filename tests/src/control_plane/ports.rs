//! Free TCP ports on the loopback address.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use super::error::{ControlPlaneError, Result};

/// The only address the test control plane listens on.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Asks the kernel for `N` distinct free ports on 127.0.0.1. The listeners are held until all
/// ports are picked, so the `N` ports differ; another process may still take one before the
/// control plane binds it, which start-up detects and retries.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind(SocketAddr::from((LOOPBACK, 0))))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(ControlPlaneError::io("binding a free loopback port"))?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(ControlPlaneError::io("reading a bound port"))?
            .port();
    }
    Ok(ports)
}
