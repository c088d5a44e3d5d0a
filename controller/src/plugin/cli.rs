//! The command line of `kubectl egress`, with kubectl's connection flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default `-o` of `kubectl egress ips`.
pub const DEFAULT_IPS_FORMAT: IpsFormat = IpsFormat::Table;
/// How long `explain` watches the agents' Leases to judge which agents are alive, when an
/// egress IP the pod depends on has no node. Longer than the controller's takeover deadline,
/// so an agent that renews at all is seen renewing.
pub const DEFAULT_LIVENESS_WINDOW_MS: u64 = 2000;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-egress",
    bin_name = "kubectl egress",
    version,
    about = "Inspect egressgw: egress IPs, why a pod leaves from the IP it does, what firewalls must allow"
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the cluster, as kubectl does.
#[derive(Clone, Debug, Default, Args)]
pub struct Connection {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Username to impersonate for the operation.
    #[arg(long = "as", global = true, value_name = "USER")]
    pub impersonate: Option<String>,
    /// Group to impersonate (repeat for several).
    #[arg(long = "as-group", global = true, value_name = "GROUP")]
    pub impersonate_groups: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every egress IP in the cluster: gateway, node hosting it now, destinations, selected
    /// pods, ready.
    Ips {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = DEFAULT_IPS_FORMAT)]
        output: IpsFormat,
    },
    /// Explain which gateway and egress IP a pod uses for which destinations, or why none.
    Explain {
        #[command(subcommand)]
        target: ExplainTarget,
    },
    /// What a firewall in front of the destinations must allow: the egress IPs per
    /// destination network.
    Allowlist(AllowlistArgs),
}

#[derive(Debug, Subcommand)]
pub enum ExplainTarget {
    /// Explain one pod.
    Pod {
        /// The pod's name.
        name: String,
        /// The pod's namespace (default: the context's namespace).
        #[arg(short, long)]
        namespace: Option<String>,
        /// How long to watch agent Leases when an egress IP has no node, milliseconds.
        #[arg(long, default_value_t = DEFAULT_LIVENESS_WINDOW_MS)]
        liveness_window_ms: u64,
    },
}

#[derive(Debug, Args)]
pub struct AllowlistArgs {
    /// Only what reaches this network (e.g. the network behind your firewall).
    #[arg(long, value_name = "CIDR")]
    pub destination: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = AllowlistFormat::Lines)]
    pub output: AllowlistFormat,
    /// nftables: family and table of the chain the rules go into.
    #[arg(long, default_value = "inet filter", value_name = "FAMILY TABLE")]
    pub nft_table: String,
    /// nftables: the chain the rules go into.
    #[arg(long, default_value = "forward")]
    pub nft_chain: String,
    /// iptables: the chain the rules go into.
    #[arg(long, default_value = "FORWARD")]
    pub iptables_chain: String,
}

/// Output formats of `ips`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IpsFormat {
    Table,
    Wide,
    Json,
    Yaml,
    Csv,
}

/// Output formats of `allowlist`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AllowlistFormat {
    /// `SOURCE DESTINATION` per line.
    Lines,
    Json,
    /// `add rule …` lines for `nft -f` (`-o nft` for short).
    #[value(alias = "nft")]
    Nftables,
    /// `iptables -A …` commands.
    Iptables,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn allowlist_format(args: &[&str]) -> Result<AllowlistFormat, clap::Error> {
        let argv = ["kubectl-egress", "allowlist"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Allowlist(a) => Ok(a.output),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn nft_is_short_for_nftables() {
        assert_eq!(
            allowlist_format(&["-o", "nft"]).unwrap(),
            AllowlistFormat::Nftables
        );
        assert_eq!(
            allowlist_format(&["--output", "nftables"]).unwrap(),
            AllowlistFormat::Nftables
        );
        assert_eq!(
            allowlist_format(&["-o", "iptables"]).unwrap(),
            AllowlistFormat::Iptables
        );
        assert_eq!(allowlist_format(&[]).unwrap(), AllowlistFormat::Lines);
        assert!(allowlist_format(&["-o", "nf"]).is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
