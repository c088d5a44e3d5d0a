//! What an apply changed, and the traffic counters of our rules.

use std::net::IpAddr;

use super::ownership::ForeignAddress;

/// What one apply (or cleanup) did to the kernel. All zero when the plan was already in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Messages in the nftables transaction (batch begin/end not counted); 0 = none sent.
    pub nft_messages: usize,
    /// Size of the transaction in bytes.
    pub nft_bytes: usize,
    /// Set elements added and removed (a range counts once; a flushed set counts as removed).
    pub elements_added: usize,
    pub elements_removed: usize,
    /// Rules added and removed.
    pub rules_added: usize,
    pub rules_removed: usize,
    /// Egress IPs added to / removed from interfaces.
    pub addresses_added: Vec<IpAddr>,
    /// Egress IPs the plan puts here that were not added because the address gate was closed
    /// ([`super::config::AddressGate`]); the next apply with the gate open adds them.
    pub addresses_held_back: Vec<IpAddr>,
    pub addresses_removed: Vec<IpAddr>,
    /// Gratuitous ARP frames sent or scheduled (the first round is sent before apply returns).
    pub garps_sent: usize,
    /// Policy rules and routes added, replaced or removed.
    pub routing_changes: usize,
    /// Of those, routes (the rest are policy rules).
    pub route_changes: usize,
    /// Conntrack entries deleted.
    pub conntrack_deleted: usize,
    /// IPv6 entries of the plan that this IPv4 dataplane skipped.
    pub ipv6_ignored: usize,
    /// Egress IPs the plan puts here that the node already holds without egressgw having
    /// added them: not hosted (their pods are blocked), and the address is left alone.
    pub foreign_addresses: Vec<ForeignAddress>,
}

/// What a drift repair put back, by kind of object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RepairedKind {
    Nft,
    Route,
    Rule,
    Address,
}

impl RepairedKind {
    /// The `kind` label of the repair metric.
    pub fn label(self) -> &'static str {
        match self {
            RepairedKind::Nft => "nft",
            RepairedKind::Route => "route",
            RepairedKind::Rule => "rule",
            RepairedKind::Address => "address",
        }
    }
}

impl ApplyReport {
    /// The kinds of object this apply changed (what a repair restored).
    pub fn changed_kinds(&self) -> Vec<RepairedKind> {
        let mut out = Vec::new();
        if self.nft_messages > 0 {
            out.push(RepairedKind::Nft);
        }
        if self.route_changes > 0 {
            out.push(RepairedKind::Route);
        }
        if self.routing_changes > self.route_changes {
            out.push(RepairedKind::Rule);
        }
        if !self.addresses_added.is_empty() || !self.addresses_removed.is_empty() {
            out.push(RepairedKind::Address);
        }
        out
    }

    /// Whether nothing in the kernel was changed.
    pub fn is_noop(&self) -> bool {
        self.nft_messages == 0
            && self.addresses_added.is_empty()
            && self.addresses_removed.is_empty()
            && self.garps_sent == 0
            && self.routing_changes == 0
            && self.conntrack_deleted == 0
    }
}

/// What a counter counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CounterKind {
    /// Packets and bytes of the gateway's pods leaving with `egress_ip` (forward path, the
    /// original direction).
    Snat { egress_ip: IpAddr },
    /// Connections SNATed to `egress_ip` (the nat rule sees each connection's first packet).
    SnatConnections { egress_ip: IpAddr },
    /// Packets and bytes of local pods steered to the node `next_hop`.
    Steer { next_hop: IpAddr },
    /// Packets and bytes dropped because the gateway has no egress IP (fail closed).
    Blocked,
    /// Packets of guarded pods the no-leak rule dropped (they would have left unSNATed).
    LeakDropped,
    /// Packets with a SNATed pod's source address that did not come from where that pod is
    /// (the anti-spoofing rules).
    SpoofDropped,
    /// Packets addressed to a hosted egress IP dropped by the guard (no gateway).
    Guard,
    /// Connections of steered pods given the identity SNAT (no gateway).
    SteeredConnections,
}

/// One counter of one of our rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCounter {
    /// The gateway the rule belongs to (`None` for node-wide rules).
    pub gateway: Option<String>,
    pub kind: CounterKind,
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_kinds_name_what_an_apply_touched() {
        assert!(ApplyReport::default().changed_kinds().is_empty());
        let r = ApplyReport {
            nft_messages: 3,
            routing_changes: 2,
            route_changes: 1,
            addresses_added: vec!["198.18.0.200".parse().unwrap()],
            ..ApplyReport::default()
        };
        assert_eq!(
            r.changed_kinds(),
            [
                RepairedKind::Nft,
                RepairedKind::Route,
                RepairedKind::Rule,
                RepairedKind::Address
            ]
        );
        let rule_only = ApplyReport {
            routing_changes: 1,
            ..ApplyReport::default()
        };
        assert_eq!(rule_only.changed_kinds(), [RepairedKind::Rule]);
    }
}
