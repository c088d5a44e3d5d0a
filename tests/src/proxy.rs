//! A TCP proxy on loopback that a test can cut or slow down: it stands between one agent and
//! the apiserver, so the agent can be cut off from the control plane while it keeps running,
//! or see every request take longer.

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
        let (c, cs, d) = (cut.clone(), conns.clone(), delay_ms.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(inbound); // cut: refuse by closing at once
                    continue;
                }
                let d = d.clone();
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
                                if out_w.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = out_w.shutdown().await;
                        };
                        let down = async {
                            let _ = tokio::io::copy(&mut out_r, &mut in_w).await;
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
