//! The dataplane engine: brings the kernel of the current network namespace to a plan.
//!
//! Order of one apply (each step only when there is something to do):
//! 1. read routing state (cheap) and, on the first apply or after a failure, our table;
//! 2. remove addresses the node stops hosting (before their guard and SNAT go), add routes
//!    and rules of new next hops (before any packet carries their mark);
//! 3. one nftables transaction with the whole table difference;
//! 4. add new egress IPs (their guard is in place now), then gratuitous ARP;
//! 5. remove rules and routes no mark points to any more;
//! 6. delete conntrack entries made stale by the change.

use std::collections::BTreeSet;
use std::net::IpAddr;

use tracing::{debug, info, info_span, warn};

use super::config::DataplaneConfig;
use super::conntrack::delete_stale;
use super::conntrack_select::select_stale;
use super::desired::{desired, wanted_next_hops};
use super::error::DataplaneError;
use super::garp::GarpSocket;
use super::names::GatewayId;
use super::nfnl_socket::NfnlSocket;
use super::nft_diff::{NftOp, diff};
use super::nft_encode::encode;
use super::nft_model::{NftState, RuleSpec};
use super::nft_read::{read_rules_only, read_table};
use super::report::{ApplyReport, CounterKind, RuleCounter};
use super::route_model::{RoutingState, RtOp, plan_routing};
use super::rtnl::Rtnl;
use super::slots::allocate_slots;
use crate::plan::NodePlan;

/// What the kernel holds of ours, for tests and debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSnapshot {
    pub table: Option<NftState>,
    pub routing: RoutingState,
}

/// The dataplane working in the calling thread's network namespace.
pub struct Engine {
    cfg: DataplaneConfig,
    /// Our table as last read or committed: `None` = unknown, read it before the next diff.
    cached: Option<Option<NftState>>,
}

fn open_nfnl() -> Result<NfnlSocket, DataplaneError> {
    NfnlSocket::open()
        .map_err(|e| DataplaneError::kernel("socket(NETLINK_NETFILTER)", "nfnetlink", e))
}

fn open_rtnl() -> Result<Rtnl, DataplaneError> {
    Rtnl::open().map_err(|e| DataplaneError::kernel("socket(NETLINK_ROUTE)", "rtnetlink", e))
}

/// Every link and IPv4 address of the namespace (not only ours): the agent reports the
/// node's interfaces and subnets from it.
pub fn read_routing(cfg: &DataplaneConfig) -> Result<RoutingState, DataplaneError> {
    open_rtnl()?.read(cfg)
}

/// Extend the lifetime of every egress IP the kernel holds for us (see
/// [`DataplaneConfig::address_lifetime_secs`]). Returns how many were refreshed.
pub fn refresh_lifetimes(cfg: &DataplaneConfig) -> Result<usize, DataplaneError> {
    let Some(secs) = cfg.address_lifetime_secs else {
        return Ok(0);
    };
    let mut rtnl = open_rtnl()?;
    rtnl.address_lifetime = Some(secs);
    let routing = rtnl.read(cfg)?;
    let mut n = 0;
    for a in routing
        .addresses
        .iter()
        .filter(|a| a.proto == Some(super::config::ADDRESS_PROTO) && a.prefix == 32)
    {
        let ifname = routing
            .link_by_index(a.link)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        rtnl.apply(&RtOp::AddAddress {
            ip: a.ip,
            link: a.link,
            ifname,
        })?;
        n += 1;
    }
    Ok(n)
}

fn count_elements(ops: &[NftOp], report: &mut ApplyReport, old: Option<&NftState>) {
    for op in ops {
        match op {
            NftOp::AddSet { set, .. } => report.elements_added += set.content.len(),
            NftOp::AddElems { content, .. } => report.elements_added += content.len(),
            NftOp::DelElems { content, .. } => report.elements_removed += content.len(),
            NftOp::FlushSet { name } | NftOp::DelSet { name } => {
                report.elements_removed += old
                    .and_then(|o| o.sets.get(name))
                    .map_or(0, |s| s.content.len())
            }
            NftOp::DelTable => report.elements_removed += old.map_or(0, NftState::element_count),
            NftOp::AddRule(_) => report.rules_added += 1,
            NftOp::DelRule { .. } => report.rules_removed += 1,
            _ => {}
        }
    }
}

impl Engine {
    /// An engine for the current network namespace (no kernel call yet).
    pub fn new(cfg: DataplaneConfig) -> Result<Self, DataplaneError> {
        cfg.validate().map_err(DataplaneError::Config)?;
        Ok(Self { cfg, cached: None })
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// Forgets the cached table: the next apply reads the kernel first.
    pub fn invalidate(&mut self) {
        self.cached = None;
    }

    /// Makes sure the cache holds our table, reading the kernel if it does not.
    fn ensure_cached(&mut self, nfnl: &mut NfnlSocket) -> Result<(), DataplaneError> {
        if self.cached.is_none() {
            let t = read_table(nfnl)?;
            debug!(
                present = t.is_some(),
                elements = t.as_ref().map_or(0, NftState::element_count),
                "read table from kernel"
            );
            self.cached = Some(t);
        }
        Ok(())
    }

    /// Our table, moved out of the cache (large tables are not copied); the caller puts the
    /// new state back on success, a failure leaves the cache empty.
    fn take_observed(&mut self, nfnl: &mut NfnlSocket) -> Result<Option<NftState>, DataplaneError> {
        self.ensure_cached(nfnl)?;
        Ok(self.cached.take().flatten())
    }

    /// Brings the kernel to `plan`. On error the cache is dropped, so the next call starts
    /// from what the kernel really holds.
    pub fn apply(&mut self, plan: &NodePlan) -> Result<ApplyReport, DataplaneError> {
        let span = info_span!("dataplane_apply", node = %plan.node);
        let _enter = span.enter();
        let result = self.apply_inner(plan);
        if let Err(e) = &result {
            warn!(error = %e, "dataplane apply failed");
            self.cached = None;
        }
        result
    }

    fn apply_inner(&mut self, plan: &NodePlan) -> Result<ApplyReport, DataplaneError> {
        let cfg = self.cfg.clone();
        let mut nfnl = open_nfnl()?;
        let mut rtnl = open_rtnl()?;
        rtnl.address_lifetime = cfg.address_lifetime_secs;
        let mut old = self.take_observed(&mut nfnl)?;
        let routing = rtnl.read(&cfg)?;

        let (slots, unslotted) = allocate_slots(
            &routing.slots(&cfg),
            &routing.busy_slots(&cfg),
            &wanted_next_hops(plan),
            cfg.max_slot(),
        );
        let mut slots = slots;
        slots.retain(|nh, _| {
            let ok = routing.on_link(*nh);
            if !ok {
                warn!(next_hop = %nh, "next hop is not on-link on this node: its pods are blocked");
            }
            ok
        });
        for nh in &unslotted {
            warn!(next_hop = %nh, mask = format_args!("{:#010x}", cfg.mark_mask), max = cfg.max_slot(),
                "no free mark slot for this next hop: its pods are blocked until one frees up (widen --mark-mask)");
        }
        let want = desired(plan, &cfg, &slots);
        let recorded = old.as_ref().map(NftState::hosted).unwrap_or_default();
        let rplan =
            plan_routing(&routing, &recorded, &want.addresses, &want.slots, &cfg).map_err(|m| {
                DataplaneError::InterfaceNotFound {
                    ip: IpAddr::V4(m.ip),
                    interface: m.interface,
                }
            })?;
        let mut report = ApplyReport {
            ipv6_ignored: want.ipv6_ignored,
            ..ApplyReport::default()
        };

        // 2. addresses out, new next hops in
        self.run_rt(&mut rtnl, &rplan.before_nft, &mut report)?;

        // 3. the table, in one transaction
        let stale = select_stale(old.as_ref(), want.nft.as_ref());
        let ops = diff(old.as_ref(), want.nft.as_ref());
        if ops.is_empty() {
            self.cached = Some(old);
        } else {
            count_elements(&ops, &mut report, old.as_ref());
            let encoded = encode(&ops);
            report.nft_messages = encoded.messages;
            report.nft_bytes = encoded.bytes;
            if let Err(e) = nfnl.send_batch(&encoded.batch) {
                let failed = e
                    .seq
                    .and_then(|s| encoded.op_for_seq(s))
                    .map_or_else(|| "batch".to_string(), |i| ops[i].describe());
                return Err(DataplaneError::Transaction {
                    messages: encoded.messages,
                    failed,
                    source: e.error,
                });
            }
            let mut now = want.nft;
            if let Some(t) = now.as_mut() {
                let rules_changed = ops
                    .iter()
                    .any(|o| matches!(o, NftOp::AddRule(_) | NftOp::DelRule { .. }));
                let fresh = if rules_changed {
                    read_rules_only(&mut nfnl)?
                } else {
                    old.take().unwrap_or_default()
                };
                t.rules = fresh.rules;
                t.foreign_rules = fresh.foreign_rules;
            }
            info!(
                messages = report.nft_messages,
                bytes = report.nft_bytes,
                elements_added = report.elements_added,
                elements_removed = report.elements_removed,
                rules_added = report.rules_added,
                rules_removed = report.rules_removed,
                "nftables transaction committed"
            );
            self.cached = Some(now);
        }

        // 4. new addresses, announced
        self.run_rt(&mut rtnl, &rplan.add_addresses, &mut report)?;
        self.announce(&rplan.add_addresses, &routing, &mut report)?;

        // 5. stale next hops out
        self.run_rt(&mut rtnl, &rplan.after_nft, &mut report)?;

        // 6. conntrack
        if !stale.is_empty() {
            report.conntrack_deleted = delete_stale(&mut nfnl, &stale)?;
            info!(
                pods = stale.pod_count(),
                deleted = report.conntrack_deleted,
                "stale conntrack entries deleted"
            );
        }
        if !report.is_noop() {
            info!(?report, "dataplane converged");
        }
        Ok(report)
    }

    fn run_rt(
        &self,
        rtnl: &mut Rtnl,
        ops: &[RtOp],
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        for op in ops {
            rtnl.apply(op)?;
            match op {
                RtOp::AddAddress { ip, ifname, .. } => {
                    info!(ip = %ip, interface = %ifname, "egress IP added");
                    report.addresses_added.push(IpAddr::V4(*ip));
                }
                RtOp::DelAddress { ip, ifname, .. } => {
                    info!(ip = %ip, interface = %ifname, "egress IP removed");
                    report.addresses_removed.push(IpAddr::V4(*ip));
                }
                other => {
                    debug!(op = ?other, "routing change");
                    report.routing_changes += 1;
                }
            }
        }
        Ok(())
    }

    /// Gratuitous ARP for the added addresses: the first round now, the other
    /// `garp_count - 1` rounds from a short-lived thread (the socket already lives in this
    /// namespace), so an apply does not wait for the whole burst.
    fn announce(
        &self,
        added: &[RtOp],
        routing: &RoutingState,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        let targets: Vec<_> = added
            .iter()
            .filter_map(|op| match op {
                RtOp::AddAddress { ip, link, ifname } => {
                    let mac = routing.link_by_index(*link).and_then(|l| l.mac);
                    if mac.is_none() {
                        warn!(ip = %ip, interface = %ifname, "interface has no MAC address: no gratuitous ARP");
                    }
                    Some((*ip, *link, mac?, ifname.clone()))
                }
                _ => None,
            })
            .collect();
        if targets.is_empty() || self.cfg.garp_count == 0 {
            return Ok(());
        }
        let sock = GarpSocket::open()
            .map_err(|e| DataplaneError::kernel("socket(AF_PACKET)", "gratuitous ARP", e))?;
        for (ip, link, mac, ifname) in &targets {
            sock.send(*link, *mac, *ip).map_err(|e| {
                DataplaneError::kernel(
                    "sendto(AF_PACKET)",
                    format!("gratuitous ARP for {ip} on {ifname}"),
                    e,
                )
            })?;
            report.garps_sent += 1;
        }
        let rounds = self.cfg.garp_count - 1;
        if rounds > 0 {
            report.garps_sent += rounds as usize * targets.len();
            let interval = self.cfg.garp_interval;
            std::thread::Builder::new()
                .name("egressgw-garp".into())
                .spawn(move || {
                    for _ in 0..rounds {
                        std::thread::sleep(interval);
                        for (ip, link, mac, ifname) in &targets {
                            if let Err(e) = sock.send(*link, *mac, *ip) {
                                warn!(ip = %ip, interface = %ifname, error = %e, "gratuitous ARP failed");
                            }
                        }
                    }
                })
                .map_err(|e| DataplaneError::kernel("spawn", "gratuitous ARP thread", e))?;
        }
        Ok(())
    }

    /// Removes everything egressgw owns in this namespace: the table, our addresses, rules
    /// and routes, and the conntrack entries NATed to our addresses.
    pub fn cleanup(&mut self) -> Result<ApplyReport, DataplaneError> {
        self.cached = None;
        self.apply(&NodePlan::empty("cleanup"))
    }

    /// Counters of our rules, read from the kernel now.
    pub fn counters(&mut self) -> Result<Vec<RuleCounter>, DataplaneError> {
        let mut nfnl = open_nfnl()?;
        self.ensure_cached(&mut nfnl)?;
        let table = self.cached.as_ref().and_then(Option::as_ref);
        let rules = read_rules_only(&mut nfnl)?;
        let name = |gid: &GatewayId| {
            table
                .and_then(|t| t.gateway_name(gid))
                .map(str::to_string)
                .or_else(|| Some(gid.to_string()))
        };
        let mut out = Vec::new();
        for (spec, h) in &rules.rules {
            let Some(h) = h else { continue };
            let (gateway, kind) = match spec {
                RuleSpec::Guard => (None, CounterKind::Guard),
                RuleSpec::MarkSnat { .. } => (None, CounterKind::SteeredConnections),
                RuleSpec::Snat { gid, egress_ip } => (
                    name(gid),
                    CounterKind::SnatConnections {
                        egress_ip: IpAddr::V4(*egress_ip),
                    },
                ),
                RuleSpec::Account { gid, egress_ip } => (
                    name(gid),
                    CounterKind::Snat {
                        egress_ip: IpAddr::V4(*egress_ip),
                    },
                ),
                RuleSpec::Steer { gid, next_hop, .. } => (
                    name(gid),
                    CounterKind::Steer {
                        next_hop: IpAddr::V4(*next_hop),
                    },
                ),
                RuleSpec::Block { gid } => (name(gid), CounterKind::Blocked),
                RuleSpec::Leak { gid, .. } | RuleSpec::LeakRemote { gid, .. } => {
                    (name(gid), CounterKind::LeakDropped)
                }
            };
            out.push(RuleCounter {
                gateway,
                kind,
                packets: h.packets,
                bytes: h.bytes,
            });
        }
        out.sort_by(|a, b| (&a.gateway, &a.kind).cmp(&(&b.gateway, &b.kind)));
        Ok(out)
    }

    /// Everything of ours in the kernel, read fresh (the cache is refreshed too).
    pub fn snapshot(&mut self) -> Result<KernelSnapshot, DataplaneError> {
        let mut nfnl = open_nfnl()?;
        let table = read_table(&mut nfnl)?;
        self.cached = Some(table.clone());
        let mut routing = open_rtnl()?.read(&self.cfg)?;
        let recorded: BTreeSet<_> = table.as_ref().map(NftState::hosted).unwrap_or_default();
        let owned: Vec<_> = routing
            .owned_addresses(&recorded)
            .into_iter()
            .cloned()
            .collect();
        routing.addresses = owned;
        Ok(KernelSnapshot { table, routing })
    }
}
