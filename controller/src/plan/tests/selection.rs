use super::fixture::*;
use crate::api::SelectorOperator;
use crate::index::PodKey;

fn selected(c: &Cluster, gw: &str) -> Vec<String> {
    c.plan().selections.by_gateway[gw]
        .pods
        .iter()
        .map(|k| k.to_string())
        .collect()
}

#[test]
fn namespace_and_pod_selectors_are_anded() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "invoicer",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11))
    .pod(pod("billing", "inv-1", "invoicer", "n1", "198.19.1.10"))
    .pod(pod("billing", "web-1", "web", "n1", "198.19.1.11"))
    .pod(pod("other", "inv-2", "invoicer", "n1", "198.19.1.12"));
    assert_eq!(selected(&c, "g"), vec!["billing/inv-1"]);
}

#[test]
fn match_expressions_select_with_kubernetes_semantics() {
    let mut c = Cluster::new();
    let mut g = gateway(
        "g",
        0,
        "billing",
        "x",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    );
    let spec = g.spec.as_mut().unwrap();
    spec.namespace_selector = expr("team", SelectorOperator::In, &["billing", "payments"]);
    spec.pod_selector = expr("app", SelectorOperator::NotIn, &["canary"]);
    c.gw(g)
        .node(gw_node("n1", 11))
        .pod(pod("billing", "a", "invoicer", "n1", "198.19.1.10"))
        .pod(pod("payments", "b", "payer", "n1", "198.19.1.11"))
        .pod(pod("payments", "c", "canary", "n1", "198.19.1.12"))
        .pod(pod("other", "d", "invoicer", "n1", "198.19.1.13"));
    let mut unlabelled = pod("payments", "e", "", "n1", "198.19.1.14");
    unlabelled.labels.clear();
    c.pod(unlabelled);
    assert_eq!(
        selected(&c, "g"),
        vec!["billing/a", "payments/b", "payments/e"],
        "NotIn matches pods without the key"
    );
}

#[test]
fn empty_selectors_select_every_pod_of_every_known_namespace() {
    let mut c = Cluster::new();
    let mut g = gateway(
        "g",
        0,
        "billing",
        "x",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    );
    let spec = g.spec.as_mut().unwrap();
    spec.namespace_selector = Default::default();
    spec.pod_selector = Default::default();
    c.gw(g)
        .node(gw_node("n1", 11))
        .pod(pod("billing", "a", "invoicer", "n1", "198.19.1.10"))
        .pod(pod("other", "b", "web", "n1", "198.19.1.11"))
        .pod(pod("unknown-ns", "c", "web", "n1", "198.19.1.12"));
    assert_eq!(
        selected(&c, "g"),
        vec!["billing/a", "other/b"],
        "a namespace not yet seen selects nothing"
    );
}

#[test]
fn only_running_pods_with_ips_off_the_host_network_are_selected() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11));
    let mut pending = pod("billing", "pending", "inv", "n1", "198.19.1.10");
    pending.running = false;
    let mut no_ip = pod("billing", "no-ip", "inv", "n1", "198.19.1.11");
    no_ip.ips.clear();
    let mut host = pod("billing", "host", "inv", "n1", "198.18.0.11");
    host.host_network = true;
    let mut unscheduled = pod("billing", "unscheduled", "inv", "n1", "198.19.1.12");
    unscheduled.node = None;
    c.pod(pending)
        .pod(no_ip)
        .pod(host)
        .pod(unscheduled)
        .pod(pod("billing", "ok", "inv", "n1", "198.19.1.13"));
    assert_eq!(selected(&c, "g"), vec!["billing/ok"]);
}

#[test]
fn an_invalid_gateway_selects_nothing_and_plans_nothing() {
    let mut c = Cluster::new();
    let mut spec = crate::api::EgressGatewaySpec {
        namespace_selector: sel(&[("team", "billing")]),
        pod_selector: sel(&[("app", "inv")]),
        destination_cidrs: vec!["203.0.113.7/24".into()],
        excluded_cidrs: vec![],
        egress_ips: vec!["198.18.0.200".into()],
        gateway_node_selector: Default::default(),
        interface: None,
    };
    c.gw(from_spec("bad", 0, &spec))
        .node(gw_node("n1", 11))
        .pod(pod("billing", "a", "inv", "n1", "198.19.1.10"));
    let plan = c.plan();
    assert!(!plan.selections.by_gateway.contains_key("bad"));
    assert!(
        plan.node_plan("n1").gateways.is_empty() && plan.node_plan("n1").hosted.is_empty(),
        "nothing half-programmed"
    );
    spec.destination_cidrs = vec!["203.0.113.0/24".into()];
    c.gw(from_spec("bad", 0, &spec));
    assert_eq!(
        c.plan().selections.by_gateway["bad"]
            .pods
            .iter()
            .cloned()
            .collect::<Vec<_>>(),
        vec![PodKey::new("billing", "a")]
    );
}
