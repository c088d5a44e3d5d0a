//! Shared strings for the names that repeat across thousands of pods: namespaces, node
//! names, label keys and values, gateway names. Each distinct string is held once; every
//! holder keeps an `Arc<str>` to it.
//!
//! The table drops strings nobody else holds any more whenever it has doubled since the
//! last sweep, so names that come and go (pod-template-hash values after rollouts, deleted
//! namespaces) do not accumulate.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

/// An interned string.
pub type Sym = Arc<str>;

/// Sweep no more often than when the table holds this many strings.
const MIN_SWEEP: usize = 1024;

struct Table {
    strings: HashSet<Sym>,
    sweep_at: usize,
}

static TABLE: LazyLock<Mutex<Table>> =
    LazyLock::new(|| Mutex::new(Table { strings: HashSet::new(), sweep_at: MIN_SWEEP }));

/// The shared copy of `s`.
pub fn intern(s: &str) -> Sym {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(sym) = t.strings.get(s) {
        return sym.clone();
    }
    if t.strings.len() >= t.sweep_at {
        // A count of 1 is the table's own reference: only the table can hand it out again,
        // and it is locked.
        t.strings.retain(|sym| Arc::strong_count(sym) > 1);
        t.sweep_at = (t.strings.len() * 2).max(MIN_SWEEP);
    }
    let sym: Sym = Arc::from(s);
    t.strings.insert(sym.clone());
    sym
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_string() {
        let a = intern("intern-test-a");
        let b = intern(&String::from("intern-test-a"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "intern-test-a");
    }

    #[test]
    fn unused_strings_are_swept() {
        for i in 0..3 * MIN_SWEEP {
            intern(&format!("intern-test-sweep-{i}"));
        }
        let t = TABLE.lock().unwrap();
        assert!(t.strings.len() < 3 * MIN_SWEEP);
    }
}
