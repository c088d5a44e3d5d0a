//! Stop requests: the first SIGTERM or SIGINT.

use tracing::info;

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed when this is called,
/// so a signal that arrives before the future is polled is not lost.
pub fn stop_requested() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "stop requested"),
            _ = int.recv() => info!(signal = "SIGINT", "stop requested"),
        }
    })
}
