//! What the agent reports as programmed in its Lease: the plan digest of every gateway this
//! node acts for — except a gateway with an egress IP the node cannot hold because the address
//! is already there and not ours (see [`crate::dataplane::ownership`]). Left out, the gateway
//! stays `Programmed=False` (pending on this node) instead of claiming what the kernel lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use crate::plan::NodePlan;

/// Gateway -> digest of what was committed, without the gateways refused an egress IP here.
pub fn digests(plan: &NodePlan, foreign: &BTreeSet<Ipv4Addr>) -> BTreeMap<String, u64> {
    let refused: BTreeSet<&str> = plan
        .hosted
        .iter()
        .filter(|(ip, _)| matches!(ip, IpAddr::V4(v) if foreign.contains(v)))
        .map(|(_, h)| h.gateway.as_str())
        .collect();
    plan.gateway_names()
        .into_iter()
        .filter(|g| !refused.contains(g))
        .map(|g| (g.to_string(), plan.gateway_digest(g)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::HostedIp;

    #[test]
    fn a_gateway_refused_its_egress_ip_is_not_reported_programmed() {
        let mut plan = NodePlan::empty("node-2");
        for (ip, gateway) in [("198.18.0.200", "billing"), ("198.18.0.201", "payroll")] {
            plan.hosted.insert(
                ip.parse().unwrap(),
                HostedIp {
                    gateway: gateway.into(),
                    interface: "eth0".into(),
                },
            );
        }
        let all = digests(&plan, &BTreeSet::new());
        assert_eq!(all.keys().collect::<Vec<_>>(), ["billing", "payroll"]);
        let foreign = BTreeSet::from(["198.18.0.200".parse().unwrap()]);
        let some = digests(&plan, &foreign);
        assert_eq!(some.keys().collect::<Vec<_>>(), ["payroll"]);
        assert_eq!(some["payroll"], all["payroll"]);
    }
}
