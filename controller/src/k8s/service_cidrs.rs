//! The cluster's Service ranges, which every gateway excludes automatically: the ServiceCIDR
//! objects (`networking.k8s.io/v1`, Kubernetes 1.33+) and the ranges given by
//! `--service-cidr`. The watch is never waited for: on an apiserver without the API it
//! retries in the background and the flag is what counts.

use std::sync::Arc;

use crate::k8s::watch::watch_config;
use ipnetwork::IpNetwork;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::{Api, Client};
use tokio::sync::Notify;

use super::watch::{Reflected, reflect};

/// Watch the ServiceCIDR objects, waking `notify` on every change.
pub fn watch(client: Client, notify: Arc<Notify>) -> Reflected<ServiceCIDR> {
    reflect(
        Api::<ServiceCIDR>::all(client),
        watch_config(),
        notify,
        |_| {},
    )
}

/// The ranges of `objects` (those being deleted too: their addresses may still be in use)
/// and `extra`, sorted, without duplicates.
pub fn ranges(objects: &[Arc<ServiceCIDR>], extra: &[IpNetwork]) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = objects
        .iter()
        .filter_map(|o| o.spec.as_ref()?.cidrs.as_ref())
        .flatten()
        .filter_map(|c| c.parse().ok())
        .chain(extra.iter().copied())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_flags_merge() {
        let o: ServiceCIDR = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "kubernetes" },
            "spec": { "cidrs": ["198.18.192.0/20", "fd00::/108", "bad"] }
        }))
        .unwrap();
        let extra: IpNetwork = "198.18.192.0/20".parse().unwrap();
        let got = ranges(&[Arc::new(o)], &[extra]);
        assert_eq!(got, vec![extra, "fd00::/108".parse::<IpNetwork>().unwrap()]);
    }
}
