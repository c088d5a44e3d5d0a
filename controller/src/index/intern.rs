//! Shared strings for the names that repeat across thousands of pods: namespaces, node
//! names, label keys and values, gateway names. Each distinct string is held once; every
//! holder keeps an `Arc<str>` to it.
//!
//! Whole label sets are interned too: the pods of one Deployment carry identical labels.
//!
//! A table drops what nobody else holds any more whenever it has doubled since the last
//! sweep, so names that come and go (pod-template-hash values after rollouts, deleted
//! namespaces) do not accumulate.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex};

/// An interned string.
pub type Sym = Arc<str>;

/// An interned label set: sorted by key, no duplicate keys.
pub type LabelSet = Arc<[(Sym, Sym)]>;

/// Sweep no more often than when the table holds this many entries.
const MIN_SWEEP: usize = 1024;

struct Table<T: ?Sized> {
    items: HashSet<Arc<T>>,
    sweep_at: usize,
}

impl<T: ?Sized + Hash + Eq> Table<T> {
    fn new() -> Mutex<Self> {
        Mutex::new(Self {
            items: HashSet::new(),
            sweep_at: MIN_SWEEP,
        })
    }

    fn get(table: &Mutex<Self>, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = t.items.get(value) {
            return v.clone();
        }
        if t.items.len() >= t.sweep_at {
            // A count of 1 is the table's own reference: only the table can hand it out
            // again, and it is locked.
            t.items.retain(|v| Arc::strong_count(v) > 1);
            t.sweep_at = (t.items.len() * 2).max(MIN_SWEEP);
        }
        let v = make();
        t.items.insert(v.clone());
        v
    }
}

/// A process-wide intern table.
type Global<T> = LazyLock<Mutex<Table<T>>>;

static STRINGS: Global<str> = LazyLock::new(Table::new);
static LABEL_SETS: Global<[(Sym, Sym)]> = LazyLock::new(Table::new);

/// The shared copy of `s`.
pub fn intern(s: &str) -> Sym {
    Table::get(&STRINGS, s, || Arc::from(s))
}

/// The shared copy of a label set (`labels` sorted by key, keys unique, strings interned).
pub fn intern_labels(labels: Vec<(Sym, Sym)>) -> LabelSet {
    if labels.is_empty() {
        return LabelSet::default();
    }
    Table::get(&LABEL_SETS, &labels[..], || Arc::from(labels.as_slice()))
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
        let t = STRINGS.lock().unwrap();
        assert!(t.items.len() < 3 * MIN_SWEEP);
    }

    #[test]
    fn one_copy_per_label_set() {
        let set = || {
            vec![
                (intern("app"), intern("intern-test")),
                (intern("tier"), intern("web")),
            ]
        };
        assert!(Arc::ptr_eq(&intern_labels(set()), &intern_labels(set())));
    }
}
