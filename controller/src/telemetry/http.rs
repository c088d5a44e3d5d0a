//! `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1 — a few lines instead of a web
//! framework, since these three GETs are all either binary serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// Most bytes of a request read before answering.
const MAX_REQUEST: usize = 8192;

/// State the endpoints report.
#[derive(Clone)]
pub struct Health {
    /// Set once every watch has synced (and, for the agent, the first plan is applied).
    pub ready: Arc<AtomicBool>,
    pub registry: Arc<std::sync::Mutex<Registry>>,
    /// Called before `/metrics` renders (e.g. to read nft counters).
    pub refresh: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Serve until the task is dropped.
pub async fn serve(addr: SocketAddr, health: Health) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    loop {
        let (mut sock, peer) = listener.accept().await?;
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_REQUEST];
            let n = match sock.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => return debug!(%peer, error = %e, "read failed"),
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (code, body, ctype) = match path {
                "/healthz" | "/livez" => ("200 OK", "ok\n".to_string(), "text/plain"),
                "/readyz" if health.ready.load(Ordering::Relaxed) => {
                    ("200 OK", "ready\n".to_string(), "text/plain")
                }
                "/readyz" => (
                    "503 Service Unavailable",
                    "not ready: watches syncing\n".to_string(),
                    "text/plain",
                ),
                "/metrics" => {
                    if let Some(refresh) = &health.refresh {
                        refresh();
                    }
                    let body = match health.registry.lock() {
                        Ok(r) => super::metrics::render(&r),
                        Err(_) => String::new(),
                    };
                    (
                        "200 OK",
                        body,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                }
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = sock.write_all(resp.as_bytes()).await {
                warn!(%peer, error = %e, "write failed");
            }
        });
    }
}
