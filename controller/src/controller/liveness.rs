//! Agent liveness as the controller observes it: an agent is alive while its Lease changed
//! less than `takeover` ago **by the controller's own monotonic clock**. Renew times written
//! by the agent are never compared with the controller's clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Per node, the Lease version last seen, when it was first seen, and how long after that
/// the agent counts as dead (the takeover, or longer for an idle agent).
#[derive(Debug)]
pub struct AgentLiveness {
    takeover: Duration,
    seen: HashMap<String, (String, Instant, Duration)>,
}

impl AgentLiveness {
    pub fn new(takeover: Duration) -> Self {
        Self {
            takeover,
            seen: HashMap::new(),
        }
    }

    /// Record a Lease version for `node` seen at `now`, with the agent's deadline
    /// ([`AgentReport::deadline`](crate::k8s::lease::AgentReport::deadline)); `None`: the
    /// takeover.
    pub fn observe(&mut self, node: &str, version: &str, deadline: Option<Duration>, now: Instant) {
        let deadline = deadline.unwrap_or(self.takeover).max(self.takeover);
        match self.seen.get_mut(node) {
            Some((v, _, d)) if v == version => *d = deadline,
            Some(entry) => *entry = (version.to_string(), now, deadline),
            None => {
                self.seen
                    .insert(node.to_string(), (version.to_string(), now, deadline));
            }
        }
    }

    /// The agent's Lease is gone.
    pub fn forget(&mut self, node: &str) {
        self.seen.remove(node);
    }

    /// When the controller last saw `node`'s Lease change.
    pub fn last_change(&self, node: &str) -> Option<Instant> {
        self.seen.get(node).map(|(_, t, _)| *t)
    }

    pub fn alive(&self, node: &str, now: Instant) -> bool {
        self.seen
            .get(node)
            .is_some_and(|(_, t, d)| now.duration_since(*t) < *d)
    }

    /// The earliest moment after `now` at which an agent alive now turns dead.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.seen
            .values()
            .map(|(_, t, d)| *t + *d)
            .filter(|t| *t > now)
            .min()
    }

    /// The nodes alive at `now` (sorted), to detect when the set changes.
    pub fn alive_set(&self, now: Instant) -> Vec<String> {
        let mut v: Vec<String> = self
            .seen
            .keys()
            .filter(|n| self.alive(n, now))
            .cloned()
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_dies_a_takeover_after_its_last_observed_change() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = AgentLiveness::new(ms(1600));
        assert!(!l.alive("a", t0), "never seen");
        l.observe("a", "1", None, t0);
        assert!(l.alive("a", t0 + ms(1500)));
        l.observe("a", "1", None, t0 + ms(1500));
        assert!(
            !l.alive("a", t0 + ms(1600)),
            "the same version seen again is no heartbeat"
        );
        l.observe("a", "2", None, t0 + ms(1700));
        assert!(l.alive("a", t0 + ms(3000)));
        assert_eq!(l.alive_set(t0 + ms(3000)), vec!["a".to_string()]);
        assert_eq!(l.next_expiry(t0 + ms(3000)), Some(t0 + ms(1700) + ms(1600)));
        l.forget("a");
        assert!(l.alive_set(t0 + ms(3000)).is_empty());
    }

    #[test]
    fn an_idle_agent_lives_for_its_own_deadline_never_less_than_the_takeover() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = AgentLiveness::new(ms(1600));
        l.observe("idle", "1", Some(ms(15000)), t0);
        l.observe("short", "1", Some(ms(100)), t0);
        assert!(l.alive("idle", t0 + ms(14000)) && !l.alive("idle", t0 + ms(15000)));
        assert!(
            l.alive("short", t0 + ms(1500)),
            "nobody is judged faster than the takeover"
        );
        assert_eq!(l.next_expiry(t0 + ms(2000)), Some(t0 + ms(15000)));
        // Back at the hosting cadence: the same version, now held to the takeover.
        l.observe("idle", "1", None, t0 + ms(2000));
        assert!(!l.alive("idle", t0 + ms(2000)));
    }
}
