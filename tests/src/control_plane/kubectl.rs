//! Running the machine's real kubectl against the test control plane.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use super::ControlPlane;
use super::error::{ControlPlaneError, Result};

/// Longest one kubectl invocation may run.
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Sub-folder of the control-plane folder used as kubectl's discovery cache (so nothing is
/// written under `~/.kube/cache`).
const KUBECTL_CACHE_DIR: &str = "kubectl-cache";

impl ControlPlane {
    /// Runs `kubectl --kubeconfig <ours> <args>` and returns its output, whatever its exit code.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = tokio::process::Command::new(self.kubectl_path());
        command
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.kubectl_cache_dir())
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let what = format!("running {}", self.kubectl_path().display());
        match tokio::time::timeout(KUBECTL_TIMEOUT, command.output()).await {
            Ok(output) => output.map_err(ControlPlaneError::io(what)),
            Err(_) => Err(ControlPlaneError::Timeout {
                what,
                waited: KUBECTL_TIMEOUT,
            }),
        }
    }

    /// kubectl's discovery cache for this control plane.
    pub(crate) fn kubectl_cache_dir(&self) -> PathBuf {
        self.dir().join(KUBECTL_CACHE_DIR)
    }
}
