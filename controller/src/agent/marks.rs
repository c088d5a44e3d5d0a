//! The packet-mark field egressgw steers with, checked against the marks other networking
//! software on a node uses by default. egressgw matches exact slot values within its field
//! (never "any bit"), so a collision only matters where another component sets bits inside
//! our field; the agent warns at start-up and says which flag to set.

/// Default mark bits of software that commonly runs on a node, with what to do about them.
pub const KNOWN_MARKS: &[(&str, u32, &str)] = &[
    (
        "kube-proxy",
        0x0000_c000,
        "kube-proxy's masquerade (0x4000) and drop (0x8000) marks",
    ),
    (
        "Calico",
        0xffff_0000,
        "Calico's iptablesMarkMask (FelixConfiguration); narrow it, e.g. to 0xff000000, and keep --mark-mask inside the freed bits",
    ),
    (
        "Cilium",
        0x0000_ff00,
        "Cilium's MARK_MAGIC bits (0x0f00, 0xf000)",
    ),
    (
        "Cilium identity",
        0xffff_0000,
        "Cilium carries security identities in the upper 16 bits with some features (e.g. with kube-proxy replacement and L7 proxy); use a --mark-mask in bits Cilium does not use in your configuration",
    ),
    ("flannel", 0x0000_0000, "flannel sets no packet marks"),
];

/// The known components whose default marks overlap `mask`, with their bits and advice.
pub fn collisions(mask: u32) -> Vec<(&'static str, u32, &'static str)> {
    KNOWN_MARKS
        .iter()
        .filter(|(_, bits, _)| bits & mask != 0)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_field_names_calico_and_cilium_identities_and_nothing_else() {
        let names: Vec<&str> = collisions(crate::dataplane::config::DEFAULT_MARK_MASK)
            .iter()
            .map(|(n, _, _)| *n)
            .collect();
        assert_eq!(names, ["Calico", "Cilium identity"]);
    }

    #[test]
    fn a_field_in_kube_proxys_bits_is_named_and_a_free_one_is_not() {
        assert_eq!(collisions(0x0000_4000)[0].0, "kube-proxy");
        assert!(collisions(0x0000_00f0).is_empty());
    }
}
