//! Hand-written OpenAPI schemas for the address fields, so `kubectl apply` rejects bad input
//! with a message that names the field (CEL `x-kubernetes-validations` on each item).

use schemars::{Schema, SchemaGenerator, json_schema};

/// Most egress IPs one gateway may carry.
pub const MAX_EGRESS_IPS: u32 = 16;
/// Most destination CIDRs (and, separately, excluded CIDRs) one gateway may carry.
pub const MAX_CIDRS: u32 = 64;
/// Longest textual IP address accepted (an IPv6 address in full form).
pub const MAX_IP_LEN: u32 = 45;
/// Longest textual CIDR accepted.
pub const MAX_CIDR_LEN: u32 = 49;
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const MAX_INTERFACE_LEN: u32 = 15;

// Message expressions quote only `self` (bounded by maxLength): `string(ip(..))` or
// `string(cidr(..))` has no size bound for the apiserver's cost estimator, which then rejects
// the whole CRD ("estimated messageExpression cost exceeds budget by factor of more than 100x").
fn cidr_item(purpose: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "string",
        "maxLength": MAX_CIDR_LEN,
        "description": purpose,
        "x-kubernetes-validations": [
            {
                "rule": "isCIDR(self)",
                "messageExpression": "'\"' + self + '\" is not a valid CIDR; write a network such as 203.0.113.0/24'"
            },
            {
                "rule": "!isCIDR(self) || cidr(self) == cidr(self).masked()",
                "messageExpression": "'\"' + self + '\" has host bits set; write the network address (e.g. 203.0.113.0/24, not 203.0.113.7/24)'"
            },
            {
                "rule": "!isCIDR(self) || cidr(self).ip().family() == 4",
                "message": "IPv6 destinations are not supported yet in v1alpha1"
            }
        ]
    })
}

/// `spec.destinationCIDRs`: required, 1 to [`MAX_CIDRS`] networks, no duplicates.
pub fn destination_cidrs(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Only traffic to these networks is given an egress IP. Required, non-empty; network addresses without host bits.",
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_CIDRS,
        "x-kubernetes-list-type": "set",
        "items": cidr_item("A destination network, e.g. 203.0.113.0/24.")
    })
}

/// `spec.excludedCIDRs`: optional, at most [`MAX_CIDRS`] networks, no duplicates.
pub fn excluded_cidrs(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Carve-outs from destinationCIDRs: traffic to these networks is left alone.",
        "type": "array",
        "maxItems": MAX_CIDRS,
        "x-kubernetes-list-type": "set",
        "items": cidr_item("A network excluded from SNAT, e.g. 203.0.113.128/25.")
    })
}

/// `spec.egressIPs`: 1 to [`MAX_EGRESS_IPS`] unicast addresses in canonical form, no duplicates.
pub fn egress_ips(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The stable source IPs, spread over the gateway nodes.",
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_EGRESS_IPS,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": MAX_IP_LEN,
            "description": "An egress IP, e.g. 198.18.0.200.",
            "x-kubernetes-validations": [
                {
                    "rule": "isIP(self)",
                    "messageExpression": "'\"' + self + '\" is not a valid IP address'"
                },
                {
                    "rule": "!isIP(self) || ip.isCanonical(self)",
                    "messageExpression": "'\"' + self + '\" is not in canonical form (no leading zeros; IPv6 compressed and lower-case)'"
                },
                {
                    "rule": "!isIP(self) || ip(self).isGlobalUnicast()",
                    "messageExpression": "'\"' + self + '\" is not a unicast address a node can host (loopback, multicast, link-local and unspecified addresses are refused)'"
                },
                {
                    "rule": "!isIP(self) || ip(self).family() == 4",
                    "message": "IPv6 egress IPs are not supported yet in v1alpha1"
                }
            ]
        }
    })
}

/// `spec.interface`: a Linux interface name.
pub fn interface_name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Interface that carries the egress IPs. Default: the interface whose subnet holds the IP.",
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_INTERFACE_LEN,
        "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    })
}
