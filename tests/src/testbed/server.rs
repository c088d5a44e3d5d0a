//! The legacy TCP server: greets each connection with the source address it saw
//! (`peer=<ip>:<port>\n`) and echoes every line back (`echo <line>\n`). It runs as threads of
//! the test process whose listening socket lives in the server's namespace.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use super::netns::in_netns;

/// A running legacy server; stops on drop.
pub struct LegacyServer {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<JoinHandle<()>>,
}

fn serve(mut stream: TcpStream, peer: SocketAddr, stop: Arc<AtomicBool>) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    if stream
        .write_all(format!("peer={peer}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                if stream
                    .write_all(format!("echo {}", line).as_bytes())
                    .is_err()
                {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl LegacyServer {
    /// Starts a server on `addr` inside the namespace at `netns`.
    pub fn start(netns: PathBuf, addr: SocketAddrV4) -> Result<Self> {
        let listener = in_netns(netns, move || TcpListener::bind(addr))?
            .with_context(|| format!("binding {addr}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), peers.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nonblocking(false);
                        p.lock().expect("poisoned").push(peer);
                        let s2 = s.clone();
                        conns.push(std::thread::spawn(move || serve(stream, peer, s2)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Ok(Self {
            addr,
            stop,
            peers,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Source addresses of every connection accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("poisoned").clone()
    }
}

impl Drop for LegacyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
