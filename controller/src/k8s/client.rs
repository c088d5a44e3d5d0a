//! Building a Kubernetes client from an explicit kubeconfig or the usual defaults.

use std::path::Path;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use thiserror::Error;

use super::watch::{LEASE_WATCH_TIMEOUT_SECS, WATCH_TIMEOUT_SECS};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot infer a Kubernetes config (in-cluster or $KUBECONFIG): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// How much longer than a watch's server-side timeout a read may wait for bytes.
const READ_TIMEOUT_MARGIN: Duration = Duration::from_secs(15);

/// The read timeout of every client: a response (a watch included: the apiserver ends each
/// after [`WATCH_TIMEOUT_SECS`]) that sends nothing for this long is on a dead connection. A
/// silently stalled connection (the apiserver's machine lost without a reset) otherwise hangs
/// a request forever, and a re-watch after kube-runtime's idle timeout may be handed another
/// such connection from the pool.
pub fn default_read_timeout() -> Duration {
    Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + READ_TIMEOUT_MARGIN
}

/// The read timeout of a client that only watches with [`LEASE_WATCH_TIMEOUT_SECS`]: the
/// controller's agent Lease watch, which must see a stall in seconds, not a minute.
pub fn lease_watch_read_timeout() -> Duration {
    Duration::from_secs(u64::from(LEASE_WATCH_TIMEOUT_SECS)) + Duration::from_secs(5)
}

/// A client from `kubeconfig` if given, else in-cluster or `$KUBECONFIG`/`~/.kube/config`,
/// with [`default_read_timeout`].
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    client_with_read_timeout(kubeconfig, default_read_timeout()).await
}

/// As [`client`], with `read_timeout` counted from each request sent (not from when its
/// pooled connection went idle).
pub async fn client_with_read_timeout(
    kubeconfig: Option<&Path>,
    read_timeout: Duration,
) -> Result<Client, ClientError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let err = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => Config::infer().await?,
    };
    config.read_timeout = Some(read_timeout);
    config.reset_reader_on_write = true;
    Ok(Client::try_from(config)?)
}
