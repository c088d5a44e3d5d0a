//! The admin kubeconfig of a test control plane, for kube-rs and for the real kubectl.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::certs::{CertFiles, write_private};
use super::error::{ControlPlaneError, Result};

/// Name of the cluster, user and context in the kubeconfig.
pub const CONTEXT: &str = "egressgw-test";

/// Writes `kubeconfig` in `dir` (certificates as files beside it) and returns its path.
pub fn write(dir: &Path, server: &str, certs: &CertFiles) -> Result<PathBuf> {
    let admin_cert = dir.join("admin.crt");
    let admin_key = dir.join("admin.key");
    write_private(&admin_cert, &certs.admin_cert_pem)?;
    write_private(&admin_key, &certs.admin_key_pem)?;
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {CONTEXT}\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n\
         - name: {CONTEXT}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
         contexts:\n\
         - name: {CONTEXT}\n  context:\n    cluster: {CONTEXT}\n    user: {CONTEXT}\n\
         current-context: {CONTEXT}\n",
        ca = certs.ca_cert.display(),
        cert = admin_cert.display(),
        key = admin_key.display(),
    );
    write_private(&path, &text)?;
    Ok(path)
}

/// A kube-rs client for the kubeconfig at `path`.
pub async fn client(path: &Path) -> Result<kube::Client> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| ControlPlaneError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| failed(Box::new(e)))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| failed(Box::new(e)))?;
    kube::Client::try_from(config).map_err(|e| failed(Box::new(e)))
}
