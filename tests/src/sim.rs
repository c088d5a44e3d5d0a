//! A simulated cluster: the real control plane, the network-namespace testbed, and the real
//! `egressgw` controller and agents as processes (agents inside their node's namespace).
//! Used by the end-to-end tests and by `make demo`. Drop kills the processes it started (by
//! PID), then the testbed's namespaces go, then the control plane.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use egressgw::api::EgressGateway;
use egressgw::k8s::names::{AGENT_LEASE_NAMESPACE, SYSTEM_NAMESPACE};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;

use crate::control_plane::{Binaries, ControlPlane};
use crate::proxy::CuttableProxy;
use crate::testbed::ranges::POD_NETWORK;
use crate::testbed::{Testbed, in_netns};

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
    /// kube-proxy per node, when a test asked for them ([`SimCluster::start_kube_proxies`]).
    kube_proxies: BTreeMap<usize, KubeProxy>,
    /// Each agent reaches the apiserver through its own proxy, so a test can cut it off.
    proxies: BTreeMap<usize, (CuttableProxy, PathBuf)>,
    /// Every controller replica reaches the apiserver through this proxy (and kubeconfig), so a
    /// test can stall the controllers' connections.
    controller_proxy: (CuttableProxy, PathBuf),
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
        cp.create_namespace(AGENT_LEASE_NAMESPACE, &[]).await?;
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
        let server: SocketAddr = cp
            .server()
            .trim_start_matches("https://")
            .parse()
            .context("apiserver address")?;
        let kubeconfig = std::fs::read_to_string(cp.kubeconfig())?;
        let proxied_kubeconfig = |name: &str, proxy: &CuttableProxy| -> Result<PathBuf> {
            let path = logs.join(format!("kubeconfig-{name}"));
            std::fs::write(
                &path,
                kubeconfig.replace(cp.server(), &format!("https://{}", proxy.addr())),
            )?;
            Ok(path)
        };
        let controller_proxy = CuttableProxy::start(server).await?;
        let controller_kubeconfig = proxied_kubeconfig("controller", &controller_proxy)?;
        let mut agent_proxies = BTreeMap::new();
        for i in 1..=nodes {
            let proxy = CuttableProxy::start(server).await?;
            let path = proxied_kubeconfig(&format!("agent-{i}"), &proxy)?;
            agent_proxies.insert(i, (proxy, path));
        }
        let mut sim = Self {
            agents: BTreeMap::new(),
            kube_proxies: BTreeMap::new(),
            proxies: agent_proxies,
            controller_proxy: (controller_proxy, controller_kubeconfig),
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
        for i in 1..=nodes {
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
            self.controller_proxy.1.display().to_string(),
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

    /// SIGTERM the agent of node `i` (as a DaemonSet rolling update does) and wait for it to
    /// exit.
    pub fn stop_agent(&mut self, i: usize) -> Result<()> {
        let mut child = self
            .agents
            .remove(&i)
            .context("no agent running on that node")?;
        let pid = i32::try_from(child.id()).context("pid")?;
        anyhow::ensure!(
            unsafe { libc::kill(pid, libc::SIGTERM) } == 0,
            "SIGTERM to the agent of node {i}: {}",
            std::io::Error::last_os_error()
        );
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

    /// Every request of every agent to the apiserver takes `delay` longer (zero: no delay).
    pub fn slow_agents(&self, delay: Duration) {
        for (p, _) in self.proxies.values() {
            p.set_delay(delay);
        }
    }

    /// The kube-apiserver's PID.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.cp.pids().0
    }

    /// Stop (SIGSTOP) or continue (SIGCONT) controller replica `i`.
    pub fn controller_pid(&self, i: usize) -> Option<u32> {
        self.controllers.get(i).map(Child::id)
    }

    /// Every connection the controllers have open to the apiserver goes silent (watches
    /// included; nothing is closed or reset); their new connections work.
    pub fn stall_controller_connections(&self) {
        self.controller_proxy.0.stall_open_connections();
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

/// Which kube-proxy backend the simulated nodes run (`kube-proxy --proxy-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// `nftables` (GA since Kubernetes 1.33): one table `ip kube-proxy`, written with `nft`.
    #[default]
    Nftables,
    /// `iptables`: needs the `iptables` binary (Debian's iptables package; its default
    /// iptables-nft is fine). `make deps` installs it.
    Iptables,
}

impl ProxyMode {
    /// The value of `--proxy-mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Iptables => "iptables",
        }
    }
}

impl std::fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// kube-proxy's health endpoint, on the node's address inside its namespace.
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;
/// kube-proxy's metrics endpoint, on the loopback of the node's namespace.
pub const KUBE_PROXY_METRICS_PORT: u16 = 10249;
/// How long the kube-proxies may take to sync for the first time, or to program a Service.
pub const KUBE_PROXY_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra arguments for every kube-proxy (whitespace-separated), e.g. `--v=4`.
pub const KUBE_PROXY_ARGS_ENV: &str = "EGRESSGW_SIM_KUBE_PROXY_ARGS";
/// The name of the one port of every Service and EndpointSlice the harness creates (a
/// Service port and its EndpointSlice port must carry the same name).
pub const SERVICE_PORT_NAME: &str = "tcp";
/// `endpointslice.kubernetes.io/managed-by` of the slices the harness writes (no
/// endpointslice controller runs: kube-controller-manager is not part of the testbed).
pub const ENDPOINT_SLICE_MANAGER: &str = "egressgw-tests";

/// One kube-proxy: the process (inside the node's namespace) and the forwarder it reaches
/// the apiserver through.
struct KubeProxy {
    child: Child,
    mode: ProxyMode,
    log: PathBuf,
    _apiserver: NetnsForwarder,
}

/// A TCP forwarder that listens on the loopback *inside* a network namespace and connects
/// out from the root namespace: how a process running in a node's namespace (kube-proxy)
/// reaches the apiserver, which listens on the host's loopback. The listening socket is
/// created on a thread inside the namespace and stays there; the tokio tasks that accept and
/// connect run in the root namespace. Stops on drop.
pub struct NetnsForwarder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl NetnsForwarder {
    /// Listens on a free port of 127.0.0.1 in the namespace at `netns` and forwards every
    /// connection to `target` (reached from the root namespace).
    pub async fn start(netns: PathBuf, target: SocketAddr) -> Result<Self> {
        let shown = netns.display().to_string();
        let listener = in_netns(netns, || {
            std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        })?
        .with_context(|| format!("listening on 127.0.0.1 inside {shown}"))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let cs = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut v = cs.lock().expect("forwarder lock");
                v.retain(|t| !t.is_finished());
                v.push(task);
            }
        });
        Ok(Self {
            addr,
            conns,
            accept,
        })
    }

    /// The address to connect to, from inside the namespace.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NetnsForwarder {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.conns.lock().expect("forwarder lock").drain(..) {
            t.abort();
        }
    }
}

/// Starts `binary args…` inside the network namespace `netns` (`ip netns exec`, which execs
/// the binary, so the child's PID is the binary's), output to `log`. The child gets SIGKILL
/// if the thread that started it dies without stopping it (a test killed by a timeout), so
/// nothing keeps a node's namespace alive after its test.
fn spawn_in_netns(netns: &str, binary: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", netns])
        .arg(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("starting {} in {netns}", binary.display()))
}

/// The last `lines` lines of `log`.
fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The flags of the kube-proxy of node `name` at `ip`. Chosen so that it only touches its own
/// node namespace: no conntrack table size or timeouts (`nf_conntrack_max` is global and
/// read-only outside the root namespace), no OOM score, NodePorts and health on the node's
/// address, metrics on the namespace's loopback. `--cluster-cidr` is the whole pod network, so
/// pod traffic to a Service is not masqueraded by kube-proxy (traffic from outside it is).
pub fn kube_proxy_args(
    name: &str,
    ip: Ipv4Addr,
    mode: ProxyMode,
    kubeconfig: &Path,
) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--proxy-mode={mode}"),
        format!("--hostname-override={name}"),
        format!("--bind-address={ip}"),
        format!("--cluster-cidr={POD_NETWORK}"),
        "--detect-local-mode=ClusterCIDR".into(),
        format!("--nodeport-addresses={ip}/32"),
        format!("--healthz-bind-address={ip}:{KUBE_PROXY_HEALTHZ_PORT}"),
        format!("--metrics-bind-address=127.0.0.1:{KUBE_PROXY_METRICS_PORT}"),
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        "--oom-score-adj=0".into(),
        "--iptables-localhost-nodeports=false".into(),
        "--v=2".into(),
    ]
}

/// One endpoint of an EndpointSlice the harness writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: Ipv4Addr,
    /// The node it runs on (`nodeName`), for a pod.
    pub node: Option<String>,
    /// `(namespace, name)` of the pod behind it (`targetRef`).
    pub pod: Option<(String, String)>,
}

impl SliceEndpoint {
    /// An address outside the cluster (a selectorless Service in front of a legacy system).
    pub fn external(ip: Ipv4Addr) -> Self {
        Self {
            ip,
            node: None,
            pod: None,
        }
    }

    /// Pod `namespace/name` on node `node` with address `ip`.
    pub fn pod(namespace: &str, name: &str, node: &str, ip: Ipv4Addr) -> Self {
        Self {
            ip,
            node: Some(node.to_string()),
            pod: Some((namespace.to_string(), name.to_string())),
        }
    }
}

impl SimCluster {
    /// Starts one kube-proxy in every node's namespace ([`SimCluster::start_kube_proxy`]) and
    /// waits until all answer their health check. Opt-in: [`SimCluster::start`] runs none.
    pub async fn start_kube_proxies(&mut self, mode: ProxyMode) -> Result<()> {
        for i in 1..=self.tb.nodes().len() {
            self.start_kube_proxy(i, mode).await?;
        }
        self.wait_kube_proxies_ready(KUBE_PROXY_TIMEOUT).await
    }

    /// Starts kube-proxy (built by `make control-plane`) in node `i`'s namespace, in `mode`,
    /// against the real apiserver (admin kubeconfig, through a [`NetnsForwarder`] on the
    /// namespace's loopback), with [`kube_proxy_args`] plus `$EGRESSGW_SIM_KUBE_PROXY_ARGS`.
    /// Call it from the test's own task (see [`spawn_in_netns`]). Its log is
    /// `kube-proxy-<node>-<n>.log` among [`SimCluster::logs`].
    pub async fn start_kube_proxy(&mut self, i: usize, mode: ProxyMode) -> Result<()> {
        anyhow::ensure!(
            !self.kube_proxies.contains_key(&i),
            "node {i} already runs a kube-proxy"
        );
        let binary = Binaries::locate_kube_proxy()?;
        if mode == ProxyMode::Iptables {
            let found = Command::new("iptables")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            anyhow::ensure!(
                found,
                "kube-proxy --proxy-mode=iptables needs the iptables binary: install the Debian \
                 package iptables (make deps does)"
            );
        }
        let apiserver: SocketAddr = self
            .cp
            .server()
            .trim_start_matches("https://")
            .parse()
            .context("apiserver address")?;
        let node = self.tb.node(i);
        let (name, ip, netns) = (
            node.name().to_string(),
            node.ip(),
            node.netns().name().to_string(),
        );
        let forwarder = NetnsForwarder::start(node.netns_path(), apiserver).await?;
        let kubeconfig = self.logs.join(format!("kubeconfig-kube-proxy-{name}"));
        std::fs::write(
            &kubeconfig,
            std::fs::read_to_string(self.cp.kubeconfig())?
                .replace(self.cp.server(), &format!("https://{}", forwarder.addr())),
        )?;
        let args = [
            kube_proxy_args(&name, ip, mode, &kubeconfig),
            extra_args(KUBE_PROXY_ARGS_ENV),
        ]
        .concat();
        let n = (0..)
            .find(|n| {
                !self
                    .logs
                    .join(format!("kube-proxy-{name}-{n}.log"))
                    .exists()
            })
            .unwrap_or(0);
        let log = self.logs.join(format!("kube-proxy-{name}-{n}.log"));
        let child = spawn_in_netns(&netns, &binary, &args, &log)?;
        self.kube_proxies.insert(
            i,
            KubeProxy {
                child,
                mode,
                log,
                _apiserver: forwarder,
            },
        );
        Ok(())
    }

    /// SIGKILL node `i`'s kube-proxy (by PID); its rules stay in the node's namespace.
    pub fn kill_kube_proxy(&mut self, i: usize) -> Result<()> {
        let mut p = self
            .kube_proxies
            .remove(&i)
            .context("no kube-proxy running on that node")?;
        p.child.kill()?;
        p.child.wait()?;
        Ok(())
    }

    /// The PID of node `i`'s kube-proxy, while it runs.
    pub fn kube_proxy_pid(&self, i: usize) -> Option<u32> {
        self.kube_proxies.get(&i).map(|p| p.child.id())
    }

    /// Fails with the log tail of a kube-proxy that exited.
    fn check_kube_proxies(&mut self) -> Result<()> {
        for (i, p) in &mut self.kube_proxies {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "the kube-proxy of node {i} exited ({status}); {}:\n{}",
                    p.log.display(),
                    log_tail(&p.log, 30)
                );
            }
        }
        Ok(())
    }

    /// Waits until every kube-proxy answers 200 on its health endpoint (it has synced its
    /// rules once), failing with the log tail of one that exited or stayed unhealthy.
    pub async fn wait_kube_proxies_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let nodes: Vec<usize> = self.kube_proxies.keys().copied().collect();
        for i in nodes {
            let node = self.tb.node(i);
            let (netns, addr) = (
                node.netns_path(),
                SocketAddr::from((node.ip(), KUBE_PROXY_HEALTHZ_PORT)),
            );
            loop {
                self.check_kube_proxies()?;
                let ns = netns.clone();
                let answer = tokio::task::spawn_blocking(move || {
                    in_netns(ns, move || http_get(addr, "/healthz"))
                })
                .await??;
                match answer {
                    Ok((200, _)) => break,
                    last if Instant::now() > deadline => {
                        let p = &self.kube_proxies[&i];
                        bail!(
                            "the kube-proxy of node {i} was not healthy within {timeout:?} \
                             (last answer {last:?}); {}:\n{}",
                            p.log.display(),
                            log_tail(&p.log, 30)
                        );
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        Ok(())
    }

    /// Creates a ClusterIP Service `namespace/name` with one TCP port `port` (target port the
    /// same, named [`SERVICE_PORT_NAME`]) and the pod selector `selector` (none when empty:
    /// a selectorless Service whose endpoints the test writes). Returns its ClusterIP, in
    /// the Service range 198.18.192.0/20. No endpointslice controller runs, so a Service
    /// with a selector also needs [`SimCluster::create_endpoint_slice`].
    pub async fn create_service(
        &self,
        namespace: &str,
        name: &str,
        selector: &[(&str, &str)],
        port: u16,
    ) -> Result<Ipv4Addr> {
        let mut spec = serde_json::json!({
            "type": "ClusterIP",
            "ports": [{
                "name": SERVICE_PORT_NAME,
                "protocol": "TCP",
                "port": port,
                "targetPort": port,
            }],
        });
        if !selector.is_empty() {
            spec["selector"] = selector
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": namespace },
            "spec": spec,
        }))?;
        let created = Api::<Service>::namespaced(self.cp.client(), namespace)
            .create(&PostParams::default(), &svc)
            .await
            .with_context(|| format!("creating Service {namespace}/{name}"))?;
        let ip = created
            .spec
            .and_then(|s| s.cluster_ip)
            .with_context(|| format!("Service {namespace}/{name} got no ClusterIP"))?;
        ip.parse()
            .with_context(|| format!("ClusterIP {ip:?} of Service {namespace}/{name}"))
    }

    /// Writes the EndpointSlice `<service>-manual` of Service `namespace/service`: the ready
    /// `endpoints` on TCP port `port` (named [`SERVICE_PORT_NAME`]), as the endpointslice
    /// controller would for a Service with a selector, or as a user does for a selectorless
    /// one.
    pub async fn create_endpoint_slice(
        &self,
        namespace: &str,
        service: &str,
        endpoints: &[SliceEndpoint],
        port: u16,
    ) -> Result<()> {
        let endpoints: Vec<serde_json::Value> = endpoints
            .iter()
            .map(|e| {
                let mut v = serde_json::json!({
                    "addresses": [e.ip.to_string()],
                    "conditions": { "ready": true, "serving": true, "terminating": false },
                });
                if let Some(node) = &e.node {
                    v["nodeName"] = node.as_str().into();
                }
                if let Some((ns, pod)) = &e.pod {
                    v["targetRef"] =
                        serde_json::json!({ "kind": "Pod", "namespace": ns, "name": pod });
                }
                v
            })
            .collect();
        let name = format!("{service}-manual");
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": ENDPOINT_SLICE_MANAGER,
                },
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{ "name": SERVICE_PORT_NAME, "protocol": "TCP", "port": port }],
        }))?;
        Api::<EndpointSlice>::namespaced(self.cp.client(), namespace)
            .create(&PostParams::default(), &slice)
            .await
            .with_context(|| format!("creating EndpointSlice {namespace}/{name}"))?;
        Ok(())
    }

    /// The NAT rules node `i`'s kube-proxy wrote, as text: `nft list table ip kube-proxy`
    /// (nftables mode) or `iptables-save -t nat` (iptables mode).
    pub fn kube_proxy_rules(&self, i: usize) -> Result<String> {
        let p = self
            .kube_proxies
            .get(&i)
            .context("no kube-proxy running on that node")?;
        let ns = self.tb.node(i).netns();
        match p.mode {
            ProxyMode::Nftables => ns.exec("nft", &["list", "table", "ip", "kube-proxy"]),
            ProxyMode::Iptables => ns.exec("iptables-save", &["-t", "nat"]),
        }
    }

    /// Waits until every node's kube-proxy has rules that send `cluster_ip:port` to each of
    /// `backends` (same port).
    pub async fn wait_service_programmed(
        &self,
        cluster_ip: Ipv4Addr,
        port: u16,
        backends: &[Ipv4Addr],
        timeout: Duration,
    ) -> Result<()> {
        anyhow::ensure!(
            !self.kube_proxies.is_empty(),
            "no kube-proxy runs: call start_kube_proxies first"
        );
        let deadline = Instant::now() + timeout;
        for (&i, p) in &self.kube_proxies {
            let wanted: Vec<String> = match p.mode {
                ProxyMode::Nftables => std::iter::once(format!("{cluster_ip} . tcp . {port}"))
                    .chain(backends.iter().map(|b| format!("dnat to {b}:{port}")))
                    .collect(),
                ProxyMode::Iptables => std::iter::once(format!("-d {cluster_ip}/32"))
                    .chain(
                        backends
                            .iter()
                            .map(|b| format!("--to-destination {b}:{port}")),
                    )
                    .collect(),
            };
            loop {
                let rules = self.kube_proxy_rules(i).unwrap_or_default();
                let missing: Vec<&String> = wanted.iter().filter(|w| !rules.contains(*w)).collect();
                if missing.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "the kube-proxy of node {i} did not program {cluster_ip}:{port} -> \
                         {backends:?} within {timeout:?}: missing {missing:?} in\n{rules}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// One TCP connection from the testbed's pod `(node, k)` to `dst` (any address and port):
    /// the source address the server saw, or why it failed.
    pub async fn source_seen_at(
        &self,
        node: usize,
        k: usize,
        dst: SocketAddrV4,
    ) -> Result<Ipv4Addr, crate::testbed::ConnectError> {
        let ns = self.tb.pod(node, k).netns().path();
        tokio::task::spawn_blocking(move || {
            crate::testbed::client::connect_once(ns, dst, CONNECT_TIMEOUT)
        })
        .await
        .expect("join")
        .expect("client")
        .map(|a| *a.ip())
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        for (_, mut p) in std::mem::take(&mut self.kube_proxies) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
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
