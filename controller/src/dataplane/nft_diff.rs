//! Observed table vs desired table -> the operations of one nftables transaction (pure).
//!
//! The operations are ordered so the kernel accepts them in one batch: rules go before the
//! chains and sets they reference are deleted, sets exist before rules that use them are
//! added. Hash sets change element by element; an interval set whose content changes is
//! flushed and refilled inside the same transaction (atomic, and destinations change rarely).

use std::collections::BTreeSet;

use super::config::{TABLE_FLAG_OWNER, TABLE_FLAG_PERSIST};
use super::nft_model::{ChainSpec, NftSet, NftState, RuleSpec, SetContent};

/// One step of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NftOp {
    /// Creates the table with these flags.
    AddTable {
        flags: u32,
    },
    /// Takes ownership of our orphaned persistent table (left by an agent that exited).
    AdoptTable {
        flags: u32,
    },
    DelTable,
    AddChain {
        name: String,
        spec: ChainSpec,
    },
    DelChain {
        name: String,
    },
    /// Creates the set and fills it.
    AddSet {
        name: String,
        set: NftSet,
    },
    DelSet {
        name: String,
    },
    FlushSet {
        name: String,
    },
    AddElems {
        set: String,
        content: SetContent,
    },
    DelElems {
        set: String,
        content: SetContent,
    },
    AddRule(RuleSpec),
    /// Deletes a rule by handle; `what` names it for errors and logs.
    DelRule {
        chain: String,
        handle: u64,
        what: String,
    },
}

impl NftOp {
    /// Short description for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            NftOp::AddTable { flags } => format!("add table (flags {flags:#x})"),
            NftOp::AdoptTable { flags } => format!("adopt table (flags {flags:#x})"),
            NftOp::DelTable => "delete table".into(),
            NftOp::AddChain { name, .. } => format!("add chain {name}"),
            NftOp::DelChain { name } => format!("delete chain {name}"),
            NftOp::AddSet { name, set } => {
                format!("add set {name} ({} elements)", set.content.len())
            }
            NftOp::DelSet { name } => format!("delete set {name}"),
            NftOp::FlushSet { name } => format!("flush set {name}"),
            NftOp::AddElems { set, content } => {
                format!("add {} elements to set {set}", content.len())
            }
            NftOp::DelElems { set, content } => {
                format!("delete {} elements from set {set}", content.len())
            }
            NftOp::AddRule(spec) => {
                format!("add rule \"{}\" to chain {}", spec.key(), spec.chain())
            }
            NftOp::DelRule {
                chain,
                handle,
                what,
            } => format!("delete rule \"{what}\" (handle {handle}) from chain {chain}"),
        }
    }
}

/// Whether an existing table with `have` flags is an orphan of ours (persistent, owner gone)
/// that a table wanting `want` takes over. An unowned table without the persist flag (an
/// older release's, or one created on a kernel without it) cannot be adopted and stays as is.
fn adoptable(have: u32, want: u32) -> bool {
    let (owner, persist) = (TABLE_FLAG_OWNER, TABLE_FLAG_PERSIST);
    want & owner != 0 && have & (owner | persist) == persist
}

fn same_kind(a: &SetContent, b: &SetContent) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// The transaction that turns `observed` into `desired` (`None` = no table). Empty when they
/// already agree.
pub fn diff(observed: Option<&NftState>, desired: Option<&NftState>) -> Vec<NftOp> {
    let Some(d) = desired else {
        return if observed.is_some() {
            vec![NftOp::DelTable]
        } else {
            Vec::new()
        };
    };
    let empty = NftState::default();
    let o = observed.unwrap_or(&empty);
    let mut ops = Vec::new();
    match observed {
        None => ops.push(NftOp::AddTable { flags: d.flags }),
        Some(o) if adoptable(o.flags, d.flags) => ops.push(NftOp::AdoptTable { flags: d.flags }),
        Some(_) => {}
    }

    let dirty_chains: BTreeSet<&String> = o
        .chains
        .iter()
        .filter(|(n, spec)| d.chains.get(*n) != Some(spec))
        .map(|(n, _)| n)
        .collect();
    let dirty_sets: BTreeSet<&String> = o
        .sets
        .iter()
        .filter(|(n, s)| {
            d.sets
                .get(*n)
                .is_some_and(|ds| !same_kind(&ds.content, &s.content) || ds.comment != s.comment)
        })
        .map(|(n, _)| n)
        .collect();
    // A set that must be recreated may be referenced by any rule: re-add all rules in the
    // same transaction (they are few) rather than track references.
    let rebuild_rules = !dirty_sets.is_empty();

    // 1. rules out
    let mut readd: Vec<&RuleSpec> = Vec::new();
    for f in &o.foreign_rules {
        ops.push(NftOp::DelRule {
            chain: f.chain.clone(),
            handle: f.handle,
            what: "unrecognised rule".into(),
        });
    }
    for (spec, h) in &o.rules {
        let wanted = d.rules.contains_key(spec);
        let chain_dirty = dirty_chains.contains(&spec.chain().to_string());
        if !wanted || rebuild_rules || chain_dirty {
            if let Some(h) = h {
                ops.push(NftOp::DelRule {
                    chain: spec.chain().into(),
                    handle: h.handle,
                    what: spec.key(),
                });
            }
            if wanted {
                readd.push(spec);
            }
        }
    }
    // 2. chains out, 3. sets out
    for name in &dirty_chains {
        ops.push(NftOp::DelChain {
            name: (*name).clone(),
        });
    }
    for name in o
        .sets
        .keys()
        .filter(|n| !d.sets.contains_key(*n) || dirty_sets.contains(n))
    {
        ops.push(NftOp::DelSet { name: name.clone() });
    }
    // 4. chains in
    for (name, spec) in &d.chains {
        if !o.chains.contains_key(name) || dirty_chains.contains(name) {
            ops.push(NftOp::AddChain {
                name: name.clone(),
                spec: *spec,
            });
        }
    }
    // 5. sets in / changed
    for (name, ds) in &d.sets {
        let os = o.sets.get(name).filter(|_| !dirty_sets.contains(name));
        let Some(os) = os else {
            ops.push(NftOp::AddSet {
                name: name.clone(),
                set: ds.clone(),
            });
            continue;
        };
        match (&os.content, &ds.content) {
            (SetContent::Addrs(have), SetContent::Addrs(want)) => {
                let del: BTreeSet<_> = have.difference(want).copied().collect();
                let add: BTreeSet<_> = want.difference(have).copied().collect();
                if !del.is_empty() {
                    ops.push(NftOp::DelElems {
                        set: name.clone(),
                        content: SetContent::Addrs(del),
                    });
                }
                if !add.is_empty() {
                    ops.push(NftOp::AddElems {
                        set: name.clone(),
                        content: SetContent::Addrs(add),
                    });
                }
            }
            (SetContent::Origins(have), SetContent::Origins(want)) => {
                let del: BTreeSet<_> = have.difference(want).copied().collect();
                let add: BTreeSet<_> = want.difference(have).copied().collect();
                if !del.is_empty() {
                    ops.push(NftOp::DelElems {
                        set: name.clone(),
                        content: SetContent::Origins(del),
                    });
                }
                if !add.is_empty() {
                    ops.push(NftOp::AddElems {
                        set: name.clone(),
                        content: SetContent::Origins(add),
                    });
                }
            }
            (have, want) if have != want => {
                ops.push(NftOp::FlushSet { name: name.clone() });
                if !want.is_empty() {
                    ops.push(NftOp::AddElems {
                        set: name.clone(),
                        content: want.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    // 6. rules in
    for spec in d.rules.keys() {
        if !o.rules.contains_key(spec) || readd.contains(&spec) {
            ops.push(NftOp::AddRule(spec.clone()));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dataplane::names::{GatewayId, SetName};
    use crate::dataplane::nft_model::{ForeignRule, IpRange, RuleHandle, our_chains};

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 1, last)
    }

    fn gid() -> GatewayId {
        GatewayId::derive("gw", 0)
    }

    fn state(pods: &[u8], dst: &str) -> NftState {
        let mut st = NftState {
            chains: our_chains(),
            ..Default::default()
        };
        let e = Ipv4Addr::new(198, 18, 0, 200);
        st.sets.insert(
            SetName::Hosted.to_string(),
            NftSet {
                comment: None,
                content: SetContent::Addrs([e].into()),
            },
        );
        st.sets.insert(
            SetName::Dst(gid()).to_string(),
            NftSet {
                comment: Some("gw".into()),
                content: SetContent::Ranges([IpRange::of(dst.parse().unwrap())].into()),
            },
        );
        st.sets.insert(
            SetName::Snat(gid(), e).to_string(),
            NftSet {
                comment: None,
                content: SetContent::Addrs(pods.iter().map(|p| ip(*p)).collect()),
            },
        );
        st.rules.insert(RuleSpec::Guard, None);
        st.rules.insert(
            RuleSpec::Snat {
                gid: gid(),
                egress_ip: e,
            },
            None,
        );
        st
    }

    /// What the kernel would hold after applying `d`: handles filled in.
    fn observed(d: &NftState) -> NftState {
        let mut o = d.clone();
        for (i, h) in o.rules.values_mut().enumerate() {
            *h = Some(RuleHandle {
                handle: i as u64 + 1,
                ..Default::default()
            });
        }
        o
    }

    #[test]
    fn fresh_table_is_built_in_dependency_order() {
        let d = state(&[1, 2], "203.0.113.0/24");
        let ops = diff(None, Some(&d));
        assert_eq!(ops[0], NftOp::AddTable { flags: 0 });
        let first_rule = ops
            .iter()
            .position(|o| matches!(o, NftOp::AddRule(_)))
            .unwrap();
        let last_set = ops
            .iter()
            .rposition(|o| matches!(o, NftOp::AddSet { .. }))
            .unwrap();
        let last_chain = ops
            .iter()
            .rposition(|o| matches!(o, NftOp::AddChain { .. }))
            .unwrap();
        assert!(last_set < first_rule && last_chain < first_rule);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, NftOp::AddRule(_)))
                .count(),
            2
        );
    }

    #[test]
    fn same_state_is_no_op_and_one_pod_is_one_element() {
        let d = state(&[1, 2], "203.0.113.0/24");
        let o = observed(&d);
        assert!(diff(Some(&o), Some(&d)).is_empty());
        let d2 = state(&[1, 2, 3], "203.0.113.0/24");
        let ops = diff(Some(&o), Some(&d2));
        assert_eq!(ops.len(), 1);
        assert!(
            matches!(&ops[0], NftOp::AddElems { content: SetContent::Addrs(a), .. } if a.len() == 1)
        );
        let d3 = state(&[2], "203.0.113.0/24");
        let ops = diff(Some(&o), Some(&d3));
        assert!(matches!(&ops[..], [NftOp::DelElems { content, .. }] if content.len() == 1));
    }

    #[test]
    fn changed_destinations_flush_and_refill_the_interval_set() {
        let o = observed(&state(&[1], "203.0.113.0/24"));
        let d = state(&[1], "203.0.113.0/25");
        let ops = diff(Some(&o), Some(&d));
        assert!(matches!(
            &ops[..],
            [NftOp::FlushSet { .. }, NftOp::AddElems { .. }]
        ));
    }

    #[test]
    fn removed_gateway_deletes_rules_before_sets() {
        let o = observed(&state(&[1], "203.0.113.0/24"));
        let mut d = o.clone();
        d.sets.retain(|n, _| n == SET_HOSTED_NAME);
        d.rules = BTreeMap::from([(RuleSpec::Guard, None)]);
        let ops = diff(Some(&o), Some(&d));
        let del_rule = ops
            .iter()
            .position(|o| matches!(o, NftOp::DelRule { .. }))
            .unwrap();
        let del_set = ops
            .iter()
            .position(|o| matches!(o, NftOp::DelSet { .. }))
            .unwrap();
        assert!(del_rule < del_set);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, NftOp::DelSet { .. }))
                .count(),
            2
        );
        assert!(!ops.iter().any(|o| matches!(o, NftOp::AddRule(_))));
    }

    const SET_HOSTED_NAME: &str = crate::dataplane::config::SET_HOSTED;

    #[test]
    fn foreign_rules_and_wrong_chains_are_replaced() {
        let d = state(&[1], "203.0.113.0/24");
        let mut o = observed(&d);
        o.foreign_rules.push(ForeignRule {
            chain: "post".into(),
            handle: 99,
        });
        o.chains.get_mut("post").unwrap().priority = 100;
        o.chains.insert("old".into(), o.chains["pre"]);
        let ops = diff(Some(&o), Some(&d));
        assert!(ops.contains(&NftOp::DelRule {
            chain: "post".into(),
            handle: 99,
            what: "unrecognised rule".into()
        }));
        assert!(ops.contains(&NftOp::DelChain { name: "old".into() }));
        assert!(ops.contains(&NftOp::DelChain {
            name: "post".into()
        }));
        assert!(
            ops.iter()
                .any(|o| matches!(o, NftOp::AddChain { name, .. } if name == "post"))
        );
        // the SNAT rule lived in the recreated chain: deleted and added again
        let snat = RuleSpec::Snat {
            gid: gid(),
            egress_ip: Ipv4Addr::new(198, 18, 0, 200),
        };
        assert!(ops.contains(&NftOp::AddRule(snat)));
        assert!(!ops.contains(&NftOp::AddRule(RuleSpec::Guard)));
    }

    #[test]
    fn changed_comment_recreates_the_set_and_every_rule() {
        let o = observed(&state(&[1], "203.0.113.0/24"));
        let mut d = state(&[1], "203.0.113.0/24");
        d.sets
            .get_mut(&SetName::Dst(gid()).to_string())
            .unwrap()
            .comment = Some("other".into());
        let ops = diff(Some(&o), Some(&d));
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, NftOp::DelRule { .. }))
                .count(),
            2
        );
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, NftOp::AddRule(_)))
                .count(),
            2
        );
        assert!(
            ops.iter()
                .any(|o| matches!(o, NftOp::DelSet { name } if name.ends_with("_dst")))
        );
    }

    #[test]
    fn empty_plan_deletes_the_table_in_one_message() {
        let o = observed(&state(&[1], "203.0.113.0/24"));
        assert_eq!(diff(Some(&o), None), vec![NftOp::DelTable]);
        assert!(diff(None, None).is_empty());
    }

    #[test]
    fn an_orphaned_table_is_adopted_and_an_unowned_one_left_as_is() {
        use crate::dataplane::config::OWNED_TABLE_FLAGS;
        let mut want = state(&[1], "203.0.113.0/24");
        want.flags = OWNED_TABLE_FLAGS;
        let mut have = observed(&want);
        assert!(
            diff(Some(&have), Some(&want)).is_empty(),
            "owned by us: nothing to do"
        );
        have.flags = TABLE_FLAG_PERSIST; // the previous agent exited
        assert_eq!(
            diff(Some(&have), Some(&want)),
            [NftOp::AdoptTable {
                flags: OWNED_TABLE_FLAGS
            }]
        );
        have.flags = 0; // an older release's table cannot be adopted
        assert!(diff(Some(&have), Some(&want)).is_empty());
        assert_eq!(
            diff(None, Some(&want))[0],
            NftOp::AddTable {
                flags: OWNED_TABLE_FLAGS
            }
        );
    }

    #[test]
    fn a_rule_whose_expressions_changed_is_replaced_in_one_transaction() {
        // the reader found the SNAT rule's comment on a rule with other expressions (a hand
        // edit, or an older release): not ours, a foreign rule at that handle
        let d = state(&[1], "203.0.113.0/24");
        let snat = RuleSpec::Snat {
            gid: gid(),
            egress_ip: Ipv4Addr::new(198, 18, 0, 200),
        };
        let mut o = observed(&d);
        o.rules.remove(&snat);
        o.foreign_rules.push(ForeignRule {
            chain: "post".into(),
            handle: 42,
        });
        let ops = diff(Some(&o), Some(&d));
        let del = ops
            .iter()
            .position(|op| matches!(op, NftOp::DelRule { handle: 42, .. }))
            .expect("the edited rule goes");
        let add = ops
            .iter()
            .position(|op| *op == NftOp::AddRule(snat.clone()))
            .expect("ours comes back");
        assert!(del < add, "{ops:?}");
        assert!(
            !ops.contains(&NftOp::DelTable),
            "never by deleting the table"
        );
        assert_eq!(ops.len(), 2, "nothing else changes: {ops:?}");
    }
}
