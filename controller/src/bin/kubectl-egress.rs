//! `kubectl-egress`: the kubectl plugin (`kubectl egress …` finds it on the PATH).

use std::process::ExitCode;

use clap::Parser;
use egressgw::plugin::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(run(cli, &mut std::io::stdout().lock()))
                .map_err(anyhow::Error::from)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
