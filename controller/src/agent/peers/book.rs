//! What an agent knows of its peers (pure; the caller passes the clock), and the two rules
//! built on it.
//!
//! **Hold.** An agent whose renewals fail keeps its egress IPs past its fencing deadline only
//! while *every* peer it knows — each gateway-candidate node in its view, every node recorded
//! as holding an IP, and every node that pinged it lately — answered a recent ping saying it
//! is cut off too. The controller can only move an IP to a node whose renewals it sees, and
//! a node that renews says so in its next pong; a peer that does not answer may be that node,
//! so silence ends the hold as well.
//!
//! **Acquire.** A node adds an egress IP it does not hold yet only when (a) its last pong
//! saying "cut off" is older than [`PeerBook::acquire_margin`] — any hold built on that pong
//! has expired in the holder's kernel by then — and (b) no peer's recent pong lists the IP
//! as held. (a) makes the hold safe whatever the controller's timing; (b) covers a holder
//! that learnt of this node late.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How often an agent pings each peer.
pub const PING_EVERY: Duration = Duration::from_millis(100);
/// A pong counts only as the answer to a ping sent at most this long ago.
pub const PONG_VALID: Duration = Duration::from_millis(600);
/// A node that pinged this agent stays one of its peers this long after its last ping.
pub const PEER_MEMORY: Duration = Duration::from_secs(30);
/// Added to the acquire margin for scheduling and netlink latency.
pub const ACQUIRE_SLACK: Duration = Duration::from_millis(100);

/// A peer's last accepted answer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    /// When the ping it answers was sent (our clock).
    ping_sent: Instant,
    cut_off: bool,
    held: Vec<Ipv4Addr>,
    /// The latest the peer can have sent its last fresh renewal, on our clock (the pong's
    /// arrival minus the age it reported).
    last_fresh: Option<Instant>,
}

/// Why an agent may not hold its egress IPs past its fencing deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoHold {
    /// No peer is known: nobody can confirm the control plane is down for everyone.
    NoPeers,
    /// This peer did not answer a recent ping.
    Silent(String),
    /// This peer renews its Lease: the control plane is reachable, this node alone is cut off.
    Renewing(String),
}

impl std::fmt::Display for NoHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoHold::NoPeers => f.write_str("no other gateway-candidate node is known"),
            NoHold::Silent(p) => write!(f, "peer {p} did not answer"),
            NoHold::Renewing(p) => write!(f, "peer {p} still renews its Lease"),
        }
    }
}

/// Why a node may not add an egress IP yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A hold another node built on this node's "cut off" answers may still run until then.
    RecentlyCutOff { until: Instant },
    /// This peer's recent pong says it holds the IP.
    HeldBy(String),
}

/// Pings in flight, answers, nodes heard from.
#[derive(Debug)]
pub struct PeerBook {
    me: String,
    /// Nonce to (peer, when sent).
    outstanding: HashMap<u64, (String, Instant)>,
    answers: HashMap<String, Answer>,
    /// Nodes that pinged us: their address and when.
    heard: HashMap<String, (SocketAddr, Instant)>,
    /// When this agent last sent a pong saying it is cut off.
    last_cut_pong: Option<Instant>,
    /// How long a refreshed address lives in the kernel at most (lifetime + expiry slack).
    address_bound: Duration,
}

impl PeerBook {
    pub fn new(me: &str, address_bound: Duration) -> Self {
        Self {
            me: me.to_string(),
            outstanding: HashMap::new(),
            answers: HashMap::new(),
            heard: HashMap::new(),
            last_cut_pong: None,
            address_bound,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// How long after its last "cut off" pong a node waits before adding an IP.
    pub fn acquire_margin(&self) -> Duration {
        PONG_VALID + self.address_bound + ACQUIRE_SLACK
    }

    /// A ping with `nonce` went to `peer` at `now`.
    pub fn ping_sent(&mut self, peer: &str, nonce: u64, now: Instant) {
        self.outstanding
            .retain(|_, (_, sent)| now.duration_since(*sent) <= PONG_VALID);
        self.outstanding.insert(nonce, (peer.to_string(), now));
    }

    /// A pong from `from` echoing `nonce` arrived at `now`. Accepted only as the answer of
    /// that peer to a ping of ours still valid.
    /// A pong from `from` echoing `nonce` arrived at `now`, saying whether the peer is cut
    /// off, how long ago it sent its last fresh renewal, and what it holds. Accepted only as
    /// the answer of that peer to a ping of ours still valid.
    pub fn pong_received(
        &mut self,
        from: &str,
        nonce: u64,
        cut_off: bool,
        fresh_age: Option<std::time::Duration>,
        held: Vec<Ipv4Addr>,
        now: Instant,
    ) -> bool {
        let Some((peer, sent)) = self.outstanding.get(&nonce) else {
            return false;
        };
        if peer != from || now.duration_since(*sent) > PONG_VALID {
            return false;
        }
        let sent = *sent;
        self.outstanding.remove(&nonce);
        let newer = self.answers.get(from).is_none_or(|a| a.ping_sent <= sent);
        if newer {
            self.answers.insert(
                from.to_string(),
                Answer {
                    ping_sent: sent,
                    cut_off,
                    held,
                    last_fresh: fresh_age.and_then(|a| now.checked_sub(a)),
                },
            );
        }
        true
    }

    /// `from` pinged us from `addr` at `now`: it is a peer from now on (for a while).
    pub fn ping_received(&mut self, from: &str, addr: SocketAddr, now: Instant) {
        if from != self.me {
            self.heard.insert(from.to_string(), (addr, now));
        }
    }

    /// We answered a ping at `now`, saying whether we are cut off.
    pub fn pong_sent(&mut self, cut_off: bool, now: Instant) {
        if cut_off {
            self.last_cut_pong = Some(now);
        }
    }

    /// Everyone to ping: `known` (from this node's view of the cluster) and the nodes that
    /// pinged us lately, never ourselves.
    pub fn peers(
        &mut self,
        known: &BTreeMap<String, IpAddr>,
        port: u16,
        now: Instant,
    ) -> BTreeMap<String, SocketAddr> {
        self.heard
            .retain(|_, (_, seen)| now.duration_since(*seen) <= PEER_MEMORY);
        let mut out: BTreeMap<String, SocketAddr> = self
            .heard
            .iter()
            .map(|(n, (a, _))| (n.clone(), *a))
            .collect();
        for (n, ip) in known {
            out.insert(n.clone(), SocketAddr::new(*ip, port));
        }
        out.remove(&self.me);
        out
    }

    fn fresh(&self, peer: &str, now: Instant) -> Option<&Answer> {
        self.answers
            .get(peer)
            .filter(|a| now.duration_since(a.ping_sent) <= PONG_VALID)
    }

    /// Whether this agent may hold its IPs at `now` past its fencing deadline; `peers` are
    /// the names [`Self::peers`] returned. `Ok(until)`: the answers it rests on stay valid
    /// until then — an address lifetime may be extended on their strength only before it.
    pub fn hold(&self, peers: &BTreeSet<String>, now: Instant) -> Result<Instant, NoHold> {
        let mut until: Option<Instant> = None;
        for p in peers {
            match self.fresh(p, now) {
                None => return Err(NoHold::Silent(p.clone())),
                Some(a) if !a.cut_off => return Err(NoHold::Renewing(p.clone())),
                Some(a) => {
                    let valid = a.ping_sent + PONG_VALID;
                    until = Some(until.map_or(valid, |u| u.min(valid)));
                }
            }
        }
        until.ok_or(NoHold::NoPeers)
    }

    /// A peer whose recent answer shows a fresh renewal sent after `t` (this node's first
    /// failed renewal): the control plane answers it, so this node is cut off alone.
    pub fn renewed_after(
        &self,
        peers: &BTreeSet<String>,
        t: Instant,
        now: Instant,
    ) -> Option<String> {
        peers
            .iter()
            .find(|p| {
                self.fresh(p, now)
                    .and_then(|a| a.last_fresh)
                    .is_some_and(|f| f > t)
            })
            .cloned()
    }

    /// Whether this node may add `ip` (which it does not hold) at `now`.
    pub fn acquire(&self, ip: Ipv4Addr, now: Instant) -> Result<(), Wait> {
        if let Some(until) = self.last_cut_pong.map(|t| t + self.acquire_margin())
            && now < until
        {
            return Err(Wait::RecentlyCutOff { until });
        }
        let mut holders: Vec<&String> = self
            .answers
            .iter()
            .filter(|(p, a)| {
                now.duration_since(a.ping_sent) <= PONG_VALID
                    && a.held.contains(&ip)
                    && **p != self.me
            })
            .map(|(p, _)| p)
            .collect();
        holders.sort();
        match holders.first() {
            Some(p) => Err(Wait::HeldBy((*p).clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_millis(1250);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn e1() -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 200)
    }

    /// `peer` answers ping `nonce` sent at `t0 + sent` at `t0 + at`.
    fn round(
        b: &mut PeerBook,
        t0: Instant,
        peer: &str,
        nonce: u64,
        sent: u64,
        at: u64,
        cut: bool,
    ) -> bool {
        b.ping_sent(peer, nonce, t0 + ms(sent));
        b.pong_received(peer, nonce, cut, None, vec![], t0 + ms(at))
    }

    #[test]
    fn a_node_holds_only_while_every_peer_answers_that_it_is_cut_off_too() {
        let t0 = Instant::now();
        let mut b = PeerBook::new("node-2", BOUND);
        let peers = names(&["node-3", "node-4"]);
        assert_eq!(b.hold(&peers, t0), Err(NoHold::Silent("node-3".into())));
        assert!(round(&mut b, t0, "node-3", 1, 0, 5, true));
        assert_eq!(
            b.hold(&peers, t0 + ms(10)),
            Err(NoHold::Silent("node-4".into()))
        );
        assert!(round(&mut b, t0, "node-4", 2, 0, 5, true));
        assert_eq!(b.hold(&peers, t0 + ms(10)), Ok(t0 + PONG_VALID));
        // Answers age out: a peer that stops answering ends the hold.
        assert!(b.hold(&peers, t0 + PONG_VALID + ms(1)).is_err());
        // A peer that renews ends it at once.
        assert!(round(&mut b, t0, "node-4", 3, 100, 105, false));
        assert_eq!(
            b.hold(&peers, t0 + ms(110)),
            Err(NoHold::Renewing("node-4".into()))
        );
        assert_eq!(b.hold(&BTreeSet::new(), t0), Err(NoHold::NoPeers));
    }

    #[test]
    fn a_pong_counts_only_as_the_answer_to_our_recent_ping() {
        let t0 = Instant::now();
        let mut b = PeerBook::new("node-2", BOUND);
        let peers = names(&["node-3"]);
        assert!(
            !b.pong_received("node-3", 7, true, None, vec![], t0),
            "no ping sent"
        );
        b.ping_sent("node-3", 8, t0);
        assert!(
            !b.pong_received("node-4", 8, true, None, vec![], t0 + ms(1)),
            "another node's nonce"
        );
        assert!(
            !b.pong_received("node-3", 8, true, None, vec![], t0 + PONG_VALID + ms(1)),
            "too late: a delayed pong says nothing"
        );
        assert!(b.hold(&peers, t0 + ms(2)).is_err());
        b.ping_sent("node-3", 9, t0 + ms(10));
        assert!(b.pong_received("node-3", 9, true, None, vec![], t0 + ms(12)));
        assert!(
            !b.pong_received("node-3", 9, true, None, vec![], t0 + ms(13)),
            "a replayed pong is not accepted twice"
        );
    }

    #[test]
    fn an_older_answer_arriving_late_does_not_replace_a_newer_one() {
        let t0 = Instant::now();
        let mut b = PeerBook::new("node-2", BOUND);
        b.ping_sent("node-3", 1, t0);
        b.ping_sent("node-3", 2, t0 + ms(200));
        assert!(b.pong_received("node-3", 2, false, None, vec![], t0 + ms(210)));
        assert!(b.pong_received("node-3", 1, true, None, vec![], t0 + ms(220)));
        assert_eq!(
            b.hold(&names(&["node-3"]), t0 + ms(230)),
            Err(NoHold::Renewing("node-3".into()))
        );
    }

    #[test]
    fn a_node_that_said_it_was_cut_off_waits_before_adding_an_ip() {
        let t0 = Instant::now();
        let mut b = PeerBook::new("node-3", BOUND);
        assert_eq!(b.acquire(e1(), t0), Ok(()), "never cut off: no wait");
        b.pong_sent(false, t0);
        assert_eq!(b.acquire(e1(), t0), Ok(()));
        b.pong_sent(true, t0 + ms(100));
        let until = t0 + ms(100) + b.acquire_margin();
        assert_eq!(
            b.acquire(e1(), t0 + ms(500)),
            Err(Wait::RecentlyCutOff { until })
        );
        assert_eq!(b.acquire(e1(), until), Ok(()));
        assert!(
            b.acquire_margin() >= PONG_VALID + BOUND,
            "longer than any hold built on that pong can last"
        );
    }

    #[test]
    fn a_node_does_not_add_an_ip_a_peer_still_holds() {
        let t0 = Instant::now();
        let mut b = PeerBook::new("node-3", BOUND);
        b.ping_sent("node-2", 1, t0);
        assert!(b.pong_received("node-2", 1, false, None, vec![e1()], t0 + ms(3)));
        assert_eq!(
            b.acquire(e1(), t0 + ms(5)),
            Err(Wait::HeldBy("node-2".into()))
        );
        assert_eq!(
            b.acquire(Ipv4Addr::new(198, 18, 0, 201), t0 + ms(5)),
            Ok(())
        );
        assert_eq!(
            b.acquire(e1(), t0 + PONG_VALID + ms(1)),
            Ok(()),
            "a holder that stopped answering is dead or has fenced"
        );
    }

    #[test]
    fn peers_are_the_known_candidates_and_recent_pingers_never_ourselves() {
        let t0 = Instant::now();
        let mut b = PeerBook::new("node-2", BOUND);
        let addr = |s: &str| -> SocketAddr { s.parse().unwrap() };
        b.ping_received("node-9", addr("198.18.0.19:9473"), t0);
        b.ping_received("node-2", addr("198.18.0.12:9473"), t0);
        let known = BTreeMap::from([
            ("node-2".to_string(), "198.18.0.12".parse().unwrap()),
            ("node-3".to_string(), "198.18.0.13".parse().unwrap()),
        ]);
        let p = b.peers(&known, 9473, t0 + ms(1));
        assert_eq!(
            p.keys().cloned().collect::<Vec<_>>(),
            vec!["node-3".to_string(), "node-9".to_string()]
        );
        let p = b.peers(&known, 9473, t0 + PEER_MEMORY + ms(1));
        assert_eq!(
            p.keys().cloned().collect::<Vec<_>>(),
            vec!["node-3".to_string()]
        );
    }

    #[test]
    fn a_peer_that_renewed_after_our_first_failure_shows_we_are_cut_off_alone() {
        let t0 = Instant::now();
        let mut b = PeerBook::new("node-2", BOUND);
        let peers = names(&["node-3"]);
        let first_failed = t0 + ms(500);
        b.ping_sent("node-3", 1, t0 + ms(1000));
        // Its last fresh renewal was sent 600 ms before this pong: before our first failure.
        assert!(b.pong_received("node-3", 1, false, Some(ms(600)), vec![], t0 + ms(1002)));
        assert_eq!(b.renewed_after(&peers, first_failed, t0 + ms(1003)), None);
        // 100 ms ago: after it.
        b.ping_sent("node-3", 2, t0 + ms(1100));
        assert!(b.pong_received("node-3", 2, false, Some(ms(100)), vec![], t0 + ms(1102)));
        assert_eq!(
            b.renewed_after(&peers, first_failed, t0 + ms(1103)),
            Some("node-3".to_string())
        );
    }
}
