//! Parsed gateways kept between rebuilds: a gateway is parsed (and its spec re-validated)
//! again only when its resourceVersion changed, so rebuilding the map of 500 gateways after
//! one status write parses one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::api::EgressGateway;

use super::Gateway;

#[derive(Debug, Default)]
pub struct GatewayCache {
    /// Name to the resourceVersion parsed and the result.
    parsed: HashMap<String, (Option<String>, Gateway)>,
}

impl GatewayCache {
    /// The gateways as the planner sees them (those being deleted left out).
    pub fn build(&mut self, objects: &[Arc<EgressGateway>]) -> BTreeMap<String, Gateway> {
        let mut out = BTreeMap::new();
        let mut parsed = HashMap::with_capacity(objects.len());
        for g in objects {
            if g.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(name) = g.metadata.name.as_ref() else {
                continue;
            };
            let rv = &g.metadata.resource_version;
            let entry = match self.parsed.remove(name) {
                Some((old_rv, gw)) if rv.is_some() && old_rv == *rv => Some((old_rv, gw)),
                old => Gateway::from_kube(g).map(|mut gw| {
                    if gw.spec.is_err() {
                        // Fail closed: keep selecting (and blocking) by the last valid spec.
                        gw.fallback = old.and_then(|(_, o)| o.effective_spec().cloned());
                    }
                    (rv.clone(), gw)
                }),
            };
            if let Some((rv, gw)) = entry {
                out.insert(name.clone(), gw.clone());
                parsed.insert(name.clone(), (rv, gw));
            }
        }
        self.parsed = parsed;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(name: &str, rv: &str, ip: &str) -> Arc<EgressGateway> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "egressgw.io/v1alpha1", "kind": "EgressGateway",
                "metadata": { "name": name, "resourceVersion": rv },
                "spec": { "podSelector": {}, "namespaceSelector": {}, "destinationCIDRs": ["203.0.113.0/24"],
                    "egressIPs": [ip], "gatewayNodeSelector": {} }
            }))
            .unwrap(),
        )
    }

    #[test]
    fn an_invalid_spec_keeps_the_last_valid_one_as_fallback() {
        let mut c = GatewayCache::default();
        c.build(&[gw("a", "1", "198.18.0.200")]);
        let bad = c.build(&[gw("a", "2", "not-an-ip")]);
        assert!(bad["a"].spec.is_err());
        let fb = bad["a"].effective_spec().expect("fallback kept");
        assert_eq!(
            fb.egress_ips,
            vec!["198.18.0.200".parse::<std::net::IpAddr>().unwrap()]
        );
        // still invalid at the next version: the fallback stays
        let worse = c.build(&[gw("a", "3", "also-bad")]);
        assert!(worse["a"].effective_spec().is_some());
        // valid again: no fallback
        let good = c.build(&[gw("a", "4", "198.18.0.201")]);
        assert!(good["a"].fallback.is_none());
        // a gateway first seen invalid has nothing to fall back to
        let mut fresh = GatewayCache::default();
        assert!(
            fresh.build(&[gw("b", "1", "x")])["b"]
                .effective_spec()
                .is_none()
        );
    }

    #[test]
    fn a_changed_version_is_parsed_again_and_a_gone_gateway_is_dropped() {
        let mut c = GatewayCache::default();
        let a = c.build(&[gw("a", "1", "198.18.0.200"), gw("b", "1", "198.18.0.201")]);
        assert_eq!(a.len(), 2);
        let b = c.build(&[gw("a", "2", "198.18.0.202")]);
        assert_eq!(b.len(), 1);
        assert_eq!(
            b["a"].spec.as_ref().unwrap().egress_ips,
            vec!["198.18.0.202".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(
            b["a"],
            Gateway::from_kube(&gw("a", "2", "198.18.0.202")).unwrap()
        );
    }
}
