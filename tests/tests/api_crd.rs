//! The EgressGateway CRD on a real kube-apiserver: it installs and is Established, every
//! example applies with the real kubectl, the status subresource takes what the controller
//! writes, and `kubectl get egw` shows it.

use std::path::PathBuf;

use egressgw::api::{EgressGateway, EgressGatewayStatus, IpAssignment};
use egressgw_tests::control_plane::{ControlPlane, parse_table, repo_root};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

const CRD_NAME: &str = "egressgateways.egressgw.io";
/// The controller's field manager (DESIGN.md).
const CONTROLLER_MANAGER: &str = "egressgw-controller";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
#[ignore = "needs kube-apiserver and etcd built by `make control-plane`"]
async fn crd_installs_and_becomes_established() {
    let cp = ControlPlane::start().await.expect("control plane");
    let names = cp
        .install_crds()
        .await
        .expect("CRDs install and become Established");
    assert_eq!(names, vec![CRD_NAME.to_string()]);

    let out = cp
        .kubectl([
            "get",
            "crd",
            CRD_NAME,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#,
        ])
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "True");

    let out = cp
        .kubectl(["api-resources", "--api-group=egressgw.io", "--no-headers"])
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "{}", describe(&out));
    let resources = stdout(&out);
    let fields: Vec<&str> = resources.split_whitespace().collect();
    assert_eq!(
        fields,
        [
            "egressgateways",
            "egw",
            "egressgw.io/v1alpha1",
            "false",
            "EgressGateway"
        ],
        "short name egw, cluster-scoped: {resources}"
    );
}

fn example_files() -> Vec<PathBuf> {
    let dir = repo_root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
#[ignore = "needs kube-apiserver and etcd built by `make control-plane`"]
async fn every_example_applies_with_kubectl() {
    let examples = example_files();
    assert!(
        !examples.is_empty(),
        "examples/ holds no *.yaml: there is nothing a user can start from"
    );
    let cp = ControlPlane::start_with_crds()
        .await
        .expect("control plane with CRDs");

    for file in &examples {
        let out = cp
            .kubectl([
                std::ffi::OsStr::new("apply"),
                "-f".as_ref(),
                file.as_os_str(),
            ])
            .await
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "{} does not apply:\n{}",
            file.display(),
            describe(&out)
        );
        // The server must have stored what the file says, not just answered.
        let out = cp
            .kubectl([
                std::ffi::OsStr::new("get"),
                "-f".as_ref(),
                file.as_os_str(),
                "-o".as_ref(),
                "name".as_ref(),
            ])
            .await
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "{} was not stored:\n{}",
            file.display(),
            describe(&out)
        );
    }
}

fn whole_second_now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid timestamp"))
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(generation),
        last_transition_time: whole_second_now(),
    }
}

#[tokio::test]
#[ignore = "needs kube-apiserver and etcd built by `make control-plane`"]
async fn status_subresource_takes_the_controller_status_and_kubectl_prints_it() {
    let cp = ControlPlane::start_with_crds()
        .await
        .expect("control plane with CRDs");
    let example = repo_root()
        .join("examples")
        .join("02-two-ips-two-nodes.yaml");
    let example = if example.exists() {
        example
    } else {
        example_files().into_iter().next().expect("an example")
    };
    let out = cp
        .kubectl([
            std::ffi::OsStr::new("apply"),
            "-f".as_ref(),
            example.as_os_str(),
        ])
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "{}", describe(&out));

    let api: Api<EgressGateway> = Api::all(cp.client());
    let gateway = api
        .list(&Default::default())
        .await
        .expect("list gateways")
        .items
        .remove(0);
    let name = gateway.metadata.name.clone().expect("name");
    let generation = gateway.metadata.generation.expect("generation");
    let ips = gateway.spec.egress_ips.clone();
    let nodes = ["node-a", "node-b"];

    let status = EgressGatewayStatus {
        observed_generation: Some(generation),
        assignments: ips
            .iter()
            .zip(nodes.iter().cycle())
            .map(|(ip, node)| IpAssignment {
                egress_ip: ip.clone(),
                node: Some(node.to_string()),
                interface: Some("eth1".into()),
                epoch: Some(1),
                since: Some(whole_second_now()),
            })
            .collect(),
        egress_ip_list: Some(ips.join(",")),
        effective_exclusions: vec!["203.0.113.128/25".into()],
        gateway_nodes: Some(
            nodes
                .iter()
                .cycle()
                .take(ips.len())
                .copied()
                .collect::<Vec<_>>()
                .join(","),
        ),
        selected_pods: Some(3),
        conditions: vec![
            condition(
                "Ready",
                "True",
                "Programmed",
                "every egress IP is hosted and programmed",
                generation,
            ),
            condition(
                "Programmed",
                "True",
                "AgentsProgrammed",
                "all agents report the plan",
                generation,
            ),
        ],
    };
    let patch = json!({
        "apiVersion": "egressgw.io/v1alpha1",
        "kind": "EgressGateway",
        "status": status,
    });
    let written = api
        .patch_status(
            &name,
            &PatchParams::apply(CONTROLLER_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("status subresource accepts the controller's status");
    assert_eq!(
        written.status.as_ref(),
        Some(&status),
        "status round-trips through the apiserver"
    );
    assert_eq!(
        written.metadata.generation,
        Some(generation),
        "a status write does not bump generation"
    );

    let out = cp.kubectl(["get", "egw"]).await.expect("kubectl runs");
    assert!(out.status.success(), "{}", describe(&out));
    let printed = stdout(&out);
    eprintln!("kubectl get egw:\n{printed}");
    let rows = parse_table(&printed);
    assert_eq!(rows.len(), 1, "{printed}");
    let row = &rows[0];
    let headers: Vec<&str> = row.keys().map(String::as_str).collect();
    for header in ["NAME", "EGRESS IPS", "NODES", "SELECTED", "READY", "AGE"] {
        assert!(
            headers.contains(&header),
            "column {header} missing: {printed}"
        );
    }
    assert_eq!(row["NAME"], name);
    assert_eq!(
        row["EGRESS IPS"],
        ips.join(","),
        "egress IPs read as a plain list: {printed}"
    );
    assert_eq!(row["NODES"], "node-a,node-b");
    assert_eq!(row["SELECTED"], "3");
    assert_eq!(row["READY"], "True");

    let out = cp
        .kubectl(["get", "egw", "-o", "wide"])
        .await
        .expect("kubectl runs");
    assert!(out.status.success(), "{}", describe(&out));
    let wide = stdout(&out);
    eprintln!("kubectl get egw -o wide:\n{wide}");
    let rows = parse_table(&wide);
    assert_eq!(rows[0]["REASON"], "Programmed", "{wide}");
    for cidr in &gateway.spec.destination_cidrs {
        assert!(rows[0]["DESTINATIONS"].contains(cidr.as_str()), "{wide}");
    }
}
