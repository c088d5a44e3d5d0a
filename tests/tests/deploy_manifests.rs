//! The install manifests as kubectl renders them (`kubectl kustomize deploy/`): no container
//! is privileged or gains a capability beyond the agent's NET_ADMIN and NET_RAW, every
//! container has the hardening the design asks for, each component has exactly the RBAC
//! verbs it uses, and the CRD inside deploy/ is the generated one.

use std::collections::{BTreeMap, BTreeSet};

use egressgw_tests::control_plane::{locate_kubectl, repo_root};
use serde::Deserialize;
use serde_json::Value;

/// Capabilities the agent (and the cleanup that undoes its work) may add; nothing else may.
const AGENT_CAPABILITIES: [&str; 2] = ["NET_ADMIN", "NET_RAW"];
/// Workloads allowed to add them and to use the host network.
const NODE_WORKLOADS: [&str; 2] = ["egressgw-agent", "egressgw-cleanup"];
const KUSTOMIZATIONS: [&str; 2] = ["deploy", "deploy/cleanup"];
const GENERATED_CRD: &str = "crds/egressgateways.egressgw.io.yaml";
const DEPLOY_CRD: &str = "deploy/crd/egressgateways.egressgw.io.yaml";

fn render(dir: &str) -> Vec<Value> {
    let kubectl = locate_kubectl().expect("kubectl");
    let out = std::process::Command::new(&kubectl)
        .arg("kustomize")
        .arg(repo_root().join(dir))
        .output()
        .expect("kubectl kustomize runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(doc).expect("yaml"))
                .expect("json")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn all_objects() -> Vec<Value> {
    KUSTOMIZATIONS.iter().flat_map(|d| render(d)).collect()
}

fn name(o: &Value) -> String {
    o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `(workload, container, spec)` for every container and init container of every workload.
fn containers(objects: &[Value]) -> Vec<(String, String, Value, Value)> {
    let mut out = Vec::new();
    for o in objects {
        let pod = &o["spec"]["template"]["spec"];
        if pod.is_null() {
            continue;
        }
        for key in ["containers", "initContainers"] {
            for c in pod[key].as_array().into_iter().flatten() {
                out.push((
                    name(o),
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c.clone(),
                    pod.clone(),
                ));
            }
        }
    }
    out
}

#[test]
fn no_container_is_privileged_or_adds_a_capability_beyond_net_admin_and_net_raw() {
    let objects = all_objects();
    let cs = containers(&objects);
    assert!(
        cs.len() >= 4,
        "controller, agent and cleanup containers rendered: {}",
        cs.len()
    );
    for (workload, container, c, pod) in &cs {
        let who = format!("{workload}/{container}");
        let sc = &c["securityContext"];
        assert_ne!(sc["privileged"], Value::Bool(true), "{who} is privileged");
        assert_eq!(
            sc["allowPrivilegeEscalation"],
            Value::Bool(false),
            "{who} must set allowPrivilegeEscalation: false"
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"],
            Value::Bool(true),
            "{who} must have a read-only root filesystem"
        );
        let drop: Vec<&str> = sc["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(drop, ["ALL"], "{who} must drop ALL capabilities");
        let add: BTreeSet<&str> = sc["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let beyond: Vec<&&str> = add
            .iter()
            .filter(|c| !AGENT_CAPABILITIES.contains(c))
            .collect();
        assert!(beyond.is_empty(), "{who} adds {beyond:?}");
        if !add.is_empty() {
            assert!(
                NODE_WORKLOADS.contains(&workload.as_str()),
                "{who} adds capabilities {add:?}; only the agent may"
            );
        }
        for key in ["hostPID", "hostIPC"] {
            assert_ne!(pod[key], Value::Bool(true), "{who}: {key}");
        }
        if pod["hostNetwork"] == Value::Bool(true) {
            assert!(
                NODE_WORKLOADS.contains(&workload.as_str()),
                "{who} uses the host network"
            );
        }
        let host_paths: Vec<&Value> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| !v["hostPath"].is_null())
            .collect();
        assert!(
            host_paths.is_empty(),
            "{who} mounts host paths: {host_paths:?}"
        );
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{who}: seccomp RuntimeDefault"
        );
    }
}

#[test]
fn the_controller_is_non_root_replicated_and_probed_and_the_agent_gets_its_node_name() {
    let objects = render("deploy");
    let find = |kind: &str, n: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && name(o) == n)
            .unwrap_or_else(|| panic!("{kind} {n} rendered"))
            .clone()
    };
    let d = find("Deployment", "egressgw-controller");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert!(
        c["args"]
            .as_array()
            .unwrap()
            .contains(&Value::from("--identity=$(POD_NAME)"))
    );
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        (
            c["livenessProbe"]["httpGet"]["path"].as_str(),
            c["readinessProbe"]["httpGet"]["path"].as_str()
        ),
        (Some("/healthz"), Some("/readyz"))
    );
    assert_eq!(c["ports"][0]["containerPort"], 9090);

    let ds = find("DaemonSet", "egressgw-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null()),
        "tolerates gateway-node taints"
    );
    let c = &pod["containers"][0];
    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(env.get("NODE_NAME"), Some(&"spec.nodeName"));
    assert_eq!(c["ports"][0]["containerPort"], 9091);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");

    let pdb = find("PodDisruptionBudget", "egressgw-controller");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

/// `(apiGroup, resource) -> verbs` of one Role or ClusterRole.
fn rules(o: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for r in o["rules"].as_array().into_iter().flatten() {
        let strings = |k: &str| {
            r[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect::<Vec<_>>()
        };
        for g in strings("apiGroups") {
            for res in strings("resources") {
                out.entry((g.clone(), res))
                    .or_default()
                    .extend(strings("verbs"));
            }
        }
    }
    out
}

fn expect(pairs: &[(&str, &str, &[&str])]) -> BTreeMap<(String, String), BTreeSet<String>> {
    pairs
        .iter()
        .map(|(g, r, v)| {
            (
                (g.to_string(), r.to_string()),
                v.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn each_component_has_exactly_the_verbs_it_uses() {
    let objects = render("deploy");
    let role = |kind: &str, n: &str, ns: Option<&str>| {
        let o = objects
            .iter()
            .find(|o| {
                o["kind"] == kind && name(o) == n && o["metadata"]["namespace"].as_str() == ns
            })
            .unwrap_or_else(|| panic!("{kind} {n} in {ns:?}"));
        rules(o)
    };
    let watch: &[&str] = &["list", "watch"];
    assert_eq!(
        role("ClusterRole", "egressgw-controller", None),
        expect(&[
            ("egressgw.io", "egressgateways", &["get", "list", "watch"]),
            ("egressgw.io", "egressgateways/status", &["patch"]),
            ("", "nodes", &["get", "list", "watch", "patch"]),
            ("networking.k8s.io", "servicecidrs", watch),
            ("", "pods", watch),
            ("", "namespaces", watch),
        ])
    );
    assert_eq!(
        role("Role", "egressgw-controller", Some("egressgw-system")),
        expect(&[
            (
                "coordination.k8s.io",
                "leases",
                &["get", "create", "update", "list", "watch"]
            ),
            ("", "secrets", &["create", "get"]),
        ])
    );
    assert_eq!(
        role("Role", "egressgw-controller-events", Some("default")),
        expect(&[("events.k8s.io", "events", &["create", "patch"])])
    );
    assert_eq!(
        role("ClusterRole", "egressgw-agent", None),
        expect(&[
            ("egressgw.io", "egressgateways", watch),
            ("", "nodes", &["get", "list", "watch", "patch"]),
            ("networking.k8s.io", "servicecidrs", watch),
            ("", "namespaces", watch),
            ("", "pods", watch),
        ])
    );
    // The agents' Leases live in their own namespace: in egressgw-system (the leader Lease)
    // an agent may only read the peer key.
    assert_eq!(
        role("Role", "egressgw-agent", Some("egressgw-system")),
        expect(&[("", "secrets", &["get"])])
    );
    assert_eq!(
        role("Role", "egressgw-agent", Some("egressgw-agents")),
        expect(&[(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"]
        )])
    );
    assert_eq!(
        role("Role", "egressgw-controller", Some("egressgw-agents")),
        expect(&[("coordination.k8s.io", "leases", watch)])
    );
    for o in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        let all = rules(o);
        assert!(!all.keys().any(|(_, r)| r == "*"), "{} touches *", name(o));
        // Secrets: only the peer key, by name, in egressgw-system; `create` (which RBAC
        // cannot limit by name) only for the controller.
        for r in o["rules"].as_array().into_iter().flatten() {
            let has = |k: &str, v: &str| {
                r[k].as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x.as_str() == Some(v))
            };
            if !has("resources", "secrets") {
                continue;
            }
            assert_eq!(
                o["metadata"]["namespace"].as_str(),
                Some("egressgw-system"),
                "{} reads secrets outside egressgw-system",
                name(o)
            );
            let verbs: Vec<&str> = r["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let by_name = r["resourceNames"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>());
            if verbs == ["create"] {
                assert_eq!(
                    name(o),
                    "egressgw-controller",
                    "only the controller creates the peer key"
                );
            } else {
                assert_eq!(
                    (verbs, by_name),
                    (vec!["get"], Some(vec!["egressgw-peer-key"])),
                    "{}: secrets are read by name only",
                    name(o)
                );
            }
        }
        assert!(
            !all.values()
                .flatten()
                .any(|v| v == "*" || v == "escalate" || v == "bind" || v == "impersonate"),
            "{} has a dangerous verb",
            name(o)
        );
    }
}

#[test]
fn the_crd_in_deploy_is_the_generated_one() {
    let root = repo_root();
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("reading {p}: {e}"));
    assert!(
        read(GENERATED_CRD) == read(DEPLOY_CRD),
        "{DEPLOY_CRD} differs from {GENERATED_CRD}: run `cp {GENERATED_CRD} {DEPLOY_CRD}` (make deploy-crd) and commit"
    );
}

/// Catch-all and workload FlowSchemas start at this matchingPrecedence.
const WORKLOAD_PRECEDENCE: i64 = 1000;

#[test]
fn agent_heartbeats_go_to_the_node_heartbeat_priority_level() {
    let objects = render("deploy");
    let daemonset = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet" && name(o) == "egressgw-agent")
        .expect("agent DaemonSet rendered");
    let account = daemonset["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("agent service account");
    let namespace = daemonset["metadata"]["namespace"]
        .as_str()
        .expect("agent namespace");
    let schema = objects
        .iter()
        .filter(|o| o["kind"] == "FlowSchema")
        .find(|o| {
            o["spec"]["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| {
                    let subject = r["subjects"].as_array().into_iter().flatten().any(|s| {
                        s["serviceAccount"]["name"] == account
                            && s["serviceAccount"]["namespace"] == namespace
                    });
                    let leases = r["resourceRules"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|rr| {
                            let has = |k: &str, v: &str| {
                                rr[k].as_array().into_iter().flatten().any(|x| x == v)
                            };
                            has("resources", "leases")
                                && has("verbs", "update")
                                && has("namespaces", namespace)
                        });
                    subject && leases
                })
        })
        .expect("a FlowSchema for the agents' Lease updates");
    assert_eq!(
        schema["spec"]["priorityLevelConfiguration"]["name"],
        "node-high"
    );
    assert!(
        schema["spec"]["matchingPrecedence"]
            .as_i64()
            .expect("precedence")
            < WORKLOAD_PRECEDENCE
    );
}
