//! Waiting until etcd and kube-apiserver serve, failing fast when one of them exits.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::{ControlPlaneError, Result};
use super::ports::LOOPBACK;
use super::process::ManagedProcess;

/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Longest a single probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// etcd's health endpoint and the answer it gives when healthy.
const ETCD_HEALTH_REQUEST: &[u8] = b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
const ETCD_HEALTHY: &str = "\"health\":\"true\"";
/// kube-apiserver's readiness endpoint and its healthy answer.
const READYZ: &str = "/readyz";
const READY: &str = "ok";

/// Waits for etcd's `/health` to report healthy on its client port.
pub async fn wait_for_etcd(
    etcd: &mut ManagedProcess,
    client_port: u16,
    deadline: Instant,
) -> Result<()> {
    let started = Instant::now();
    loop {
        etcd.check_running()?;
        if let Ok(Ok(body)) = tokio::time::timeout(PROBE_TIMEOUT, etcd_health(client_port)).await
            && body.contains(ETCD_HEALTHY)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ControlPlaneError::NotReady {
                what: format!("etcd on port {client_port}"),
                binary: "etcd",
                waited: started.elapsed(),
                log_tail: etcd.log_tail(),
            });
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

async fn etcd_health(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((LOOPBACK, port)).await?;
    stream.write_all(ETCD_HEALTH_REQUEST).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// Waits for kube-apiserver's `/readyz` to answer `ok` (every post-start hook done).
pub async fn wait_for_apiserver(
    apiserver: &mut ManagedProcess,
    client: &kube::Client,
    deadline: Instant,
) -> Result<()> {
    let started = Instant::now();
    let mut last: String;
    loop {
        apiserver.check_running()?;
        let request = http::Request::get(READYZ).body(Vec::new());
        match request {
            Ok(request) => {
                match tokio::time::timeout(PROBE_TIMEOUT, client.request_text(request)).await {
                    Ok(Ok(body)) if body.trim() == READY => return Ok(()),
                    Ok(Ok(body)) => last = body,
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = format!("no answer within {PROBE_TIMEOUT:?}"),
                }
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(ControlPlaneError::NotReady {
                what: format!("kube-apiserver {READYZ} (last answer: {last})"),
                binary: "kube-apiserver",
                waited: started.elapsed(),
                log_tail: apiserver.log_tail(),
            });
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}
