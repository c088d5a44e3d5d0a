//! The benchmark's cluster: the real control plane, a testbed of a few real nodes (network
//! namespaces) with the real `egressgw agent` in each, the real `egressgw controller`, and
//! Node objects for the simulated nodes. Built from the harness's pieces like
//! `egressgw_tests::sim::SimCluster`, but every agent talks to the apiserver through a
//! loopback proxy that counts the bytes it receives, and the PIDs are known for /proc.
//! A second controller replica can wait as a hot standby and take over when the leader is
//! told to stop (SIGTERM), as in a rolling update of a 2-replica deployment.
//! Drop kills the processes it started (by PID), then the testbed goes, then the control plane.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use egressgw::k8s::names::{AGENT_LEASE_NAMESPACE, SYSTEM_NAMESPACE};
use egressgw_tests::control_plane::ControlPlane;
use egressgw_tests::sim::egressgw_binary;
use egressgw_tests::testbed::Testbed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A loopback TCP proxy counting the bytes that flow from the apiserver to the client.
pub struct CountingProxy {
    addr: SocketAddr,
    pub down: Arc<AtomicU64>,
    /// Bytes the client sent (requests).
    #[allow(dead_code)]
    pub up: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

impl CountingProxy {
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (down, up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (d, u) = (down.clone(), up.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (d, u) = (d.clone(), u.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::join!(pump(or, iw, d), pump(ir, ow, u));
                });
            }
        });
        Ok(Self {
            addr,
            down,
            up,
            accept,
        })
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

pub struct Agent {
    pub child: Child,
    pub proxy: CountingProxy,
    pub metrics: SocketAddr,
    kubeconfig: PathBuf,
}

/// Leader-election identity of the controller `start_controller` starts (and restarts).
pub const LEADER_IDENTITY: &str = "controller-0";

/// A second controller replica, started while the leader leads.
struct Standby {
    child: Child,
    metrics: SocketAddr,
}

pub struct ScaleCluster {
    pub agents: BTreeMap<usize, Agent>,
    /// THE controller: the leader (after a handover, the former standby).
    pub controller: Option<Child>,
    /// The running controller's /metrics.
    pub controller_metrics: Option<SocketAddr>,
    /// A hot standby replica (`start_standby`), until `stop_leader` makes it THE controller.
    standby: Option<Standby>,
    /// A leader told to stop (SIGTERM) and not reaped yet.
    retiring: Option<Child>,
    controllers_started: usize,
    // Drop order: processes (killed in Drop), then the testbed, then the control plane.
    pub tb: Testbed,
    pub cp: ControlPlane,
    bin: PathBuf,
    logs: PathBuf,
}

impl ScaleCluster {
    /// Control plane with the CRD, a testbed of `real` nodes (nodes 2.. are gateway
    /// candidates), their Node objects, the firewall allowing `allow`. No processes yet.
    pub async fn start(real: usize, allow: &[Ipv4Addr]) -> Result<Self> {
        let bin = egressgw_binary()?;
        let cp = ControlPlane::start_with_crds().await?;
        cp.create_namespace(SYSTEM_NAMESPACE, &[]).await?;
        cp.create_namespace(AGENT_LEASE_NAMESPACE, &[]).await?;
        let mut b = Testbed::builder().nodes(real).pods_per_node(1);
        for ip in allow {
            b = b.allow(*ip);
        }
        let tb = b.build()?;
        for (i, n) in tb.nodes().iter().enumerate().map(|(i, n)| (i + 1, n)) {
            let labels: Vec<(&str, &str)> = if i >= 2 {
                vec![crate::world::REAL_POOL]
            } else {
                vec![]
            };
            cp.create_node(n.name(), &labels, IpAddr::V4(n.ip()), true)
                .await?;
        }
        let logs = cp.dir().join("egressgw-logs");
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            agents: BTreeMap::new(),
            controller: None,
            controller_metrics: None,
            standby: None,
            retiring: None,
            controllers_started: 0,
            tb,
            cp,
            bin,
            logs,
        })
    }

    fn extra_args(var: &str) -> Vec<String> {
        egressgw_tests::sim::extra_args(var)
    }

    fn spawn(&self, log: &str, args: &[String]) -> Result<Child> {
        egressgw_tests::sim::spawn_logged(&self.bin, &self.logs.join(log), args, "warn")
    }

    /// An `egressgw controller` process with `identity`, logging to `log`; its /metrics address.
    fn spawn_controller(&mut self, identity: &str, log: &str) -> Result<(Child, SocketAddr)> {
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let args = vec![
            "controller".into(),
            "--kubeconfig".into(),
            self.cp.kubeconfig().display().to_string(),
            "--identity".into(),
            identity.into(),
            "--metrics-addr".into(),
            metrics.to_string(),
        ];
        let args = [args, Self::extra_args("EGRESSGW_SIM_CONTROLLER_ARGS")].concat();
        let child = self.spawn(log, &args)?;
        self.controllers_started += 1;
        Ok((child, metrics))
    }

    pub fn start_controller(&mut self) -> Result<u32> {
        // One identity across restarts (a container restarting in its pod): a restarted
        // controller re-acquires its own leader Lease at once, so a restart measures the
        // resync, not the leader-lease expiry.
        let log = format!("controller-{}.log", self.controllers_started);
        let (child, metrics) = self.spawn_controller(LEADER_IDENTITY, &log)?;
        let pid = child.id();
        self.controller = Some(child);
        self.controller_metrics = Some(metrics);
        Ok(pid)
    }

    /// Start a second controller replica with `identity` (its own /metrics and log) while
    /// the leader runs; it syncs its watches and waits for the leader Lease. Its pid and
    /// /metrics address.
    pub fn start_standby(&mut self, identity: &str) -> Result<(u32, SocketAddr)> {
        ensure!(self.standby.is_none(), "a standby is already running");
        let log = format!("standby-{identity}-{}.log", self.controllers_started);
        let (child, metrics) = self.spawn_controller(identity, &log)?;
        let pid = child.id();
        self.standby = Some(Standby { child, metrics });
        Ok((pid, metrics))
    }

    /// Kill the standby (if any) and reap it.
    pub fn kill_standby(&mut self) -> Result<()> {
        if let Some(mut s) = self.standby.take() {
            s.child.kill()?;
            s.child.wait()?;
        }
        Ok(())
    }

    /// Tell the leader to stop (SIGTERM to our own child, by PID), as a rolling update does,
    /// and make the standby THE controller (its pid and /metrics from now on). The old
    /// leader is reaped by `reap_retiring`. Returns the old leader's pid.
    pub fn stop_leader(&mut self) -> Result<u32> {
        ensure!(
            self.retiring.is_none(),
            "a former leader is still being reaped"
        );
        let standby = self.standby.take().context("no standby to hand over to")?;
        let Some(leader) = self.controller.take() else {
            self.standby = Some(standby);
            bail!("no leader running");
        };
        let pid = leader.id();
        let signalled = egressgw_tests::sim::sigterm(&leader);
        self.retiring = Some(leader);
        self.controller = Some(standby.child);
        self.controller_metrics = Some(standby.metrics);
        signalled.with_context(|| format!("SIGTERM to the leader (pid {pid})"))?;
        Ok(pid)
    }

    /// Wait (polling) for the leader `stop_leader` signalled to exit: when it was seen gone
    /// and its exit status. Not gone within `timeout`: SIGKILLed, reaped, and `None`.
    pub async fn reap_retiring(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(Instant, ExitStatus)>> {
        let mut child = self.retiring.take().context("no leader was told to stop")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some((Instant::now(), status)));
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn kill_controller(&mut self) -> Result<()> {
        if let Some(mut c) = self.controller.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Start the agent of real node `i` (from 1), behind a counting proxy.
    pub async fn start_agent(&mut self, i: usize) -> Result<()> {
        let server: SocketAddr = self
            .cp
            .server()
            .trim_start_matches("https://")
            .parse()
            .context("apiserver address")?;
        let proxy = CountingProxy::start(server).await?;
        let kubeconfig = self.logs.join(format!("kubeconfig-agent-{i}"));
        let text = std::fs::read_to_string(self.cp.kubeconfig())?;
        std::fs::write(
            &kubeconfig,
            text.replace(self.cp.server(), &format!("https://{}", proxy.addr())),
        )?;
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let node = self.tb.node(i);
        let args = vec![
            "agent".into(),
            "--node-name".into(),
            node.name().to_string(),
            "--netns".into(),
            node.netns_path().display().to_string(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--metrics-addr".into(),
            metrics.to_string(),
        ];
        let args = [args, Self::extra_args("EGRESSGW_SIM_AGENT_ARGS")].concat();
        let child = self.spawn(
            &format!("agent-{}-{}.log", node.name(), std::process::id()),
            &args,
        )?;
        self.agents.insert(
            i,
            Agent {
                child,
                proxy,
                metrics,
                kubeconfig,
            },
        );
        Ok(())
    }

    pub fn kill_agent(&mut self, i: usize) -> Result<()> {
        if let Some(mut a) = self.agents.remove(&i) {
            a.child.kill()?;
            a.child.wait()?;
            let _ = std::fs::remove_file(&a.kubeconfig);
        }
        Ok(())
    }

    /// The controller's /metrics text (empty before it serves).
    pub fn controller_metrics(&self) -> String {
        self.controller_metrics
            .and_then(|a| egressgw_tests::sim::scrape_metrics(a).ok())
            .unwrap_or_default()
    }

    /// The Prometheus text the agent of node `i` serves.
    pub fn agent_metrics(&self, i: usize) -> Result<String> {
        egressgw_tests::sim::scrape_metrics(
            self.agents
                .get(&i)
                .context("no agent on that node")?
                .metrics,
        )
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.tb.node_index(name)
    }

    pub fn logs(&self) -> &std::path::Path {
        &self.logs
    }
}

impl Drop for ScaleCluster {
    fn drop(&mut self) {
        for (_, mut a) in std::mem::take(&mut self.agents) {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        let standby = self.standby.take().map(|s| s.child);
        for mut c in [self.controller.take(), standby, self.retiring.take()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll `http://addr/readyz` until it answers 200 (the controller's watches have synced);
/// when it did, or `None` after `timeout`.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if egressgw_tests::sim::http_get(addr, "/readyz").is_ok_and(|(code, _)| code == 200) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
