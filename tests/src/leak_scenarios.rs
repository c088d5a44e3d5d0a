//! The leak scenarios of issue 11 (DESIGN.md, "Invariants" 1 and "The leak probe"), as library
//! code shared by the end-to-end tests (`tests/tests/e2e_leaks.rs`, which assert 0 leaks) and
//! the leak benchmark (`bench/runtime/src/bin/leaks.rs`, which runs each one many times and
//! tabulates the samples).
//!
//! Each scenario starts its own simulated cluster ([`SimCluster`]: real apiserver, controller
//! and agents, real kernel, real TCP), lets the selected pods on every node connect to the
//! open server inside the destinations every ~20 ms ([`LeakProbe`]) while something changes
//! or fails, waits until everything settled, and returns what the probe saw ([`Probed`]) with
//! the sources allowed. A refused or timed-out sample is not a leak (fail closed); a node or
//! pod address is.
//!
//! Node 1 is a worker (never a gateway); nodes 2 and 3 are gateway candidates, so the probed
//! pods always include pods on the node hosting the IP, on the other candidate and on a node
//! that can never host it. The cluster is torn down when the scenario returns.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use egressgw::k8s::names::{AGENT_LEASE_NAMESPACE, agent_lease};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use crate::leak::{LeakProbe, LeakReport, Outcome, Sample};
use crate::sim::{SimCluster, status};

pub const E1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
pub const E2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 201);
/// An egress IP no node may host (its gateway selects nodes in a zone that does not exist).
pub const NOWHERE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 240);
pub const GATEWAY: &str = "billing-to-mainframe";
pub const CONVERGE: Duration = Duration::from_secs(20);
/// "Things settled": every probed pod reached the server only from an allowed source for
/// this long.
pub const HOLD: Duration = Duration::from_millis(500);
/// How long a pod may take to reach the server steadily again after an event.
pub const SETTLE: Duration = Duration::from_secs(15);
/// One selected pod per node: node 1 never hosts, nodes 2 and 3 host or stand by.
pub const ONE_PER_NODE: [(usize, usize); 3] = [(1, 0), (2, 0), (3, 0)];
/// Both pods of every node (more pods, so two egress IPs each get some).
pub const ALL_PODS: [(usize, usize); 6] = [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)];
/// How long after `kubectl apply` returns the agents may take to see a new gateway: the
/// watch event and one transaction. A selected pod's traffic before that leaves from its
/// node, as it did before the gateway existed; the same holds for a pod the API does not
/// know yet (no IP in any view), which no agent can cover.
pub const SEE_NEW_GATEWAY: Duration = Duration::from_millis(300);

/// The scenarios, by name (`--only` of the benchmark).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    GatewayAgentCutOff,
    GatewayNodeDeath,
    IpMovedBetweenLiveNodes,
    EgressIpsAddedAndRemoved,
    NewGateway,
    SourceAgentRestart,
    GatewayAgentRestart,
    EpochChange,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::GatewayAgentCutOff,
        Scenario::GatewayNodeDeath,
        Scenario::IpMovedBetweenLiveNodes,
        Scenario::EgressIpsAddedAndRemoved,
        Scenario::NewGateway,
        Scenario::SourceAgentRestart,
        Scenario::GatewayAgentRestart,
        Scenario::EpochChange,
    ];

    /// A short name for the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::GatewayAgentCutOff => "agent-cut-off",
            Scenario::GatewayNodeDeath => "node-death",
            Scenario::IpMovedBetweenLiveNodes => "ip-moved",
            Scenario::EgressIpsAddedAndRemoved => "ips-added-removed",
            Scenario::NewGateway => "new-gateway",
            Scenario::SourceAgentRestart => "source-agent-restart",
            Scenario::GatewayAgentRestart => "gateway-agent-restart",
            Scenario::EpochChange => "epoch-change",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The events it probes (one row each in the benchmark), in order.
    pub fn events(self) -> &'static [&'static str] {
        match self {
            Scenario::GatewayAgentCutOff => &[CUT_OFF],
            Scenario::GatewayNodeDeath => &[NODE_DEATH],
            Scenario::IpMovedBetweenLiveNodes => &[IP_MOVED],
            Scenario::EgressIpsAddedAndRemoved => &[IPS_ADDED_REMOVED],
            Scenario::NewGateway => &[NEW_GATEWAY, NEW_GATEWAY_NOWHERE],
            Scenario::SourceAgentRestart => &[SOURCE_RESTART],
            Scenario::GatewayAgentRestart => &[GATEWAY_RESTART],
            Scenario::EpochChange => &[EPOCH_CHANGE],
        }
    }

    /// Runs it once on a cluster of its own.
    pub async fn run(self) -> Result<Run, Failed> {
        match self {
            Scenario::GatewayAgentCutOff => gateway_agent_cut_off().await,
            Scenario::GatewayNodeDeath => gateway_node_death_and_return().await,
            Scenario::IpMovedBetweenLiveNodes => ip_moved_between_live_nodes().await,
            Scenario::EgressIpsAddedAndRemoved => egress_ips_added_and_removed().await,
            Scenario::NewGateway => new_gateway().await,
            Scenario::SourceAgentRestart => source_agent_killed_and_restarted().await,
            Scenario::GatewayAgentRestart => gateway_agent_killed_and_restarted().await,
            Scenario::EpochChange => epoch_change().await,
        }
    }
}

pub const CUT_OFF: &str = "gateway agent cut off";
pub const NODE_DEATH: &str = "gateway node death and return";
pub const IP_MOVED: &str = "IP moved between live nodes";
pub const IPS_ADDED_REMOVED: &str = "egress IP added, then one removed";
pub const NEW_GATEWAY: &str = "new gateway";
pub const NEW_GATEWAY_NOWHERE: &str = "new gateway with an IP no node may host";
pub const SOURCE_RESTART: &str = "source agent SIGKILL and restart";
pub const GATEWAY_RESTART: &str = "gateway agent SIGKILL and restart";
pub const EPOCH_CHANGE: &str = "epoch change";

/// What the probe saw through one event, and how to judge it.
#[derive(Clone, Debug)]
pub struct Probed {
    /// The event, e.g. [`CUT_OFF`].
    pub event: &'static str,
    pub report: LeakReport,
    /// The sources a selected pod may reach the server from: the gateway's egress IPs.
    pub allowed: Vec<Ipv4Addr>,
    /// Samples before this offset are not judged: the pods were not selected yet (before a
    /// new gateway was applied). Zero for every other event.
    pub judged_from: Duration,
    /// After `judged_from`, a pod may still leave from its node for this long, until its
    /// traffic first stops doing so ([`SEE_NEW_GATEWAY`] for a new gateway, else zero).
    pub grace: Duration,
    /// The pods (indices into the report) whose interruption counts: not those on a node
    /// the event takes away for as long as the scenario chooses (a dead or cut-off node).
    pub measured: Vec<usize>,
}

impl Probed {
    /// Judged as a whole: every sample from a source outside `allowed` is a leak.
    pub fn new(event: &'static str, report: LeakReport, allowed: &[Ipv4Addr]) -> Self {
        let measured = (0..report.pods.len()).collect();
        Self {
            event,
            report,
            allowed: allowed.to_vec(),
            judged_from: Duration::ZERO,
            grace: Duration::ZERO,
            measured,
        }
    }

    /// Only the pods at `pods` count for the interruption.
    pub fn measuring(mut self, pods: Vec<usize>) -> Self {
        self.measured = pods;
        self
    }

    /// Judged from `applied` on, with `grace` for the agents to see the new gateway.
    pub fn judged_after(mut self, applied: Duration, grace: Duration) -> Self {
        self.judged_from = applied;
        self.grace = grace;
        self
    }

    /// The samples that are leaks: from a source outside `allowed`, after `judged_from +
    /// grace`, or within the grace once the pod's traffic had stopped leaving from outside
    /// `allowed` ([`assert_closed_for_good`]).
    pub fn leaks(&self) -> Vec<Sample> {
        let allowed = &self.allowed[..];
        let mut leaks: Vec<Sample> = self
            .report
            .since_offset(self.judged_from + self.grace)
            .leaks(allowed)
            .into_iter()
            .cloned()
            .collect();
        let after = self.report.since_offset(self.judged_from);
        for pod in 0..after.pods.len() {
            let one = after.pods_only(&[pod]);
            if let Some(closed) = first_closed(&one, allowed) {
                leaks.extend(
                    one.since_offset(closed)
                        .leaks(allowed)
                        .into_iter()
                        .map(|s| Sample { pod, ..s.clone() }),
                );
            }
        }
        leaks.sort_by_key(|s| (s.at, s.pod));
        leaks.dedup();
        leaks
    }

    /// Panics with the probe's table on any leak (see [`Self::leaks`]).
    pub fn assert_no_leaks(&self) {
        if self.judged_from.is_zero() && self.grace.is_zero() {
            self.report.assert_no_leaks(&self.allowed);
        } else {
            self.report
                .since_offset(self.judged_from + self.grace)
                .assert_no_leaks(&self.allowed);
            assert_closed_for_good(&self.report, self.judged_from, &self.allowed);
        }
    }

    /// The probe's table, headed by the event; for a new gateway, until when node
    /// addresses were seen.
    pub fn table(&self) -> String {
        let mut out = format!("== {}\n{}", self.event, self.report.table(&self.allowed));
        if !self.grace.is_zero()
            && let Some(last) = self
                .report
                .since_offset(self.judged_from)
                .leak_runs(&self.allowed)
                .into_iter()
                .max_by_key(|r| r.to)
        {
            out.push_str(&format!(
                "node addresses seen until {} (allowed until +{} ms)\n",
                self.report.when(last.to),
                self.grace.as_millis()
            ));
        }
        out
    }

    /// The longest interruption of a measured pod (from a sample that did not reach the
    /// server from an allowed source to the next one that did), counted from
    /// `judged_from`; `None` when nothing is allowed (the pods are meant to get nowhere).
    pub fn longest_interruption(&self) -> Option<Duration> {
        if self.allowed.is_empty() {
            return None;
        }
        let judged = self.report.since_offset(self.judged_from);
        Some(
            self.measured
                .iter()
                .map(|&p| judged.longest_interruption(p, &self.allowed))
                .max()
                .unwrap_or_default(),
        )
    }
}

/// The offset of the first sample of `one` (a one-pod report) that did not reach the server
/// from outside `allowed`: blocked, or from an allowed source.
fn first_closed(one: &LeakReport, allowed: &[Ipv4Addr]) -> Option<Duration> {
    one.samples
        .iter()
        .find(|s| !matches!(s.outcome, Outcome::Seen(ip) if !allowed.contains(&ip)))
        .map(|s| s.at)
}

/// Within the grace too: once a pod's traffic after `applied` stopped leaving from its node
/// (blocked, or from an allowed source), it never leaves from there again.
pub fn assert_closed_for_good(report: &LeakReport, applied: Duration, allowed: &[Ipv4Addr]) {
    let after = report.since_offset(applied);
    for pod in 0..after.pods.len() {
        let one = after.pods_only(&[pod]);
        if let Some(closed) = first_closed(&one, allowed) {
            one.since_offset(closed).assert_no_leaks(allowed);
        }
    }
}

/// Something a scenario checks about itself: that it tested what it means to (e.g. the cut
/// did change the node's epoch). Not a leak.
#[derive(Clone, Debug)]
pub struct Check {
    pub ok: bool,
    /// What must hold, with what was seen.
    pub what: String,
}

/// One run of a scenario.
#[derive(Clone, Debug)]
pub struct Run {
    pub events: Vec<Probed>,
    pub checks: Vec<Check>,
}

impl Run {
    /// Panics on the first failed check.
    pub fn assert_checks(&self) {
        for c in &self.checks {
            assert!(c.ok, "{}", c.what);
        }
    }
}

/// A run that failed before it settled (a timeout, a broken setup): the error and what the
/// probes saw until then, so their leaks still count.
pub struct Failed {
    pub error: anyhow::Error,
    pub events: Vec<Probed>,
}

impl From<anyhow::Error> for Failed {
    fn from(error: anyhow::Error) -> Self {
        Self {
            error,
            events: Vec::new(),
        }
    }
}

impl fmt::Debug for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.error)?;
        for e in &self.events {
            write!(f, "\n(probed before the failure)\n{}", e.table())?;
        }
        Ok(())
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// The run, or the failure with what was probed.
fn finish(result: Result<()>, events: Vec<Probed>, checks: Vec<Check>) -> Result<Run, Failed> {
    match result {
        Ok(()) => Ok(Run { events, checks }),
        Err(error) => Err(Failed { error, events }),
    }
}

/// The gateway of the examples (`examples/01-one-ip.yaml`) with egress IPs `ips`.
pub fn gateway_yaml(name: &str, app: &str, ips: &[Ipv4Addr], node_selector: &str) -> String {
    let ips: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
    format!(
        "apiVersion: egressgw.io/v1alpha1\nkind: EgressGateway\nmetadata: {{ name: {name} }}\n\
         spec:\n  namespaceSelector: {{ matchLabels: {{ team: billing }} }}\n  \
         podSelector: {{ matchLabels: {{ app: {app} }} }}\n  \
         destinationCIDRs: [203.0.113.0/24]\n  egressIPs: [{}]\n  \
         gatewayNodeSelector: {{ matchLabels: {{ {node_selector} }} }}\n",
        ips.join(", ")
    )
}

pub fn billing_gateway(ips: &[Ipv4Addr]) -> String {
    gateway_yaml(GATEWAY, "invoicer", ips, "egressgw.io/gateway: \"true\"")
}

/// Three nodes (2 and 3 gateway candidates), the testbed pods `pods` created as selected
/// pods (`app=invoicer` in namespace billing), and, unless `ips` is empty, the billing
/// gateway with `ips` applied and programmed.
pub async fn cluster(pods: &[(usize, usize)], ips: &[Ipv4Addr]) -> Result<SimCluster> {
    let sim = SimCluster::start(3, &[2, 3], &[E1, E2], 1)
        .await
        .context("simulated cluster")?;
    sim.cp
        .create_namespace("billing", &[("team", "billing")])
        .await?;
    for &(node, k) in pods {
        sim.add_pod(
            "billing",
            &format!("invoicer-{node}-{k}"),
            &[("app", "invoicer")],
            node,
            k,
        )
        .await?;
    }
    if !ips.is_empty() {
        sim.apply_yaml(&billing_gateway(ips)).await?;
        sim.wait_gateway(GATEWAY, CONVERGE, |g| {
            status::ready_and_programmed(g)
                && ips
                    .iter()
                    .all(|ip| status::node_of(g, &ip.to_string()).is_some())
        })
        .await?;
    }
    Ok(sim)
}

/// The node index status assigns `ip` to.
pub async fn host_of(sim: &SimCluster, ip: Ipv4Addr) -> Result<usize> {
    let g = sim.wait_gateway(GATEWAY, CONVERGE, |_| true).await?;
    let node = status::node_of(&g, &ip.to_string()).context("assigned")?;
    sim.node_index(&node).context("a testbed node")
}

pub fn other_gateway(host: usize) -> usize {
    if host == 2 { 3 } else { 2 }
}

/// Waits until status assigns `ip` to node `to`.
pub async fn wait_assigned(sim: &SimCluster, ip: Ipv4Addr, to: usize) -> Result<()> {
    let want = sim.tb.node(to).name().to_string();
    sim.wait_gateway(GATEWAY, CONVERGE, |g| {
        status::node_of(g, &ip.to_string()).as_deref() == Some(want.as_str())
    })
    .await?;
    Ok(())
}

/// Indices (into the probe) of the pods in `pods` that do not run on node `node`.
pub fn not_on(pods: &[(usize, usize)], node: usize) -> Vec<usize> {
    (0..pods.len()).filter(|&i| pods[i].0 != node).collect()
}

/// Starts the probe on `pods` and waits until all reach the server from `allowed`; a
/// failure carries what the probe saw, judged as `event`.
async fn probe(
    sim: &SimCluster,
    pods: &[(usize, usize)],
    allowed: &[Ipv4Addr],
    event: &'static str,
) -> Result<LeakProbe, Failed> {
    let probe = sim.leak_probe(pods).context("leak probe")?;
    match probe
        .wait_steady(allowed, HOLD, Duration::from_secs(10))
        .await
    {
        Ok(_) => Ok(probe),
        Err(e) => Err(Failed {
            error: e.context("before the event, every selected pod leaves from the egress IP"),
            events: vec![Probed::new(event, probe.stop(), allowed)],
        }),
    }
}

/// A probe that does not wait for a steady state (the pods are not selected yet).
async fn probe_unsteady(sim: &SimCluster, pods: &[(usize, usize)]) -> Result<LeakProbe> {
    let probe = sim.leak_probe(pods).context("leak probe")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(probe)
}

/// The epoch of node `i`: its agent Lease's transitions.
pub async fn epoch(sim: &SimCluster, i: usize) -> Result<i32> {
    let leases: Api<Lease> = Api::namespaced(sim.cp.client(), AGENT_LEASE_NAMESPACE);
    Ok(leases
        .get(&agent_lease(sim.tb.node(i).name()))
        .await?
        .spec
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0))
}

/// The gateway node's agent is cut off from the apiserver: it fences, the IP moves to the
/// other candidate, the agent comes back under a new epoch. Before issue 11 the fenced
/// node's own address reached the server for seconds. The cut-off node's own pod is not
/// measured for the interruption (it waits for its agent, as long as the cut lasts).
pub async fn gateway_agent_cut_off() -> Result<Run, Failed> {
    let sim = cluster(&ONE_PER_NODE, &[E1]).await?;
    let host = host_of(&sim, E1).await?;
    let probe = probe(&sim, &ONE_PER_NODE, &[E1], CUT_OFF).await?;
    let result = async {
        probe.mark(&format!("cut agent of node-{host}"));
        sim.cut_agent(host);
        wait_assigned(&sim, E1, other_gateway(host)).await?;
        probe.mark("moved");
        // The cut-off node's own pod may wait for its agent; the others resume at once.
        probe
            .wait_steady_pods(&not_on(&ONE_PER_NODE, host), &[E1], HOLD, SETTLE)
            .await?;
        sim.restore_agent(host);
        probe.mark("restored");
        probe.wait_steady(&[E1], HOLD, SETTLE).await?;
        Ok(())
    }
    .await;
    let probed = Probed::new(CUT_OFF, probe.stop(), &[E1]).measuring(not_on(&ONE_PER_NODE, host));
    finish(result, vec![probed], vec![])
}

/// The gateway node dies (link down, agent gone): the IP moves; later the node returns. The
/// dead node's pod is not measured for the interruption.
pub async fn gateway_node_death_and_return() -> Result<Run, Failed> {
    let mut sim = cluster(&ONE_PER_NODE, &[E1]).await?;
    let host = host_of(&sim, E1).await?;
    let probe = probe(&sim, &ONE_PER_NODE, &[E1], NODE_DEATH).await?;
    let result = async {
        probe.mark(&format!("node-{host} dies"));
        sim.tb.kill_node(host)?;
        sim.kill_agent(host)?;
        wait_assigned(&sim, E1, other_gateway(host)).await?;
        probe.mark("moved");
        probe
            .wait_steady_pods(&not_on(&ONE_PER_NODE, host), &[E1], HOLD, SETTLE)
            .await?;
        sim.tb.revive_node(host)?;
        sim.start_agent(host)?;
        probe.mark(&format!("node-{host} back"));
        probe.wait_steady(&[E1], HOLD, SETTLE).await?;
        Ok(())
    }
    .await;
    let probed =
        Probed::new(NODE_DEATH, probe.stop(), &[E1]).measuring(not_on(&ONE_PER_NODE, host));
    finish(result, vec![probed], vec![])
}

/// The hosting node loses its gateway label: the IP moves between two live nodes.
pub async fn ip_moved_between_live_nodes() -> Result<Run, Failed> {
    let sim = cluster(&ONE_PER_NODE, &[E1]).await?;
    let host = host_of(&sim, E1).await?;
    let probe = probe(&sim, &ONE_PER_NODE, &[E1], IP_MOVED).await?;
    let result = async {
        probe.mark(&format!("label removed from node-{host}"));
        sim.label_node(host, "egressgw.io/gateway-").await?;
        wait_assigned(&sim, E1, other_gateway(host)).await?;
        probe.mark("moved");
        probe.wait_steady(&[E1], HOLD, SETTLE).await?;
        Ok(())
    }
    .await;
    finish(
        result,
        vec![Probed::new(IP_MOVED, probe.stop(), &[E1])],
        vec![],
    )
}

/// A second egress IP is added (pods rehash over two IPs on two nodes), then the first is
/// removed (its pods move to the second). Checks that the pods did spread over both.
pub async fn egress_ips_added_and_removed() -> Result<Run, Failed> {
    let sim = cluster(&ALL_PODS, &[E1]).await?;
    let probe = probe(&sim, &ALL_PODS, &[E1], IPS_ADDED_REMOVED).await?;
    let result = async {
        probe.mark("E2 added");
        sim.apply_yaml(&billing_gateway(&[E1, E2])).await?;
        sim.wait_gateway(GATEWAY, CONVERGE, |g| {
            status::node_of(g, &E2.to_string()).is_some() && status::ready_and_programmed(g)
        })
        .await?;
        probe.wait_steady(&[E1, E2], HOLD, SETTLE).await?;
        probe.mark("E1 removed");
        sim.apply_yaml(&billing_gateway(&[E2])).await?;
        sim.wait_gateway(GATEWAY, CONVERGE, |g| {
            status::node_of(g, &E1.to_string()).is_none() && status::ready_and_programmed(g)
        })
        .await?;
        probe.wait_steady(&[E2], HOLD, SETTLE).await?;
        Ok(())
    }
    .await;
    let probed = Probed::new(IPS_ADDED_REMOVED, probe.stop(), &[E1, E2]);
    let mut checks = Vec::new();
    if result.is_ok() {
        let both = probed.report.since("E2 added").sources();
        checks.push(Check {
            ok: both.contains(&E1) && both.contains(&E2),
            what: format!("with two IPs the pods spread over both: {both:?}"),
        });
    }
    finish(result, vec![probed], checks)
}

/// A gateway applied while its pods send: once the agents can have seen it, its pods leave
/// from its egress IP or not at all, also while the IP is not placed yet. A second gateway
/// whose IP no node may host keeps its pods blocked. Two events: [`NEW_GATEWAY`] and
/// [`NEW_GATEWAY_NOWHERE`], each judged from the moment `kubectl apply` returned.
pub async fn new_gateway() -> Result<Run, Failed> {
    let sim = cluster(&ONE_PER_NODE, &[]).await?;
    for node in 1..=3 {
        sim.add_pod(
            "billing",
            &format!("reporter-{node}"),
            &[("app", "reporter")],
            node,
            1,
        )
        .await?;
    }
    let unselected: Vec<Ipv4Addr> = (1..=3).map(|i| sim.tb.node(i).ip()).collect();
    let probe = probe(&sim, &ONE_PER_NODE, &unselected, NEW_GATEWAY).await?;
    probe.mark("apply");
    let result = async {
        sim.apply_yaml(&billing_gateway(&[E1])).await?;
        probe.mark("applied");
        sim.wait_gateway(GATEWAY, CONVERGE, status::ready_and_programmed)
            .await?;
        probe.wait_steady(&[E1], HOLD, SETTLE).await?;
        Ok(())
    }
    .await;
    let report = probe.stop();
    let applied = report.mark_at("applied").unwrap_or(report.end);
    let first = Probed::new(NEW_GATEWAY, report, &[E1]).judged_after(applied, SEE_NEW_GATEWAY);
    if result.is_err() {
        return finish(result, vec![first], vec![]);
    }

    // An egress IP no node can host: Ready=False, and its pods get nowhere.
    let pods = [(1, 1), (2, 1), (3, 1)];
    let probe = match probe_unsteady(&sim, &pods).await {
        Ok(p) => p,
        Err(e) => return finish(Err(e), vec![first], vec![]),
    };
    probe.mark("apply unplaceable");
    let result = async {
        sim.apply_yaml(&gateway_yaml(
            "nowhere",
            "reporter",
            &[NOWHERE_IP],
            "egressgw.io/zone: mars",
        ))
        .await?;
        probe.mark("applied");
        sim.wait_gateway("nowhere", CONVERGE, |g| {
            status::condition(g, "Ready").as_deref() == Some("False")
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }
    .await;
    let report = probe.stop();
    let applied = report.mark_at("applied").unwrap_or(report.end);
    let second =
        Probed::new(NEW_GATEWAY_NOWHERE, report, &[]).judged_after(applied, SEE_NEW_GATEWAY);
    let mut checks = Vec::new();
    if result.is_ok() {
        let judged = second
            .report
            .since_offset(applied + SEE_NEW_GATEWAY)
            .samples
            .len();
        checks.push(Check {
            ok: judged > 0,
            what: format!(
                "the probe sampled the unplaceable gateway's pods after it was applied \
                 ({judged} samples)"
            ),
        });
    }
    finish(result, vec![first, second], checks)
}

/// SIGKILL and an immediate restart of the agent of a source node (node 1): its kernel
/// state stays while it is gone, and the new agent must not remove it before it knows.
pub async fn source_agent_killed_and_restarted() -> Result<Run, Failed> {
    let mut sim = cluster(&ONE_PER_NODE, &[E1]).await?;
    let probe = probe(&sim, &ONE_PER_NODE, &[E1], SOURCE_RESTART).await?;
    let result = restart_agent(&mut sim, &probe, 1).await;
    finish(
        result,
        vec![Probed::new(SOURCE_RESTART, probe.stop(), &[E1])],
        vec![],
    )
}

/// The same on the node hosting the egress IP.
pub async fn gateway_agent_killed_and_restarted() -> Result<Run, Failed> {
    let mut sim = cluster(&ONE_PER_NODE, &[E1]).await?;
    let host = host_of(&sim, E1).await?;
    let probe = probe(&sim, &ONE_PER_NODE, &[E1], GATEWAY_RESTART).await?;
    let result = restart_agent(&mut sim, &probe, host).await;
    finish(
        result,
        vec![Probed::new(GATEWAY_RESTART, probe.stop(), &[E1])],
        vec![],
    )
}

/// SIGKILL node `i`'s agent, start a new one 300 ms later (a crash-looping pod's restart),
/// wait until the pods reach the server steadily for a second.
async fn restart_agent(sim: &mut SimCluster, probe: &LeakProbe, i: usize) -> Result<()> {
    probe.mark(&format!("agent of node-{i} killed"));
    sim.kill_agent(i)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.start_agent(i)?;
    probe.mark("restarted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    probe
        .wait_steady(&[E1], Duration::from_secs(1), SETTLE)
        .await?;
    Ok(())
}

/// A gateway node's agent is cut off for 1.2 s: long enough to fence (1 s) and come back
/// under a new epoch, too short for the controller to move its IP (1.6 s). With two IPs the
/// node's pods hash over both; a new epoch must not rehash them in one view only. Checks
/// that the node's epoch did change.
pub async fn epoch_change() -> Result<Run, Failed> {
    let sim = cluster(&ALL_PODS, &[E1, E2]).await?;
    let host = host_of(&sim, E1).await?;
    let before = epoch(&sim, host).await?;
    let probe = probe(&sim, &ALL_PODS, &[E1, E2], EPOCH_CHANGE).await?;
    let result = async {
        probe.mark(&format!("cut agent of node-{host}"));
        sim.cut_agent(host);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        sim.restore_agent(host);
        probe.mark("restored");
        tokio::time::sleep(Duration::from_secs(2)).await;
        probe.wait_steady(&[E1, E2], HOLD, SETTLE).await?;
        Ok(())
    }
    .await;
    let probed = Probed::new(EPOCH_CHANGE, probe.stop(), &[E1, E2]);
    let mut checks = Vec::new();
    if result.is_ok() {
        match epoch(&sim, host).await {
            Ok(after) => checks.push(Check {
                ok: after > before,
                what: format!(
                    "the cut must change node-{host}'s epoch, or this test tests nothing \
                     (before {before}, after {after})"
                ),
            }),
            Err(e) => return finish(Err(e), vec![probed], checks),
        }
    }
    finish(result, vec![probed], checks)
}

/// Every source in `events`' reports, for a legend.
pub fn sources(events: &[Probed]) -> BTreeSet<Ipv4Addr> {
    events.iter().flat_map(|e| e.report.sources()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leak::Mark;
    use crate::testbed::topology::{OPEN_SERVER, SERVER_PORT};
    use std::net::SocketAddrV4;

    const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn s(pod: usize, ms: u64, outcome: Outcome) -> Sample {
        Sample {
            pod,
            at: MS(ms),
            outcome,
        }
    }

    fn report(mut samples: Vec<Sample>) -> LeakReport {
        samples.sort_by_key(|s| (s.at, s.pod));
        LeakReport {
            dst: SocketAddrV4::new(OPEN_SERVER, SERVER_PORT),
            pods: vec!["a".into(), "b".into()],
            samples,
            marks: vec![Mark {
                at: MS(100),
                label: "applied".into(),
            }],
            end: MS(1000),
        }
    }

    #[test]
    fn without_grace_every_foreign_source_is_a_leak() {
        let r = report(vec![
            s(0, 0, Outcome::Seen(E1)),
            s(0, 20, Outcome::Seen(NODE)),
            s(0, 40, Outcome::Seen(E1)),
            s(1, 30, Outcome::Timeout),
            s(1, 50, Outcome::Seen(E1)),
        ]);
        let p = Probed::new(CUT_OFF, r, &[E1]);
        assert_eq!(p.leaks().len(), 1);
        assert_eq!(p.longest_interruption(), Some(MS(20)));
        assert!(std::panic::catch_unwind(|| p.assert_no_leaks()).is_err());
        let only_b = p.clone().measuring(vec![1]);
        assert_eq!(only_b.longest_interruption(), Some(MS(20)));
    }

    #[test]
    fn a_new_gateway_allows_node_addresses_in_the_grace_until_the_pod_closed() {
        let r = report(vec![
            // Before the apply: not judged.
            s(0, 0, Outcome::Seen(NODE)),
            s(1, 10, Outcome::Seen(NODE)),
            // Pod a: node address in the grace, then blocked, then E1: no leak.
            s(0, 120, Outcome::Seen(NODE)),
            s(0, 200, Outcome::Timeout),
            s(0, 500, Outcome::Seen(E1)),
            // Pod b: blocked in the grace, then its node address again (a leak, within the
            // grace), and after the grace (another).
            s(1, 150, Outcome::Timeout),
            s(1, 300, Outcome::Seen(NODE)),
            s(1, 450, Outcome::Seen(NODE)),
            s(1, 600, Outcome::Seen(E1)),
        ]);
        let p = Probed::new(NEW_GATEWAY, r, &[E1]).judged_after(MS(100), MS(300));
        let leaks: Vec<(usize, Duration)> = p.leaks().iter().map(|s| (s.pod, s.at)).collect();
        assert_eq!(leaks, vec![(1, MS(300)), (1, MS(450))]);
        assert!(std::panic::catch_unwind(|| p.assert_no_leaks()).is_err());
        // Pod b: 150 .. 600.
        assert_eq!(p.longest_interruption(), Some(MS(450)));
        let none = Probed::new(NEW_GATEWAY_NOWHERE, p.report.clone(), &[]);
        assert_eq!(none.longest_interruption(), None);
    }

    #[test]
    fn a_new_gateway_whose_pods_close_in_the_grace_has_no_leak() {
        let r = report(vec![
            s(0, 0, Outcome::Seen(NODE)),
            s(0, 120, Outcome::Seen(NODE)),
            s(0, 200, Outcome::Timeout),
            s(0, 500, Outcome::Seen(E1)),
            s(1, 150, Outcome::Seen(E1)),
        ]);
        let p = Probed::new(NEW_GATEWAY, r, &[E1]).judged_after(MS(100), MS(300));
        assert!(p.leaks().is_empty());
        p.assert_no_leaks();
        assert!(
            p.table().contains("node addresses seen until"),
            "{}",
            p.table()
        );
    }

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_name(s.name()), Some(s));
            assert!(!s.events().is_empty());
        }
        assert_eq!(Scenario::from_name("nope"), None);
    }
}
