//! Self-healing on one node (DESIGN.md, "Invariants", 4): after someone changes our kernel
//! objects, the drift monitor's event and one re-apply bring the node back on plan within 1 s,
//! without deleting our table; and a steering table fails closed when its route vanishes.
//!
//! Our table is normally owned by the agent's socket (Linux ≥ 6.9): nobody else can change
//! it, `nft flush ruleset` skips it. The nftables cases therefore run on an unowned table
//! (`own_table: false`, as on older kernels), where drift is repaired rather than refused;
//! one test shows the owned table refusing them.
//!
//! The repair loop here is the agent's in miniature: wait for a drift event, debounce, apply
//! the same plan. Each case prints `drift-repair node=<role> tamper=<what> ms=<time>` (run
//! with `--nocapture` to see them; docs/BENCHMARKS.md, "Drift repair").

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use egressgw::agent::drift::DRIFT_DEBOUNCE;
use egressgw::dataplane::config::{OWNED_TABLE_FLAGS, TABLE_FLAG_PERSIST};
use egressgw::dataplane::names::{GatewayId, SetName};
use egressgw::dataplane::{Dataplane, DataplaneConfig, KernelDataplane, KernelSnapshot};
use egressgw::plan::NodePlan;
use egressgw_tests::testbed::{
    ConnectError, GatewaySpec, Node, OPEN_SERVER, Testbed, all_plans, apply_all, dataplane,
    dataplanes,
};

const E1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// The bound of the invariant.
const REPAIR_BOUND: Duration = Duration::from_secs(1);
/// How long a case may take before it fails with a clear message.
const GIVE_UP: Duration = Duration::from_secs(5);
/// Quiet time after a repair in which nothing more may be applied (no feedback loop).
const SETTLE: Duration = Duration::from_millis(300);
const POLL: Duration = Duration::from_millis(5);

fn testbed() -> Testbed {
    Testbed::builder()
        .nodes(3)
        .pods_per_node(2)
        .allow(E1)
        .build()
        .expect("testbed")
}

/// A dataplane for `node` whose table is not owned (others can change it, as before 6.9).
fn unowned(node: &Node) -> KernelDataplane {
    KernelDataplane::new(DataplaneConfig {
        own_table: false,
        ..DataplaneConfig::in_netns(node.netns_path())
    })
    .unwrap()
}

fn gateway(tb: &Testbed) -> GatewaySpec {
    GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, 2)
        .pod(tb.pod(1, 0).ip(), 1)
        .pod(tb.pod(2, 0).ip(), 2)
}

/// Our kernel state without what changes when a rule is re-added (handle, counters).
fn normalized(mut s: KernelSnapshot) -> KernelSnapshot {
    if let Some(t) = s.table.as_mut() {
        for h in t.rules.values_mut() {
            *h = None;
        }
    }
    s
}

/// One tampering: what it is, and how.
type Case<'a> = (&'a str, Box<dyn Fn() + 'a>);

/// The agent's repair loop in miniature, on its own thread.
struct Repairer {
    dp: Arc<Mutex<KernelDataplane>>,
    applies: Arc<AtomicUsize>,
    changed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Repairer {
    fn start(dp: KernelDataplane, plan: NodePlan) -> Self {
        let mut events = dp.watch_drift().expect("drift monitor starts");
        let dp = Arc::new(Mutex::new(dp));
        let (applies, changed, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (d, a, c, s) = (dp.clone(), applies.clone(), changed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut dirty = false;
            while !s.load(Ordering::SeqCst) {
                match events.try_recv() {
                    Ok(_) => {
                        std::thread::sleep(DRIFT_DEBOUNCE);
                        while events.try_recv().is_ok() {}
                        dirty = true;
                    }
                    Err(_) if !dirty => {
                        std::thread::sleep(POLL);
                        continue;
                    }
                    Err(_) => {}
                }
                match d.lock().unwrap().apply(&plan) {
                    Ok(r) => {
                        dirty = false;
                        a.fetch_add(1, Ordering::SeqCst);
                        if !r.is_noop() {
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    // e.g. a route via a link that is down: retry, like the agent
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Self {
            dp,
            applies,
            changed,
            stop,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> KernelSnapshot {
        normalized(self.dp.lock().unwrap().snapshot().unwrap())
    }

    /// Runs `tamper` and waits until the kernel is back on `baseline`; the repair time.
    fn repair_time(
        &self,
        what: &str,
        baseline: &KernelSnapshot,
        tamper: impl FnOnce(),
    ) -> Duration {
        let changed_before = self.changed.load(Ordering::SeqCst);
        let t0 = Instant::now();
        tamper();
        loop {
            if self.snapshot() == *baseline {
                break;
            }
            assert!(
                t0.elapsed() < GIVE_UP,
                "{what}: not repaired after {GIVE_UP:?}: {:#?}",
                self.snapshot()
            );
            std::thread::sleep(POLL);
        }
        let took = t0.elapsed();
        assert!(
            self.changed.load(Ordering::SeqCst) > changed_before,
            "{what}: restored without a repair commit?"
        );
        // our own repair commit must not be taken for drift: nothing more is applied
        std::thread::sleep(SETTLE);
        let applies = self.applies.load(Ordering::SeqCst);
        std::thread::sleep(SETTLE);
        assert_eq!(
            self.applies.load(Ordering::SeqCst),
            applies,
            "{what}: the repair keeps triggering applies (feedback loop)"
        );
        took
    }
}

impl Drop for Repairer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The handle of the first rule of `chain` in our table.
fn first_rule_handle(node: &Node, chain: &str) -> String {
    let listing = node
        .netns()
        .exec("nft", &["-a", "list", "chain", "ip", "egressgw", chain])
        .unwrap();
    listing
        .lines()
        .filter(|l| l.contains("comment"))
        .find_map(|l| {
            l.rsplit_once("# handle ")
                .map(|(_, h)| h.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no rule in chain {chain}: {listing}"))
}

/// The handle and comment of the rule of `chain` whose listing contains `needle`.
fn rule_with(node: &Node, chain: &str, needle: &str) -> (String, String) {
    let listing = node
        .netns()
        .exec("nft", &["-a", "list", "chain", "ip", "egressgw", chain])
        .unwrap();
    let line = listing
        .lines()
        .find(|l| l.contains(needle) && l.contains("comment"))
        .unwrap_or_else(|| panic!("no rule with {needle} in {chain}: {listing}"));
    let (rest, handle) = line.rsplit_once("# handle ").unwrap();
    let comment = rest.split('"').nth(1).unwrap().to_string();
    (handle.trim().to_string(), comment)
}

fn run(node: &Node, cmd: &str, args: &[&str]) {
    node.netns()
        .exec(cmd, args)
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
}

fn report(role: &str, what: &str, took: Duration) {
    println!(
        "drift-repair node={role} tamper={what:?} ms={:.1}",
        took.as_secs_f64() * 1e3
    );
    assert!(
        took <= REPAIR_BOUND,
        "{role}: {what} repaired in {took:?}, over {REPAIR_BOUND:?}"
    );
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_gateway_node_is_repaired_within_a_second_of_any_tampering() {
    let tb = testbed();
    let plans = all_plans(&tb, &[gateway(&tb)]);
    let mut dps = dataplanes(&tb);
    dps.insert(2, unowned(tb.node(2)));
    apply_all(&mut dps, &plans);
    let node = tb.node(2);
    let rep = Repairer::start(dps.remove(&2).unwrap(), plans[&2].clone());
    let baseline = rep.snapshot();
    assert!(baseline.routing.addresses.iter().any(|a| a.ip == E1));
    let gid = GatewayId::derive("billing", 0);
    let snat_set = SetName::Snat(gid, E1).to_string();
    let pod = tb.pod(2, 0).ip().to_string();
    let cases: Vec<Case> = vec![
        (
            "nft delete table ip egressgw",
            Box::new(|| run(node, "nft", &["delete", "table", "ip", "egressgw"])),
        ),
        (
            "nft flush ruleset",
            Box::new(|| run(node, "nft", &["flush", "ruleset"])),
        ),
        (
            "delete one rule",
            Box::new(|| {
                let h = first_rule_handle(node, "post");
                run(
                    node,
                    "nft",
                    &["delete", "rule", "ip", "egressgw", "post", "handle", &h],
                )
            }),
        ),
        (
            "delete one set element",
            Box::new(|| {
                run(
                    node,
                    "nft",
                    &[
                        "delete",
                        "element",
                        "ip",
                        "egressgw",
                        &snat_set,
                        &format!("{{ {pod} }}"),
                    ],
                )
            }),
        ),
        (
            "delete the hosted record element",
            Box::new(|| {
                run(
                    node,
                    "nft",
                    &[
                        "delete",
                        "element",
                        "ip",
                        "egressgw",
                        "hosted",
                        &format!("{{ {E1} }}"),
                    ],
                )
            }),
        ),
        (
            "ip addr del E/32",
            Box::new(|| {
                run(
                    node,
                    "ip",
                    &["addr", "del", &format!("{E1}/32"), "dev", "eth0"],
                )
            }),
        ),
        (
            "edit a rule in place under its comment",
            Box::new(|| {
                let (h, comment) = rule_with(node, "post", "snat to");
                let script = format!(
                    "replace rule ip egressgw post handle {h} counter snat to 198.18.0.201 comment \"{comment}\""
                );
                run(node, "nft", &[&script])
            }),
        ),
        (
            "add a foreign rule to our table",
            Box::new(|| {
                run(
                    node,
                    "nft",
                    &["add", "rule", "ip", "egressgw", "post", "counter"],
                )
            }),
        ),
    ];
    for (what, tamper) in &cases {
        let took = rep.repair_time(what, &baseline, tamper);
        report("gateway", what, took);
    }
    // a link flap leaves addresses in place: nothing of ours to repair, and nothing breaks
    run(node, "ip", &["link", "set", "eth0", "down"]);
    run(node, "ip", &["link", "set", "eth0", "up"]);
    std::thread::sleep(SETTLE);
    assert_eq!(rep.snapshot(), baseline);
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_source_node_is_repaired_within_a_second_of_any_tampering() {
    let tb = testbed();
    let plans = all_plans(&tb, &[gateway(&tb)]);
    let mut dps = dataplanes(&tb);
    dps.insert(1, unowned(tb.node(1)));
    apply_all(&mut dps, &plans);
    let node = tb.node(1);
    let rep = Repairer::start(dps.remove(&1).unwrap(), plans[&1].clone());
    let baseline = rep.snapshot();
    let table = baseline
        .routing
        .routes
        .iter()
        .find(|r| r.gateway == Some(tb.node(2).ip()))
        .expect("a steering route to node-2")
        .table
        .to_string();
    assert!(
        baseline
            .routing
            .routes
            .iter()
            .any(|r| r.table.to_string() == table && r.gateway.is_none()),
        "the steering table fails closed: {:?}",
        baseline.routing.routes
    );
    let gid = GatewayId::derive("billing", 0);
    let via_set = SetName::Via(gid, tb.node(2).ip()).to_string();
    let pod = tb.pod(1, 0).ip().to_string();
    let rule = baseline.routing.rules[0];
    let (pref, mark, lookup) = (
        rule.priority.to_string(),
        format!("{:#x}/{:#x}", rule.mark, rule.mask),
        rule.table.to_string(),
    );
    let cases: Vec<Case> = vec![
        (
            "nft delete table ip egressgw",
            Box::new(|| run(node, "nft", &["delete", "table", "ip", "egressgw"])),
        ),
        (
            "nft flush ruleset",
            Box::new(|| run(node, "nft", &["flush", "ruleset"])),
        ),
        (
            "delete one rule",
            Box::new(|| {
                let h = first_rule_handle(node, "pre");
                run(
                    node,
                    "nft",
                    &["delete", "rule", "ip", "egressgw", "pre", "handle", &h],
                )
            }),
        ),
        (
            "delete one set element",
            Box::new(|| {
                run(
                    node,
                    "nft",
                    &[
                        "delete",
                        "element",
                        "ip",
                        "egressgw",
                        &via_set,
                        &format!("{{ {pod} }}"),
                    ],
                )
            }),
        ),
        (
            "ip rule del",
            Box::new(|| {
                run(
                    node,
                    "ip",
                    &[
                        "rule", "del", "pref", &pref, "fwmark", &mark, "lookup", &lookup,
                    ],
                )
            }),
        ),
        (
            "ip route flush table T",
            Box::new(|| run(node, "ip", &["route", "flush", "table", &table])),
        ),
        (
            "ip link set eth0 down; up",
            Box::new(|| {
                run(node, "ip", &["link", "set", "eth0", "down"]);
                run(node, "ip", &["link", "set", "eth0", "up"]);
            }),
        ),
    ];
    for (what, tamper) in &cases {
        let took = rep.repair_time(what, &baseline, tamper);
        report("source", what, took);
    }
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_marked_packet_whose_next_hop_route_vanished_is_dropped_not_routed_by_main() {
    let tb = testbed();
    let pod = tb.pod(1, 0);
    let plans = all_plans(&tb, &[gateway(&tb)]);
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &plans);
    assert_eq!(pod.connect(OPEN_SERVER).unwrap(), Ok(E1));
    let snap = dps[&1].snapshot().unwrap();
    let via = snap
        .routing
        .routes
        .iter()
        .find(|r| r.gateway == Some(tb.node(2).ip()))
        .expect("a steering route");
    let table = via.table.to_string();
    let nh = tb.node(2).ip().to_string();
    // the route via the next hop vanishes (as a link flap flushes it); no repair runs here
    tb.node(1)
        .netns()
        .ip(&["route", "del", "default", "via", &nh, "table", &table])
        .unwrap();
    assert_eq!(
        pod.connect(OPEN_SERVER).unwrap(),
        Err(ConnectError::Timeout),
        "the marked packet must be dropped by the table's blackhole"
    );
    let seen: Vec<Ipv4Addr> = tb
        .server_peers(OPEN_SERVER)
        .iter()
        .map(|p| *p.ip())
        .collect();
    assert!(
        seen.iter().all(|ip| *ip == E1),
        "only the egress IP ever reached the server: {seen:?}"
    );
    // what the blackhole prevents: without it the kernel routes the marked packet by the
    // main table (out to the router, with the pod's own address after the identity SNAT)
    let rule = snap.routing.rules[0];
    let mark = format!("{:#x}", rule.mark);
    let src = pod.ip().to_string();
    let dst = OPEN_SERVER.to_string();
    let route_get = || {
        tb.node(1)
            .netns()
            .ip(&[
                "route", "get", &dst, "from", &src, "iif", "cni0", "mark", &mark,
            ])
            .unwrap_or_else(|e| e.to_string())
    };
    // (the kernel answers a lookup that ends in a blackhole with EINVAL)
    let with_blackhole = route_get();
    assert!(
        with_blackhole.contains("Invalid argument"),
        "the lookup ends in the blackhole: {with_blackhole}"
    );
    tb.node(1)
        .netns()
        .ip(&[
            "route",
            "del",
            "blackhole",
            "default",
            "table",
            &table,
            "metric",
            "4294967295",
        ])
        .unwrap();
    let without = route_get();
    assert!(
        !without.contains("blackhole") && without.contains("via 198.18.0.1"),
        "without the blackhole the main table routes it: {without}"
    );
    // a re-apply restores both routes, and the pod leaves with E1 again
    let mut dp1 = dataplane(tb.node(1));
    dp1.apply(&plans[&1]).unwrap();
    assert_eq!(pod.connect(OPEN_SERVER).unwrap(), Ok(E1));
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn an_owned_table_refuses_tampering_and_routing_drift_is_still_repaired() {
    let tb = testbed();
    let plans = all_plans(&tb, &[gateway(&tb)]);
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &plans);
    let (source, host) = (tb.node(1), tb.node(2));
    let src = Repairer::start(dps.remove(&1).unwrap(), plans[&1].clone());
    let gw = Repairer::start(dps.remove(&2).unwrap(), plans[&2].clone());
    let (src_base, gw_base) = (src.snapshot(), gw.snapshot());
    for base in [&src_base, &gw_base] {
        assert_eq!(base.table.as_ref().unwrap().flags, OWNED_TABLE_FLAGS);
    }
    for node in [source, host] {
        let refused = |args: &[&str]| {
            let err = node
                .netns()
                .exec("nft", args)
                .expect_err("someone else changed our owned table");
            assert!(
                err.to_string().contains("Operation not permitted"),
                "{args:?}: {err}"
            );
        };
        refused(&["delete", "table", "ip", "egressgw"]);
        refused(&["flush", "table", "ip", "egressgw"]);
        refused(&["add", "rule", "ip", "egressgw", "post", "counter"]);
        let h = first_rule_handle(node, "noleak");
        refused(&["delete", "rule", "ip", "egressgw", "noleak", "handle", &h]);
        // `flush ruleset` (what `systemctl reload nftables` runs) passes our table by
        run(node, "nft", &["flush", "ruleset"]);
    }
    std::thread::sleep(SETTLE);
    assert_eq!(
        src.snapshot(),
        src_base,
        "the source node's table is intact"
    );
    assert_eq!(gw.snapshot(), gw_base, "the gateway node's table is intact");

    // routing and addresses are not protected by the table: repaired
    let rule = src_base.routing.rules[0];
    let (pref, mark, lookup) = (
        rule.priority.to_string(),
        format!("{:#x}/{:#x}", rule.mark, rule.mask),
        rule.table.to_string(),
    );
    let took = src.repair_time("ip rule del", &src_base, || {
        run(
            source,
            "ip",
            &[
                "rule", "del", "pref", &pref, "fwmark", &mark, "lookup", &lookup,
            ],
        )
    });
    report("source (owned table)", "ip rule del", took);
    let took = src.repair_time("ip route flush table T", &src_base, || {
        run(source, "ip", &["route", "flush", "table", &lookup])
    });
    report("source (owned table)", "ip route flush table T", took);
    let took = gw.repair_time("ip addr del E/32", &gw_base, || {
        run(
            host,
            "ip",
            &["addr", "del", &format!("{E1}/32"), "dev", "eth0"],
        )
    });
    report("gateway (owned table)", "ip addr del E/32", took);
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_restarted_agent_adopts_its_orphaned_table_and_owns_it_again() {
    let tb = testbed();
    let node = tb.node(2);
    let plan = all_plans(&tb, &[gateway(&tb)])[&2].clone();
    {
        let mut dp = dataplane(node);
        dp.apply(&plan).unwrap();
    } // the agent exits: the kernel keeps the table, owned by nobody
    let mut dp = dataplane(node);
    // The kernel drops the ownership when it releases the old socket, which a loaded machine
    // may do a moment after the old dataplane is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let orphan = loop {
        let t = dp.snapshot().unwrap().table.unwrap();
        if t.flags == TABLE_FLAG_PERSIST || std::time::Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(orphan.flags, TABLE_FLAG_PERSIST, "kept, owned by nobody");
    let r = dp.apply(&plan).unwrap();
    assert_eq!(r.nft_messages, 1, "only the adoption: {r:?}");
    assert!(dp.apply(&plan).unwrap().is_noop());
    assert_eq!(
        dp.snapshot().unwrap().table.unwrap().flags,
        OWNED_TABLE_FLAGS
    );
    let err = node
        .netns()
        .exec("nft", &["delete", "table", "ip", "egressgw"])
        .expect_err("owned again");
    assert!(err.to_string().contains("Operation not permitted"), "{err}");
    // the owner itself may still remove it
    dp.cleanup().unwrap();
    assert!(
        !node
            .netns()
            .exec("nft", &["list", "tables"])
            .unwrap()
            .contains("egressgw")
    );
}
