//! Installing the project's CustomResourceDefinitions from `crds/`.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};

use super::ControlPlane;
use super::binaries::repo_root;
use super::error::{ControlPlaneError, Result};

/// Folder of the generated CRDs, relative to the repository root.
pub const CRD_DIR: &str = "crds";
/// Field manager of the harness's server-side applies.
pub const TEST_FIELD_MANAGER: &str = "egressgw-tests";
/// How long a CRD may take to become Established.
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);

impl ControlPlane {
    /// [`ControlPlane::start`], then [`ControlPlane::install_crds`].
    pub async fn start_with_crds() -> Result<Self> {
        let control_plane = Self::start().await?;
        control_plane.install_crds().await?;
        Ok(control_plane)
    }

    /// Applies every `crds/*.yaml` (server-side) and waits until each is Established.
    /// Returns the installed CRD names.
    pub async fn install_crds(&self) -> Result<Vec<String>> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        let mut names = Vec::new();
        for path in crd_files()? {
            let text = std::fs::read_to_string(&path)
                .map_err(ControlPlaneError::io(format!("reading {}", path.display())))?;
            let crd: CustomResourceDefinition =
                serde_yaml::from_str(&text).map_err(|source| ControlPlaneError::Manifest {
                    path: path.clone(),
                    source,
                })?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply(TEST_FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .map_err(ControlPlaneError::api(format!(
                "applying CRD {name} from {}",
                path.display()
            )))?;
            names.push(name);
        }
        for name in &names {
            let established = await_condition(api.clone(), name, conditions::is_crd_established());
            match tokio::time::timeout(ESTABLISHED_TIMEOUT, established).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(ControlPlaneError::Timeout {
                        what: format!("CRD {name} to become Established ({e})"),
                        waited: ESTABLISHED_TIMEOUT,
                    });
                }
                Err(_) => {
                    return Err(ControlPlaneError::Timeout {
                        what: format!("CRD {name} to become Established"),
                        waited: ESTABLISHED_TIMEOUT,
                    });
                }
            }
        }
        // kubectl may have cached discovery from before the CRDs existed.
        let cache = self.kubectl_cache_dir();
        if cache.exists() {
            std::fs::remove_dir_all(&cache).map_err(ControlPlaneError::io(format!(
                "clearing {}",
                cache.display()
            )))?;
        }
        Ok(names)
    }
}

/// `crds/*.yaml`, sorted.
fn crd_files() -> Result<Vec<PathBuf>> {
    let dir = repo_root().join(CRD_DIR);
    let entries = std::fs::read_dir(&dir)
        .map_err(ControlPlaneError::io(format!("listing {}", dir.display())))?;
    let mut files = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(ControlPlaneError::io(format!("listing {}", dir.display())))?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    Ok(files)
}
