//! Two pod objects listing one IP (issue 12): the pod that owns the IP decides how its traffic
//! leaves; while nobody owns it, it is blocked, never SNATed.

use std::net::IpAddr;

use k8s_openapi::jiff::Timestamp;

use super::fixture::*;
use crate::index::{Pod, PodKey};
use crate::plan::NodePlan;

const SHARED: &str = "198.19.1.10";

fn at(p: Pod, second: i64, terminating: bool) -> Pod {
    Pod {
        created: Some(Timestamp::from_second(second).unwrap()),
        terminating,
        ..p
    }
}

/// `g` selects app=invoicer in billing and hosts its IP on n2; pods run on worker n1.
fn cluster() -> Cluster {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "invoicer",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(worker("n1", 11))
    .node(gw_node("n2", 12));
    c
}

/// Where `addr` appears in `node`'s plan for gateway `g`: (steered, snat, blocked, guarded).
fn roles(plan: &NodePlan, addr: &str) -> (bool, bool, bool, bool) {
    let a: IpAddr = addr.parse().unwrap();
    let Some(g) = plan.gateways.get("g") else {
        return (false, false, false, false);
    };
    (
        g.steer.values().any(|s| s.contains(&a)),
        g.snat.values().any(|s| s.contains(&a)),
        g.blocked.contains(&a),
        g.guard.contains(&a),
    )
}

fn selected(c: &Cluster) -> Vec<String> {
    c.plan().selections.by_gateway["g"]
        .pods
        .iter()
        .map(PodKey::to_string)
        .collect()
}

#[test]
fn a_new_pod_owns_the_ip_of_a_terminating_one_and_its_gateways_decide() {
    let mut c = cluster();
    // The draining selected pod and the new, unselected pod the CNI gave its address to.
    c.pod(at(
        pod("billing", "old", "invoicer", "n1", SHARED),
        100,
        true,
    ))
    .pod(at(pod("billing", "new", "web", "n1", SHARED), 200, false));
    assert!(selected(&c).is_empty(), "the IP is the new pod's");
    let plan = c.plan();
    assert_eq!(
        roles(&plan.node_plan("n1"), SHARED),
        (false, false, false, false),
        "the new pod's traffic is none of g's business"
    );
    assert_eq!(
        roles(&plan.node_plan_guarding("n2", |g| g == "g"), SHARED),
        (false, false, false, false)
    );

    // Swapped: the new pod is the selected one, and it is served as usual.
    let mut c = cluster();
    c.pod(at(pod("billing", "old", "web", "n1", SHARED), 300, true))
        .pod(at(
            pod("billing", "new", "invoicer", "n1", SHARED),
            200,
            false,
        ));
    assert_eq!(
        selected(&c),
        vec!["billing/new"],
        "not terminating beats newer"
    );
    let plan = c.plan();
    assert_eq!(
        roles(&plan.node_plan("n1"), SHARED),
        (true, false, false, true)
    );
    assert_eq!(
        roles(&plan.node_plan("n2"), SHARED),
        (false, true, false, true),
        "SNATed, and guarded by the node hosting the IP"
    );
}

#[test]
fn of_two_running_pods_the_newer_owns_the_ip() {
    let mut c = cluster();
    c.pod(at(
        pod("billing", "stale", "invoicer", "n1", SHARED),
        100,
        false,
    ))
    .pod(at(pod("billing", "fresh", "web", "n1", SHARED), 101, false));
    assert!(selected(&c).is_empty());
    let mut c = cluster();
    c.pod(at(pod("billing", "stale", "web", "n1", SHARED), 100, false))
        .pod(at(
            pod("billing", "fresh", "invoicer", "n1", SHARED),
            101,
            false,
        ));
    assert_eq!(selected(&c), vec!["billing/fresh"]);
}

#[test]
fn an_ip_nobody_owns_is_blocked_never_snated() {
    let mut c = cluster();
    c.pod(at(
        pod("billing", "a", "invoicer", "n1", SHARED),
        100,
        false,
    ))
    .pod(at(pod("billing", "b", "web", "n1", SHARED), 100, false))
    .pod(pod("billing", "other", "invoicer", "n1", "198.19.1.11"));
    let plan = c.plan();
    assert_eq!(
        roles(&plan.node_plan("n1"), SHARED),
        (false, false, true, true),
        "blocked and guarded on the pods' node"
    );
    let host = plan.node_plan_guarding("n2", |g| g == "g");
    assert_eq!(roles(&host, SHARED), (false, false, false, true));
    assert_eq!(
        roles(&plan.node_plan("n1"), "198.19.1.11"),
        (true, false, false, true),
        "the other pods of the gateway are untouched"
    );
    assert!(
        !plan.rollouts["g"]
            .pod_ip
            .contains_key(&PodKey::new("billing", "a")),
        "no egress IP is reported for the blocked pod"
    );
}

#[test]
fn re_planning_one_pod_re_plans_the_pods_sharing_its_ip() {
    let mut c = cluster();
    c.pod(at(
        pod("billing", "old", "invoicer", "n1", SHARED),
        100,
        false,
    ));
    let mut plan = c.plan();
    assert_eq!(
        roles(&plan.node_plan("n1"), SHARED),
        (true, false, false, true)
    );

    // The old pod starts draining and a new pod takes its address: only the new pod's key
    // is handed to the planner, as a watch event would.
    c.pod(at(
        pod("billing", "old", "invoicer", "n1", SHARED),
        100,
        true,
    ));
    let old = PodKey::new("billing", "old");
    plan.update_pod(&c.index, &old);
    c.pod(at(pod("billing", "new", "web", "n1", SHARED), 200, false));
    let new = PodKey::new("billing", "new");
    let touched = plan.update_pod(&c.index, &new);
    assert!(touched.contains("g"), "the old pod's gateway is re-planned");
    assert_eq!(plan, c.plan());
    assert_eq!(
        roles(&plan.node_plan("n1"), SHARED),
        (false, false, false, false)
    );

    // The new pod goes away again before the old one: the old one owns its IP once more.
    c.index.pods.remove(&new);
    plan.update_pod(&c.index, &new);
    assert_eq!(plan, c.plan());
    assert_eq!(
        roles(&plan.node_plan("n1"), SHARED),
        (true, false, false, true)
    );
}
