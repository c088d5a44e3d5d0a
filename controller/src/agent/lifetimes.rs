//! Extending the kernel lifetime of the node's egress IPs, on a thread of its own.
//!
//! The dataplane thread can be busy for a while with an apply (a large transaction, a
//! conntrack clean-up); a lifetime extension queued behind it could land after the moment
//! that justified it. Here every extension carries a deadline and is checked against it right
//! before the netlink call, on a thread nothing else uses: late means not at all.

use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::warn;

use crate::dataplane::config::DataplaneConfig;
use crate::dataplane::error::DataplaneError;
use crate::dataplane::ownership::SharedOwnership;

type Reply = oneshot::Sender<Result<Option<usize>, DataplaneError>>;
/// A request: the deadline, a lifetime other than the configured one, where to answer.
type Request = (Instant, Option<u32>, Reply);

/// Handle to the lifetime thread.
pub struct Lifetimes {
    tx: mpsc::Sender<Request>,
}

impl Lifetimes {
    /// Start the thread (in the dataplane's network namespace); it extends only the addresses
    /// `ours` says the dataplane added.
    pub fn start(cfg: DataplaneConfig, ours: SharedOwnership) -> Result<Self, DataplaneError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("lifetimes".into())
            .spawn(move || {
                if let Some(path) = cfg.netns.as_deref()
                    && let Err(e) = crate::dataplane::kernel::enter_netns(path)
                {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                while let Ok((deadline, secs, reply)) = rx.recv() {
                    let r = if Instant::now() > deadline {
                        Ok(None)
                    } else if let Some(secs) = secs {
                        let cfg = DataplaneConfig {
                            address_lifetime_secs: Some(secs),
                            ..cfg.clone()
                        };
                        crate::dataplane::engine::refresh_lifetimes(&cfg, &ours).map(Some)
                    } else {
                        crate::dataplane::engine::refresh_lifetimes(&cfg, &ours).map(Some)
                    };
                    let _ = reply.send(r);
                }
            })
            .map_err(|e| DataplaneError::kernel("spawn", "lifetime thread", e))?;
        ready_rx.recv().map_err(|_| DataplaneError::ThreadGone)??;
        Ok(Self { tx })
    }

    /// Extend the lifetimes of our egress IPs, unless `deadline` has passed by the time the
    /// netlink call would be made. `Ok(Some(n))`: n addresses extended; `Ok(None)`: too late,
    /// nothing extended.
    pub async fn refresh_by(&self, deadline: Instant) -> Result<Option<usize>, DataplaneError> {
        self.request(deadline, None).await
    }

    /// [`Self::refresh_by`], with a lifetime of `secs` (a handover window) instead of the
    /// configured one.
    pub async fn extend_by(
        &self,
        deadline: Instant,
        secs: u32,
    ) -> Result<Option<usize>, DataplaneError> {
        self.request(deadline, Some(secs)).await
    }

    async fn request(
        &self,
        deadline: Instant,
        secs: Option<u32>,
    ) -> Result<Option<usize>, DataplaneError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((deadline, secs, tx)).is_err() {
            return Err(DataplaneError::ThreadGone);
        }
        rx.await.unwrap_or_else(|_| {
            warn!("the lifetime thread dropped a request");
            Err(DataplaneError::ThreadGone)
        })
    }
}
