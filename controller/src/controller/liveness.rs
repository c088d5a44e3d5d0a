//! Agent liveness as the controller observes it: an agent is alive while its Lease changed
//! less than `takeover` ago **by the controller's own monotonic clock**. Renew times written
//! by the agent are never compared with the controller's clock.
//!
//! The controller never takes its own blindness for the agents' death:
//! - an agent whose Lease has not changed in time is dead only when the watch demonstrably
//!   still delivers renewals — some other agent's Lease changed at least one renewal interval
//!   (plus [`EVIDENCE_SLACK`]) after this agent's last change. A stalled or broken Lease watch
//!   delivers nothing, so nobody dies;
//! - when more than half of the known agents (and at least [`MASS_SILENCE_MIN`]) are past
//!   their deadline at once, it is the control plane's trouble more likely than theirs: failover freezes, as the
//!   node lifecycle controller's full-disruption mode does, until their renewals are seen.
//! - when an agent past its deadline renews again, or a renewal ends such a freeze, every
//!   agent gets a full takeover from that moment: after an apiserver outage the agents (which
//!   kept their IPs, see `agent::peers`) renew again before anyone is judged. Idle agents'
//!   slow renewals are not returns, so a node whose agent died is still judged while only
//!   idle agents renew.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How much later than an agent's next renewal another agent's Lease change must be
/// observed before the agent's silence counts (watch delivery jitter).
pub const EVIDENCE_SLACK: Duration = Duration::from_millis(300);
/// The fewest silent agents that can freeze failover: two gateway nodes of a small cluster
/// dying together still fail over to the third (what the node lifecycle controller also does
/// below its large-cluster threshold is stop evicting; egressgw keeps moving IPs there).
pub const MASS_SILENCE_MIN: usize = 3;
/// The renewal interval assumed for an agent that does not say its own.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(500);

/// One agent as observed.
#[derive(Debug, Clone)]
struct Seen {
    version: String,
    /// When this version was first observed.
    since: Instant,
    /// How long after `since` the agent counts as dead.
    deadline: Duration,
    /// Its renewal interval.
    interval: Duration,
}

/// Why the controller does not judge agents right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blind {
    /// More than half of the agents (at least [`MASS_SILENCE_MIN`]) are past their deadline
    /// at once.
    MassSilence { silent: usize, known: usize },
}

/// Per node, the Lease version last seen, when it was first seen, and how long after that
/// the agent counts as dead (the takeover, or longer for an idle agent).
#[derive(Debug)]
pub struct AgentLiveness {
    takeover: Duration,
    seen: HashMap<String, Seen>,
    /// When any agent's Lease last changed (the watch is delivering).
    last_event: Option<Instant>,
    /// When renewals resumed after a quiet watch or a freeze: deadlines count from here.
    resumed: Option<Instant>,
}

impl AgentLiveness {
    pub fn new(takeover: Duration) -> Self {
        Self {
            takeover,
            seen: HashMap::new(),
            last_event: None,
            resumed: None,
        }
    }

    /// Record a Lease version for `node` seen at `now`, with the agent's deadline
    /// ([`AgentReport::deadline`](crate::k8s::lease::AgentReport::deadline)); `None`: the
    /// takeover.
    pub fn observe(&mut self, node: &str, version: &str, deadline: Option<Duration>, now: Instant) {
        self.observe_with(node, version, deadline, None, now);
    }

    /// [`Self::observe`], with the agent's renewal interval.
    pub fn observe_with(
        &mut self,
        node: &str,
        version: &str,
        deadline: Option<Duration>,
        interval: Option<Duration>,
        now: Instant,
    ) {
        let deadline = deadline.unwrap_or(self.takeover).max(self.takeover);
        let interval = interval.unwrap_or(DEFAULT_RENEW_INTERVAL);
        if let Some(s) = self.seen.get_mut(node)
            && s.version == version
        {
            s.deadline = deadline;
            s.interval = interval;
            return;
        }
        // An agent renewing after it was past its deadline: renewals flow again after an
        // outage (its own, or everyone's).
        let returned = self.seen.get(node).is_some_and(|s| {
            let from = self.resumed.map_or(s.since, |r| r.max(s.since));
            now.saturating_duration_since(from) >= s.deadline
        });
        let was_blind = self.blind(now).is_some();
        self.seen.insert(
            node.to_string(),
            Seen {
                version: version.to_string(),
                since: now,
                deadline,
                interval,
            },
        );
        self.last_event = Some(self.last_event.map_or(now, |e| e.max(now)));
        // Renewals resume (an agent returns from silence), or this one ends a freeze.
        if returned || (was_blind && self.blind(now).is_none()) {
            self.resumed = Some(now);
        }
    }

    /// Whether `s` is past its deadline at `now` with evidence that the watch still
    /// delivers other renewals.
    fn silent(&self, s: &Seen, now: Instant) -> bool {
        let from = self.resumed.map_or(s.since, |r| r.max(s.since));
        now.saturating_duration_since(from) >= s.deadline
            && self
                .last_event
                .is_some_and(|e| e >= s.since + s.interval + EVIDENCE_SLACK)
    }

    /// Whether failover is frozen at `now`, and why.
    pub fn blind(&self, now: Instant) -> Option<Blind> {
        let silent = self.seen.values().filter(|s| self.silent(s, now)).count();
        let known = self.seen.len();
        (silent >= MASS_SILENCE_MIN && silent * 2 > known)
            .then_some(Blind::MassSilence { silent, known })
    }

    /// Agents past their deadline whose death still waits for evidence (the controller
    /// looks again soon).
    fn undecided(&self, now: Instant) -> bool {
        self.seen.values().any(|s| {
            let from = self.resumed.map_or(s.since, |r| r.max(s.since));
            now.saturating_duration_since(from) >= s.deadline && !self.silent(s, now)
        })
    }

    /// The agent's Lease is gone.
    pub fn forget(&mut self, node: &str) {
        self.seen.remove(node);
    }

    /// When the controller last saw `node`'s Lease change.
    pub fn last_change(&self, node: &str) -> Option<Instant> {
        self.seen.get(node).map(|s| s.since)
    }

    /// Whether `node`'s agent counts as alive at `now`: renewed in time, or silent without
    /// evidence, or silent while failover is frozen ([`Self::blind`]).
    pub fn alive(&self, node: &str, now: Instant) -> bool {
        self.seen
            .get(node)
            .is_some_and(|s| !self.silent(s, now) || self.blind(now).is_some())
    }

    /// The earliest moment after `now` at which an agent alive now may turn dead (soon, when
    /// one past its deadline waits for evidence).
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        let deadlines = self
            .seen
            .values()
            .map(|s| self.resumed.map_or(s.since, |r| r.max(s.since)) + s.deadline)
            .filter(|t| *t > now)
            .min();
        if self.undecided(now) {
            let soon = now + EVIDENCE_POLL;
            return Some(deadlines.map_or(soon, |d| d.min(soon)));
        }
        deadlines
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

/// How often an undecided agent is looked at again.
pub const EVIDENCE_POLL: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Agents a, b, c renewing every 500 ms from t0 until `until` (a until `a_until`).
    fn renewing(l: &mut AgentLiveness, t0: Instant, a_until: u64, until: u64) {
        let mut v = 0;
        for t in (0..=until).step_by(500) {
            v += 1;
            for n in ["a", "b", "c"] {
                if n != "a" || t <= a_until {
                    l.observe(n, &format!("{n}{v}"), None, t0 + ms(t));
                }
            }
        }
    }

    #[test]
    fn a_silent_agent_dies_at_the_takeover_while_the_others_renew() {
        let t0 = Instant::now();
        let mut l = AgentLiveness::new(ms(1600));
        renewing(&mut l, t0, 1000, 3000);
        assert!(l.alive("a", t0 + ms(2599)));
        assert!(!l.alive("a", t0 + ms(2600)), "dead at its takeover");
        assert!(l.alive("b", t0 + ms(3000)) && l.blind(t0 + ms(3000)).is_none());
    }

    #[test]
    fn a_stalled_watch_kills_nobody() {
        let t0 = Instant::now();
        let mut l = AgentLiveness::new(ms(1600));
        renewing(&mut l, t0, 1000, 1000); // the watch stops delivering at 1.0 s
        for t in [2600, 5000, 60_000] {
            for n in ["a", "b", "c"] {
                assert!(l.alive(n, t0 + ms(t)), "{n} at {t} ms");
            }
        }
        // the watch comes back: fresh renewals, still everyone alive
        l.observe("a", "a-new", None, t0 + ms(60_100));
        assert!(l.alive("a", t0 + ms(60_100)));
    }

    #[test]
    fn most_agents_silent_at_once_freezes_failover() {
        let t0 = Instant::now();
        let mut l = AgentLiveness::new(ms(1600));
        // a, b and c stop at 1.0 s, d keeps renewing (the watch delivers d only)
        let mut v = 0;
        for t in (0..=10_000).step_by(500) {
            v += 1;
            for n in ["a", "b", "c", "d"] {
                if n == "d" || t <= 1000 {
                    l.observe(n, &format!("{n}{v}"), None, t0 + ms(t));
                }
            }
        }
        let now = t0 + ms(10_000);
        assert_eq!(
            l.blind(now),
            Some(Blind::MassSilence {
                silent: 3,
                known: 4
            })
        );
        assert!(
            l.alive("a", now) && l.alive("b", now),
            "frozen: nobody moves"
        );
    }

    #[test]
    fn two_of_three_dying_together_still_fail_over() {
        let t0 = Instant::now();
        let mut l = AgentLiveness::new(ms(1600));
        let mut v = 0;
        for t in (0..=10_000).step_by(500) {
            v += 1;
            for n in ["a", "b", "c"] {
                if n == "c" || t <= 1000 {
                    l.observe(n, &format!("{n}{v}"), None, t0 + ms(t));
                }
            }
        }
        let now = t0 + ms(10_000);
        assert_eq!(l.blind(now), None);
        assert!(!l.alive("a", now) && !l.alive("b", now) && l.alive("c", now));
    }

    #[test]
    fn an_undecided_agent_is_looked_at_again_soon() {
        let t0 = Instant::now();
        let mut l = AgentLiveness::new(ms(1600));
        l.observe("a", "1", None, t0);
        l.observe("b", "1", None, t0);
        let now = t0 + ms(1700);
        assert!(l.alive("a", now), "no evidence: alive");
        assert_eq!(l.next_expiry(now), Some(now + EVIDENCE_POLL));
    }

    /// A witness agent "w" renewing every 500 ms from `t0` for `until` ms: the watch delivers.
    fn witness(l: &mut AgentLiveness, t0: Instant, until: u64) {
        for t in (0..=until).step_by(500) {
            l.observe("w", &format!("w{t}"), None, t0 + ms(t));
        }
    }

    #[test]
    fn an_agent_dies_a_takeover_after_its_last_observed_change() {
        let t0 = Instant::now();
        let mut l = AgentLiveness::new(ms(1600));
        assert!(!l.alive("a", t0), "never seen");
        l.observe("a", "1", None, t0);
        witness(&mut l, t0, 1600);
        assert!(l.alive("a", t0 + ms(1500)));
        l.observe("a", "1", None, t0 + ms(1500));
        assert!(
            !l.alive("a", t0 + ms(1600)),
            "the same version seen again is no heartbeat"
        );
        l.observe("a", "2", None, t0 + ms(1700));
        assert!(l.alive("a", t0 + ms(3000)));
        assert_eq!(
            l.alive_set(t0 + ms(3000)),
            vec!["a".to_string(), "w".to_string()]
        );
        l.forget("a");
        assert_eq!(l.alive_set(t0 + ms(3000)), vec!["w".to_string()]);
    }

    #[test]
    fn an_idle_agent_lives_for_its_own_deadline_never_less_than_the_takeover() {
        let t0 = Instant::now();
        let mut l = AgentLiveness::new(ms(1600));
        l.observe("idle", "1", Some(ms(15000)), t0);
        l.observe("short", "1", Some(ms(100)), t0);
        witness(&mut l, t0, 16_000);
        assert!(
            l.alive("short", t0 + ms(1500)),
            "nobody is judged faster than the takeover"
        );
        l.forget("short");
        assert!(l.alive("idle", t0 + ms(14000)) && !l.alive("idle", t0 + ms(15000)));
        // Back at the hosting cadence: the same version, now held to the takeover.
        l.observe("idle", "1", None, t0 + ms(2000));
        assert!(!l.alive("idle", t0 + ms(2000)));
    }

    #[test]
    fn after_a_quiet_watch_every_agent_gets_a_full_takeover_to_renew() {
        let t0 = Instant::now();
        let mut l = AgentLiveness::new(ms(1600));
        renewing(&mut l, t0, 1000, 1000);
        // The apiserver is down 60 s; then b renews first, a and c a moment later.
        l.observe("b", "b-back", None, t0 + ms(61_000));
        let now = t0 + ms(61_000);
        assert!(
            l.alive("a", now + ms(1500)) && l.alive("c", now + ms(1500)),
            "not judged on b's first renewal: they get a takeover from it"
        );
        l.observe("a", "a-back", None, now + ms(400));
        l.observe("b", "b-again", None, now + ms(500));
        assert!(l.alive("a", now + ms(1700)));
        assert!(
            !l.alive("c", now + ms(1700)),
            "still silent a takeover after renewals resumed: dead"
        );
    }

    #[test]
    fn the_end_of_a_freeze_gives_the_still_silent_a_full_takeover() {
        let t0 = Instant::now();
        let mut l = AgentLiveness::new(ms(1600));
        let mut v = 0;
        for t in (0..=10_000).step_by(500) {
            v += 1;
            for n in ["a", "b", "c", "d"] {
                if n == "d" || t <= 1000 {
                    l.observe(n, &format!("{n}{v}"), None, t0 + ms(t));
                }
            }
        }
        assert!(l.blind(t0 + ms(10_000)).is_some());
        // a renews: two silent of four, the freeze ends, b and c get a takeover from here.
        let back = t0 + ms(10_100);
        l.observe("a", "a-back", None, back);
        assert_eq!(l.blind(back), None);
        assert!(l.alive("b", back + ms(1500)) && l.alive("c", back + ms(1500)));
        l.observe("d", "d-more", None, back + ms(400));
        assert!(!l.alive("b", back + ms(1600)), "then judged as usual");
    }

    #[test]
    fn idle_witnesses_renewing_slowly_do_not_postpone_a_death() {
        let t0 = Instant::now();
        let mut l = AgentLiveness::new(ms(1600));
        l.observe("hosting", "h1", None, t0);
        for (i, t) in (0..=20_000).step_by(5000).enumerate() {
            l.observe_with(
                "idle",
                &format!("i{i}"),
                Some(ms(15_000)),
                Some(ms(5000)),
                t0 + ms(t),
            );
        }
        assert!(
            !l.alive("hosting", t0 + ms(6000)),
            "dead once the idle agent's renewal shows the watch delivers"
        );
    }
}
