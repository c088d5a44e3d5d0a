//! One IP, one pod: which pod owns an IP that several pod objects list.
//!
//! Two pod objects list one IP when the CNI hands a draining pod's address to a new pod on
//! the same node before the old object is gone, or when a stale object (its node lost) still
//! says Running. Only one of them really sends from that IP, and its gateways — not the other
//! pod's — decide how that traffic leaves:
//!
//! 1. a pod that is not terminating owns the IP over one that is (the draining pod's sandbox
//!    gives the address back first);
//! 2. otherwise the newer pod (`creationTimestamp`) owns it;
//! 3. pods that tie on both are **ambiguous**: the IP is blocked towards the destinations of
//!    every gateway that selects any of them, never SNATed, until the tie resolves.
//!
//! A pod that loses an IP is *shadowed*: no gateway selects it. Only routable pods (alive,
//! scheduled, with an IP, not on the host network) claim IPs.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::index::{ClusterIndex, Pod, PodKey};

/// How one pod fares on the IPs it lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// It owns every IP it lists (alone, or by rank).
    Owner,
    /// Another pod owns one of its IPs: that pod is named, and this one is not selected.
    Shadowed { ip: IpAddr, by: PodKey },
    /// It ties with these pods for one of its IPs: selected, but blocked, never SNATed.
    Ambiguous { ip: IpAddr, with: Vec<PodKey> },
}

/// Routable pods by the IPs they list, kept up to date pod by pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpClaims {
    /// IP to the routable pods listing it (almost always one), sorted.
    by_ip: HashMap<IpAddr, Vec<PodKey>>,
    /// Routable pod to the IPs it is filed under (to unfile it after it changed).
    by_pod: HashMap<PodKey, Box<[IpAddr]>>,
}

/// Rank of a pod's claim: higher owns. Not terminating beats terminating, then newer wins.
fn rank(pod: &Pod) -> (bool, Option<k8s_openapi::jiff::Timestamp>) {
    (!pod.terminating, pod.created)
}

impl IpClaims {
    /// Claims of every routable pod of `index`.
    pub fn build(index: &ClusterIndex) -> Self {
        let mut out = Self::default();
        for pod in index.pods.values().filter(|p| p.is_routable()) {
            out.file(pod);
        }
        out
    }

    fn file(&mut self, pod: &Pod) {
        let ips: Box<[IpAddr]> = pod.ips.iter().copied().collect();
        for ip in ips.iter() {
            let keys = self.by_ip.entry(*ip).or_default();
            if let Err(i) = keys.binary_search(&pod.key) {
                keys.insert(i, pod.key.clone()); // sorted: equal plans compare equal
            }
        }
        self.by_pod.insert(pod.key.clone(), ips);
    }

    fn unfile(&mut self, key: &PodKey) {
        let Some(ips) = self.by_pod.remove(key) else {
            return;
        };
        for ip in ips.iter() {
            if let Some(keys) = self.by_ip.get_mut(ip) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
    }

    /// Re-file `key` after it was added, changed or removed in `index` (already updated).
    /// Returns the other pods that share, or shared, an IP with it: their claims may have
    /// changed too, so the caller re-plans them.
    pub fn update(&mut self, index: &ClusterIndex, key: &PodKey) -> BTreeSet<PodKey> {
        let mut neighbours = BTreeSet::new();
        let mut collect = |claims: &Self| {
            for ip in claims.by_pod.get(key).into_iter().flatten() {
                for k in claims.by_ip.get(ip).into_iter().flatten() {
                    if k != key {
                        neighbours.insert(k.clone());
                    }
                }
            }
        };
        collect(self);
        self.unfile(key);
        if let Some(pod) = index.pods.get(key).filter(|p| p.is_routable()) {
            self.file(pod);
        }
        collect(self);
        neighbours
    }

    /// How `pod` fares. A pod that is not routable claims nothing and is reported `Owner`
    /// (routability is judged elsewhere).
    pub fn claim(&self, index: &ClusterIndex, pod: &Pod) -> Claim {
        let mut ambiguous = None;
        for ip in &pod.ips {
            let Some(keys) = self.by_ip.get(ip).filter(|k| k.len() > 1) else {
                continue;
            };
            let mine = rank(pod);
            let rivals: Vec<(&PodKey, _)> = keys
                .iter()
                .filter(|k| **k != pod.key)
                .filter_map(|k| index.pods.get(k).map(|p| (k, rank(p))))
                .collect();
            if let Some((by, _)) = rivals
                .iter()
                .filter(|(_, r)| *r > mine)
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))
            {
                return Claim::Shadowed {
                    ip: *ip,
                    by: (*by).clone(),
                };
            }
            let ties: Vec<PodKey> = rivals
                .iter()
                .filter(|(_, r)| *r == mine)
                .map(|(k, _)| (*k).clone())
                .collect();
            if ambiguous.is_none() && !ties.is_empty() {
                ambiguous = Some(Claim::Ambiguous {
                    ip: *ip,
                    with: ties,
                });
            }
        }
        ambiguous.unwrap_or(Claim::Owner)
    }

    /// Whether `pod` may be selected at all: routable and not shadowed.
    pub fn eligible(&self, index: &ClusterIndex, pod: &Pod) -> bool {
        pod.is_routable() && !matches!(self.claim(index, pod), Claim::Shadowed { .. })
    }

    /// Whether `pod` ties with another for one of its IPs (its traffic is blocked).
    pub fn ambiguous(&self, index: &ClusterIndex, pod: &Pod) -> bool {
        matches!(self.claim(index, pod), Claim::Ambiguous { .. })
    }
}
