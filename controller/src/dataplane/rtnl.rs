//! Route netlink through the [`rtnetlink`] crate: read links, addresses, our rules and routes;
//! apply [`RtOp`]s. Idempotent: `replace` on add (`EEXIST` is success for a rule), "not
//! there" is success on delete.
//!
//! The crate builds, sends and parses every `RTM_*` message: its handles for links,
//! addresses, routes and rules; what its builders have no method for (`IFA_PROTO`, address
//! lifetimes, the fwmark mask, the rule protocol) is set on the request's message through
//! `message_mut()`. Route types other than unicast (blackhole, unreachable) go the same way,
//! through `RouteMessageBuilder::kind`.
//!
//! # Namespaces and threads
//!
//! A netlink socket belongs to the network namespace of the thread that creates it, and
//! rtnetlink is async (tokio). [`Rtnl::open`] therefore does everything on the calling
//! thread:
//!
//! 1. it builds a *current-thread* tokio runtime (IO driver only, no worker threads);
//! 2. inside that runtime's context it calls [`rtnetlink::new_connection`], which opens the
//!    `NETLINK_ROUTE` socket — in the caller's namespace — and registers it with the
//!    runtime's reactor;
//! 3. it spawns the connection task on that runtime.
//!
//! Each request then runs with `block_on` on the same thread; the connection task makes
//! progress only while a request is blocked on, so no other thread ever touches the socket
//! and nothing runs between requests. The dataplane thread (see [`super::kernel`]) calls
//! `setns()` first and opens its `Rtnl`s afterwards, so they talk to the node's namespace
//! while the rest of the process stays where it is. `Rtnl` must not be opened from inside a
//! tokio runtime (`block_on` cannot nest): [`Rtnl::open`] refuses with an error. Dropping an
//! `Rtnl` drops the runtime, the connection task and the socket.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressMessage, AddressProtocol, AddressScope, CacheInfo,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{AddressMessageBuilder, Handle, IpVersion, RouteMessageBuilder};
use tokio::runtime::{Builder, Runtime};

use super::config::{ADDRESS_PROTO, DataplaneConfig, ROUTE_PROTO};
use super::error::DataplaneError;
use super::route_model::{AddrEntry, Link, RouteEntry, RouteKind, RoutingState, RtOp, RuleEntry};

/// An rtnetlink connection in the calling thread's network namespace (see the module doc).
pub struct Rtnl {
    pub(super) handle: Handle,
    /// Runs the connection task, on this thread, while a request is blocked on.
    rt: Runtime,
    /// `valid_lft`/`preferred_lft` of the addresses this connection adds (`None`: forever).
    pub address_lifetime: Option<u32>,
    /// The socket's netlink port id (the notifications our requests cause carry it).
    portid: u32,
}

/// The errno of a netlink error reply, or the crate's error as text.
fn io_error(e: rtnetlink::Error) -> io::Error {
    match &e {
        rtnetlink::Error::NetlinkError(m) => match m.code {
            Some(code) => io::Error::from_raw_os_error(-code.get()),
            None => io::Error::other(e.to_string()),
        },
        _ => io::Error::other(e.to_string()),
    }
}

/// "Not there" on a delete.
pub(super) fn absent_ok(e: io::Error) -> io::Result<()> {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL | libc::ENODEV) => Ok(()),
        _ => Err(e),
    }
}

impl Rtnl {
    /// Opens the connection in the calling thread's network namespace. Must be called
    /// outside any tokio runtime.
    pub fn open() -> io::Result<Self> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(io::Error::other(
                "rtnetlink connection opened inside a tokio runtime: it must run on a plain thread",
            ));
        }
        let rt = Builder::new_current_thread().enable_io().build()?;
        let (mut conn, handle, _unsolicited) = {
            let _in_rt = rt.enter();
            rtnetlink::new_connection()?
        };
        let portid = conn.socket_mut().socket_mut().bind_auto()?.port_number();
        rt.spawn(conn);
        Ok(Self {
            handle,
            rt,
            address_lifetime: None,
            portid,
        })
    }

    /// The netlink port id of this connection's socket.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Runs one request to completion on this thread.
    pub(super) fn run<T>(
        &self,
        f: impl Future<Output = Result<T, rtnetlink::Error>>,
    ) -> io::Result<T> {
        self.rt.block_on(f).map_err(io_error)
    }

    /// Links, IPv4 addresses, and the rules at our priority and routes in our tables.
    pub fn read(&mut self, cfg: &DataplaneConfig) -> Result<RoutingState, DataplaneError> {
        let links: Vec<LinkMessage> = self
            .run(self.handle.link().get().execute().try_collect())
            .map_err(|e| DataplaneError::kernel("RTM_GETLINK", "links", e))?;

        let mut req = self.handle.address().get();
        req.message_mut().header.family = AddressFamily::Inet;
        let addrs: Vec<AddressMessage> = self
            .run(req.execute().try_collect())
            .map_err(|e| DataplaneError::kernel("RTM_GETADDR", "IPv4 addresses", e))?;

        let rules: Vec<RuleMessage> = self
            .run(
                self.handle
                    .rule()
                    .get(IpVersion::V4)
                    .execute()
                    .try_collect(),
            )
            .map_err(|e| DataplaneError::kernel("RTM_GETRULE", "IPv4 policy rules", e))?;

        // Without strict checking the kernel dumps every table whatever the header says.
        let req = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build());
        let routes: Vec<RouteMessage> = self
            .run(req.execute().try_collect())
            .map_err(|e| DataplaneError::kernel("RTM_GETROUTE", "routes", e))?;

        Ok(RoutingState {
            links: links.into_iter().map(link_entry).collect(),
            addresses: addrs.iter().filter_map(addr_entry).collect(),
            rules: rules
                .iter()
                .filter_map(rule_entry)
                .filter(|r| r.priority == cfg.rule_priority)
                .collect(),
            routes: routes
                .iter()
                .filter_map(route_entry)
                .filter(|r| cfg.table_slot(r.table).is_some())
                .collect(),
        })
    }

    /// Applies one change.
    pub fn apply(&mut self, op: &RtOp) -> Result<(), DataplaneError> {
        match op {
            RtOp::AddAddress { ip, link, ifname } => {
                let mut req = self
                    .handle
                    .address()
                    .add(*link, IpAddr::V4(*ip), 32)
                    .replace();
                let m = req.message_mut();
                m.header.scope = AddressScope::Universe;
                m.attributes
                    .push(AddressAttribute::Protocol(AddressProtocol::from(
                        ADDRESS_PROTO,
                    )));
                if let Some(secs) = self.address_lifetime {
                    let mut info = CacheInfo::default();
                    info.ifa_preferred = secs;
                    info.ifa_valid = secs;
                    m.attributes.push(AddressAttribute::CacheInfo(info));
                }
                self.run(req.execute()).map_err(|e| {
                    DataplaneError::kernel("RTM_NEWADDR", format!("{ip}/32 on {ifname}"), e)
                })
            }
            RtOp::DelAddress {
                ip,
                prefix,
                link,
                ifname,
            } => {
                let msg = AddressMessageBuilder::<Ipv4Addr>::new()
                    .index(*link)
                    .address(*ip, *prefix)
                    .build();
                self.run(self.handle.address().del(msg).execute())
                    .or_else(absent_ok)
                    .map_err(|e| {
                        DataplaneError::kernel(
                            "RTM_DELADDR",
                            format!("{ip}/{prefix} on {ifname}"),
                            e,
                        )
                    })
            }
            RtOp::ReplaceRoute(r) => {
                let kind = match r.kind {
                    RouteKind::Blackhole => RouteType::BlackHole,
                    RouteKind::Unicast | RouteKind::Other => RouteType::Unicast,
                };
                let msg = route_message(r)
                    .protocol(RouteProtocol::from(ROUTE_PROTO))
                    .scope(RouteScope::Universe)
                    .kind(kind)
                    .build();
                self.run(self.handle.route().add(msg).replace().execute())
                    .map_err(|e| DataplaneError::kernel("RTM_NEWROUTE", describe_route(r), e))
            }
            RtOp::DelRoute(r) => {
                // protocol, scope and type left open: the delete matches any
                let msg = route_message(r)
                    .protocol(RouteProtocol::Unspec)
                    .scope(RouteScope::NoWhere)
                    .kind(RouteType::Unspec)
                    .build();
                self.run(self.handle.route().del(msg).execute())
                    .or_else(absent_ok)
                    .map_err(|e| DataplaneError::kernel("RTM_DELROUTE", describe_route(r), e))
            }
            RtOp::AddRule(r) => {
                let mut req = self
                    .handle
                    .rule()
                    .add()
                    .v4()
                    .action(RuleAction::ToTable)
                    .priority(r.priority)
                    .fw_mark(r.mark)
                    .table_id(r.table);
                let m = req.message_mut();
                m.attributes.push(RuleAttribute::FwMask(r.mask));
                m.attributes
                    .push(RuleAttribute::Protocol(RouteProtocol::from(ROUTE_PROTO)));
                // NLM_F_EXCL: an identical rule is there already, which is what we want
                self.run(req.execute())
                    .or_else(|e| match e.raw_os_error() {
                        Some(libc::EEXIST) => Ok(()),
                        _ => Err(e),
                    })
                    .map_err(|e| DataplaneError::kernel("RTM_NEWRULE", describe_rule(r), e))
            }
            RtOp::DelRule(r) => self
                .run(self.handle.rule().del(rule_del_message(r)).execute())
                .or_else(absent_ok)
                .map_err(|e| DataplaneError::kernel("RTM_DELRULE", describe_rule(r), e)),
        }
    }
}

fn link_entry(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(b) if b.len() == 6 => link.mac = b.try_into().ok(),
            _ => {}
        }
    }
    link
}

fn addr_entry(a: &AddressMessage) -> Option<AddrEntry> {
    if a.header.family != AddressFamily::Inet {
        return None;
    }
    let (mut local, mut address, mut proto) = (None, None, None);
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)),
            _ => {}
        }
    }
    Some(AddrEntry {
        ip: local.or(address)?,
        prefix: a.header.prefix_len,
        link: a.header.index,
        proto,
    })
}

/// A `lookup` rule (others are not ours to see).
fn rule_entry(r: &RuleMessage) -> Option<RuleEntry> {
    if r.header.action != RuleAction::ToTable {
        return None;
    }
    let mut e = RuleEntry {
        priority: 0,
        mark: 0,
        mask: 0,
        table: u32::from(r.header.table),
    };
    for a in &r.attributes {
        match a {
            RuleAttribute::Priority(p) => e.priority = *p,
            RuleAttribute::FwMark(v) => e.mark = *v,
            RuleAttribute::FwMask(v) => e.mask = *v,
            RuleAttribute::Table(t) => e.table = *t,
            _ => {}
        }
    }
    Some(e)
}

fn route_entry(r: &RouteMessage) -> Option<RouteEntry> {
    if r.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut e = RouteEntry {
        table: u32::from(r.header.table),
        dst: Ipv4Addr::UNSPECIFIED,
        dst_len: r.header.destination_prefix_length,
        gateway: None,
        metric: 0,
        kind: match r.header.kind {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            _ => RouteKind::Other,
        },
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => e.table = *t,
            RouteAttribute::Priority(p) => e.metric = *p,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => e.dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => e.gateway = Some(*ip),
            _ => {}
        }
    }
    Some(e)
}

fn describe_route(r: &RouteEntry) -> String {
    let what = match (r.kind, r.gateway) {
        (RouteKind::Blackhole, _) => "blackhole route".to_string(),
        (_, Some(gw)) => format!("route via {gw}"),
        (_, None) => "route".to_string(),
    };
    format!(
        "{what} {}/{} table {} metric {}",
        r.dst, r.dst_len, r.table, r.metric
    )
}

fn describe_rule(r: &RuleEntry) -> String {
    format!(
        "rule pref {} fwmark {:#x}/{:#x} lookup {}",
        r.priority, r.mark, r.mask, r.table
    )
}

/// The route's table, destination (none for a default route), metric and gateway; the caller
/// sets protocol, scope and type.
fn route_message(r: &RouteEntry) -> RouteMessageBuilder<Ipv4Addr> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new().table_id(r.table);
    if r.metric > 0 {
        b = b.priority(r.metric);
    }
    if r.dst_len > 0 {
        b = b.destination_prefix(r.dst, r.dst_len);
    }
    if let Some(gw) = r.gateway {
        b = b.gateway(gw);
    }
    b
}

/// The rule to delete: no protocol, so a delete matches any. (The crate has a builder for
/// rule adds only; [`rtnetlink::RuleHandle::del`] takes the message.)
fn rule_del_message(r: &RuleEntry) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.action = RuleAction::ToTable;
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes.push(RuleAttribute::FwMark(r.mark));
    m.attributes.push(RuleAttribute::FwMask(r.mask));
    m.attributes.push(RuleAttribute::Table(r.table));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn default_route_has_no_destination_and_a_big_table_goes_in_the_attribute() {
        let r = RouteEntry::default_via(4100, ip("198.18.0.12"));
        let m = route_message(&r).build();
        assert_eq!(m.header.destination_prefix_length, 0);
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        assert!(m.attributes.contains(&RouteAttribute::Table(4100)));
        assert!(
            m.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet(ip(
                    "198.18.0.12"
                ))))
        );
        assert_eq!(route_entry(&m), Some(r));
    }

    #[test]
    fn the_fail_closed_route_is_a_blackhole_with_the_highest_metric() {
        let r = RouteEntry::fail_closed(4100);
        let m = route_message(&r).kind(RouteType::BlackHole).build();
        assert_eq!(m.header.kind, RouteType::BlackHole);
        assert!(m.attributes.contains(&RouteAttribute::Priority(
            crate::dataplane::config::FAIL_CLOSED_METRIC
        )));
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        );
        assert_eq!(route_entry(&m), Some(r));
    }

    #[test]
    fn rule_messages_read_back_as_the_entry() {
        let r = RuleEntry {
            priority: 1000,
            mark: 0x100,
            mask: 0xff00,
            table: 4101,
        };
        assert_eq!(rule_entry(&rule_del_message(&r)), Some(r));
        let mut other = rule_del_message(&r);
        other.header.action = RuleAction::Unreachable;
        assert_eq!(rule_entry(&other), None);
    }

    #[test]
    fn open_refuses_inside_a_runtime() {
        let rt = Builder::new_current_thread().build().unwrap();
        let _in_rt = rt.enter();
        assert!(Rtnl::open().is_err());
    }
}
