//! Where the control-plane binaries and kubectl are: the same version-keyed cache folder that
//! `hack/control-plane/build.sh` writes, computed from the same pinned `go.mod` files.

use std::path::{Path, PathBuf};

use super::error::{ControlPlaneError, Result};

/// Overrides the folder holding `kube-apiserver` and `etcd`.
pub const CONTROL_PLANE_DIR_ENV: &str = "EGRESSGW_CONTROL_PLANE_DIR";
/// Overrides the cache root (default `$HOME/.cache/egressgw`), as in build.sh.
pub const CACHE_ENV: &str = "EGRESSGW_CACHE";
/// Overrides the kubectl binary the harness runs.
pub const KUBECTL_ENV: &str = "EGRESSGW_KUBECTL";

/// The kube-apiserver binary's file name.
pub const APISERVER_BINARY: &str = "kube-apiserver";
/// The etcd binary's file name.
pub const ETCD_BINARY: &str = "etcd";
/// The kube-proxy binary's file name (built beside kube-apiserver from the same
/// `k8s.io/kubernetes` release; the simulated nodes run it, [`crate::sim`]).
pub const KUBE_PROXY_BINARY: &str = "kube-proxy";

const KUBERNETES_MODULE: &str = "k8s.io/kubernetes";
const ETCD_MODULE: &str = "go.etcd.io/etcd/server/v3";
/// Preferred kubectl builds, best first: 1.33 is within the supported skew of kube-apiserver
/// 1.34 (one minor older); the Google Cloud SDK ships versioned kubectls beside its `kubectl`.
const PREFERRED_KUBECTLS: &[&str] = &["kubectl.1.34", "kubectl.1.33"];

/// The repository root (the workspace holding this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The folder of the pinned wrapper modules.
fn modules_dir() -> PathBuf {
    repo_root().join("hack").join("control-plane")
}

/// The pinned versions of the control plane, read from the wrapper modules' `go.mod`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedVersions {
    /// `k8s.io/kubernetes`, e.g. `v1.34.4`.
    pub kubernetes: String,
    /// `go.etcd.io/etcd/server/v3`, e.g. `v3.6.16`.
    pub etcd: String,
}

impl PinnedVersions {
    /// Reads both versions from `hack/control-plane/{kube-apiserver,etcd}/go.mod`.
    pub fn read() -> Result<Self> {
        let dir = modules_dir();
        Ok(Self {
            kubernetes: required_version(
                &dir.join(APISERVER_BINARY).join("go.mod"),
                KUBERNETES_MODULE,
            )?,
            etcd: required_version(&dir.join(ETCD_BINARY).join("go.mod"), ETCD_MODULE)?,
        })
    }

    /// The cache sub-folder name: `<k8s-version>-<etcd-version>`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.kubernetes, self.etcd)
    }
}

/// The version a `go.mod` requires for `module` (single-line or block `require`).
fn required_version(go_mod: &Path, module: &'static str) -> Result<String> {
    let text = std::fs::read_to_string(go_mod).map_err(ControlPlaneError::io(format!(
        "reading {}",
        go_mod.display()
    )))?;
    parse_required_version(&text, module).ok_or_else(|| ControlPlaneError::PinnedVersion {
        module,
        path: go_mod.to_path_buf(),
    })
}

fn parse_required_version(go_mod: &str, module: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["require", m, v, ..] | [m, v, ..] if *m == module && v.starts_with('v') => {
                Some((*v).to_string())
            }
            _ => None,
        }
    })
}

/// Paths of the control-plane binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
    /// Where kube-proxy is expected; only tests that run it need it ([`Binaries::kube_proxy`]
    /// checks it is there).
    pub kube_proxy: PathBuf,
}

impl Binaries {
    /// Finds the binaries built by `make control-plane`, or in `$EGRESSGW_CONTROL_PLANE_DIR`.
    /// kube-apiserver and etcd must be there; kube-proxy is checked by [`Binaries::kube_proxy`].
    pub fn locate() -> Result<Self> {
        let dir = match std::env::var_os(CONTROL_PLANE_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => cache_root()
                .join("control-plane")
                .join(PinnedVersions::read()?.key()),
        };
        let found = Self {
            kube_apiserver: dir.join(APISERVER_BINARY),
            etcd: dir.join(ETCD_BINARY),
            kube_proxy: dir.join(KUBE_PROXY_BINARY),
        };
        for (binary, path) in [
            (APISERVER_BINARY, &found.kube_apiserver),
            (ETCD_BINARY, &found.etcd),
        ] {
            if !is_executable(path) {
                return Err(ControlPlaneError::BinaryMissing {
                    binary,
                    path: path.clone(),
                });
            }
        }
        Ok(found)
    }

    /// The kube-proxy binary, failing when `make control-plane` has not built it yet.
    pub fn kube_proxy(&self) -> Result<&Path> {
        if is_executable(&self.kube_proxy) {
            Ok(&self.kube_proxy)
        } else {
            Err(ControlPlaneError::BinaryMissing {
                binary: KUBE_PROXY_BINARY,
                path: self.kube_proxy.clone(),
            })
        }
    }

    /// [`Binaries::locate`], then [`Binaries::kube_proxy`]: the kube-proxy to run.
    pub fn locate_kube_proxy() -> Result<PathBuf> {
        Ok(Self::locate()?.kube_proxy()?.to_path_buf())
    }
}

/// `$EGRESSGW_CACHE`, else `$HOME/.cache/egressgw` (as build.sh).
fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("egressgw")
}

/// The kubectl to run: `$EGRESSGW_KUBECTL`, else a 1.34/1.33 build beside (the real path of)
/// `kubectl` on the PATH, else that `kubectl`.
pub fn locate_kubectl() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(KUBECTL_ENV) {
        return Ok(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("kubectl"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| is_executable(p));
    let Some(on_path) = on_path else {
        return Err(ControlPlaneError::KubectlMissing {
            looked_for: format!("${KUBECTL_ENV}, kubectl on the PATH"),
        });
    };
    let beside = std::fs::canonicalize(&on_path)
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf));
    let preferred = beside.and_then(|dir| {
        PREFERRED_KUBECTLS
            .iter()
            .map(|name| dir.join(name))
            .find(|p| is_executable(p))
    });
    Ok(preferred.unwrap_or(on_path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_single_line_and_block_requires() {
        let single = "module x\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes v1.34.4\n";
        assert_eq!(
            parse_required_version(single, KUBERNETES_MODULE).as_deref(),
            Some("v1.34.4")
        );
        let block = "require (\n\tgo.etcd.io/etcd/server/v3 v3.6.16\n\tgo.etcd.io/bbolt v1.4.3 // indirect\n)\n";
        assert_eq!(
            parse_required_version(block, ETCD_MODULE).as_deref(),
            Some("v3.6.16")
        );
        let replace_only = "replace (\n\tk8s.io/api => k8s.io/api v0.34.4\n)\n";
        assert_eq!(parse_required_version(replace_only, "k8s.io/api"), None);
    }

    #[test]
    fn the_pinned_modules_name_both_versions() {
        let v = PinnedVersions::read().expect("hack/control-plane go.mod files");
        assert!(v.kubernetes.starts_with("v1."), "{v:?}");
        assert!(v.etcd.starts_with("v3."), "{v:?}");
    }

    /// kube-proxy lives in the folder keyed by the apiserver's version, so its wrapper module
    /// must pin the same Kubernetes release (build.sh refuses otherwise).
    #[test]
    fn kube_proxy_is_pinned_to_the_apiserver_release() {
        let v = PinnedVersions::read().expect("hack/control-plane go.mod files");
        let proxy = required_version(
            &modules_dir().join(KUBE_PROXY_BINARY).join("go.mod"),
            KUBERNETES_MODULE,
        )
        .expect("hack/control-plane/kube-proxy/go.mod");
        assert_eq!(proxy, v.kubernetes);
    }
}
