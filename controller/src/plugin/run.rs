//! Each command: read what it needs, hand it to the pure part, print the result.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use ipnetwork::IpNetwork;

use super::allowlist::{allowlist, render_lines};
use super::cli::{AllowlistArgs, AllowlistFormat, Cli, Command, ExplainTarget, IpsFormat};
use super::error::PluginError;
use super::explain::{explain, render};
use super::fetch::{self, Cluster};
use super::firewall::{NftTarget, iptables, nftables};
use super::ips;
use super::snapshot::{Snapshot, renewed};
use crate::index::PodKey;
use crate::plan::assign::assign;

/// Run one command; the output goes to `out`, warnings to stderr.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), PluginError> {
    let cluster = fetch::connect(&cli.connection).await?;
    let text = match cli.command {
        Command::Ips { output } => ips_text(&cluster, output).await?,
        Command::Explain {
            target:
                ExplainTarget::Pod {
                    name,
                    namespace,
                    liveness_window_ms,
                },
        } => {
            let namespace = namespace.unwrap_or_else(|| cluster.default_namespace.clone());
            explain_text(
                &cluster,
                &namespace,
                &name,
                Duration::from_millis(liveness_window_ms),
            )
            .await?
        }
        Command::Allowlist(args) => allowlist_text(&cluster, &args).await?,
    };
    out.write_all(text.as_bytes())
        .map_err(|e| PluginError::Encode {
            format: "output",
            message: e.to_string(),
        })
}

async fn ips_text(cluster: &Cluster, format: IpsFormat) -> Result<String, PluginError> {
    let gateways = fetch::gateways(&cluster.client).await?;
    let rows = ips::rows(&gateways);
    if rows.is_empty() && matches!(format, IpsFormat::Table | IpsFormat::Wide) {
        eprintln!("No egress IPs found: no EgressGateway exists.");
    }
    ips::render(&rows, format)
}

async fn explain_text(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    window: Duration,
) -> Result<String, PluginError> {
    let client = &cluster.client;
    let gateways = fetch::gateways(client).await?;
    let pod = fetch::pod(client, namespace, name).await?;
    let mut snapshot = Snapshot {
        gateways,
        nodes: fetch::nodes(client).await?,
        namespaces: fetch::namespaces(client).await?,
        leases: fetch::agent_leases(client).await?,
        pods: vec![pod],
    };
    let key = PodKey::new(namespace, name);
    let statuses = snapshot.statuses();
    // Liveness does not matter for what status records; every agent counts as alive here.
    let all: BTreeSet<String> = super::snapshot::reports(&snapshot.leases)
        .into_keys()
        .collect();
    let index = snapshot.index(&all);
    let mut e = explain(&index, &key, &statuses, None).ok_or_else(|| not_found(namespace, name))?;
    if e.needs_current_state() {
        eprintln!(
            "An egress IP has no node: watching the agents' Leases for {window:?} to judge which agents are alive…"
        );
        tokio::time::sleep(window).await;
        let later = fetch::agent_leases(client).await?;
        let alive = renewed(&snapshot.leases, &later);
        snapshot.leases = later;
        let index = snapshot.index(&alive);
        let current = assign(&index);
        e = explain(&index, &key, &statuses, Some(&current))
            .ok_or_else(|| not_found(namespace, name))?;
    }
    Ok(render(&e))
}

fn not_found(namespace: &str, name: &str) -> PluginError {
    PluginError::PodNotFound {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

async fn allowlist_text(cluster: &Cluster, args: &AllowlistArgs) -> Result<String, PluginError> {
    let within: Option<IpNetwork> = match &args.destination {
        Some(d) if d.contains('/') => Some(
            d.parse()
                .map_err(|_| PluginError::BadDestination { value: d.clone() })?,
        ),
        Some(d) => return Err(PluginError::BadDestination { value: d.clone() }),
        None => None,
    };
    let nft = NftTarget::parse(&args.nft_table, &args.nft_chain).ok_or_else(|| {
        PluginError::BadNftTable {
            value: args.nft_table.clone(),
        }
    })?;
    let gateways = fetch::gateways(&cluster.client).await?;
    let list = allowlist(&gateways, within.as_ref());
    let comments_carry_skips = matches!(
        args.output,
        AllowlistFormat::Nftables | AllowlistFormat::Iptables
    );
    if !comments_carry_skips {
        for s in &list.skipped {
            eprintln!("warning: gateway {} skipped: {}", s.gateway, s.reason);
        }
    }
    if list.entries.is_empty() {
        let scope = within.map(|w| format!(" reaching {w}")).unwrap_or_default();
        eprintln!(
            "No egress traffic{scope}: no EgressGateway with valid egress IPs and destinations."
        );
    }
    Ok(match args.output {
        AllowlistFormat::Lines => render_lines(&list),
        AllowlistFormat::Json => serde_json::to_string_pretty(&list.entries)
            .map(|s| s + "\n")
            .map_err(|e| PluginError::Encode {
                format: "JSON",
                message: e.to_string(),
            })?,
        AllowlistFormat::Nftables => nftables(&list, &nft),
        AllowlistFormat::Iptables => iptables(&list, &args.iptables_chain),
    })
}
