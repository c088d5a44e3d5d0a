//! The one error type of the control-plane harness.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Anything that can go wrong while starting, using or stopping the test control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "{binary} not found at {path}: run `make control-plane` (hack/control-plane/build.sh) \
         or point EGRESSGW_CONTROL_PLANE_DIR at a folder holding kube-apiserver and etcd"
    )]
    BinaryMissing { binary: &'static str, path: PathBuf },

    #[error("cannot read the pinned {module} version from {path}")]
    PinnedVersion { module: &'static str, path: PathBuf },

    #[error("no kubectl found (looked for {looked_for}); set EGRESSGW_KUBECTL")]
    KubectlMissing { looked_for: String },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("generating the {what} certificate: {source}")]
    Certificate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    #[error("{binary} exited during start-up ({status}); last log lines:\n{log_tail}")]
    Exited {
        binary: &'static str,
        status: ExitStatus,
        log_tail: String,
    },

    #[error("{what} not ready after {waited:?}; last {binary} log lines:\n{log_tail}")]
    NotReady {
        what: String,
        binary: &'static str,
        waited: Duration,
        log_tail: String,
    },

    #[error("building a client from the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },

    #[error("parsing {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },

    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },

    #[error(transparent)]
    RootNetwork(#[from] crate::testbed::RootNetworkError),
}

impl ControlPlaneError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Wraps an API error with what was being done, and for which object.
    pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Api { what, source }
    }
}

/// Result of the control-plane harness.
pub type Result<T, E = ControlPlaneError> = std::result::Result<T, E>;
