//! The `egressgw.io/agent-not-ready:NoSchedule` taint: a node whose agent is not live gets no
//! new pods (as Cilium's agent-not-ready taint). The controller adds it when it judges an
//! agent dead; the agent removes it once it has applied its plan. Written with a JSON patch
//! that tests the resourceVersion, so a concurrent change of the node's taints is never lost.

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use thiserror::Error;

use super::names::TAINT_AGENT_NOT_READY;

/// The effect of our taint.
pub const TAINT_EFFECT: &str = "NoSchedule";

#[derive(Debug, Error)]
pub enum TaintError {
    #[error("node {node}: {action} the {TAINT_AGENT_NOT_READY} taint: {source}")]
    Api {
        node: String,
        action: &'static str,
        source: kube::Error,
    },
    #[error("node {node}: encoding the taint patch: {source}")]
    Encode {
        node: String,
        source: serde_json::Error,
    },
}

/// Whether `taints` carry ours.
pub fn has_ours(taints: &[Taint]) -> bool {
    taints
        .iter()
        .any(|t| t.key == TAINT_AGENT_NOT_READY && t.effect == TAINT_EFFECT)
}

/// The node's taints with ours present or absent, or `None` when they already are so.
pub fn toggled(taints: &[Taint], present: bool) -> Option<Vec<Taint>> {
    if has_ours(taints) == present {
        return None;
    }
    let mut out: Vec<Taint> = taints
        .iter()
        .filter(|t| t.key != TAINT_AGENT_NOT_READY)
        .cloned()
        .collect();
    if present {
        out.push(Taint {
            key: TAINT_AGENT_NOT_READY.into(),
            effect: TAINT_EFFECT.into(),
            ..Default::default()
        });
    }
    Some(out)
}

/// Add (`present`) or remove our taint on `node`. Returns whether it changed anything; a
/// conflict (someone changed the node meanwhile) is an error, and the caller retries later.
pub async fn set(client: Client, node: &str, present: bool) -> Result<bool, TaintError> {
    let action = if present { "adding" } else { "removing" };
    let err = |source| TaintError::Api {
        node: node.into(),
        action,
        source,
    };
    let api: Api<Node> = Api::all(client);
    let current = api.get(node).await.map_err(err)?;
    let taints = current
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let Some(new) = toggled(&taints, present) else {
        return Ok(false);
    };
    let patch = serde_json::json!([
        { "op": "test", "path": "/metadata/resourceVersion", "value": current.metadata.resource_version },
        { "op": "add", "path": "/spec/taints", "value": new },
    ]);
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|source| TaintError::Encode {
            node: node.into(),
            source,
        })?;
    api.patch(node, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: TAINT_EFFECT.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ours_is_added_and_removed_leaving_the_others() {
        let others = vec![taint("node.kubernetes.io/not-ready")];
        let added = toggled(&others, true).unwrap();
        assert!(has_ours(&added));
        assert_eq!(added[0], others[0]);
        assert_eq!(toggled(&added, true), None);
        let removed = toggled(&added, false).unwrap();
        assert_eq!(removed, others);
        assert_eq!(toggled(&removed, false), None);
    }
}
