//! What the agent programs, decided without any I/O: given the node plan from its view, its
//! fencing state and the pods it guarded a moment ago, the plan to commit (or nothing yet).
//!
//! The rules (DESIGN.md, "Invariants", 1):
//! - **Nothing inherited is removed before the first renewal outcome is known.** A restarted
//!   agent finds its predecessor's table, addresses and routes and keeps them until it knows
//!   whether it may host (renewed) or must fence (could not).
//! - **Fencing converts, never removes.** A fenced node gives up its egress addresses and turns
//!   its SNAT into drops; its table, guard, steering and blocks stay, so nothing that reaches
//!   it or starts on it leaves with the node's address.
//! - **Guarded pods stay guarded for a while after they leave.** Other nodes may still steer a
//!   pod here for a moment after this node stopped serving it (a move, a pod deleted, the
//!   node no longer a candidate); for [`DEFAULT_GUARD_RETENTION`] the pod stays in the guard,
//!   so that traffic is dropped rather than forwarded through the node's masquerade.
//! - **A restarted agent keeps its predecessor's SNAT while it lists.** Until the pod watches
//!   of its gateways have listed, the pods the predecessor SNATed to an egress IP this node
//!   still hosts for the same gateway stay SNATed (unless the view knows that IP as some pod
//!   and the plan left it out): an agent upgrade must not drop the other nodes' pods for
//!   the length of a list.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use crate::plan::{GatewayNodePlan, NodePlan};

/// How long a pod stays guarded on a node after it left the node's guard.
pub const DEFAULT_GUARD_RETENTION: Duration = Duration::from_secs(5);

/// The agent's state that decides what it may program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Situation {
    /// The first renewal of this process has succeeded or failed.
    pub first_outcome_known: bool,
    /// No renewal succeeded in time: the node holds no egress IP.
    pub fenced: bool,
    /// The node may host nothing (idle cadence): fencing does not apply.
    pub idle: bool,
}

/// The plan to commit, or `None` while nothing may be changed yet.
pub fn program(mut plan: NodePlan, situation: Situation) -> Option<NodePlan> {
    if !situation.first_outcome_known {
        return None;
    }
    if situation.fenced && !situation.idle {
        fence(&mut plan);
    }
    Some(plan)
}

/// Pods SNATed per gateway name and egress IP, as read from the kernel at start.
pub type Inherited = BTreeMap<String, BTreeMap<std::net::Ipv4Addr, BTreeSet<std::net::Ipv4Addr>>>;

/// Add to `plan` the pods `inherited` SNATs to an egress IP the plan still hosts for the same
/// gateway, except those `known` says the view knows as a pod (the planner decided about
/// them) and those `origin` cannot place on another node (the InternalIP of the node whose
/// pod range holds the pod: anti-spoofing SNATs another node's pod only from that node).
/// Each carried pod is guarded too. For the time the pod watches list after a start.
pub fn carry_inherited(
    plan: &mut NodePlan,
    inherited: &Inherited,
    known: impl Fn(IpAddr) -> bool,
    origin: impl Fn(IpAddr) -> Option<IpAddr>,
) {
    for (gateway, by_egress) in inherited {
        let Some(g) = plan.gateways.get_mut(gateway) else {
            continue;
        };
        for (egress, pods) in by_egress {
            let egress = IpAddr::V4(*egress);
            if plan
                .hosted
                .get(&egress)
                .is_none_or(|h| &h.gateway != gateway)
            {
                continue;
            }
            let carried: Vec<(IpAddr, IpAddr)> = pods
                .iter()
                .map(|p| IpAddr::V4(*p))
                .filter(|p| !known(*p) && !g.blocked.contains(p))
                .filter_map(|p| Some((p, origin(p)?)))
                .collect();
            g.origins.extend(carried.iter().copied());
            let carried: Vec<IpAddr> = carried.into_iter().map(|(p, _)| p).collect();
            g.guard.extend(carried.iter().copied());
            g.snat.entry(egress).or_default().extend(carried);
        }
    }
}

/// Fence a plan: no hosted address, and every pod this node would SNAT is dropped instead.
pub fn fence(plan: &mut NodePlan) {
    plan.hosted.clear();
    for g in plan.gateways.values_mut() {
        let snat = std::mem::take(&mut g.snat);
        for pods in snat.into_values() {
            g.guard.extend(pods.iter().copied());
            g.blocked.extend(pods);
        }
    }
}

/// The shape of a gateway's rules, kept to guard its pods after it left the node's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template {
    destinations: Vec<IpNetwork>,
    excluded: Vec<IpNetwork>,
    egress_ips: Vec<IpAddr>,
    guard_remote: bool,
}

/// Pods still guarded after they left the guard, per gateway, with their expiry.
#[derive(Clone, Debug, Default)]
pub struct Retention {
    period: Duration,
    by_gateway: BTreeMap<String, (Template, BTreeMap<IpAddr, Instant>)>,
}

impl Retention {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            by_gateway: BTreeMap::new(),
        }
    }

    /// Bring `plan` (what the view asks for now) up to the guard it must keep: pods in
    /// `previous` (the plan last committed) that left the guard stay in it until their
    /// retention ends. Pods `is_local` says live on this node are not retained: this node
    /// itself stops steering them in the same transaction, so nobody else sends them here.
    pub fn apply(
        &mut self,
        now: Instant,
        plan: &mut NodePlan,
        previous: Option<&NodePlan>,
        is_local: impl Fn(IpAddr) -> bool,
    ) {
        if let Some(prev) = previous {
            for (name, old) in &prev.gateways {
                let new_guard = plan.gateways.get(name).map(|g| &g.guard);
                let gone: Vec<IpAddr> = old
                    .guard
                    .iter()
                    .filter(|ip| new_guard.is_none_or(|g| !g.contains(ip)))
                    .filter(|ip| !is_local(**ip))
                    .copied()
                    .collect();
                if gone.is_empty() {
                    continue;
                }
                let entry = self.by_gateway.entry(name.clone()).or_insert_with(|| {
                    (
                        Template {
                            destinations: old.destinations.clone(),
                            excluded: old.excluded.clone(),
                            egress_ips: old.egress_ips.clone(),
                            guard_remote: old.guard_remote,
                        },
                        BTreeMap::new(),
                    )
                });
                for ip in gone {
                    entry.1.entry(ip).or_insert(now + self.period);
                }
            }
        }
        self.by_gateway.retain(|name, (_, pods)| {
            let back = plan.gateways.get(name).map(|g| &g.guard);
            pods.retain(|ip, until| *until > now && back.is_none_or(|g| !g.contains(ip)));
            !pods.is_empty()
        });
        for (name, (t, pods)) in &self.by_gateway {
            let g = plan
                .gateways
                .entry(name.clone())
                .or_insert_with(|| GatewayNodePlan {
                    destinations: t.destinations.clone(),
                    excluded: t.excluded.clone(),
                    egress_ips: t.egress_ips.clone(),
                    guard_remote: t.guard_remote,
                    ..GatewayNodePlan::default()
                });
            g.guard.extend(pods.keys().copied());
        }
    }

    /// When the next retained pod leaves the guard (the agent re-applies then).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_gateway
            .values()
            .flat_map(|(_, pods)| pods.values().copied())
            .min()
    }

    /// Number of retained pods (all gateways).
    pub fn len(&self) -> usize {
        self.by_gateway.values().map(|(_, p)| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The pods of `plan` that leave the node unguarded: selected pods of a gateway (known to
/// the plan through its SNAT, steering or blocks) missing from that gateway's guard. Empty
/// for every plan the planner and [`program`] produce; a check for tests and debugging.
pub fn unguarded(plan: &NodePlan) -> BTreeSet<(String, IpAddr)> {
    let mut out = BTreeSet::new();
    for (name, g) in &plan.gateways {
        let pods = g
            .snat
            .values()
            .chain(g.steer.values())
            .flatten()
            .chain(g.blocked.iter());
        for ip in pods {
            if !g.guard.contains(ip) {
                out.insert((name.clone(), *ip));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::HostedIp;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn gw_plan(snat: &[&str], steer: &[&str], guard: &[&str]) -> GatewayNodePlan {
        GatewayNodePlan {
            destinations: vec!["203.0.113.0/24".parse().unwrap()],
            excluded: vec![],
            snat: BTreeMap::from([(ip("198.18.0.200"), snat.iter().map(|s| ip(s)).collect())]),
            origins: BTreeMap::new(),
            steer: if steer.is_empty() {
                BTreeMap::new()
            } else {
                BTreeMap::from([(ip("198.18.0.13"), steer.iter().map(|s| ip(s)).collect())])
            },
            blocked: BTreeSet::new(),
            guard: guard.iter().map(|s| ip(s)).collect(),
            egress_ips: vec![ip("198.18.0.200")],
            guard_remote: false,
        }
    }

    fn gateway_node() -> NodePlan {
        let mut p = NodePlan::empty("node-2");
        p.hosted.insert(
            ip("198.18.0.200"),
            HostedIp {
                gateway: "gw".into(),
                interface: "eth0".into(),
            },
        );
        p.gateways.insert(
            "gw".into(),
            gw_plan(
                &["198.19.1.10", "198.19.2.10"],
                &[],
                &["198.19.1.10", "198.19.2.10", "198.19.3.10"],
            ),
        );
        p
    }

    const LIVE: Situation = Situation {
        first_outcome_known: true,
        fenced: false,
        idle: false,
    };

    fn inherited(egress: &str, pods: &[&str]) -> Inherited {
        BTreeMap::from([(
            "gw".to_string(),
            BTreeMap::from([(
                egress.parse().unwrap(),
                pods.iter().map(|p| p.parse().unwrap()).collect(),
            )]),
        )])
    }

    #[test]
    fn a_restarted_agent_keeps_the_unknown_pods_its_predecessor_snated() {
        let mut p = gateway_node();
        let before = inherited(
            "198.18.0.200",
            &["198.19.1.10", "198.19.3.10", "198.19.3.11"],
        );
        // 198.19.3.11 is known to the view (and the plan left it out): not carried; nor is
        // 198.19.9.10, in no node's pod range.
        let before = {
            let mut b = before;
            b.get_mut("gw")
                .unwrap()
                .get_mut(&"198.18.0.200".parse().unwrap())
                .unwrap()
                .insert("198.19.9.10".parse().unwrap());
            b
        };
        carry_inherited(
            &mut p,
            &before,
            |x| x == ip("198.19.3.11"),
            |x| match x {
                IpAddr::V4(v) if v.octets()[2] == 3 => Some(ip("198.18.0.13")),
                IpAddr::V4(v) if v.octets()[2] == 1 => Some(ip("198.18.0.11")),
                _ => None,
            },
        );
        let g = &p.gateways["gw"];
        assert_eq!(
            g.snat[&ip("198.18.0.200")],
            BTreeSet::from([ip("198.19.1.10"), ip("198.19.2.10"), ip("198.19.3.10")])
        );
        assert!(g.guard.contains(&ip("198.19.3.10")));
        assert_eq!(g.origins.get(&ip("198.19.3.10")), Some(&ip("198.18.0.13")));
        assert!(!g.guard.contains(&ip("198.19.9.10")));
        assert!(!g.guard.contains(&ip("198.19.3.11")));
        assert!(unguarded(&p).is_empty());
    }

    #[test]
    fn nothing_is_carried_to_an_ip_the_node_no_longer_hosts_or_hosts_for_another_gateway() {
        let before = inherited("198.18.0.200", &["198.19.3.10"]);
        let mut fenced = gateway_node();
        fence(&mut fenced);
        let expected = fenced.clone();
        carry_inherited(&mut fenced, &before, |_| false, |_| Some(ip("198.18.0.13")));
        assert_eq!(fenced, expected, "a fenced node SNATs nothing");
        let mut other = gateway_node();
        other.hosted.get_mut(&ip("198.18.0.200")).unwrap().gateway = "other".into();
        let expected = other.clone();
        carry_inherited(&mut other, &before, |_| false, |_| Some(ip("198.18.0.13")));
        assert_eq!(other, expected, "the IP now belongs to another gateway");
        let mut gone = gateway_node();
        gone.gateways.clear();
        let expected = gone.clone();
        carry_inherited(&mut gone, &before, |_| false, |_| Some(ip("198.18.0.13")));
        assert_eq!(gone, expected, "the gateway left the node's plan");
    }

    #[test]
    fn nothing_is_programmed_before_the_first_renewal_outcome() {
        let s = Situation {
            first_outcome_known: false,
            fenced: true,
            idle: false,
        };
        assert_eq!(program(gateway_node(), s), None);
        assert_eq!(program(gateway_node(), LIVE), Some(gateway_node()));
    }

    #[test]
    fn fencing_drops_addresses_and_turns_snat_into_blocks_keeping_the_table() {
        let fenced = Situation {
            fenced: true,
            ..LIVE
        };
        let p = program(gateway_node(), fenced).unwrap();
        assert!(p.hosted.is_empty());
        let g = &p.gateways["gw"];
        assert!(g.snat.is_empty());
        assert_eq!(
            g.blocked,
            BTreeSet::from([ip("198.19.1.10"), ip("198.19.2.10")])
        );
        assert_eq!(g.guard.len(), 3, "the guard stays");
        assert!(unguarded(&p).is_empty());
        // an idle node never fences
        let idle = Situation {
            idle: true,
            ..fenced
        };
        assert_eq!(program(gateway_node(), idle), Some(gateway_node()));
    }

    #[test]
    fn a_pod_that_left_stays_guarded_for_the_retention_then_goes() {
        let t0 = Instant::now();
        let mut r = Retention::new(Duration::from_secs(5));
        let prev = gateway_node();
        // 198.19.3.10 (another node's pod) left the selection; 198.19.2.10 (local) too
        let mut now = gateway_node();
        let g = now.gateways.get_mut("gw").unwrap();
        g.guard.remove(&ip("198.19.3.10"));
        g.guard.remove(&ip("198.19.2.10"));
        g.snat.values_mut().for_each(|s| {
            s.remove(&ip("198.19.2.10"));
        });
        let local = |i: IpAddr| i == ip("198.19.2.10");
        let mut p = now.clone();
        r.apply(t0, &mut p, Some(&prev), local);
        assert!(p.gateways["gw"].guard.contains(&ip("198.19.3.10")));
        assert!(!p.gateways["gw"].guard.contains(&ip("198.19.2.10")));
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(5)));
        // still retained a little later, even though the previous plan now carries it only
        // because of the retention
        let mut p2 = now.clone();
        r.apply(t0 + Duration::from_secs(4), &mut p2, Some(&p), local);
        assert!(p2.gateways["gw"].guard.contains(&ip("198.19.3.10")));
        // gone after the period
        let mut p3 = now.clone();
        r.apply(t0 + Duration::from_secs(6), &mut p3, Some(&p2), local);
        assert!(!p3.gateways["gw"].guard.contains(&ip("198.19.3.10")));
        assert!(r.is_empty());
    }

    #[test]
    fn a_gateway_that_left_the_node_keeps_its_guard_for_the_retention() {
        let t0 = Instant::now();
        let mut r = Retention::new(Duration::from_secs(5));
        let prev = gateway_node();
        let mut p = NodePlan::empty("node-2");
        r.apply(t0, &mut p, Some(&prev), |_| false);
        let g = &p.gateways["gw"];
        assert_eq!(g.guard.len(), 3);
        assert!(g.snat.is_empty() && p.hosted.is_empty());
        assert_eq!(g.destinations, prev.gateways["gw"].destinations);
        assert_eq!(g.egress_ips, prev.gateways["gw"].egress_ips);
        // a pod coming back is simply guarded again, not retained twice
        let mut back = gateway_node();
        r.apply(t0 + Duration::from_secs(1), &mut back, Some(&p), |_| false);
        assert!(r.is_empty());
        assert_eq!(back, gateway_node());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn pod(i: u8) -> IpAddr {
            IpAddr::from([198, 19, i % 4, 10 + i])
        }

        fn plan_of(snat: &BTreeSet<u8>, steer: &BTreeSet<u8>, extra: &BTreeSet<u8>) -> NodePlan {
            let mut p = NodePlan::empty("n");
            p.hosted.insert(
                ip("198.18.0.200"),
                HostedIp {
                    gateway: "gw".into(),
                    interface: "eth0".into(),
                },
            );
            let snat: BTreeSet<IpAddr> = snat.iter().map(|i| pod(*i)).collect();
            let steer: BTreeSet<IpAddr> = steer.iter().map(|i| pod(*i)).collect();
            let guard = snat
                .iter()
                .chain(&steer)
                .copied()
                .chain(extra.iter().map(|i| pod(*i)))
                .collect();
            p.gateways.insert(
                "gw".into(),
                GatewayNodePlan {
                    destinations: vec!["203.0.113.0/24".parse().unwrap()],
                    snat: BTreeMap::from([(ip("198.18.0.200"), snat)]),
                    steer: BTreeMap::from([(ip("198.18.0.13"), steer)]),
                    guard,
                    egress_ips: vec![ip("198.18.0.200")],
                    ..GatewayNodePlan::default()
                },
            );
            p
        }

        fn ids() -> impl Strategy<Value = BTreeSet<u8>> {
            prop::collection::btree_set(0u8..40, 0..12)
        }

        proptest! {
            #[test]
            fn a_fenced_plan_holds_nothing_snats_nothing_and_drops_what_it_would_have_snated(
                snat in ids(), steer in ids(), extra in ids(), idle in any::<bool>(),
            ) {
                let p = plan_of(&snat, &steer, &extra);
                let s = Situation { first_outcome_known: true, fenced: true, idle };
                let out = program(p.clone(), s).unwrap();
                if idle {
                    prop_assert_eq!(out, p);
                } else {
                    prop_assert!(out.hosted.is_empty());
                    let g = &out.gateways["gw"];
                    prop_assert!(g.snat.values().all(BTreeSet::is_empty));
                    for i in &snat {
                        prop_assert!(g.blocked.contains(&pod(*i)) && g.guard.contains(&pod(*i)));
                    }
                    prop_assert_eq!(&g.steer, &p.gateways["gw"].steer);
                    prop_assert!(unguarded(&out).is_empty());
                }
            }

            #[test]
            fn a_pod_that_leaves_the_guard_stays_in_it_for_the_whole_retention(
                guards in prop::collection::vec(ids(), 1..8),
                steps_ms in prop::collection::vec(0u64..3000, 1..8),
                local in ids(),
            ) {
                let period = Duration::from_secs(5);
                let t0 = Instant::now();
                let mut r = Retention::new(period);
                let mut now = t0;
                let mut prev: Option<NodePlan> = None;
                // when each (non-local) pod last left the guard the view asked for
                let mut left: BTreeMap<IpAddr, Instant> = BTreeMap::new();
                let mut asked_before: BTreeSet<IpAddr> = BTreeSet::new();
                for (k, g) in guards.iter().enumerate() {
                    now += Duration::from_millis(steps_ms[k % steps_ms.len()]);
                    let mut p = plan_of(&BTreeSet::new(), &BTreeSet::new(), g);
                    let asked: BTreeSet<IpAddr> = g.iter().map(|i| pod(*i)).collect();
                    for gone in asked_before.difference(&asked) {
                        left.entry(*gone).or_insert(now);
                    }
                    for back in &asked {
                        left.remove(back);
                    }
                    let is_local = |i: IpAddr| local.iter().any(|l| pod(*l) == i);
                    r.apply(now, &mut p, prev.as_ref(), is_local);
                    let guard = &p.gateways["gw"].guard;
                    for (ip, since) in &left {
                        if !is_local(*ip) && now < *since + period {
                            prop_assert!(guard.contains(ip), "{} left at {:?} but unguarded at {:?}", ip, since.duration_since(t0), now.duration_since(t0));
                        }
                    }
                    prop_assert!(asked.is_subset(guard));
                    asked_before = asked;
                    prev = Some(p);
                }
            }
        }
    }
}
