//! `kubectl egress` on the simulated cluster with the real controller and agents: what it
//! says matches what the controller decided and the kernel carries, and kubectl finds it on
//! the PATH as `kubectl egress`.

use std::net::Ipv4Addr;
use std::time::Duration;

use egressgw_tests::control_plane::repo_root;
use egressgw_tests::plugin_bin::{plugin_binary, run_plugin};
use egressgw_tests::sim::{SimCluster, status};

const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const GATEWAY: &str = "billing-to-mainframe";
const CONVERGE: Duration = Duration::from_secs(20);

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, network namespaces and the kube-apiserver built by make control-plane"]
async fn the_plugin_tells_what_the_controller_and_agents_did() {
    let sim = SimCluster::start(3, &[2, 3], &[EGRESS_IP], 1)
        .await
        .expect("simulated cluster");
    sim.cp
        .create_namespace("billing", &[("team", "billing")])
        .await
        .unwrap();
    sim.add_pod("billing", "invoicer-0", &[("app", "invoicer")], 1, 0)
        .await
        .unwrap();
    let example = repo_root().join("examples/01-one-ip.yaml");
    let out = sim
        .cp
        .kubectl(["apply", "-f", example.to_str().unwrap()])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = sim
        .wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
        .await
        .unwrap();
    let host = status::node_of(&g, "198.18.0.200").expect("assigned");
    assert_eq!(
        sim.holders(EGRESS_IP).unwrap(),
        vec![sim.node_index(&host).unwrap()],
        "the kernel agrees with status"
    );

    let kc = sim.cp.kubeconfig().to_str().unwrap().to_string();
    let ips: serde_json::Value = serde_json::from_str(&ok(run_plugin(
        &["--kubeconfig", &kc, "ips", "-o", "json"],
        &[],
    )
    .unwrap()))
    .unwrap();
    assert_eq!(ips[0]["node"], host.as_str());
    assert_eq!(ips[0]["ready"], "True");
    assert_eq!(ips[0]["selectedPods"], 1);

    let pod_node = sim.tb.node(1).name().to_string();
    let text = ok(run_plugin(
        &[
            "--kubeconfig",
            &kc,
            "explain",
            "pod",
            "invoicer-0",
            "-n",
            "billing",
        ],
        &[],
    )
    .unwrap());
    assert!(
        text.contains(&format!(
            "Pod billing/invoicer-0 ({}) on node {pod_node}",
            sim.tb.pod(1, 0).ip()
        )),
        "{text}"
    );
    assert!(
        text.contains("Traffic to 203.0.113.0/24 leaves from egress IP 198.18.0.200"),
        "{text}"
    );
    assert!(
        text.contains(&format!("node {pod_node} steers it to node {host} (")),
        "{text}"
    );

    // kubectl itself dispatches `kubectl egress` to the binary on the PATH.
    let dir = plugin_binary().unwrap().parent().unwrap().to_path_buf();
    let path = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let out = tokio::process::Command::new(sim.cp.kubectl_path())
        .args([
            "egress",
            "--kubeconfig",
            &kc,
            "allowlist",
            "--destination",
            "203.0.113.0/24",
        ])
        .env("PATH", path)
        .output()
        .await
        .unwrap();
    assert_eq!(ok(out), "198.18.0.200 203.0.113.0/24\n");
}
