//! Selection: which pods each gateway selects (namespaceSelector AND podSelector, over running
//! pods with IPs), and conflicts between gateways over one pod, resolved by seniority.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::api::{LabelSelector, SelectorOperator};
use crate::index::{ClusterIndex, Gateway, GatewaySpec, Pod, PodKey};

use super::ip_claims::IpClaims;
use super::ranges;

/// How one gateway's selection turned out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewaySelection {
    /// Routable pods whose traffic uses this gateway.
    pub pods: BTreeSet<PodKey>,
    /// Pods this gateway selects but that an older gateway with overlapping destinations
    /// won, with the winner's name.
    pub lost: BTreeMap<PodKey, String>,
}

/// The selections of every valid gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selections {
    pub by_gateway: BTreeMap<String, GatewaySelection>,
}

/// For one pod: the gateways it uses and those whose claim it lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodGateways {
    /// Gateways the pod uses, most senior first. Their destinations never overlap.
    pub won: Vec<String>,
    /// `(loser, winner)`: a gateway that selects the pod but lost it to an older one.
    pub lost: Vec<(String, String)>,
}

/// Gateways with a spec to select by (valid, or the last valid one of a gateway whose spec
/// turned invalid: it keeps its pods, blocked) ordered by seniority (older first, then name).
pub fn by_seniority(index: &ClusterIndex) -> Vec<(&Gateway, &GatewaySpec)> {
    let mut v: Vec<(&Gateway, &GatewaySpec)> = index
        .gateways
        .values()
        .filter_map(|g| g.effective_spec().map(|s| (g, s)))
        .collect();
    v.sort_by(|a, b| a.0.seniority().cmp(&b.0.seniority()));
    v
}

/// Whether a gateway's selectors take this pod (ignoring conflicts and routability).
pub fn selects(index: &ClusterIndex, spec: &GatewaySpec, pod: &Pod) -> bool {
    index
        .namespace_labels(&pod.key.namespace)
        .is_some_and(|ns| spec.namespace_selector.matches(ns))
        && spec.pod_selector.matches(&pod.labels)
}

/// Memoised "do the effective destinations of gateways i and j overlap".
#[derive(Default)]
pub struct OverlapCache {
    effective: HashMap<usize, Vec<(bool, u128, u128)>>,
    pairs: HashMap<(usize, usize), bool>,
}

impl OverlapCache {
    fn overlaps(&mut self, ordered: &[(&Gateway, &GatewaySpec)], i: usize, j: usize) -> bool {
        let key = (i.min(j), i.max(j));
        if let Some(v) = self.pairs.get(&key) {
            return *v;
        }
        for k in [i, j] {
            self.effective.entry(k).or_insert_with(|| {
                ranges::effective(&ordered[k].1.destinations, &ordered[k].1.excluded)
            });
        }
        let v = ranges::intersects(&self.effective[&i], &self.effective[&j]);
        self.pairs.insert(key, v);
        v
    }
}

/// Resolve one pod's candidate gateways (indices into `ordered`, ascending = most senior
/// first): a gateway wins the pod unless an already-winning gateway's destinations overlap.
pub fn resolve(
    ordered: &[(&Gateway, &GatewaySpec)],
    candidates: &[usize],
    cache: &mut OverlapCache,
) -> PodGateways {
    let mut won: Vec<usize> = Vec::with_capacity(candidates.len());
    let mut out = PodGateways::default();
    for &c in candidates {
        match won.iter().find(|&&w| cache.overlaps(ordered, w, c)) {
            Some(&w) => out
                .lost
                .push((ordered[c].0.name.clone(), ordered[w].0.name.clone())),
            None => won.push(c),
        }
    }
    out.won = won.into_iter().map(|w| ordered[w].0.name.clone()).collect();
    out
}

/// The gateways one pod uses (the incremental path: one pod against every gateway). A pod
/// that is not routable, or whose IP another pod owns ([`IpClaims`]), uses none.
pub fn pod_gateways(
    index: &ClusterIndex,
    ordered: &[(&Gateway, &GatewaySpec)],
    pod: &Pod,
    claims: &IpClaims,
) -> PodGateways {
    if !claims.eligible(index, pod) {
        return PodGateways::default();
    }
    let candidates: Vec<usize> = (0..ordered.len())
        .filter(|&i| selects(index, ordered[i].1, pod))
        .collect();
    resolve(ordered, &candidates, &mut OverlapCache::default())
}

/// Pods sharing a label `key=value`, for finding a selector's candidates without a full scan.
struct Postings<'a> {
    by_label: HashMap<(&'a str, &'a str), Vec<&'a Pod>>,
    by_namespace: HashMap<&'a str, Vec<&'a Pod>>,
}

impl<'a> Postings<'a> {
    fn build(index: &'a ClusterIndex, claims: &IpClaims) -> Self {
        let mut by_label: HashMap<(&str, &str), Vec<&Pod>> = HashMap::new();
        let mut by_namespace: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for pod in index.pods.values().filter(|p| claims.eligible(index, p)) {
            by_namespace
                .entry(&*pod.key.namespace)
                .or_default()
                .push(pod);
            for (k, v) in pod.labels.iter() {
                by_label.entry((k, v)).or_default().push(pod);
            }
        }
        Self {
            by_label,
            by_namespace,
        }
    }

    /// The smallest list of pods that surely contains every pod `selector` matches, or
    /// `None` when the selector gives no handle (then scan the namespaces).
    fn narrowest(&self, selector: &'a LabelSelector) -> Option<Vec<&'a Pod>> {
        let mut best: Option<Vec<&Pod>> = None;
        let mut consider = |c: Vec<&'a Pod>| {
            if best.as_ref().is_none_or(|b| c.len() < b.len()) {
                best = Some(c);
            }
        };
        for (k, v) in &selector.match_labels {
            consider(
                self.by_label
                    .get(&(k.as_str(), v.as_str()))
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        for e in selector
            .match_expressions
            .iter()
            .filter(|e| e.operator == SelectorOperator::In)
        {
            let mut c: Vec<&Pod> = e
                .values
                .iter()
                .flat_map(|v| {
                    self.by_label
                        .get(&(e.key.as_str(), v.as_str()))
                        .into_iter()
                        .flatten()
                        .copied()
                })
                .collect();
            c.sort_by(|a, b| a.key.cmp(&b.key));
            c.dedup_by(|a, b| a.key == b.key);
            consider(c);
        }
        best
    }
}

/// Full selection over the whole index (pods whose IP another pod owns are left out).
pub fn select_all(index: &ClusterIndex, claims: &IpClaims) -> Selections {
    let ordered = by_seniority(index);
    let postings = Postings::build(index, claims);
    let mut pod_candidates: BTreeMap<&PodKey, Vec<usize>> = BTreeMap::new();
    for (i, (_, spec)) in ordered.iter().enumerate() {
        let namespaces: BTreeSet<&str> = index
            .namespaces
            .iter()
            .filter(|(_, labels)| spec.namespace_selector.matches(labels))
            .map(|(n, _)| n.as_str())
            .collect();
        if namespaces.is_empty() {
            continue;
        }
        let check = |pod: &Pod| {
            namespaces.contains(&*pod.key.namespace) && spec.pod_selector.matches(&pod.labels)
        };
        match postings.narrowest(&spec.pod_selector) {
            Some(candidates) => {
                for pod in candidates.into_iter().filter(|p| check(p)) {
                    pod_candidates.entry(&pod.key).or_default().push(i);
                }
            }
            None => {
                for ns in &namespaces {
                    for pod in postings
                        .by_namespace
                        .get(ns)
                        .into_iter()
                        .flatten()
                        .filter(|p| check(p))
                    {
                        pod_candidates.entry(&pod.key).or_default().push(i);
                    }
                }
            }
        }
    }
    let mut out = Selections::default();
    for (g, _) in &ordered {
        out.by_gateway
            .insert(g.name.clone(), GatewaySelection::default());
    }
    let mut cache = OverlapCache::default();
    for (pod, candidates) in pod_candidates {
        let resolved = if candidates.len() == 1 {
            PodGateways {
                won: vec![ordered[candidates[0]].0.name.clone()],
                lost: vec![],
            }
        } else {
            resolve(&ordered, &candidates, &mut cache)
        };
        for g in resolved.won {
            out.by_gateway
                .get_mut(&g)
                .expect("every ordered gateway has an entry")
                .pods
                .insert(pod.clone());
        }
        for (loser, winner) in resolved.lost {
            out.by_gateway
                .get_mut(&loser)
                .expect("every ordered gateway has an entry")
                .lost
                .insert(pod.clone(), winner);
        }
    }
    out
}
