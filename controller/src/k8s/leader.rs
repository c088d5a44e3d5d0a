//! Leader election on a `coordination.k8s.io` Lease, judged by the observer's own clock.
//!
//! A standby takes over when it has seen the Lease unchanged for `lease_duration` (measured
//! with its monotonic clock, so no two clocks must agree); the leader steps down when it
//! could not renew for `renew_deadline` < `lease_duration`. Every write is a compare-and-swap
//! on `resourceVersion`, so two candidates can never both win.
//!
//! A leader that is told to stop releases the Lease (clears the holder); a standby watches
//! the Lease and takes a released one at once, so a rolling update hands leadership over in
//! one round trip instead of a lease duration.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use thiserror::Error;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::k8s::watch::watch_config;

#[derive(Debug, Error)]
pub enum LeaderError {
    #[error("leader lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("lost the leader lease {name}: {why}")]
    Lost { name: String, why: String },
}

/// Timing of the election.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// What a candidate has seen of the Lease: a takeover needs it unchanged for a full duration.
#[derive(Clone, Debug)]
pub struct Observation {
    version: String,
    since: Instant,
}

impl Observation {
    /// Record the Lease version seen at `now`; returns whether the holder may be presumed dead.
    pub fn observe(
        slot: &mut Option<Observation>,
        version: &str,
        now: Instant,
        duration: Duration,
    ) -> bool {
        match slot {
            Some(o) if o.version == version => now.duration_since(o.since) >= duration,
            _ => {
                *slot = Some(Observation {
                    version: version.to_string(),
                    since: now,
                });
                false
            }
        }
    }
}

/// Whether nobody holds `lease` (released, or never taken).
fn released(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

/// Compare-and-swap attempts to release the Lease (each retry follows a conflicting write).
const RELEASE_ATTEMPTS: usize = 3;

pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    /// When this replica last won or renewed the Lease (its own monotonic clock).
    last_ok: std::sync::Mutex<Option<Instant>>,
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl LeaderElector {
    pub fn new(client: Client, cfg: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            last_ok: std::sync::Mutex::new(None),
        }
    }

    /// Whether this replica may act as leader now: it won or renewed the Lease less than the
    /// renew deadline ago on its own clock. A leader that was frozen (SIGSTOP, a long pause)
    /// finds this false when it resumes and writes nothing until it has renewed again.
    pub fn valid(&self) -> bool {
        self.last_ok
            .lock()
            .expect("leader lock")
            .is_some_and(|t| t.elapsed() < self.cfg.renew_deadline)
    }

    fn mark_ok(&self, at: Instant) {
        *self.last_ok.lock().expect("leader lock") = Some(at);
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            source,
        }
    }

    fn held_by_me(&self, spec: &LeaseSpec) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs().max(1) as i32),
            renew_time: Some(now_micro()),
            ..spec.clone()
        }
    }

    /// Wait until this candidate holds the Lease. Tries every `retry_period`, and at once
    /// whenever the Lease changes (a leader released it).
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        let changed = Notify::new();
        let watch = async {
            let config = watch_config().fields(&format!("metadata.name={}", self.cfg.name));
            let mut events = std::pin::pin!(watcher(self.api.clone(), config).default_backoff());
            while let Some(event) = events.next().await {
                // Only a released or deleted Lease is worth an attempt at once; a renewal by
                // the holder is not (the poll judges expiry).
                match event {
                    Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) if released(&l) => {
                        changed.notify_one()
                    }
                    Ok(watcher::Event::Delete(_)) => changed.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        warn!(lease = %self.cfg.name, error = %e, "cannot watch the leader lease; polling only until it recovers")
                    }
                }
            }
            // Polling alone still elects.
            std::future::pending::<()>().await;
        };
        let attempts = async {
            let mut seen: Option<Observation> = None;
            loop {
                let started = Instant::now();
                match tokio::time::timeout(self.cfg.renew_deadline, self.try_acquire(&mut seen))
                    .await
                {
                    Ok(Ok(true)) => {
                        self.mark_ok(started);
                        info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                        return Ok(());
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => warn!(error = %e, "leader election attempt failed"),
                    Err(_) => warn!(
                        timeout = ?self.cfg.renew_deadline,
                        "leader election attempt timed out"
                    ),
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.retry_period) => {}
                    _ = changed.notified() => {}
                }
            }
        };
        tokio::select! {
            r = attempts => r,
            _ = watch => unreachable!("the lease watch never ends"),
        }
    }

    /// Give the Lease up (only if this candidate still holds it), so a standby takes over at
    /// once. The caller must have stopped acting as leader first.
    pub async fn release(&self) -> Result<(), LeaderError> {
        for _ in 0..RELEASE_ATTEMPTS {
            let Some(mut lease) = self
                .api
                .get_opt(&self.cfg.name)
                .await
                .map_err(|e| self.err(e))?
            else {
                return Ok(());
            };
            let spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
                return Ok(());
            }
            lease.spec = Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(now_micro()),
                ..spec
            });
            match self
                .api
                .replace(&self.cfg.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => {
                    info!(lease = %self.cfg.name, identity = %self.cfg.identity, "released the leader lease");
                    return Ok(());
                }
                // A renewal in flight when we stopped landed first: read again.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(self.err(e)),
            }
        }
        Err(LeaderError::Lost {
            name: self.cfg.name.clone(),
            why: format!("could not release it in {RELEASE_ATTEMPTS} attempts"),
        })
    }

    async fn try_acquire(&self, seen: &mut Option<Observation>) -> Result<bool, LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    acquire_time: Some(now_micro()),
                    lease_transitions: Some(0),
                    ..self.held_by_me(&LeaseSpec::default())
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let mine = holder == self.cfg.identity;
        let free = holder.is_empty() || mine;
        if !free && !Observation::observe(seen, &version, Instant::now(), self.cfg.lease_duration) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        lease.spec = Some(LeaseSpec {
            acquire_time: Some(now_micro()),
            lease_transitions: Some(transitions),
            ..self.held_by_me(&spec)
        });
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Renew until leadership is lost; returns why. The caller must stop acting as leader.
    /// Every renewal has a timeout (the renew deadline): a hung apiserver connection cannot
    /// keep a leader that no longer renews.
    pub async fn hold(&self) -> LeaderError {
        let mut last_ok = Instant::now();
        self.mark_ok(last_ok);
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            let started = Instant::now();
            let result = match tokio::time::timeout(self.cfg.renew_deadline, self.renew()).await {
                Ok(r) => r,
                Err(_) => Err(LeaderError::Lost {
                    name: self.cfg.name.clone(),
                    why: format!("a renewal took longer than {:?}", self.cfg.renew_deadline),
                }),
            };
            match result {
                Ok(()) => {
                    // valid from when the renewal was sent, not when it returned
                    last_ok = started;
                    self.mark_ok(started);
                }
                Err(e @ LeaderError::Lost { .. }) => {
                    *self.last_ok.lock().expect("leader lock") = None;
                    return e;
                }
                Err(e) => {
                    warn!(error = %e, "cannot renew the leader lease");
                    if last_ok.elapsed() >= self.cfg.renew_deadline {
                        *self.last_ok.lock().expect("leader lock") = None;
                        return LeaderError::Lost {
                            name: self.cfg.name.clone(),
                            why: format!("no successful renewal for {:?}", last_ok.elapsed()),
                        };
                    }
                }
            }
        }
    }

    async fn renew(&self) -> Result<(), LeaderError> {
        let mut lease = self
            .api
            .get(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?;
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Err(LeaderError::Lost {
                name: self.cfg.name.clone(),
                why: format!("now held by {:?}", spec.holder_identity.unwrap_or_default()),
            });
        }
        lease.spec = Some(self.held_by_me(&spec));
        self.api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_presumed_dead_only_after_a_full_duration_without_change() {
        let d = Duration::from_secs(4);
        let t0 = Instant::now();
        let mut seen = None;
        assert!(
            !Observation::observe(&mut seen, "1", t0, d),
            "first sight starts the clock"
        );
        assert!(!Observation::observe(
            &mut seen,
            "1",
            t0 + Duration::from_secs(3),
            d
        ));
        assert!(
            !Observation::observe(&mut seen, "2", t0 + Duration::from_secs(5), d),
            "a renewal restarts it"
        );
        assert!(!Observation::observe(
            &mut seen,
            "2",
            t0 + Duration::from_secs(8),
            d
        ));
        assert!(Observation::observe(
            &mut seen,
            "2",
            t0 + Duration::from_secs(9),
            d
        ));
    }
}
