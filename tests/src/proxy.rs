//! A TCP proxy on loopback that a test can cut or slow down: it stands between one agent and
//! the apiserver, so the agent can be cut off from the control plane while it keeps running,
//! or see every request take longer, or have its open connections go silent (a stalled
//! watch: the apiserver's VM lost without a reset) while new ones work.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Read size of the request direction when requests are delayed.
const CHUNK: usize = 16 * 1024;

pub struct CuttableProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Milliseconds every chunk towards the apiserver is held (0: none).
    delay_ms: Arc<AtomicU64>,
    /// Connections numbered below this forward nothing more, either way, and stay open.
    stalled_below: Arc<AtomicU64>,
    /// The number the next accepted connection gets.
    next_conn: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    /// Listen on a free loopback port and forward every connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let stalled_below = Arc::new(AtomicU64::new(0));
        let next_conn = Arc::new(AtomicU64::new(0));
        let (c, cs, d) = (cut.clone(), conns.clone(), delay_ms.clone());
        let (sb, nc) = (stalled_below.clone(), next_conn.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(inbound); // cut: refuse by closing at once
                    continue;
                }
                let (d, sb) = (d.clone(), sb.clone());
                let id = nc.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (mut in_r, mut in_w) = inbound.into_split();
                        let (mut out_r, mut out_w) = outbound.into_split();
                        let up = async {
                            let mut buf = vec![0u8; CHUNK];
                            loop {
                                let n = match in_r.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                let delay = d.load(Ordering::SeqCst);
                                if delay > 0 {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                }
                                if id < sb.load(Ordering::SeqCst) {
                                    std::future::pending::<()>().await;
                                }
                                if out_w.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = out_w.shutdown().await;
                        };
                        let down = async {
                            let mut buf = vec![0u8; CHUNK];
                            loop {
                                let n = match out_r.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if id < sb.load(Ordering::SeqCst) {
                                    std::future::pending::<()>().await;
                                }
                                if in_w.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = in_w.shutdown().await;
                        };
                        tokio::join!(up, down);
                    }
                });
                let mut v = cs.lock().expect("proxy lock");
                v.retain(|t| !t.is_finished());
                v.push(task);
            }
        });
        Ok(Self {
            addr,
            cut,
            delay_ms,
            stalled_below,
            next_conn,
            conns,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drop every open connection and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for t in self.conns.lock().expect("proxy lock").drain(..) {
            t.abort();
        }
    }

    /// Forward again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Every connection open now goes silent: nothing more is forwarded either way, nothing is
    /// closed or reset (what a client sees when the apiserver's machine vanishes). Connections
    /// opened later are forwarded as usual.
    pub fn stall_open_connections(&self) {
        self.stalled_below
            .store(self.next_conn.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Hold every chunk sent towards the apiserver this long (every request takes that much
    /// longer); zero: forward at once again.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.conns.lock().expect("proxy lock").drain(..) {
            t.abort();
        }
    }
}
