//! Prometheus metrics of the controller and the agent.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels `gateway=…` (and more), as ordered pairs.
pub type Labels = Vec<(String, String)>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The controller's metrics.
#[derive(Clone)]
pub struct ControllerMetrics {
    pub reconcile_duration: Histogram,
    pub egress_ips_placed: Gauge,
    pub egress_ips_unplaced: Gauge,
    pub status_writes: Counter,
    pub status_write_duration: Histogram,
    pub failovers: Counter,
    pub failover_duration: Histogram,
    pub is_leader: Gauge,
}

impl ControllerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconcile_duration: latency_histogram(),
            egress_ips_placed: Gauge::default(),
            egress_ips_unplaced: Gauge::default(),
            status_writes: Counter::default(),
            status_write_duration: latency_histogram(),
            failovers: Counter::default(),
            failover_duration: latency_histogram(),
            is_leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("egressgw_controller");
        r.register(
            "reconcile_duration_seconds",
            "Time to plan the cluster and hand changed statuses to the writer",
            m.reconcile_duration.clone(),
        );
        r.register(
            "egress_ips_placed",
            "Egress IPs hosted by a node",
            m.egress_ips_placed.clone(),
        );
        r.register(
            "egress_ips_unplaced",
            "Egress IPs without an eligible node (their pods' traffic is dropped)",
            m.egress_ips_unplaced.clone(),
        );
        r.register(
            "status_writes",
            "Gateway status updates written",
            m.status_writes.clone(),
        );
        r.register(
            "status_write_duration_seconds",
            "Round trip of one gateway status write",
            m.status_write_duration.clone(),
        );
        r.register(
            "failovers",
            "Egress IPs moved away from a node whose agent stopped renewing its lease",
            m.failovers.clone(),
        );
        r.register(
            "failover_duration_seconds",
            "From the dead agent's last observed heartbeat to the status that moves its IP",
            m.failover_duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica is the leader",
            m.is_leader.clone(),
        );
        m
    }
}

/// The agent's metrics.
#[derive(Clone)]
pub struct AgentMetrics {
    pub program_latency: Histogram,
    pub applies: Family<Labels, Counter>,
    pub set_entries: Family<Labels, Gauge>,
    pub snat_packets: Family<Labels, Gauge>,
    pub snat_bytes: Family<Labels, Gauge>,
    /// Packets of guarded pods dropped on this node rather than leaving unSNATed (the no-leak
    /// rule and the blocks), per gateway.
    pub leak_dropped_packets: Family<Labels, Gauge>,
    /// Packets with a SNATed pod's source that did not come from where that pod is (its veth,
    /// or its node), dropped by the anti-spoofing rules, per gateway.
    pub spoof_dropped_packets: Family<Labels, Gauge>,
    pub garps_sent: Counter,
    pub conntrack_deleted: Counter,
    pub hosted_ips: Gauge,
    pub fenced: Gauge,
    pub fences: Counter,
    pub lease_renewals: Family<Labels, Counter>,
    pub pods_held: Gauge,
    pub pod_watches: Gauge,
    pub heap_bytes: Gauge,
    pub lease_renewal_duration: Histogram,
    pub outage_hold: Gauge,
    pub acquire_waits: Counter,
    /// Repairs that changed the kernel after drift, by `kind` (nft, route, rule, address,
    /// periodic).
    pub drift_repairs: Family<Labels, Counter>,
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            program_latency: latency_histogram(),
            applies: Family::default(),
            set_entries: Family::default(),
            snat_packets: Family::default(),
            snat_bytes: Family::default(),
            leak_dropped_packets: Family::default(),
            spoof_dropped_packets: Family::default(),
            garps_sent: Counter::default(),
            conntrack_deleted: Counter::default(),
            hosted_ips: Gauge::default(),
            fenced: Gauge::default(),
            fences: Counter::default(),
            lease_renewals: Family::default(),
            pods_held: Gauge::default(),
            pod_watches: Gauge::default(),
            heap_bytes: Gauge::default(),
            lease_renewal_duration: latency_histogram(),
            outage_hold: Gauge::default(),
            acquire_waits: Counter::default(),
            drift_repairs: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("egressgw_agent");
        r.register(
            "outage_hold",
            "1 while the agent keeps its egress IPs without fresh Lease renewals because every peer confirms the control plane is down or slow for everyone",
            m.outage_hold.clone(),
        );
        r.register(
            "acquire_waits",
            "Times the agent postponed adding an egress IP (it was cut off itself moments ago, or a peer still holds the IP)",
            m.acquire_waits.clone(),
        );
        r.register(
            "drift_repairs",
            "Repairs that brought the kernel back on plan after someone else changed our objects, by kind (nft, route, rule, address; periodic: found by the periodic check)",
            m.drift_repairs.clone(),
        );
        r.register(
            "program_latency_seconds",
            "From the first input change the agent saw to the kernel commit that includes it",
            m.program_latency.clone(),
        );
        r.register("applies", "Dataplane applies by result", m.applies.clone());
        r.register(
            "set_entries",
            "Pod IPs programmed, by gateway and role (snat, steer, blocked, guard)",
            m.set_entries.clone(),
        );
        r.register(
            "snat_packets",
            "Packets SNATed to an egress IP, by gateway (nftables counters)",
            m.snat_packets.clone(),
        );
        r.register(
            "snat_bytes",
            "Bytes SNATed to an egress IP, by gateway (nftables counters)",
            m.snat_bytes.clone(),
        );
        r.register(
            "leak_dropped_packets",
            "Packets of guarded pods dropped rather than leaving unSNATed (no-leak rule and blocks), by gateway",
            m.leak_dropped_packets.clone(),
        );
        r.register(
            "spoof_dropped_packets",
            "Packets with a SNATed pod's source address that did not come from that pod's veth or node, dropped on the gateway node (anti-spoofing), by gateway",
            m.spoof_dropped_packets.clone(),
        );
        r.register(
            "gratuitous_arps_sent",
            "Gratuitous ARP packets sent",
            m.garps_sent.clone(),
        );
        r.register(
            "conntrack_entries_deleted",
            "Conntrack entries deleted for pods that left a gateway or moved",
            m.conntrack_deleted.clone(),
        );
        r.register(
            "hosted_egress_ips",
            "Egress IPs on this node now",
            m.hosted_ips.clone(),
        );
        r.register(
            "fenced",
            "1 while the agent has dropped its egress IPs for lack of lease renewals",
            m.fenced.clone(),
        );
        r.register("fences", "Times the agent fenced itself", m.fences.clone());
        r.register(
            "lease_renewals",
            "Lease renewals by result",
            m.lease_renewals.clone(),
        );
        r.register(
            "lease_renewal_duration_seconds",
            "Round trip of successful Lease renewals (over --refresh-window-ms: lifetimes not extended; over --fence-ms: fenced)",
            m.lease_renewal_duration.clone(),
        );
        r.register(
            "pods_held",
            "Pods the agent holds (its own, and those of gateways it hosts or may host), each once",
            m.pods_held.clone(),
        );
        r.register("heap_bytes", "Live heap as the allocator counts it (resident size minus this is code, stacks and free memory)", m.heap_bytes.clone());
        r.register(
            "pod_watches",
            "Pod watches of hosted or candidate gateways (one per selector and namespace scope)",
            m.pod_watches.clone(),
        );
        m
    }
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// A single-label set.
pub fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}
