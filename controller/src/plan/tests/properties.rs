//! Properties of the planner over random clusters.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use proptest::prelude::*;

use super::fixture::*;
use k8s_openapi::jiff::Timestamp;

use crate::index::{Pod, PodKey};
use crate::plan::{ClusterPlan, Unplaced};

const TEAMS: [&str; 3] = ["billing", "payments", "other"];
const APPS: [&str; 3] = ["inv", "pay", "web"];
const DSTS: [&str; 4] = [
    "203.0.113.0/24",
    "203.0.113.0/25",
    "198.51.100.0/24",
    "198.51.100.128/25",
];

#[derive(Clone, Debug)]
struct NodeGen {
    gateway: bool,
    ready: bool,
    alive: bool,
    on_lan: bool,
}

#[derive(Clone, Debug)]
struct GwGen {
    age: i64,
    team: usize,
    app: usize,
    ips: Vec<u8>,
    dst: usize,
}

#[derive(Clone, Debug)]
struct PodGen {
    team: usize,
    app: usize,
    node: usize,
    /// Bit 0: terminating; the rest: creation second.
    life: u8,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        any::<bool>(),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(gateway, ready, alive, on_lan)| NodeGen {
            gateway,
            ready,
            alive,
            on_lan,
        })
}

fn gw_gen() -> impl Strategy<Value = GwGen> {
    (
        0i64..4,
        0..TEAMS.len(),
        0..APPS.len(),
        prop::collection::btree_set(0u8..8, 1..4),
        0..DSTS.len(),
    )
        .prop_map(|(age, team, app, ips, dst)| GwGen {
            age,
            team,
            app,
            ips: ips.into_iter().collect(),
            dst,
        })
}

fn pod_gen() -> impl Strategy<Value = PodGen> {
    (0..TEAMS.len(), 0..APPS.len(), 0usize..8, 0u8..4).prop_map(|(team, app, node, life)| PodGen {
        team,
        app,
        node,
        life,
    })
}

/// Pods listing one IP (the addresses below repeat) are told apart by termination and age.
fn with_life(mut p: Pod, life: u8) -> Pod {
    p.terminating = life & 1 == 1;
    p.created = Some(Timestamp::from_second(i64::from(life >> 1)).unwrap());
    p
}

fn build(nodes: &[NodeGen], gws: &[GwGen], pods: &[PodGen]) -> Cluster {
    let mut c = Cluster::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut node = gw_node(&format!("n{i}"), 11 + i as u8);
        if !n.gateway {
            node.labels.clear();
        }
        node.ready = n.ready;
        node.agent_alive = n.alive;
        if !n.on_lan {
            node.interfaces[0].network = format!("198.51.100.{}/24", 11 + i).parse().unwrap();
        }
        c.node(node);
    }
    for (i, g) in gws.iter().enumerate() {
        let ips: Vec<String> = g
            .ips
            .iter()
            .map(|o| format!("198.18.0.{}", 200 + o))
            .collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        c.gw(gateway(
            &format!("g{i}"),
            g.age,
            TEAMS[g.team],
            APPS[g.app],
            &ips,
            &[DSTS[g.dst]],
        ));
    }
    for (i, p) in pods.iter().enumerate() {
        let node = format!("n{}", p.node % nodes.len().max(1));
        let new = pod(
            TEAMS[p.team],
            &format!("p{i}"),
            APPS[p.app],
            &node,
            &format!("198.19.{}.{}", p.node, 10 + i % 12),
        );
        c.pod(with_life(new, p.life));
    }
    c
}

fn placed(plan: &ClusterPlan) -> BTreeMap<(String, IpAddr), String> {
    plan.assignments
        .by_gateway
        .iter()
        .flat_map(|(g, ps)| {
            ps.iter().filter_map(move |p| {
                p.placement
                    .as_ref()
                    .ok()
                    .map(|pl| ((g.clone(), p.ip), pl.node.clone()))
            })
        })
        .collect()
}

fn cluster_strategy() -> impl Strategy<Value = (Vec<NodeGen>, Vec<GwGen>, Vec<PodGen>)> {
    (
        prop::collection::vec(node_gen(), 1..6),
        prop::collection::vec(gw_gen(), 1..7),
        prop::collection::vec(pod_gen(), 0..30),
    )
}

/// Replace (or, with `None`, delete) pod `p{i}` in the index; returns its key.
fn change_pod(c: &mut Cluster, nodes: usize, (i, change): (usize, Option<PodGen>)) -> PodKey {
    let key = PodKey::new(TEAMS[i % 3], format!("p{i}"));
    c.index.pods.remove(&key);
    if let Some(p) = change {
        let node = format!("n{}", p.node % nodes);
        let mut new = pod(
            TEAMS[i % 3],
            &format!("p{i}"),
            APPS[p.app],
            &node,
            &format!("198.19.{}.{}", p.node, 10 + i % 12),
        );
        new.key = key.clone();
        c.pod(with_life(new, p.life));
    }
    key
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_plan_is_deterministic_and_independent_of_input_order((nodes, gws, pods) in cluster_strategy()) {
        let c = build(&nodes, &gws, &pods);
        let mut rev = Cluster::new();
        for g in c.index.gateways.values().rev() { rev.gw(g.clone()); }
        for n in c.index.nodes.values().rev() { rev.node(n.clone()); }
        for p in c.index.pods.values().rev() { rev.pod(p.clone()); }
        prop_assert_eq!(c.plan(), rev.plan());
    }

    #[test]
    fn no_egress_ip_is_ever_on_two_nodes((nodes, gws, pods) in cluster_strategy()) {
        let c = build(&nodes, &gws, &pods);
        let plan = c.plan();
        let mut seen: HashMap<IpAddr, String> = HashMap::new();
        for ((_, ip), node) in placed(&plan) {
            prop_assert!(seen.insert(ip, node).is_none(), "{} placed twice", ip);
        }
        // And the node plans agree: each IP hosted by exactly one node.
        let mut hosted: HashMap<IpAddr, usize> = HashMap::new();
        for n in c.index.nodes.keys() {
            for ip in plan.node_plan(n).hosted.keys() { *hosted.entry(*ip).or_default() += 1; }
        }
        prop_assert!(hosted.values().all(|n| *n == 1));
    }

    #[test]
    fn every_ip_with_an_eligible_node_is_placed((nodes, gws, pods) in cluster_strategy()) {
        let c = build(&nodes, &gws, &pods);
        let plan = c.plan();
        for (g, ps) in &plan.assignments.by_gateway {
            let spec = c.index.gateways[g].spec.as_ref().unwrap();
            for p in ps {
                if let Err(Unplaced::NoEligibleNode(_)) = &p.placement {
                    let any = c.index.nodes.values().any(|n| n.eligibility(&spec.node_selector, p.ip, None).is_ok());
                    prop_assert!(!any, "{} of {} unplaced although a node is eligible", p.ip, g);
                }
            }
        }
    }

    #[test]
    fn adding_a_node_moves_nothing_and_removing_one_moves_only_its_ips(
        (nodes, gws, pods) in cluster_strategy(), victim in 0usize..6,
    ) {
        let mut c = build(&nodes, &gws, &pods);
        let before = c.plan();
        c.record(&before.assignments);
        let mut added = Cluster { index: c.index.clone() };
        added.node(gw_node("zz-new", 99));
        let with_new = placed(&added.plan());
        for (k, node) in placed(&before) {
            prop_assert_eq!(with_new.get(&k), Some(&node), "{:?} moved when a node was added", k);
        }
        let victim = format!("n{}", victim % nodes.len());
        c.index.nodes.remove(&victim);
        let after = c.plan();
        let after_placed = placed(&after);
        for (k, node) in placed(&before) {
            if node != victim {
                prop_assert_eq!(after_placed.get(&k), Some(&node), "{:?} moved although its node stayed", k);
            }
        }
    }

    #[test]
    fn a_recovered_node_takes_nothing_back((nodes, gws, pods) in cluster_strategy(), victim in 0usize..6) {
        let mut c = build(&nodes, &gws, &pods);
        let first = c.plan();
        c.record(&first.assignments);
        let victim = format!("n{}", victim % nodes.len());
        let was_alive = c.index.nodes[&victim].agent_alive;
        c.index.nodes.get_mut(&victim).unwrap().agent_alive = false;
        let during = c.plan();
        c.record(&during.assignments);
        c.index.nodes.get_mut(&victim).unwrap().agent_alive = was_alive;
        let after = placed(&c.plan());
        // Every IP placed during the outage stays put; only IPs that had no home may take
        // the recovered node.
        for (k, node) in placed(&during) {
            prop_assert_eq!(after.get(&k), Some(&node), "{:?} flapped back", k);
        }
    }

    #[test]
    fn incremental_pod_updates_equal_a_full_plan(
        (nodes, gws, pods) in cluster_strategy(),
        changes in prop::collection::vec((0usize..40, prop::option::of(pod_gen())), 1..15),
    ) {
        let mut c = build(&nodes, &gws, &pods);
        let mut plan = c.plan();
        for change in changes {
            let key = change_pod(&mut c, nodes.len(), change);
            plan.update_pod(&c.index, &key);
        }
        prop_assert_eq!(plan, c.plan());
    }

    #[test]
    fn a_batch_of_pod_updates_equals_a_full_plan(
        (nodes, gws, pods) in cluster_strategy(),
        changes in prop::collection::vec((0usize..40, prop::option::of(pod_gen())), 1..15),
    ) {
        let mut c = build(&nodes, &gws, &pods);
        let mut plan = c.plan();
        let keys: Vec<PodKey> = changes.into_iter().map(|change| change_pod(&mut c, nodes.len(), change)).collect();
        plan.update_pods(&c.index, &keys);
        prop_assert_eq!(plan, c.plan());
    }
}
