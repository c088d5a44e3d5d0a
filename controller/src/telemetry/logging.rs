//! `tracing` set-up: text for people, JSON for log pipelines (`--log-format json`).

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Default filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,kube=warn,tower=warn,hyper=warn";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Install the global subscriber (once, at start-up).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}
