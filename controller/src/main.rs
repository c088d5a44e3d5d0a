//! The `egressgw` binary: `controller`, `agent`, and `crd`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use egressgw::telemetry::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "egressgw",
    version,
    about = "Kubernetes egress gateway: stable egress IPs for selected pods"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the EgressGateway CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller (a Deployment; leader-elected).
    Controller(egressgw::controller::ControllerArgs),
    /// Run the node agent (a DaemonSet), or clean up a node with --cleanup.
    Agent(egressgw::agent::AgentArgs),
}

fn main() -> ExitCode {
    egressgw::telemetry::memory::limit_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => egressgw::api::crd::yaml()
            .map(|y| print!("{y}"))
            .map_err(anyhow::Error::from),
        Command::Controller(args) => {
            logging::init(cli.log_format);
            runtime().and_then(|rt| rt.block_on(egressgw::controller::run(args)))
        }
        Command::Agent(args) => {
            logging::init(cli.log_format);
            runtime().and_then(|rt| rt.block_on(egressgw::agent::run(args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
