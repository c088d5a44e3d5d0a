//! The simulated cluster's contents, and an oracle independent of egressgw's planner: which
//! gateways select which pod (label selectors evaluated here, from the definitions).
//!
//! - 60 namespaces: `team-00` … `team-49` (`team=team-NN`, `tier` = prod / staging / dev in
//!   turn) and `shared-0` … `shared-9` (`kind=shared`);
//! - pods: `app=app-0` … `app-9`, `track=stable|canary`;
//! - "real" gateways `real-0` … `real-4`: egress IPs on the testbed LAN (198.18.0.200+), hosted
//!   by the real agents' nodes (`egressgw.io/gateway=true`), destinations in 203.0.113.0/24,
//!   disjoint pod sets; `real-0` is the big one (tier prod|staging × app-0..5, one IP);
//! - "sim" gateways `gw-000` …: team `t` × app `k`, destinations in 198.51.100.0/24, one to
//!   four egress IPs from 198.18.2.0 up, hosted by the simulated nodes (`egressgw.io/pool=sim`).
//!
//! No two gateways select one pod for overlapping destinations, so there are no conflicts and
//! `selectedPods` is simply the number of running pods with IPs that match.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

pub const TEAMS: usize = 50;
pub const SHARED: usize = 10;
pub const APPS: usize = 10;
pub const TIERS: [&str; 3] = ["prod", "staging", "dev"];
/// Label that makes a real node a gateway candidate (as in the examples).
pub const REAL_POOL: (&str, &str) = ("egressgw.io/gateway", "true");
/// Label of the simulated gateway nodes.
pub const SIM_POOL: (&str, &str) = ("egressgw.io/pool", "sim");
/// Teams whose namespaces churn never touches: status-latency probes go there.
pub const PROBE_TEAMS: [usize; 2] = [0, 1];
/// Apps only sim gateways select in the probe teams (no real gateway selects app-8/9).
pub const PROBE_APPS: [usize; 2] = [8, 9];

pub type Labels = BTreeMap<String, String>;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One requirement of a label selector.
#[derive(Clone, Debug)]
pub enum Req {
    Eq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
}

/// A label selector: requirements ANDed (`matchLabels` become `Eq`).
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub reqs: Vec<Req>,
}

impl Selector {
    fn eq(k: &str, v: &str) -> Self {
        Self {
            reqs: vec![Req::Eq(k.into(), v.into())],
        }
    }
    fn and(mut self, r: Req) -> Self {
        self.reqs.push(r);
        self
    }
    pub fn matches(&self, l: &Labels) -> bool {
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => l.get(k) == Some(v),
            Req::In(k, vs) => l.get(k).is_some_and(|x| vs.contains(x)),
            Req::NotIn(k, vs) => l.get(k).is_none_or(|x| !vs.contains(x)),
            Req::Exists(k) => l.contains_key(k),
        })
    }
    pub fn to_json(&self) -> Value {
        let mut ml = serde_json::Map::new();
        let mut me = Vec::new();
        for r in &self.reqs {
            match r {
                Req::Eq(k, v) => {
                    ml.insert(k.clone(), json!(v));
                }
                Req::In(k, vs) => me.push(json!({"key": k, "operator": "In", "values": vs})),
                Req::NotIn(k, vs) => me.push(json!({"key": k, "operator": "NotIn", "values": vs})),
                Req::Exists(k) => me.push(json!({"key": k, "operator": "Exists"})),
            }
        }
        let mut o = serde_json::Map::new();
        if !ml.is_empty() {
            o.insert("matchLabels".into(), Value::Object(ml));
        }
        if !me.is_empty() {
            o.insert("matchExpressions".into(), Value::Array(me));
        }
        Value::Object(o)
    }
}

fn apps(r: std::ops::Range<usize>) -> Vec<String> {
    r.map(|k| format!("app-{k}")).collect()
}

#[derive(Clone, Debug)]
pub struct GatewayDef {
    pub name: String,
    pub namespaces: Selector,
    pub pods: Selector,
    pub destinations: Vec<String>,
    pub excluded: Vec<String>,
    pub egress_ips: Vec<Ipv4Addr>,
    pub real: bool,
}

impl GatewayDef {
    pub fn to_json(&self) -> Value {
        let pool = if self.real { REAL_POOL } else { SIM_POOL };
        let mut spec = json!({
            "namespaceSelector": self.namespaces.to_json(),
            "podSelector": self.pods.to_json(),
            "destinationCIDRs": self.destinations,
            "egressIPs": self.egress_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            "gatewayNodeSelector": { "matchLabels": { pool.0: pool.1 } },
        });
        if !self.excluded.is_empty() {
            spec["excludedCIDRs"] = json!(self.excluded);
        }
        json!({
            "apiVersion": "egressgw.io/v1alpha1",
            "kind": "EgressGateway",
            "metadata": { "name": self.name },
            "spec": spec,
        })
    }
}

#[derive(Clone, Debug)]
pub struct NamespaceDef {
    pub name: String,
    pub labels: Labels,
}

pub fn namespaces() -> Vec<NamespaceDef> {
    let mut v: Vec<NamespaceDef> = (0..TEAMS)
        .map(|t| NamespaceDef {
            name: team_ns(t),
            labels: labels(&[("team", &team_ns(t)), ("tier", TIERS[t % 3])]),
        })
        .collect();
    v.extend((0..SHARED).map(|s| NamespaceDef {
        name: format!("shared-{s}"),
        labels: labels(&[("kind", "shared")]),
    }));
    v
}

pub fn team_ns(t: usize) -> String {
    format!("team-{t:02}")
}

/// The real gateways (their egress IPs are on the testbed LAN and allowlisted by its firewall).
pub fn real_gateways() -> Vec<GatewayDef> {
    let ip = |d: u8| Ipv4Addr::new(198, 18, 0, d);
    let tier = |ts: &[&str]| Selector {
        reqs: vec![Req::In(
            "tier".into(),
            ts.iter().map(|s| s.to_string()).collect(),
        )],
    };
    vec![
        GatewayDef {
            name: "real-0".into(),
            namespaces: tier(&["prod", "staging"]),
            pods: Selector {
                reqs: vec![Req::In("app".into(), apps(0..6))],
            },
            destinations: vec!["203.0.113.0/24".into()],
            excluded: vec![],
            egress_ips: vec![ip(200)],
            real: true,
        },
        GatewayDef {
            name: "real-1".into(),
            namespaces: Selector::eq("tier", "dev"),
            pods: Selector {
                reqs: vec![Req::In("app".into(), apps(0..3))],
            },
            destinations: vec!["203.0.113.0/25".into()],
            excluded: vec![],
            egress_ips: vec![ip(201), ip(202)],
            real: true,
        },
        GatewayDef {
            name: "real-2".into(),
            namespaces: Selector::eq("tier", "dev"),
            pods: Selector {
                reqs: vec![
                    Req::In("app".into(), apps(3..6)),
                    Req::NotIn("track".into(), vec!["canary".into()]),
                ],
            },
            destinations: vec!["203.0.113.0/24".into()],
            excluded: vec!["203.0.113.192/26".into()],
            egress_ips: vec![ip(203), ip(204), ip(205)],
            real: true,
        },
        GatewayDef {
            name: "real-3".into(),
            namespaces: tier(&["prod", "staging"]),
            pods: Selector {
                reqs: vec![Req::In("app".into(), apps(6..8))],
            },
            destinations: vec!["203.0.113.0/24".into()],
            excluded: vec![],
            egress_ips: vec![ip(206), ip(207), ip(208), ip(209)],
            real: true,
        },
        GatewayDef {
            name: "real-4".into(),
            namespaces: Selector {
                reqs: vec![
                    Req::Exists("kind".into()),
                    Req::In("kind".into(), vec!["shared".into()]),
                ],
            },
            pods: Selector::default(),
            destinations: vec!["203.0.113.128/25".into()],
            excluded: vec![],
            egress_ips: vec![ip(210), ip(211)],
            real: true,
        },
    ]
}

/// `n` simulated gateways: team `g % 50` × app `g / 50`.
pub fn sim_gateways(n: usize) -> Vec<GatewayDef> {
    assert!(n <= TEAMS * APPS);
    let mut next: u32 = u32::from(Ipv4Addr::new(198, 18, 2, 0));
    (0..n)
        .map(|g| {
            let (t, k) = (g % TEAMS, g / TEAMS);
            let mut pods = Selector::eq("app", &format!("app-{k}"));
            if g % 4 == 3 {
                pods = Selector {
                    reqs: vec![Req::In("app".into(), vec![format!("app-{k}")])],
                }
                .and(Req::NotIn("track".into(), vec!["canary".into()]));
            }
            let base = 16 * (g % 16);
            let ips = (0..1 + g % 4)
                .map(|_| {
                    let ip = Ipv4Addr::from(next);
                    next += 1;
                    ip
                })
                .collect();
            GatewayDef {
                name: format!("gw-{g:03}"),
                namespaces: Selector::eq("team", &team_ns(t)),
                pods,
                destinations: vec![format!("198.51.100.{base}/28")],
                excluded: if g % 5 == 0 {
                    vec![format!("198.51.100.{}/30", base + 12)]
                } else {
                    vec![]
                },
                egress_ips: ips,
                real: false,
            }
        })
        .collect()
}

/// A pod's labels.
pub fn pod_labels(app: usize, canary: bool) -> Labels {
    labels(&[
        ("app", &format!("app-{app}")),
        ("track", if canary { "canary" } else { "stable" }),
    ])
}

/// Which gateways select pods of each (namespace, labels): the oracle.
pub struct Oracle {
    ns_labels: BTreeMap<String, Labels>,
    gateways: Vec<GatewayDef>,
    cache: std::sync::Mutex<BTreeMap<(String, Labels), Vec<usize>>>,
}

impl Oracle {
    pub fn new(namespaces: &[NamespaceDef], gateways: Vec<GatewayDef>) -> Self {
        Self {
            ns_labels: namespaces
                .iter()
                .map(|n| (n.name.clone(), n.labels.clone()))
                .collect(),
            gateways,
            cache: Default::default(),
        }
    }
    pub fn gateways(&self) -> &[GatewayDef] {
        &self.gateways
    }
    /// Indices of the gateways selecting a pod of `ns` with `labels`.
    pub fn selecting(&self, ns: &str, labels: &Labels) -> Vec<usize> {
        let key = (ns.to_string(), labels.clone());
        if let Some(v) = self.cache.lock().expect("oracle").get(&key) {
            return v.clone();
        }
        let empty = Labels::new();
        let nl = self.ns_labels.get(ns).unwrap_or(&empty);
        let v: Vec<usize> = self
            .gateways
            .iter()
            .enumerate()
            .filter(|(_, g)| g.namespaces.matches(nl) && g.pods.matches(labels))
            .map(|(i, _)| i)
            .collect();
        self.cache.lock().expect("oracle").insert(key, v.clone());
        v
    }
}
