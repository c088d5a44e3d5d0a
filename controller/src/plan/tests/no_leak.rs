//! The no-leak invariant across two views (DESIGN.md, "Invariants", 1): agents plan from
//! status as their watches deliver it, so for a moment a source node may plan from one status
//! write and the gateway node from the next (or the other way round). Whatever the pair, a
//! selected pod's traffic to its gateway's destinations is SNATed on its own node, dropped
//! there, or steered to a node that SNATs it to an egress IP of the gateway or drops it.

use std::net::IpAddr;

use proptest::prelude::*;

use super::fixture::*;
use crate::agent::decide;
use crate::index::{ClusterIndex, PodKey};
use crate::plan::{NodePlan, assign, guard, plan_with};

const TEAMS: [&str; 2] = ["billing", "payments"];
const APPS: [&str; 2] = ["inv", "pay"];
const DSTS: [&str; 3] = ["203.0.113.0/24", "203.0.113.0/25", "198.51.100.0/24"];

/// What one node's agent programs, planned from `index` (its view).
fn agent_plan(index: &ClusterIndex, node: &str) -> NodePlan {
    let epoch = index.nodes[node].agent_epoch;
    let plan = plan_with(index, assign::from_status(index, Some((node, epoch))));
    let guarded = guard::guarded_gateways(index, node);
    let mut p = plan.node_plan_guarding(node, |g| guarded.contains(g));
    p.remote_pod_ranges = guard::remote_pod_ranges(index, node);
    p
}

/// Whether node plan `n` keeps `pod` of gateway `g` from leaving unSNATed: SNAT to one of
/// the gateway's IPs, or a drop.
fn covered(n: &NodePlan, g: &str, pod: IpAddr) -> bool {
    let Some(part) = n.gateways.get(g) else {
        return false;
    };
    part.snat.values().any(|s| s.contains(&pod))
        || part.guard.contains(&pod)
        || part.blocked.contains(&pod)
        || (part.guard_remote && n.remote_pod_ranges.iter().any(|r| r.contains(pod)))
}

/// Every leak of `pod`s planned by sources from `src` and gateway nodes from `gw`.
fn leaks(src: &ClusterIndex, gw: &ClusterIndex) -> Vec<String> {
    let mut out = Vec::new();
    for s in src.nodes.keys() {
        let sp = agent_plan(src, s);
        if let Some(bad) = decide::unguarded(&sp).into_iter().next() {
            out.push(format!("{s}: {bad:?} not guarded on its own node"));
        }
        for (g, part) in &sp.gateways {
            for (nh, pods) in &part.steer {
                let Some(n) = gw.nodes.values().find(|n| n.internal_ip == Some(*nh)) else {
                    continue; // steered to no node: routed nowhere
                };
                let np = agent_plan(gw, &n.name);
                for pod in pods {
                    if !covered(&np, g, *pod) {
                        out.push(format!(
                            "{s} steers {pod} of {g} to {}, which would forward it",
                            n.name
                        ));
                    }
                }
            }
        }
    }
    out
}

#[derive(Clone, Debug)]
enum Change {
    AddIp(usize),
    RemoveIp(usize),
    KillAgent(usize),
    AddPod {
        team: usize,
        app: usize,
        node: usize,
    },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0usize..4).prop_map(Change::AddIp),
        (0usize..4).prop_map(Change::RemoveIp),
        (0usize..5).prop_map(Change::KillAgent),
        (0..2usize, 0..2usize, 0..5usize).prop_map(|(team, app, node)| Change::AddPod {
            team,
            app,
            node
        }),
    ]
}

type Shape = (
    Vec<bool>,
    Vec<(usize, usize, usize, usize)>,
    Vec<(usize, usize, usize)>,
);

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop::collection::vec(prop::bool::weighted(0.6), 2..6),
        prop::collection::vec((0..2usize, 0..2usize, 1..4usize, 0..DSTS.len()), 1..4),
        prop::collection::vec((0..2usize, 0..2usize, 0..5usize), 0..16),
    )
}

fn ips(g: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|k| format!("198.18.0.{}", 200 + g * 10 + k))
        .collect()
}

fn build((nodes, gws, pods): &Shape) -> Cluster {
    let mut c = Cluster::new();
    for (i, gateway_node) in nodes.iter().enumerate() {
        let mut n = gw_node(&format!("n{i}"), 11 + i as u8);
        if !gateway_node {
            n.labels.clear();
        }
        n.pod_cidrs = vec![format!("198.19.{i}.0/24").parse().unwrap()];
        c.node(n);
    }
    for (i, (team, app, n, dst)) in gws.iter().enumerate() {
        let ips = ips(i, *n);
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        c.gw(gateway(
            &format!("g{i}"),
            i as i64,
            TEAMS[*team],
            APPS[*app],
            &ips,
            &[DSTS[*dst]],
        ));
    }
    for (i, (team, app, node)) in pods.iter().enumerate() {
        add_pod(&mut c, i, *team, *app, node % nodes.len());
    }
    c
}

fn add_pod(c: &mut Cluster, i: usize, team: usize, app: usize, node: usize) {
    c.pod(pod(
        TEAMS[team],
        &format!("p{i}"),
        APPS[app],
        &format!("n{node}"),
        &format!("198.19.{node}.{}", 10 + i),
    ));
}

/// Change the gateway's egress IPs, keeping its recorded status.
fn set_ips(c: &mut Cluster, shape: &Shape, g: usize, n: usize) {
    let (team, app, _, dst) = shape.1[g];
    let name = format!("g{g}");
    let recorded = c.index.gateways[&name].recorded.clone();
    let ips = ips(g, n);
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let mut new = gateway(&name, g as i64, TEAMS[team], APPS[app], &ips, &[DSTS[dst]]);
    new.recorded = recorded;
    c.gw(new);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn no_pod_leaves_unsnated_when_sources_and_gateways_plan_from_neighbouring_writes(
        shape in shape(),
        change in change(),
    ) {
        // view A: the controller planned and wrote status
        let mut c = build(&shape);
        let first = c.plan();
        c.record(&first.assignments);
        let a = c.index.clone();
        // view B: one change, planned and written
        match change {
            Change::AddIp(g) => {
                let g = g % shape.1.len();
                set_ips(&mut c, &shape, g, shape.1[g].2 + 1);
            }
            Change::RemoveIp(g) => {
                let g = g % shape.1.len();
                set_ips(&mut c, &shape, g, shape.1[g].2.saturating_sub(1).max(1));
            }
            Change::KillAgent(n) => {
                let n = format!("n{}", n % shape.0.len());
                c.index.nodes.get_mut(&n).unwrap().agent_alive = false;
            }
            Change::AddPod { team, app, node } => {
                add_pod(&mut c, 99, team, app, node % shape.0.len());
            }
        }
        let second = c.plan();
        c.record(&second.assignments);
        let b = c.index.clone();
        let ab = leaks(&a, &b);
        prop_assert!(ab.is_empty(), "sources on A, gateways on B: {:?}", ab);
        let ba = leaks(&b, &a);
        prop_assert!(ba.is_empty(), "sources on B, gateways on A: {:?}", ba);
    }
}

#[test]
fn without_the_guard_a_skewed_view_would_leak() {
    // The checker itself: a gateway node that neither SNATs nor guards a steered pod leaks.
    let shape: Shape = (vec![false, true], vec![(0, 0, 1, 0)], vec![(0, 0, 0)]);
    let mut c = build(&shape);
    let first = c.plan();
    c.record(&first.assignments);
    let src = c.index.clone();
    let mut gw = c.index.clone();
    // the gateway node's view lost its label and the pod ranges: no guard applies
    gw.nodes.get_mut("n1").unwrap().labels.clear();
    for n in gw.nodes.values_mut() {
        n.pod_cidrs.clear();
    }
    gw.pods.remove(&PodKey::new("billing", "p0"));
    for g in gw.gateways.values_mut() {
        g.recorded.clear();
    }
    let found = leaks(&src, &gw);
    assert!(!found.is_empty(), "the checker must see this leak");
}
