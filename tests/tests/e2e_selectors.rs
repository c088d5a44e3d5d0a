//! Selectors end to end (issue 14, "Selectors"): a valid gateway with a huge first list does
//! not stall other gateways' changes. The apply loop plans with what is known and is never
//! gated on a watch that is still listing (issue 14.5).
//!
//! Real apiserver, controller and agents. A gateway selecting 3,000 pods, each carrying 32 KiB
//! of annotations (a first list of about 96 MiB for every candidate node's agent to fetch and
//! decode), is applied with kubectl, and the moment kubectl returns another gateway changes:
//! the billing gateway's egress IP is replaced (one API patch). The billing pods (one per
//! node, sampled by the leak probe every ~20 ms) must leave from the new IP within a bound an
//! IP change meets on an idle cluster, shorter than such a list takes, and never from another
//! source than the old or the new egress IP.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use egressgw::api::EgressGateway;
use egressgw_tests::leak_scenarios::{
    self as scenario, E1, E2, GATEWAY, HOLD, ONE_PER_NODE, SETTLE,
};
use egressgw_tests::sim::status;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

/// The billing gateway's new egress IP.
const E3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 202);
/// Pods the huge gateway selects, and the bytes of annotation each carries.
const BULK_PODS: usize = 3000;
const PAD_BYTES: usize = 32 * 1024;
/// Pods created concurrently.
const CREATE_CONCURRENCY: usize = 16;
/// How long the other gateway's change may take to reach every probed pod, from its patch:
/// what an IP change takes on an idle cluster (tens of milliseconds) plus slack for two
/// shared cores busy decoding the huge list. The list itself must take longer (checked), or
/// an apply loop waiting for it would pass too.
const CHANGE_BOUND: Duration = Duration::from_secs(1);
/// How long the huge gateway may take to be judged.
const BULK_JUDGED: Duration = Duration::from_secs(120);
const BULK: &str = "bulk";

fn bulk_gateway() -> String {
    format!(
        "apiVersion: egressgw.io/v1alpha1\nkind: EgressGateway\nmetadata: {{ name: {BULK} }}\n\
         spec:\n  namespaceSelector: {{ matchLabels: {{ team: {BULK} }} }}\n  \
         podSelector: {{ matchLabels: {{ app: {BULK} }} }}\n  \
         destinationCIDRs: [198.51.100.0/24]\n  egressIPs: [{E2}]\n  \
         gatewayNodeSelector: {{ matchLabels: {{ egressgw.io/gateway: \"true\" }} }}\n"
    )
}

fn bulk_pod(i: usize, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("bulk-{i:05}"),
            "namespace": BULK,
            "labels": { "app": BULK },
            "annotations": { "example.com/padding": "x".repeat(PAD_BYTES) },
        },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{ "name": "app", "image": "registry.k8s.io/pause:3.10" }],
        }
    }))
    .expect("a pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the control plane"]
async fn a_huge_first_list_does_not_stall_other_gateways_changes() {
    let sim = scenario::cluster(&ONE_PER_NODE, &[E1]).await.unwrap();
    sim.cp
        .create_namespace(BULK, &[("team", BULK)])
        .await
        .unwrap();
    let nodes: Vec<String> = (1..=3).map(|i| sim.tb.node(i).name().to_string()).collect();
    let pods: Api<Pod> = Api::namespaced(sim.cp.client(), BULK);
    let created = Instant::now();
    futures::stream::iter(0..BULK_PODS)
        .map(|i| {
            let (pods, pod) = (pods.clone(), bulk_pod(i, &nodes[i % nodes.len()]));
            async move { pods.create(&PostParams::default(), &pod).await }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .expect("bulk pods created");
    println!(
        "huge-list pods={BULK_PODS} pad_bytes={PAD_BYTES} created_in_ms={:.0}",
        created.elapsed().as_secs_f64() * 1e3
    );

    let probe = sim.leak_probe(&ONE_PER_NODE).unwrap();
    probe.wait_steady(&[E1], HOLD, SETTLE).await.unwrap();

    // What one such list costs (the test's own client, the same selector as the agents').
    let listed = Instant::now();
    let n = pods
        .list(&ListParams::default().labels(&format!("app={BULK}")))
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(n, BULK_PODS);
    let list_time = listed.elapsed();
    let list_ms = list_time.as_secs_f64() * 1e3;
    assert!(
        list_time > CHANGE_BOUND,
        "one list of the huge gateway's pods took only {list_time:?}: too small to show a stall within {CHANGE_BOUND:?}"
    );

    sim.apply_yaml(&bulk_gateway()).await.unwrap();
    let change = probe.mark("billing: egress IP E1 replaced by E3");
    let changed = Instant::now();
    Api::<EgressGateway>::all(sim.cp.client())
        .patch(
            GATEWAY,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "egressIPs": [E3.to_string()] } })),
        )
        .await
        .unwrap();
    let took = probe
        .wait_steady(&[E3], HOLD, SETTLE)
        .await
        .unwrap_or_else(|e| panic!("the billing pods never settled on E3: {e}"));
    // `wait_steady` returns once every pod held E3 for HOLD: the change landed before that.
    let landed = took.saturating_sub(HOLD);
    println!(
        "huge-list test_list_ms={list_ms:.0} other_change_ms={:.0}",
        landed.as_secs_f64() * 1e3
    );

    sim.wait_gateway(BULK, BULK_JUDGED, status::ready_and_programmed)
        .await
        .expect("the huge gateway is Ready and Programmed in the end");
    println!(
        "huge-list bulk_programmed_within_ms={:.0}",
        changed.elapsed().as_secs_f64() * 1e3
    );

    let report = probe.stop();
    eprintln!("{}", report.since_offset(change).table(&[E1, E3]));
    report.assert_no_leaks(&[E1, E3]);
    assert!(
        landed <= CHANGE_BOUND,
        "the other gateway's change took {landed:?} while the huge list was fetched (bound {CHANGE_BOUND:?})"
    );
}
