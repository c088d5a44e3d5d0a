//! The leak probe (DESIGN.md, "The leak probe"; issue 11): selected pods connect to a server
//! *inside* the destinations that accepts any source and greets with the address it saw (the
//! testbed's open server, 203.0.113.200), every ~20 ms, through an event. Each sample is one
//! fresh TCP connection; the report says which sources reached the server from which pod and
//! when. A source that is not one of the gateway's egress IPs is a leak.
//!
//! The firewall in front of the protected half rejects unknown sources, so probing *that*
//! server would turn a leak into a refused connection; the open server shows it.
//!
//! One thread per pod, each inside the pod's network namespace (sockets are created in the
//! namespace of the thread that creates them). A short connect timeout turns a drop into a
//! `Timeout` sample instead of stalling the probe. Times are offsets from the probe's start;
//! [`LeakProbe::mark`] records events so the report can show times relative to them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::testbed::Testbed;
use crate::testbed::client::parse_greeting;
use crate::testbed::netns::enter;
use crate::testbed::topology::{OPEN_SERVER, SERVER_PORT};

/// How often each pod is sampled.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// How long one sample may wait for the connection and the greeting.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(150);
/// How many failed samples (timeouts, refusals, errors) [`LeakReport::table`] lists by time.
const FAILED_LISTED: usize = 12;

/// What one sample saw.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The server greeted the connection from this source address.
    Seen(Ipv4Addr),
    /// Reset (nothing listening, or a reject).
    Refused,
    /// No connection or no greeting within the timeout (dropped somewhere).
    Timeout,
    /// Anything else (unreachable, …).
    Error(String),
}

impl Outcome {
    fn seen(&self) -> Option<Ipv4Addr> {
        match self {
            Outcome::Seen(ip) => Some(*ip),
            _ => None,
        }
    }
}

/// One connection attempt from one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Index into [`LeakReport::pods`].
    pub pod: usize,
    /// When the attempt started, from the probe's start.
    pub at: Duration,
    pub outcome: Outcome,
}

/// An event a test marked while the probe ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub at: Duration,
    pub label: String,
}

/// A pod to sample: a name for the report and the namespace to connect from.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    pub name: String,
    pub netns: PathBuf,
}

impl ProbeTarget {
    /// The testbed's pod `(node, k)`, named `node-N/pod-k <ip>`.
    pub fn pod(tb: &Testbed, node: usize, k: usize) -> Self {
        let p = tb.pod(node, k);
        Self {
            name: format!("node-{node}/pod-{k} {}", p.ip()),
            netns: p.netns().path(),
        }
    }
}

/// Samples pods in the background until [`LeakProbe::stop`].
pub struct LeakProbe {
    start: Instant,
    dst: SocketAddrV4,
    pods: Vec<String>,
    samples: Arc<Mutex<Vec<Sample>>>,
    marks: Mutex<Vec<Mark>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl LeakProbe {
    /// Samples the testbed's pods `(node, k)` against the open server every
    /// [`PROBE_INTERVAL`].
    pub fn start(tb: &Testbed, pods: &[(usize, usize)]) -> Result<Self> {
        let targets = pods
            .iter()
            .map(|&(node, k)| ProbeTarget::pod(tb, node, k))
            .collect();
        Self::start_targets(
            targets,
            SocketAddrV4::new(OPEN_SERVER, SERVER_PORT),
            PROBE_INTERVAL,
            PROBE_TIMEOUT,
        )
    }

    /// Samples `targets` against `dst` every `interval`, each attempt bounded by `timeout`.
    /// Fails when a thread cannot enter its namespace.
    pub fn start_targets(
        targets: Vec<ProbeTarget>,
        dst: SocketAddrV4,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Self> {
        if targets.is_empty() {
            bail!("a leak probe needs at least one pod");
        }
        let start = Instant::now();
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut entered = Vec::new();
        for (pod, t) in targets.iter().enumerate() {
            let (samples, stop, netns) = (samples.clone(), stop.clone(), t.netns.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                if let Err(e) = enter(&netns) {
                    let _ = tx.send(Err(e));
                    return;
                }
                let _ = tx.send(Ok(()));
                sample_loop(pod, start, dst, interval, timeout, &samples, &stop);
            }));
            entered.push(rx);
        }
        let probe = Self {
            start,
            dst,
            pods: targets.into_iter().map(|t| t.name).collect(),
            samples,
            marks: Mutex::default(),
            stop,
            threads,
        };
        for (rx, name) in entered.iter().zip(&probe.pods) {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("leak probe for {name}: {e:#}"),
                Err(_) => bail!("leak probe thread for {name} died"),
            }
        }
        Ok(probe)
    }

    /// Time since the probe started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records an event now; returns its offset.
    pub fn mark(&self, label: &str) -> Duration {
        let at = self.elapsed();
        self.marks.lock().expect("poisoned").push(Mark {
            at,
            label: label.to_string(),
        });
        at
    }

    /// The report so far; the probe keeps running.
    pub fn snapshot(&self) -> LeakReport {
        let mut samples = self.samples.lock().expect("poisoned").clone();
        samples.sort_by_key(|s| (s.at, s.pod));
        LeakReport {
            dst: self.dst,
            pods: self.pods.clone(),
            samples,
            marks: self.marks.lock().expect("poisoned").clone(),
            end: self.elapsed(),
        }
    }

    /// Waits until every pod's samples of the last `hold` are all from an `allowed` source
    /// (and there are some); returns the time waited. Fails with the table after `timeout`.
    pub async fn wait_steady(
        &self,
        allowed: &[Ipv4Addr],
        hold: Duration,
        timeout: Duration,
    ) -> Result<Duration> {
        let all: Vec<usize> = (0..self.pods.len()).collect();
        self.wait_steady_pods(&all, allowed, hold, timeout).await
    }

    /// [`Self::wait_steady`] for the pods at indices `pods` (e.g. not those of a dead node).
    pub async fn wait_steady_pods(
        &self,
        pods: &[usize],
        allowed: &[Ipv4Addr],
        hold: Duration,
        timeout: Duration,
    ) -> Result<Duration> {
        let begin = Instant::now();
        loop {
            let report = self.snapshot();
            if pods.iter().all(|&p| report.steady(p, allowed, hold)) {
                return Ok(begin.elapsed());
            }
            if begin.elapsed() > timeout {
                bail!(
                    "pods {:?} did not reach the server only from {} for {hold:?} within \
                     {timeout:?}\n{}",
                    pods.iter().map(|&p| &self.pods[p]).collect::<Vec<_>>(),
                    list(allowed),
                    report.table(allowed)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops sampling (each thread finishes its attempt) and returns the report.
    pub fn stop(mut self) -> LeakReport {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for LeakProbe {
    fn drop(&mut self) {
        self.halt();
    }
}

fn sample_loop(
    pod: usize,
    start: Instant,
    dst: SocketAddrV4,
    interval: Duration,
    timeout: Duration,
    samples: &Mutex<Vec<Sample>>,
    stop: &AtomicBool,
) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
            continue;
        }
        let outcome = probe_once(dst, timeout);
        samples.lock().expect("poisoned").push(Sample {
            pod,
            at: now.duration_since(start),
            outcome,
        });
        next = (next + interval).max(Instant::now());
    }
}

/// One fresh connection from the calling thread's namespace: the source the server saw.
pub fn probe_once(dst: SocketAddrV4, timeout: Duration) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    // Close with a reset: no TIME_WAIT and a short-lived conntrack entry for the thousands of
    // connections a probe opens.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this function owns, with a pointer to a live `linger`
    // and its size.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Timeout;
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return Outcome::Error(e.to_string());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Outcome::Refused,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() > 256 {
                    let line = String::from_utf8_lossy(&buf);
                    return match parse_greeting(&line) {
                        Some(peer) => Outcome::Seen(*peer.ip()),
                        None => Outcome::Error(format!("bad greeting {line:?}")),
                    };
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return classify(&e),
        }
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => Outcome::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Timeout,
        _ => Outcome::Error(e.to_string()),
    }
}

/// One pod's numbers in a report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSummary {
    pub name: String,
    pub samples: usize,
    /// Samples per source the server saw.
    pub seen: BTreeMap<Ipv4Addr, usize>,
    pub refused: usize,
    pub timeouts: usize,
    pub errors: usize,
    /// Samples from a source that is not allowed.
    pub leaks: usize,
    pub first_leak: Option<Duration>,
    /// Longest run of samples that did not reach the server from an allowed source: from
    /// the run's first sample to the next good sample (or the end of the report).
    pub longest_interruption: Duration,
}

/// Consecutive leaked samples of one pod from one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakRun {
    pub pod: usize,
    pub source: Ipv4Addr,
    pub from: Duration,
    pub to: Duration,
    pub samples: usize,
}

/// Everything a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakReport {
    pub dst: SocketAddrV4,
    /// Pod names, by index.
    pub pods: Vec<String>,
    /// Sorted by time.
    pub samples: Vec<Sample>,
    pub marks: Vec<Mark>,
    /// When the report was taken, from the probe's start.
    pub end: Duration,
}

impl LeakReport {
    /// The offset of the first mark labelled `label`.
    pub fn mark_at(&self, label: &str) -> Option<Duration> {
        self.marks.iter().find(|m| m.label == label).map(|m| m.at)
    }

    /// Only the samples taken at or after the mark `label` (panics when there is none).
    pub fn since(&self, label: &str) -> LeakReport {
        let at = self
            .mark_at(label)
            .unwrap_or_else(|| panic!("no mark {label:?} in {:?}", self.marks));
        self.since_offset(at)
    }

    /// Only the samples taken at or after `at`.
    pub fn since_offset(&self, at: Duration) -> LeakReport {
        LeakReport {
            samples: self
                .samples
                .iter()
                .filter(|s| s.at >= at)
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// Only the samples taken before `at` (with [`Self::since_offset`]: one window).
    pub fn until_offset(&self, at: Duration) -> LeakReport {
        LeakReport {
            samples: self.samples.iter().filter(|s| s.at < at).cloned().collect(),
            end: at.min(self.end),
            ..self.clone()
        }
    }

    /// Only the pods at indices `pods` (renumbered in that order).
    pub fn pods_only(&self, pods: &[usize]) -> LeakReport {
        LeakReport {
            pods: pods.iter().map(|&p| self.pods[p].clone()).collect(),
            samples: self
                .samples
                .iter()
                .filter_map(|s| {
                    let new = pods.iter().position(|&p| p == s.pod)?;
                    Some(Sample {
                        pod: new,
                        ..s.clone()
                    })
                })
                .collect(),
            ..self.clone()
        }
    }

    fn of_pod(&self, pod: usize) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.pod == pod)
    }

    /// Every source the server saw, from any pod.
    pub fn sources(&self) -> BTreeSet<Ipv4Addr> {
        self.samples
            .iter()
            .filter_map(|s| s.outcome.seen())
            .collect()
    }

    /// Samples per source, over all pods.
    pub fn seen_counts(&self) -> BTreeMap<Ipv4Addr, usize> {
        let mut m = BTreeMap::new();
        for ip in self.samples.iter().filter_map(|s| s.outcome.seen()) {
            *m.entry(ip).or_default() += 1;
        }
        m
    }

    /// Samples that reached the server from a source not in `allowed`.
    pub fn leaks(&self, allowed: &[Ipv4Addr]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.outcome.seen().is_some_and(|ip| !allowed.contains(&ip)))
            .collect()
    }

    /// Samples that reached the server from an allowed source.
    pub fn good(&self, allowed: &[Ipv4Addr]) -> usize {
        self.samples.iter().filter(|s| is_good(s, allowed)).count()
    }

    /// The longest interruption of pod `pod` (see [`PodSummary::longest_interruption`]).
    pub fn longest_interruption(&self, pod: usize, allowed: &[Ipv4Addr]) -> Duration {
        let mut longest = Duration::ZERO;
        let mut run_start: Option<Duration> = None;
        for s in self.of_pod(pod) {
            if is_good(s, allowed) {
                if let Some(from) = run_start.take() {
                    longest = longest.max(s.at - from);
                }
            } else if run_start.is_none() {
                run_start = Some(s.at);
            }
        }
        if let Some(from) = run_start {
            longest = longest.max(self.end.saturating_sub(from));
        }
        longest
    }

    /// Whether pod `pod` has samples in the last `hold` of the report and all of them are
    /// from an allowed source.
    pub fn steady(&self, pod: usize, allowed: &[Ipv4Addr], hold: Duration) -> bool {
        let from = self.end.saturating_sub(hold);
        let recent: Vec<&Sample> = self.of_pod(pod).filter(|s| s.at >= from).collect();
        self.end >= hold && !recent.is_empty() && recent.iter().all(|s| is_good(s, allowed))
    }

    /// Numbers per pod.
    pub fn summary(&self, allowed: &[Ipv4Addr]) -> Vec<PodSummary> {
        (0..self.pods.len())
            .map(|pod| {
                let mut p = PodSummary {
                    name: self.pods[pod].clone(),
                    longest_interruption: self.longest_interruption(pod, allowed),
                    ..Default::default()
                };
                for s in self.of_pod(pod) {
                    p.samples += 1;
                    match &s.outcome {
                        Outcome::Seen(ip) => {
                            *p.seen.entry(*ip).or_default() += 1;
                            if !allowed.contains(ip) {
                                p.leaks += 1;
                                p.first_leak.get_or_insert(s.at);
                            }
                        }
                        Outcome::Refused => p.refused += 1,
                        Outcome::Timeout => p.timeouts += 1,
                        Outcome::Error(_) => p.errors += 1,
                    }
                }
                p
            })
            .collect()
    }

    /// Consecutive leaked samples per pod and source, in time order.
    pub fn leak_runs(&self, allowed: &[Ipv4Addr]) -> Vec<LeakRun> {
        let mut runs: Vec<LeakRun> = Vec::new();
        for pod in 0..self.pods.len() {
            let mut open: Option<LeakRun> = None;
            for s in self.of_pod(pod) {
                let leaked = s.outcome.seen().filter(|ip| !allowed.contains(ip));
                match (&mut open, leaked) {
                    (Some(r), Some(ip)) if r.source == ip => {
                        r.to = s.at;
                        r.samples += 1;
                    }
                    (_, Some(ip)) => {
                        runs.extend(open.take());
                        open = Some(LeakRun {
                            pod,
                            source: ip,
                            from: s.at,
                            to: s.at,
                            samples: 1,
                        });
                    }
                    (_, None) => runs.extend(open.take()),
                }
            }
            runs.extend(open);
        }
        runs.sort_by_key(|r| (r.from, r.pod));
        runs
    }

    /// `+3.210 s (cut agent +0.770 s)`: the offset, and relative to the latest mark before it.
    pub fn when(&self, at: Duration) -> String {
        let mut s = format!("+{:.3} s", at.as_secs_f64());
        if let Some(m) = self.marks.iter().rev().find(|m| m.at <= at) {
            let _ = write!(s, " ({} +{:.3} s)", m.label, (at - m.at).as_secs_f64());
        }
        s
    }

    /// A readable table: per pod the samples, the samples per source (leaking sources
    /// flagged), failures, the first leak and the longest interruption; then the marks and
    /// the leak runs.
    pub fn table(&self, allowed: &[Ipv4Addr]) -> String {
        let sources: Vec<Ipv4Addr> = self.sources().into_iter().collect();
        let mut header: Vec<String> = vec!["pod".into(), "samples".into()];
        header.extend(sources.iter().map(|ip| {
            if allowed.contains(ip) {
                ip.to_string()
            } else {
                format!("{ip} LEAK")
            }
        }));
        header.extend(
            [
                "refused",
                "timeout",
                "error",
                "first leak",
                "longest interruption",
            ]
            .map(String::from),
        );
        let mut rows = vec![header];
        for p in self.summary(allowed) {
            let mut row = vec![p.name.clone(), p.samples.to_string()];
            row.extend(
                sources
                    .iter()
                    .map(|ip| p.seen.get(ip).copied().unwrap_or(0).to_string()),
            );
            row.push(p.refused.to_string());
            row.push(p.timeouts.to_string());
            row.push(p.errors.to_string());
            row.push(p.first_leak.map_or("-".into(), |t| self.when(t)));
            row.push(format!("{} ms", p.longest_interruption.as_millis()));
            rows.push(row);
        }
        let mut out = format!(
            "leak probe: {} pods -> {}, every {} ms, over {:.3} s; allowed sources: {}\n",
            self.pods.len(),
            self.dst,
            PROBE_INTERVAL.as_millis(),
            self.end.as_secs_f64(),
            list(allowed),
        );
        out.push_str(&render(&rows));
        if !self.marks.is_empty() {
            out.push_str("marks:");
            for m in &self.marks {
                let _ = write!(out, " [+{:.3} s {}]", m.at.as_secs_f64(), m.label);
            }
            out.push('\n');
        }
        let runs = self.leak_runs(allowed);
        if !runs.is_empty() {
            out.push_str("leaks:\n");
            for r in runs {
                let _ = writeln!(
                    out,
                    "  {}: {} x{} from {} to {}",
                    self.pods[r.pod],
                    r.source,
                    r.samples,
                    self.when(r.from),
                    self.when(r.to)
                );
            }
        }
        let failed: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.outcome.seen().is_none())
            .take(FAILED_LISTED)
            .map(|s| {
                format!(
                    "{} {:?} at {}",
                    self.pods[s.pod],
                    s.outcome,
                    self.when(s.at)
                )
            })
            .collect();
        if !failed.is_empty() {
            let _ = writeln!(out, "failed samples (first {FAILED_LISTED}):");
            for f in failed {
                let _ = writeln!(out, "  {f}");
            }
        }
        let errors: BTreeSet<&str> = self
            .samples
            .iter()
            .filter_map(|s| match &s.outcome {
                Outcome::Error(e) => Some(e.as_str()),
                _ => None,
            })
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(
                out,
                "errors seen: {}",
                errors.into_iter().collect::<Vec<_>>().join("; ")
            );
        }
        out
    }

    /// Panics with [`Self::table`] when any sample reached the server from a source not in
    /// `allowed`.
    /// Panics with the table and the offending samples unless every pod reached the server
    /// from `ip` and only from `ip`: no other source, no refusal or error, and no
    /// interruption (timeouts) longer than `max_blip` (on shared cores a 150 ms sample
    /// sometimes times out with nothing wrong; what the tests exist for lasts longer or shows
    /// another source, and none of that is tolerated).
    pub fn assert_only_from(&self, ip: Ipv4Addr, max_blip: Duration, what: &str) {
        let table = self.table(&[ip]);
        let bad: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.outcome != Outcome::Seen(ip))
            .map(|s| {
                format!(
                    "  {} at {}: {:?}",
                    self.pods[s.pod],
                    self.when(s.at),
                    s.outcome
                )
            })
            .collect();
        let bad = bad.join("\n");
        for p in self.summary(&[ip]) {
            assert!(
                p.seen.get(&ip).is_some_and(|&n| n > 0)
                    && p.seen.len() == 1
                    && p.refused == 0
                    && p.errors == 0
                    && p.longest_interruption <= max_blip,
                "{what}: {} did not reach the server from {ip} alone ({} of {} samples did; \
                 longest interruption {:?}, at most {max_blip:?} of timeouts allowed):\n{table}\
                 samples that did not:\n{bad}",
                p.name,
                p.seen.get(&ip).copied().unwrap_or(0),
                p.samples,
                p.longest_interruption,
            );
        }
    }

    pub fn assert_no_leaks(&self, allowed: &[Ipv4Addr]) {
        let leaks = self.leaks(allowed);
        if !leaks.is_empty() {
            panic!(
                "{} of {} samples leaked (reached the server from a source other than {}):\n{}",
                leaks.len(),
                self.samples.len(),
                list(allowed),
                self.table(allowed)
            );
        }
    }

    /// Panics with the table unless every pod in `pods` ends the report steadily reaching the
    /// server from an allowed source (its samples of the last `hold`).
    pub fn assert_resumed(&self, pods: &[usize], allowed: &[Ipv4Addr], hold: Duration) {
        let stuck: Vec<&str> = pods
            .iter()
            .filter(|&&p| !self.steady(p, allowed, hold))
            .map(|&p| self.pods[p].as_str())
            .collect();
        assert!(
            stuck.is_empty(),
            "pods {stuck:?} did not end reaching the server from {} for {hold:?}:\n{}",
            list(allowed),
            self.table(allowed)
        );
    }
}

fn is_good(s: &Sample, allowed: &[Ipv4Addr]) -> bool {
    s.outcome.seen().is_some_and(|ip| allowed.contains(&ip))
}

fn list(ips: &[Ipv4Addr]) -> String {
    if ips.is_empty() {
        return "(none)".into();
    }
    ips.iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Columns padded to their widest cell; the first left-aligned, the rest right-aligned.
fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                let _ = write!(line, "{cell:<w$}", w = width[c]);
            } else {
                let _ = write!(line, "  {cell:>w$}", w = width[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
    const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 13);
    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn s(pod: usize, ms: u64, outcome: Outcome) -> Sample {
        Sample {
            pod,
            at: MS(ms),
            outcome,
        }
    }

    /// Pod 0: good, good, timeout, leak, leak, good, timeout (to the end at 200 ms).
    /// Pod 1: good throughout.
    fn report() -> LeakReport {
        let mut samples = vec![
            s(0, 0, Outcome::Seen(E)),
            s(0, 20, Outcome::Seen(E)),
            s(0, 40, Outcome::Timeout),
            s(0, 100, Outcome::Seen(NODE)),
            s(0, 120, Outcome::Seen(NODE)),
            s(0, 140, Outcome::Seen(E)),
            s(0, 160, Outcome::Refused),
        ];
        samples.extend((0..10).map(|i| s(1, i * 20 + 5, Outcome::Seen(E))));
        samples.sort_by_key(|s| s.at);
        LeakReport {
            dst: SocketAddrV4::new(OPEN_SERVER, SERVER_PORT),
            pods: vec!["a".into(), "b".into()],
            samples,
            marks: vec![Mark {
                at: MS(90),
                label: "cut agent".into(),
            }],
            end: MS(200),
        }
    }

    #[test]
    fn aggregates_sources_and_leaks() {
        let r = report();
        assert_eq!(r.sources(), BTreeSet::from([E, NODE]));
        assert_eq!(r.seen_counts(), BTreeMap::from([(E, 13), (NODE, 2)]));
        assert_eq!(r.leaks(&[E]).len(), 2);
        assert!(r.leaks(&[E, NODE]).is_empty());
        let sum = r.summary(&[E]);
        assert_eq!(sum[0].samples, 7);
        assert_eq!(sum[0].seen, BTreeMap::from([(E, 3), (NODE, 2)]));
        assert_eq!((sum[0].refused, sum[0].timeouts, sum[0].errors), (1, 1, 0));
        assert_eq!(sum[0].leaks, 2);
        assert_eq!(sum[0].first_leak, Some(MS(100)));
        assert_eq!(sum[1].samples, 10);
        assert_eq!(sum[1].leaks, 0);
        assert_eq!(sum[1].first_leak, None);
    }

    #[test]
    fn longest_interruption_runs_to_the_next_good_sample_or_the_end() {
        let r = report();
        // 40 (timeout) .. 140 (good): 100 ms, longer than the open run 160 .. end (40 ms).
        assert_eq!(r.longest_interruption(0, &[E]), MS(100));
        assert_eq!(r.longest_interruption(1, &[E]), Duration::ZERO);
        // With the node address allowed only the timeout run (40 .. 100) interrupts.
        assert_eq!(r.longest_interruption(0, &[E, NODE]), MS(60));
        // Nothing allowed: the whole report from the first sample.
        assert_eq!(r.longest_interruption(0, &[]), MS(200));
        let late = LeakReport {
            end: MS(400),
            ..r.clone()
        };
        assert_eq!(
            late.longest_interruption(0, &[E]),
            MS(240),
            "open to the end"
        );
    }

    #[test]
    fn leak_runs_group_consecutive_samples_per_source() {
        let r = report();
        assert_eq!(
            r.leak_runs(&[E]),
            vec![LeakRun {
                pod: 0,
                source: NODE,
                from: MS(100),
                to: MS(120),
                samples: 2
            }]
        );
    }

    #[test]
    fn since_and_pods_only_filter() {
        let r = report();
        let after = r.since("cut agent");
        assert!(after.samples.iter().all(|s| s.at >= MS(90)));
        assert_eq!(after.leaks(&[E]).len(), 2);
        assert!(r.since_offset(MS(130)).leaks(&[E]).is_empty());
        let b = r.pods_only(&[1]);
        assert_eq!(b.pods, vec!["b".to_string()]);
        assert_eq!(b.samples.len(), 10);
        assert!(b.samples.iter().all(|s| s.pod == 0));
    }

    #[test]
    fn steady_needs_recent_good_samples_only() {
        let r = report();
        assert!(r.steady(1, &[E], MS(50)));
        assert!(!r.steady(0, &[E], MS(50)), "ends refused");
        let quiet = LeakReport {
            end: MS(1000),
            ..r.clone()
        };
        assert!(!quiet.steady(1, &[E], MS(50)), "no recent samples");
    }

    #[test]
    fn the_table_names_the_leak_and_its_time_after_the_event() {
        let r = report();
        let t = r.table(&[E]);
        assert!(t.contains("198.18.0.13 LEAK"), "{t}");
        assert!(t.contains("+0.100 s (cut agent +0.010 s)"), "{t}");
        assert!(t.contains("a: 198.18.0.13 x2 from"), "{t}");
        assert!(t.contains("100 ms"), "{t}");
        let panic = std::panic::catch_unwind(|| r.assert_no_leaks(&[E])).unwrap_err();
        let msg = panic.downcast_ref::<String>().unwrap();
        assert!(msg.starts_with("2 of 17 samples leaked"), "{msg}");
        r.assert_no_leaks(&[E, NODE]);
        r.assert_resumed(&[1], &[E], MS(100));
    }

    #[test]
    fn render_aligns_columns() {
        let out = render(&[
            vec!["pod".into(), "n".into()],
            vec!["a-long-name".into(), "1234".into()],
        ]);
        assert_eq!(out, "pod             n\na-long-name  1234\n");
    }
}
