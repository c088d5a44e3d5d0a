//! Next-hop slots: which mark value and routing table steer traffic to which gateway node.
//!
//! The allocation lives in the kernel (the routes in our tables), so it is recovered after a
//! restart; a next hop keeps its slot as long as it is wanted, and a slot freed in one apply
//! is not handed to a new next hop in the same apply (its old marks may still be in flight).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Slots for `wanted` next hops. `current` is what the kernel holds (next hop -> slot),
/// `busy` every slot that has any of our rules or routes in the kernel right now.
/// Returns the slots, and the next hops that found no free slot (their pods are blocked,
/// never skipped: see [`super::desired::desired`]).
pub fn allocate_slots(
    current: &BTreeMap<Ipv4Addr, u32>,
    busy: &BTreeSet<u32>,
    wanted: &BTreeSet<Ipv4Addr>,
    max_slot: u32,
) -> (BTreeMap<Ipv4Addr, u32>, Vec<Ipv4Addr>) {
    let mut out: BTreeMap<Ipv4Addr, u32> = wanted
        .iter()
        .filter_map(|nh| current.get(nh).map(|s| (*nh, *s)))
        .collect();
    let mut used: BTreeSet<u32> = busy.iter().copied().chain(out.values().copied()).collect();
    let new: Vec<Ipv4Addr> = wanted
        .iter()
        .filter(|nh| !out.contains_key(nh))
        .copied()
        .collect();
    let mut unslotted = Vec::new();
    for nh in new {
        match (1..=max_slot).find(|s| !used.contains(s)) {
            Some(slot) => {
                used.insert(slot);
                out.insert(nh, slot);
            }
            None => unslotted.push(nh),
        }
    }
    (out, unslotted)
}

/// Next hop -> slot as the kernel records it: the routes via each next hop, then, for next
/// hops whose route is gone (a link flap flushed it; the table's blackhole stays), the steering
/// rules of our table (`steer`: next hop and mark value), so a flap does not renumber marks.
pub fn recover_slots(
    from_routes: &BTreeMap<Ipv4Addr, u32>,
    steer: impl IntoIterator<Item = (Ipv4Addr, u32)>,
    mark_slot: impl Fn(u32) -> Option<u32>,
) -> BTreeMap<Ipv4Addr, u32> {
    let mut out = from_routes.clone();
    let mut taken: BTreeSet<u32> = out.values().copied().collect();
    for (nh, mark) in steer {
        let Some(slot) = mark_slot(mark) else {
            continue;
        };
        if !out.contains_key(&nh) && taken.insert(slot) {
            out.insert(nh, slot);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    #[test]
    fn keeps_existing_slots_and_fills_lowest_free() {
        let current = BTreeMap::from([(ip(12), 3), (ip(13), 1)]);
        let busy = BTreeSet::from([1, 3, 4]);
        let wanted = BTreeSet::from([ip(12), ip(14), ip(15)]);
        let (got, none) = allocate_slots(&current, &busy, &wanted, 255);
        assert_eq!(got, BTreeMap::from([(ip(12), 3), (ip(14), 2), (ip(15), 5)]));
        assert!(none.is_empty());
    }

    #[test]
    fn exhaustion_names_the_next_hop() {
        let wanted = BTreeSet::from([ip(12), ip(13)]);
        assert_eq!(
            allocate_slots(&BTreeMap::new(), &BTreeSet::new(), &wanted, 1),
            (BTreeMap::from([(ip(12), 1)]), vec![ip(13)])
        );
    }

    #[test]
    fn a_next_hop_whose_route_vanished_keeps_the_slot_of_its_rule() {
        let routes = BTreeMap::from([(ip(12), 1)]);
        let slot = |mark: u32| Some(mark >> 20).filter(|s| *s > 0);
        let steer = [(ip(13), 2 << 20), (ip(14), 1 << 20), (ip(12), 5 << 20)];
        // .13 recovers slot 2; .14 claims slot 1 that .12's route holds: not recovered; .12
        // keeps the slot of its route
        assert_eq!(
            recover_slots(&routes, steer, slot),
            BTreeMap::from([(ip(12), 1), (ip(13), 2)])
        );
    }
}
