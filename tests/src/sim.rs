//! A simulated cluster: the real control plane, the network-namespace testbed, and the real
//! `egressgw` controller and agents as processes (agents inside their node's namespace).
//! Used by the end-to-end tests and by `make demo`. Drop kills the processes it started (by
//! PID), then the testbed's namespaces go, then the control plane.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use egressgw::api::EgressGateway;
use egressgw::k8s::names::SYSTEM_NAMESPACE;
use kube::Api;

use crate::control_plane::ControlPlane;
use crate::proxy::CuttableProxy;
use crate::testbed::Testbed;

/// Label that makes a node a gateway candidate in the examples.
pub const GATEWAY_LABEL: (&str, &str) = ("egressgw.io/gateway", "true");

/// How long one test connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);

/// The `egressgw` binary built next to the test executable (`make test` builds it first).
pub fn egressgw_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("EGRESSGW_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("test executable has no folder")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("egressgw");
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build -p egressgw` first (make test does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Extra arguments for every controller or agent, from `EGRESSGW_SIM_CONTROLLER_ARGS` /
/// `EGRESSGW_SIM_AGENT_ARGS` (whitespace-separated), e.g. to benchmark other timings.
pub fn extra_args(var: &str) -> Vec<String> {
    std::env::var(var)
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Start `bin` with `args`, stdout and stderr to `log`, `RUST_LOG` from `EGRESSGW_LOG` or
/// `default_filter`.
pub fn spawn_logged(
    bin: &std::path::Path,
    log: &std::path::Path,
    args: &[String],
    default_filter: &str,
) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    Command::new(bin)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("EGRESSGW_LOG").unwrap_or_else(|_| default_filter.into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// The Prometheus text served at `http://addr/metrics` (egressgw's own tiny endpoint).
pub fn scrape_metrics(addr: SocketAddr) -> Result<String> {
    Ok(http_get(addr, "/metrics")?.1)
}

/// `GET path` on egressgw's tiny HTTP endpoint (/metrics, /healthz, /readyz): the status code
/// and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply.as_str(), ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    Ok((code, body.to_string()))
}

/// SIGTERM our own child `child` (by PID), as a rolling update stops a pod.
pub fn sigterm(child: &Child) -> Result<()> {
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: kill(2) on our own unreaped child's PID (it cannot have been reused); no memory
    // is shared.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

pub struct SimCluster {
    agents: BTreeMap<usize, Child>,
    /// Each agent reaches the apiserver through its own proxy, so a test can cut it off.
    proxies: BTreeMap<usize, (CuttableProxy, PathBuf)>,
    /// Where each agent serves /metrics.
    agent_metrics: BTreeMap<usize, SocketAddr>,
    controllers: Vec<Child>,
    // Drop order: processes (above, killed in Drop), then the testbed, then the control plane.
    pub tb: Testbed,
    pub cp: ControlPlane,
    bin: PathBuf,
    logs: PathBuf,
}

impl SimCluster {
    /// Control plane with the CRD, a testbed of `nodes` nodes (2 pods each; nodes are
    /// numbered from 1 as in the testbed), Node objects (nodes in `gateways` labelled as
    /// gateway candidates), `controllers` controller
    /// replicas and one agent per node.
    pub async fn start(
        nodes: usize,
        gateways: &[usize],
        allow: &[Ipv4Addr],
        controllers: usize,
    ) -> Result<Self> {
        let bin = egressgw_binary()?;
        let cp = ControlPlane::start_with_crds().await?;
        cp.create_namespace(SYSTEM_NAMESPACE, &[]).await?;
        let mut b = Testbed::builder().nodes(nodes).pods_per_node(2);
        for ip in allow {
            b = b.allow(*ip);
        }
        let tb = b.build()?;
        for (i, n) in tb.nodes().iter().enumerate().map(|(i, n)| (i + 1, n)) {
            let labels: Vec<(&str, &str)> = if gateways.contains(&i) {
                vec![GATEWAY_LABEL]
            } else {
                vec![]
            };
            cp.create_node(n.name(), &labels, IpAddr::V4(n.ip()), true)
                .await?;
            cp.set_node_pod_cidr(n.name(), &n.pod_cidr()).await?;
        }
        let logs = cp.dir().join("egressgw-logs");
        std::fs::create_dir_all(&logs)?;
        let mut sim = Self {
            agents: BTreeMap::new(),
            proxies: BTreeMap::new(),
            agent_metrics: BTreeMap::new(),
            controllers: Vec::new(),
            tb,
            cp,
            bin,
            logs,
        };
        for i in 0..controllers {
            sim.start_controller(i)?;
        }
        let server: SocketAddr = sim
            .cp
            .server()
            .trim_start_matches("https://")
            .parse()
            .context("apiserver address")?;
        let kubeconfig = std::fs::read_to_string(sim.cp.kubeconfig())?;
        for i in 1..=nodes {
            let proxy = CuttableProxy::start(server).await?;
            let path = sim.logs.join(format!("kubeconfig-agent-{i}"));
            std::fs::write(
                &path,
                kubeconfig.replace(sim.cp.server(), &format!("https://{}", proxy.addr())),
            )?;
            sim.proxies.insert(i, (proxy, path));
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            sim.agent_metrics.insert(i, port);
        }
        for i in 1..=nodes {
            sim.start_agent(i)?;
        }
        Ok(sim)
    }

    fn extra_args(var: &str) -> Vec<String> {
        extra_args(var)
    }

    fn spawn(&self, log: &str, args: &[String]) -> Result<Child> {
        spawn_logged(&self.bin, &self.logs.join(log), args, "info,kube=warn")
    }

    /// Start controller replica `i`.
    pub fn start_controller(&mut self, i: usize) -> Result<()> {
        let args = vec![
            "controller".into(),
            "--kubeconfig".into(),
            self.cp.kubeconfig().display().to_string(),
            "--identity".into(),
            format!("controller-{i}"),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
        ];
        let args = [args, Self::extra_args("EGRESSGW_SIM_CONTROLLER_ARGS")].concat();
        let child = self.spawn(
            &format!("controller-{i}-{}.log", self.controllers.len()),
            &args,
        )?;
        self.controllers.push(child);
        Ok(())
    }

    /// Start the agent of node `i` inside the node's namespace.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = self.tb.node(i);
        let args = vec![
            "agent".into(),
            "--node-name".into(),
            node.name().to_string(),
            "--netns".into(),
            node.netns_path().display().to_string(),
            "--kubeconfig".into(),
            self.proxies[&i].1.display().to_string(),
            "--metrics-addr".into(),
            self.agent_metrics[&i].to_string(),
        ];
        let args = [args, Self::extra_args("EGRESSGW_SIM_AGENT_ARGS")].concat();
        // One log per process: a restarted agent must not truncate its predecessor's log.
        let n = (0..)
            .find(|n| {
                !self
                    .logs
                    .join(format!("agent-{}-{n}.log", node.name()))
                    .exists()
            })
            .unwrap_or(0);
        let child = self.spawn(&format!("agent-{}-{n}.log", node.name()), &args)?;
        self.agents.insert(i, child);
        Ok(())
    }

    /// SIGKILL the agent of node `i` (its kernel state stays, as after a crash).
    pub fn kill_agent(&mut self, i: usize) -> Result<()> {
        let mut child = self
            .agents
            .remove(&i)
            .context("no agent running on that node")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// The Prometheus text the agent of node `i` serves at /metrics.
    pub fn agent_metrics(&self, i: usize) -> Result<String> {
        scrape_metrics(self.agent_metrics[&i])
    }

    /// Cut the agent of node `i` off from the apiserver (it keeps running).
    pub fn cut_agent(&self, i: usize) {
        self.proxies[&i].0.cut();
    }

    /// Let the agent of node `i` reach the apiserver again.
    pub fn restore_agent(&self, i: usize) {
        self.proxies[&i].0.restore();
    }

    /// Stop (SIGSTOP) or continue (SIGCONT) controller replica `i`.
    pub fn controller_pid(&self, i: usize) -> Option<u32> {
        self.controllers.get(i).map(Child::id)
    }

    /// SIGKILL controller replica `i` (index into those started).
    pub fn kill_controller(&mut self, i: usize) -> Result<()> {
        let child = self.controllers.get_mut(i).context("no such controller")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM controller replica `i` and wait (at most `timeout`) for it to exit.
    pub fn stop_controller(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let child = self.controllers.get_mut(i).context("no such controller")?;
        sigterm(child)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "controller {i} still running {timeout:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Create pod `name` in `namespace` on node `node`, with the IP of the testbed's pod
    /// `(node, k)`, and make it Running.
    pub async fn add_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        node: usize,
        k: usize,
    ) -> Result<()> {
        let n = self.tb.node(node).name().to_string();
        self.cp.create_pod(namespace, name, labels, &n).await?;
        self.cp
            .set_pod_ip(namespace, name, IpAddr::V4(self.tb.pod(node, k).ip()))
            .await?;
        Ok(())
    }

    /// `kubectl apply -f file`; an error carries kubectl's stderr.
    pub async fn apply(&self, file: &str) -> Result<()> {
        let out = self.cp.kubectl(["apply", "-f", file]).await?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl apply -f {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Poll the gateway until `check` holds or `timeout` passes.
    pub async fn wait_gateway(
        &self,
        name: &str,
        timeout: Duration,
        check: impl Fn(&EgressGateway) -> bool,
    ) -> Result<EgressGateway> {
        let api: Api<EgressGateway> = Api::all(self.cp.client());
        let deadline = Instant::now() + timeout;
        loop {
            let g = api.get_opt(name).await?;
            if let Some(g) = g.filter(|g| check(g)) {
                return Ok(g);
            }
            if Instant::now() > deadline {
                bail!(
                    "gateway {name} did not reach the expected state in {timeout:?}; last: {:?}",
                    api.get_opt(name).await?.and_then(|g| g.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One TCP connection from the testbed's pod `(node, k)` to `dst`: the source address the
    /// server saw, `None` when the connection failed.
    pub async fn source_seen(&self, node: usize, k: usize, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let ns = self.tb.pod(node, k).netns().path();
        tokio::task::spawn_blocking(move || {
            crate::testbed::client::connect_once(
                ns,
                std::net::SocketAddrV4::new(dst, crate::testbed::topology::SERVER_PORT),
                CONNECT_TIMEOUT,
            )
        })
        .await
        .expect("join")
        .expect("client")
        .ok()
        .map(|a| *a.ip())
    }

    /// Connect from pod `(node, k)` to `dst` until the server sees `want` (`None`: until the
    /// connection fails); panics after `timeout`. Returns how long it took.
    pub async fn wait_source(
        &self,
        node: usize,
        k: usize,
        dst: Ipv4Addr,
        want: Option<Ipv4Addr>,
        timeout: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let seen = self.source_seen(node, k, dst).await;
            if seen == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "pod ({node},{k}) -> {dst}: never saw {want:?} within {timeout:?} (last {seen:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Indices of the nodes whose kernel holds `ip` on an interface.
    pub fn holders(&self, ip: Ipv4Addr) -> Result<Vec<usize>> {
        let mut v = Vec::new();
        for (i, n) in self.tb.nodes().iter().enumerate() {
            let out = n.netns().ip(&["-4", "-o", "addr", "show"])?;
            if out.split_whitespace().any(|w| w == format!("{ip}/32")) {
                v.push(i + 1);
            }
        }
        Ok(v)
    }

    /// The testbed index (from 1) of node `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.tb.node_index(name)
    }

    /// Where the logs of the processes are.
    pub fn logs(&self) -> &std::path::Path {
        &self.logs
    }

    /// `kubectl apply` of `yaml` (written to a numbered file among the logs, so a failed
    /// test shows what it applied).
    pub async fn apply_yaml(&self, yaml: &str) -> Result<()> {
        let n = (0..)
            .find(|n| !self.logs.join(format!("manifest-{n}.yaml")).exists())
            .unwrap_or(0);
        let path = self.logs.join(format!("manifest-{n}.yaml"));
        std::fs::write(&path, yaml)?;
        self.apply(&path.display().to_string()).await
    }

    /// `kubectl label node <node i> <label> --overwrite`: `key=value` sets, `key-` removes.
    pub async fn label_node(&self, i: usize, label: &str) -> Result<()> {
        let node = self.tb.node(i).name().to_string();
        let out = self
            .cp
            .kubectl(["label", "node", &node, label, "--overwrite"])
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl label node {node} {label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// A leak probe on the testbed's pods `(node, k)` against the open server
    /// ([`crate::leak`]).
    pub fn leak_probe(&self, pods: &[(usize, usize)]) -> Result<crate::leak::LeakProbe> {
        crate::leak::LeakProbe::start(&self.tb, pods)
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.agents) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &mut self.controllers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Status helpers.
pub mod status {
    use egressgw::api::EgressGateway;

    /// The status of condition `type_`, if present.
    pub fn condition(g: &EgressGateway, type_: &str) -> Option<String> {
        g.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
    }

    /// The node status assigns `ip` to.
    pub fn node_of(g: &EgressGateway, ip: &str) -> Option<String> {
        g.status
            .as_ref()?
            .assignments
            .iter()
            .find(|a| a.egress_ip == ip)?
            .node
            .clone()
    }

    /// Ready and Programmed are both True for the current generation.
    pub fn ready_and_programmed(g: &EgressGateway) -> bool {
        let current =
            g.status.as_ref().and_then(|s| s.observed_generation) == g.metadata.generation;
        current
            && condition(g, "Ready").as_deref() == Some("True")
            && condition(g, "Programmed").as_deref() == Some("True")
    }
}
