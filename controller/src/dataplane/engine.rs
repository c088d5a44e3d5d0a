//! The dataplane engine: brings the kernel of the current network namespace to a plan.
//!
//! Order of one apply (each step only when there is something to do):
//! 1. read routing state (cheap) and, on the first apply, after a failure or when the drift
//!    monitor saw our table change ([`DriftShared::table_stale`]), our table;
//! 2. remove addresses the node stops hosting (before their guard and SNAT go), add routes
//!    and rules of new next hops (before any packet carries their mark);
//! 3. one nftables transaction with the whole table difference;
//! 4. add new egress IPs (their guard is in place now), then gratuitous ARP;
//! 5. remove rules and routes no mark points to any more;
//! 6. delete conntrack entries made stale by the change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;

use tracing::{debug, info, info_span, warn};

use super::config::DataplaneConfig;
use super::config::{NEIGHBOUR_RESOLVE_POLL, NEIGHBOUR_RESOLVE_WAIT};
use super::conntrack::delete_stale;
use super::conntrack_select::select_stale;
use super::desired::{desired, wanted_addresses, wanted_next_hops};
use super::drift_watch::DriftShared;
use super::error::DataplaneError;
use super::garp::GarpSocket;
use super::names::GatewayId;
use super::nfnl_socket::NfnlSocket;
use super::nft_diff::{NftOp, diff};
use super::nft_encode::encode;
use super::nft_model::{NftState, RuleSpec};
use super::nft_read::{read_rules_only, read_table};
use super::origins::{NeighOp, NodeLink, neighbour_ops, node_links, origin_nodes};
use super::own_ports::OwnPorts;
use super::ownership::{AddressRecord, SharedOwnership, foreign_conflicts};
use super::report::{ApplyReport, CounterKind, RuleCounter};
use super::route_model::{RoutingState, RtOp, plan_routing};
use super::rtnl::Rtnl;
use super::slots::{allocate_slots, recover_slots};
use super::truth::{KernelReport, NodeFacts, TableParts, kernel_report};
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
    /// The egress IPs this engine added (or recovered from our table's `hosted` set).
    record: AddressRecord,
    /// The same, published for the lifetime thread after every change.
    shared_record: std::sync::Arc<std::sync::Mutex<AddressRecord>>,
    /// Shared with the drift monitor: our sockets' ports, and the stale-table flag.
    drift: DriftShared,
    /// The socket every transaction goes through, kept open: it owns our table (see
    /// [`DataplaneConfig::own_table`]). Dropped after a failure; the next apply opens a new
    /// one and adopts the table the kernel kept.
    owner: Option<NfnlSocket>,
    /// Our table as the engine last knew it from the kernel (the parts of `cached`): read
    /// back, with the acknowledged transactions applied. `None` with the cache.
    kernel_parts: Option<TableParts>,
    /// What the last apply found in the kernel against its plan (see [`super::truth`]).
    truth: Option<KernelReport>,
    /// The neighbour table may hold managed entries of ours (unknown at start): read it even
    /// when the plan SNATs no pod of another node, to remove them.
    neighbours_ours: bool,
}

fn open_nfnl(own: &OwnPorts) -> Result<NfnlSocket, DataplaneError> {
    let sock = NfnlSocket::open()
        .map_err(|e| DataplaneError::kernel("socket(NETLINK_NETFILTER)", "nfnetlink", e))?;
    let port = sock
        .portid()
        .map_err(|e| DataplaneError::kernel("getsockname", "nfnetlink", e))?;
    own.note(port);
    Ok(sock)
}

fn open_rtnl(own: &OwnPorts) -> Result<Rtnl, DataplaneError> {
    let rtnl = Rtnl::open()
        .map_err(|e| DataplaneError::kernel("socket(NETLINK_ROUTE)", "rtnetlink", e))?;
    own.note(rtnl.portid());
    Ok(rtnl)
}

/// Extend the lifetime of every egress IP of ours the kernel holds (see
/// [`DataplaneConfig::address_lifetime_secs`]): those the engine added or recovered, and those
/// with our `IFA_PROTO` — never a foreign one. Runs in the calling thread's namespace (the
/// agent's lifetime thread, or the engine's). Returns how many were refreshed.
pub fn refresh_lifetimes(
    cfg: &DataplaneConfig,
    ours: &SharedOwnership,
) -> Result<usize, DataplaneError> {
    let Some(secs) = cfg.address_lifetime_secs else {
        return Ok(0);
    };
    let mut rtnl = open_rtnl(&ours.ports)?;
    rtnl.address_lifetime = Some(secs);
    let routing = rtnl.read(cfg)?;
    let ops = lifetime_refreshes(&routing, &ours.record());
    for op in &ops {
        rtnl.apply(op)?;
    }
    Ok(ops.len())
}

/// The address refreshes that extend the lifetime of our egress IPs: only /32s the record or
/// our `IFA_PROTO` says are ours (on kernels without `IFA_PROTO`, the record alone).
pub fn lifetime_refreshes(routing: &RoutingState, record: &AddressRecord) -> Vec<RtOp> {
    record
        .owned(routing)
        .into_iter()
        .map(|a| RtOp::AddAddress {
            ip: a.ip,
            link: a.link,
            ifname: routing
                .link_by_index(a.link)
                .map(|l| l.name.clone())
                .unwrap_or_default(),
        })
        .collect()
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
        Self::with_drift(cfg, DriftShared::new())
    }

    /// An engine sharing its port record and stale-table flag with a drift monitor.
    pub fn with_drift(cfg: DataplaneConfig, drift: DriftShared) -> Result<Self, DataplaneError> {
        cfg.validate().map_err(DataplaneError::Config)?;
        Ok(Self {
            cfg,
            cached: None,
            record: AddressRecord::default(),
            shared_record: Default::default(),
            drift,
            owner: None,
            kernel_parts: None,
            truth: None,
            neighbours_ours: true,
        })
    }

    /// Every link and IPv4 address of the namespace (not only ours): the agent reports the
    /// node's interfaces and subnets from it.
    pub fn read_routing(&self) -> Result<RoutingState, DataplaneError> {
        open_rtnl(&self.drift.own)?.read(&self.cfg)
    }

    /// Extend the lifetime of every egress IP of ours the kernel holds (see
    /// [`refresh_lifetimes`]).
    pub fn refresh_lifetimes(&mut self) -> Result<usize, DataplaneError> {
        refresh_lifetimes(&self.cfg, &self.ownership())
    }

    /// The record and our ports, for threads outside the engine.
    pub fn ownership(&self) -> SharedOwnership {
        SharedOwnership {
            record: self.shared_record.clone(),
            ports: self.drift.own.clone(),
        }
    }

    /// Publishes the record to [`Self::ownership`] holders.
    fn publish_record(&self) {
        *self.shared_record.lock().expect("address record lock") = self.record.clone();
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// Forgets the cached table: the next apply reads the kernel first.
    pub fn invalidate(&mut self) {
        self.cached = None;
        self.kernel_parts = None;
    }

    /// What the last apply found in the kernel against its plan, after it changed what it
    /// could (`None` before the first apply). After a failed apply: the kernel as read.
    pub fn truth(&self) -> Option<KernelReport> {
        self.truth.clone()
    }

    /// Makes sure the cache holds our table, reading the kernel if it does not (or if the
    /// drift monitor saw it change).
    fn ensure_cached(&mut self, nfnl: &mut NfnlSocket) -> Result<(), DataplaneError> {
        if self.drift.table_stale.swap(false, Ordering::SeqCst) {
            self.cached = None;
            self.kernel_parts = None;
        }
        if self.cached.is_none() {
            let t = read_table(nfnl)?;
            debug!(
                present = t.is_some(),
                elements = t.as_ref().map_or(0, NftState::element_count),
                "read table from kernel"
            );
            if let Some(t) = &t {
                self.record.recover(&t.hosted());
                self.publish_record();
            }
            self.kernel_parts = Some(TableParts::of(t.as_ref()));
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
        let mut result = self.apply_owned(plan);
        if let Err(DataplaneError::TableOwnershipUnsupported { source }) = &result {
            warn!(error = %source, "this kernel cannot keep an owned table across agent restarts (Linux < 6.9): our table stays unowned, drift is repaired instead of refused");
            self.cfg.own_table = false;
            self.cached = None;
            self.kernel_parts = None;
            result = self.apply_owned(plan);
        }
        if let Err(e) = &result {
            warn!(error = %e, "dataplane apply failed");
            self.cached = None;
            self.kernel_parts = None;
        }
        result
    }

    /// One apply through the owner socket (opened when there is none; dropped on failure).
    fn apply_owned(&mut self, plan: &NodePlan) -> Result<ApplyReport, DataplaneError> {
        let mut nfnl = match self.owner.take() {
            Some(s) => s,
            None => open_nfnl(&self.drift.own)?,
        };
        let result = self.apply_inner(plan, &mut nfnl);
        if result.is_ok() {
            self.owner = Some(nfnl);
        }
        result
    }

    fn apply_inner(
        &mut self,
        plan: &NodePlan,
        nfnl: &mut NfnlSocket,
    ) -> Result<ApplyReport, DataplaneError> {
        let cfg = self.cfg.clone();
        let mut rtnl = open_rtnl(&self.drift.own)?;
        rtnl.address_lifetime = cfg.address_lifetime_secs;
        let mut old = self.take_observed(nfnl)?;
        let routing = rtnl.read(&cfg)?;

        let steer = old
            .iter()
            .flat_map(|t| t.rules.keys())
            .filter_map(|r| match r {
                RuleSpec::Steer { next_hop, mark, .. } => Some((*next_hop, *mark)),
                _ => None,
            });
        let known = recover_slots(&routing.slots(&cfg), steer, |m| cfg.mark_slot(m));
        let (slots, unslotted) = allocate_slots(
            &known,
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
        let foreign = foreign_conflicts(&routing, &self.record, &wanted_addresses(plan));
        for f in foreign.values() {
            warn!(ip = %f.ip, interface = %f.interface, prefix = f.prefix,
                "egress IP already on the node and not added by egressgw: not hosting it here (its pods are blocked); the address is left alone");
        }
        let refused: BTreeSet<_> = foreign.keys().copied().collect();
        let links = self.node_links(&mut rtnl, plan, &routing)?;
        let want = desired(plan, &cfg, &slots, &refused, &links);
        // Kernel truth as read, before any change: what stays reported if this apply fails.
        let want_parts = TableParts::of(want.nft.as_ref());
        let present: BTreeSet<std::net::Ipv4Addr> =
            self.record.owned(&routing).iter().map(|a| a.ip).collect();
        let routed: BTreeSet<std::net::Ipv4Addr> = routing.slots(&cfg).into_keys().collect();
        let observed = self
            .kernel_parts
            .clone()
            .unwrap_or_else(|| TableParts::of(old.as_ref()));
        self.truth = Some(kernel_report(
            plan,
            &observed,
            &want_parts,
            NodeFacts {
                present: &present,
                foreign: &foreign,
                routed: &routed,
            },
        ));
        let rplan = plan_routing(&routing, &self.record, &want.addresses, &want.slots, &cfg)
            .map_err(|m| DataplaneError::InterfaceNotFound {
                ip: IpAddr::V4(m.ip),
                interface: m.interface,
            })?;
        let mut report = ApplyReport {
            ipv6_ignored: want.ipv6_ignored,
            foreign_addresses: foreign.values().cloned().collect(),
            ..ApplyReport::default()
        };

        // 2. addresses out, new next hops in
        self.run_rt(&mut rtnl, &rplan.before_nft, &mut report)?;

        // 3. the table, in one transaction
        let stale = select_stale(old.as_ref(), want.nft.as_ref());
        let ops = diff(old.as_ref(), want.nft.as_ref());
        let mut kernel_parts = observed;
        if ops.is_empty() {
            self.cached = Some(old);
        } else {
            count_elements(&ops, &mut report, old.as_ref());
            let encoded = encode(&ops);
            report.nft_messages = encoded.messages;
            report.nft_bytes = encoded.bytes;
            if let Err(e) = nfnl.send_batch(&encoded.batch) {
                let owning = ops.iter().any(|o| {
                    matches!(o, NftOp::AddTable { flags } | NftOp::AdoptTable { flags } if *flags != 0)
                });
                if owning
                    && matches!(
                        e.error.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EINVAL)
                    )
                {
                    return Err(DataplaneError::TableOwnershipUnsupported { source: e.error });
                }
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
            let rules_changed = ops
                .iter()
                .any(|o| matches!(o, NftOp::AddRule(_) | NftOp::DelRule { .. }));
            if let Some(t) = now.as_mut() {
                let fresh = if rules_changed {
                    read_rules_only(nfnl)?
                } else {
                    old.take().unwrap_or_default()
                };
                t.rules = fresh.rules;
                t.foreign_rules = fresh.foreign_rules;
            }
            // Acknowledged by the kernel as one transaction: the plan's table, with the rules
            // read back when they changed (one pass over the table only then; a pod change
            // reuses the plan's parts).
            kernel_parts = if rules_changed {
                TableParts::of(now.as_ref())
            } else {
                want_parts.clone()
            };
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
        // Only what was really added is announced (the gate may have held some back).
        let added: Vec<RtOp> = rplan
            .add_addresses
            .iter()
            .filter(|op| {
                matches!(op, RtOp::AddAddress { ip, .. }
                    if report.addresses_added.contains(&IpAddr::V4(*ip)))
            })
            .cloned()
            .collect();
        self.announce(&added, &routing, &mut report)?;

        // 5. stale next hops out
        self.run_rt(&mut rtnl, &rplan.after_nft, &mut report)?;

        // 6. conntrack
        if !stale.is_empty() {
            report.conntrack_deleted = delete_stale(nfnl, &stale)?;
            info!(
                pods = stale.pod_count(),
                deleted = report.conntrack_deleted,
                "stale conntrack entries deleted"
            );
        }
        self.record.retain_wanted(&want.addresses);
        self.publish_record();
        let mut present = present;
        for ip in &report.addresses_added {
            if let IpAddr::V4(v4) = ip {
                present.insert(*v4);
            }
        }
        for ip in &report.addresses_removed {
            if let IpAddr::V4(v4) = ip {
                present.remove(v4);
            }
        }
        self.truth = Some(kernel_report(
            plan,
            &kernel_parts,
            &want_parts,
            NodeFacts {
                present: &present,
                foreign: &foreign,
                // every route of the plan's slots was acknowledged by the kernel
                routed: &want.slots.keys().copied().collect(),
            },
        ));
        self.kernel_parts = Some(kernel_parts);
        if !report.is_noop() {
            info!(?report, "dataplane converged");
        }
        Ok(report)
    }

    /// Where the nodes whose pods `plan` SNATs here are reached (interface and MAC), keeping
    /// them resolved (see [`super::origins`]); removes our neighbour entries no longer needed.
    fn node_links(
        &mut self,
        rtnl: &mut Rtnl,
        plan: &NodePlan,
        routing: &RoutingState,
    ) -> Result<BTreeMap<Ipv4Addr, NodeLink>, DataplaneError> {
        let nodes = origin_nodes(plan);
        if nodes.is_empty() && !self.neighbours_ours {
            return Ok(BTreeMap::new());
        }
        let mut table = rtnl.neighbours()?;
        let ops = neighbour_ops(&nodes, &table, |ip| routing.link_toward(ip));
        let mut asked = false; // the kernel was asked to resolve a node it did not know
        for op in &ops {
            // Not fatal: without the entry a node's pods stay blocked here until the kernel
            // learns its MAC by itself (a kernel before 5.16 has no managed entries).
            match rtnl.apply_neigh(op) {
                Ok(()) => {
                    asked |= matches!(op, NeighOp::Manage { mac: None, .. });
                    info!(op = ?op, "neighbour entry for anti-spoofing")
                }
                Err(e) => {
                    warn!(op = ?op, error = %e, "neighbour entry for anti-spoofing not changed")
                }
            }
        }
        if !ops.is_empty() {
            table = rtnl.neighbours()?;
        }
        self.neighbours_ours = !nodes.is_empty() || table.iter().any(|n| n.ours);
        let mut links = node_links(&nodes, &table);
        let deadline = std::time::Instant::now() + NEIGHBOUR_RESOLVE_WAIT;
        while asked && links.len() < nodes.len() && std::time::Instant::now() < deadline {
            std::thread::sleep(NEIGHBOUR_RESOLVE_POLL);
            links = node_links(&nodes, &rtnl.neighbours()?);
        }
        for ip in nodes.iter().filter(|ip| !links.contains_key(ip)) {
            warn!(node_ip = %ip, "node not resolved on any interface: its pods are not SNATed here until it is (anti-spoofing)");
        }
        Ok(links)
    }

    fn run_rt(
        &mut self,
        rtnl: &mut Rtnl,
        ops: &[RtOp],
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        for op in ops {
            if let (RtOp::AddAddress { ip, ifname, .. }, Some(gate)) = (op, &self.cfg.address_gate)
                && !gate.is_open(std::time::Instant::now())
            {
                warn!(ip = %ip, interface = %ifname, "not adding the egress IP now: no recent lease renewal or confirmed outage hold to bound its lifetime");
                report.addresses_held_back.push(IpAddr::V4(*ip));
                continue;
            }
            rtnl.apply(op)?;
            match op {
                RtOp::AddAddress { ip, ifname, .. } => {
                    info!(ip = %ip, interface = %ifname, "egress IP added");
                    self.record.added(*ip);
                    self.publish_record();
                    report.addresses_added.push(IpAddr::V4(*ip));
                }
                RtOp::DelAddress { ip, ifname, .. } => {
                    info!(ip = %ip, interface = %ifname, "egress IP removed");
                    report.addresses_removed.push(IpAddr::V4(*ip));
                }
                other => {
                    debug!(op = ?other, "routing change");
                    report.routing_changes += 1;
                    if matches!(other, RtOp::ReplaceRoute(_) | RtOp::DelRoute(_)) {
                        report.route_changes += 1;
                    }
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
        self.kernel_parts = None;
        self.apply(&NodePlan::empty("cleanup"))
    }

    /// Counters of our rules, read from the kernel now.
    pub fn counters(&mut self) -> Result<Vec<RuleCounter>, DataplaneError> {
        let mut nfnl = open_nfnl(&self.drift.own)?;
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
                RuleSpec::SpoofRoute { gid, .. } | RuleSpec::SpoofNode { gid, .. } => {
                    (name(gid), CounterKind::SpoofDropped)
                }
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
        let mut nfnl = open_nfnl(&self.drift.own)?;
        let table = read_table(&mut nfnl)?;
        if let Some(t) = &table {
            self.record.recover(&t.hosted());
            self.publish_record();
        }
        self.kernel_parts = Some(TableParts::of(table.as_ref()));
        self.cached = Some(table.clone());
        let mut routing = open_rtnl(&self.drift.own)?.read(&self.cfg)?;
        let owned: Vec<_> = self.record.owned(&routing).into_iter().cloned().collect();
        routing.addresses = owned;
        Ok(KernelSnapshot { table, routing })
    }
}
