//! Measurements: /proc of a process, the apiserver's own request counters, the agent's
//! latency histogram, and the gateways' statuses and the leader Lease's holder as watches
//! deliver them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use egressgw::api::EgressGateway;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

/// Resident set (KiB) and CPU time (user + system) of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub cpu: Duration,
}

pub fn proc_sample(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        v if v > 0 => v as f64,
        _ => 100.0,
    };
    Ok(ProcSample {
        rss_kib,
        cpu: Duration::from_secs_f64(ticks as f64 / hz),
    })
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `apiserver_request_total` summed by (verb, resource[/subresource]).
pub async fn apiserver_requests(client: &Client) -> Result<BTreeMap<(String, String), f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let get = |k: &str| {
            let pat = format!("{k}=\"");
            labels
                .split(&pat)
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let mut res = get("resource");
        let sub = get("subresource");
        if !sub.is_empty() {
            res = format!("{res}/{sub}");
        }
        *out.entry((get("verb"), res)).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(out)
}

/// Cumulative buckets (upper bound in seconds -> count) of a Prometheus histogram.
/// The value of an unlabelled metric (counter or gauge) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        let n = n.strip_suffix("_total").unwrap_or(n);
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

pub fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut v: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let n: f64 = l.rsplit_once(' ')?.1.parse().ok()?;
            Some((le, n))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The `q` quantile of the observations between two cumulative snapshots, linearly
/// interpolated inside its bucket (as Prometheus' histogram_quantile does).
pub fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let d: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            (
                *le,
                n - before.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1),
            )
        })
        .collect();
    let total = d.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, n) in d {
        if n >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let frac = if n > prev.1 {
                (rank - prev.1) / (n - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, n);
    }
    None
}

pub fn histogram_count(before: &[(f64, f64)], after: &[(f64, f64)]) -> f64 {
    after.last().map_or(0.0, |a| a.1) - before.last().map_or(0.0, |b| b.1)
}

/// What the benchmark's watch last saw of one gateway.
#[derive(Clone, Debug, Default)]
pub struct GwSeen {
    pub selected: i64,
    /// Egress IP -> node.
    pub nodes: BTreeMap<String, Option<String>>,
    pub current: bool,
}

/// Gateway statuses as one watch delivers them.
#[derive(Clone)]
pub struct GatewayWatch {
    pub seen: Arc<Mutex<HashMap<String, GwSeen>>>,
    pub changed: Arc<Notify>,
}

impl GatewayWatch {
    pub fn start(client: Client) -> Self {
        let seen: Arc<Mutex<HashMap<String, GwSeen>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let (s, c) = (seen.clone(), changed.clone());
        tokio::spawn(async move {
            let api: Api<EgressGateway> = Api::all(client);
            let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(ev) = stream.next().await {
                let objs = match ev {
                    Ok(watcher::Event::Apply(g) | watcher::Event::InitApply(g)) => vec![g],
                    _ => continue,
                };
                let mut m = s.lock().expect("watch");
                for g in objs {
                    let st = g.status.clone().unwrap_or_default();
                    m.insert(
                        g.name_any(),
                        GwSeen {
                            selected: st.selected_pods.unwrap_or(0),
                            nodes: st
                                .assignments
                                .iter()
                                .map(|a| (a.egress_ip.clone(), a.node.clone()))
                                .collect(),
                            current: st.observed_generation == g.metadata.generation,
                        },
                    );
                }
                drop(m);
                c.notify_waiters();
            }
        });
        Self { seen, changed }
    }

    pub fn get(&self, name: &str) -> Option<GwSeen> {
        self.seen.lock().expect("watch").get(name).cloned()
    }

    /// Wait until `check` holds for the whole map; returns when it was first seen holding.
    pub async fn wait(
        &self,
        timeout: Duration,
        check: impl Fn(&HashMap<String, GwSeen>) -> bool,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if check(&self.seen.lock().expect("watch")) {
                return Some(Instant::now());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}

/// The holder of one Lease as a watch delivers it: every change of `holderIdentity` (an
/// empty string when released or absent) with when the watch showed it.
pub struct LeaseHolderWatch {
    changes: Arc<Mutex<Vec<(String, Instant)>>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseHolderWatch {
    /// Watch Lease `ns/name`; returns once the watch's first list is in (or after 30 s).
    pub async fn start(client: Client, ns: &str, name: &str) -> Self {
        let changes: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let (listed_tx, listed_rx) = tokio::sync::oneshot::channel::<()>();
        let (c, n) = (changes.clone(), changed.clone());
        let api: Api<Lease> = Api::namespaced(client, ns);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            let mut listed = Some(listed_tx);
            let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(ev) = stream.next().await {
                let holder = match ev {
                    Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => {
                        l.spec.and_then(|s| s.holder_identity).unwrap_or_default()
                    }
                    Ok(watcher::Event::Delete(_)) => String::new(),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let mut v = c.lock().expect("lease watch");
                if v.last().is_none_or(|(h, _)| *h != holder) {
                    v.push((holder, Instant::now()));
                    drop(v);
                    n.notify_waiters();
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), listed_rx).await;
        Self {
            changes,
            changed,
            task,
        }
    }

    /// The holder now (empty: none, or not seen yet).
    pub fn holder(&self) -> String {
        self.changes
            .lock()
            .expect("lease watch")
            .last()
            .map(|(h, _)| h.clone())
            .unwrap_or_default()
    }

    /// When the watch first showed a holder matching `check` at or after `since`.
    pub fn first_since(&self, since: Instant, check: impl Fn(&str) -> bool) -> Option<Instant> {
        self.changes
            .lock()
            .expect("lease watch")
            .iter()
            .find(|(h, t)| *t >= since && check(h))
            .map(|(_, t)| *t)
    }

    /// Wait until the watch shows a holder matching `check` at or after `since`; when it did.
    pub async fn wait(
        &self,
        since: Instant,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(t) = self.first_since(since, &check) {
                return Some(t);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}

impl Drop for LeaseHolderWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub use egressgw_bench_runtime::quantile;

pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}
