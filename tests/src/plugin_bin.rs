//! The `kubectl-egress` binary for tests, and kubeconfigs that act as someone else (a
//! component's ServiceAccount, a user without rights) through impersonation.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result, bail};

use crate::control_plane::ControlPlane;

/// Overrides the plugin binary the tests run.
pub const PLUGIN_BIN_ENV: &str = "EGRESSGW_PLUGIN_BIN";
/// The plugin's file name (kubectl finds `kubectl-egress` on the PATH as `kubectl egress`).
pub const PLUGIN_BINARY: &str = "kubectl-egress";

/// `target/<profile>/kubectl-egress`, beside the test executable's folder, or
/// `$EGRESSGW_PLUGIN_BIN`.
pub fn plugin_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var(PLUGIN_BIN_ENV) {
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
    let bin = dir.join(PLUGIN_BINARY);
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build -p egressgw --bins` first (make test does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `kubectl-egress <args>` with `env` set and `$KUBECONFIG`/`$HOME` pointing nowhere
/// unless `env` sets them, so only what the test passes is used.
pub fn run_plugin(args: &[&str], env: &[(&str, &Path)]) -> Result<Output> {
    let mut cmd = std::process::Command::new(plugin_binary()?);
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().context("running kubectl-egress")
}

/// A copy of the control plane's admin kubeconfig, next to it, that impersonates `user`
/// (`as:`), e.g. `system:serviceaccount:egressgw-system:egressgw-controller`. The admin may
/// impersonate anyone; the apiserver then authorizes every request as `user`.
pub fn kubeconfig_as(cp: &ControlPlane, user: &str) -> Result<PathBuf> {
    kubeconfig_as_with(cp, user, &[])
}

/// As [`kubeconfig_as`], with user extras (`as-user-extra`), e.g. the node a ServiceAccount
/// token was bound to (`authentication.kubernetes.io/node-name`).
pub fn kubeconfig_as_with(
    cp: &ControlPlane,
    user: &str,
    extra: &[(&str, &str)],
) -> Result<PathBuf> {
    let text = std::fs::read_to_string(cp.kubeconfig())?;
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let users = doc
        .get_mut("users")
        .and_then(|u| u.as_sequence_mut())
        .context("kubeconfig without users")?;
    for u in users {
        let auth = u
            .get_mut("user")
            .and_then(|a| a.as_mapping_mut())
            .context("kubeconfig user without credentials")?;
        auth.insert("as".into(), user.into());
        if !extra.is_empty() {
            let mut m = serde_yaml::Mapping::new();
            for (k, v) in extra {
                m.insert((*k).into(), serde_yaml::Value::Sequence(vec![(*v).into()]));
            }
            auth.insert("as-user-extra".into(), serde_yaml::Value::Mapping(m));
        }
    }
    let tag: String = extra.iter().map(|(_, v)| format!("-{v}")).collect();
    let safe: String = format!("{user}{tag}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = cp.dir().join(format!("kubeconfig-as-{safe}"));
    std::fs::write(&path, serde_yaml::to_string(&doc)?)?;
    Ok(path)
}
