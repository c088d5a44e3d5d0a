//! The peer channel: gateway-candidate agents ping each other over the node network, so that
//! an agent whose Lease renewals fail can tell "I am cut off" (another candidate still
//! renews, or does not answer: fence as before) from "the control plane is down for everyone"
//! (every candidate answers that it is cut off too: keep the egress IPs, nothing can move
//! them). [`book`] holds the rules and their safety argument; docs/architecture.md has the
//! whole of it, docs/security.md the channel's trust.
//!
//! Messages are UDP datagrams to port `--peer-port` (default [`DEFAULT_PEER_PORT`]) on the
//! nodes' InternalIPs, authenticated with HMAC-SHA256 under a key every agent reads once at
//! start from the Secret [`PEER_KEY_SECRET`] (the controller creates it). The channel asks
//! nothing of the apiserver: it must work while the apiserver is down.

pub mod book;
pub mod targets;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

pub use book::{NoHold, PING_EVERY as PING_EVERY_HOLD, PONG_VALID, PeerBook, Wait};
use wire::{Kind, MAX_DATAGRAM, Message, PeerKey, WIRE_VERSION};

/// The UDP port agents listen on for peers.
pub const DEFAULT_PEER_PORT: u16 = 9473;
/// The Secret holding the peer key, in the agents' namespace.
pub const PEER_KEY_SECRET: &str = "egressgw-peer-key";
/// The Secret's data field with the key.
pub const PEER_KEY_FIELD: &str = "key";
/// Bytes of a key the controller generates.
pub const PEER_KEY_BYTES: usize = 32;
/// How often an agent without the key tries to read it again.
const KEY_RETRY: Duration = Duration::from_secs(2);
/// At most one warning per this long about refused datagrams.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("entering network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: crate::dataplane::error::DataplaneError,
    },
    #[error("binding UDP port {port} for peers: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("peer key secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("peer key secret {namespace}/{name}: {problem}")]
    BadKey {
        namespace: String,
        name: String,
        problem: String,
    },
}

/// What this agent tells its peers at a moment.
#[derive(Clone, Debug, Default)]
pub struct Own {
    /// No fresh renewal within the cut-off deadline.
    pub cut_off: bool,
    /// Since its last fresh renewal was sent (`None`: never).
    pub fresh_age: Option<Duration>,
    /// Egress IPs its kernel holds.
    pub held: Vec<Ipv4Addr>,
}

/// What this agent tells its peers.
pub type OwnState = Arc<dyn Fn(Instant) -> Own + Send + Sync>;

/// The running channel.
pub struct Peers {
    me: String,
    port: u16,
    key: PeerKey,
    book: Mutex<PeerBook>,
    known: Mutex<BTreeMap<String, IpAddr>>,
    socket: UdpSocket,
    state: OwnState,
    rng: SystemRandom,
    /// Woken whenever a pong is accepted.
    answered: tokio::sync::Notify,
}

/// Bind the peer socket inside `netns` (the node's network; the socket stays there whatever
/// thread uses it later).
fn bind_in(netns: Option<&Path>, port: u16) -> Result<StdUdpSocket, PeerError> {
    let netns = netns.map(Path::to_path_buf);
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(path) = netns.as_deref() {
                crate::dataplane::kernel::enter_netns(path).map_err(|source| PeerError::Netns {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            let sock = StdUdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                .map_err(|source| PeerError::Bind { port, source })?;
            sock.set_nonblocking(true)
                .map_err(|source| PeerError::Bind { port, source })?;
            Ok(sock)
        })
        .join()
        .expect("peer socket thread")
    })
}

/// Read the peer key (once; the agent keeps it in memory).
pub async fn read_key(client: Client, namespace: &str) -> Result<Option<PeerKey>, PeerError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secret = api
        .get_opt(PEER_KEY_SECRET)
        .await
        .map_err(|source| PeerError::Api {
            namespace: namespace.into(),
            name: PEER_KEY_SECRET.into(),
            source,
        })?;
    let Some(secret) = secret else {
        return Ok(None);
    };
    let bad = |problem: String| PeerError::BadKey {
        namespace: namespace.into(),
        name: PEER_KEY_SECRET.into(),
        problem,
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(PEER_KEY_FIELD))
        .ok_or_else(|| bad(format!("no data field {PEER_KEY_FIELD:?}")))?;
    PeerKey::new(&bytes.0)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// Read the key until it exists, then start the channel. Returns when the channel runs.
pub async fn start_when_keyed(
    client: Client,
    namespace: String,
    netns: Option<PathBuf>,
    port: u16,
    me: String,
    address_bound: Duration,
    state: OwnState,
) -> Result<Arc<Peers>, PeerError> {
    let mut warned = false;
    let key = loop {
        match read_key(client.clone(), &namespace).await {
            Ok(Some(k)) => break k,
            Ok(None) if !warned => {
                warn!(secret = PEER_KEY_SECRET, namespace = %namespace, "no peer key yet (the controller creates it): until it exists this agent fences on its own deadline during any apiserver outage");
                warned = true;
            }
            Ok(None) => {}
            Err(e) if !warned => {
                warn!(error = %e, "cannot read the peer key; retrying");
                warned = true;
            }
            Err(e) => debug!(error = %e, "cannot read the peer key; retrying"),
        }
        tokio::time::sleep(KEY_RETRY).await;
    };
    let sock = bind_in(netns.as_deref(), port)?;
    let socket = UdpSocket::from_std(sock).map_err(|source| PeerError::Bind { port, source })?;
    let peers = Arc::new(Peers {
        book: Mutex::new(PeerBook::new(&me, address_bound)),
        me,
        port,
        key,
        known: Mutex::new(BTreeMap::new()),
        socket,
        state,
        rng: SystemRandom::new(),
        answered: tokio::sync::Notify::new(),
    });
    tokio::spawn(peers.clone().send_loop());
    tokio::spawn(peers.clone().recv_loop());
    info!(
        port,
        "peer channel up: holding egress IPs through control-plane outages is possible"
    );
    Ok(peers)
}

impl Peers {
    fn book(&self) -> std::sync::MutexGuard<'_, PeerBook> {
        self.book.lock().expect("peer book lock")
    }

    /// The nodes this agent's view says it must hear from.
    pub fn set_known(&self, known: BTreeMap<String, IpAddr>) {
        *self.known.lock().expect("peer list lock") = known;
    }

    fn peer_addrs(&self, now: Instant) -> BTreeMap<String, SocketAddr> {
        let known = self.known.lock().expect("peer list lock").clone();
        self.book().peers(&known, self.port, now)
    }

    /// Whether this agent may hold its egress IPs at `now` past its fencing deadline, and
    /// until when the answers that allow it stay valid.
    pub fn hold(&self, now: Instant) -> Result<Instant, NoHold> {
        let names: BTreeSet<String> = self.peer_addrs(now).into_keys().collect();
        self.book().hold(&names, now)
    }

    /// Whether this node may add `ip`, which it does not hold, at `now`.
    pub fn acquire(&self, ip: Ipv4Addr, now: Instant) -> Result<(), Wait> {
        self.book().acquire(ip, now)
    }

    /// Wait until some pong is accepted.
    pub async fn answered(&self) {
        self.answered.notified().await
    }

    fn message(&self, kind: Kind, to: &str, nonce: u64, now: Instant) -> Message {
        let Own {
            cut_off,
            fresh_age,
            held,
        } = (self.state)(now);
        let fresh_age_ms = fresh_age.map_or(u64::MAX, |a| a.as_millis() as u64);
        Message {
            v: WIRE_VERSION,
            kind,
            from: self.me.clone(),
            to: to.to_string(),
            nonce,
            cut_off,
            fresh_age_ms,
            held,
        }
    }

    /// A peer that renewed (fresh) after `t`, this node's first failed renewal: this node is
    /// cut off alone and fences on its plain deadline.
    pub fn renewed_after(&self, t: Instant, now: Instant) -> Option<String> {
        let names: BTreeSet<String> = self.peer_addrs(now).into_keys().collect();
        self.book().renewed_after(&names, t, now)
    }

    fn nonce(&self) -> u64 {
        let mut b = [0u8; 8];
        self.rng.fill(&mut b).expect("system randomness");
        u64::from_le_bytes(b)
    }

    async fn send_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(book::PING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            for (peer, addr) in self.peer_addrs(now) {
                let nonce = self.nonce();
                let datagram = self.key.seal(&self.message(Kind::Ping, &peer, nonce, now));
                self.book().ping_sent(&peer, nonce, now);
                if let Err(e) = self.socket.send_to(&datagram, addr).await {
                    debug!(peer = %peer, addr = %addr, error = %e, "cannot ping peer");
                }
            }
        }
    }

    async fn recv_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut last_refused_log: Option<Instant> = None;
        loop {
            let (n, from) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "peer socket receive failed");
                    continue;
                }
            };
            let now = Instant::now();
            let msg = match self.key.open(&buf[..n]) {
                Ok(m) if m.to == self.me && m.from != self.me => m,
                Ok(_) => continue,
                Err(e) => {
                    if last_refused_log.is_none_or(|t| now.duration_since(t) >= REFUSED_LOG_EVERY) {
                        warn!(from = %from, error = %e, "refused a datagram on the peer port");
                        last_refused_log = Some(now);
                    }
                    continue;
                }
            };
            match msg.kind {
                Kind::Ping => {
                    self.book().ping_received(&msg.from, from, now);
                    let reply = self.message(Kind::Pong, &msg.from, msg.nonce, now);
                    let cut_off = reply.cut_off;
                    let datagram = self.key.seal(&reply);
                    // Recorded before it leaves: an acquire decision never misses it.
                    self.book().pong_sent(cut_off, now);
                    if let Err(e) = self.socket.send_to(&datagram, from).await {
                        debug!(peer = %msg.from, error = %e, "cannot answer a ping");
                    }
                }
                Kind::Pong => {
                    let accepted = self.book().pong_received(
                        &msg.from,
                        msg.nonce,
                        msg.cut_off,
                        (msg.fresh_age_ms != u64::MAX)
                            .then(|| Duration::from_millis(msg.fresh_age_ms)),
                        msg.held,
                        now,
                    );
                    if accepted {
                        self.answered.notify_waiters();
                    }
                }
            }
        }
    }
}
