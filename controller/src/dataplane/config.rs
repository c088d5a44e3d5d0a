//! Names, numbers and knobs of the node dataplane: everything egressgw owns in the kernel.

use std::path::PathBuf;
use std::time::Duration;

/// The nftables table (family `ip`) egressgw owns exclusively.
pub const TABLE: &str = "egressgw";

/// Prerouting chain (filter, priority `dstnat + 10`) that marks steered pod traffic. It runs
/// after kube-proxy's DNAT (nftables and iptables modes), so it judges the real destination:
/// a Service whose endpoints lie in a gateway's destinations is steered like the endpoints.
pub const CHAIN_PRE: &str = "pre";
/// Postrouting chain (nat, priority `srcnat - 10`) with the SNAT rules. It binds before a CNI
/// masquerade at `srcnat`: the first NAT binding of a connection wins.
pub const CHAIN_POST: &str = "post";
/// Input chain (filter) dropping packets addressed to hosted egress IPs, so the node's own TCP
/// stack never answers (RST) replies of flows it has no conntrack entry for yet.
pub const CHAIN_GUARD: &str = "guard";
/// Forward chain (filter): drops traffic of blocked pods, counts SNATed traffic.
pub const CHAIN_FWD: &str = "fwd";
/// Forward chain (filter, priority `filter - 10`, before `fwd`'s counters and before any NAT
/// binding): anti-spoofing on gateway nodes. A packet of a pod SNATed here that did not come
/// from where that pod is (its own veth, or its node) is dropped and counted.
pub const CHAIN_SPOOF: &str = "spoof";

/// Postrouting chain (filter, priority `srcnat + 10`): the no-leak guard. It runs after every
/// NAT binding (ours and the CNI's masquerade), so it judges what really leaves: an original-
/// direction packet of a pod a gateway selects, to that gateway's destinations, that is neither
/// SNATed to one of the gateway's egress IPs nor marked for steering, is dropped.
pub const CHAIN_NOLEAK: &str = "noleak";

/// `NF_IP_PRI_MANGLE`.
pub const PRIORITY_MANGLE: i32 = -150;
/// `NF_IP_PRI_NAT_DST` (`dstnat`): kube-proxy's DNAT.
pub const PRIORITY_DSTNAT: i32 = -100;
/// Our prerouting (steering) priority: `dstnat + 10`, after the DNAT of Services.
pub const PRIORITY_STEER: i32 = PRIORITY_DSTNAT + 10;
/// `NF_IP_PRI_NAT_SRC` (`srcnat`).
pub const PRIORITY_SRCNAT: i32 = 100;
/// Our postrouting priority: `srcnat - 10`.
pub const PRIORITY_POST: i32 = PRIORITY_SRCNAT - 10;
/// Our no-leak guard's priority: after every source NAT at `srcnat`.
pub const PRIORITY_NOLEAK: i32 = PRIORITY_SRCNAT + 10;
/// `NF_IP_PRI_FILTER`.
pub const PRIORITY_FILTER: i32 = 0;
/// The anti-spoofing chain's priority: just before our (and the usual) filter chains.
pub const PRIORITY_SPOOF: i32 = PRIORITY_FILTER - 10;

/// `NFT_TABLE_F_OWNER`: only the netlink socket that owns the table may change it; `nft
/// delete table`, `nft flush ruleset` (which skips it) and every other writer get `EPERM`.
pub const TABLE_FLAG_OWNER: u32 = 0x2;
/// `NFT_TABLE_F_PERSIST` (Linux ≥ 6.9): the table outlives its owner's socket (an agent
/// restart), unowned ("orphaned") until the next agent adopts it.
pub const TABLE_FLAG_PERSIST: u32 = 0x4;
/// The flags of a table we own.
pub const OWNED_TABLE_FLAGS: u32 = TABLE_FLAG_OWNER | TABLE_FLAG_PERSIST;

/// Set of the egress IPs this node hosts; also the record of which addresses are ours.
pub const SET_HOSTED: &str = "hosted";
/// Interval set of the other nodes' pod ranges (guarded on nodes that host or may host).
pub const SET_REMOTE_PODS: &str = "remote_pods";
/// Set of the mark values (each slot's, within the mark mask) this node steers with.
pub const SET_MARKS: &str = "marks";
/// Set of `pod . interface . MAC`: where each SNATed pod of another node must come from
/// (the interface toward its node and the node's MAC address).
pub const SET_ORIGINS: &str = "origins";
/// Set of the interfaces (indexes) the pods of other nodes arrive on.
pub const SET_NODE_IFS: &str = "node_ifs";

/// Default packet-mark field that carries the next-hop slot of steered packets (255 slots).
/// Avoids kube-proxy (0x4000, 0x8000), Cilium (0x0f00, 0xf000) and flannel bits.
pub const DEFAULT_MARK_MASK: u32 = 0x0ff0_0000;
/// Default base of our routing table ids: slot `s` uses table `base + s`.
pub const DEFAULT_TABLE_BASE: u32 = 0x4567_0000;
/// Default priority of our `ip rule`s (before `main` at 32766).
pub const DEFAULT_RULE_PRIORITY: u32 = 1500;
/// `IFA_PROTO` value put on the egress IP addresses we add (informational; ownership is
/// decided by the [`SET_HOSTED`] record).
pub const ADDRESS_PROTO: u8 = 0xe9;
/// `RTPROT_*` value of the routes and rules we add.
pub const ROUTE_PROTO: u8 = 0xe9;
/// `NDA_PROTOCOL` of the neighbour entries we add (kernel-managed entries for the nodes
/// whose pods this node SNATs), so they are told apart from the kernel's own.
pub const NEIGHBOUR_PROTO: u8 = 0xe9;
/// Metric of the `blackhole default` route under the route via the next hop in every
/// steering table (the highest there is: it only ever wins when nothing else is left).
pub const FAIL_CLOSED_METRIC: u32 = u32::MAX;
/// How long an apply waits for the nodes it just asked the kernel to resolve (a node on the
/// LAN answers within a millisecond); one that has not answered by then is picked up by the
/// drift monitor when its entry resolves, and its pods are not SNATed until then.
pub const NEIGHBOUR_RESOLVE_WAIT: Duration = Duration::from_millis(200);
/// Pause between two reads of the neighbour table while waiting.
pub const NEIGHBOUR_RESOLVE_POLL: Duration = Duration::from_millis(2);
/// Gratuitous ARPs sent per added address.
pub const DEFAULT_GARP_COUNT: u32 = 3;
/// Pause between two gratuitous ARP rounds.
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_millis(100);

/// How the node dataplane is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Network namespace to work in (e.g. `/run/netns/node-a`); `None` = the caller's.
    pub netns: Option<PathBuf>,
    /// Mark field for next-hop slots: contiguous bits, not used by the CNI.
    pub mark_mask: u32,
    /// Routing table of slot `s` is `table_base + s`.
    pub table_base: u32,
    /// Priority of our policy-routing rules.
    pub rule_priority: u32,
    /// Gratuitous ARPs per added address, and the pause between them.
    pub garp_count: u32,
    pub garp_interval: Duration,
    /// `valid_lft` of egress IPs in seconds; the agent refreshes it after each lease renewal,
    /// so the kernel itself removes the IPs of an agent that died (fencing). `None`: forever.
    pub address_lifetime_secs: Option<u32>,
    /// Create our table owned by the engine's socket and persistent ([`OWNED_TABLE_FLAGS`]),
    /// so nobody else can delete or change it; kernels without `NFT_TABLE_F_PERSIST` (< 6.9)
    /// get an unowned table (drift is then repaired, not prevented).
    pub own_table: bool,
    /// When set, an egress IP is *added* (which starts a fresh kernel lifetime) only while
    /// the gate is open, checked right before the netlink call; addresses already present
    /// are kept either way. The agent opens it after each renewal for the window in which a
    /// new lifetime still ends before the controller could move the IP (see agent::fence).
    pub address_gate: Option<AddressGate>,
}

/// Until when adding an egress IP is allowed (shared by the agent, which opens it, and the
/// dataplane thread, which checks it). Compared by identity.
#[derive(Clone, Debug, Default)]
pub struct AddressGate(std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>);

impl AddressGate {
    /// Allow adds until `until` (never shortens a later permission).
    pub fn open_until(&self, until: std::time::Instant) {
        let mut g = self.0.lock().expect("address gate lock");
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
        }
    }

    /// Whether adding is allowed at `now`.
    pub fn is_open(&self, now: std::time::Instant) -> bool {
        self.0
            .lock()
            .expect("address gate lock")
            .is_some_and(|t| now <= t)
    }
}

impl PartialEq for AddressGate {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for AddressGate {}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            netns: None,
            mark_mask: DEFAULT_MARK_MASK,
            table_base: DEFAULT_TABLE_BASE,
            rule_priority: DEFAULT_RULE_PRIORITY,
            garp_count: DEFAULT_GARP_COUNT,
            garp_interval: DEFAULT_GARP_INTERVAL,
            address_lifetime_secs: None,
            own_table: true,
            address_gate: None,
        }
    }
}

impl DataplaneConfig {
    /// The config, working inside the network namespace at `path`.
    pub fn in_netns(path: impl Into<PathBuf>) -> Self {
        Self {
            netns: Some(path.into()),
            ..Self::default()
        }
    }

    /// Checks the knobs; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let m = self.mark_mask;
        if m == 0 {
            return Err("mark mask must not be zero".into());
        }
        let shifted = m >> m.trailing_zeros();
        if shifted & (shifted + 1) != 0 {
            return Err(format!(
                "mark mask {m:#010x} must be one run of contiguous bits"
            ));
        }
        if self.table_base == 0 || self.table_base.checked_add(self.max_slot()).is_none() {
            return Err(format!(
                "table base {} leaves no room for {} tables",
                self.table_base,
                self.max_slot()
            ));
        }
        // 253..=255 are default, main, local; 0 is unspec.
        let last = self.table_base + self.max_slot();
        if (self.table_base..=last).any(|t| (253..=255).contains(&t)) {
            return Err(format!(
                "table range {}..={last} overlaps the kernel's own tables",
                self.table_base
            ));
        }
        if self.rule_priority == 0 || self.rule_priority >= 32766 {
            return Err(format!(
                "rule priority {} must lie between 1 and 32765",
                self.rule_priority
            ));
        }
        Ok(())
    }

    /// Highest next-hop slot the mark field can carry (slot 0 means "not steered").
    pub fn max_slot(&self) -> u32 {
        self.mark_mask >> self.mark_mask.trailing_zeros()
    }

    /// Mark value of `slot` (inside the mask).
    pub fn slot_mark(&self, slot: u32) -> u32 {
        slot << self.mark_mask.trailing_zeros()
    }

    /// The slot a mark value (inside the mask) carries, if any.
    pub fn mark_slot(&self, mark: u32) -> Option<u32> {
        let slot = (mark & self.mark_mask) >> self.mark_mask.trailing_zeros();
        (slot > 0 && mark & !self.mark_mask == 0).then_some(slot)
    }

    /// Routing table id of `slot`.
    pub fn slot_table(&self, slot: u32) -> u32 {
        self.table_base + slot
    }

    /// The slot a routing table id belongs to, if it is one of ours.
    pub fn table_slot(&self, table: u32) -> Option<u32> {
        let slot = table.checked_sub(self.table_base)?;
        (1..=self.max_slot()).contains(&slot).then_some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_has_255_slots() {
        let c = DataplaneConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.max_slot(), 255);
        assert_eq!(c.slot_mark(1), 0x0010_0000);
        assert_eq!(c.slot_mark(255), 0x0ff0_0000);
        assert_eq!(c.table_slot(c.slot_table(7)), Some(7));
        assert_eq!(c.table_slot(c.table_base), None);
        assert_eq!(c.table_slot(c.table_base + 256), None);
        assert_eq!(c.mark_slot(c.slot_mark(9)), Some(9));
        assert_eq!(c.mark_slot(0), None);
        assert_eq!(c.mark_slot(c.slot_mark(9) | 1), None);
    }

    #[test]
    fn bad_masks_and_ranges_are_rejected() {
        let bad = |f: fn(&mut DataplaneConfig)| {
            let mut c = DataplaneConfig::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(|c| c.mark_mask = 0));
        assert!(bad(|c| c.mark_mask = 0x0101_0000));
        assert!(bad(|c| c.table_base = 200));
        assert!(bad(|c| c.table_base = u32::MAX - 3));
        assert!(bad(|c| c.rule_priority = 40000));
    }
}
