//! Self-healing: the agent's side of drift repair. The dataplane's drift monitor reports
//! changes to our kernel objects made by someone else; a periodic full read-and-diff is the
//! safety net for lost events. Either one, debounced, wakes the apply loop, which re-applies
//! the current plan against what the kernel really holds (see [`DriftRepairs::take`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, info, warn};

use crate::dataplane::drift_events::DriftCause;
use crate::dataplane::drift_watch::DriftShared;
use crate::dataplane::{ApplyReport, DataplaneError, KernelDataplane};
use crate::telemetry::metrics::{AgentMetrics, label};

/// Events arriving within this long of the first one are repaired together.
pub const DRIFT_DEBOUNCE: Duration = Duration::from_millis(10);
/// Default period of the full read-and-diff (`--drift-check-ms`).
pub const DEFAULT_DRIFT_CHECK: Duration = Duration::from_secs(30);
/// The `kind` label of a repair the periodic check found.
pub const PERIODIC_KIND: &str = "periodic";

/// Drift causes waiting for the apply loop.
#[derive(Clone, Debug, Default)]
pub struct DriftRepairs {
    pending: Arc<Mutex<BTreeSet<DriftCause>>>,
}

impl DriftRepairs {
    /// Starts the drift monitor of `dp` and the periodic check; each debounced batch of
    /// causes is queued and `wake` notified.
    pub fn start(
        dp: &Mutex<KernelDataplane>,
        wake: Arc<Notify>,
        period: Duration,
    ) -> Result<Self, DataplaneError> {
        let (events, shared) = {
            let d = dp.lock().expect("dataplane lock");
            (d.watch_drift()?, d.drift_shared())
        };
        let repairs = Self::default();
        tokio::spawn(repairs.clone().run(Some(events), shared, wake, period));
        Ok(repairs)
    }

    async fn run(
        self,
        mut events: Option<UnboundedReceiver<DriftCause>>,
        shared: DriftShared,
        wake: Arc<Notify>,
        period: Duration,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: the first apply reads everything
        loop {
            let event = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                cause = event => match cause {
                    Some(c) => c,
                    None => {
                        warn!("drift monitor stopped: only the periodic check repairs drift now");
                        events = None;
                        continue;
                    }
                },
                _ = tick.tick() => {
                    shared.mark(DriftCause::Periodic);
                    DriftCause::Periodic
                }
            };
            let mut batch = BTreeSet::from([first]);
            if let (Some(rx), false) = (events.as_mut(), first == DriftCause::Periodic) {
                tokio::time::sleep(DRIFT_DEBOUNCE).await;
                while let Ok(c) = rx.try_recv() {
                    batch.insert(c);
                }
            }
            debug!(causes = ?batch, "drift: waking the apply loop");
            self.pending.lock().expect("drift lock").extend(batch);
            wake.notify_one();
        }
    }

    /// The causes queued since the last call (empty: nothing to repair).
    pub fn take(&self) -> BTreeSet<DriftCause> {
        std::mem::take(&mut *self.pending.lock().expect("drift lock"))
    }
}

/// The `kind` labels a repair counts under: what the apply changed, or `periodic` when only
/// the periodic check caught it. Empty when nothing was repaired (the kernel was on plan).
pub fn repair_kinds(causes: &BTreeSet<DriftCause>, report: &ApplyReport) -> Vec<&'static str> {
    let changed = report.changed_kinds();
    if causes.is_empty() || changed.is_empty() {
        return Vec::new();
    }
    if causes.iter().all(|c| *c == DriftCause::Periodic) {
        return vec![PERIODIC_KIND];
    }
    changed.into_iter().map(|k| k.label()).collect()
}

/// Counts and logs the repair an apply that followed drift made.
pub fn record_repair(
    metrics: &AgentMetrics,
    causes: &BTreeSet<DriftCause>,
    report: &ApplyReport,
    latency: Duration,
) {
    let kinds = repair_kinds(causes, report);
    if kinds.is_empty() {
        if !causes.is_empty() {
            debug!(causes = ?causes, "drift check: the kernel is on plan");
        }
        return;
    }
    for k in &kinds {
        metrics.drift_repairs.get_or_create(&label("kind", k)).inc();
    }
    info!(causes = ?causes, repaired = ?kinds, latency_ms = latency.as_secs_f64() * 1e3,
        "drift repaired: the kernel is back on plan");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_count_by_what_changed_and_periodic_finds_count_as_periodic() {
        let changed = ApplyReport {
            nft_messages: 4,
            addresses_added: vec!["198.18.0.200".parse().unwrap()],
            ..ApplyReport::default()
        };
        let events = BTreeSet::from([DriftCause::Nft, DriftCause::Address]);
        assert_eq!(repair_kinds(&events, &changed), ["nft", "address"]);
        let periodic = BTreeSet::from([DriftCause::Periodic]);
        assert_eq!(repair_kinds(&periodic, &changed), [PERIODIC_KIND]);
        // our own commit echoed back, or a check that found the kernel on plan: no repair
        assert!(repair_kinds(&events, &ApplyReport::default()).is_empty());
        assert!(repair_kinds(&BTreeSet::new(), &changed).is_empty());
    }
}
