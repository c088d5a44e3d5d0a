//! A [`Dataplane`] that records what it is asked to do, for testing the agent runtime.

use std::sync::{Arc, Mutex};

use super::Dataplane;
use super::error::DataplaneError;
use super::report::{ApplyReport, RuleCounter};
use crate::plan::NodePlan;

/// One call the fake received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Apply(NodePlan),
    Cleanup,
    Counters,
}

/// Records calls; applies succeed (reporting a change only when the plan differs from the
/// last one) unless a failure is queued with [`RecordingDataplane::fail_next`].
#[derive(Clone, Debug, Default)]
pub struct RecordingDataplane {
    calls: Arc<Mutex<Vec<Call>>>,
    fail_next: Arc<Mutex<Option<String>>>,
    last: Arc<Mutex<Option<NodePlan>>>,
}

impl RecordingDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// The calls so far (the fake is `Clone`; clones share the record).
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("poisoned").clone()
    }

    /// The plan of the last successful apply.
    pub fn last_plan(&self) -> Option<NodePlan> {
        self.last.lock().expect("poisoned").clone()
    }

    /// Makes the next call fail with a kernel error carrying `message`.
    pub fn fail_next(&self, message: impl Into<String>) {
        *self.fail_next.lock().expect("poisoned") = Some(message.into());
    }

    fn record(&self, call: Call) -> Result<(), DataplaneError> {
        self.calls.lock().expect("poisoned").push(call);
        match self.fail_next.lock().expect("poisoned").take() {
            Some(m) => Err(DataplaneError::kernel(
                "fake",
                "recording dataplane",
                std::io::Error::other(m),
            )),
            None => Ok(()),
        }
    }
}

impl Dataplane for RecordingDataplane {
    fn apply(&mut self, plan: &NodePlan) -> Result<ApplyReport, DataplaneError> {
        self.record(Call::Apply(plan.clone()))?;
        let mut last = self.last.lock().expect("poisoned");
        let changed = last.as_ref() != Some(plan);
        *last = Some(plan.clone());
        Ok(ApplyReport {
            nft_messages: usize::from(changed),
            ..ApplyReport::default()
        })
    }

    fn cleanup(&mut self) -> Result<ApplyReport, DataplaneError> {
        self.record(Call::Cleanup)?;
        *self.last.lock().expect("poisoned") = None;
        Ok(ApplyReport::default())
    }

    fn counters(&mut self) -> Result<Vec<RuleCounter>, DataplaneError> {
        self.record(Call::Counters)?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_calls_and_reports_changes_and_failures() {
        let mut fake = RecordingDataplane::new();
        let plan = NodePlan::empty("n");
        assert_eq!(fake.apply(&plan).unwrap().nft_messages, 1);
        assert!(fake.apply(&plan).unwrap().is_noop());
        fake.fail_next("boom");
        assert!(fake.cleanup().is_err());
        assert_eq!(
            fake.calls(),
            [Call::Apply(plan.clone()), Call::Apply(plan), Call::Cleanup]
        );
    }
}
