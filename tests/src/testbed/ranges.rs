//! The address ranges of the testbed and the test control plane (DESIGN.md, "The testbed"),
//! and the start-up guard that keeps them clear of the machine's real network.
//!
//! The testbed and the control plane only ever use the ranges below. They are reserved for
//! documentation and benchmarking, but a machine may still use one of them for real: these
//! machines sit on 192.0.2.0/24, for instance. If a testbed range also were an address or a
//! route of the root network namespace, a packet sent from the wrong namespace (or, once a
//! kube-proxy runs, to a ClusterIP) would leave the machine. So [`check_root_namespace`]
//! refuses to start when any range overlaps an address or route there, naming both.

use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;

use ipnetwork::Ipv4Network;
use serde::Deserialize;

/// The node LAN (a bridge): router/firewall .1, node N at .(10 + N), egress IPs .200–.250.
pub const NODE_LAN: Ipv4Network = net([198, 18, 0, 0], 24);
/// The pods: node N's pods are in 198.19.N.0/24.
pub const POD_NETWORK: Ipv4Network = net([198, 19, 0, 0], 16);
/// The legacy servers behind the firewall (the protected half is 203.0.113.0/25).
pub const LEGACY_NETWORK: Ipv4Network = net([203, 0, 113, 0], 24);
/// A second, unrelated network behind the firewall.
pub const OTHER_NETWORK: Ipv4Network = net([198, 51, 100, 0], 24);
/// kube-apiserver's `--service-cluster-ip-range`: inside 198.18.0.0/15, clear of the node LAN
/// and the egress IPs.
pub const SERVICE_RANGE: Ipv4Network = net([198, 18, 192, 0], 20);

/// Every range a testbed puts on its links, with what it is for.
pub const TESTBED_RANGES: [(&str, Ipv4Network); 4] = [
    ("node LAN", NODE_LAN),
    ("pod network", POD_NETWORK),
    ("legacy network", LEGACY_NETWORK),
    ("other network", OTHER_NETWORK),
];

/// The ranges a control plane hands out.
pub const CONTROL_PLANE_RANGES: [(&str, Ipv4Network); 1] = [("Service range", SERVICE_RANGE)];

const fn net(octets: [u8; 4], prefix: u8) -> Ipv4Network {
    match Ipv4Network::new_checked(
        Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]),
        prefix,
    ) {
        Some(n) => n,
        None => panic!("prefix longer than 32"),
    }
}

const LOOPBACK: Ipv4Network = net([127, 0, 0, 0], 8);

/// An address or a route of the root network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEntry {
    /// The address with its prefix, or the route's destination.
    pub net: Ipv4Network,
    /// How a reader finds it, e.g. `address 192.0.2.2/24 on eth0`.
    pub what: String,
}

/// A testbed range that overlaps something of the root network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// What the range is for (`node LAN`, `Service range`, …).
    pub range_name: String,
    pub range: Ipv4Network,
    /// The address or route it overlaps.
    pub host: HostEntry,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} {} overlaps {}",
            self.range_name,
            normalized(self.range),
            self.host.what
        )
    }
}

/// Why the testbed or control plane refused to start.
#[derive(Debug, thiserror::Error)]
pub enum RootNetworkError {
    #[error(
        "refusing to start: the root network namespace uses a test range: {}. Traffic meant \
         for the testbed could leave this machine; the ranges are in tests/src/testbed/ranges.rs",
        .0.iter().map(|o| o.to_string()).collect::<Vec<_>>().join("; ")
    )]
    Overlaps(Vec<Overlap>),

    #[error("reading the root network namespace's {what} (`ip -j -4 {what}`): {detail}")]
    Unreadable { what: &'static str, detail: String },
}

/// Fails when any of `ranges` overlaps an address or route of the network namespace the
/// calling thread is in (the root one, for a test thread: testbed code that enters another
/// namespace does so on threads of its own).
pub fn check_root_namespace(ranges: &[(&str, Ipv4Network)]) -> Result<(), RootNetworkError> {
    let addresses =
        parse_addresses(&ip_json("addr", &["-j", "-4", "addr", "show"])?).map_err(|detail| {
            RootNetworkError::Unreadable {
                what: "addr",
                detail,
            }
        })?;
    let routes = parse_routes(&ip_json(
        "route",
        &["-j", "-4", "route", "show", "table", "all"],
    )?)
    .map_err(|detail| RootNetworkError::Unreadable {
        what: "route",
        detail,
    })?;
    let host = host_entries(addresses, routes);
    let overlaps = overlaps(ranges, &host);
    if overlaps.is_empty() {
        Ok(())
    } else {
        Err(RootNetworkError::Overlaps(overlaps))
    }
}

fn ip_json(what: &'static str, args: &[&str]) -> Result<String, RootNetworkError> {
    let unreadable = |detail: String| RootNetworkError::Unreadable { what, detail };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| unreadable(format!("running ip: {e}")))?;
    if !out.status.success() {
        return Err(unreadable(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| unreadable(e.to_string()))
}

/// The pure check: every pair of a range and a host entry that share an address.
pub fn overlaps(ranges: &[(&str, Ipv4Network)], host: &[HostEntry]) -> Vec<Overlap> {
    ranges
        .iter()
        .flat_map(|(name, range)| {
            host.iter()
                .filter(|h| cidrs_overlap(*range, h.net))
                .map(|h| Overlap {
                    range_name: name.to_string(),
                    range: *range,
                    host: h.clone(),
                })
        })
        .collect()
}

fn cidrs_overlap(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

fn normalized(n: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(n.network(), n.prefix()).expect("same prefix")
}

/// The entries worth checking: addresses and routes, without loopback and default routes,
/// and without the `local`/`broadcast` routes the kernel derives from an address (the address
/// itself is already an entry).
pub fn host_entries(addresses: Vec<HostEntry>, routes: Vec<ParsedRoute>) -> Vec<HostEntry> {
    let mut out: Vec<HostEntry> = addresses
        .into_iter()
        .filter(|a| !LOOPBACK.contains(a.net.ip()))
        .collect();
    for r in routes {
        if r.entry.net.prefix() == 0 || cidrs_overlap(LOOPBACK, r.entry.net) {
            continue;
        }
        let derived = matches!(r.kind.as_str(), "local" | "broadcast")
            && out
                .iter()
                .any(|a| a.what.starts_with("address") && a.net.contains(r.entry.net.network()));
        if !derived {
            out.push(r.entry);
        }
    }
    out
}

#[derive(Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    #[serde(default)]
    family: String,
    local: Option<Ipv4Addr>,
    /// The peer, on point-to-point links.
    address: Option<Ipv4Addr>,
    prefixlen: u8,
}

/// Parses `ip -j -4 addr show`: each address with its prefix (and a point-to-point peer).
pub fn parse_addresses(json: &str) -> Result<Vec<HostEntry>, String> {
    let links: Vec<Link> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for link in links {
        for a in link.addr_info.iter().filter(|a| a.family == "inet") {
            for (role, ip) in [("address", a.local), ("peer address", a.address)] {
                let Some(ip) = ip else { continue };
                let net = Ipv4Network::new(ip, a.prefixlen).map_err(|e| e.to_string())?;
                out.push(HostEntry {
                    net,
                    what: format!("{role} {net} on {}", link.ifname),
                });
            }
        }
    }
    Ok(out)
}

/// A route of `ip -j -4 route show table all`, with its type (`unicast`, `local`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRoute {
    pub kind: String,
    pub entry: HostEntry,
}

#[derive(Deserialize)]
struct Route {
    dst: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    dev: Option<String>,
    gateway: Option<String>,
    table: Option<String>,
}

/// Parses `ip -j -4 route show table all`. `default` is 0.0.0.0/0; a bare address is a /32.
pub fn parse_routes(json: &str) -> Result<Vec<ParsedRoute>, String> {
    let routes: Vec<Route> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for r in routes {
        let net = if r.dst == "default" {
            net([0, 0, 0, 0], 0)
        } else if r.dst.contains('/') {
            r.dst
                .parse()
                .map_err(|e| format!("route destination {:?}: {e}", r.dst))?
        } else {
            let ip: Ipv4Addr = r
                .dst
                .parse()
                .map_err(|e| format!("route destination {:?}: {e}", r.dst))?;
            Ipv4Network::from(ip)
        };
        let kind = r.kind.unwrap_or_else(|| "unicast".into());
        let mut what = "route ".to_string();
        if kind != "unicast" {
            what += &format!("{kind} ");
        }
        what += &r.dst;
        if let Some(gw) = &r.gateway {
            what += &format!(" via {gw}");
        }
        if let Some(dev) = &r.dev {
            what += &format!(" dev {dev}");
        }
        what += &format!(" table {}", r.table.as_deref().unwrap_or("main"));
        out.push(ParsedRoute {
            kind,
            entry: HostEntry { net, what },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What these machines show: eth0 192.0.2.2/24, default via 192.0.2.1 (trimmed output).
    const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo"}]},
      {"ifindex":4,"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24,"broadcast":"192.0.2.255","scope":"global","label":"eth0"}]}
    ]"#;
    const ROUTES: &str = r#"[
      {"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
      {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},
      {"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
      {"type":"local","dst":"127.0.0.1","dev":"lo","table":"local","protocol":"kernel","scope":"host","prefsrc":"127.0.0.1","flags":[]},
      {"type":"broadcast","dst":"127.255.255.255","dev":"lo","table":"local","protocol":"kernel","scope":"link","prefsrc":"127.0.0.1","flags":[]},
      {"type":"local","dst":"192.0.2.2","dev":"eth0","table":"local","protocol":"kernel","scope":"host","prefsrc":"192.0.2.2","flags":[]},
      {"type":"broadcast","dst":"192.0.2.255","dev":"eth0","table":"local","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]}
    ]"#;

    fn machine() -> Vec<HostEntry> {
        host_entries(
            parse_addresses(ADDRS).unwrap(),
            parse_routes(ROUTES).unwrap(),
        )
    }

    fn all_ranges() -> Vec<(&'static str, Ipv4Network)> {
        TESTBED_RANGES
            .iter()
            .chain(CONTROL_PLANE_RANGES.iter())
            .copied()
            .collect()
    }

    #[test]
    fn these_machines_keep_loopback_eth0_and_its_route_only() {
        let whats: Vec<String> = machine().into_iter().map(|h| h.what).collect();
        assert_eq!(
            whats,
            [
                "address 192.0.2.2/24 on eth0",
                "route 192.0.2.0/24 dev eth0 table main"
            ]
        );
    }

    #[test]
    fn the_test_ranges_are_clear_of_these_machines_network() {
        assert_eq!(overlaps(&all_ranges(), &machine()), []);
    }

    #[test]
    fn the_old_service_range_would_have_been_refused() {
        let found = overlaps(&[("Service range", net([192, 0, 2, 0], 24))], &machine());
        let text: Vec<String> = found.iter().map(|o| o.to_string()).collect();
        assert_eq!(
            text,
            [
                "the Service range 192.0.2.0/24 overlaps address 192.0.2.2/24 on eth0",
                "the Service range 192.0.2.0/24 overlaps route 192.0.2.0/24 dev eth0 table main",
            ]
        );
    }

    #[test]
    fn a_covering_route_is_named_with_the_range() {
        let routes = parse_routes(
            r#"[{"dst":"198.18.0.0/16","gateway":"192.0.2.9","dev":"eth0","table":"100"}]"#,
        )
        .unwrap();
        let host = host_entries(parse_addresses(ADDRS).unwrap(), routes);
        let found = overlaps(&CONTROL_PLANE_RANGES, &host);
        assert_eq!(found.len(), 1);
        let err = RootNetworkError::Overlaps(found).to_string();
        assert!(
            err.contains(
                "the Service range 198.18.192.0/20 overlaps route 198.18.0.0/16 via 192.0.2.9 \
                 dev eth0 table 100"
            ),
            "{err}"
        );
        // The testbed's node LAN is inside that route too; the legacy network is not.
        let found = overlaps(&TESTBED_RANGES, &host);
        let names: Vec<&str> = found.iter().map(|o| o.range_name.as_str()).collect();
        assert_eq!(names, ["node LAN"]);
    }

    #[test]
    fn a_route_inside_a_range_and_a_host_route_count() {
        let routes = parse_routes(
            r#"[{"dst":"198.19.7.0/24","dev":"eth0"},{"type":"unreachable","dst":"203.0.113.10"}]"#,
        )
        .unwrap();
        let found = overlaps(&TESTBED_RANGES, &host_entries(Vec::new(), routes));
        let text: Vec<String> = found.iter().map(|o| o.to_string()).collect();
        assert_eq!(
            text,
            [
                "the pod network 198.19.0.0/16 overlaps route 198.19.7.0/24 dev eth0 table main",
                "the legacy network 203.0.113.0/24 overlaps route unreachable 203.0.113.10 \
                 table main",
            ]
        );
    }

    #[test]
    fn an_address_in_a_range_counts_but_not_its_derived_local_routes() {
        let addrs = parse_addresses(
            r#"[{"ifname":"br9","addr_info":[{"family":"inet","local":"198.18.0.1","prefixlen":24}]}]"#,
        )
        .unwrap();
        let routes = parse_routes(
            r#"[{"type":"local","dst":"198.18.0.1","dev":"br9","table":"local"},
                {"type":"broadcast","dst":"198.18.0.255","dev":"br9","table":"local"}]"#,
        )
        .unwrap();
        let found = overlaps(&TESTBED_RANGES, &host_entries(addrs, routes));
        let whats: Vec<&str> = found.iter().map(|o| o.host.what.as_str()).collect();
        assert_eq!(whats, ["address 198.18.0.1/24 on br9"]);
    }

    #[test]
    fn a_local_route_of_no_address_counts() {
        // AnyIP: the whole range is local to the root namespace.
        let routes = parse_routes(
            r#"[{"type":"local","dst":"198.18.192.0/24","dev":"lo","table":"local"}]"#,
        )
        .unwrap();
        let found = overlaps(&CONTROL_PLANE_RANGES, &host_entries(Vec::new(), routes));
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn a_point_to_point_peer_counts() {
        let addrs = parse_addresses(
            r#"[{"ifname":"tun0","addr_info":[{"family":"inet","local":"10.9.0.1","address":"198.51.100.7","prefixlen":32}]}]"#,
        )
        .unwrap();
        let found = overlaps(&TESTBED_RANGES, &host_entries(addrs, Vec::new()));
        let whats: Vec<&str> = found.iter().map(|o| o.host.what.as_str()).collect();
        assert_eq!(whats, ["peer address 198.51.100.7/32 on tun0"]);
    }

    #[test]
    fn the_ranges_are_disjoint_and_the_service_range_is_clear_of_the_lan() {
        let all = all_ranges();
        for (i, (a, x)) in all.iter().enumerate() {
            for (b, y) in &all[i + 1..] {
                assert!(!cidrs_overlap(*x, *y), "{a} {x} overlaps {b} {y}");
            }
        }
        let testbed_block = net([198, 18, 0, 0], 15);
        assert!(testbed_block.contains(SERVICE_RANGE.network()));
        assert_eq!(SERVICE_RANGE.to_string(), "198.18.192.0/20");
    }

    #[test]
    fn garbage_is_an_error_not_a_pass() {
        assert!(parse_addresses("not json").is_err());
        assert!(parse_routes(r#"[{"dst":"nonsense"}]"#).is_err());
    }

    /// The machine this runs on (no root needed): whatever it is, the check must not fail to
    /// read it, and on these machines it passes.
    #[test]
    fn the_real_root_namespace_is_readable() {
        match check_root_namespace(&all_ranges()) {
            Ok(()) | Err(RootNetworkError::Overlaps(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
