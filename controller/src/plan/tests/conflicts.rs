use super::fixture::*;
use crate::plan::Unplaced;

#[test]
fn an_egress_ip_claimed_twice_belongs_to_the_older_gateway() {
    let mut c = Cluster::new();
    // "a-young" sorts first by name but is younger: age decides.
    c.gw(gateway(
        "a-young",
        10,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .gw(gateway(
        "z-old",
        5,
        "payments",
        "pay",
        &["198.18.0.200", "198.18.0.201"],
        &["198.51.100.0/24"],
    ))
    .node(gw_node("n1", 11));
    let plan = c.plan();
    assert_eq!(
        nodes_of(&plan, "z-old"),
        vec![Some("n1".to_string()), Some("n1".to_string())]
    );
    let young = &plan.assignments.by_gateway["a-young"][0];
    assert_eq!(young.placement, Err(Unplaced::ClaimedBy("z-old".into())));
}

#[test]
fn equal_ages_are_broken_by_name() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "beta",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .gw(gateway(
        "alpha",
        0,
        "payments",
        "pay",
        &["198.18.0.200"],
        &["198.51.100.0/24"],
    ))
    .node(gw_node("n1", 11));
    let plan = c.plan();
    assert!(plan.assignments.by_gateway["alpha"][0].placement.is_ok());
    assert_eq!(
        plan.assignments.by_gateway["beta"][0].placement,
        Err(Unplaced::ClaimedBy("alpha".into()))
    );
}

#[test]
fn a_pod_selected_twice_for_overlapping_destinations_uses_the_older_gateway() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "new",
        9,
        "billing",
        "inv",
        &["198.18.0.201"],
        &["203.0.113.0/25"],
    ))
    .gw(gateway(
        "old",
        1,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11))
    .pod(pod("billing", "a", "inv", "n1", "198.19.1.10"));
    let plan = c.plan();
    let key = crate::index::PodKey::new("billing", "a");
    assert!(plan.selections.by_gateway["old"].pods.contains(&key));
    assert!(!plan.selections.by_gateway["new"].pods.contains(&key));
    assert_eq!(plan.selections.by_gateway["new"].lost[&key], "old");
    // The loser programs nothing for that pod anywhere.
    let n1 = plan.node_plan("n1");
    assert!(n1.gateways["new"].snat.values().all(|s| s.is_empty()));
}

#[test]
fn a_pod_selected_twice_for_disjoint_destinations_uses_both() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "mainframe",
        1,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .gw(gateway(
        "partner",
        2,
        "billing",
        "inv",
        &["198.18.0.201"],
        &["198.51.100.0/24"],
    ))
    .node(gw_node("n1", 11))
    .pod(pod("billing", "a", "inv", "n1", "198.19.1.10"));
    let plan = c.plan();
    for g in ["mainframe", "partner"] {
        assert_eq!(plan.selections.by_gateway[g].pods.len(), 1, "{g}");
        assert!(plan.selections.by_gateway[g].lost.is_empty(), "{g}");
    }
}

#[test]
fn an_exclusion_that_removes_the_overlap_removes_the_conflict() {
    let mut c = Cluster::new();
    let mut wide = gateway(
        "wide",
        1,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    );
    wide.spec.as_mut().unwrap().excluded = vec!["203.0.113.128/25".parse().unwrap()];
    c.gw(wide)
        .gw(gateway(
            "upper",
            2,
            "billing",
            "inv",
            &["198.18.0.201"],
            &["203.0.113.128/25"],
        ))
        .node(gw_node("n1", 11))
        .pod(pod("billing", "a", "inv", "n1", "198.19.1.10"));
    let plan = c.plan();
    assert_eq!(plan.selections.by_gateway["upper"].pods.len(), 1);
    assert!(plan.selections.by_gateway["upper"].lost.is_empty());
}

#[test]
fn three_way_conflicts_resolve_by_seniority_whatever_the_order() {
    // old: /24, mid: 198.51.100.0/24 (disjoint from old), young: 203.0.113.0/25 (overlaps old).
    let mut c = Cluster::new();
    c.gw(gateway(
        "young",
        3,
        "billing",
        "inv",
        &["198.18.0.202"],
        &["203.0.113.0/25"],
    ))
    .gw(gateway(
        "mid",
        2,
        "billing",
        "inv",
        &["198.18.0.201"],
        &["198.51.100.0/24"],
    ))
    .gw(gateway(
        "old",
        1,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11))
    .pod(pod("billing", "a", "inv", "n1", "198.19.1.10"));
    let plan = c.plan();
    assert_eq!(plan.selections.by_gateway["old"].pods.len(), 1);
    assert_eq!(plan.selections.by_gateway["mid"].pods.len(), 1);
    assert_eq!(
        plan.selections.by_gateway["young"]
            .lost
            .values()
            .next()
            .unwrap(),
        "old"
    );
}
