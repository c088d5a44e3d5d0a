//! [`KernelDataplane`]: the engine on its own OS thread, inside the configured network
//! namespace. Every kernel socket is opened on that thread, so the rest of the process (the
//! API client) stays in its own namespace. That includes the rtnetlink connections: each is
//! created on this thread, after `setns`, with a current-thread tokio runtime of its own (see
//! [`super::rtnl`]); the thread itself is not inside any runtime.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use tokio::sync::mpsc::UnboundedReceiver;

use super::Dataplane;
use super::config::DataplaneConfig;
use super::drift_events::DriftCause;
use super::drift_watch::{self, DriftShared};
use super::engine::{Engine, KernelSnapshot};
use super::error::DataplaneError;
use super::ownership::SharedOwnership;
use super::report::{ApplyReport, RuleCounter};
use super::truth::KernelReport;
use crate::plan::NodePlan;

type Reply<T> = mpsc::Sender<Result<T, DataplaneError>>;

enum Request {
    Apply(Box<NodePlan>, Reply<ApplyReport>),
    Cleanup(Reply<ApplyReport>),
    Counters(Reply<Vec<RuleCounter>>),
    Snapshot(Reply<KernelSnapshot>),
    RefreshLifetimes(Reply<usize>),
    Routing(Reply<super::route_model::RoutingState>),
    Ownership(Reply<SharedOwnership>),
    Truth(Reply<Option<KernelReport>>),
}

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter_netns(path: &Path) -> Result<(), DataplaneError> {
    let err = |source| DataplaneError::Netns {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(err)?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The node dataplane backed by the kernel.
pub struct KernelDataplane {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    cfg: DataplaneConfig,
    drift: DriftShared,
}

impl KernelDataplane {
    /// Starts the dataplane thread (entering `cfg.netns` if set). Nothing is changed in the
    /// kernel until the first [`Dataplane::apply`]; that apply reads what is there.
    pub fn new(cfg: DataplaneConfig) -> Result<Self, DataplaneError> {
        cfg.validate().map_err(DataplaneError::Config)?;
        let drift = DriftShared::new();
        let (engine_cfg, engine_drift) = (cfg.clone(), drift.clone());
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("egressgw-dataplane".into())
            .spawn(move || {
                let started = match &engine_cfg.netns {
                    Some(p) => enter_netns(p),
                    None => Ok(()),
                }
                .and_then(|()| Engine::with_drift(engine_cfg, engine_drift));
                let mut engine = match started {
                    Ok(e) => {
                        let _ = ready_tx.send(Ok(()));
                        e
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for req in rx {
                    match req {
                        Request::Apply(plan, reply) => drop(reply.send(engine.apply(&plan))),
                        Request::Cleanup(reply) => drop(reply.send(engine.cleanup())),
                        Request::Counters(reply) => drop(reply.send(engine.counters())),
                        Request::Snapshot(reply) => drop(reply.send(engine.snapshot())),
                        Request::Routing(reply) => drop(reply.send(engine.read_routing())),
                        Request::Ownership(reply) => drop(reply.send(Ok(engine.ownership()))),
                        Request::Truth(reply) => drop(reply.send(Ok(engine.truth()))),
                        Request::RefreshLifetimes(reply) => {
                            drop(reply.send(engine.refresh_lifetimes()))
                        }
                    }
                }
            })
            .map_err(|e| DataplaneError::kernel("spawn", "dataplane thread", e))?;
        ready_rx.recv().map_err(|_| DataplaneError::ThreadGone)??;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            cfg,
            drift,
        })
    }

    /// Starts the drift monitor in this dataplane's namespace: every change to our kernel
    /// objects made by someone else arrives as a [`DriftCause`] (our own commits do not), and
    /// the next [`Dataplane::apply`] reads our table from the kernel again when the cause
    /// needs it. The monitor stops when the receiver is dropped.
    pub fn watch_drift(&self) -> Result<UnboundedReceiver<DriftCause>, DataplaneError> {
        drift_watch::spawn(self.cfg.clone(), self.drift.clone())
    }

    /// The state shared with the drift monitor (marks the table stale without the engine).
    pub fn drift_shared(&self) -> DriftShared {
        self.drift.clone()
    }

    /// Marks our table as possibly changed: the next apply reads it from the kernel and
    /// diffs against what is really there (the periodic full check).
    pub fn mark_drift(&self, cause: DriftCause) {
        self.drift.mark(cause);
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, DataplaneError> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.tx
            .as_ref()
            .ok_or(DataplaneError::ThreadGone)?
            .send(make(reply_tx))
            .map_err(|_| DataplaneError::ThreadGone)?;
        reply_rx.recv().map_err(|_| DataplaneError::ThreadGone)?
    }

    /// Everything of ours the kernel holds right now (tests, debugging).
    pub fn snapshot(&self) -> Result<KernelSnapshot, DataplaneError> {
        self.call(Request::Snapshot)
    }

    /// Every link and IPv4 address in the namespace.
    pub fn routing(&self) -> Result<super::route_model::RoutingState, DataplaneError> {
        self.call(Request::Routing)
    }

    /// The engine's address record and socket ports, for the agent's lifetime thread.
    pub fn ownership(&self) -> Result<SharedOwnership, DataplaneError> {
        self.call(Request::Ownership)
    }

    /// What the last apply found in the kernel against its plan (see [`super::truth`]).
    pub fn truth(&self) -> Result<Option<KernelReport>, DataplaneError> {
        self.call(Request::Truth)
    }

    /// Extend the kernel lifetime of the egress IPs held here; returns how many.
    pub fn refresh_lifetimes(&self) -> Result<usize, DataplaneError> {
        self.call(Request::RefreshLifetimes)
    }
}

impl Dataplane for KernelDataplane {
    fn apply(&mut self, plan: &NodePlan) -> Result<ApplyReport, DataplaneError> {
        let plan = Box::new(plan.clone());
        self.call(|r| Request::Apply(plan, r))
    }

    fn cleanup(&mut self) -> Result<ApplyReport, DataplaneError> {
        self.call(Request::Cleanup)
    }

    fn counters(&mut self) -> Result<Vec<RuleCounter>, DataplaneError> {
        self.call(Request::Counters)
    }
}

impl Drop for KernelDataplane {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
