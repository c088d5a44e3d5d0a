//! `kubectl egress ips`: one row per egress IP of every gateway, from specs and statuses.

use serde::Serialize;

use super::cli::IpsFormat;
use super::error::PluginError;
use super::table;
use crate::api::EgressGateway;
use crate::status::{NO_NODE, condition};

/// Shown for a value the controller has not written (yet).
pub const UNKNOWN: &str = "Unknown";

/// One egress IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRow {
    #[serde(rename = "egressIP")]
    pub egress_ip: String,
    pub gateway: String,
    /// The node hosting the IP now (`None`: no node).
    pub node: Option<String>,
    pub interface: Option<String>,
    /// When the IP arrived on its node (RFC 3339).
    pub since: Option<String>,
    pub destinations: Vec<String>,
    pub excluded: Vec<String>,
    pub selected_pods: Option<i64>,
    /// The gateway's `Ready` condition status (`True`, `False`, or `Unknown` before the
    /// controller wrote one) and reason.
    pub ready: String,
    pub reason: Option<String>,
    /// Whether the status describes the current spec (`observedGeneration == generation`).
    pub current: bool,
}

/// The rows of every gateway, sorted by IP (numerically) then gateway.
pub fn rows(gateways: &[EgressGateway]) -> Vec<IpRow> {
    let mut out = Vec::new();
    for gw in gateways {
        let name = gw.metadata.name.clone().unwrap_or_default();
        let status = gw.status.as_ref();
        let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::READY));
        let current = status.and_then(|s| s.observed_generation) == gw.metadata.generation;
        for ip in &gw.spec.egress_ips {
            let assignment = status.and_then(|s| s.assignments.iter().find(|a| &a.egress_ip == ip));
            out.push(IpRow {
                egress_ip: ip.clone(),
                gateway: name.clone(),
                node: assignment.and_then(|a| a.node.clone()),
                interface: assignment.and_then(|a| a.interface.clone()),
                since: assignment
                    .and_then(|a| a.since.as_ref())
                    .map(|t| t.0.to_string()),
                destinations: gw.spec.destination_cidrs.clone(),
                excluded: gw.spec.excluded_cidrs.clone(),
                selected_pods: status.and_then(|s| s.selected_pods),
                ready: ready.map_or_else(|| UNKNOWN.to_string(), |c| c.status.clone()),
                reason: ready.map(|c| c.reason.clone()),
                current,
            });
        }
    }
    out.sort_by(|a, b| {
        sort_key(&a.egress_ip)
            .cmp(&sort_key(&b.egress_ip))
            .then_with(|| a.gateway.cmp(&b.gateway))
    });
    out
}

/// Numeric order for valid IPs (v4 before v6), text order for anything else, after them.
fn sort_key(ip: &str) -> (u8, u128, String) {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => (0, u128::from(u32::from(v4)), String::new()),
        Ok(std::net::IpAddr::V6(v6)) => (1, u128::from(v6), String::new()),
        Err(_) => (2, 0, ip.to_string()),
    }
}

const TABLE_HEADERS: [&str; 6] = [
    "EGRESS IP",
    "GATEWAY",
    "NODE",
    "DESTINATIONS",
    "SELECTED",
    "READY",
];
const WIDE_HEADERS: [&str; 10] = [
    "EGRESS IP",
    "GATEWAY",
    "NODE",
    "DESTINATIONS",
    "SELECTED",
    "READY",
    "INTERFACE",
    "EXCLUDED",
    "SINCE",
    "REASON",
];
const CSV_HEADERS: [&str; 11] = [
    "egress_ip",
    "gateway",
    "node",
    "interface",
    "since",
    "destinations",
    "excluded",
    "selected_pods",
    "ready",
    "reason",
    "current",
];
/// Separator of several CIDRs in one table or CSV cell.
const LIST_SEPARATOR: &str = ",";
/// Separator of several CIDRs in one CSV field (a space keeps the field unquoted).
const CSV_LIST_SEPARATOR: &str = " ";
/// Table cell of a value that is absent.
const NONE_CELL: &str = "<none>";

fn cell(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| NONE_CELL.to_string())
}

fn node_cell(row: &IpRow) -> String {
    row.node.clone().unwrap_or_else(|| NO_NODE.to_string())
}

fn selected_cell(row: &IpRow) -> String {
    row.selected_pods
        .map_or_else(|| NONE_CELL.to_string(), |n| n.to_string())
}

/// Render the rows in `format`. An empty table says so (like kubectl's "No resources found").
/// The cells of the plain table; `-o wide` adds to them.
fn table_cells(r: &IpRow) -> Vec<String> {
    vec![
        r.egress_ip.clone(),
        r.gateway.clone(),
        node_cell(r),
        r.destinations.join(LIST_SEPARATOR),
        selected_cell(r),
        r.ready.clone(),
    ]
}

pub fn render(rows: &[IpRow], format: IpsFormat) -> Result<String, PluginError> {
    match format {
        IpsFormat::Table | IpsFormat::Wide if rows.is_empty() => Ok(String::new()),
        IpsFormat::Table => Ok(table::render(
            &TABLE_HEADERS,
            &rows.iter().map(table_cells).collect::<Vec<_>>(),
        )),
        IpsFormat::Wide => Ok(table::render(
            &WIDE_HEADERS,
            &rows
                .iter()
                .map(|r| {
                    let mut cells = table_cells(r);
                    cells.extend([
                        cell(&r.interface),
                        if r.excluded.is_empty() {
                            NONE_CELL.to_string()
                        } else {
                            r.excluded.join(LIST_SEPARATOR)
                        },
                        cell(&r.since),
                        cell(&r.reason),
                    ]);
                    cells
                })
                .collect::<Vec<_>>(),
        )),
        IpsFormat::Csv => Ok(table::csv(
            &CSV_HEADERS,
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.egress_ip.clone(),
                        r.gateway.clone(),
                        r.node.clone().unwrap_or_default(),
                        r.interface.clone().unwrap_or_default(),
                        r.since.clone().unwrap_or_default(),
                        r.destinations.join(CSV_LIST_SEPARATOR),
                        r.excluded.join(CSV_LIST_SEPARATOR),
                        r.selected_pods.map(|n| n.to_string()).unwrap_or_default(),
                        r.ready.clone(),
                        r.reason.clone().unwrap_or_default(),
                        r.current.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        )),
        IpsFormat::Json => serde_json::to_string_pretty(rows)
            .map(|s| s + "\n")
            .map_err(|e| PluginError::Encode {
                format: "JSON",
                message: e.to_string(),
            }),
        IpsFormat::Yaml => serde_yaml::to_string(rows).map_err(|e| PluginError::Encode {
            format: "YAML",
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EgressGatewaySpec, EgressGatewayStatus, IpAssignment, LabelSelector};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    fn gateway(
        name: &str,
        ips: &[&str],
        placed: &[(&str, &str)],
        ready: Option<&str>,
    ) -> EgressGateway {
        let mut gw = EgressGateway::new(
            name,
            EgressGatewaySpec {
                namespace_selector: LabelSelector::default(),
                pod_selector: LabelSelector::default(),
                destination_cidrs: vec!["203.0.113.0/24".into(), "198.51.100.0/24".into()],
                excluded_cidrs: vec![],
                egress_ips: ips.iter().map(|s| s.to_string()).collect(),
                gateway_node_selector: LabelSelector::default(),
                interface: None,
            },
        );
        gw.metadata.generation = Some(2);
        gw.status = ready.map(|r| EgressGatewayStatus {
            observed_generation: Some(2),
            effective_exclusions: vec![],
            assignments: placed
                .iter()
                .map(|(ip, node)| IpAssignment {
                    egress_ip: ip.to_string(),
                    node: Some(node.to_string()),
                    interface: Some("eth1".into()),
                    epoch: Some(1),
                    since: Some(Time(Timestamp::from_second(1_700_000_000).unwrap())),
                })
                .collect(),
            egress_ip_list: None,
            gateway_nodes: None,
            selected_pods: Some(3),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: r.into(),
                reason: "EgressIPsPlaced".into(),
                message: String::new(),
                observed_generation: Some(2),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
        });
        gw
    }

    #[test]
    fn one_row_per_ip_sorted_numerically_with_unplaced_ips_marked() {
        let gws = [
            gateway(
                "billing",
                &["198.18.0.210", "198.18.0.29"],
                &[("198.18.0.210", "node-2")],
                Some("True"),
            ),
            gateway("fresh", &["198.18.0.3"], &[], None),
        ];
        let rows = rows(&gws);
        let ips: Vec<&str> = rows.iter().map(|r| r.egress_ip.as_str()).collect();
        assert_eq!(
            ips,
            ["198.18.0.3", "198.18.0.29", "198.18.0.210"],
            "numeric, not text, order"
        );
        assert_eq!(rows[2].node.as_deref(), Some("node-2"));
        assert_eq!(rows[1].node, None);
        assert_eq!(
            (rows[0].ready.as_str(), rows[0].selected_pods),
            (UNKNOWN, None),
            "no status yet"
        );
        let table = render(&rows, IpsFormat::Table).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "EGRESS IP      GATEWAY   NODE     DESTINATIONS                     SELECTED   READY"
        );
        assert_eq!(
            lines[2],
            "198.18.0.29    billing   <none>   203.0.113.0/24,198.51.100.0/24   3          True"
        );
        assert_eq!(
            lines[3],
            "198.18.0.210   billing   node-2   203.0.113.0/24,198.51.100.0/24   3          True"
        );
    }

    #[test]
    fn wide_csv_json_and_yaml_carry_the_same_facts() {
        let rows = rows(&[gateway(
            "billing",
            &["198.18.0.200"],
            &[("198.18.0.200", "node-2")],
            Some("True"),
        )]);
        let wide = render(&rows, IpsFormat::Wide).unwrap();
        assert!(
            wide.lines()
                .nth(1)
                .unwrap()
                .ends_with("eth1        <none>     2023-11-14T22:13:20Z   EgressIPsPlaced"),
            "{wide}"
        );
        let csv = render(&rows, IpsFormat::Csv).unwrap();
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "198.18.0.200,billing,node-2,eth1,2023-11-14T22:13:20Z,203.0.113.0/24 198.51.100.0/24,,3,True,EgressIPsPlaced,true"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, IpsFormat::Json).unwrap()).unwrap();
        assert_eq!(json[0]["egressIP"], "198.18.0.200");
        assert_eq!(json[0]["node"], "node-2");
        assert_eq!(json[0]["selectedPods"], 3);
        let yaml: serde_json::Value =
            serde_yaml::from_str(&render(&rows, IpsFormat::Yaml).unwrap()).unwrap();
        assert_eq!(yaml, json);
    }

    #[test]
    fn a_stale_status_is_flagged() {
        let mut gw = gateway("billing", &["198.18.0.200"], &[], Some("True"));
        gw.metadata.generation = Some(3);
        assert!(!rows(&[gw])[0].current);
    }
}
