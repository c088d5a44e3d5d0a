//! The `EgressGateway` custom resource (`egressgw.io/v1alpha1`, cluster-scoped).
//!
//! Addresses are kept as strings in the Rust type on purpose: the schema rejects bad input at
//! `kubectl apply`, and an object that slipped past it (an older CRD, a direct etcd write) must
//! still decode so the controller can report it with a condition instead of breaking its watch.
//! [`crate::index::gateway`] parses and re-validates them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;
use super::selector::LabelSelector;

/// API group of every egressgw resource.
pub const GROUP: &str = "egressgw.io";
/// API version served and stored.
pub const VERSION: &str = "v1alpha1";

/// Selected pods leave through stable egress IPs hosted on gateway nodes, for traffic to the
/// destination CIDRs.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "egressgw.io",
    version = "v1alpha1",
    kind = "EgressGateway",
    plural = "egressgateways",
    singular = "egressgateway",
    shortname = "egw",
    category = "egressgw",
    status = "EgressGatewayStatus",
    printcolumn = r#"{"name":"Egress IPs","type":"string","jsonPath":".status.egressIPList","description":"The stable source IPs that firewalls allowlist"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.gatewayNodes","description":"Nodes hosting the egress IPs now, in the order of the egress IPs"}"#,
    printcolumn = r#"{"name":"Selected","type":"integer","jsonPath":".status.selectedPods","description":"Running pods with IPs whose traffic uses this gateway"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Destinations","type":"string","priority":1,"jsonPath":".spec.destinationCIDRs"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        // Judged only when every egress IP is valid: a malformed or missing IP is reported on
        // its own item, not again here as a family mismatch.
        "rule": "size(self.egressIPs) == 0 || self.egressIPs.exists(e, !isIP(e)) || self.destinationCIDRs.all(d, !isCIDR(d) || self.egressIPs.exists(e, isIP(e) && ip(e).family() == cidr(d).ip().family()))",
        "message": "every destination CIDR needs an egress IP of the same address family",
        "fieldPath": ".destinationCIDRs"
    },
    {
        "rule": "!has(self.excludedCIDRs) || self.excludedCIDRs.all(x, !isCIDR(x) || self.destinationCIDRs.exists(d, isCIDR(d) && cidr(d).ip().family() == cidr(x).ip().family() && cidr(d).containsCIDR(cidr(x))))",
        "message": "every excluded CIDR must lie inside one of destinationCIDRs (an exclusion outside them excludes nothing)",
        "fieldPath": ".excludedCIDRs"
    },
    {
        "rule": "!has(self.excludedCIDRs) || self.destinationCIDRs.all(d, !isCIDR(d) || !self.excludedCIDRs.exists(x, isCIDR(x) && cidr(x).ip().family() == cidr(d).ip().family() && cidr(x).containsCIDR(cidr(d))))",
        "message": "an excluded CIDR covers a whole destination CIDR: nothing would be SNATed for it",
        "fieldPath": ".excludedCIDRs"
    }
]))]
#[serde(rename_all = "camelCase")]
pub struct EgressGatewaySpec {
    /// Namespaces whose pods may be selected (ANDed with `podSelector`). `{}` selects every
    /// namespace; it is required so that "all namespaces" is always a written decision.
    pub namespace_selector: LabelSelector,
    /// Pods (in the namespaces above) whose traffic leaves through this gateway. `{}` selects
    /// every pod of those namespaces.
    pub pod_selector: LabelSelector,
    /// Only traffic to these networks is given an egress IP. Required, non-empty; network
    /// addresses without host bits (`203.0.113.0/24`, not `203.0.113.7/24`).
    #[serde(rename = "destinationCIDRs")]
    #[schemars(schema_with = "schema::destination_cidrs")]
    pub destination_cidrs: Vec<String>,
    /// Carve-outs from `destinationCIDRs`: traffic to these networks is left alone.
    #[serde(
        rename = "excludedCIDRs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(schema_with = "schema::excluded_cidrs")]
    pub excluded_cidrs: Vec<String>,
    /// The stable source IPs, spread over the gateway nodes. Each must sit in the subnet of an
    /// interface of the gateway nodes (the node LAN), and belong to one gateway only.
    #[serde(rename = "egressIPs")]
    #[schemars(schema_with = "schema::egress_ips")]
    pub egress_ips: Vec<String>,
    /// Nodes allowed to host the egress IPs.
    pub gateway_node_selector: LabelSelector,
    /// Interface that carries the egress IPs. Default: the interface whose subnet holds the IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::interface_name")]
    pub interface: Option<String>,
}

/// What the controller last computed for a gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressGatewayStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where each egress IP lives now. The record of truth for agents and for failover.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["egressIP"]))]
    pub assignments: Vec<IpAssignment>,
    /// `spec.egressIPs` comma-separated, for `kubectl get egw` (a printer column shows an
    /// array as JSON).
    #[serde(
        default,
        rename = "egressIPList",
        skip_serializing_if = "Option::is_none"
    )]
    pub egress_ip_list: Option<String>,
    /// The nodes of `assignments`, comma-separated in the order of `spec.egressIPs`
    /// (`<none>` for an IP without a node; just `<none>` when no IP has one), for
    /// `kubectl get egw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_nodes: Option<String>,
    /// Running pods with IPs whose traffic uses this gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_pods: Option<i64>,
    /// What the gateway really leaves out of its destinations: `spec.excludedCIDRs` plus the
    /// cluster-internal ranges that overlap its destinations (pod ranges, node addresses,
    /// Service ranges), which every gateway excludes automatically.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effective_exclusions: Vec<String>,
    /// `Ready`, `Programmed`, `Conflicted`, `Degraded`, in the `metav1.Condition` shape.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One egress IP and the node hosting it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpAssignment {
    /// The egress IP.
    #[serde(rename = "egressIP")]
    pub egress_ip: String,
    /// The node hosting it; absent while no node is eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The interface on that node that carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The node agent's lease epoch the assignment was made for; an agent that was fenced
    /// comes back with a new epoch and does not host IPs assigned to its old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// When the IP arrived on this node (or lost its node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}
