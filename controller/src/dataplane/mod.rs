//! The node dataplane: brings one node's kernel to its [`NodePlan`].
//!
//! Kernel layout (all IPv4; names and numbers in [`config`]):
//! - nftables table `ip egressgw`, owned exclusively, changed only by one transaction per
//!   apply and incrementally (one pod = one set element):
//!   - set `hosted`: egress IPs held here — the guard's match and the record of which
//!     addresses are ours;
//!   - per gateway (short id `g` + 10 hex digits, full name in the comment of `<id>_dst`):
//!     interval sets `<id>_dst`, `<id>_excl`; hash sets `<id>_snat_<E>` (pods SNATed to E),
//!     `<id>_via_<NH>` (local pods steered to next hop NH), `<id>_blocked`;
//!   - chains `pre` (filter prerouting, mangle: mark steered packets with the next hop's
//!     slot), `post` (nat postrouting, srcnat - 10: SNAT to E, identity SNAT of marked
//!     packets), `guard` (filter input: drop packets to hosted egress IPs), `fwd` (filter
//!     forward: drop blocked pods, count SNATed traffic); every rule carries its identity as
//!     a comment and a counter; `spoof` (filter forward, before `fwd` and any NAT):
//!     anti-spoofing, see [`origins`]: drop a SNATed pod's packet that did not come from its
//!     own veth (`fib saddr . iif`) or, for another node's pod, from that node's interface and
//!     MAC (table-wide sets `origins` = `pod . iif . MAC` and `node_ifs`);
//! - per node whose pods are SNATed here, a kernel-managed neighbour entry tagged
//!   [`config::NEIGHBOUR_PROTO`], so that node's MAC is known before its first packet;
//! - per next hop a slot `s`: mark `s << shift` under the mark mask, rule
//!   `pref P fwmark MARK/MASK lookup base+s`, route `default via NH table base+s`; the slot
//!   of a next hop is recovered from the routes after a restart;
//! - per slot also `blackhole default table base+s metric 2^32-1`: a marked packet whose route
//!   via the next hop vanished is dropped, never routed by the main table (fail closed);
//! - egress IPs as /32 with `IFA_PROTO` [`config::ADDRESS_PROTO`], announced by gratuitous ARP;
//!   ours by [`ownership::AddressRecord`] (what this agent added, recovered from `hosted`), the
//!   tag only a hint; an egress IP the node holds without us is never adopted.
//!
//! Self-healing: [`drift_watch`] listens to nftables and rtnetlink notifications inside the
//! namespace; drift of ours (see [`drift_events`]) wakes a re-apply that reads the kernel and
//! commits only the difference. After every apply the engine compares what it knows of the
//! kernel (read back, plus acknowledged transactions) with the plan ([`truth`]): the agent
//! reports that, not the plan, as what the node holds.
//!
//! [`KernelDataplane`] runs the [`engine::Engine`] on a dedicated thread inside the node's
//! network namespace; [`recording::RecordingDataplane`] is the fake for runtime tests.

pub mod config;
pub mod conntrack;
pub mod conntrack_select;
pub mod desired;
pub mod drift_events;
pub mod drift_watch;
pub mod engine;
pub mod error;
pub mod garp;
pub mod kernel;
pub mod names;
pub mod neighbours;
pub mod nfnl_socket;
pub mod nft_diff;
pub mod nft_encode;
pub mod nft_expr;
pub mod nft_fingerprint;
pub mod nft_model;
pub mod nft_read;
pub mod origins;
pub mod own_ports;
pub mod ownership;
pub mod recording;
pub mod report;
pub mod route_model;
pub mod rtnl;
pub mod slots;
pub mod truth;

pub use config::DataplaneConfig;
pub use engine::{Engine, KernelSnapshot};
pub use error::DataplaneError;
pub use kernel::KernelDataplane;
pub use recording::RecordingDataplane;
pub use report::{ApplyReport, CounterKind, RuleCounter};

use crate::plan::NodePlan;

/// A node dataplane, as the agent runtime sees it.
pub trait Dataplane: Send {
    /// Brings the kernel to `plan`: one nftables transaction for the table difference, plus
    /// the address, routing and conntrack changes. Applying the same plan again changes
    /// nothing. After an error the kernel holds the previous table (the transaction is
    /// atomic); addresses and routes may be partly changed and the next apply completes them.
    fn apply(&mut self, plan: &NodePlan) -> Result<ApplyReport, DataplaneError>;

    /// Removes everything egressgw owns on the node.
    fn cleanup(&mut self) -> Result<ApplyReport, DataplaneError>;

    /// Packet and byte counters of our rules (for metrics).
    fn counters(&mut self) -> Result<Vec<RuleCounter>, DataplaneError>;
}
