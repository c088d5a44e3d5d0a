use super::fixture::*;
use crate::status::{Programming, condition, gateway_status, reason};
use k8s_openapi::jiff::Timestamp;

fn cond<'a>(
    s: &'a crate::api::EgressGatewayStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition"))
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

#[test]
fn a_healthy_gateway_is_ready_and_shows_where_its_ips_live() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.201", "198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11))
    .node(gw_node("n2", 12))
    .pod(pod("billing", "a", "inv", "n1", "198.19.11.10"));
    let plan = c.plan();
    let s = gateway_status(
        &c.index.gateways["g"],
        &plan,
        &Programming::default(),
        None,
        now(),
    );
    assert_eq!(s.selected_pods, Some(1));
    assert_eq!(
        s.assignments
            .iter()
            .map(|a| a.egress_ip.as_str())
            .collect::<Vec<_>>(),
        vec!["198.18.0.201", "198.18.0.200"]
    );
    let nodes: Vec<String> = s
        .assignments
        .iter()
        .map(|a| a.node.clone().unwrap())
        .collect();
    assert_eq!(s.gateway_nodes.as_deref(), Some(nodes.join(",").as_str()));
    assert_eq!(cond(&s, condition::READY).status, "True");
    assert_eq!(cond(&s, condition::PROGRAMMED).status, "True");
    assert_eq!(cond(&s, condition::CONFLICTED).status, "False");
    assert_eq!(cond(&s, condition::DEGRADED).status, "False");
    assert_eq!(s.observed_generation, Some(1));
}

#[test]
fn an_ip_without_a_node_degrades_and_says_why() {
    let mut c = Cluster::new();
    let mut down = gw_node("n2", 12);
    down.agent_alive = false;
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200", "198.18.0.201"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11))
    .node(down);
    // n1 already holds .200 (recorded), so .201 can only go to n1 too: it does (spread is a preference).
    let s = gateway_status(
        &c.index.gateways["g"],
        &c.plan(),
        &Programming::default(),
        None,
        now(),
    );
    assert_eq!(cond(&s, condition::DEGRADED).status, "False");
    c.index.nodes.get_mut("n1").unwrap().ready = false;
    let s = gateway_status(
        &c.index.gateways["g"],
        &c.plan(),
        &Programming::default(),
        None,
        now(),
    );
    let ready = cond(&s, condition::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason::NO_ELIGIBLE_NODE)
    );
    assert!(
        ready.message.contains("n1: is not Ready"),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("n2: has no live egressgw agent"),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("dropped"),
        "the operator learns traffic is held back: {}",
        ready.message
    );
    assert_eq!(cond(&s, condition::DEGRADED).status, "True");
    assert_eq!(s.gateway_nodes.as_deref(), Some("<none>"), "said once");
}

#[test]
fn the_loser_of_a_conflict_names_the_winner() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "old",
        1,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .gw(gateway(
        "young",
        2,
        "billing",
        "inv",
        &["198.18.0.200", "198.18.0.201"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11))
    .pod(pod("billing", "a", "inv", "n1", "198.19.11.10"));
    let plan = c.plan();
    let s = gateway_status(
        &c.index.gateways["young"],
        &plan,
        &Programming::default(),
        None,
        now(),
    );
    let conflicted = cond(&s, condition::CONFLICTED);
    assert_eq!(
        (conflicted.status.as_str(), conflicted.reason.as_str()),
        ("True", reason::EGRESS_IP_CONFLICT)
    );
    assert!(
        conflicted
            .message
            .contains("198.18.0.200 is claimed by older gateway old"),
        "{}",
        conflicted.message
    );
    assert!(
        conflicted
            .message
            .contains("also selected by older gateway old"),
        "{}",
        conflicted.message
    );
    assert_eq!(
        cond(&s, condition::READY).status,
        "True",
        "it still has .201"
    );
    let s_old = gateway_status(
        &c.index.gateways["old"],
        &plan,
        &Programming::default(),
        None,
        now(),
    );
    assert_eq!(cond(&s_old, condition::CONFLICTED).status, "False");
}

#[test]
fn an_invalid_spec_is_a_condition_not_a_crash() {
    let mut c = Cluster::new();
    let spec = crate::api::EgressGatewaySpec {
        namespace_selector: Default::default(),
        pod_selector: Default::default(),
        destination_cidrs: vec!["not-a-cidr".into()],
        excluded_cidrs: vec![],
        egress_ips: vec!["198.18.0.200".into()],
        gateway_node_selector: Default::default(),
        interface: None,
    };
    c.gw(from_spec("bad", 0, &spec)).node(gw_node("n1", 11));
    let s = gateway_status(
        &c.index.gateways["bad"],
        &c.plan(),
        &Programming::default(),
        None,
        now(),
    );
    let ready = cond(&s, condition::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason::INVALID_SPEC)
    );
    assert!(
        ready.message.contains("spec.destinationCIDRs[0]"),
        "{}",
        ready.message
    );
    assert!(s.assignments.is_empty());
}

#[test]
fn pending_nodes_keep_programmed_false_and_transition_times_survive() {
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
    let plan = c.plan();
    let pending = Programming {
        pending: vec!["n1".into()],
        ..Programming::default()
    };
    let first = gateway_status(&c.index.gateways["g"], &plan, &pending, None, now());
    let p = cond(&first, condition::PROGRAMMED);
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("False", reason::PENDING)
    );
    assert!(p.message.contains("n1"));
    let later = Timestamp::from_second(1_800_000_100).unwrap();
    let second = gateway_status(
        &c.index.gateways["g"],
        &plan,
        &Programming::default(),
        Some(&first),
        later,
    );
    assert_eq!(
        cond(&second, condition::PROGRAMMED).last_transition_time.0,
        later,
        "changed: new time"
    );
    assert_eq!(
        cond(&second, condition::READY).last_transition_time.0,
        now(),
        "unchanged: time kept"
    );
    assert_eq!(
        second.assignments[0].since.as_ref().unwrap().0,
        now(),
        "the IP did not move"
    );
}

#[test]
fn a_status_read_back_from_the_api_computes_to_itself() {
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
    let plan = c.plan();
    let sub_second = |ms: i64| Timestamp::from_millisecond(1_800_000_000_000 + ms).unwrap();
    let written = gateway_status(
        &c.index.gateways["g"],
        &plan,
        &Programming::default(),
        None,
        sub_second(250),
    );
    // The API keeps whole seconds; what comes back is what was computed.
    let read_back: crate::api::EgressGatewayStatus =
        serde_json::from_value(serde_json::to_value(&written).unwrap()).unwrap();
    assert_eq!(read_back, written);
    let next = gateway_status(
        &c.index.gateways["g"],
        &plan,
        &Programming::default(),
        Some(&written),
        sub_second(700),
    );
    assert_eq!(next, read_back, "nothing changed: no write");
}

#[test]
fn idle_agents_make_the_gateway_wait_not_warn() {
    let mut c = Cluster::new();
    let mut n = gw_node("n1", 11);
    n.agent_idle = true;
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(n);
    let plan = c.plan();
    let s = gateway_status(
        &c.index.gateways["g"],
        &plan,
        &Programming::default(),
        None,
        now(),
    );
    let ready = cond(&s, condition::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason::WAITING_FOR_AGENTS)
    );
    assert!(ready.message.contains("idle cadence"), "{}", ready.message);
    assert!(
        crate::controller::notices::notices(None, &s)
            .iter()
            .all(|n| !n.warning),
        "no warning while agents switch"
    );
    // A dead agent is a real problem: warned about.
    c.index.nodes.get_mut("n1").unwrap().agent_alive = false;
    let s = gateway_status(
        &c.index.gateways["g"],
        &c.plan(),
        &Programming::default(),
        None,
        now(),
    );
    assert_eq!(cond(&s, condition::READY).reason, reason::NO_ELIGIBLE_NODE);
    assert!(
        crate::controller::notices::notices(None, &s)
            .iter()
            .any(|n| n.warning)
    );
}

#[test]
fn a_refused_egress_ip_is_named_with_its_field_value_and_reason() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.11"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("node-1", 11))
    .node(gw_node("node-2", 12));
    let s = gateway_status(
        &c.index.gateways["g"],
        &c.plan(),
        &Programming::default(),
        None,
        now(),
    );
    let ready = cond(&s, condition::READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reason::INVALID_EGRESS_IP)
    );
    assert!(
        ready
            .message
            .contains("spec.egressIPs[0] 198.18.0.11 is the InternalIP of node node-1"),
        "{}",
        ready.message
    );
    let degraded = cond(&s, condition::DEGRADED);
    assert_eq!(degraded.reason, reason::INVALID_EGRESS_IP);
    assert_eq!(s.assignments[0].node, None);
    let events = crate::controller::notices::notices(None, &s);
    assert!(
        events.iter().any(|e| e.warning
            && e.reason == crate::controller::notices::event_reason::INVALID_EGRESS_IP
            && e.note.contains("spec.egressIPs[0] 198.18.0.11")),
        "{events:?}"
    );
}

#[test]
fn a_refused_ip_beside_a_placed_one_degrades_with_a_warning() {
    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200", "198.18.192.1"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("node-1", 11));
    c.index.service_cidrs = vec!["198.18.192.0/20".parse().unwrap()];
    let s = gateway_status(
        &c.index.gateways["g"],
        &c.plan(),
        &Programming::default(),
        None,
        now(),
    );
    assert_eq!(cond(&s, condition::READY).status, "True");
    let degraded = cond(&s, condition::DEGRADED);
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reason::INVALID_EGRESS_IP)
    );
    assert!(
        degraded.message.contains(
            "spec.egressIPs[1] 198.18.192.1 lies inside the Service range 198.18.192.0/20"
        ),
        "{}",
        degraded.message
    );
    let events = crate::controller::notices::notices(None, &s);
    assert!(
        events
            .iter()
            .any(|e| e.warning && e.reason == "InvalidEgressIP" && e.note == degraded.message),
        "{events:?}"
    );
}

#[test]
fn an_unknown_interface_is_named_in_the_reason() {
    let mut c = Cluster::new();
    let mut g = gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    );
    g.spec.as_mut().unwrap().interface = Some("eth9".into());
    c.gw(g).node(gw_node("node-1", 11));
    let s = gateway_status(
        &c.index.gateways["g"],
        &c.plan(),
        &Programming::default(),
        None,
        now(),
    );
    let ready = cond(&s, condition::READY);
    assert_eq!(ready.reason, reason::NO_ELIGIBLE_NODE);
    assert!(
        ready
            .message
            .contains("node-1: has no interface eth9 (spec.interface)"),
        "{}",
        ready.message
    );
}

/// Status tells the kernel truth (issue 14.8): the host's agent reports its kernel lacks the
/// egress IP (an address egressgw did not add holds it). Within the bound Programmed stays
/// as it was; past it Programmed=False, KernelDiffers, naming the node, the IP and the
/// interface, with a Warning event; once the report matches again it is True at once, with
/// a Normal event. A node that does not act for the gateway, or whose agent is dead, is not
/// heard.
#[test]
fn a_kernel_that_differs_beyond_the_bound_turns_programmed_false_and_recovers() {
    use crate::controller::notices::{event_reason, notices};
    use crate::dataplane::truth::{GatewayDifference, KernelReport};
    use crate::k8s::lease::AgentReport;
    use crate::kernel_truth::{KERNEL_DIFFERS_BOUND, KernelDrift, differences};
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    let mut c = Cluster::new();
    c.gw(gateway(
        "g",
        0,
        "billing",
        "inv",
        &["198.18.0.200"],
        &["203.0.113.0/24"],
    ))
    .node(gw_node("n1", 11))
    .node(worker("w9", 19))
    .pod(pod("billing", "a", "inv", "n1", "198.19.11.10"));
    let plan = c.plan();
    let host = plan.rollouts["g"].hosted[&ip("198.18.0.200")].0.clone();
    assert_eq!(host, "n1");
    let absent = KernelReport {
        digest: "0123456789abcdef".into(),
        elements: 4,
        differs: BTreeMap::from([(
            "g".to_string(),
            GatewayDifference {
                elements: 3,
                want_elements: 3,
                rules: 6,
                want_rules: 6,
                missing: ["198.18.0.200".parse().unwrap()].into(),
                foreign: [("198.18.0.200".parse().unwrap(), "eth0".to_string())].into(),
                ..GatewayDifference::default()
            },
        )]),
        ..KernelReport::default()
    };
    let on_plan = KernelReport {
        addresses: ["198.18.0.200".parse().unwrap()].into(),
        ..KernelReport::default()
    };
    let reports = |host_kernel: &KernelReport| {
        let r = |node: &str, k: &KernelReport| AgentReport {
            node: node.into(),
            kernel: Some(k.clone()),
            ..AgentReport::default()
        };
        BTreeMap::from([
            ("n1".to_string(), r("n1", host_kernel)),
            // w9 acts for nothing of g: what it says about g does not count
            ("w9".to_string(), r("w9", &absent)),
        ])
    };
    assert!(
        differences(&plan, &reports(&absent), |_| false).is_empty(),
        "a dead agent's report is not heard"
    );
    let current = differences(&plan, &reports(&absent), |_| true);
    assert_eq!(current.len(), 1, "{current:?}");

    let gw = &c.index.gateways["g"];
    let t0 = Instant::now();
    let mut drift = KernelDrift::default();
    let status_at = |drift: &mut KernelDrift, at: Duration, k: &KernelReport, prev| {
        let lasting = drift.observe(t0 + at, differences(&plan, &reports(k), |_| true));
        let programming = Programming {
            kernel: lasting.by_gateway.get("g").cloned().unwrap_or_default(),
            ..Programming::default()
        };
        gateway_status(gw, &plan, &programming, prev, now())
    };
    let healthy = status_at(&mut drift, Duration::ZERO, &on_plan, None);
    assert_eq!(cond(&healthy, condition::PROGRAMMED).status, "True");

    let within = status_at(
        &mut drift,
        Duration::from_millis(100),
        &absent,
        Some(&healthy),
    );
    assert_eq!(
        cond(&within, condition::PROGRAMMED).status,
        "True",
        "a difference younger than the bound does not flap the condition"
    );
    assert!(notices(Some(&healthy), &within).is_empty());
    assert_eq!(
        drift.next_due(),
        Some(t0 + Duration::from_millis(100) + KERNEL_DIFFERS_BOUND),
        "the controller wakes when the bound passes"
    );

    let past = status_at(
        &mut drift,
        Duration::from_millis(100) + KERNEL_DIFFERS_BOUND,
        &absent,
        Some(&within),
    );
    let p = cond(&past, condition::PROGRAMMED);
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("False", reason::KERNEL_DIFFERS)
    );
    assert_eq!(
        p.message,
        "the kernel differs from the plan for longer than 2s: n1: egress IP 198.18.0.200 is absent: an address egressgw did not add holds it on eth0"
    );
    assert_eq!(
        cond(&past, condition::READY).status,
        "True",
        "placement stands"
    );
    let events = notices(Some(&within), &past);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].warning);
    assert_eq!(events[0].reason, event_reason::KERNEL_DIFFERS);
    assert_eq!(events[0].note, p.message);

    let recovered = status_at(
        &mut drift,
        Duration::from_millis(200) + KERNEL_DIFFERS_BOUND,
        &on_plan,
        Some(&past),
    );
    assert_eq!(cond(&recovered, condition::PROGRAMMED).status, "True");
    let events = notices(Some(&past), &recovered);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.warning, e.reason))
            .collect::<Vec<_>>(),
        [(false, event_reason::KERNEL_MATCHES)]
    );
}
