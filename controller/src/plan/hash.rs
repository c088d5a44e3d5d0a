//! A stable hash for spreading pods over a gateway's egress IPs.
//!
//! Rendezvous (highest-random-weight) hashing: each pod takes the egress IP with the highest
//! weight `h(pod, ip)`. A pod keeps its IP while the set of IPs is unchanged, and when an IP
//! goes away only the pods that used it move. The hash is FNV-1a with a splitmix64 finaliser,
//! written out here so that the controller and every agent, whatever their build, agree.

use std::net::IpAddr;

use crate::index::PodKey;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The weight of `ip` for `pod`.
pub fn weight(pod: &PodKey, ip: &IpAddr) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, pod.namespace.as_bytes());
    h = fnv1a(h, b"/");
    h = fnv1a(h, pod.name.as_bytes());
    h = fnv1a(h, b"@");
    finalise(fnv1a(h, &ip_bytes(ip)))
}

/// The egress IP `pod` uses among `ips` (None when there is none). Ties (astronomically
/// unlikely) go to the lower IP, so the choice never depends on the order of `ips`.
pub fn choose<'a>(pod: &PodKey, ips: impl IntoIterator<Item = &'a IpAddr>) -> Option<IpAddr> {
    ips.into_iter()
        .map(|ip| (weight(pod, ip), std::cmp::Reverse(*ip)))
        .max()
        .map(|(_, std::cmp::Reverse(ip))| ip)
}

/// A stable 64-bit digest of `bytes` (same algorithm as [`weight`]).
pub fn digest(bytes: &[u8]) -> u64 {
    finalise(fnv1a(FNV_OFFSET, bytes))
}

/// The same stable digest fed piece by piece, also as a [`std::hash::Hasher`] (so any
/// `Hash` value can be fed). Stable across builds only for what is fed as bytes; values fed
/// through `Hash` follow the standard library's encoding (enough to compare two digests
/// made by one binary).
#[derive(Clone, Copy, Debug)]
pub struct Digester(u64);

impl Default for Digester {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl std::hash::Hasher for Digester {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        finalise(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(xs: &[&str]) -> Vec<IpAddr> {
        xs.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_hash_is_pinned() {
        // Controller and agents of different builds must agree: this value may never change.
        assert_eq!(
            weight(
                &PodKey::new("billing", "invoicer-0"),
                &"198.18.0.200".parse().unwrap()
            ),
            0xaee5_3a50_53ee_71ce
        );
    }

    #[test]
    fn choice_ignores_order_and_spreads() {
        let a = ips(&["198.18.0.200", "198.18.0.201", "198.18.0.202"]);
        let mut b = a.clone();
        b.reverse();
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..3000 {
            let pod = PodKey::new("ns", format!("pod-{i}"));
            let x = choose(&pod, &a).unwrap();
            assert_eq!(Some(x), choose(&pod, &b));
            *counts.entry(x).or_insert(0) += 1;
        }
        for (ip, n) in counts {
            assert!((800..1200).contains(&n), "{ip} got {n} of 3000 pods");
        }
    }

    #[test]
    fn removing_an_ip_moves_only_its_pods() {
        let all = ips(&["198.18.0.200", "198.18.0.201", "198.18.0.202"]);
        let fewer = ips(&["198.18.0.200", "198.18.0.202"]);
        for i in 0..1000 {
            let pod = PodKey::new("ns", format!("pod-{i}"));
            let before = choose(&pod, &all).unwrap();
            let after = choose(&pod, &fewer).unwrap();
            if before != all[1] {
                assert_eq!(before, after, "{pod} moved although its IP stayed");
            }
        }
    }
}
