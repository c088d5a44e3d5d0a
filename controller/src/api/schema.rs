//! Hand-written OpenAPI schemas for the address fields and the label selectors' keys and
//! values, so `kubectl apply` rejects bad input with a message that names the field and the
//! value (CEL `x-kubernetes-validations` on each item).

use schemars::{Schema, SchemaGenerator, json_schema};

use super::label_grammar::{
    KEY_REGEX, KEY_RULE, MAX_KEY_PREFIX_LEN, MAX_LABEL_NAME_LEN, VALUE_REGEX, VALUE_RULE,
};
use super::selector::{MAX_MATCH_LABELS, MAX_SELECTOR_VALUES};

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

/// CEL: `key` (a CEL expression of type string) is a label key. The regex bounds the name
/// part; `indexOf('/')` bounds the prefix.
fn label_key_cel(key: &str) -> String {
    format!("{key}.matches(r'{KEY_REGEX}') && {key}.indexOf('/') <= {MAX_KEY_PREFIX_LEN}")
}

/// The rule on a `matchExpressions` entry that its `key` is a label key (the entry's schema
/// carries it: a rule on the key's own schema could not quote the value in its message any
/// better, and this keeps the requirement's rules together).
pub fn label_key_rule() -> serde_json::Value {
    serde_json::json!({
        "rule": label_key_cel("self.key"),
        "messageExpression": format!("'label key \"' + self.key + '\" is not valid ' + \"({KEY_RULE})\""),
        "fieldPath": ".key"
    })
}

/// One label value: at most 63 characters of the label grammar, or empty.
fn label_value_item() -> serde_json::Value {
    serde_json::json!({
        "type": "string",
        "maxLength": MAX_LABEL_NAME_LEN,
        "x-kubernetes-validations": [{
            "rule": format!("self.matches(r'{VALUE_REGEX}')"),
            "messageExpression": format!("'\"' + self + '\" is not a valid label value ' + \"({VALUE_RULE})\"")
        }]
    })
}

/// `matchLabels`: at most [`MAX_MATCH_LABELS`] pairs; keys and values in the label grammar.
pub fn match_labels(_: &mut SchemaGenerator) -> Schema {
    let bad_key = format!("!({})", label_key_cel("k"));
    json_schema!({
        "description": "Each key: value pair must be present among the object's labels.",
        "type": "object",
        "maxProperties": MAX_MATCH_LABELS,
        "additionalProperties": label_value_item(),
        "x-kubernetes-validations": [{
            "rule": format!("self.all(k, {})", label_key_cel("k")),
            "messageExpression": format!("'label key \"' + self.filter(k, {bad_key})[0] + '\" is not valid ' + \"({KEY_RULE})\"")
        }]
    })
}

/// `matchExpressions[].values`: at most [`MAX_SELECTOR_VALUES`] label values.
pub fn label_values(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Values for In and NotIn; must be empty for Exists and DoesNotExist.",
        "type": "array",
        "maxItems": MAX_SELECTOR_VALUES,
        "items": label_value_item()
    })
}
