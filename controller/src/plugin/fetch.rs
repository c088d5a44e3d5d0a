//! The plugin's I/O: a client built the way kubectl builds one, and the reads each command
//! needs, with their errors classified.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node as KubeNode, Pod as KubePod};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;

use super::cli::Connection;
use super::error::PluginError;
use crate::api::EgressGateway;
use crate::k8s::names::{AGENT_LEASE_NAMESPACE, LABEL_AGENT_NODE};

/// Give up connecting after this long (a wrong or unreachable context).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Give up on one response after this long.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A client and the namespace of the chosen context.
pub struct Cluster {
    pub client: Client,
    pub default_namespace: String,
}

/// Build a client: `--kubeconfig` if given, else `$KUBECONFIG` / `~/.kube/config` (then
/// in-cluster); `--context` picks the context; `--as`/`--as-group` impersonate.
pub async fn connect(conn: &Connection) -> Result<Cluster, PluginError> {
    let options = KubeConfigOptions {
        context: conn.context.clone(),
        ..Default::default()
    };
    let err = |source| PluginError::Kubeconfig {
        context: conn.context.clone(),
        source: Box::new(source),
    };
    let mut config = match (&conn.kubeconfig, &conn.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(err)?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options).await.map_err(err)?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| PluginError::Infer(Box::new(e)))?,
    };
    if conn.impersonate.is_some() {
        config.auth_info.impersonate = conn.impersonate.clone();
    }
    if !conn.impersonate_groups.is_empty() {
        config.auth_info.impersonate_groups = Some(conn.impersonate_groups.clone());
    }
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| PluginError::Client(Box::new(e)))?;
    Ok(Cluster {
        client,
        default_namespace,
    })
}

/// `resource.group` the way kubectl names it in errors.
fn resource_name<K: Resource<DynamicType = ()>>() -> String {
    let group = K::group(&());
    let plural = K::plural(&());
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

async fn list<K>(
    api: Api<K>,
    params: &ListParams,
    namespace: Option<&str>,
    custom: bool,
) -> Result<Vec<K>, PluginError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.list(params)
        .await
        .map(|l| l.items)
        .map_err(|e| PluginError::from_api("list", &resource_name::<K>(), namespace, e, custom))
}

/// Every EgressGateway.
pub async fn gateways(client: &Client) -> Result<Vec<EgressGateway>, PluginError> {
    list(
        Api::<EgressGateway>::all(client.clone()),
        &ListParams::default(),
        None,
        true,
    )
    .await
}

/// Every Node.
pub async fn nodes(client: &Client) -> Result<Vec<KubeNode>, PluginError> {
    list(
        Api::<KubeNode>::all(client.clone()),
        &ListParams::default(),
        None,
        false,
    )
    .await
}

/// Every Namespace.
pub async fn namespaces(client: &Client) -> Result<Vec<Namespace>, PluginError> {
    list(
        Api::<Namespace>::all(client.clone()),
        &ListParams::default(),
        None,
        false,
    )
    .await
}

/// The agents' Leases (their heartbeats and interface reports).
pub async fn agent_leases(client: &Client) -> Result<Vec<Lease>, PluginError> {
    let params = ListParams::default().labels(LABEL_AGENT_NODE);
    list(
        Api::<Lease>::namespaced(client.clone(), AGENT_LEASE_NAMESPACE),
        &params,
        Some(AGENT_LEASE_NAMESPACE),
        false,
    )
    .await
}

/// One pod.
pub async fn pod(client: &Client, namespace: &str, name: &str) -> Result<KubePod, PluginError> {
    let api = Api::<KubePod>::namespaced(client.clone(), namespace);
    match api.get(name).await {
        Ok(p) => Ok(p),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(PluginError::PodNotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        Err(e) => Err(PluginError::from_api(
            "get",
            "pods",
            Some(namespace),
            e,
            false,
        )),
    }
}
