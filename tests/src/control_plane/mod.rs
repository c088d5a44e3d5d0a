//! A real Kubernetes control plane for tests: etcd and kube-apiserver (built by
//! `make control-plane`) on free loopback ports in a temporary folder, the way
//! controller-runtime's envtest runs them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), egressgw_tests::control_plane::ControlPlaneError> {
//! use egressgw_tests::control_plane::ControlPlane;
//! let cp = ControlPlane::start().await?;
//! cp.install_crds().await?;
//! let out = cp.kubectl(["get", "egw"]).await?;
//! # Ok(()) }
//! ```
//!
//! Each test starts its own control plane (~0.3 GB of memory, ~3 s); dropping it stops
//! both processes by PID (SIGTERM, then SIGKILL) and deletes the folder, also when the test
//! panics. Keep it on the test's own thread or runtime: the processes are also killed when the
//! thread that started them exits, so a test binary killed by a timeout leaves nothing behind.

mod binaries;
mod certs;
mod crds;
mod error;
mod kubeconfig;
mod kubectl;
mod kubelet;
mod ports;
mod process;
mod readiness;
mod table;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use tempfile::TempDir;

pub use binaries::{
    Binaries, CACHE_ENV, CONTROL_PLANE_DIR_ENV, KUBECTL_ENV, PinnedVersions, locate_kubectl,
    repo_root,
};
pub use certs::{ADMIN_GROUP, ADMIN_USER};
pub use crds::CRD_DIR;
pub use error::{ControlPlaneError, Result};
pub use kubelet::PAUSE_IMAGE;
pub use ports::LOOPBACK;
pub use table::{Row, parse_table};

use crate::testbed::ranges::{self, CONTROL_PLANE_RANGES, SERVICE_RANGE};
use process::ManagedProcess;

/// The Service CIDR given to kube-apiserver: [`SERVICE_RANGE`], 198.18.192.0/20 (DESIGN.md,
/// "The testbed"). [`ControlPlane::start`] refuses to run when the root network namespace has
/// an address or route in it.
pub const SERVICE_CLUSTER_IP_RANGE: Ipv4Network = SERVICE_RANGE;
/// How long etcd and kube-apiserver together may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Start-up attempts when a picked port was taken by someone else in the meantime.
const START_ATTEMPTS: usize = 3;
/// Prefix of the temporary folder of each control plane.
const TEMP_PREFIX: &str = "egressgw-cp-";
/// The log line both binaries print when a port is taken.
const PORT_TAKEN: &str = "address already in use";

/// A running etcd + kube-apiserver pair, with an admin client and kubeconfig.
pub struct ControlPlane {
    client: kube::Client,
    server: String,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    // Declared before `dir`: Drop stops the processes, then the folder is removed.
    apiserver: Mutex<ManagedProcess>,
    etcd: Mutex<ManagedProcess>,
    /// How to start each again ([`ControlPlane::start_apiserver`], [`ControlPlane::start_etcd`]).
    apiserver_command: (PathBuf, Vec<String>),
    etcd_command: (PathBuf, Vec<String>),
    etcd_client_port: u16,
    /// Restarts so far (each gets its own log file).
    restarts: AtomicUsize,
    dir: TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir.path())
            .field("pids", &self.pids())
            .finish()
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers `ok`. Refuses to
    /// start when the Service range overlaps an address or route of the root network
    /// namespace ([`ranges::check_root_namespace`]).
    pub async fn start() -> Result<Self> {
        ranges::check_root_namespace(&CONTROL_PLANE_RANGES)?;
        let binaries = Binaries::locate()?;
        let kubectl = locate_kubectl()?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&binaries, &kubectl).await {
                Err(ControlPlaneError::Exited { log_tail, .. })
                    if log_tail.contains(PORT_TAKEN) && attempt < START_ATTEMPTS =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(binaries: &Binaries, kubectl: &Path) -> Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir()
            .map_err(ControlPlaneError::io("creating the control-plane folder"))?;
        let certs = certs::generate(dir.path())?;
        let [etcd_client_port, etcd_peer_port, apiserver_port] = ports::free_ports::<3>()?;

        let etcd_url = format!("http://{LOOPBACK}:{etcd_client_port}");
        let etcd_command = (
            binaries.etcd.clone(),
            etcd_args(dir.path(), &etcd_url, etcd_peer_port),
        );
        let mut etcd = ManagedProcess::spawn(
            binaries::ETCD_BINARY,
            &etcd_command.0,
            &etcd_command.1,
            dir.path().join("etcd.log"),
        )?;
        readiness::wait_for_etcd(&mut etcd, etcd_client_port, started + START_TIMEOUT).await?;

        let server = format!("https://{LOOPBACK}:{apiserver_port}");
        let apiserver_command = (
            binaries.kube_apiserver.clone(),
            apiserver_args(dir.path(), &certs, &etcd_url, apiserver_port),
        );
        let mut apiserver = ManagedProcess::spawn(
            binaries::APISERVER_BINARY,
            &apiserver_command.0,
            &apiserver_command.1,
            dir.path().join("kube-apiserver.log"),
        )?;
        let kubeconfig = kubeconfig::write(dir.path(), &server, &certs)?;
        let client = kubeconfig::client(&kubeconfig).await?;
        readiness::wait_for_apiserver(&mut apiserver, &client, started + START_TIMEOUT).await?;
        tracing::info!(
            %server,
            elapsed_ms = started.elapsed().as_millis() as u64,
            dir = %dir.path().display(),
            "control plane ready"
        );
        Ok(Self {
            client,
            server,
            kubeconfig,
            kubectl: kubectl.to_path_buf(),
            apiserver: Mutex::new(apiserver),
            etcd: Mutex::new(etcd),
            apiserver_command,
            etcd_command,
            etcd_client_port,
            restarts: AtomicUsize::new(0),
            dir,
        })
    }

    /// Stop kube-apiserver (SIGTERM, then SIGKILL after the grace); [`Self::start_apiserver`]
    /// starts it again on the same port.
    pub fn stop_apiserver(&self) {
        self.apiserver.lock().expect("apiserver lock").stop();
    }

    /// Stop etcd (SIGTERM, then SIGKILL after the grace); its data stays for
    /// [`Self::start_etcd`].
    pub fn stop_etcd(&self) {
        self.etcd.lock().expect("etcd lock").stop();
    }

    /// Start etcd again with its data and ports, and wait until it is healthy.
    pub async fn start_etcd(&self) -> Result<()> {
        let n = self.restarts.fetch_add(1, Ordering::SeqCst);
        let mut etcd = ManagedProcess::spawn(
            binaries::ETCD_BINARY,
            &self.etcd_command.0,
            &self.etcd_command.1,
            self.dir.path().join(format!("etcd-restart-{n}.log")),
        )?;
        readiness::wait_for_etcd(
            &mut etcd,
            self.etcd_client_port,
            Instant::now() + START_TIMEOUT,
        )
        .await?;
        *self.etcd.lock().expect("etcd lock") = etcd;
        Ok(())
    }

    /// Start kube-apiserver again on its port, and wait until `/readyz` answers `ok`.
    pub async fn start_apiserver(&self) -> Result<()> {
        let n = self.restarts.fetch_add(1, Ordering::SeqCst);
        let mut apiserver = ManagedProcess::spawn(
            binaries::APISERVER_BINARY,
            &self.apiserver_command.0,
            &self.apiserver_command.1,
            self.dir
                .path()
                .join(format!("kube-apiserver-restart-{n}.log")),
        )?;
        readiness::wait_for_apiserver(&mut apiserver, &self.client, Instant::now() + START_TIMEOUT)
            .await?;
        *self.apiserver.lock().expect("apiserver lock") = apiserver;
        Ok(())
    }

    /// An admin (`system:masters`) client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The kubeconfig for `kubectl --kubeconfig` (admin user, current context set).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The kubectl binary [`ControlPlane::kubectl`] runs.
    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl
    }

    /// The temporary folder (certificates, logs, etcd data); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The kube-apiserver log file.
    pub fn apiserver_log(&self) -> PathBuf {
        self.apiserver
            .lock()
            .expect("apiserver lock")
            .log()
            .to_path_buf()
    }

    /// PIDs of kube-apiserver and etcd, while they run.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.apiserver.lock().expect("apiserver lock").pid(),
            self.etcd.lock().expect("etcd lock").pid(),
        )
    }
}

/// Set to keep the control plane's folder (etcd data, certificates, every process's log)
/// after a test, for debugging.
pub const KEEP_DIRS_ENV: &str = "EGRESSGW_KEEP_TEST_DIRS";

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let apiserver = self.apiserver.get_mut().unwrap_or_else(|e| e.into_inner());
        if std::thread::panicking() {
            eprintln!(
                "--- kube-apiserver log tail ({}) ---\n{}\n---",
                apiserver.log().display(),
                apiserver.log_tail()
            );
        }
        // Apiserver first, so it never sees its storage vanish; `dir` is removed after this.
        apiserver.stop();
        self.etcd
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .stop();
        if std::env::var_os(KEEP_DIRS_ENV).is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "kept {} ({KEEP_DIRS_ENV} is set): logs of every process are under it",
                self.dir.path().display()
            );
        }
    }
}

fn etcd_args(dir: &Path, client_url: &str, peer_port: u16) -> Vec<String> {
    let peer_url = format!("http://{LOOPBACK}:{peer_port}");
    vec![
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        "--name=default".into(),
        // Test data: durability is not wanted, speed is.
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ]
}

fn apiserver_args(dir: &Path, certs: &certs::CertFiles, etcd_url: &str, port: u16) -> Vec<String> {
    vec![
        format!("--etcd-servers={etcd_url}"),
        format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        format!("--secure-port={port}"),
        format!("--bind-address={LOOPBACK}"),
        format!("--advertise-address={LOOPBACK}"),
        format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
        "--authorization-mode=RBAC".into(),
        "--disable-admission-plugins=ServiceAccount".into(),
        format!("--service-account-issuer=https://{LOOPBACK}:{port}"),
        format!(
            "--service-account-key-file={}",
            certs.service_account_public_key.display()
        ),
        format!(
            "--service-account-signing-key-file={}",
            certs.service_account_key.display()
        ),
        format!("--client-ca-file={}", certs.ca_cert.display()),
        format!("--tls-cert-file={}", certs.serving_cert.display()),
        format!("--tls-private-key-file={}", certs.serving_key.display()),
        // The agent DaemonSet runs privileged pods.
        "--allow-privileged=true".into(),
        // 127.0.0.1 is not a valid endpoint for the `kubernetes` Service; nothing needs it.
        "--endpoint-reconciler-type=none".into(),
    ]
}
