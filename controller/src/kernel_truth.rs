//! Status tells the kernel truth (pure): what the agents report their kernels hold
//! ([`crate::dataplane::truth::KernelReport`] in their Leases), judged against the plan.
//!
//! A gateway's part of a node's kernel that differs from the plan — an egress IP absent
//! from the node (an address egressgw did not add occupies it, an add failed), set elements
//! or rules missing or extra — is a difference. The drift monitor repairs most within tens of
//! milliseconds; status says `Programmed=False, KernelDiffers` only for a difference that
//! lasted longer than [`KERNEL_DIFFERS_BOUND`], by the controller's own clock (when it first
//! saw the report), so a repair never flaps the condition and no two clocks are compared.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::dataplane::truth::GatewayDifference;
use crate::k8s::lease::AgentReport;
use crate::plan::ClusterPlan;

/// How long a node's kernel may differ from the plan before status says so.
pub const KERNEL_DIFFERS_BOUND: Duration = Duration::from_secs(2);

/// A gateway and a node.
pub type GatewayNode = (String, String);

/// What `d` says differs, in words ("egress IP 198.18.0.201 is held by an address egressgw
/// did not add on eth0; 40 of 42 set elements").
pub fn describe(d: &GatewayDifference) -> String {
    let mut parts = Vec::new();
    for ip in &d.missing {
        parts.push(match d.foreign.get(ip) {
            Some(interface) => format!(
                "egress IP {ip} is absent: an address egressgw did not add holds it on {interface}"
            ),
            None => format!("egress IP {ip} is absent from the node"),
        });
    }
    for nh in &d.unsteered {
        parts.push(format!(
            "pods steered to {nh} are dropped: no steering route to the next hop (its interface down, not on-link, or no free mark slot)"
        ));
    }
    if d.elements != d.want_elements {
        parts.push(format!(
            "the kernel holds {} of {} set elements",
            d.elements, d.want_elements
        ));
    }
    if d.rules != d.want_rules {
        parts.push(format!(
            "the kernel holds {} of {} rules",
            d.rules, d.want_rules
        ));
    }
    if d.table_differs && d.elements == d.want_elements && d.rules == d.want_rules {
        parts.push("set elements or rules differ".to_string());
    }
    parts.join("; ")
}

/// What differs now, for every gateway on every node with a live agent (`live`) that acts
/// for it in `plan`, from the agents' reports.
pub fn differences(
    plan: &ClusterPlan,
    reports: &BTreeMap<String, AgentReport>,
    live: impl Fn(&str) -> bool,
) -> BTreeMap<GatewayNode, String> {
    let mut out = BTreeMap::new();
    for (node, report) in reports {
        let Some(kernel) = report.kernel.as_ref().filter(|_| live(node)) else {
            continue;
        };
        if kernel.differs.is_empty() && !kernel.truncated {
            continue;
        }
        // Only the listed gateways can differ, unless the list was cut.
        let candidates: Box<dyn Iterator<Item = &String>> = if kernel.truncated {
            Box::new(plan.rollouts.keys())
        } else {
            Box::new(kernel.differs.keys())
        };
        for gateway in candidates {
            if !plan.nodes_for(gateway).contains(node.as_str()) {
                continue;
            }
            let what = match kernel.differs.get(gateway) {
                Some(d) => describe(d),
                None if kernel.unknown(gateway) => {
                    "the kernel differs for more gateways than the agent's report can list"
                        .to_string()
                }
                None => continue,
            };
            out.insert((gateway.clone(), node.clone()), what);
        }
    }
    out
}

/// Since when each (gateway, node) has differed, by the controller's clock.
#[derive(Clone, Debug, Default)]
pub struct KernelDrift {
    since: BTreeMap<GatewayNode, Instant>,
    /// The lasting differences of the last [`KernelDrift::observe`], by gateway.
    lasting: BTreeMap<String, Vec<String>>,
    /// The (gateway, node) pairs among them.
    shown: BTreeSet<GatewayNode>,
}

/// What [`KernelDrift::observe`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lasting {
    /// Gateway -> "node: what differs" for each difference older than the bound.
    pub by_gateway: BTreeMap<String, Vec<String>>,
    /// Gateways whose lasting differences changed since the last observation.
    pub changed: BTreeSet<String>,
}

impl KernelDrift {
    /// Records the differences seen at `now` (a (gateway, node) absent from `current` is on
    /// plan again and starts over) and returns those that lasted longer than the bound.
    pub fn observe(&mut self, now: Instant, current: BTreeMap<GatewayNode, String>) -> Lasting {
        self.since.retain(|k, _| current.contains_key(k));
        let mut by_gateway: BTreeMap<String, Vec<String>> = BTreeMap::new();
        self.shown.clear();
        for (key, what) in current {
            let since = *self.since.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= KERNEL_DIFFERS_BOUND {
                self.shown.insert(key.clone());
                let (gateway, node) = key;
                by_gateway
                    .entry(gateway)
                    .or_default()
                    .push(format!("{node}: {what}"));
            }
        }
        let changed = by_gateway
            .keys()
            .chain(self.lasting.keys())
            .filter(|g| by_gateway.get(*g) != self.lasting.get(*g))
            .cloned()
            .collect();
        self.lasting = by_gateway.clone();
        Lasting {
            by_gateway,
            changed,
        }
    }

    /// When the next difference not yet lasting crosses the bound (a reconcile is due then).
    pub fn next_due(&self) -> Option<Instant> {
        self.since
            .iter()
            .filter(|(k, _)| !self.shown.contains(*k))
            .map(|(_, t)| *t + KERNEL_DIFFERS_BOUND)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(g: &str, n: &str) -> GatewayNode {
        (g.to_string(), n.to_string())
    }

    fn absent() -> GatewayDifference {
        GatewayDifference {
            elements: 3,
            want_elements: 3,
            rules: 6,
            want_rules: 6,
            missing: ["198.18.0.201".parse().unwrap()].into(),
            foreign: [("198.18.0.201".parse().unwrap(), "eth0".to_string())].into(),
            ..GatewayDifference::default()
        }
    }

    #[test]
    fn the_reason_names_what_differs() {
        assert_eq!(
            describe(&absent()),
            "egress IP 198.18.0.201 is absent: an address egressgw did not add holds it on eth0"
        );
        let table = GatewayDifference {
            elements: 40,
            want_elements: 42,
            rules: 5,
            want_rules: 6,
            table_differs: true,
            ..GatewayDifference::default()
        };
        assert_eq!(
            describe(&table),
            "the kernel holds 40 of 42 set elements; the kernel holds 5 of 6 rules"
        );
        let same_counts = GatewayDifference {
            table_differs: true,
            missing: ["198.18.0.200".parse().unwrap()].into(),
            ..GatewayDifference::default()
        };
        assert_eq!(
            describe(&same_counts),
            "egress IP 198.18.0.200 is absent from the node; set elements or rules differ"
        );
    }

    #[test]
    fn a_difference_counts_only_after_the_bound_and_recovers_at_once() {
        let t0 = Instant::now();
        let mut drift = KernelDrift::default();
        let now = |ms: u64| t0 + Duration::from_millis(ms);
        let differs = || BTreeMap::from([(key("billing", "node-2"), describe(&absent()))]);

        let l = drift.observe(now(0), differs());
        assert!(l.by_gateway.is_empty() && l.changed.is_empty());
        assert_eq!(drift.next_due(), Some(now(0) + KERNEL_DIFFERS_BOUND));

        // repaired within the bound (the drift monitor's ~50 ms): never shown
        assert!(drift.observe(now(50), BTreeMap::new()).changed.is_empty());
        assert_eq!(drift.next_due(), None);

        // differs again: the clock starts over
        drift.observe(now(1000), differs());
        let l = drift.observe(now(2900), differs());
        assert!(l.by_gateway.is_empty(), "1.9 s is within the bound");
        let l = drift.observe(now(3000), differs());
        assert_eq!(
            l.by_gateway["billing"],
            [
                "node-2: egress IP 198.18.0.201 is absent: an address egressgw did not add holds it on eth0"
            ]
        );
        assert_eq!(l.changed, BTreeSet::from(["billing".to_string()]));
        assert_eq!(drift.next_due(), None, "already shown: nothing more is due");
        assert!(
            drift.observe(now(3500), differs()).changed.is_empty(),
            "unchanged: no new status"
        );

        // the kernel matches again: recovered at the next observation, no bound
        let l = drift.observe(now(3600), BTreeMap::new());
        assert!(l.by_gateway.is_empty());
        assert_eq!(l.changed, BTreeSet::from(["billing".to_string()]));
    }
}
