//! The Kubernetes grammar of label keys and values, twice: as RE2 regexes for the CRD's CEL
//! rules (`kubectl apply` refuses) and as plain Rust for the controller's re-check (an object
//! that slipped past an older CRD). A unit test holds the two to the same verdicts.
//!
//! - key: an optional prefix, a DNS subdomain of at most [`MAX_KEY_PREFIX_LEN`] characters
//!   followed by `/`, then a name of at most [`MAX_LABEL_NAME_LEN`] characters
//!   `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?` (as `metav1.LabelSelector` validation and
//!   `validation.IsQualifiedName`);
//! - value: empty, or a name of the same grammar (`validation.IsValidLabelValue`).

use thiserror::Error;

/// Longest name part of a key, and longest value.
pub const MAX_LABEL_NAME_LEN: usize = 63;
/// Longest key prefix (a DNS subdomain).
pub const MAX_KEY_PREFIX_LEN: usize = 253;
/// Longest key: prefix, `/` and name.
pub const MAX_KEY_LEN: usize = MAX_KEY_PREFIX_LEN + 1 + MAX_LABEL_NAME_LEN;

/// RE2 for a label key, without the prefix length bound (CEL checks it with `indexOf('/')`).
pub const KEY_REGEX: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// RE2 for a label value (the empty value included).
pub const VALUE_REGEX: &str = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";

/// What a key or value of the CEL messages and the controller's reasons is held to.
pub const KEY_RULE: &str = "an optional DNS-subdomain prefix (at most 253 characters) and '/', then at most 63 characters: letters, digits, '-', '_', '.', starting and ending with a letter or digit";
/// See [`KEY_RULE`].
pub const VALUE_RULE: &str = "empty, or at most 63 characters: letters, digits, '-', '_', '.', starting and ending with a letter or digit";

/// Why a label key or value is not one Kubernetes could carry.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LabelProblem {
    #[error("label key {key:?} is not valid ({KEY_RULE})")]
    Key { key: String },
    #[error("{value:?} is not a valid label value ({VALUE_RULE})")]
    Value { value: String },
}

/// Check a label key.
pub fn check_key(key: &str) -> Result<(), LabelProblem> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let ok = prefix.is_none_or(is_dns_subdomain) && is_name(name);
    if ok {
        Ok(())
    } else {
        Err(LabelProblem::Key { key: key.into() })
    }
}

/// Check a label value.
pub fn check_value(value: &str) -> Result<(), LabelProblem> {
    if value.is_empty() || is_name(value) {
        Ok(())
    } else {
        Err(LabelProblem::Value {
            value: value.into(),
        })
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most [`MAX_LABEL_NAME_LEN`].
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

/// Lower-case RFC 1123 labels joined by dots, at most [`MAX_KEY_PREFIX_LEN`].
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_KEY_PREFIX_LEN
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && is_lower_alnum(b[0])
                && is_lower_alnum(b[b.len() - 1])
                && b.iter().all(|c| is_lower_alnum(*c) || *c == b'-')
        })
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys with the verdict Kubernetes gives them.
    fn keys() -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = [
            ("app", true),
            ("App.Name_1-x", true),
            ("egressgw.io/gateway", true),
            ("kubernetes.io/metadata.name", true),
            ("a/b", true),
            ("1", true),
            ("", false),
            ("billing team", false),
            ("-app", false),
            ("app-", false),
            ("_app", false),
            ("a/b/c", false),
            ("/app", false),
            ("app/", false),
            ("Egressgw.io/gateway", false),
            ("egressgw..io/gateway", false),
            ("-egressgw.io/gateway", false),
            ("egressgw.io-/gateway", false),
            ("egress_gw.io/gateway", false),
            ("tëam", false),
        ]
        .iter()
        .map(|(k, ok)| (k.to_string(), *ok))
        .collect();
        let name63 = "a".repeat(MAX_LABEL_NAME_LEN);
        let prefix253 = format!("{}.{}", "b".repeat(125), "c".repeat(127));
        assert_eq!(prefix253.len(), MAX_KEY_PREFIX_LEN);
        v.push((name63.clone(), true));
        v.push((format!("{name63}a"), false));
        v.push((format!("{prefix253}/{name63}"), true));
        v.push((format!("d{prefix253}/{name63}"), false));
        v
    }

    fn values() -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = [
            ("", true),
            ("billing", true),
            ("Billing.Team_1-a", true),
            ("0", true),
            ("billing team", false),
            ("billing/team", false),
            ("-billing", false),
            ("billing.", false),
            ("billing\n", false),
        ]
        .iter()
        .map(|(k, ok)| (k.to_string(), *ok))
        .collect();
        v.push(("v".repeat(MAX_LABEL_NAME_LEN), true));
        v.push(("v".repeat(MAX_LABEL_NAME_LEN + 1), false));
        v
    }

    #[test]
    fn keys_follow_the_kubernetes_grammar() {
        for (k, ok) in keys() {
            assert_eq!(check_key(&k).is_ok(), ok, "{k:?}");
        }
    }

    #[test]
    fn values_follow_the_kubernetes_grammar() {
        for (v, ok) in values() {
            assert_eq!(check_value(&v).is_ok(), ok, "{v:?}");
        }
    }

    /// The CEL rules (regex plus the prefix bound on `indexOf('/')`, plus maxLength) and the
    /// Rust checker agree on every case.
    #[test]
    fn the_cel_regexes_agree_with_the_checker() {
        let key = regex::Regex::new(KEY_REGEX).unwrap();
        let value = regex::Regex::new(VALUE_REGEX).unwrap();
        for (k, ok) in keys() {
            let prefix_ok = k.find('/').is_none_or(|i| i <= MAX_KEY_PREFIX_LEN);
            let cel = k.len() <= MAX_KEY_LEN && key.is_match(&k) && prefix_ok;
            assert_eq!(cel, ok, "key {k:?}");
        }
        for (v, ok) in values() {
            let cel = v.len() <= MAX_LABEL_NAME_LEN && value.is_match(&v);
            assert_eq!(cel, ok, "value {v:?}");
        }
    }

    #[test]
    fn the_message_names_the_value() {
        assert_eq!(
            check_value("billing team").unwrap_err().to_string(),
            format!("\"billing team\" is not a valid label value ({VALUE_RULE})")
        );
    }
}
