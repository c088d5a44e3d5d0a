//! `kubectl egress` against a real kube-apiserver: the cluster is seeded the way kubelets,
//! agents and the controller leave it (Nodes, Pods with IPs, agent Leases with their
//! interface reports, gateway status written through the status subresource by server-side
//! apply as `egressgw-controller`), and the plugin binary's output is checked.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use egressgw::api::EgressGateway;
use egressgw::k8s::names::{
    AGENT_LEASE_NAMESPACE, ANNOTATION_INTERFACES, FIELD_MANAGER_CONTROLLER, LABEL_AGENT_NODE,
    agent_lease,
};
use egressgw::plugin::snapshot::Snapshot;
use egressgw::status::{Programming, gateway_status};
use egressgw_tests::control_plane::{ControlPlane, parse_table, repo_root};
use egressgw_tests::plugin_bin::{kubeconfig_as, run_plugin};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", describe(&out));
    text(&out)
}

fn plugin(cp: &ControlPlane, args: &[&str]) -> Output {
    let mut all = vec!["--kubeconfig", cp.kubeconfig().to_str().unwrap()];
    all.extend_from_slice(args);
    run_plugin(&all, &[]).expect("kubectl-egress runs")
}

async fn apply_yaml(cp: &ControlPlane, yaml: &str) {
    let path = cp.dir().join(format!("manifest-{}.yaml", yaml.len()));
    std::fs::write(&path, yaml).unwrap();
    ok(cp
        .kubectl(["apply", "-f", path.to_str().unwrap()])
        .await
        .unwrap());
}

fn gateway_yaml(name: &str, app: &str, ips: &[&str], dst: &[&str], excl: &[&str]) -> String {
    format!(
        "apiVersion: egressgw.io/v1alpha1\nkind: EgressGateway\nmetadata: {{ name: {name} }}\nspec:\n  \
         namespaceSelector: {{ matchLabels: {{ team: billing }} }}\n  podSelector: {{ matchLabels: {{ app: {app} }} }}\n  \
         destinationCIDRs: {dst:?}\n  excludedCIDRs: {excl:?}\n  egressIPs: {ips:?}\n  \
         gatewayNodeSelector: {{ matchLabels: {{ egressgw.io/gateway: \"true\" }} }}\n"
    )
}

/// An agent Lease as the agent writes it: node label and the interfaces it reports.
async fn agent_lease_for(cp: &ControlPlane, node: &str, interfaces: &str) {
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {
            "name": agent_lease(node),
            "namespace": AGENT_LEASE_NAMESPACE,
            "labels": { LABEL_AGENT_NODE: node },
            "annotations": { ANNOTATION_INTERFACES: interfaces },
        },
        "spec": { "holderIdentity": node, "leaseDurationSeconds": 2, "leaseTransitions": 1 },
    }))
    .unwrap();
    Api::<Lease>::namespaced(cp.client(), AGENT_LEASE_NAMESPACE)
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
}

/// Compute the status of `gateway` with the controller's own planner (agents in `alive`
/// alive) and write it as the controller does.
async fn write_status(cp: &ControlPlane, gateway: &str, alive: &[&str]) {
    let client = cp.client();
    let snapshot = Snapshot {
        gateways: Api::<EgressGateway>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
        nodes: Api::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
        namespaces: Api::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
        leases: Api::namespaced(client.clone(), AGENT_LEASE_NAMESPACE)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
        pods: Api::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items,
    };
    let alive: BTreeSet<String> = alive.iter().map(|s| s.to_string()).collect();
    let index = snapshot.index(&alive);
    let plan = egressgw::plan::plan(&index);
    let api = Api::<EgressGateway>::all(client);
    for g in index.gateways.values().filter(|g| g.name == gateway) {
        let status = gateway_status(g, &plan, &Programming::default(), None, Timestamp::now());
        let patch = json!({ "apiVersion": "egressgw.io/v1alpha1", "kind": "EgressGateway", "status": status });
        api.patch_status(
            &g.name,
            &PatchParams::apply(FIELD_MANAGER_CONTROLLER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap();
    }
}

/// Three nodes (node-1, node-2 gateway-labelled; node-3 a worker), pods in namespace billing,
/// and two gateways: `billing-to-mainframe`, placed on node-2 while node-1's agent was not yet
/// alive, and `partner`, with no eligible node (node-1 NotReady, node-2's agent dead by then).
async fn seeded() -> ControlPlane {
    let cp = ControlPlane::start_with_crds()
        .await
        .expect("control plane");
    cp.create_namespace(AGENT_LEASE_NAMESPACE, &[])
        .await
        .unwrap();
    cp.create_namespace("billing", &[("team", "billing")])
        .await
        .unwrap();
    let gw = [("egressgw.io/gateway", "true")];
    cp.create_node("node-1", &gw, IpAddr::from([198, 18, 0, 11]), true)
        .await
        .unwrap();
    cp.create_node("node-2", &gw, IpAddr::from([198, 18, 0, 12]), true)
        .await
        .unwrap();
    cp.create_node("node-3", &[], IpAddr::from([198, 18, 0, 13]), true)
        .await
        .unwrap();
    for (node, n) in [("node-1", 11), ("node-2", 12), ("node-3", 13)] {
        agent_lease_for(&cp, node, &format!("eth1=198.18.0.{n}/24")).await;
    }
    for (name, app, node, ip) in [
        ("invoicer-0", "invoicer", "node-3", [198, 19, 3, 10]),
        ("partner-0", "partner", "node-3", [198, 19, 3, 11]),
        ("web-0", "web", "node-1", [198, 19, 1, 10]),
    ] {
        cp.create_pod("billing", name, &[("app", app)], node)
            .await
            .unwrap();
        cp.set_pod_ip("billing", name, IpAddr::from(ip))
            .await
            .unwrap();
    }
    apply_yaml(
        &cp,
        &gateway_yaml(
            "billing-to-mainframe",
            "invoicer",
            &["198.18.0.200"],
            &["203.0.113.0/24"],
            &["203.0.113.128/25"],
        ),
    )
    .await;
    write_status(&cp, "billing-to-mainframe", &["node-2", "node-3"]).await;
    apply_yaml(
        &cp,
        &gateway_yaml(
            "partner",
            "partner",
            &["198.18.0.210"],
            &["198.51.100.0/24"],
            &[],
        ),
    )
    .await;
    cp.set_node_ready("node-1", false).await.unwrap();
    write_status(&cp, "partner", &["node-1", "node-3"]).await;
    cp
}

#[tokio::test]
#[ignore = "needs the kube-apiserver built by make control-plane"]
async fn ips_lists_every_egress_ip_with_its_node_in_every_format() {
    let cp = seeded().await;
    let table = ok(plugin(&cp, &["ips"]));
    let rows = parse_table(&table);
    assert_eq!(rows.len(), 2, "{table}");
    let row = |ip: &str| {
        rows.iter()
            .find(|r| r.get("EGRESS IP").map(String::as_str) == Some(ip))
            .unwrap_or_else(|| panic!("{ip} in {table}"))
    };
    assert_eq!(
        row("198.18.0.200").get("NODE").map(String::as_str),
        Some("node-2"),
        "{table}"
    );
    assert_eq!(
        row("198.18.0.200").get("SELECTED").map(String::as_str),
        Some("1"),
        "{table}"
    );
    assert_eq!(
        row("198.18.0.200").get("READY").map(String::as_str),
        Some("True"),
        "{table}"
    );
    assert_eq!(
        row("198.18.0.210").get("NODE").map(String::as_str),
        Some("<none>"),
        "{table}"
    );
    assert_eq!(
        row("198.18.0.210").get("READY").map(String::as_str),
        Some("False"),
        "{table}"
    );

    let wide = ok(plugin(&cp, &["ips", "-o", "wide"]));
    let rows = parse_table(&wide);
    assert_eq!(
        rows[0].get("INTERFACE").map(String::as_str),
        Some("eth1"),
        "{wide}"
    );
    assert_eq!(
        rows[0].get("EXCLUDED").map(String::as_str),
        Some("203.0.113.128/25"),
        "{wide}"
    );
    assert_eq!(
        rows[1].get("REASON").map(String::as_str),
        Some("NoEligibleNode"),
        "{wide}"
    );

    let json: Value = serde_json::from_str(&ok(plugin(&cp, &["ips", "-o", "json"]))).unwrap();
    assert_eq!(json[0]["gateway"], "billing-to-mainframe");
    assert_eq!(json[0]["node"], "node-2");
    assert_eq!(json[1]["node"], Value::Null);
    let yaml: Value = serde_yaml::from_str(&ok(plugin(&cp, &["ips", "-o", "yaml"]))).unwrap();
    assert_eq!(yaml, json);
    let csv = ok(plugin(&cp, &["ips", "-o", "csv"]));
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("egress_ip,gateway,node,"), "{csv}");
    assert!(
        lines[1].starts_with("198.18.0.200,billing-to-mainframe,node-2,eth1,"),
        "{csv}"
    );
}

#[tokio::test]
#[ignore = "needs the kube-apiserver built by make control-plane"]
async fn explain_says_which_ip_a_pod_uses_or_exactly_why_none() {
    let cp = seeded().await;
    let out = ok(plugin(
        &cp,
        &["explain", "pod", "invoicer-0", "-n", "billing"],
    ));
    assert!(
        out.contains("Pod billing/invoicer-0 (198.19.3.10) on node node-3"),
        "{out}"
    );
    assert!(
        out.contains("Traffic to 203.0.113.0/24 leaves from egress IP 198.18.0.200"),
        "{out}"
    );
    assert!(
        out.contains(
            "node node-3 steers it to node node-2 (198.18.0.12), which SNATs it to 198.18.0.200"
        ),
        "{out}"
    );
    assert!(
        out.contains("excluded: 203.0.113.128/25 (left alone)"),
        "{out}"
    );
    assert!(
        out.contains("partner")
            && out.contains("pod does not match podSelector app=partner (has app=invoicer)\n"),
        "{out}"
    );

    // Nobody renews the agents' Leases in this test: every agent is dead by the plugin's
    // observation, as it was for node-2 when the status was written.
    let out = ok(plugin(
        &cp,
        &[
            "explain",
            "pod",
            "partner-0",
            "-n",
            "billing",
            "--liveness-window-ms",
            "300",
        ],
    ));
    assert!(
        out.contains(
            "Traffic to 198.51.100.0/24 is DROPPED: gateway partner has no egress IP on any node"
        ),
        "{out}"
    );
    assert!(out.contains("198.18.0.210: no eligible node ("), "{out}");
    assert!(
        out.contains("node-3: does not match gatewayNodeSelector"),
        "{out}"
    );
    assert!(out.contains("node-1: is not Ready"), "{out}");
    assert!(out.contains("node-2: has no live egressgw agent"), "{out}");

    let out = ok(plugin(&cp, &["explain", "pod", "web-0", "-n", "billing"]));
    assert!(
        out.contains("All traffic of this pod leaves as it would without egressgw"),
        "{out}"
    );

    let out = plugin(&cp, &["explain", "pod", "nope", "-n", "billing"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pod billing/nope not found"),
        "{}",
        describe(&out)
    );
}

#[tokio::test]
#[ignore = "needs the kube-apiserver built by make control-plane"]
async fn allowlist_prints_lines_json_and_firewall_rules() {
    let cp = seeded().await;
    let lines = ok(plugin(&cp, &["allowlist"]));
    assert_eq!(
        lines, "198.18.0.200 203.0.113.0/25\n198.18.0.210 198.51.100.0/24\n",
        "unplaced IPs are listed too"
    );
    let only = ok(plugin(
        &cp,
        &["allowlist", "--destination", "198.51.100.0/24"],
    ));
    assert_eq!(only, "198.18.0.210 198.51.100.0/24\n");
    let json: Value = serde_json::from_str(&ok(plugin(&cp, &["allowlist", "-o", "json"]))).unwrap();
    assert_eq!(
        json[0],
        json!({ "gateway": "billing-to-mainframe", "egressIPs": ["198.18.0.200"], "destinations": ["203.0.113.0/25"] })
    );
    let nft = ok(plugin(&cp, &["allowlist", "-o", "nftables"]));
    assert!(nft.contains("add rule inet filter forward ip saddr { 198.18.0.200 } ip daddr { 203.0.113.0/25 } accept comment \"egressgw billing-to-mainframe\""), "{nft}");
    assert_eq!(
        ok(plugin(&cp, &["allowlist", "-o", "nft"])),
        nft,
        "-o nft is short for -o nftables"
    );
    let ipt = ok(plugin(
        &cp,
        &[
            "allowlist",
            "-o",
            "iptables",
            "--iptables-chain",
            "EGRESS-IN",
        ],
    ));
    assert!(ipt.contains("iptables -A EGRESS-IN -s 198.18.0.210/32 -d 198.51.100.0/24 -m comment --comment \"egressgw partner\" -j ACCEPT"), "{ipt}");
    let bad = plugin(&cp, &["allowlist", "--destination", "203.0.113.0"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a CIDR"),
        "{}",
        describe(&bad)
    );
}

/// A kubeconfig with two contexts: the current one points at a closed port.
fn two_contexts(cp: &ControlPlane) -> PathBuf {
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig()).unwrap()).unwrap();
    let cluster = doc["clusters"][0].clone();
    let mut dead = cluster.clone();
    dead["name"] = "dead".into();
    dead["cluster"]["server"] = "https://127.0.0.1:1".into();
    doc["clusters"].as_sequence_mut().unwrap().push(dead);
    let mut ctx = doc["contexts"][0].clone();
    let live_name = ctx["name"].as_str().unwrap().to_string();
    ctx["name"] = "dead".into();
    ctx["context"]["cluster"] = "dead".into();
    doc["contexts"].as_sequence_mut().unwrap().push(ctx);
    doc["current-context"] = "dead".into();
    let path = cp.dir().join("kubeconfig-two-contexts");
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    std::fs::write(cp.dir().join("live-context"), live_name).unwrap();
    path
}

#[tokio::test]
#[ignore = "needs the kube-apiserver built by make control-plane"]
async fn the_kubeconfig_and_context_are_chosen_as_kubectl_does() {
    let cp = seeded().await;
    let kc = two_contexts(&cp);
    let live = std::fs::read_to_string(cp.dir().join("live-context")).unwrap();
    let env: [(&str, &Path); 1] = [("KUBECONFIG", &kc)];
    let out = run_plugin(&["ips"], &env).unwrap();
    assert!(
        !out.status.success(),
        "the current context is dead: {}",
        describe(&out)
    );
    let out = run_plugin(&["--context", &live, "ips"], &env).unwrap();
    assert!(ok(out).contains("198.18.0.200"));
    let out = run_plugin(
        &[
            "ips",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--context",
            &live,
        ],
        &[],
    )
    .unwrap();
    assert!(
        ok(out).contains("198.18.0.200"),
        "flags after the subcommand work too"
    );
    let out = run_plugin(&["--context", "nope", "ips"], &env).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        describe(&out)
    );
}

#[tokio::test]
#[ignore = "needs the kube-apiserver built by make control-plane"]
async fn errors_say_when_the_crd_is_missing_or_access_is_denied() {
    let cp = ControlPlane::start().await.expect("control plane");
    let out = plugin(&cp, &["ips"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("the EgressGateway API (egressgw.io) is not installed in this cluster"),
        "{err}"
    );

    cp.install_crds().await.unwrap();
    let stranger = kubeconfig_as(&cp, "jane").unwrap();
    let out = run_plugin(&["--kubeconfig", stranger.to_str().unwrap(), "ips"], &[]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("access denied: cannot list egressgateways.egressgw.io"),
        "{err}"
    );

    // The install's egressgw-view role is what a network team member needs for ips and allowlist.
    let users = repo_root().join("deploy/rbac/users.yaml");
    ok(cp
        .kubectl(["apply", "-f", users.to_str().unwrap()])
        .await
        .unwrap());
    ok(cp
        .kubectl([
            "create",
            "clusterrolebinding",
            "jane-view",
            "--clusterrole=egressgw-view",
            "--user=jane",
        ])
        .await
        .unwrap());
    let out = run_plugin(
        &["--kubeconfig", stranger.to_str().unwrap(), "allowlist"],
        &[],
    )
    .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let out = run_plugin(&["--kubeconfig", stranger.to_str().unwrap(), "ips"], &[]).unwrap();
    assert!(out.status.success(), "{}", describe(&out));
}
