//! `kubectl egress`, the kubectl plugin for operators and network teams.
//!
//! - [`cli`]: commands and flags (kubectl's `--kubeconfig`, `--context`, `--as`);
//! - [`fetch`]: the client and the API reads, errors classified in [`error`];
//! - [`snapshot`]: API objects to the planner's index;
//! - pure output: [`ips`] (one row per egress IP, [`table`] printing), [`explain`] (one pod,
//!   through [`crate::plan`]'s own selection and assignment, selectors in [`selector_text`]),
//!   [`allowlist`] (sources per destination, [`cidrs`]) and [`firewall`] (nftables/iptables);
//! - [`run`]: the glue.

pub mod allowlist;
pub mod cidrs;
pub mod cli;
pub mod error;
pub mod explain;
pub mod fetch;
pub mod firewall;
pub mod ips;
pub mod run;
pub mod selector_text;
pub mod snapshot;
pub mod table;

pub use cli::Cli;
pub use error::PluginError;
pub use run::run;
