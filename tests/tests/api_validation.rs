//! Bad EgressGateway input is rejected by the real kube-apiserver (CRD schema and CEL rules),
//! with a message that names the offending field.

use egressgw_tests::control_plane::ControlPlane;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};

/// A valid gateway; each case changes one thing.
fn valid() -> Value {
    json!({
        "apiVersion": "egressgw.io/v1alpha1",
        "kind": "EgressGateway",
        "metadata": { "name": "valid" },
        "spec": {
            "namespaceSelector": { "matchLabels": { "team": "billing" } },
            "podSelector": { "matchLabels": { "app": "invoicer" } },
            "destinationCIDRs": ["203.0.113.0/24"],
            "egressIPs": ["198.18.0.200", "198.18.0.201"],
            "gatewayNodeSelector": { "matchLabels": { "egressgw.io/gateway": "true" } },
        }
    })
}

const MIXED_FAMILY: &str = "mixed-family";
const FAMILY_MESSAGE: &str = "same address family";

struct Case {
    name: &'static str,
    /// Pointer into the object and the bad value put there.
    pointer: &'static str,
    value: Value,
    /// Every string must appear in the apiserver's message.
    expect: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "malformed-ip",
            pointer: "/spec/egressIPs",
            value: json!(["198.18.0.300"]),
            expect: &[
                "spec.egressIPs[0]",
                "\"198.18.0.300\" is not a valid IP address",
            ],
        },
        Case {
            name: "malformed-cidr",
            pointer: "/spec/destinationCIDRs",
            value: json!(["203.0.113.0/33"]),
            expect: &["spec.destinationCIDRs[0]", "is not a valid CIDR"],
        },
        Case {
            name: "cidr-without-prefix",
            pointer: "/spec/excludedCIDRs",
            value: json!(["203.0.113.128"]),
            expect: &["spec.excludedCIDRs[0]", "is not a valid CIDR"],
        },
        Case {
            name: "empty-egress-ips",
            pointer: "/spec/egressIPs",
            value: json!([]),
            expect: &["spec.egressIPs", "at least 1 items"],
        },
        Case {
            name: "empty-destinations",
            pointer: "/spec/destinationCIDRs",
            value: json!([]),
            expect: &["spec.destinationCIDRs", "at least 1 items"],
        },
        Case {
            name: "duplicate-egress-ips",
            pointer: "/spec/egressIPs",
            value: json!(["198.18.0.200", "198.18.0.200"]),
            expect: &["spec.egressIPs[1]", "Duplicate value", "198.18.0.200"],
        },
        Case {
            name: "host-bits-set",
            pointer: "/spec/destinationCIDRs",
            value: json!(["203.0.113.7/24"]),
            expect: &[
                "spec.destinationCIDRs[0]",
                "\"203.0.113.7/24\" has host bits set",
            ],
        },
        Case {
            name: MIXED_FAMILY,
            pointer: "/spec/destinationCIDRs",
            value: json!(["2001:db8::/32"]),
            expect: &["spec.destinationCIDRs", FAMILY_MESSAGE],
        },
        Case {
            name: "non-canonical-ip",
            pointer: "/spec/egressIPs",
            value: json!(["198.018.0.200"]),
            expect: &["spec.egressIPs[0]"],
        },
        Case {
            name: "loopback-egress-ip",
            pointer: "/spec/egressIPs",
            value: json!(["127.0.0.1"]),
            expect: &["spec.egressIPs[0]", "not a unicast address a node can host"],
        },
        Case {
            name: "unknown-operator",
            pointer: "/spec/podSelector",
            value: json!({ "matchExpressions": [{ "key": "app", "operator": "Foo", "values": ["x"] }] }),
            expect: &[
                "spec.podSelector.matchExpressions[0].operator",
                "Unsupported value: \"Foo\"",
            ],
        },
        Case {
            name: "in-without-values",
            pointer: "/spec/namespaceSelector",
            value: json!({ "matchExpressions": [{ "key": "team", "operator": "In" }] }),
            expect: &[
                "spec.namespaceSelector.matchExpressions[0]",
                "values must be non-empty",
            ],
        },
        Case {
            name: "exists-with-values",
            pointer: "/spec/gatewayNodeSelector",
            value: json!({ "matchExpressions": [{ "key": "zone", "operator": "Exists", "values": ["a"] }] }),
            expect: &[
                "spec.gatewayNodeSelector.matchExpressions[0]",
                "empty for Exists",
            ],
        },
        Case {
            name: "exclusion-outside-destinations",
            pointer: "/spec/excludedCIDRs",
            value: json!(["198.51.100.0/24"]),
            expect: &[
                "spec.excludedCIDRs",
                "must lie inside one of destinationCIDRs",
            ],
        },
        Case {
            name: "exclusion-covering-a-destination",
            pointer: "/spec/excludedCIDRs",
            value: json!(["203.0.0.0/16"]),
            expect: &["spec.excludedCIDRs", "covers a whole destination CIDR"],
        },
        Case {
            name: "label-value-with-a-space",
            pointer: "/spec/namespaceSelector",
            value: json!({ "matchLabels": { "team": "billing team" } }),
            expect: &[
                "spec.namespaceSelector.matchLabels[team]",
                "\"billing team\" is not a valid label value",
            ],
        },
        Case {
            name: "label-value-too-long",
            pointer: "/spec/podSelector",
            value: json!({ "matchLabels": { "app": "a".repeat(64) } }),
            expect: &["spec.podSelector.matchLabels.app", "Too long"],
        },
        Case {
            name: "label-key-with-a-space",
            pointer: "/spec/podSelector",
            value: json!({ "matchLabels": { "app name": "invoicer" } }),
            expect: &[
                "spec.podSelector.matchLabels",
                "label key \"app name\" is not valid",
            ],
        },
        Case {
            name: "label-key-prefix-too-long",
            pointer: "/spec/gatewayNodeSelector",
            value: json!({ "matchLabels": { format!("{}/gateway", "e".repeat(254)): "true" } }),
            expect: &["spec.gatewayNodeSelector.matchLabels", "is not valid"],
        },
        Case {
            name: "too-many-match-labels",
            pointer: "/spec/podSelector",
            value: json!({
                "matchLabels": Value::Object((0..65).map(|i| (format!("k{i}"), json!("v"))).collect())
            }),
            expect: &["spec.podSelector.matchLabels", "must have at most 64 items"],
        },
        Case {
            name: "expression-key-upper-case-prefix",
            pointer: "/spec/gatewayNodeSelector",
            value: json!({ "matchExpressions": [{ "key": "Zone.Example/zone", "operator": "Exists" }] }),
            expect: &[
                "spec.gatewayNodeSelector.matchExpressions[0].key",
                "label key \"Zone.Example/zone\" is not valid",
            ],
        },
        Case {
            name: "expression-value-bad",
            pointer: "/spec/podSelector",
            value: json!({ "matchExpressions": [{ "key": "app", "operator": "NotIn", "values": ["web", "-web"] }] }),
            expect: &[
                "spec.podSelector.matchExpressions[0].values[1]",
                "\"-web\" is not a valid label value",
            ],
        },
        Case {
            name: "missing-egress-ips",
            pointer: "/spec/egressIPs",
            value: Value::Null,
            expect: &["spec.egressIPs", "Required value"],
        },
    ]
}

fn gateways(cp: &ControlPlane) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "egressgw.io".into(),
        version: "v1alpha1".into(),
        api_version: "egressgw.io/v1alpha1".into(),
        kind: "EgressGateway".into(),
        plural: "egressgateways".into(),
    };
    Api::all_with(cp.client(), &resource)
}

fn object_for(case: &Case) -> DynamicObject {
    let mut object = valid();
    object["metadata"]["name"] = json!(case.name);
    let (parent, key) = case.pointer.rsplit_once('/').expect("pointer has a parent");
    let parent = object
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("parent is an object of the valid gateway");
    if case.value.is_null() {
        parent.remove(key);
    } else {
        parent.insert(key.to_string(), case.value.clone());
    }
    serde_json::from_value(object).expect("a DynamicObject")
}

#[tokio::test]
#[ignore = "needs kube-apiserver and etcd built by `make control-plane`"]
async fn the_apiserver_rejects_bad_input_naming_the_field() {
    let cp = ControlPlane::start_with_crds()
        .await
        .expect("control plane with CRDs");
    let api = gateways(&cp);

    api.create(
        &PostParams::default(),
        &serde_json::from_value(valid()).expect("object"),
    )
    .await
    .expect("the valid base object is accepted");

    let mut failures = Vec::new();
    for case in cases() {
        match api.create(&PostParams::default(), &object_for(&case)).await {
            Ok(_) => failures.push(format!("{}: accepted, expected a rejection", case.name)),
            Err(kube::Error::Api(status)) => {
                eprintln!("{}: {}", case.name, status.message);
                let missing: Vec<_> = case
                    .expect
                    .iter()
                    .filter(|e| !status.message.contains(*e))
                    .collect();
                // One mistake, one message: a bad egress IP is not also a family mismatch.
                let noise = case.name != MIXED_FAMILY && status.message.contains(FAMILY_MESSAGE);
                if status.code != 422 || !missing.is_empty() || noise {
                    failures.push(format!(
                        "{}: code {} message {:?} lacks {:?}{}",
                        case.name,
                        status.code,
                        status.message,
                        missing,
                        if noise {
                            " and repeats the family rule"
                        } else {
                            ""
                        }
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "validation gaps:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
#[ignore = "needs kube-apiserver and etcd built by `make control-plane`"]
async fn kubectl_apply_shows_the_user_which_field_is_wrong() {
    let cp = ControlPlane::start_with_crds()
        .await
        .expect("control plane with CRDs");
    let mut object = valid();
    object["metadata"]["name"] = json!("host-bits");
    object["spec"]["destinationCIDRs"] = json!(["203.0.113.7/24"]);
    let manifest = cp.dir().join("host-bits.json");
    std::fs::write(&manifest, object.to_string()).expect("write manifest");

    let out = cp
        .kubectl(
            ["apply", "-f"]
                .iter()
                .map(std::ffi::OsStr::new)
                .chain([manifest.as_os_str()]),
        )
        .await
        .expect("kubectl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kubectl apply accepted a CIDR with host bits"
    );
    assert!(
        stderr.contains("spec.destinationCIDRs[0]")
            && stderr.contains("\"203.0.113.7/24\" has host bits set"),
        "kubectl's message does not name the field and the fix: {stderr}"
    );
}
