//! Label selectors in kubectl's words, and which of their requirements some labels fail.

use crate::api::{LabelLookup, LabelSelector, LabelSelectorRequirement, SelectorOperator};

/// `app=invoicer,tier in (a,b)` (`{}`, selecting everything, prints as `<everything>`).
pub fn describe(selector: &LabelSelector) -> String {
    if selector.is_empty() {
        return "<everything>".to_string();
    }
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    parts.extend(selector.match_expressions.iter().map(requirement));
    parts.join(",")
}

fn requirement(e: &LabelSelectorRequirement) -> String {
    match e.operator {
        SelectorOperator::In => format!("{} in ({})", e.key, e.values.join(",")),
        SelectorOperator::NotIn => format!("{} notin ({})", e.key, e.values.join(",")),
        SelectorOperator::Exists => e.key.clone(),
        SelectorOperator::DoesNotExist => format!("!{}", e.key),
    }
}

fn has<L: LabelLookup + ?Sized>(labels: &L, key: &str) -> String {
    match labels.label(key) {
        Some(v) => format!("has {key}={v}"),
        None => format!("has no label {key}"),
    }
}

/// Each requirement of `selector` that `labels` fail, with what the object has instead:
/// `app=invoicer (has app=web)`. Empty when the selector matches.
pub fn unmatched<L: LabelLookup + ?Sized>(selector: &LabelSelector, labels: &L) -> Vec<String> {
    let mut out: Vec<String> = selector
        .match_labels
        .iter()
        .filter(|(k, v)| labels.label(k) != Some(v.as_str()))
        .map(|(k, v)| format!("{k}={v} ({})", has(labels, k)))
        .collect();
    out.extend(
        selector
            .match_expressions
            .iter()
            .filter(|e| !e.matches(labels))
            .map(|e| format!("{} ({})", requirement(e), has(labels, &e.key))),
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_failed_requirement_is_named_with_what_the_object_has() {
        let s = LabelSelector {
            match_labels: labels(&[("app", "invoicer"), ("team", "billing")]),
            match_expressions: vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: SelectorOperator::In,
                    values: vec!["a".into(), "b".into()],
                },
                LabelSelectorRequirement {
                    key: "debug".into(),
                    operator: SelectorOperator::DoesNotExist,
                    values: vec![],
                },
            ],
        };
        assert_eq!(
            describe(&s),
            "app=invoicer,team=billing,tier in (a,b),!debug"
        );
        let got = unmatched(
            &s,
            &labels(&[("app", "web"), ("team", "billing"), ("debug", "1")]),
        );
        assert_eq!(
            got,
            [
                "app=invoicer (has app=web)",
                "tier in (a,b) (has no label tier)",
                "!debug (has debug=1)"
            ]
        );
        assert!(
            unmatched(
                &s,
                &labels(&[("app", "invoicer"), ("team", "billing"), ("tier", "a")])
            )
            .is_empty()
        );
        assert_eq!(describe(&LabelSelector::default()), "<everything>");
    }
}
