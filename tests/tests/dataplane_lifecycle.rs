//! The dataplane's life cycle: idempotence, agent restarts, convergence from leftovers,
//! failed transactions, cleanup — and never touching what is not ours.

use std::net::Ipv4Addr;

use egressgw::dataplane::nft_model::RuleSpec;
use egressgw::dataplane::{
    ApplyReport, Dataplane, DataplaneConfig, KernelDataplane, KernelSnapshot,
};
use egressgw_tests::testbed::{
    GatewaySpec, Node, PROTECTED_SERVER, Testbed, all_plans, apply_all, dataplanes, node_plan,
};

const E1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const E2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 201);

fn testbed() -> Testbed {
    Testbed::builder()
        .nodes(3)
        .pods_per_node(3)
        .allow(E1)
        .allow(E2)
        .build()
        .expect("testbed")
}

/// The snapshot without the traffic counters (they move with every packet).
fn without_counters(mut s: KernelSnapshot) -> KernelSnapshot {
    if let Some(t) = s.table.as_mut() {
        for h in t.rules.values_mut().flatten() {
            h.packets = 0;
            h.bytes = 0;
        }
    }
    s
}

/// Things egressgw does not own, placed in a node before it starts.
fn plant_foreign_objects(node: &Node) {
    let ns = node.netns();
    ns.nft("table ip other { chain post { type nat hook postrouting priority srcnat; policy accept; }; }").unwrap();
    ns.ip(&["addr", "add", "198.18.0.240/32", "dev", "eth0"])
        .unwrap();
    ns.ip(&[
        "rule", "add", "pref", "1500", "fwmark", "0x1/0x1", "lookup", "100",
    ])
    .unwrap();
    ns.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "198.18.0.1",
        "table",
        "100",
    ])
    .unwrap();
}

fn assert_foreign_objects_intact(node: &Node) {
    let ns = node.netns();
    assert!(
        ns.exec("nft", &["list", "tables"])
            .unwrap()
            .contains("table ip other")
    );
    assert!(
        ns.ip(&["-4", "addr", "show", "dev", "eth0"])
            .unwrap()
            .contains("198.18.0.240/32")
    );
    assert!(
        ns.ip(&["rule", "show"])
            .unwrap()
            .contains("fwmark 0x1/0x1 lookup 100")
    );
    assert!(
        ns.ip(&["route", "show", "table", "100"])
            .unwrap()
            .contains("198.51.100.0/24")
    );
}

/// Table ids of ours mentioned in `ip` output after `word` (e.g. "lookup ", "table "), each
/// once (a steering table holds the route via its next hop and the fail-closed blackhole).
fn our_tables(output: &str, word: &str) -> Vec<u32> {
    let base = egressgw::dataplane::config::DEFAULT_TABLE_BASE;
    let mut tables: Vec<u32> = output
        .split(word)
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|t| (base + 1..=base + 255).contains(t))
        .collect();
    tables.sort_unstable();
    tables.dedup();
    tables
}

fn gateway(tb: &Testbed, pods: &[(usize, usize)]) -> GatewaySpec {
    let mut g = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .excluded(&["203.0.113.128/25"])
        .egress(E1, 2);
    for (n, k) in pods {
        g = g.pod(tb.pod(*n, *k).ip(), *n);
    }
    g
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn applying_the_same_plan_twice_sends_nothing_and_one_pod_is_one_element_per_role() {
    let tb = testbed();
    let mut dps = dataplanes(&tb);
    let plans = all_plans(&tb, &[gateway(&tb, &[(1, 0), (2, 0)])]);
    let first = apply_all(&mut dps, &plans);
    assert!(first[&1].nft_messages > 0 && first[&2].nft_messages > 0);
    assert_eq!(first[&2].addresses_added, [std::net::IpAddr::V4(E1)]);
    assert!(first[&2].garps_sent > 0);
    assert!(
        first[&3].is_noop(),
        "node-3 has nothing to do: {:?}",
        first[&3]
    );

    let second = apply_all(&mut dps, &plans);
    for (n, r) in &second {
        assert!(r.is_noop(), "node-{n}: {r:?}");
        assert_eq!(r.nft_messages, 0);
    }

    // one more pod on node-1: on node-1 one element to steer it and one to guard it, on node-2
    // one to SNAT it, one to guard it (node-2 hosts the gateway: it guards all its pods) and
    // one naming where it may come from (anti-spoofing: node-1's interface and MAC); one
    // message per set
    let plans = all_plans(&tb, &[gateway(&tb, &[(1, 0), (1, 1), (2, 0)])]);
    let third = apply_all(&mut dps, &plans);
    for n in [1, 2] {
        assert_eq!(
            (
                third[&n].nft_messages,
                third[&n].elements_added,
                third[&n].elements_removed
            ),
            if n == 2 { (3, 3, 0) } else { (2, 2, 0) },
            "node-{n}"
        );
    }
    assert_eq!(tb.pod(1, 1).connect(PROTECTED_SERVER).unwrap(), Ok(E1));
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_restarted_agent_with_the_same_plan_changes_nothing() {
    let tb = testbed();
    let plans = all_plans(&tb, &[gateway(&tb, &[(1, 0), (2, 0), (3, 1)])]);
    let before: Vec<KernelSnapshot> = {
        let mut dps = dataplanes(&tb);
        apply_all(&mut dps, &plans);
        dps.values()
            .map(|d| without_counters(d.snapshot().unwrap()))
            .collect()
    }; // the agents stop here; the kernel keeps their state
    assert_eq!(
        tb.pod(1, 0).connect(PROTECTED_SERVER).unwrap(),
        Ok(E1),
        "rules stay in place without the agent"
    );

    let mut dps = dataplanes(&tb);
    let reports = apply_all(&mut dps, &plans);
    for (n, r) in &reports {
        // the only message: the new agent takes ownership of the table the kernel kept
        let adopted = ApplyReport {
            nft_messages: r.nft_messages.min(1),
            nft_bytes: r.nft_bytes,
            ..ApplyReport::default()
        };
        assert!(
            r.is_noop() || *r == adopted,
            "node-{n} after restart: {r:?}"
        );
    }
    for (n, r) in &apply_all(&mut dps, &plans) {
        assert!(r.is_noop(), "node-{n} after adopting: {r:?}");
    }
    let after: Vec<KernelSnapshot> = dps
        .values()
        .map(|d| without_counters(d.snapshot().unwrap()))
        .collect();
    assert_eq!(before, after);
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_restarted_agent_converges_from_an_older_plan_without_touching_foreign_objects() {
    let tb = testbed();
    for n in tb.nodes() {
        plant_foreign_objects(n);
    }
    // old plan: "billing" with E1 on node-2, pods of node-1 and node-3 steered there
    let old = [gateway(&tb, &[(1, 0), (1, 1), (3, 0)])];
    {
        let mut dps = dataplanes(&tb);
        apply_all(&mut dps, &all_plans(&tb, &old));
    }
    // new plan: billing is gone; "payroll" with E2 on node-3 for other pods
    let new = [GatewaySpec::new("payroll", &["203.0.113.0/25"])
        .egress(E2, 3)
        .pod(tb.pod(1, 2).ip(), 1)
        .pod(tb.pod(2, 1).ip(), 2)];
    let mut dps = dataplanes(&tb);
    let reports = apply_all(&mut dps, &all_plans(&tb, &new));
    assert_eq!(reports[&2].addresses_removed, [std::net::IpAddr::V4(E1)]);
    assert_eq!(reports[&3].addresses_added, [std::net::IpAddr::V4(E2)]);

    // the result equals what a fresh node gets for the new plan: compare with a clean apply
    let converged: Vec<KernelSnapshot> = dps
        .values()
        .map(|d| without_counters(d.snapshot().unwrap()))
        .collect();
    for d in dps.values_mut() {
        d.cleanup().unwrap();
    }
    apply_all(&mut dps, &all_plans(&tb, &new));
    let fresh: Vec<KernelSnapshot> = dps
        .values()
        .map(|d| without_counters(d.snapshot().unwrap()))
        .collect();
    let strip = |v: &[KernelSnapshot]| -> Vec<_> {
        // Rule handles differ between two builds of the same table, and the slot of a next hop
        // may too (a slot freed in an apply is not reused in the same apply): compare the rest,
        // and the next hops each node routes to.
        v.iter()
            .map(|s| {
                let mut s = s.clone();
                let mut next_hops: Vec<_> =
                    s.routing.routes.iter().filter_map(|r| r.gateway).collect();
                next_hops.sort();
                assert_eq!(
                    s.routing
                        .rules
                        .iter()
                        .filter(|r| r.priority == 1500 && r.mask != 1)
                        .count(),
                    next_hops.len()
                );
                s.routing.rules.clear();
                s.routing.routes.clear();
                if let Some(t) = s.table.as_mut() {
                    // the slots' mark values
                    if let Some(m) = t.sets.get_mut("marks") {
                        m.content =
                            egressgw::dataplane::nft_model::SetContent::Addrs(Default::default());
                    }
                    t.rules = std::mem::take(&mut t.rules)
                        .into_keys()
                        .map(|spec| match spec {
                            RuleSpec::Steer {
                                gid,
                                next_hop,
                                mask,
                                ..
                            } => RuleSpec::Steer {
                                gid,
                                next_hop,
                                mark: 0,
                                mask,
                            },
                            RuleSpec::MarkSnat { mask, .. } => RuleSpec::MarkSnat { mark: 0, mask },
                            other => other,
                        })
                        .map(|spec| (spec, None))
                        .collect();
                }
                (s, next_hops)
            })
            .collect()
    };
    assert_eq!(strip(&converged), strip(&fresh));
    assert!(
        apply_all(&mut dps, &all_plans(&tb, &new))
            .values()
            .all(|r| r.is_noop())
    );

    assert_eq!(tb.pod(1, 2).connect(PROTECTED_SERVER).unwrap(), Ok(E2));
    assert_eq!(tb.pod(2, 1).connect(PROTECTED_SERVER).unwrap(), Ok(E2));
    assert!(
        tb.pod(1, 0).connect(PROTECTED_SERVER).unwrap().is_err(),
        "no longer selected"
    );
    assert!(
        !tb.node(2)
            .netns()
            .ip(&["-4", "addr"])
            .unwrap()
            .contains(&E1.to_string())
    );
    for n in tb.nodes() {
        assert_foreign_objects_intact(n);
    }
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_failed_transaction_leaves_the_previous_state_and_the_next_apply_recovers() {
    let tb = testbed();
    let node = tb.node(2);
    // an unowned table (as on kernels before 6.9): others can change it behind our back
    let mut dp = KernelDataplane::new(DataplaneConfig {
        own_table: false,
        ..DataplaneConfig::in_netns(node.netns_path())
    })
    .unwrap();
    let plan1 = node_plan(&tb, 2, &[gateway(&tb, &[(2, 0), (2, 1)])]);
    dp.apply(&plan1).unwrap();
    let before = without_counters(dp.snapshot().unwrap());

    // someone removes an element behind the agent's back: its cached view is now wrong,
    // so the next transaction (which deletes that element and adds another) is rejected
    let set = before
        .table
        .as_ref()
        .unwrap()
        .sets
        .keys()
        .find(|n| n.contains("_snat_"))
        .unwrap()
        .clone();
    node.netns()
        .exec(
            "nft",
            &[
                "delete",
                "element",
                "ip",
                "egressgw",
                &set,
                &format!("{{ {} }}", tb.pod(2, 1).ip()),
            ],
        )
        .unwrap();
    let plan2 = node_plan(&tb, 2, &[gateway(&tb, &[(2, 0), (2, 2)])]);
    let err = dp
        .apply(&plan2)
        .expect_err("the kernel rejects the stale transaction");
    assert!(err.to_string().contains("nothing committed"), "{err}");

    // all or nothing: the new pod was not added, nothing else changed
    let after_failure = without_counters(dp.snapshot().unwrap());
    let elems = after_failure
        .table
        .as_ref()
        .unwrap()
        .addrs(&set.parse().unwrap())
        .unwrap()
        .clone();
    assert_eq!(elems, [tb.pod(2, 0).ip()].into());

    // the failure dropped the cache: the next apply reads the kernel and converges (the new
    // pod into the SNAT set and the guard, the gone one out of the guard)
    let r = dp.apply(&plan2).unwrap();
    assert_eq!((r.elements_added, r.elements_removed), (2, 1));
    assert!(dp.apply(&plan2).unwrap().is_noop());
    assert_eq!(tb.pod(2, 2).connect(PROTECTED_SERVER).unwrap(), Ok(E1));
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn cleanup_leaves_no_table_address_rule_route_of_ours() {
    let tb = testbed();
    for n in tb.nodes() {
        plant_foreign_objects(n);
    }
    let links_before: Vec<String> = tb
        .nodes()
        .iter()
        .map(|n| n.netns().ip(&["-o", "link"]).unwrap())
        .collect();
    let mut dps = dataplanes(&tb);
    // node-1 steers to two next hops, node-2 and node-3 host egress IPs
    let gw = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .egress(E2, 3)
        .pod(tb.pod(1, 0).ip(), 1)
        .pod(tb.pod(1, 1).ip(), 1);
    apply_all(&mut dps, &all_plans(&tb, &[gw]));
    let rules = tb.node(1).netns().ip(&["rule", "show"]).unwrap();
    assert_eq!(our_tables(&rules, "lookup ").len(), 2, "{rules}");
    let routes = tb
        .node(1)
        .netns()
        .ip(&["route", "show", "table", "all"])
        .unwrap();
    assert_eq!(our_tables(&routes, "table ").len(), 2, "{routes}");
    let listing = tb
        .node(2)
        .netns()
        .exec("nft", &["list", "table", "ip", "egressgw"])
        .unwrap();
    assert!(
        listing.contains("snat to 198.18.0.200") && listing.contains("comment \"snat "),
        "{listing}"
    );

    for (n, dp) in dps.iter_mut() {
        let r = dp.cleanup().unwrap();
        assert!(!r.is_noop(), "node-{n} had state");
        assert!(
            dp.cleanup().unwrap().is_noop(),
            "node-{n}: a second cleanup finds nothing"
        );
    }
    for n in tb.nodes() {
        let ns = n.netns();
        assert!(
            !ns.exec("nft", &["list", "tables"])
                .unwrap()
                .contains("egressgw")
        );
        let addrs = ns.ip(&["-4", "addr"]).unwrap();
        assert!(
            !addrs.contains("198.18.0.200") && !addrs.contains("198.18.0.201"),
            "{addrs}"
        );
        let rules = ns.ip(&["rule", "show"]).unwrap();
        assert!(our_tables(&rules, "lookup ").is_empty(), "{rules}");
        let routes = ns.ip(&["route", "show", "table", "all"]).unwrap();
        assert!(our_tables(&routes, "table ").is_empty(), "{routes}");
        assert_foreign_objects_intact(n);
    }
    let links_after: Vec<String> = tb
        .nodes()
        .iter()
        .map(|n| n.netns().ip(&["-o", "link"]).unwrap())
        .collect();
    assert_eq!(links_before, links_after, "no device of ours left");
}
