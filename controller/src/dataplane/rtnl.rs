//! Synchronous rtnetlink: read links, addresses, our rules and routes; apply [`RtOp`]s.
//! Idempotent: `replace` on add, "not there" is success on delete.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressMessage, AddressProtocol, AddressScope, CacheInfo,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::config::{ADDRESS_PROTO, DataplaneConfig, ROUTE_PROTO};
use super::error::DataplaneError;
use super::route_model::{AddrEntry, Link, RouteEntry, RoutingState, RtOp, RuleEntry};

/// An rtnetlink socket in the calling thread's network namespace.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// `valid_lft`/`preferred_lft` of the addresses this socket adds (`None`: forever).
    pub address_lifetime: Option<u32>,
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            sock,
            seq: 1,
            buf: vec![0; 256 * 1024],
            address_lifetime: None,
        })
    }

    /// Sends `msg` and hands each reply to `each`, until DONE or the ACK.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        each(m);
                        if !dump {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Links, IPv4 addresses, and the rules at our priority and routes in our tables.
    pub fn read(&mut self, cfg: &DataplaneConfig) -> Result<RoutingState, DataplaneError> {
        let mut st = RoutingState::default();
        let mut links = Vec::new();
        self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            |m| {
                if let RouteNetlinkMessage::NewLink(l) = m {
                    let mut link = Link {
                        index: l.header.index,
                        name: String::new(),
                        mac: None,
                    };
                    for a in l.attributes {
                        match a {
                            LinkAttribute::IfName(n) => link.name = n,
                            LinkAttribute::Address(b) if b.len() == 6 => {
                                link.mac = b.try_into().ok()
                            }
                            _ => {}
                        }
                    }
                    links.push(link);
                }
            },
        )
        .map_err(|e| DataplaneError::kernel("RTM_GETLINK", "links", e))?;
        st.links = links;

        let mut addrs = Vec::new();
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        self.request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP, |m| {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if a.header.family != AddressFamily::Inet {
                    return;
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
                if let Some(ip) = local.or(address) {
                    addrs.push(AddrEntry {
                        ip,
                        prefix: a.header.prefix_len,
                        link: a.header.index,
                        proto,
                    });
                }
            }
        })
        .map_err(|e| DataplaneError::kernel("RTM_GETADDR", "IPv4 addresses", e))?;
        st.addresses = addrs;

        let mut rules = Vec::new();
        let mut req = RuleMessage::default();
        req.header.family = AddressFamily::Inet;
        self.request(RouteNetlinkMessage::GetRule(req), NLM_F_DUMP, |m| {
            if let RouteNetlinkMessage::NewRule(r) = m {
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
                if e.priority == cfg.rule_priority && r.header.action == RuleAction::ToTable {
                    rules.push(e);
                }
            }
        })
        .map_err(|e| DataplaneError::kernel("RTM_GETRULE", "IPv4 policy rules", e))?;
        st.rules = rules;

        let mut routes = Vec::new();
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP, |m| {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                let mut e = RouteEntry {
                    table: u32::from(r.header.table),
                    dst: Ipv4Addr::UNSPECIFIED,
                    dst_len: r.header.destination_prefix_length,
                    gateway: None,
                };
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Table(t) => e.table = *t,
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => e.dst = *ip,
                        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => e.gateway = Some(*ip),
                        _ => {}
                    }
                }
                if cfg.table_slot(e.table).is_some() {
                    routes.push(e);
                }
            }
        })
        .map_err(|e| DataplaneError::kernel("RTM_GETROUTE", "routes", e))?;
        st.routes = routes;
        Ok(st)
    }

    /// Applies one change.
    pub fn apply(&mut self, op: &RtOp) -> Result<(), DataplaneError> {
        let absent_ok = |e: io::Error| match e.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL | libc::ENODEV) => Ok(()),
            _ => Err(e),
        };
        match op {
            RtOp::AddAddress { ip, link, ifname } => {
                let msg = address_message(*ip, 32, *link, true, self.address_lifetime);
                self.request(
                    RouteNetlinkMessage::NewAddress(msg),
                    NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                    drop,
                )
                .map_err(|e| {
                    DataplaneError::kernel("RTM_NEWADDR", format!("{ip}/32 on {ifname}"), e)
                })
            }
            RtOp::DelAddress {
                ip,
                prefix,
                link,
                ifname,
            } => {
                let msg = address_message(*ip, *prefix, *link, false, None);
                self.request(RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK, drop)
                    .or_else(absent_ok)
                    .map_err(|e| {
                        DataplaneError::kernel(
                            "RTM_DELADDR",
                            format!("{ip}/{prefix} on {ifname}"),
                            e,
                        )
                    })
            }
            RtOp::ReplaceRoute(r) => self
                .request(
                    RouteNetlinkMessage::NewRoute(route_message(r, true)),
                    NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                    drop,
                )
                .map_err(|e| DataplaneError::kernel("RTM_NEWROUTE", describe_route(r), e)),
            RtOp::DelRoute(r) => self
                .request(
                    RouteNetlinkMessage::DelRoute(route_message(r, false)),
                    NLM_F_ACK,
                    drop,
                )
                .or_else(absent_ok)
                .map_err(|e| DataplaneError::kernel("RTM_DELROUTE", describe_route(r), e)),
            RtOp::AddRule(r) => self
                .request(
                    RouteNetlinkMessage::NewRule(rule_message(r, true)),
                    NLM_F_ACK | NLM_F_CREATE,
                    drop,
                )
                .or_else(|e| {
                    if e.raw_os_error() == Some(libc::EEXIST) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| DataplaneError::kernel("RTM_NEWRULE", describe_rule(r), e)),
            RtOp::DelRule(r) => self
                .request(
                    RouteNetlinkMessage::DelRule(rule_message(r, false)),
                    NLM_F_ACK,
                    drop,
                )
                .or_else(absent_ok)
                .map_err(|e| DataplaneError::kernel("RTM_DELRULE", describe_rule(r), e)),
        }
    }
}

fn describe_route(r: &RouteEntry) -> String {
    match r.gateway {
        Some(gw) => format!("route {}/{} via {gw} table {}", r.dst, r.dst_len, r.table),
        None => format!("route {}/{} table {}", r.dst, r.dst_len, r.table),
    }
}

fn describe_rule(r: &RuleEntry) -> String {
    format!(
        "rule pref {} fwmark {:#x}/{:#x} lookup {}",
        r.priority, r.mark, r.mask, r.table
    )
}

fn address_message(
    ip: Ipv4Addr,
    prefix: u8,
    link: u32,
    add: bool,
    lifetime: Option<u32>,
) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = prefix;
    m.header.index = link;
    m.header.scope = AddressScope::Universe;
    m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
    m.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
    if add {
        m.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                ADDRESS_PROTO,
            )));
        if let Some(secs) = lifetime {
            let mut info = CacheInfo::default();
            info.ifa_preferred = secs;
            info.ifa_valid = secs;
            m.attributes.push(AddressAttribute::CacheInfo(info));
        }
    }
    m
}

/// A route message; for a delete, protocol, scope and type match anything.
fn route_message(r: &RouteEntry, add: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = r.dst_len;
    m.header.table = 0; // RT_TABLE_UNSPEC: the table is in the attribute (ours are > 255)
    if add {
        m.header.protocol = RouteProtocol::from(ROUTE_PROTO);
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
    } else {
        m.header.scope = RouteScope::NoWhere;
    }
    m.attributes.push(RouteAttribute::Table(r.table));
    if r.dst_len > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(r.dst)));
    }
    if let Some(gw) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    }
    m
}

/// A rule message; the protocol is set on adds only, so a delete matches any.
fn rule_message(r: &RuleEntry, add: bool) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.action = RuleAction::ToTable;
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes.push(RuleAttribute::FwMark(r.mark));
    m.attributes.push(RuleAttribute::FwMask(r.mask));
    m.attributes.push(RuleAttribute::Table(r.table));
    if add {
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(ROUTE_PROTO)));
    }
    m
}
