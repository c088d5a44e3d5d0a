//! Address ranges back to CIDRs: a gateway's effective destinations (destinations minus
//! exclusions, from [`crate::plan::ranges::effective`]), optionally clipped to one network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// An inclusive range of one family, as [`crate::plan::ranges::effective`] returns it:
/// `(is_v6, first, last)`.
pub type Range = (bool, u128, u128);

/// The inclusive range a network covers.
pub fn range_of(net: &IpNetwork) -> Range {
    match net {
        IpNetwork::V4(n) => (
            false,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNetwork::V6(n) => {
            let start = u128::from(n.network());
            let host_bits = 128 - u32::from(n.prefix());
            let end = if host_bits == 128 {
                u128::MAX
            } else {
                start | ((1u128 << host_bits) - 1)
            };
            (true, start, end)
        }
    }
}

/// `ranges` cut down to what lies inside `within` (all of them when `None`).
pub fn clip(ranges: &[Range], within: Option<&IpNetwork>) -> Vec<Range> {
    let Some(net) = within else {
        return ranges.to_vec();
    };
    let (v6, lo, hi) = range_of(net);
    ranges
        .iter()
        .filter(|(f, s, e)| *f == v6 && *s <= hi && *e >= lo)
        .map(|(f, s, e)| (*f, (*s).max(lo), (*e).min(hi)))
        .collect()
}

/// The fewest CIDRs covering exactly `ranges`.
pub fn to_cidrs(ranges: &[Range]) -> Vec<IpNetwork> {
    let mut out = Vec::new();
    for &(v6, start, end) in ranges {
        let bits: u32 = if v6 { 128 } else { 32 };
        let mut cur = start;
        loop {
            // Largest block aligned at `cur` that does not pass `end`.
            let mut size_bits = if cur == 0 {
                bits
            } else {
                cur.trailing_zeros().min(bits)
            };
            while size_bits > 0 && block_end(cur, size_bits).is_none_or(|last| last > end) {
                size_bits -= 1;
            }
            out.push(network(v6, cur, (bits - size_bits) as u8));
            match block_end(cur, size_bits) {
                Some(last) if last < end => cur = last + 1,
                _ => break,
            }
        }
    }
    out
}

/// Last address of the block of `2^size_bits` addresses starting at `start` (`None` on
/// overflow past the end of the address space, which only the whole space reaches).
fn block_end(start: u128, size_bits: u32) -> Option<u128> {
    if size_bits >= 128 {
        return (start == 0).then_some(u128::MAX);
    }
    start.checked_add((1u128 << size_bits) - 1)
}

fn network(v6: bool, start: u128, prefix: u8) -> IpNetwork {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::from(start))
    } else {
        IpAddr::V4(Ipv4Addr::from(start as u32))
    };
    IpNetwork::new(ip, prefix).expect("prefix within the family's length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ranges::effective;

    fn nets(xs: &[&str]) -> Vec<IpNetwork> {
        xs.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn strings(v: Vec<IpNetwork>) -> Vec<String> {
        v.into_iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_network_comes_back_as_itself() {
        for n in [
            "203.0.113.0/24",
            "0.0.0.0/0",
            "198.18.0.200/32",
            "10.0.0.0/8",
        ] {
            assert_eq!(strings(to_cidrs(&effective(&nets(&[n]), &[]))), [n]);
        }
    }

    #[test]
    fn an_exclusion_leaves_the_fewest_covering_networks() {
        let r = effective(&nets(&["203.0.113.0/24"]), &nets(&["203.0.113.128/25"]));
        assert_eq!(strings(to_cidrs(&r)), ["203.0.113.0/25"]);
        let r = effective(&nets(&["203.0.113.0/24"]), &nets(&["203.0.113.64/26"]));
        assert_eq!(
            strings(to_cidrs(&r)),
            ["203.0.113.0/26", "203.0.113.128/25"]
        );
        let r = effective(&nets(&["203.0.113.0/24"]), &nets(&["203.0.113.7/32"]));
        assert_eq!(
            strings(to_cidrs(&r)),
            [
                "203.0.113.0/30",
                "203.0.113.4/31",
                "203.0.113.6/32",
                "203.0.113.8/29",
                "203.0.113.16/28",
                "203.0.113.32/27",
                "203.0.113.64/26",
                "203.0.113.128/25"
            ]
        );
    }

    #[test]
    fn clipping_keeps_only_the_part_inside() {
        let r = effective(&nets(&["203.0.0.0/16", "198.51.100.0/24"]), &[]);
        let within: IpNetwork = "203.0.113.0/24".parse().unwrap();
        assert_eq!(
            strings(to_cidrs(&clip(&r, Some(&within)))),
            ["203.0.113.0/24"]
        );
        let wider: IpNetwork = "198.0.0.0/8".parse().unwrap();
        assert_eq!(
            strings(to_cidrs(&clip(&r, Some(&wider)))),
            ["198.51.100.0/24"]
        );
        let elsewhere: IpNetwork = "198.18.64.0/25".parse().unwrap();
        assert!(clip(&r, Some(&elsewhere)).is_empty());
    }

    #[test]
    fn decomposition_covers_exactly_the_range() {
        // Every range inside a /24 decomposes into networks that tile it exactly.
        for start in 0u128..40 {
            for end in start..64 {
                let base = u128::from(u32::from(Ipv4Addr::new(203, 0, 113, 0)));
                let got = to_cidrs(&[(false, base + start, base + end)]);
                let mut next = base + start;
                for n in &got {
                    let (_, s, e) = range_of(n);
                    assert_eq!(s, next, "{got:?} for {start}..={end}");
                    next = e + 1;
                }
                assert_eq!(next, base + end + 1);
            }
        }
    }
}
