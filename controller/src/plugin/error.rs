//! What can go wrong talking to the cluster, said the way a kubectl user needs to hear it.

use thiserror::Error;

use crate::api::GROUP;

/// Errors of `kubectl egress`.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("cannot load kubeconfig{}: {source}", context_suffix(.context))]
    Kubeconfig {
        context: Option<String>,
        source: Box<kube::config::KubeconfigError>,
    },
    #[error(
        "cannot find a Kubernetes config (no $KUBECONFIG, ~/.kube/config or in-cluster service account): {0}"
    )]
    Infer(#[source] Box<kube::config::InferConfigError>),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] Box<kube::Error>),
    #[error(
        "the EgressGateway API ({GROUP}) is not installed in this cluster: the server has no {resource}. \
         Install egressgw (kubectl apply -k deploy/, see docs/install.md) or check --context"
    )]
    CrdMissing { resource: String },
    #[error(
        "access denied: cannot {verb} {resource}{}: {message}. Ask a cluster admin for read access \
         (the ClusterRole egressgw-view grants it for EgressGateways; explain also needs nodes, namespaces, \
         pods and the Leases in egressgw-system)",
        namespace_suffix(.namespace)
    )]
    Forbidden {
        verb: &'static str,
        resource: String,
        namespace: Option<String>,
        message: String,
    },
    #[error("pod {namespace}/{name} not found")]
    PodNotFound { namespace: String, name: String },
    #[error("cannot {verb} {resource}{}: {source}", namespace_suffix(.namespace))]
    Api {
        verb: &'static str,
        resource: String,
        namespace: Option<String>,
        source: Box<kube::Error>,
    },
    #[error("--destination {value:?} is not a CIDR (write e.g. 203.0.113.0/24)")]
    BadDestination { value: String },
    #[error("--nft-table {value:?} must be a family and a table name, e.g. \"inet filter\"")]
    BadNftTable { value: String },
    #[error("cannot encode the output as {format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
}

fn context_suffix(context: &Option<String>) -> String {
    context
        .as_ref()
        .map(|c| format!(" (context {c:?})"))
        .unwrap_or_default()
}

fn namespace_suffix(namespace: &Option<String>) -> String {
    namespace
        .as_ref()
        .map(|n| format!(" in namespace {n}"))
        .unwrap_or_default()
}

impl PluginError {
    /// Classify an API error of `verb resource`: a missing API group and a denied request get
    /// their own messages; everything else keeps the server's words.
    pub fn from_api(
        verb: &'static str,
        resource: &str,
        namespace: Option<&str>,
        source: kube::Error,
        is_custom: bool,
    ) -> Self {
        let namespace = namespace.map(str::to_string);
        if let kube::Error::Api(status) = &source {
            match status.code {
                404 if is_custom => {
                    return Self::CrdMissing {
                        resource: resource.to_string(),
                    };
                }
                403 => {
                    return Self::Forbidden {
                        verb,
                        resource: resource.to_string(),
                        namespace,
                        message: status.message.clone(),
                    };
                }
                _ => {}
            }
        }
        Self::Api {
            verb,
            resource: resource.to_string(),
            namespace,
            source: Box::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, "x").with_code(code).boxed())
    }

    #[test]
    fn a_missing_group_says_the_crd_is_not_installed() {
        let e = PluginError::from_api(
            "list",
            "egressgateways.egressgw.io",
            None,
            api_error(404, "404 page not found"),
            true,
        );
        let text = e.to_string();
        assert!(matches!(e, PluginError::CrdMissing { .. }));
        assert!(
            text.contains("not installed") && text.contains("egressgw.io"),
            "{text}"
        );
    }

    #[test]
    fn a_denied_request_names_verb_resource_and_namespace() {
        let e = PluginError::from_api(
            "list",
            "leases",
            Some("egressgw-system"),
            api_error(403, "user \"bob\" cannot list"),
            false,
        );
        let text = e.to_string();
        assert!(
            text.starts_with("access denied: cannot list leases in namespace egressgw-system"),
            "{text}"
        );
        assert!(text.contains("user \"bob\" cannot list"), "{text}");
    }

    #[test]
    fn a_404_on_a_builtin_resource_is_not_a_missing_crd() {
        let e = PluginError::from_api(
            "get",
            "pods",
            Some("x"),
            api_error(404, "pods \"p\" not found"),
            false,
        );
        assert!(matches!(e, PluginError::Api { .. }));
    }
}
