//! The whole plan: selections, assignments and every gateway's rollout, computed in full or
//! updated incrementally after one pod changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::index::{ClusterIndex, PodKey, Sym, intern};

use super::assign::{self, Assignments};
use super::ip_claims::IpClaims;
use super::node_plan::{NodePlan, digest};
use super::rollout::{self, GatewayRollout};
use super::select::{self, Selections};

/// Everything the planner decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterPlan {
    pub selections: Selections,
    pub assignments: Assignments,
    /// Gateway name to its rollout over the nodes.
    pub rollouts: BTreeMap<String, GatewayRollout>,
    /// Pod to the gateways that select it (won or lost, sorted, names interned), for
    /// incremental updates.
    memberships: HashMap<PodKey, Box<[Sym]>>,
    /// Cluster-internal ranges every gateway excludes ([`super::guard::cluster_internal`]).
    pub cluster_internal: Vec<ipnetwork::IpNetwork>,
    /// Which pod owns an IP that several pods list.
    claims: IpClaims,
}

/// Plan everything, computing assignments (the controller).
pub fn plan(index: &ClusterIndex) -> ClusterPlan {
    plan_with(index, assign::assign(index))
}

/// Plan everything with the given assignments (the agent passes those recorded in status).
pub fn plan_with(index: &ClusterIndex, assignments: Assignments) -> ClusterPlan {
    let claims = IpClaims::build(index);
    let selections = select::select_all(index, &claims);
    let mut plan = ClusterPlan {
        selections,
        assignments,
        cluster_internal: super::guard::cluster_internal(index),
        claims,
        ..Default::default()
    };
    for (name, sel) in &plan.selections.by_gateway {
        let name = intern(name);
        for key in sel.pods.iter().chain(sel.lost.keys()) {
            // Gateways come in name order, so appending keeps each list sorted.
            let names = plan.memberships.entry(key.clone()).or_default();
            *names = names
                .iter()
                .cloned()
                .chain(std::iter::once(name.clone()))
                .collect();
        }
    }
    let names: Vec<String> = plan.selections.by_gateway.keys().cloned().collect();
    for name in names {
        plan.rebuild_rollout(index, &name);
    }
    plan
}

impl ClusterPlan {
    fn rebuild_rollout(&mut self, index: &ClusterIndex, gateway: &str) {
        let Some(spec) = index.gateways.get(gateway).and_then(|g| g.effective_spec()) else {
            self.rollouts.remove(gateway);
            return;
        };
        let empty = Default::default();
        let pods = self
            .selections
            .by_gateway
            .get(gateway)
            .map_or(&empty, |s| &s.pods);
        let placements = self
            .assignments
            .by_gateway
            .get(gateway)
            .map_or(&[][..], Vec::as_slice);
        let r = rollout::rollout(index, gateway, spec, pods, placements, &self.claims);
        self.rollouts.insert(gateway.to_string(), r);
    }

    /// Update the plan after one pod was added, changed or removed in `index` (already
    /// updated). Returns the gateways whose selection or rollout the pod touches.
    pub fn update_pod(&mut self, index: &ClusterIndex, key: &PodKey) -> BTreeSet<String> {
        self.update_pods(index, std::iter::once(key))
    }

    /// Update the plan after the pods `keys` were added, changed or removed in `index`
    /// (already updated). Costs one selector check per gateway per pod plus one rebuild of
    /// the rollout of each gateway that selected or selects any of them, instead of a full
    /// plan: a burst of pod changes rebuilds a large gateway's rollout once, not once per
    /// pod. Pods that share (or shared) an IP with a changed pod are re-planned with it: who
    /// owns the IP may have changed. Returns those gateways.
    pub fn update_pods<'k>(
        &mut self,
        index: &ClusterIndex,
        keys: impl IntoIterator<Item = &'k PodKey>,
    ) -> BTreeSet<String> {
        let seniority = select::by_seniority(index);
        let mut affected = BTreeSet::new();
        let mut todo: BTreeSet<PodKey> = BTreeSet::new();
        for key in keys {
            todo.insert(key.clone());
            todo.extend(self.claims.update(index, key));
        }
        for key in &todo {
            let before = self.memberships.remove(key).unwrap_or_default();
            let now = match index.pods.get(key) {
                Some(pod) => select::pod_gateways(index, &seniority, pod, &self.claims),
                None => select::PodGateways::default(),
            };
            for g in &before {
                if let Some(sel) = self.selections.by_gateway.get_mut(&**g) {
                    sel.pods.remove(key);
                    sel.lost.remove(key);
                }
            }
            let mut after = BTreeSet::new();
            for g in &now.won {
                if let Some(sel) = self.selections.by_gateway.get_mut(g) {
                    sel.pods.insert(key.clone());
                    after.insert(g.clone());
                }
            }
            for (loser, winner) in &now.lost {
                if let Some(sel) = self.selections.by_gateway.get_mut(loser) {
                    sel.lost.insert(key.clone(), winner.clone());
                    after.insert(loser.clone());
                }
            }
            affected.extend(before.iter().map(|g| g.to_string()));
            if !after.is_empty() {
                self.memberships
                    .insert(key.clone(), after.iter().map(|g| intern(g)).collect());
            }
            affected.extend(after);
        }
        for g in &affected {
            self.rebuild_rollout(index, g);
        }
        affected
    }

    /// One node's plan, guarding only its own pods (and those of the gateways whose IPs it
    /// hosts).
    pub fn node_plan(&self, node: &str) -> NodePlan {
        let mut p = rollout::node_plan(node, &self.rollouts, |g| {
            self.rollouts
                .get(g)
                .is_some_and(|r| r.hosted.values().any(|(n, _)| n == node))
        });
        p.internal_exclusions = self.cluster_internal.clone();
        p
    }

    /// One node's plan, guarding every pod of the gateways `candidate` names (those the node
    /// hosts or may host) as well as its own.
    pub fn node_plan_guarding(&self, node: &str, candidate: impl Fn(&str) -> bool) -> NodePlan {
        let mut p = rollout::node_plan(node, &self.rollouts, candidate);
        p.internal_exclusions = self.cluster_internal.clone();
        p
    }

    /// Nodes that must act for `gateway` (host one of its IPs or carry rules for it).
    pub fn nodes_for(&self, gateway: &str) -> BTreeSet<&str> {
        let Some(r) = self.rollouts.get(gateway) else {
            return BTreeSet::new();
        };
        r.node_names()
            .chain(r.hosted.values().map(|(n, _)| n.as_str()))
            .collect()
    }

    /// The digest a node's agent reports once it has programmed `gateway` as planned.
    pub fn expected_digest(&self, gateway: &str, node: &str) -> u64 {
        let Some(r) = self.rollouts.get(gateway) else {
            return digest(None, []);
        };
        digest(
            r.node_part(node).as_ref(),
            r.hosted
                .iter()
                .filter(|(_, (n, _))| n == node)
                .map(|(ip, (_, h))| (ip, h)),
        )
    }
}
