//! The simulated cluster: a bridge LAN 198.18.0.0/24 with a firewall/router at .1, nodes at
//! .11, .12, … each with pods in 198.19.N.0/24 behind a `cni0` bridge (host-gw routes between
//! nodes, a CNI-like masquerade on every node), and legacy servers behind the firewall.
//!
//! Addresses: only the ranges of [`super::ranges`] (198.18.0.0/15, 203.0.113.0/24,
//! 198.51.100.0/24) and loopback. [`TestbedBuilder::build`] refuses to run when one of them is
//! an address or route of the root network namespace.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::client::{ConnectError, LongLived, connect_once};
use super::netns::{Netns, unique_prefix};
use super::ranges::{
    LEGACY_NETWORK, NODE_LAN, OTHER_NETWORK, POD_NETWORK, TESTBED_RANGES, check_root_namespace,
};
use super::server::LegacyServer;

/// TCP port of every legacy server.
pub const SERVER_PORT: u16 = 8080;
/// The protected legacy server: the firewall lets only allowlisted sources reach it.
pub const PROTECTED_SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The networks the firewall protects with the allowlist.
pub const PROTECTED_NET: &str = "203.0.113.0/25";
/// A legacy server in 203.0.113.0/24 outside the protected half (reachable by anyone).
pub const OPEN_SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
/// A server on the unrelated network 198.51.100.0/24 (reachable by anyone).
pub const OTHER_SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The firewall/router on the node LAN.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The node LAN interface name inside every node.
pub const NODE_IFACE: &str = "eth0";

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Builds a [`Testbed`].
#[derive(Clone, Debug)]
pub struct TestbedBuilder {
    nodes: usize,
    pods_per_node: usize,
    allowlist: Vec<Ipv4Addr>,
    rp_filter: u8,
}

impl Default for TestbedBuilder {
    fn default() -> Self {
        Self {
            nodes: 3,
            pods_per_node: 2,
            allowlist: Vec::new(),
            rp_filter: 1,
        }
    }
}

impl TestbedBuilder {
    pub fn nodes(mut self, n: usize) -> Self {
        assert!((1..=200).contains(&n), "1..=200 nodes");
        self.nodes = n;
        self
    }

    pub fn pods_per_node(mut self, n: usize) -> Self {
        assert!(n <= 200, "at most 200 pods per node");
        self.pods_per_node = n;
        self
    }

    /// Lets `ip` through the firewall to the protected servers.
    pub fn allow(mut self, ip: Ipv4Addr) -> Self {
        self.allowlist.push(ip);
        self
    }

    /// rp_filter for every node and the firewall (default 1, strict).
    pub fn rp_filter(mut self, value: u8) -> Self {
        self.rp_filter = value;
        self
    }

    /// Builds the namespaces, links and servers. Fails first, creating nothing, when a testbed
    /// range overlaps an address or route of the root network namespace.
    pub fn build(self) -> Result<Testbed> {
        check_root_namespace(&TESTBED_RANGES)?;
        Testbed::build(self)
    }
}

/// A pod: a namespace behind its node's `cni0`.
#[derive(Debug)]
pub struct Pod {
    ns: Netns,
    ip: Ipv4Addr,
    node: usize,
}

impl Pod {
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Index of the node the pod runs on.
    pub fn node(&self) -> usize {
        self.node
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Connects to `dst`; the source address the server saw.
    pub fn connect(&self, dst: Ipv4Addr) -> Result<Result<Ipv4Addr, ConnectError>> {
        Ok(connect_once(
            self.ns.path(),
            SocketAddrV4::new(dst, SERVER_PORT),
            CONNECT_TIMEOUT,
        )?
        .map(|a| *a.ip()))
    }

    /// A long-lived connection to `dst` sending a line every `interval`.
    pub fn long_lived(&self, dst: Ipv4Addr, interval: Duration) -> Result<LongLived> {
        LongLived::start(
            self.ns.path(),
            SocketAddrV4::new(dst, SERVER_PORT),
            interval,
        )
    }
}

/// A node namespace.
#[derive(Debug)]
pub struct Node {
    ns: Netns,
    name: String,
    index: usize,
    lan_port: String,
}

impl Node {
    /// `node-<index>` (1-based, like the address).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 198.18.0.(10 + index).
    pub fn ip(&self) -> Ipv4Addr {
        node_ip(self.index)
    }

    /// 198.19.<index>.0/24.
    pub fn pod_cidr(&self) -> String {
        format!("{}/24", pod_subnet_ip(self.index, 0))
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Path for `--netns` / `DataplaneConfig::in_netns`.
    pub fn netns_path(&self) -> PathBuf {
        self.ns.path()
    }
}

/// 198.18.0.(10 + index), on [`NODE_LAN`].
fn node_ip(index: usize) -> Ipv4Addr {
    nth(NODE_LAN, 10 + index as u32)
}

/// 198.19.<node>.<host>, in node `node`'s /24 of [`POD_NETWORK`].
fn pod_subnet_ip(node: usize, host: u8) -> Ipv4Addr {
    nth(POD_NETWORK, ((node as u32) << 8) | host as u32)
}

/// The `n`th address of `net`.
fn nth(net: ipnetwork::Ipv4Network, n: u32) -> Ipv4Addr {
    let ip = Ipv4Addr::from(u32::from(net.network()) + n);
    assert!(net.contains(ip), "{ip} is outside {net}");
    ip
}

/// The whole simulated cluster. Every namespace is deleted on drop (also on panic).
pub struct Testbed {
    // servers first: they stop before their namespaces go
    servers: Vec<LegacyServer>,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    fw: Netns,
    legacy: Netns,
    other: Netns,
    lan: Netns,
    prefix: String,
}

impl Testbed {
    pub fn builder() -> TestbedBuilder {
        TestbedBuilder::default()
    }

    fn build(b: TestbedBuilder) -> Result<Self> {
        let prefix = unique_prefix();
        let lan = Netns::create(&format!("{prefix}-lan"))?;
        let fw = Netns::create(&format!("{prefix}-fw"))?;
        let legacy = Netns::create(&format!("{prefix}-legacy"))?;
        let other = Netns::create(&format!("{prefix}-other"))?;
        let mut tb = Testbed {
            servers: Vec::new(),
            pods: Vec::new(),
            nodes: Vec::new(),
            fw,
            legacy,
            other,
            lan,
            prefix,
        };
        tb.build_lan()?;
        tb.build_firewall(&b)?;
        for i in 1..=b.nodes {
            tb.build_node(i, &b)?;
        }
        for i in 1..=b.nodes {
            for k in 0..b.pods_per_node {
                tb.add_pod(i, k)?;
            }
        }
        tb.servers.push(LegacyServer::start(
            tb.legacy.path(),
            SocketAddrV4::new(PROTECTED_SERVER, SERVER_PORT),
        )?);
        tb.servers.push(LegacyServer::start(
            tb.legacy.path(),
            SocketAddrV4::new(OPEN_SERVER, SERVER_PORT),
        )?);
        tb.servers.push(LegacyServer::start(
            tb.other.path(),
            SocketAddrV4::new(OTHER_SERVER, SERVER_PORT),
        )?);
        Ok(tb)
    }

    fn build_lan(&mut self) -> Result<()> {
        self.lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        self.lan.ip(&["link", "set", "br0", "up"])?;
        self.lan.sysctl("net.ipv4.ip_forward", "0")?;
        self.lan.set_rp_filter(0)?;
        Ok(())
    }

    /// A veth from the LAN bridge (port `port`) to `eth0` in `ns`.
    fn plug_into_lan(&self, port: &str, ns: &Netns) -> Result<()> {
        self.lan.ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            NODE_IFACE,
            "netns",
            ns.name(),
        ])?;
        self.lan.ip(&["link", "set", port, "master", "br0", "up"])?;
        ns.ip(&["link", "set", NODE_IFACE, "up"])?;
        Ok(())
    }

    fn build_firewall(&mut self, b: &TestbedBuilder) -> Result<()> {
        self.plug_into_lan("fw", &self.fw)?;
        self.fw
            .ip(&["addr", "add", &format!("{ROUTER}/24"), "dev", NODE_IFACE])?;
        for (dev, ns, net, addrs) in [
            (
                "eth1",
                &self.legacy,
                format!("{}/{}", nth(LEGACY_NETWORK, 1), LEGACY_NETWORK.prefix()),
                vec![PROTECTED_SERVER, OPEN_SERVER],
            ),
            (
                "eth2",
                &self.other,
                format!("{}/{}", nth(OTHER_NETWORK, 1), OTHER_NETWORK.prefix()),
                vec![OTHER_SERVER],
            ),
        ] {
            self.fw.ip(&[
                "link",
                "add",
                dev,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            self.fw.ip(&["addr", "add", &net, "dev", dev])?;
            self.fw.ip(&["link", "set", dev, "up"])?;
            for a in addrs {
                ns.ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
            }
            ns.ip(&["link", "set", "eth0", "up"])?;
            let gw = net.split('/').next().expect("cidr");
            ns.ip(&["route", "add", "default", "via", gw])?;
            ns.sysctl("net.ipv4.ip_forward", "0")?;
            ns.set_rp_filter(1)?;
        }
        self.fw.sysctl("net.ipv4.ip_forward", "1")?;
        self.fw.set_rp_filter(b.rp_filter)?;
        let allow: Vec<String> = b.allowlist.iter().map(|ip| ip.to_string()).collect();
        let elements = if allow.is_empty() {
            String::new()
        } else {
            format!("elements = {{ {} }}", allow.join(", "))
        };
        self.fw.nft(&format!(
            "table inet fw {{
  set allowed {{ type ipv4_addr; {elements} }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    ip daddr {PROTECTED_NET} ip saddr @allowed counter accept
    ip daddr {PROTECTED_NET} meta l4proto tcp counter reject with tcp reset
    ip daddr {PROTECTED_NET} counter drop
  }}
}}"
        ))?;
        Ok(())
    }

    fn build_node(&mut self, i: usize, b: &TestbedBuilder) -> Result<()> {
        let ns = Netns::create(&format!("{}-n{i}", self.prefix))?;
        let port = format!("n{i}");
        self.plug_into_lan(&port, &ns)?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", node_ip(i)),
            "dev",
            NODE_IFACE,
        ])?;
        ns.ip(&["route", "add", "default", "via", &ROUTER.to_string()])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", pod_subnet_ip(i, 1)),
            "dev",
            "cni0",
        ])?;
        ns.ip(&["link", "set", "cni0", "up"])?;
        // host-gw routes to the other nodes' pods
        for j in (1..=b.nodes).filter(|j| *j != i) {
            ns.ip(&[
                "route",
                "add",
                &format!("{}/24", pod_subnet_ip(j, 0)),
                "via",
                &node_ip(j).to_string(),
                "dev",
                NODE_IFACE,
            ])?;
        }
        // what a CNI does: pod traffic leaving the pod network is masqueraded to the node
        ns.nft(&format!(
            "table ip cni {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {POD_NETWORK} ip daddr != {POD_NETWORK} counter masquerade
  }}
}}"
        ))?;
        ns.set_rp_filter(b.rp_filter)?;
        self.nodes.push(Node {
            ns,
            name: format!("node-{i}"),
            index: i,
            lan_port: port,
        });
        Ok(())
    }

    fn add_pod(&mut self, node: usize, k: usize) -> Result<()> {
        let ip = pod_subnet_ip(node, 10 + k as u8);
        let ns = Netns::create(&format!("{}-n{node}p{k}", self.prefix))?;
        let n = &self.nodes[node - 1];
        let port = format!("vp{k}");
        n.ns.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        n.ns.ip(&["link", "set", &port, "master", "cni0", "up"])?;
        n.ns.exec(
            "sh",
            &[
                "-c",
                &format!("echo {} > /proc/sys/net/ipv4/conf/{port}/rp_filter", 1),
            ],
        )?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &pod_subnet_ip(node, 1).to_string(),
        ])?;
        ns.sysctl("net.ipv4.ip_forward", "0")?;
        ns.set_rp_filter(1)?;
        self.pods.push(Pod { ns, ip, node });
        Ok(())
    }

    /// A host on the node LAN that is no node: a namespace whose `eth0` is plugged into the
    /// LAN bridge with `ip`/24 (pick one no node uses). Deleted when dropped.
    pub fn lan_host(&self, name: &str, ip: Ipv4Addr) -> Result<Netns> {
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        self.plug_into_lan(&format!("h-{name}"), &ns)?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", NODE_IFACE])?;
        ns.sysctl("net.ipv4.ip_forward", "0")?;
        ns.set_rp_filter(0)?;
        Ok(ns)
    }

    /// Node by 1-based index (node-1 is 198.18.0.11).
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index - 1]
    }

    /// The index (from 1) of node `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes()
            .iter()
            .position(|n| n.name() == name)
            .map(|i| i + 1)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Pod `k` (0-based) of node `node` (1-based): 198.19.<node>.<10 + k>.
    pub fn pod(&self, node: usize, k: usize) -> &Pod {
        self.pods
            .iter()
            .filter(|p| p.node == node)
            .nth(k)
            .expect("no such pod")
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn firewall(&self) -> &Netns {
        &self.fw
    }

    /// The namespace of the legacy servers (203.0.113.0/24), e.g. to open connections from
    /// the legacy network into the cluster.
    pub fn legacy(&self) -> &Netns {
        &self.legacy
    }

    /// The namespace of the second, unrelated network (198.51.100.0/24).
    pub fn other(&self) -> &Netns {
        &self.other
    }

    /// Routes every node's pod range 198.19.N.0/24 on the firewall via node N, as a routed
    /// (BGP-announcing or host-gw) network does: the legacy networks can then open
    /// connections to pod IPs. Idempotent.
    pub fn route_pod_cidrs_from_firewall(&self) -> Result<()> {
        for n in &self.nodes {
            self.fw.ip(&[
                "route",
                "replace",
                &n.pod_cidr(),
                "via",
                &n.ip().to_string(),
                "dev",
                NODE_IFACE,
            ])?;
        }
        Ok(())
    }

    /// Lets `ip` through the firewall to the protected servers.
    pub fn allow(&self, ip: Ipv4Addr) -> Result<()> {
        self.fw
            .exec(
                "nft",
                &[
                    "add",
                    "element",
                    "inet",
                    "fw",
                    "allowed",
                    &format!("{{ {ip} }}"),
                ],
            )
            .map(drop)
    }

    /// Source addresses the server at `ip` accepted so far.
    pub fn server_peers(&self, ip: Ipv4Addr) -> Vec<SocketAddrV4> {
        self.servers
            .iter()
            .filter(|s| *s.addr().ip() == ip)
            .flat_map(|s| s.peers())
            .filter_map(|p| match p {
                std::net::SocketAddr::V4(v) => Some(v),
                std::net::SocketAddr::V6(_) => None,
            })
            .collect()
    }

    /// The node dies: its LAN link goes down (both ends).
    pub fn kill_node(&self, index: usize) -> Result<()> {
        let n = self.node(index);
        self.lan.ip(&["link", "set", &n.lan_port, "down"])?;
        n.ns.ip(&["link", "set", NODE_IFACE, "down"])?;
        Ok(())
    }

    /// Brings a killed node back (link up, routes the kernel dropped restored).
    pub fn revive_node(&self, index: usize) -> Result<()> {
        let n = self.node(index);
        self.lan.ip(&["link", "set", &n.lan_port, "up"])?;
        n.ns.ip(&["link", "set", NODE_IFACE, "up"])?;
        n.ns.ip(&["route", "replace", "default", "via", &ROUTER.to_string()])?;
        for m in &self.nodes {
            if m.index != index {
                n.ns.ip(&[
                    "route",
                    "replace",
                    &m.pod_cidr(),
                    "via",
                    &m.ip().to_string(),
                    "dev",
                    NODE_IFACE,
                ])?;
            }
        }
        Ok(())
    }

    /// Forgets the firewall's ARP entry for `ip` (as if its timers had run out).
    pub fn firewall_forget(&self, ip: Ipv4Addr) -> Result<()> {
        match self
            .fw
            .ip(&["neigh", "del", &ip.to_string(), "dev", NODE_IFACE])
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("No such file") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The names of every namespace of this testbed (for leak checks).
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v: Vec<String> = [&self.lan, &self.fw, &self.legacy, &self.other]
            .iter()
            .map(|n| n.name().to_string())
            .collect();
        v.extend(self.nodes.iter().map(|n| n.ns.name().to_string()));
        v.extend(self.pods.iter().map(|p| p.ns.name().to_string()));
        v
    }

    /// Waits until `check` holds (polling), failing with `what` after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if check().with_context(|| format!("waiting for {what}"))? {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.servers.clear();
        self.pods.clear();
        self.nodes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::ranges::SERVICE_RANGE;
    use super::*;

    #[test]
    fn every_fixed_address_is_in_its_range() {
        assert!(NODE_LAN.contains(ROUTER));
        assert_eq!(node_ip(1), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(pod_subnet_ip(3, 10), Ipv4Addr::new(198, 19, 3, 10));
        assert!(LEGACY_NETWORK.contains(PROTECTED_SERVER));
        assert!(LEGACY_NETWORK.contains(OPEN_SERVER));
        assert!(OTHER_NETWORK.contains(OTHER_SERVER));
        let protected: ipnetwork::Ipv4Network = PROTECTED_NET.parse().unwrap();
        assert!(protected.contains(PROTECTED_SERVER) && !protected.contains(OPEN_SERVER));
        // The egress IPs 198.18.0.200–250 are on the LAN, and no node or pod is in the
        // Service range.
        assert!(NODE_LAN.contains(Ipv4Addr::new(198, 18, 0, 250)));
        assert!(!SERVICE_RANGE.contains(node_ip(200)));
    }
}
