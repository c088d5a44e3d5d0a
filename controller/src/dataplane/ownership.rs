//! Which egress-IP addresses are ours (pure).
//!
//! An address is ours when this agent added it: the [`AddressRecord`] remembers every /32 it
//! added, in memory, and recovers across restarts from the `hosted` set of our table (written
//! in the transaction before the address is added). `IFA_PROTO` [`ADDRESS_PROTO`] is only a
//! hint: kernels before 5.18 do not keep it, and everything here works without it.
//!
//! An address equal to a wanted egress IP that is *not* ours (a keepalived or kube-vip VIP, a
//! node address) is foreign: the agent never adopts it, never refreshes its lifetime, never
//! removes it, and the placement of that egress IP on this node fails with a reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use super::config::ADDRESS_PROTO;
use super::route_model::{AddrEntry, RoutingState};

/// The engine's record as the other threads of the agent see it (the lifetime thread), with
/// the port ids of our sockets (their address notifications are not drift).
#[derive(Clone, Debug, Default)]
pub struct SharedOwnership {
    pub record: Arc<Mutex<AddressRecord>>,
    pub ports: super::own_ports::OwnPorts,
}

impl SharedOwnership {
    /// A copy of the record now.
    pub fn record(&self) -> AddressRecord {
        self.record.lock().expect("address record lock").clone()
    }
}

/// The egress IPs this agent added to the node (and still holds, as far as it knows).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressRecord {
    added: BTreeSet<Ipv4Addr>,
}

impl AddressRecord {
    /// Takes in the record kept in the kernel (our table's `hosted` set), e.g. after a restart.
    pub fn recover(&mut self, hosted: &BTreeSet<Ipv4Addr>) {
        self.added.extend(hosted);
    }

    /// Remembers an address this agent just added.
    pub fn added(&mut self, ip: Ipv4Addr) {
        self.added.insert(ip);
    }

    /// Keeps only the addresses the node should hold now (the others were removed, or are
    /// gone): an IP that comes back later from someone else is not mistaken for ours.
    pub fn retain_wanted(&mut self, wanted: &BTreeMap<Ipv4Addr, String>) {
        self.added.retain(|ip| wanted.contains_key(ip));
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.added.contains(&ip)
    }

    pub fn ips(&self) -> &BTreeSet<Ipv4Addr> {
        &self.added
    }

    /// Whether `a` is an address this agent added: a /32 in the record, or carrying our
    /// `IFA_PROTO` (kernels ≥ 5.18 keep it; older ones report none, and the record decides).
    pub fn is_ours(&self, a: &AddrEntry) -> bool {
        a.prefix == 32 && (self.contains(a.ip) || a.proto == Some(ADDRESS_PROTO))
    }

    /// Our addresses on the node.
    pub fn owned<'a>(&self, routing: &'a RoutingState) -> Vec<&'a AddrEntry> {
        routing
            .addresses
            .iter()
            .filter(|a| self.is_ours(a))
            .collect()
    }
}

/// A wanted egress IP that the node already holds, not added by this agent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignAddress {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// The interface that holds it.
    pub interface: String,
}

impl fmt::Display for ForeignAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} on {} was not added by egressgw: left alone, not hosted here",
            self.ip, self.prefix, self.interface
        )
    }
}

/// The wanted egress IPs (IP -> interface) that some address of the node, on any interface
/// and with any prefix, already carries without being ours.
pub fn foreign_conflicts(
    routing: &RoutingState,
    record: &AddressRecord,
    wanted: &BTreeMap<Ipv4Addr, String>,
) -> BTreeMap<Ipv4Addr, ForeignAddress> {
    routing
        .addresses
        .iter()
        .filter(|a| wanted.contains_key(&a.ip) && !record.is_ours(a))
        .map(|a| {
            let interface = routing
                .link_by_index(a.link)
                .map_or_else(|| format!("#{}", a.link), |l| l.name.clone());
            (
                a.ip,
                ForeignAddress {
                    ip: a.ip,
                    prefix: a.prefix,
                    interface,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::route_model::Link;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn addr(s: &str, prefix: u8, proto: Option<u8>) -> AddrEntry {
        AddrEntry {
            ip: ip(s),
            prefix,
            link: 2,
            proto,
        }
    }

    /// A kernel older than 5.18: no address carries `IFA_PROTO`.
    fn old_kernel() -> RoutingState {
        RoutingState {
            links: vec![Link {
                index: 2,
                name: "eth0".into(),
                mac: None,
            }],
            addresses: vec![
                addr("198.18.0.12", 24, None),
                addr("198.18.0.200", 32, None), // added by us
                addr("198.18.0.240", 32, None), // a keepalived VIP
            ],
            ..RoutingState::default()
        }
    }

    #[test]
    fn without_ifa_proto_the_record_alone_tells_ours() {
        let st = old_kernel();
        let mut record = AddressRecord::default();
        assert!(
            record.owned(&st).is_empty(),
            "nothing is ours before we add it"
        );
        record.added(ip("198.18.0.200"));
        let owned: Vec<Ipv4Addr> = record.owned(&st).iter().map(|a| a.ip).collect();
        assert_eq!(owned, [ip("198.18.0.200")]);
        // recovered after a restart from the hosted set of our table
        let mut restarted = AddressRecord::default();
        restarted.recover(&[ip("198.18.0.200")].into());
        assert_eq!(restarted.owned(&st), record.owned(&st));
    }

    /// Issue 14.4, the old-kernel path: without `IFA_PROTO` (Linux < 5.18) the lifetime
    /// refresh extends exactly the egress IPs the record says are ours, also after a restart
    /// (record recovered from our table's `hosted` set), and never the node's address or a
    /// keepalived VIP beside them.
    #[test]
    fn without_ifa_proto_the_lifetimes_of_our_addresses_and_only_ours_are_refreshed() {
        use crate::dataplane::engine::lifetime_refreshes;
        use crate::dataplane::route_model::RtOp;
        let st = old_kernel();
        assert!(
            lifetime_refreshes(&st, &AddressRecord::default()).is_empty(),
            "an address the record does not know is never extended"
        );
        let mut restarted = AddressRecord::default();
        restarted.recover(&[ip("198.18.0.200")].into());
        assert_eq!(
            lifetime_refreshes(&st, &restarted),
            [RtOp::AddAddress {
                ip: ip("198.18.0.200"),
                link: 2,
                ifname: "eth0".into(),
            }]
        );
        // once the address is gone from the kernel there is nothing to extend (the apply
        // loop adds it again: the refresh never creates an address)
        let mut gone = st.clone();
        gone.addresses.retain(|a| a.ip != ip("198.18.0.200"));
        assert!(lifetime_refreshes(&gone, &restarted).is_empty());
    }

    #[test]
    fn the_protocol_tag_is_a_hint_on_new_kernels() {
        let mut st = old_kernel();
        st.addresses
            .push(addr("198.18.0.201", 32, Some(ADDRESS_PROTO)));
        st.addresses
            .push(addr("198.18.0.202", 32, Some(ADDRESS_PROTO + 1)));
        let owned: Vec<Ipv4Addr> = AddressRecord::default()
            .owned(&st)
            .iter()
            .map(|a| a.ip)
            .collect();
        assert_eq!(owned, [ip("198.18.0.201")]);
    }

    #[test]
    fn a_wanted_ip_someone_else_holds_is_foreign_and_ours_is_not() {
        let st = old_kernel();
        let mut record = AddressRecord::default();
        record.added(ip("198.18.0.200"));
        let wanted = BTreeMap::from([
            (ip("198.18.0.200"), "eth0".to_string()),
            (ip("198.18.0.240"), "eth0".to_string()),
            (ip("198.18.0.12"), "eth0".to_string()), // the node's own address
            (ip("198.18.0.241"), "eth0".to_string()), // free
        ]);
        let foreign = foreign_conflicts(&st, &record, &wanted);
        assert_eq!(
            foreign.keys().copied().collect::<Vec<_>>(),
            [ip("198.18.0.12"), ip("198.18.0.240")]
        );
        assert_eq!(foreign[&ip("198.18.0.240")].interface, "eth0");
        assert!(
            foreign[&ip("198.18.0.240")]
                .to_string()
                .contains("198.18.0.240/32 on eth0")
        );
    }

    #[test]
    fn the_record_forgets_what_the_node_no_longer_wants() {
        let mut record = AddressRecord::default();
        record.added(ip("198.18.0.200"));
        record.added(ip("198.18.0.201"));
        record.retain_wanted(&BTreeMap::from([(ip("198.18.0.201"), "eth0".to_string())]));
        assert_eq!(record.ips(), &BTreeSet::from([ip("198.18.0.201")]));
    }
}
