//! Fencing: an agent that cannot renew its Lease drops its egress IPs before the controller
//! gives them to another node, so two nodes never answer for one IP.
//!
//! Every bound is a duration on one machine's monotonic clock, never a comparison of two
//! clocks. Let `t_send` be when the agent sent its last renewal that succeeded. The
//! controller observes that write at some `t_obs >= t_send` and takes over at
//! `t_obs + takeover`. The agent:
//! - removes its egress IPs itself at `t_send + fence_after` (while it runs);
//! - refreshes the kernel lifetime of its addresses (`valid_lft`) only right after a renewal
//!   whose round trip took at most `refresh_window`, so the kernel removes them by
//!   `t_send + refresh_window + lifetime + KERNEL_EXPIRY_SLACK` even if the agent is
//!   SIGKILLed, hung, or out of memory.
//!
//! [`FenceTiming::validate`] checks both bounds stay below `takeover`.

use std::time::{Duration, Instant};

/// The kernel checks address lifetimes on a timer rounded to whole seconds, with up to this
/// much delay (net/ipv4/devinet.c: `ADDRCONF_TIMER_FUZZ` is HZ/4).
pub const KERNEL_EXPIRY_SLACK: Duration = Duration::from_millis(250);

/// The agent's timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceTiming {
    pub renew_interval: Duration,
    /// Self-fence when no renewal sent this long ago has succeeded.
    pub fence_after: Duration,
    /// Refresh address lifetimes only after renewals that completed within this.
    pub refresh_window: Duration,
    /// `valid_lft` of egress IPs, whole seconds (the kernel's unit).
    pub address_lifetime_secs: u32,
    /// Past `fence_after`, how long an agent whose peers may yet confirm an outage for
    /// everyone waits for them before it fences (see `agent::peers`).
    pub hold_grace: Duration,
}

impl Default for FenceTiming {
    fn default() -> Self {
        Self {
            renew_interval: Duration::from_millis(500),
            fence_after: Duration::from_millis(1000),
            refresh_window: Duration::from_millis(300),
            address_lifetime_secs: 1,
            hold_grace: Duration::from_millis(500),
        }
    }
}

impl FenceTiming {
    /// Without a fresh renewal sent this long ago the agent tells its peers it is cut off:
    /// it missed its last renewal's refresh window.
    pub fn cut_off_after(&self) -> Duration {
        self.renew_interval + self.refresh_window
    }

    /// The latest an address can outlive the agent's last successful renewal send.
    pub fn kernel_bound(&self) -> Duration {
        self.refresh_window
            + Duration::from_secs(u64::from(self.address_lifetime_secs))
            + KERNEL_EXPIRY_SLACK
    }

    /// Check against the controller's `takeover`; the message says which bound breaks.
    pub fn validate(&self, takeover: Duration) -> Result<(), String> {
        if self.address_lifetime_secs == 0 {
            return Err("address lifetime must be at least 1 s".into());
        }
        if self.renew_interval >= self.fence_after {
            return Err(format!(
                "renew interval {:?} must be shorter than the fencing deadline {:?}",
                self.renew_interval, self.fence_after
            ));
        }
        if self.fence_after + self.hold_grace >= takeover {
            return Err(format!(
                "fencing deadline {:?} (plus the {:?} the peers may take to confirm an outage) must be shorter than the takeover {:?}",
                self.fence_after, self.hold_grace, takeover
            ));
        }
        if self.kernel_bound() >= takeover {
            return Err(format!(
                "addresses may outlive the agent by {:?} (refresh window + lifetime + kernel slack), not shorter than the takeover {:?}",
                self.kernel_bound(),
                takeover
            ));
        }
        Ok(())
    }
}

/// What the peers say about fencing (`agent::peers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// No peer channel: fence on the deadline.
    Unavailable,
    /// Not (yet) confirmed: fence on the deadline plus the hold grace.
    Pending,
    /// Every peer confirms it is cut off too: do not fence.
    Confirmed,
}

/// What a renewal outcome means for the dataplane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewed {
    /// Extend the kernel lifetime of hosted addresses now.
    pub refresh_lifetimes: bool,
    /// The agent was fenced and may host again, under a new epoch.
    pub unfenced: bool,
}

/// The fencing state machine (pure; the caller passes the clock).
#[derive(Clone, Debug)]
pub struct FenceClock {
    timing: FenceTiming,
    last_success_sent: Option<Instant>,
    /// The send time of the last renewal that completed within the refresh window.
    last_fresh_sent: Option<Instant>,
    /// The send time of the first renewal that failed after the last success.
    first_failed_sent: Option<Instant>,
    /// When the peers last confirmed an outage for everyone (a hold counts as a renewal for
    /// the fencing deadline: when it ends, the agent gets a full deadline to renew).
    last_hold: Option<Instant>,
    fenced: bool,
}

impl FenceClock {
    /// A fresh agent is fenced until its first renewal succeeds.
    pub fn new(timing: FenceTiming) -> Self {
        Self {
            timing,
            last_success_sent: None,
            last_fresh_sent: None,
            first_failed_sent: None,
            last_hold: None,
            fenced: true,
        }
    }

    pub fn timing(&self) -> FenceTiming {
        self.timing
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// A renewal sent at `sent` failed.
    pub fn failed(&mut self, sent: Instant) {
        if self.first_failed_sent.is_none() && self.last_success_sent.is_none_or(|t| sent > t) {
            self.first_failed_sent = Some(sent);
        }
    }

    /// The send time of the first renewal that failed since the last success.
    pub fn first_failed_sent(&self) -> Option<Instant> {
        self.first_failed_sent
    }

    /// How long ago the last fresh renewal was sent (`None`: never).
    pub fn fresh_age(&self, now: Instant) -> Option<Duration> {
        self.last_fresh_sent
            .map(|t| now.saturating_duration_since(t))
    }

    /// A renewal sent at `sent` succeeded at `now`.
    pub fn renewed(&mut self, sent: Instant, now: Instant) -> Renewed {
        if self.last_success_sent.is_none_or(|t| sent > t) {
            self.last_success_sent = Some(sent);
            self.first_failed_sent = None;
        }
        let fresh = now.duration_since(sent) <= self.timing.refresh_window;
        if fresh && self.last_fresh_sent.is_none_or(|t| sent > t) {
            self.last_fresh_sent = Some(sent);
        }
        let unfenced = self.fenced && fresh;
        if unfenced {
            self.fenced = false;
        }
        Renewed {
            refresh_lifetimes: fresh && !self.fenced,
            unfenced,
        }
    }

    /// Whether the agent must fence now (it is not fenced yet and the deadline passed).
    /// Marks it fenced.
    pub fn check(&mut self, now: Instant) -> bool {
        self.check_holding(now, Hold::Unavailable)
    }

    /// [`Self::check`], with what the peers say (`agent::peers`): a confirmed outage for
    /// everyone keeps the agent unfenced past its deadline; one that may yet be confirmed
    /// (the peers miss renewals a little later than this node) gets [`FenceTiming::hold_grace`].
    pub fn check_holding(&mut self, now: Instant, hold: Hold) -> bool {
        if hold == Hold::Confirmed && !self.fenced {
            self.last_hold = Some(now);
        }
        if self.fenced || hold == Hold::Confirmed {
            return false;
        }
        let deadline = match hold {
            Hold::Pending => self.timing.fence_after + self.timing.hold_grace,
            _ => self.timing.fence_after,
        };
        let base = match (self.last_success_sent, self.last_hold) {
            (Some(s), Some(h)) => Some(s.max(h)),
            (s, h) => s.or(h),
        };
        let overdue = base.is_none_or(|t| now.duration_since(t) >= deadline);
        if overdue {
            self.fenced = true;
        }
        overdue
    }

    /// No renewal sent within the fencing deadline has succeeded.
    pub fn overdue(&self, now: Instant) -> bool {
        self.last_success_sent
            .is_none_or(|t| now.duration_since(t) >= self.timing.fence_after)
    }

    /// No *fresh* renewal (one that completed within the refresh window) was sent within
    /// [`FenceTiming::cut_off_after`]: the agent cannot extend its addresses on its renewals. This is what
    /// it tells its peers as "cut off" (a slow apiserver counts: every agent is then in the
    /// same situation, and the peers keep each other's addresses).
    pub fn degraded(&self, now: Instant) -> bool {
        self.last_fresh_sent
            .is_none_or(|t| now.duration_since(t) >= self.timing.cut_off_after())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn defaults_fit_the_default_takeover() {
        FenceTiming::default()
            .validate(crate::controller::DEFAULT_TAKEOVER)
            .unwrap();
        let slow = FenceTiming {
            address_lifetime_secs: 2,
            ..FenceTiming::default()
        };
        assert!(
            slow.validate(crate::controller::DEFAULT_TAKEOVER)
                .unwrap_err()
                .contains("outlive")
        );
        let late = FenceTiming {
            fence_after: MS(2000),
            ..FenceTiming::default()
        };
        assert!(late.validate(crate::controller::DEFAULT_TAKEOVER).is_err());
    }

    #[test]
    fn fenced_until_the_first_renewal_then_fenced_after_the_deadline() {
        let t0 = Instant::now();
        let mut f = FenceClock::new(FenceTiming::default());
        assert!(f.is_fenced());
        let r = f.renewed(t0, t0 + MS(5));
        assert_eq!(
            r,
            Renewed {
                refresh_lifetimes: true,
                unfenced: true
            }
        );
        assert!(!f.check(t0 + MS(999)));
        assert!(
            f.check(t0 + MS(1000)),
            "no success sent in the last fence_after"
        );
        assert!(!f.check(t0 + MS(1100)), "fences once");
        assert!(f.is_fenced());
    }

    #[test]
    fn a_slow_renewal_keeps_the_lease_but_does_not_extend_addresses() {
        let t0 = Instant::now();
        let mut f = FenceClock::new(FenceTiming::default());
        f.renewed(t0, t0 + MS(5));
        let r = f.renewed(t0 + MS(500), t0 + MS(900));
        assert_eq!(
            r,
            Renewed {
                refresh_lifetimes: false,
                unfenced: false
            }
        );
        assert!(
            !f.check(t0 + MS(1400)),
            "the send at 500 ms counts for the deadline"
        );
        assert!(f.check(t0 + MS(1500)));
        // Recovery needs a fresh renewal, and comes back unfenced (new epoch).
        assert!(
            !f.renewed(t0 + MS(2000), t0 + MS(2400)).unfenced,
            "too slow to trust"
        );
        assert!(f.renewed(t0 + MS(2500), t0 + MS(2510)).unfenced);
    }

    #[test]
    fn a_hold_keeps_an_overdue_agent_unfenced_and_its_end_fences_it() {
        let t0 = Instant::now();
        let mut f = FenceClock::new(FenceTiming::default());
        f.renewed(t0, t0 + MS(5));
        assert!(f.overdue(t0 + MS(1000)) && f.degraded(t0 + MS(1000)));
        assert!(
            !f.check_holding(t0 + MS(1000), Hold::Confirmed),
            "held past the deadline"
        );
        // The hold ends: a full deadline (and grace) from the last confirmation to renew.
        assert!(
            !f.check_holding(t0 + MS(2400), Hold::Pending),
            "within the grace"
        );
        assert!(!f.is_fenced());
        assert!(
            f.check_holding(t0 + MS(2500), Hold::Pending),
            "the grace is over"
        );
        assert!(f.is_fenced());
        let mut p = FenceClock::new(FenceTiming::default());
        p.renewed(t0, t0 + MS(5));
        assert!(
            !p.check_holding(t0 + MS(1400), Hold::Pending),
            "never held: the grace"
        );
        assert!(p.check_holding(t0 + MS(1500), Hold::Pending));
        let mut g = FenceClock::new(FenceTiming::default());
        g.renewed(t0, t0 + MS(5));
        assert!(
            g.check_holding(t0 + MS(1000), Hold::Unavailable),
            "no peers: the plain deadline"
        );
    }

    #[test]
    fn slow_renewals_are_degraded_but_not_overdue() {
        let t0 = Instant::now();
        let mut f = FenceClock::new(FenceTiming::default());
        f.renewed(t0, t0 + MS(5));
        for i in 1..=4 {
            let sent = t0 + MS(500 * i);
            f.renewed(sent, sent + MS(800));
        }
        let now = t0 + MS(2900);
        assert!(!f.overdue(now), "the slow renewals succeed");
        assert!(f.degraded(now), "but none was fresh: the peers are told");
        assert!(
            !f.degraded(t0 + MS(799)) && f.degraded(t0 + MS(800)),
            "cut off once a renewal's refresh window is missed"
        );
        f.renewed(now, now + MS(10));
        assert!(!f.degraded(now + MS(20)));
    }
}
