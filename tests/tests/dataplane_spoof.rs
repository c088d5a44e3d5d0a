//! Anti-spoofing on the gateway node, with real TCP: a host on the node LAN that sends with a
//! selected pod's source address gets nothing through, while the pods themselves (on another
//! node and on the gateway node) keep leaving with the egress IP.
//!
//! What reaches the destination is counted by nftables in the legacy servers' namespace
//! (every SYN of the spoofer's flows, whatever its source): a spoofed SYN that got
//! SNATed would never complete its handshake (the answer goes to the real pod), so the
//! servers' accept log alone could not show it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use egressgw::dataplane::{CounterKind, Dataplane};
use egressgw_tests::testbed::client::open_stream;
use egressgw_tests::testbed::{
    GatewaySpec, Netns, OPEN_SERVER, SERVER_PORT, Testbed, all_plans, apply_all, dataplanes,
};

const E1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// The spoofer's own address on the node LAN: no node, router or egress IP uses it.
const SPOOFER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 77);
/// The spoofer's source ports (outside every other namespace's default 32768–60999), so its
/// packets are told apart at the destination whatever source address they arrive with.
const SPOOF_PORTS: (u16, u16) = (61100, 61199);
const GATEWAY_NODE: usize = 2;
/// Connection attempts per spoofed source (each sends at least one SYN).
const ATTEMPTS: usize = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);

/// Reverse-path filtering off on the nodes, as many CNIs set it: with strict `rp_filter` the
/// kernel would drop the spoofed packets of the gateway node's own pod before our rules.
fn testbed() -> Testbed {
    Testbed::builder()
        .nodes(3)
        .pods_per_node(1)
        .allow(E1)
        .rp_filter(0)
        .build()
        .expect("testbed")
}

/// Counters at the destination: every connection request (SYN) from the spoofer's ports,
/// and those of them with the egress IP as source. Only SYNs: in the control phase the real
/// pod answers the server's SYN-ACKs with resets from those ports, and they are no spoofing.
fn count_at_destination(tb: &Testbed) {
    let (lo, hi) = SPOOF_PORTS;
    tb.legacy()
        .nft(&format!(
            "table inet spoofprobe {{
  counter spoofed {{ }}
  counter spoofed_egress {{ }}
  set sources {{ type ipv4_addr; flags dynamic; }}
  chain pre {{
    type filter hook prerouting priority raw; policy accept;
    tcp sport {lo}-{hi} tcp flags & (syn | ack) == syn counter name \"spoofed\"
    tcp sport {lo}-{hi} tcp flags & (syn | ack) == syn add @sources {{ ip saddr }}
    ip saddr {E1} tcp sport {lo}-{hi} tcp flags & (syn | ack) == syn counter name \"spoofed_egress\"
  }}
}}"
        ))
        .expect("probe counters in the legacy namespace");
}

fn packets(tb: &Testbed, counter: &str) -> u64 {
    let out = tb
        .legacy()
        .exec("nft", &["list", "counter", "inet", "spoofprobe", counter])
        .expect("nft list counter");
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "packets")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {out:?}"))
}

/// The spoofer sends from `source` (a pod's address, held on its loopback) toward the open
/// server through the gateway node: `ATTEMPTS` connections, none of which may complete.
fn spoof_from(host: &Netns, tb: &Testbed, source: Ipv4Addr) {
    host.ip(&[
        "route",
        "replace",
        &format!("{OPEN_SERVER}/32"),
        "via",
        &tb.node(GATEWAY_NODE).ip().to_string(),
        "src",
        &source.to_string(),
    ])
    .expect("route through the gateway node");
    for _ in 0..ATTEMPTS {
        let r = open_stream(
            host.path(),
            SocketAddrV4::new(OPEN_SERVER, SERVER_PORT),
            ATTEMPT_TIMEOUT,
        )
        .expect("connect from the spoofer");
        assert!(r.is_err(), "a spoofed connection from {source} completed");
    }
}

fn spoof_drops(dp: &mut impl Dataplane) -> u64 {
    dp.counters()
        .expect("counters")
        .iter()
        .filter(|c| c.kind == CounterKind::SpoofDropped)
        .inspect(|c| assert_eq!(c.gateway.as_deref(), Some("billing")))
        .map(|c| c.packets)
        .sum()
}

#[test]
#[ignore = "needs root and network namespaces; run by make test"]
fn a_lan_host_spoofing_selected_pods_gets_nothing_through_the_gateway_while_the_pods_leave_with_the_egress_ip()
 {
    let tb = testbed();
    let remote = tb.pod(1, 0); // on node-1, steered to the gateway node
    let local = tb.pod(GATEWAY_NODE, 0); // on the gateway node itself
    let host = tb.lan_host("spoofer", SPOOFER).expect("LAN host");
    for pod in [remote, local] {
        host.ip(&["addr", "add", &format!("{}/32", pod.ip()), "dev", "lo"])
            .expect("pod address on the spoofer");
    }
    // A spoofer aiming at the gateway ignores the gateway node's ICMP redirects (toward the
    // router, which would carry the packets past the gateway with the pod's own address).
    for key in [
        "net.ipv4.conf.all.accept_redirects",
        "net.ipv4.conf.eth0.accept_redirects",
    ] {
        host.sysctl(key, "0").expect("no redirects");
    }
    host.sysctl(
        "net.ipv4.ip_local_port_range",
        &format!("{} {}", SPOOF_PORTS.0, SPOOF_PORTS.1),
    )
    .expect("spoofer ports");
    count_at_destination(&tb);

    // Control: without egressgw the gateway node forwards the spoofed packets (its CNI
    // masquerades them): the counters at the destination see them.
    spoof_from(&host, &tb, remote.ip());
    let control = packets(&tb, "spoofed");
    assert!(
        control >= ATTEMPTS as u64,
        "the probe must see spoofed packets that get through: {control}"
    );

    let gw = GatewaySpec::new("billing", &["203.0.113.0/24"])
        .egress(E1, GATEWAY_NODE)
        .pod(remote.ip(), 1)
        .pod(local.ip(), GATEWAY_NODE);
    // the control phase taught the gateway node node-1's MAC: forget it, so the dataplane
    // has to get it resolved before node-1's pod can be SNATed
    tb.node(GATEWAY_NODE)
        .netns()
        .ip(&["neigh", "flush", "all"])
        .expect("flush the gateway's neighbours");
    let mut dps = dataplanes(&tb);
    apply_all(&mut dps, &all_plans(&tb, &[gw]));
    let neigh = tb
        .node(GATEWAY_NODE)
        .netns()
        .ip(&["neigh", "show", &tb.node(1).ip().to_string()])
        .expect("neighbours");
    assert!(
        neigh.contains("managed") && neigh.contains("lladdr"),
        "the gateway keeps node-1 resolved: {neigh}"
    );

    // the genuine pods leave with the egress IP, from their node and from the gateway node
    assert_eq!(remote.connect(OPEN_SERVER).unwrap(), Ok(E1));
    assert_eq!(local.connect(OPEN_SERVER).unwrap(), Ok(E1));

    // the spoofer, with the address of the other node's pod and of the gateway node's pod
    let (before, before_egress) = (packets(&tb, "spoofed"), packets(&tb, "spoofed_egress"));
    spoof_from(&host, &tb, remote.ip());
    spoof_from(&host, &tb, local.ip());
    assert_eq!(
        packets(&tb, "spoofed_egress"),
        before_egress,
        "a spoofed packet left with the egress IP"
    );
    let sources = || {
        tb.legacy()
            .exec("nft", &["list", "set", "inet", "spoofprobe", "sources"])
            .unwrap_or_default()
    };
    assert_eq!(
        packets(&tb, "spoofed"),
        before,
        "a spoofed packet reached the destination with some other source: {}",
        sources()
    );
    assert!(
        tb.server_peers(OPEN_SERVER)
            .iter()
            .all(|p| !(SPOOF_PORTS.0..=SPOOF_PORTS.1).contains(&p.port())),
        "the server accepted a spoofed connection"
    );
    let dropped = spoof_drops(dps.get_mut(&GATEWAY_NODE).unwrap());
    assert!(
        dropped >= 2 * ATTEMPTS as u64,
        "the gateway node counts what it dropped: {dropped}"
    );

    // and the pods still leave with the egress IP afterwards
    assert_eq!(remote.connect(OPEN_SERVER).unwrap(), Ok(E1));
    assert_eq!(local.connect(OPEN_SERVER).unwrap(), Ok(E1));
    drop(host);
}
