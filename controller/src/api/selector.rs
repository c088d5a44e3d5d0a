//! Label selectors with the Kubernetes semantics, typed so the CRD schema rejects unknown
//! operators and keys or values outside the label grammar ([`super::label_grammar`]) at
//! `kubectl apply`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// Maximum number of `matchExpressions` in one selector (keeps CEL cost and reviews sane).
pub const MAX_SELECTOR_EXPRESSIONS: u32 = 32;
/// Maximum number of values in one `matchExpressions` entry.
pub const MAX_SELECTOR_VALUES: u32 = 64;
/// Maximum number of `matchLabels` pairs in one selector (bounds the CEL cost of checking
/// their keys and values).
pub const MAX_MATCH_LABELS: u32 = 64;

/// A label query over a set of resources, as `metav1.LabelSelector`: the results of
/// `matchLabels` and `matchExpressions` are ANDed. An empty selector (`{}`) matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Each `key: value` pair must be present among the object's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema::match_labels")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements on label keys and values; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SELECTOR_EXPRESSIONS))]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0",
        "message": "values must be non-empty for operators In and NotIn, and empty for Exists and DoesNotExist"
    },
    schema::label_key_rule()
]))]
pub struct LabelSelectorRequirement {
    /// The label key the requirement applies to.
    #[schemars(length(min = 1, max = super::label_grammar::MAX_KEY_LEN))]
    pub key: String,
    /// How the key relates to the values.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn`; must be empty for `Exists` and `DoesNotExist`.
    #[serde(default)]
    #[schemars(schema_with = "schema::label_values")]
    pub values: Vec<String>,
}

/// A label selector operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Labels a selector can be matched against, whatever holds them.
pub trait LabelLookup {
    /// The value of label `key`, if the object has it.
    fn label(&self, key: &str) -> Option<&str>;
}

impl<T: LabelLookup + ?Sized> LabelLookup for &T {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}

impl LabelLookup for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl LabelSelector {
    /// Whether `labels` satisfy this selector, with `metav1.LabelSelector` semantics.
    pub fn matches<L: LabelLookup + ?Sized>(&self, labels: &L) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.label(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }

    /// Whether the selector matches every object (no requirement at all).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// The selector in the apiserver's `labelSelector` query syntax (for list/watch calls).
    pub fn to_query(&self) -> String {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for e in &self.match_expressions {
            parts.push(match e.operator {
                SelectorOperator::In => format!("{} in ({})", e.key, e.values.join(",")),
                SelectorOperator::NotIn => format!("{} notin ({})", e.key, e.values.join(",")),
                SelectorOperator::Exists => e.key.clone(),
                SelectorOperator::DoesNotExist => format!("!{}", e.key),
            });
        }
        parts.join(",")
    }
}

impl LabelSelectorRequirement {
    /// Whether `labels` satisfy this one requirement.
    pub fn matches<L: LabelLookup + ?Sized>(&self, labels: &L) -> bool {
        let value = labels.label(&self.key);
        let listed = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator {
            SelectorOperator::In => value.is_some_and(listed),
            // NotIn matches objects without the key, as in Kubernetes.
            SelectorOperator::NotIn => value.is_none_or(|v| !listed(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::default().matches(&labels(&[])));
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = LabelSelector {
            match_labels: labels(&[("app", "invoicer"), ("tier", "backend")]),
            ..Default::default()
        };
        assert!(s.matches(&labels(&[
            ("app", "invoicer"),
            ("tier", "backend"),
            ("x", "y")
        ])));
        assert!(!s.matches(&labels(&[("app", "invoicer")])));
        assert!(!s.matches(&labels(&[("app", "invoicer"), ("tier", "frontend")])));
    }

    #[test]
    fn operators_follow_kubernetes_semantics() {
        let l = labels(&[("env", "prod")]);
        let none = labels(&[]);
        let r#in = req("env", SelectorOperator::In, &["prod", "staging"]);
        assert!(r#in.matches(&l));
        assert!(!r#in.matches(&none), "In needs the key");
        let not_in = req("env", SelectorOperator::NotIn, &["prod"]);
        assert!(!not_in.matches(&l));
        assert!(
            not_in.matches(&none),
            "NotIn matches objects without the key"
        );
        assert!(not_in.matches(&labels(&[("env", "dev")])));
        assert!(req("env", SelectorOperator::Exists, &[]).matches(&l));
        assert!(!req("env", SelectorOperator::Exists, &[]).matches(&none));
        assert!(req("env", SelectorOperator::DoesNotExist, &[]).matches(&none));
        assert!(!req("env", SelectorOperator::DoesNotExist, &[]).matches(&l));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = LabelSelector {
            match_labels: labels(&[("app", "invoicer")]),
            match_expressions: vec![req("env", SelectorOperator::In, &["prod"])],
        };
        assert!(s.matches(&labels(&[("app", "invoicer"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "invoicer"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn query_syntax_round_trips_the_intent() {
        let s = LabelSelector {
            match_labels: labels(&[("app", "invoicer")]),
            match_expressions: vec![
                req("env", SelectorOperator::In, &["prod", "staging"]),
                req("canary", SelectorOperator::DoesNotExist, &[]),
            ],
        };
        assert_eq!(s.to_query(), "app=invoicer,env in (prod,staging),!canary");
    }
}
