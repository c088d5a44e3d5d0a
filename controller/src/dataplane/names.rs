//! Names of our nftables objects: short, stable, derivable from the plan and parseable back.
//!
//! nftables names are length-limited while gateway names may be 253 characters, so each
//! gateway gets a short id (`g` + 10 hex digits of a hash of its name). The full name is
//! recorded as the comment of the gateway's `<id>_dst` set, so the mapping is recoverable
//! from the kernel alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::config::{SET_HOSTED, SET_MARKS, SET_NODE_IFS, SET_ORIGINS, SET_REMOTE_PODS};

/// Short, stable id of a gateway inside our table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayId(String);

impl GatewayId {
    /// The id of `name` with collision salt `salt` (0 unless two names collide).
    pub fn derive(name: &str, salt: u8) -> Self {
        // FNV-1a, 64 bit: stable across releases and platforms (unlike std's hasher).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in std::iter::once(salt).chain(name.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self(format!("g{:010x}", h & 0xff_ffff_ffff))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix('g')?;
        (hex.len() == 10
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_string()))
    }
}

impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ids for every gateway name: deterministic (names in order, a colliding name takes the
/// next salt), so the same set of names always gets the same ids.
pub fn assign_gateway_ids<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, GatewayId> {
    let names: BTreeSet<&str> = names.into_iter().collect();
    let mut taken = BTreeSet::new();
    let mut ids = BTreeMap::new();
    for name in names {
        let id = (0..=u8::MAX)
            .map(|salt| GatewayId::derive(name, salt))
            .find(|id| !taken.contains(id))
            .expect("256 salts cannot all collide");
        taken.insert(id.clone());
        ids.insert(name.to_string(), id);
    }
    ids
}

/// The role of one of our sets, recoverable from its name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    /// Egress IPs this node hosts (guard + ownership record of addresses).
    Hosted,
    /// The other nodes' pod ranges (interval set).
    RemotePods,
    /// The slot mark values this node steers with (4-byte keys in host order, see
    /// [`crate::dataplane::desired::mark_key`]).
    Marks,
    /// `pod . interface . MAC` of every SNATed pod of another node (anti-spoofing, see
    /// [`crate::dataplane::nft_model::Origin`]).
    Origins,
    /// The interfaces (indexes, 4-byte keys in host order) the nodes of [`SetName::Origins`]
    /// are reached on.
    NodeIfs,
    /// Destination networks of a gateway (interval set; comment = gateway name).
    Dst(GatewayId),
    /// Excluded networks of a gateway (interval set).
    Excl(GatewayId),
    /// Pods SNATed to the egress IP on this node.
    Snat(GatewayId, Ipv4Addr),
    /// Local pods steered to the next-hop node.
    Via(GatewayId, Ipv4Addr),
    /// Local pods whose traffic to the destinations is dropped.
    Blocked(GatewayId),
    /// Pods this node guards for the gateway (the no-leak rule): its own selected pods, and on
    /// nodes that host or may host the gateway every pod it selects.
    Guard(GatewayId),
    /// The gateway's egress IPs: the only sources its guarded pods may leave with.
    Egress(GatewayId),
}

fn hex_ip(ip: Ipv4Addr) -> String {
    format!("{:08x}", u32::from(ip))
}

fn parse_hex_ip(s: &str) -> Option<Ipv4Addr> {
    (s.len() == 8)
        .then(|| u32::from_str_radix(s, 16).ok().map(Ipv4Addr::from))
        .flatten()
}

impl SetName {
    /// Whether the set holds intervals (networks) rather than single addresses.
    pub fn is_interval(&self) -> bool {
        matches!(
            self,
            SetName::Dst(_) | SetName::Excl(_) | SetName::RemotePods
        )
    }

    pub fn gateway(&self) -> Option<&GatewayId> {
        match self {
            SetName::Hosted
            | SetName::RemotePods
            | SetName::Marks
            | SetName::Origins
            | SetName::NodeIfs => None,
            SetName::Dst(g)
            | SetName::Excl(g)
            | SetName::Snat(g, _)
            | SetName::Via(g, _)
            | SetName::Blocked(g)
            | SetName::Guard(g)
            | SetName::Egress(g) => Some(g),
        }
    }
}

impl fmt::Display for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetName::Hosted => f.write_str(SET_HOSTED),
            SetName::RemotePods => f.write_str(SET_REMOTE_PODS),
            SetName::Marks => f.write_str(SET_MARKS),
            SetName::Origins => f.write_str(SET_ORIGINS),
            SetName::NodeIfs => f.write_str(SET_NODE_IFS),
            SetName::Dst(g) => write!(f, "{g}_dst"),
            SetName::Excl(g) => write!(f, "{g}_excl"),
            SetName::Snat(g, ip) => write!(f, "{g}_snat_{}", hex_ip(*ip)),
            SetName::Via(g, ip) => write!(f, "{g}_via_{}", hex_ip(*ip)),
            SetName::Blocked(g) => write!(f, "{g}_blocked"),
            SetName::Guard(g) => write!(f, "{g}_guard"),
            SetName::Egress(g) => write!(f, "{g}_egress"),
        }
    }
}

impl FromStr for SetName {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        if s == SET_HOSTED {
            return Ok(SetName::Hosted);
        }
        if s == SET_REMOTE_PODS {
            return Ok(SetName::RemotePods);
        }
        if s == SET_MARKS {
            return Ok(SetName::Marks);
        }
        if s == SET_ORIGINS {
            return Ok(SetName::Origins);
        }
        if s == SET_NODE_IFS {
            return Ok(SetName::NodeIfs);
        }
        let (gid, rest) = s.split_once('_').ok_or(())?;
        let gid = GatewayId::parse(gid).ok_or(())?;
        match rest.split_once('_') {
            None => match rest {
                "dst" => Ok(SetName::Dst(gid)),
                "excl" => Ok(SetName::Excl(gid)),
                "blocked" => Ok(SetName::Blocked(gid)),
                "guard" => Ok(SetName::Guard(gid)),
                "egress" => Ok(SetName::Egress(gid)),
                _ => Err(()),
            },
            Some(("snat", ip)) => parse_hex_ip(ip).map(|ip| SetName::Snat(gid, ip)).ok_or(()),
            Some(("via", ip)) => parse_hex_ip(ip).map(|ip| SetName::Via(gid, ip)).ok_or(()),
            Some(_) => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_ids_are_short_stable_and_distinct() {
        let long = "x".repeat(253);
        let id = GatewayId::derive(&long, 0);
        assert_eq!(id.as_str().len(), 11);
        assert_eq!(id, GatewayId::derive(&long, 0));
        assert_ne!(id, GatewayId::derive(&long, 1));
        assert_ne!(GatewayId::derive("a", 0), GatewayId::derive("b", 0));
        let ids = assign_gateway_ids(["b", "a", &long]);
        assert_eq!(ids.len(), 3);
        assert_eq!(ids["a"], GatewayId::derive("a", 0));
    }

    #[test]
    fn set_names_round_trip() {
        let g = GatewayId::derive("billing", 0);
        let ip = Ipv4Addr::new(198, 18, 0, 200);
        for n in [
            SetName::Hosted,
            SetName::RemotePods,
            SetName::Marks,
            SetName::Origins,
            SetName::NodeIfs,
            SetName::Dst(g.clone()),
            SetName::Excl(g.clone()),
            SetName::Snat(g.clone(), ip),
            SetName::Via(g.clone(), ip),
            SetName::Blocked(g.clone()),
            SetName::Guard(g.clone()),
            SetName::Egress(g.clone()),
        ] {
            let s = n.to_string();
            assert!(s.len() <= 31, "{s} too long for old kernels");
            assert_eq!(s.parse::<SetName>(), Ok(n));
        }
        assert_eq!(
            format!("{}", SetName::Snat(g.clone(), ip)),
            format!("{g}_snat_c61200c8")
        );
        for bad in [
            "",
            "foo",
            "g123_dst",
            "gzzzzzzzzzz_dst",
            &format!("{g}_snat_zz"),
            &format!("{g}_other"),
        ] {
            assert!(bad.parse::<SetName>().is_err(), "{bad}");
        }
    }
}
