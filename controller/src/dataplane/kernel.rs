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

use super::Dataplane;
use super::config::DataplaneConfig;
use super::engine::{Engine, KernelSnapshot};
use super::error::DataplaneError;
use super::report::{ApplyReport, RuleCounter};
use crate::plan::NodePlan;

type Reply<T> = mpsc::Sender<Result<T, DataplaneError>>;

enum Request {
    Apply(Box<NodePlan>, Reply<ApplyReport>),
    Cleanup(Reply<ApplyReport>),
    Counters(Reply<Vec<RuleCounter>>),
    Snapshot(Reply<KernelSnapshot>),
    RefreshLifetimes(Reply<usize>),
    Routing(Reply<super::route_model::RoutingState>),
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
}

impl KernelDataplane {
    /// Starts the dataplane thread (entering `cfg.netns` if set). Nothing is changed in the
    /// kernel until the first [`Dataplane::apply`]; that apply reads what is there.
    pub fn new(cfg: DataplaneConfig) -> Result<Self, DataplaneError> {
        cfg.validate().map_err(DataplaneError::Config)?;
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("egressgw-dataplane".into())
            .spawn(move || {
                let started = match &cfg.netns {
                    Some(p) => enter_netns(p),
                    None => Ok(()),
                }
                .and_then(|()| Engine::new(cfg));
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
                        Request::Routing(reply) => {
                            drop(reply.send(super::engine::read_routing(engine.config())))
                        }
                        Request::RefreshLifetimes(reply) => {
                            drop(reply.send(super::engine::refresh_lifetimes(engine.config())))
                        }
                    }
                }
            })
            .map_err(|e| DataplaneError::kernel("spawn", "dataplane thread", e))?;
        ready_rx.recv().map_err(|_| DataplaneError::ThreadGone)??;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
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
