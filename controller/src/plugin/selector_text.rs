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
    annotated(selector, labels)
        .into_iter()
        .filter_map(|(text, failed)| failed.then_some(text))
        .collect()
}

/// Why `labels` fail `selector`, naming each requirement once: the whole selector, each
/// failed requirement followed by what the object has instead:
/// `team in (payments,payments-batch) (has team=billing)`, or for a selector of several
/// requirements `app=invoicer (has app=web), team=billing`.
pub fn mismatch<L: LabelLookup + ?Sized>(selector: &LabelSelector, labels: &L) -> String {
    if selector.is_empty() {
        return describe(selector);
    }
    annotated(selector, labels)
        .into_iter()
        .map(|(text, _)| text)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every requirement in kubectl's words, a failed one with what the object has; and whether
/// it failed.
fn annotated<L: LabelLookup + ?Sized>(selector: &LabelSelector, labels: &L) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = selector
        .match_labels
        .iter()
        .map(|(k, v)| {
            if labels.label(k) == Some(v.as_str()) {
                (format!("{k}={v}"), false)
            } else {
                (format!("{k}={v} ({})", has(labels, k)), true)
            }
        })
        .collect();
    out.extend(selector.match_expressions.iter().map(|e| {
        if e.matches(labels) {
            (requirement(e), false)
        } else {
            (
                format!("{} ({})", requirement(e), has(labels, &e.key)),
                true,
            )
        }
    }));
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
        assert_eq!(
            mismatch(
                &s,
                &labels(&[("app", "web"), ("team", "billing"), ("debug", "1")])
            ),
            "app=invoicer (has app=web), team=billing, tier in (a,b) (has no label tier), \
             !debug (has debug=1)"
        );
    }

    #[test]
    fn a_one_requirement_selector_is_named_once() {
        // kubectl egress explain said "namespaceSelector team in (payments,payments-batch):
        // team in (payments,payments-batch) (has team=billing)" (issue 16).
        let s = LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: SelectorOperator::In,
                values: vec!["payments".into(), "payments-batch".into()],
            }],
        };
        assert_eq!(
            mismatch(&s, &labels(&[("team", "billing")])),
            "team in (payments,payments-batch) (has team=billing)"
        );
    }
}
