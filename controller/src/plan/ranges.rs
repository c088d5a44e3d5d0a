//! Address ranges: whether two gateways' effective destinations (destinations minus
//! exclusions) overlap. Family-agnostic: IPv4 and IPv6 never overlap each other.

use ipnetwork::IpNetwork;

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    v6: bool,
    start: u128,
    end: u128,
}

fn range(net: &IpNetwork) -> Range {
    match net {
        IpNetwork::V4(n) => Range {
            v6: false,
            start: u128::from(u32::from(n.network())),
            end: u128::from(u32::from(n.broadcast())),
        },
        IpNetwork::V6(n) => {
            let start = u128::from(n.network());
            let host_bits = 128 - u32::from(n.prefix());
            let end = if host_bits == 128 {
                u128::MAX
            } else {
                start | ((1u128 << host_bits) - 1)
            };
            Range {
                v6: true,
                start,
                end,
            }
        }
    }
}

/// Sorted, merged ranges of `include` minus `exclude`.
pub fn effective(include: &[IpNetwork], exclude: &[IpNetwork]) -> Vec<(bool, u128, u128)> {
    let mut inc: Vec<Range> = include.iter().map(range).collect();
    inc.sort();
    let mut exc: Vec<Range> = exclude.iter().map(range).collect();
    exc.sort();
    let mut out: Vec<(bool, u128, u128)> = Vec::new();
    for r in merge(inc) {
        let mut pieces = vec![r];
        for x in exc
            .iter()
            .filter(|x| x.v6 == r.v6 && x.start <= r.end && x.end >= r.start)
        {
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    let mut keep = Vec::with_capacity(2);
                    if x.end < p.start || x.start > p.end {
                        keep.push(p);
                    } else {
                        if x.start > p.start {
                            keep.push(Range {
                                end: x.start - 1,
                                ..p
                            });
                        }
                        if x.end < p.end {
                            keep.push(Range {
                                start: x.end + 1,
                                ..p
                            });
                        }
                    }
                    keep
                })
                .collect();
        }
        out.extend(pieces.into_iter().map(|p| (p.v6, p.start, p.end)));
    }
    out
}

fn merge(sorted: Vec<Range>) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if last.v6 == r.v6 && r.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Whether two sorted range lists (from [`effective`]) share an address.
pub fn intersects(a: &[(bool, u128, u128)], b: &[(bool, u128, u128)]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        if x.0 == y.0 && x.1 <= y.2 && y.1 <= x.2 {
            return true;
        }
        if (x.0, x.2) < (y.0, y.2) {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(xs: &[&str]) -> Vec<IpNetwork> {
        xs.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn overlap(a: &[&str], ax: &[&str], b: &[&str], bx: &[&str]) -> bool {
        intersects(
            &effective(&nets(a), &nets(ax)),
            &effective(&nets(b), &nets(bx)),
        )
    }

    #[test]
    fn overlap_cases() {
        assert!(overlap(&["203.0.113.0/24"], &[], &["203.0.113.7/32"], &[]));
        assert!(!overlap(
            &["203.0.113.0/24"],
            &[],
            &["198.51.100.0/24"],
            &[]
        ));
        // An exclusion carves the overlap out.
        assert!(!overlap(
            &["203.0.113.0/24"],
            &["203.0.113.128/25"],
            &["203.0.113.128/25"],
            &[]
        ));
        assert!(overlap(
            &["203.0.113.0/24"],
            &["203.0.113.128/26"],
            &["203.0.113.128/25"],
            &[]
        ));
        // Families never overlap.
        assert!(!overlap(&["0.0.0.0/0"], &[], &["::/0"], &[]));
        assert!(overlap(&["0.0.0.0/0"], &[], &["198.51.100.0/24"], &[]));
        // Everything excluded leaves nothing to overlap.
        assert!(!overlap(
            &["203.0.113.0/24"],
            &["203.0.113.0/24"],
            &["203.0.113.0/24"],
            &[]
        ));
    }

    #[test]
    fn exclusion_splits_a_range() {
        let e = effective(&nets(&["203.0.113.0/24"]), &nets(&["203.0.113.64/26"]));
        assert_eq!(e.len(), 2);
    }
}
