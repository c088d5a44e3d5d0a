//! The control-plane harness itself: it starts fast, leaves nothing behind (also when a test
//! panics), and plays kubelet for Nodes and Pods the way the end-to-end tests need.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use egressgw_tests::control_plane::{ControlPlane, PAUSE_IMAGE};
use egressgw_tests::testbed::SERVICE_RANGE;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Api;

/// Target for a start with the binaries already built (the issue asks for under 5 s);
/// asserted with slack because tests run in parallel on a 2-core machine.
const WARM_START_TARGET: Duration = Duration::from_secs(5);
const WARM_START_LIMIT: Duration = Duration::from_secs(30);

fn alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would still show `State: Z`.
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

fn assert_gone(pids: (Option<u32>, Option<u32>), dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(1);
    for pid in [pids.0, pids.1].into_iter().flatten() {
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(pid), "process {pid} outlived its ControlPlane");
    }
    assert!(!dir.exists(), "{} outlived its ControlPlane", dir.display());
}

#[tokio::test]
#[ignore = "needs kube-apiserver and etcd built by `make control-plane`"]
async fn starts_serves_and_cleans_up_after_itself() {
    let started = Instant::now();
    let cp = ControlPlane::start().await.expect("control plane");
    let took = started.elapsed();
    eprintln!(
        "ControlPlane::start() took {took:?} (target {WARM_START_TARGET:?}); kubectl {}",
        cp.kubectl_path().display()
    );
    assert!(took < WARM_START_LIMIT, "start took {took:?}");

    let version = cp.client().apiserver_version().await.expect("version");
    assert_eq!(
        format!("{}.{}", version.major, version.minor.trim_end_matches('+')),
        "1.34"
    );
    assert!(
        cp.server().starts_with("https://127.0.0.1:"),
        "{}",
        cp.server()
    );

    let out = cp
        .kubectl(["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"])
        .await
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("system:masters"));

    let out = cp.kubectl(["get", "namespaces"]).await.expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cp.dir().join("kubectl-cache").is_dir(),
        "kubectl keeps its discovery cache in the control-plane folder, not in ~/.kube"
    );

    // The `kubernetes` Service takes its ClusterIP from the testbed's Service range, never
    // from the machine's real network (issue 18).
    let services: Api<Service> = Api::namespaced(cp.client(), "default");
    let deadline = Instant::now() + Duration::from_secs(20);
    let cluster_ip = loop {
        let ip = services
            .get_opt("kubernetes")
            .await
            .expect("get service")
            .and_then(|s| s.spec?.cluster_ip);
        match ip {
            Some(ip) => break ip,
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            None => panic!("no kubernetes Service after 20 s"),
        }
    };
    let cluster_ip: Ipv4Addr = cluster_ip.parse().expect("an IPv4 ClusterIP");
    assert!(
        SERVICE_RANGE.contains(cluster_ip),
        "kubernetes Service at {cluster_ip}, outside {SERVICE_RANGE}"
    );
    let pids = cp.pids();
    assert!(pids.0.is_some() && pids.1.is_some());
    let dir = cp.dir().to_path_buf();
    drop(cp);
    assert_gone(pids, &dir);
}

#[test]
#[ignore = "needs kube-apiserver and etcd built by `make control-plane`"]
fn a_panicking_test_leaves_nothing_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let cp = ControlPlane::start().await.expect("control plane");
            tx.send((cp.pids(), cp.dir().to_path_buf())).expect("send");
            panic!("a test failing while it holds a control plane");
        })
    })
    .join();
    assert!(panicked.is_err(), "the thread was meant to panic");
    let (pids, dir) = rx.recv().expect("the control plane had started");
    assert_gone(pids, &dir);
}

#[tokio::test]
#[ignore = "needs kube-apiserver and etcd built by `make control-plane`"]
async fn nodes_and_pods_get_status_like_a_kubelet_gives() {
    let cp = ControlPlane::start().await.expect("control plane");
    let node_ip = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));
    let pod_ip = IpAddr::V4(Ipv4Addr::new(198, 19, 1, 10));

    let node = cp
        .create_node("node-1", &[("egressgw.io/gateway", "true")], node_ip, true)
        .await
        .expect("node");
    assert_eq!(
        node.metadata.labels.as_ref().expect("labels")["egressgw.io/gateway"],
        "true"
    );
    let status = node.status.expect("node status");
    let addresses = status.addresses.expect("addresses");
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "198.18.0.11")
    );
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.status.clone())
            })
    };
    let nodes: Api<Node> = Api::all(cp.client());
    assert_eq!(
        ready(&nodes.get("node-1").await.expect("node")).as_deref(),
        Some("True")
    );
    let node = cp.set_node_ready("node-1", false).await.expect("not ready");
    assert_eq!(ready(&node).as_deref(), Some("False"));
    assert!(
        node.status
            .and_then(|s| s.addresses)
            .is_some_and(|a| !a.is_empty()),
        "setting Ready keeps the addresses"
    );

    let ns = cp
        .create_namespace("billing", &[("team", "billing")])
        .await
        .expect("namespace");
    assert_eq!(ns.metadata.labels.expect("labels")["team"], "billing");

    let pod = cp
        .create_pod("billing", "invoicer-1", &[("app", "invoicer")], "node-1")
        .await
        .expect("pod");
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some("node-1"));
    assert_eq!(spec.containers[0].image.as_deref(), Some(PAUSE_IMAGE));
    assert!(
        pod.status.and_then(|s| s.pod_ip).is_none(),
        "a new pod has no IP yet"
    );

    let pod = cp
        .set_pod_ip("billing", "invoicer-1", pod_ip)
        .await
        .expect("pod IP");
    let status = pod.status.expect("pod status");
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some("198.19.1.10"));
    assert_eq!(status.pod_ips.expect("podIPs")[0].ip, "198.19.1.10");
    assert_eq!(status.host_ip.as_deref(), Some("198.18.0.11"));
    assert!(
        status
            .conditions
            .expect("conditions")
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    let out = cp
        .kubectl(["get", "pods", "-n", "billing", "-o", "wide", "--no-headers"])
        .await
        .expect("kubectl");
    let printed = String::from_utf8_lossy(&out.stdout);
    for expected in ["invoicer-1", "1/1", "Running", "198.19.1.10", "node-1"] {
        assert!(
            printed.contains(expected),
            "{expected} missing from: {printed}"
        );
    }

    let pods: Api<Pod> = Api::namespaced(cp.client(), "billing");
    let pod = cp
        .set_pod_phase("billing", "invoicer-1", "Succeeded")
        .await
        .expect("phase");
    assert_eq!(
        pod.status.and_then(|s| s.phase).as_deref(),
        Some("Succeeded")
    );

    cp.delete_pod("billing", "invoicer-1")
        .await
        .expect("delete");
    assert!(
        pods.get_opt("invoicer-1").await.expect("get").is_none(),
        "grace-0 delete removes the pod at once"
    );
}
