//! Our nftables table as plain data: what the plan wants, or what was read from the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::config::{
    CHAIN_FWD, CHAIN_GUARD, CHAIN_NOLEAK, CHAIN_POST, CHAIN_PRE, CHAIN_SPOOF, PRIORITY_FILTER,
    PRIORITY_NOLEAK, PRIORITY_POST, PRIORITY_SPOOF, PRIORITY_STEER,
};
use super::names::{GatewayId, SetName};
use super::origins::Origin;

/// A half-open IPv4 interval `[start, end)`; `end` may be 2^32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    pub start: u32,
    pub end: u64,
}

impl IpRange {
    pub fn of(net: Ipv4Network) -> Self {
        Self {
            start: u32::from(net.network()),
            end: u64::from(u32::from(net.broadcast())) + 1,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip >= self.start && u64::from(ip) < self.end
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            Ipv4Addr::from(self.start),
            Ipv4Addr::from((self.end - 1) as u32)
        )
    }
}

/// Disjoint, non-adjacent ranges covering exactly the given networks (the kernel rejects
/// overlapping interval elements, so overlaps and neighbours are merged).
pub fn merge_ranges(nets: impl IntoIterator<Item = IpRange>) -> BTreeSet<IpRange> {
    let mut all: Vec<IpRange> = nets.into_iter().collect();
    all.sort();
    let mut out: Vec<IpRange> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(last) if u64::from(r.start) <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out.into_iter().collect()
}

/// Whether `ip` lies in any of `ranges`.
pub fn ranges_contain(ranges: &BTreeSet<IpRange>, ip: Ipv4Addr) -> bool {
    let key = IpRange {
        start: u32::from(ip),
        end: u64::MAX,
    };
    ranges
        .range(..=key)
        .next_back()
        .is_some_and(|r| r.contains(ip))
}

/// The elements of a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetContent {
    Addrs(BTreeSet<Ipv4Addr>),
    Ranges(BTreeSet<IpRange>),
    /// `pod . interface . MAC` keys (the `origins` set).
    Origins(BTreeSet<Origin>),
}

impl SetContent {
    pub fn len(&self) -> usize {
        match self {
            SetContent::Addrs(a) => a.len(),
            SetContent::Ranges(r) => r.len(),
            SetContent::Origins(o) => o.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_interval(&self) -> bool {
        matches!(self, SetContent::Ranges(_))
    }

    pub fn addrs(&self) -> Option<&BTreeSet<Ipv4Addr>> {
        match self {
            SetContent::Addrs(a) => Some(a),
            SetContent::Ranges(_) | SetContent::Origins(_) => None,
        }
    }

    pub fn origins(&self) -> Option<&BTreeSet<Origin>> {
        match self {
            SetContent::Origins(o) => Some(o),
            SetContent::Addrs(_) | SetContent::Ranges(_) => None,
        }
    }

    pub fn ranges(&self) -> Option<&BTreeSet<IpRange>> {
        match self {
            SetContent::Ranges(r) => Some(r),
            SetContent::Addrs(_) | SetContent::Origins(_) => None,
        }
    }
}

/// One named set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftSet {
    /// Userdata comment (the gateway name on `<id>_dst` sets).
    pub comment: Option<String>,
    pub content: SetContent,
}

/// Hook of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChainHook {
    Prerouting,
    Input,
    Forward,
    Postrouting,
}

/// Type of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChainKind {
    Filter,
    Nat,
}

/// A base chain (all ours have policy accept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    pub kind: ChainKind,
    pub hook: ChainHook,
    pub priority: i32,
}

/// Our six base chains.
pub fn our_chains() -> BTreeMap<String, ChainSpec> {
    [
        (
            CHAIN_PRE,
            ChainKind::Filter,
            ChainHook::Prerouting,
            PRIORITY_STEER,
        ),
        (
            CHAIN_GUARD,
            ChainKind::Filter,
            ChainHook::Input,
            PRIORITY_FILTER,
        ),
        (
            CHAIN_FWD,
            ChainKind::Filter,
            ChainHook::Forward,
            PRIORITY_FILTER,
        ),
        (
            CHAIN_SPOOF,
            ChainKind::Filter,
            ChainHook::Forward,
            PRIORITY_SPOOF,
        ),
        (
            CHAIN_POST,
            ChainKind::Nat,
            ChainHook::Postrouting,
            PRIORITY_POST,
        ),
        (
            CHAIN_NOLEAK,
            ChainKind::Filter,
            ChainHook::Postrouting,
            PRIORITY_NOLEAK,
        ),
    ]
    .into_iter()
    .map(|(n, kind, hook, priority)| {
        (
            n.to_string(),
            ChainSpec {
                kind,
                hook,
                priority,
            },
        )
    })
    .collect()
}

/// One of our rules. Its [`RuleSpec::key`] is stored as the rule's comment, so a rule read
/// back from the kernel is recognised exactly; the key encodes everything the rule contains.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleSpec {
    /// guard: `ip daddr @hosted counter drop`
    Guard,
    /// post: `meta mark & MASK == MARK counter snat to ip saddr` (identity SNAT of packets
    /// steered with one slot's exact mark, so the CNI masquerade does not rewrite them)
    MarkSnat { mark: u32, mask: u32 },
    /// The rules below that match pods start with `ct direction original`: replies of
    /// connections *into* a selected pod are never steered, SNATed or dropped.
    ///
    /// post: `ip saddr @<g>_snat_<E> ip daddr @<g>_dst ip daddr != @<g>_excl counter snat to E`
    Snat { gid: GatewayId, egress_ip: Ipv4Addr },
    /// fwd: the same match, counter only (bytes and packets SNATed to E)
    Account { gid: GatewayId, egress_ip: Ipv4Addr },
    /// pre: `ip saddr @<g>_via_<NH> ip daddr @<g>_dst ip daddr != @<g>_excl counter
    ///       meta mark set meta mark & ~MASK | MARK`
    Steer {
        gid: GatewayId,
        next_hop: Ipv4Addr,
        mark: u32,
        mask: u32,
    },
    /// fwd: `ip saddr @<g>_blocked ip daddr @<g>_dst ip daddr != @<g>_excl counter drop`
    Block { gid: GatewayId },
    /// spoof: a packet of a pod SNATed to E that arrived on an interface the
    /// route back to the pod does not use (a local pod's is its own veth; another node's
    /// pod's is the interface toward that node):
    /// `ip saddr @<g>_snat_<E> ip daddr @<g>_dst ip daddr != @<g>_excl
    ///  fib saddr . iif oif missing counter drop`
    SpoofRoute { gid: GatewayId, egress_ip: Ipv4Addr },
    /// spoof: a packet of a pod SNATed to E arriving on an interface the nodes
    /// are reached on, but not from that pod's node:
    /// `ip saddr @<g>_snat_<E> ip daddr @<g>_dst ip daddr != @<g>_excl iif @node_ifs
    ///  ip saddr . iif . ether saddr != @origins counter drop`
    SpoofNode { gid: GatewayId, egress_ip: Ipv4Addr },
    /// noleak: `ct direction original ct original ip saddr @<g>_guard ip daddr @<g>_dst
    ///          ip daddr != @<g>_excl meta mark & MASK != @marks ip saddr != @<g>_egress
    ///          counter drop`
    /// (after every NAT: a guarded pod's packet leaves SNATed to the gateway's egress IP,
    /// steered, or not at all)
    Leak { gid: GatewayId, mask: u32 },
    /// noleak: the same with `ct original ip saddr @remote_pods`: pods of other nodes this
    /// node has not heard of yet
    LeakRemote { gid: GatewayId, mask: u32 },
}

impl RuleSpec {
    pub fn chain(&self) -> &'static str {
        match self {
            RuleSpec::Guard => CHAIN_GUARD,
            RuleSpec::MarkSnat { .. } | RuleSpec::Snat { .. } => CHAIN_POST,
            RuleSpec::Account { .. } | RuleSpec::Block { .. } => CHAIN_FWD,
            RuleSpec::SpoofRoute { .. } | RuleSpec::SpoofNode { .. } => CHAIN_SPOOF,
            RuleSpec::Steer { .. } => CHAIN_PRE,
            RuleSpec::Leak { .. } | RuleSpec::LeakRemote { .. } => CHAIN_NOLEAK,
        }
    }

    pub fn gateway(&self) -> Option<&GatewayId> {
        match self {
            RuleSpec::Guard | RuleSpec::MarkSnat { .. } => None,
            RuleSpec::Snat { gid, .. }
            | RuleSpec::Account { gid, .. }
            | RuleSpec::Steer { gid, .. }
            | RuleSpec::Block { gid }
            | RuleSpec::SpoofRoute { gid, .. }
            | RuleSpec::SpoofNode { gid, .. }
            | RuleSpec::Leak { gid, .. }
            | RuleSpec::LeakRemote { gid, .. } => Some(gid),
        }
    }

    /// The set of pod (or egress) addresses the rule matches on.
    pub fn source_set(&self) -> SetName {
        match self {
            RuleSpec::Guard => SetName::Hosted,
            RuleSpec::MarkSnat { .. } => SetName::Hosted,
            RuleSpec::Snat { gid, egress_ip }
            | RuleSpec::Account { gid, egress_ip }
            | RuleSpec::SpoofRoute { gid, egress_ip }
            | RuleSpec::SpoofNode { gid, egress_ip } => SetName::Snat(gid.clone(), *egress_ip),
            RuleSpec::Steer { gid, next_hop, .. } => SetName::Via(gid.clone(), *next_hop),
            RuleSpec::Block { gid } => SetName::Blocked(gid.clone()),
            RuleSpec::Leak { gid, .. } => SetName::Guard(gid.clone()),
            RuleSpec::LeakRemote { .. } => SetName::RemotePods,
        }
    }

    /// The comment that identifies the rule in the kernel.
    /// The comment that identifies the rule in the kernel: what it is, and a hash of the
    /// expressions this release gives it (`… #1a2b3c4d`). A rule whose expressions differ (an
    /// older release's, or one edited with a new comment) does not parse back, counts as
    /// foreign, and is replaced in the same transaction.
    pub fn key(&self) -> String {
        format!("{} #{:08x}", self.base_key(), self.expr_hash())
    }

    /// A stable hash of the rule's expressions (FNV-1a over their description).
    fn expr_hash(&self) -> u32 {
        let text = format!("{:?}", super::nft_encode::rule_exprs(self));
        let mut h: u32 = 0x811c_9dc5;
        for b in text.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h
    }

    fn base_key(&self) -> String {
        match self {
            RuleSpec::Guard => "guard".into(),
            RuleSpec::MarkSnat { mark, mask } => format!("marksnat {mark:#010x}/{mask:#010x}"),
            RuleSpec::Snat { gid, egress_ip } => format!("snat {gid} {egress_ip}"),
            RuleSpec::Account { gid, egress_ip } => format!("acct {gid} {egress_ip}"),
            RuleSpec::Steer {
                gid,
                next_hop,
                mark,
                mask,
            } => format!("steer {gid} {next_hop} {mark:#010x}/{mask:#010x}"),
            RuleSpec::Block { gid } => format!("block {gid}"),
            RuleSpec::SpoofRoute { gid, egress_ip } => format!("spoof-route {gid} {egress_ip}"),
            RuleSpec::SpoofNode { gid, egress_ip } => format!("spoof-node {gid} {egress_ip}"),
            RuleSpec::Leak { gid, mask } => format!("noleak {gid} {mask:#010x}"),
            RuleSpec::LeakRemote { gid, mask } => format!("noleak-remote {gid} {mask:#010x}"),
        }
    }

    /// Parses a key written by [`RuleSpec::key`].
    pub fn parse_key(key: &str) -> Option<Self> {
        let hex = |s: &str| u32::from_str_radix(s.strip_prefix("0x")?, 16).ok();
        let gid = |s: &str| match format!("{s}_dst").parse::<SetName>() {
            Ok(SetName::Dst(g)) => Some(g),
            _ => None,
        };
        let (base, _hash) = key.rsplit_once(" #")?;
        let words: Vec<&str> = base.split(' ').collect();
        let spec = match words.as_slice() {
            ["guard"] => RuleSpec::Guard,
            ["marksnat", mm] => {
                let (mark, mask) = mm.split_once('/')?;
                RuleSpec::MarkSnat {
                    mark: hex(mark)?,
                    mask: hex(mask)?,
                }
            }
            ["snat", g, ip] => RuleSpec::Snat {
                gid: gid(g)?,
                egress_ip: ip.parse().ok()?,
            },
            ["acct", g, ip] => RuleSpec::Account {
                gid: gid(g)?,
                egress_ip: ip.parse().ok()?,
            },
            ["steer", g, nh, mm] => {
                let (mark, mask) = mm.split_once('/')?;
                RuleSpec::Steer {
                    gid: gid(g)?,
                    next_hop: nh.parse().ok()?,
                    mark: hex(mark)?,
                    mask: hex(mask)?,
                }
            }
            ["block", g] => RuleSpec::Block { gid: gid(g)? },
            ["spoof-route", g, ip] => RuleSpec::SpoofRoute {
                gid: gid(g)?,
                egress_ip: ip.parse().ok()?,
            },
            ["spoof-node", g, ip] => RuleSpec::SpoofNode {
                gid: gid(g)?,
                egress_ip: ip.parse().ok()?,
            },
            ["noleak", g, mask] => RuleSpec::Leak {
                gid: gid(g)?,
                mask: hex(mask)?,
            },
            ["noleak-remote", g, mask] => RuleSpec::LeakRemote {
                gid: gid(g)?,
                mask: hex(mask)?,
            },
            _ => return None,
        };
        (spec.key() == key).then_some(spec)
    }
}

/// Where a rule sits in the kernel, and its counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleHandle {
    pub handle: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// A rule in our table that we do not recognise (no or unknown comment, or a duplicate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignRule {
    pub chain: String,
    pub handle: u64,
}

/// The content of our table. Desired states carry no handles; observed ones do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NftState {
    /// `NFTA_TABLE_FLAGS` (see [`super::config::OWNED_TABLE_FLAGS`]).
    pub flags: u32,
    pub chains: BTreeMap<String, ChainSpec>,
    pub sets: BTreeMap<String, NftSet>,
    pub rules: BTreeMap<RuleSpec, Option<RuleHandle>>,
    pub foreign_rules: Vec<ForeignRule>,
}

impl NftState {
    /// Number of set elements (ranges count once).
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.content.len()).sum()
    }

    /// The gateway name recorded on a gateway's `_dst` set.
    pub fn gateway_name(&self, gid: &GatewayId) -> Option<&str> {
        self.sets
            .get(&SetName::Dst(gid.clone()).to_string())?
            .comment
            .as_deref()
    }

    /// The addresses of a hash set, if it exists.
    pub fn addrs(&self, set: &SetName) -> Option<&BTreeSet<Ipv4Addr>> {
        self.sets.get(&set.to_string())?.content.addrs()
    }

    /// The ranges of an interval set, if it exists.
    pub fn ranges(&self, set: &SetName) -> Option<&BTreeSet<IpRange>> {
        self.sets.get(&set.to_string())?.content.ranges()
    }

    /// Egress IPs recorded as hosted (the `hosted` set).
    pub fn hosted(&self) -> BTreeSet<Ipv4Addr> {
        self.addrs(&SetName::Hosted).cloned().unwrap_or_default()
    }

    /// The pods SNATed here, per gateway name and egress IP (the `<gid>_snat_<ip>` sets of
    /// gateways whose `_dst` set names them): what a predecessor agent programmed.
    pub fn snat_members(&self) -> BTreeMap<String, BTreeMap<Ipv4Addr, BTreeSet<Ipv4Addr>>> {
        let mut out: BTreeMap<String, BTreeMap<Ipv4Addr, BTreeSet<Ipv4Addr>>> = BTreeMap::new();
        for (name, set) in &self.sets {
            let Ok(SetName::Snat(gid, egress)) = name.parse::<SetName>() else {
                continue;
            };
            let (Some(gateway), Some(pods)) = (self.gateway_name(&gid), set.content.addrs()) else {
                continue;
            };
            out.entry(gateway.to_string())
                .or_default()
                .insert(egress, pods.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(net: &str) -> IpRange {
        IpRange::of(net.parse().unwrap())
    }

    #[test]
    fn ranges_merge_overlaps_and_neighbours() {
        let m = merge_ranges([
            r("10.1.0.0/16"),
            r("10.0.0.0/8"),
            r("11.0.0.0/8"),
            r("198.18.64.0/25"),
            r("198.18.64.200/32"),
        ]);
        let v: Vec<String> = m.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            v,
            [
                "10.0.0.0-11.255.255.255",
                "198.18.64.0-198.18.64.127",
                "198.18.64.200-198.18.64.200"
            ]
        );
        let all = merge_ranges([r("0.0.0.0/0")]);
        assert_eq!(all.iter().next().unwrap().end, 1 << 32);
        assert!(ranges_contain(&m, "10.200.1.1".parse().unwrap()));
        assert!(ranges_contain(&m, "198.18.64.200".parse().unwrap()));
        assert!(!ranges_contain(&m, "198.18.64.201".parse().unwrap()));
        assert!(!ranges_contain(&m, "9.255.255.255".parse().unwrap()));
        assert!(ranges_contain(&all, "255.255.255.255".parse().unwrap()));
    }

    #[test]
    fn rule_keys_round_trip_and_reject_garbage() {
        let gid = GatewayId::derive("gw", 0);
        let ip: Ipv4Addr = "198.18.0.200".parse().unwrap();
        for spec in [
            RuleSpec::Guard,
            RuleSpec::MarkSnat {
                mark: 0x0010_0000,
                mask: 0x0ff0_0000,
            },
            RuleSpec::Snat {
                gid: gid.clone(),
                egress_ip: ip,
            },
            RuleSpec::Account {
                gid: gid.clone(),
                egress_ip: ip,
            },
            RuleSpec::Steer {
                gid: gid.clone(),
                next_hop: ip,
                mark: 0x0010_0000,
                mask: 0x0ff0_0000,
            },
            RuleSpec::Block { gid: gid.clone() },
            RuleSpec::SpoofRoute {
                gid: gid.clone(),
                egress_ip: ip,
            },
            RuleSpec::SpoofNode {
                gid: gid.clone(),
                egress_ip: ip,
            },
            RuleSpec::Leak {
                gid: gid.clone(),
                mask: 0x0ff0_0000,
            },
            RuleSpec::LeakRemote {
                gid: gid.clone(),
                mask: 0x0ff0_0000,
            },
        ] {
            assert!(spec.key().len() < 128);
            assert_eq!(RuleSpec::parse_key(&spec.key()), Some(spec));
        }
        for bad in [
            "",
            "guard ",
            "snat x 1.2.3.4",
            "marksnat 12",
            "steer g 1.2.3.4 0x1",
            "guard",
            "guard #00000000",
        ] {
            assert_eq!(RuleSpec::parse_key(bad), None, "{bad}");
        }
        // an older release's rule (same name, other expressions): not ours any more
        let old = format!("snat {gid} {ip}");
        assert_eq!(RuleSpec::parse_key(&old), None);
        let spec = RuleSpec::Guard;
        let tampered = format!("guard #{:08x}", spec.expr_hash() ^ 1);
        assert_eq!(RuleSpec::parse_key(&tampered), None);
    }
}
