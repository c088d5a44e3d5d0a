//! Planner benchmark: a full plan for 10,000 pods, 500 gateways and 100 nodes, and the
//! incremental update after one pod change.
//!
//! Run: `cargo bench -p egressgw --bench plan` (release build; prints medians and p99).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use egressgw::api::{EgressGatewaySpec, LabelSelector, LabelSelectorRequirement, SelectorOperator};
use egressgw::index::gateway::parse_spec;
use egressgw::index::{ClusterIndex, Gateway, Node, NodeInterface, Pod, PodKey};
use k8s_openapi::jiff::Timestamp;

const PODS: usize = 10_000;
const GATEWAYS: usize = 500;
const NODES: usize = 100;
const NAMESPACES: usize = 50;
const APPS: usize = 40;
/// One gateway in this many selects every pod of its namespace (podSelector {}).
const BROAD_EVERY: usize = 50;
const FULL_RUNS: usize = 15;
const INCREMENTAL_RUNS: usize = 2_000;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn selector(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector { match_labels: labels(pairs), match_expressions: vec![] }
}

fn cluster() -> ClusterIndex {
    let mut index = ClusterIndex::default();
    for n in 0..NAMESPACES {
        index.namespaces.insert(format!("ns-{n}"), labels(&[("team", format!("team-{n}"))]));
    }
    for n in 0..NODES {
        let gateway = n % 5 == 0; // 20 gateway nodes
        let mut node_labels = labels(&[("topology.kubernetes.io/zone", format!("zone-{}", n % 3))]);
        if gateway {
            node_labels.insert("egressgw.io/gateway".into(), "true".into());
        }
        index.nodes.insert(
            format!("node-{n:03}"),
            Node {
                name: format!("node-{n:03}"),
                labels: node_labels,
                ready: true,
                agent_alive: true,
                agent_epoch: 1,
                internal_ip: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11 + n as u8))),
                interfaces: vec![NodeInterface { name: "eth1".into(), network: format!("198.18.0.{}/15", 11 + n).parse().unwrap() }],
            },
        );
    }
    for p in 0..PODS {
        let ns = p % NAMESPACES;
        let node = p % NODES;
        let key = PodKey::new(format!("ns-{ns}"), format!("pod-{p}"));
        index.pods.insert(
            key.clone(),
            Pod {
                key,
                labels: labels(&[("app", format!("app-{}", (p / NAMESPACES) % APPS)), ("pod-template-hash", format!("{:x}", p % 7))]),
                node: Some(format!("node-{node:03}")),
                ips: vec![IpAddr::V4(Ipv4Addr::new(198, 19, node as u8, (p / NODES) as u8))],
                running: true,
                host_network: false,
            },
        );
    }
    let mut next_ip: u32 = u32::from(Ipv4Addr::new(198, 18, 1, 0));
    for g in 0..GATEWAYS {
        let n_ips = 1 + g % 4;
        let ips: Vec<String> = (0..n_ips)
            .map(|_| {
                next_ip += 1;
                Ipv4Addr::from(next_ip).to_string()
            })
            .collect();
        let pod_selector = if g % BROAD_EVERY == 0 {
            LabelSelector::default()
        } else {
            LabelSelector {
                match_labels: labels(&[("app", format!("app-{}", (g / NAMESPACES) % APPS))]),
                match_expressions: vec![LabelSelectorRequirement {
                    key: "pod-template-hash".into(),
                    operator: SelectorOperator::NotIn,
                    values: vec!["6".into()],
                }],
            }
        };
        let spec = EgressGatewaySpec {
            namespace_selector: selector(&[("team", format!("team-{}", g % NAMESPACES))]),
            pod_selector,
            destination_cidrs: vec![format!("203.0.113.{}/28", (g % 16) * 16), "198.51.100.0/24".into()],
            excluded_cidrs: vec![],
            egress_ips: ips,
            gateway_node_selector: selector(&[("egressgw.io/gateway", "true".into())]),
            interface: None,
        };
        let name = format!("gw-{g:03}");
        index.gateways.insert(
            name.clone(),
            Gateway {
                name,
                generation: 1,
                created: Timestamp::from_second(1_700_000_000 + g as i64).unwrap(),
                spec: parse_spec(&spec),
                recorded: BTreeMap::new(),
            },
        );
    }
    index
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let index = cluster();
    let plan = egressgw::plan::plan(&index);
    let selected: usize = plan.selections.by_gateway.values().map(|s| s.pods.len()).sum();
    let lost: usize = plan.selections.by_gateway.values().map(|s| s.lost.len()).sum();
    let placed = plan.assignments.by_gateway.values().flatten().filter(|p| p.placement.is_ok()).count();
    println!(
        "cluster: {PODS} pods, {GATEWAYS} gateways, {NODES} nodes; {selected} gateway-pod selections, {lost} lost to conflicts, {placed} egress IPs placed"
    );

    let mut full: Vec<Duration> = (0..FULL_RUNS)
        .map(|_| {
            let t = Instant::now();
            black_box(egressgw::plan::plan(black_box(&index)));
            t.elapsed()
        })
        .collect();
    full.sort();
    println!("full plan:            median {:>9.3?}  p99 {:>9.3?}  ({FULL_RUNS} runs)", percentile(&full, 0.5), percentile(&full, 0.99));

    let mut node_plans: Vec<Duration> = (0..NODES)
        .map(|n| {
            let t = Instant::now();
            black_box(plan.node_plan(&format!("node-{n:03}")));
            t.elapsed()
        })
        .collect();
    node_plans.sort();
    println!("one node's plan:      median {:>9.3?}  p99 {:>9.3?}  ({NODES} nodes)", percentile(&node_plans, 0.5), percentile(&node_plans, 0.99));

    // Incremental: relabel one pod at a time (it joins or leaves gateways), then update.
    let mut index = index;
    let mut plan = plan;
    let mut inc: Vec<Duration> = Vec::with_capacity(INCREMENTAL_RUNS);
    for i in 0..INCREMENTAL_RUNS {
        let p = (i * 7919) % PODS;
        let key = PodKey::new(format!("ns-{}", p % NAMESPACES), format!("pod-{p}"));
        let pod = index.pods.get_mut(&key).unwrap();
        pod.labels.insert("app".into(), format!("app-{}", (p + i) % APPS));
        let t = Instant::now();
        black_box(plan.update_pod(&index, &key));
        inc.push(t.elapsed());
    }
    inc.sort();
    let (med_full, med_inc) = (percentile(&full, 0.5), percentile(&inc, 0.5));
    println!(
        "incremental pod change: median {:>9.3?}  p99 {:>9.3?}  ({INCREMENTAL_RUNS} changes) -> {:.0}x cheaper than a full plan",
        med_inc,
        percentile(&inc, 0.99),
        med_full.as_secs_f64() / med_inc.as_secs_f64()
    );
    assert_eq!(plan, egressgw::plan::plan(&index), "incremental result must equal a full plan");
    println!("check: incremental plan equals a full plan after {INCREMENTAL_RUNS} changes");
}
