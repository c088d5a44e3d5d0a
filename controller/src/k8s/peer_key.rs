//! The agents' peer key: the controller creates the Secret once, with random bytes, if it
//! does not exist; agents read it at start (RBAC `get` on that one name) and keep it in
//! memory, so the peer channel works while the apiserver is down. Rotating it: delete the
//! Secret and restart the controller, then the agents (docs/security.md).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

use crate::agent::peers::{PEER_KEY_BYTES, PEER_KEY_FIELD, PEER_KEY_SECRET};

#[derive(Debug, Error)]
pub enum PeerKeyError {
    #[error("creating secret {namespace}/{PEER_KEY_SECRET}: {source}")]
    Api {
        namespace: String,
        source: kube::Error,
    },
    #[error("no system randomness for the peer key")]
    Random,
}

/// Create the peer key Secret unless it exists. Returns whether it was created.
pub async fn ensure(client: Client, namespace: &str) -> Result<bool, PeerKeyError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let err = |source| PeerKeyError::Api {
        namespace: namespace.into(),
        source,
    };
    if api.get_opt(PEER_KEY_SECRET).await.map_err(err)?.is_some() {
        return Ok(false);
    }
    let mut key = vec![0u8; PEER_KEY_BYTES];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| PeerKeyError::Random)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(PEER_KEY_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".into(),
                "egressgw".into(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(PEER_KEY_FIELD.into(), ByteString(key))])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(true),
        // Another replica was first.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(err(e)),
    }
}
