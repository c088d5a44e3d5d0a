//! A rule's expressions as text, in libnftnl's own rendering with counter values left out:
//! what the kernel holds is compared with what this release writes for the rule its comment
//! names, so a rule whose expressions were changed in place under our comment is not taken
//! for ours — it is deleted and the right one added, in the same transaction.

use std::ffi::{CStr, c_char};

use nftnl::Rule;
use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;

use super::nft_encode::{rule_chain_object, rule_exprs, table};
use super::nft_model::RuleSpec;

/// Room for one expression's text (the longest, a lookup with a 64-byte set name, is ~100).
const EXPR_TEXT_BUF: usize = 512;
/// Expressions whose state changes by themselves.
const STATEFUL: &str = "counter";

/// The text of one expression, `None` for a counter.
///
/// # Safety
/// `e` must point to a valid libnftnl expression.
pub(crate) unsafe fn expr_text(e: *const sys::nftnl_expr) -> Option<String> {
    let name = unsafe { sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16) };
    let name = if name.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    };
    if name == STATEFUL {
        return None;
    }
    let mut buf = [0 as c_char; EXPR_TEXT_BUF];
    let n = unsafe {
        sys::nftnl_expr_snprintf(buf.as_mut_ptr(), buf.len(), e, sys::NFTNL_OUTPUT_DEFAULT, 0)
    };
    let text = if n < 0 {
        String::new()
    } else {
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    Some(format!("{name} {}", text.trim()))
}

/// The texts of the expressions this release writes for `spec`.
pub fn expected(spec: &RuleSpec) -> Vec<String> {
    let table = table();
    let chain = rule_chain_object(&table, spec);
    let rule = Rule::new(&chain);
    rule_exprs(spec)
        .iter()
        .filter_map(|e| {
            let p = e.to_expr(&rule);
            // SAFETY: `p` was just built and is freed once, right after
            let text = unsafe { expr_text(p.as_ptr()) };
            unsafe { sys::nftnl_expr_free(p.as_ptr()) };
            text
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::names::GatewayId;

    #[test]
    fn counters_are_left_out_and_rules_differ_by_their_expressions() {
        let gid = GatewayId::derive("gw", 0);
        let snat = expected(&RuleSpec::Snat {
            gid: gid.clone(),
            egress_ip: "198.18.0.200".parse().unwrap(),
        });
        assert!(snat.iter().all(|t| !t.starts_with("counter")), "{snat:?}");
        assert!(snat.iter().any(|t| t.starts_with("lookup")), "{snat:?}");
        let other = expected(&RuleSpec::Snat {
            gid,
            egress_ip: "198.18.0.201".parse().unwrap(),
        });
        assert_ne!(snat, other, "the SNAT address is part of the text");
        assert_eq!(expected(&RuleSpec::Guard), expected(&RuleSpec::Guard));
    }
}
