//! Riding out control-plane outages (DESIGN.md, "Invariants", 3): the agent's side of the
//! peer rules in [`super::peers::book`].
//!
//! - [`hold_loop`]: while this agent cannot extend its addresses on its own renewals and
//!   every peer confirms it is cut off too, the addresses are extended on the strength of
//!   those answers, on the lifetime thread, and only before the answers expire.
//! - [`gate_acquisitions`]: an egress IP this node does not hold yet is added only when the
//!   acquire rule allows; until then it stays out of the plan and the loop looks again.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Shared;
use super::lifetimes::Lifetimes;
use super::peers::{PING_EVERY_HOLD, Peers, Wait};
use crate::plan::NodePlan;
use crate::telemetry::metrics::AgentMetrics;

/// At most one hold-based lifetime extension per this long (the lifetime is whole seconds).
pub const HOLD_REFRESH_EVERY: Duration = Duration::from_millis(400);

/// Keep the egress IPs of an agent that is cut off together with all its peers.
pub(super) async fn hold_loop(
    peers: Arc<OnceLock<Arc<Peers>>>,
    shared: Arc<Mutex<Shared>>,
    (lifetimes, gate): (Arc<Lifetimes>, crate::dataplane::config::AddressGate),
    apply: Arc<tokio::sync::Notify>,
    metrics: AgentMetrics,
) {
    let mut last_refresh: Option<Instant> = None;
    let mut holding = false;
    loop {
        let Some(p) = peers.get().cloned() else {
            tokio::time::sleep(PING_EVERY_HOLD).await;
            continue;
        };
        tokio::select! {
            _ = p.answered() => {}
            _ = tokio::time::sleep(PING_EVERY_HOLD) => {}
        }
        let now = Instant::now();
        let (degraded, fenced, idle, hosting) = {
            let s = shared.lock().expect("agent state lock");
            (
                s.fence.degraded(now),
                s.fence.is_fenced(),
                s.idle,
                !s.held.is_empty(),
            )
        };
        let wanted = degraded && !fenced && !idle && hosting;
        let verdict = wanted.then(|| p.hold(now));
        let now_holding = matches!(verdict, Some(Ok(_)));
        if now_holding != holding {
            if now_holding {
                warn!(
                    "no fresh Lease renewal, and every peer confirms it has none either: the control plane is down or slow for everyone; keeping this node's egress IPs"
                );
            } else if let Some(Err(why)) = &verdict {
                warn!(reason = %why, "outage hold over: this node's egress IPs are extended on its own renewals only");
            } else {
                info!("outage hold over");
            }
            holding = now_holding;
            metrics.outage_hold.set(i64::from(holding));
        }
        let Some(Ok(valid_until)) = verdict else {
            continue;
        };
        if last_refresh.is_some_and(|t| now.duration_since(t) < HOLD_REFRESH_EVERY) {
            continue;
        }
        // Re-adding an address that lapsed is bounded like an extension.
        gate.open_until(valid_until);
        match lifetimes.refresh_by(valid_until).await {
            Ok(Some(n)) => {
                last_refresh = Some(now);
                let mut s = shared.lock().expect("agent state lock");
                if n < s.held.len() && !s.fence.is_fenced() {
                    // A lifetime ran out before the peers confirmed the outage: put the
                    // address back (the same bound holds: the hold is confirmed now).
                    s.needs_reapply = true;
                    apply.notify_one();
                }
            }
            Ok(None) => {
                warn!("the peers' answers expired before the lifetime extension: not extended")
            }
            Err(e) => warn!(error = %e, "cannot extend egress IP lifetimes"),
        }
    }
}

/// Drop from `plan` the egress IPs this node does not hold yet (`held`) and may not add now.
/// Returns when to look again, if anything was held back.
pub fn gate_acquisitions(
    plan: &mut NodePlan,
    held: &BTreeSet<IpAddr>,
    peers: &Peers,
    now: Instant,
    metrics: &AgentMetrics,
) -> Option<Instant> {
    let mut again: Option<Instant> = None;
    plan.hosted.retain(|ip, hosted| {
        let IpAddr::V4(v4) = ip else { return true };
        if held.contains(ip) {
            return true;
        }
        match peers.acquire(*v4, now) {
            Ok(()) => true,
            Err(wait) => {
                let retry = match &wait {
                    Wait::RecentlyCutOff { until } => *until,
                    Wait::HeldBy(_) => now + PING_EVERY_HOLD,
                };
                again = Some(again.map_or(retry, |a| a.min(retry)));
                metrics.acquire_waits.inc();
                match wait {
                    Wait::RecentlyCutOff { until } => info!(
                        egress_ip = %ip, gateway = %hosted.gateway,
                        wait_ms = until.saturating_duration_since(now).as_millis() as u64,
                        "not adding the egress IP yet: this node was cut off from the apiserver moments ago, and a peer may still hold the IP on the strength of that"
                    ),
                    Wait::HeldBy(peer) => info!(
                        egress_ip = %ip, gateway = %hosted.gateway, peer = %peer,
                        "not adding the egress IP yet: the peer still holds it"
                    ),
                }
                false
            }
        }
    });
    again
}
