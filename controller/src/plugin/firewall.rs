//! The allowlist as firewall rules a network team can paste: `nft -f` input and `iptables`
//! commands, one rule per gateway, each tagged with the gateway's name.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::allowlist::{AllowEntry, Allowlist};

/// Prefix of every rule comment, so the rules can be found and replaced later.
pub const COMMENT_PREFIX: &str = "egressgw ";
/// nftables comments are limited to 128 bytes; iptables' to 256.
const MAX_COMMENT: usize = 127;

/// Where the nftables rules go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftTarget {
    /// `inet`, `ip` or `ip6`.
    pub family: String,
    pub table: String,
    pub chain: String,
}

/// One gateway's sources and destinations of one address family.
struct FamilyRule<'a> {
    v6: bool,
    gateway: &'a str,
    sources: Vec<IpAddr>,
    destinations: Vec<IpNetwork>,
}

fn family_rules(entry: &AllowEntry) -> Vec<FamilyRule<'_>> {
    [false, true]
        .into_iter()
        .filter_map(|v6| {
            let sources: Vec<IpAddr> = entry
                .egress_ips
                .iter()
                .copied()
                .filter(|ip| ip.is_ipv6() == v6)
                .collect();
            let destinations: Vec<IpNetwork> = entry
                .destinations
                .iter()
                .copied()
                .filter(|d| d.is_ipv6() == v6)
                .collect();
            (!sources.is_empty() && !destinations.is_empty()).then_some(FamilyRule {
                v6,
                gateway: &entry.gateway,
                sources,
                destinations,
            })
        })
        .collect()
}

fn comment(gateway: &str) -> String {
    let clean: String = gateway
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-._".contains(*c))
        .collect();
    let mut c = format!("{COMMENT_PREFIX}{clean}");
    c.truncate(MAX_COMMENT);
    c
}

fn join<T: ToString>(xs: &[T], sep: &str) -> String {
    xs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

fn header(list: &Allowlist, format: &str, how: &str) -> String {
    let mut h = format!(
        "# egressgw allowlist ({format}): the egress IPs of each EgressGateway and the networks its pods\n\
         # reach through them. Every IP is listed whether or not a node hosts it now (failover moves\n\
         # IPs between nodes, never to other addresses). Regenerate with `kubectl egress allowlist`.\n\
         # {how}\n"
    );
    for s in &list.skipped {
        h.push_str(&format!("# skipped gateway {}: {}\n", s.gateway, s.reason));
    }
    h
}

/// `add rule` lines for `nft -f`, into an existing chain.
pub fn nftables(list: &Allowlist, target: &NftTarget) -> String {
    let how = format!(
        "Load with `nft -f FILE`; the chain {} {} {} must exist and be the one guarding these networks.",
        target.family, target.table, target.chain
    );
    let mut out = header(list, "nftables", &how);
    for entry in &list.entries {
        for r in family_rules(entry) {
            let proto = if r.v6 { "ip6" } else { "ip" };
            out.push_str(&format!(
                "add rule {} {} {} {proto} saddr {{ {} }} {proto} daddr {{ {} }} accept comment \"{}\"\n",
                target.family,
                target.table,
                target.chain,
                join(&r.sources, ", "),
                join(&r.destinations, ", "),
                comment(r.gateway),
            ));
        }
    }
    out
}

/// `iptables -A` (and `ip6tables -A`) commands, one per gateway and family.
pub fn iptables(list: &Allowlist, chain: &str) -> String {
    let how = format!(
        "Run as root, or put the part after the command name into an iptables-restore file; \
         chain {chain} must be the one guarding these networks."
    );
    let mut out = header(list, "iptables", &how);
    for entry in &list.entries {
        for r in family_rules(entry) {
            let (cmd, host) = if r.v6 {
                ("ip6tables", 128)
            } else {
                ("iptables", 32)
            };
            let sources: Vec<String> = r.sources.iter().map(|s| format!("{s}/{host}")).collect();
            out.push_str(&format!(
                "{cmd} -A {chain} -s {} -d {} -m comment --comment \"{}\" -j ACCEPT\n",
                sources.join(","),
                join(&r.destinations, ","),
                comment(r.gateway),
            ));
        }
    }
    out
}

impl NftTarget {
    /// From `--nft-table "inet filter"` and `--nft-chain forward`.
    pub fn parse(table: &str, chain: &str) -> Option<Self> {
        let mut words = table.split_whitespace();
        let (family, table) = (words.next()?, words.next()?);
        if words.next().is_some()
            || !["inet", "ip", "ip6", "bridge", "netdev", "arp"].contains(&family)
            || chain.is_empty()
        {
            return None;
        }
        Some(Self {
            family: family.into(),
            table: table.into(),
            chain: chain.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::allowlist::{allowlist, tests::gateway};

    fn list() -> Allowlist {
        allowlist(
            &[
                gateway(
                    "billing-to-mainframe",
                    1,
                    &["198.18.0.200", "198.18.0.201"],
                    &["203.0.113.0/24"],
                    &["203.0.113.128/25"],
                ),
                gateway(
                    "partner",
                    2,
                    &["198.18.0.210"],
                    &["198.51.100.0/24", "203.0.113.128/25"],
                    &[],
                ),
            ],
            None,
        )
    }

    #[test]
    fn nftables_rules_name_sets_and_gateway() {
        let t = NftTarget::parse("inet filter", "forward").unwrap();
        let out = nftables(&list(), &t);
        let rules: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rules,
            [
                "add rule inet filter forward ip saddr { 198.18.0.200, 198.18.0.201 } ip daddr { 203.0.113.0/25 } accept comment \"egressgw billing-to-mainframe\"",
                "add rule inet filter forward ip saddr { 198.18.0.210 } ip daddr { 198.51.100.0/24, 203.0.113.128/25 } accept comment \"egressgw partner\"",
            ]
        );
    }

    #[test]
    fn iptables_commands_use_host_prefixes_and_comma_lists() {
        let out = iptables(&list(), "FORWARD");
        let rules: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rules[0],
            "iptables -A FORWARD -s 198.18.0.200/32,198.18.0.201/32 -d 203.0.113.0/25 -m comment --comment \"egressgw billing-to-mainframe\" -j ACCEPT"
        );
        assert_eq!(rules.len(), 2);
    }

    #[test]
    fn skipped_gateways_are_told_in_comments() {
        let l = allowlist(
            &[gateway("bad", 1, &["nope"], &["203.0.113.0/24"], &[])],
            None,
        );
        assert!(iptables(&l, "FORWARD").contains("# skipped gateway bad: invalid spec"));
    }

    #[test]
    fn nft_targets_need_a_family_and_a_table() {
        assert_eq!(NftTarget::parse("ip fw", "in").unwrap().family, "ip");
        assert!(NftTarget::parse("filter", "forward").is_none());
        assert!(NftTarget::parse("foo filter", "forward").is_none());
        assert!(NftTarget::parse("inet filter x", "forward").is_none());
    }
}
