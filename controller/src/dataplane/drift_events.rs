//! Which kernel notifications are drift of ours (pure): nftables events about our table, and
//! rtnetlink events about links, IPv4 addresses, our routing tables and our policy rules.
//! Notifications caused by our own sockets ([`OwnPorts`]) are not drift.

use std::collections::HashMap;
use std::fmt;

use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::link::{LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::rule::RuleAttribute;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use rtnetlink::packet_route::neighbour::NeighbourAttribute;

use super::config::{DataplaneConfig, NEIGHBOUR_PROTO, TABLE};
use super::own_ports::OwnPorts;

/// What a drift notification was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftCause {
    /// Our nftables table, or something in it, changed.
    Nft,
    /// A link went up or down, appeared or vanished (a flap flushes the routes through it).
    Link,
    /// An IPv4 address was added or removed.
    Address,
    /// A route in one of our steering tables changed.
    Route,
    /// A policy rule at our priority or into one of our tables changed.
    Rule,
    /// One of our managed neighbour entries (a node whose pods we SNAT) changed: resolved,
    /// got a new MAC address, or was removed.
    Neighbour,
    /// The event socket overflowed (`ENOBUFS`): events were lost, read everything again.
    Overrun,
    /// The periodic full read-and-diff.
    Periodic,
}

impl DriftCause {
    /// Whether our nftables table must be read again (not just the routing state, which
    /// every apply reads anyway).
    pub fn needs_table_read(self) -> bool {
        matches!(
            self,
            DriftCause::Nft | DriftCause::Overrun | DriftCause::Periodic
        )
    }
}

impl fmt::Display for DriftCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriftCause::Nft => "nftables",
            DriftCause::Link => "link",
            DriftCause::Address => "address",
            DriftCause::Route => "route",
            DriftCause::Rule => "rule",
            DriftCause::Neighbour => "neighbour",
            DriftCause::Overrun => "event overrun",
            DriftCause::Periodic => "periodic check",
        })
    }
}

/// `NFNL_SUBSYS_NFTABLES`: the high byte of an nftables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_*` notifications about tables, chains, rules, sets and set elements.
const NFT_OBJECT_EVENTS: [u16; 10] = [
    0,  // NEWTABLE
    2,  // DELTABLE
    3,  // NEWCHAIN
    5,  // DELCHAIN
    6,  // NEWRULE
    8,  // DELRULE
    9,  // NEWSET
    11, // DELSET
    12, // NEWSETELEM
    14, // DELSETELEM
];
/// `NFPROTO_IPV4`: our table's family.
const NFPROTO_IPV4: u8 = 2;
/// `NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE` and
/// `NFTA_SET_ELEM_LIST_TABLE` are all attribute 1.
const NFTA_TABLE_ATTR: u16 = 1;
/// Attribute type flags (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One nftables notification: its `NFT_MSG_*` type, family, table and sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftEvent {
    pub msg: u16,
    pub family: u8,
    pub table: Option<String>,
    pub port: u32,
}

impl NftEvent {
    /// Whether this is a change to our table made by someone else.
    pub fn is_drift(&self, own: &OwnPorts) -> bool {
        NFT_OBJECT_EVENTS.contains(&self.msg)
            && self.family == NFPROTO_IPV4
            && self.table.as_deref() == Some(TABLE)
            && !own.contains(self.port)
    }
}

/// The table attribute of an nftables message payload (after the nfgenmsg header).
fn table_attr(mut attrs: &[u8]) -> Option<String> {
    while attrs.len() >= NLA_HDRLEN {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > attrs.len() {
            return None;
        }
        if kind == NFTA_TABLE_ATTR {
            let value = &attrs[NLA_HDRLEN..len];
            let value = value.split(|b| *b == 0).next().unwrap_or(value);
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    None
}

/// The nftables notifications in one datagram read from an `NFNLGRP_NFTABLES` socket
/// (other messages and anything malformed are skipped).
pub fn parse_nft_events(mut buf: &[u8]) -> Vec<NftEvent> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let port = u32::from_ne_bytes(buf[12..16].try_into().expect("4 bytes"));
        let payload = &buf[NLMSG_HDRLEN..len];
        if kind >> 8 == NFNL_SUBSYS_NFTABLES && payload.len() >= NFGENMSG_LEN {
            out.push(NftEvent {
                msg: kind & 0xff,
                family: payload[0],
                table: table_attr(&payload[NFGENMSG_LEN..]),
                port,
            });
        }
        buf = buf.get(align4(len)..).unwrap_or_default();
    }
    out
}

/// The flags of a link that decide whether routes can use it.
const LINK_STATE: LinkFlags = LinkFlags::Up
    .union(LinkFlags::LowerUp)
    .union(LinkFlags::Running);

/// The up/down state of every link seen, so a link notification counts only when that state
/// changed (links also report statistics and attribute changes).
#[derive(Clone, Debug, Default)]
pub struct LinkStates(HashMap<u32, LinkFlags>);

impl LinkStates {
    /// Takes in one link notification; whether the link's state changed (a link seen for
    /// the first time counts as changed).
    fn update(&mut self, link: &LinkMessage, deleted: bool) -> bool {
        let index = link.header.index;
        if deleted {
            return self.0.remove(&index).is_some();
        }
        let state = link.header.flags & LINK_STATE;
        self.0.insert(index, state) != Some(state)
    }
}

/// Whether an rtnetlink notification is drift that may concern us, and of which kind.
pub fn classify_route_event(
    msg: &NetlinkMessage<RouteNetlinkMessage>,
    cfg: &DataplaneConfig,
    own: &OwnPorts,
    links: &mut LinkStates,
) -> Option<DriftCause> {
    let m = match &msg.payload {
        NetlinkPayload::Overrun(_) => return Some(DriftCause::Overrun),
        NetlinkPayload::InnerMessage(m) => m,
        _ => return None,
    };
    if own.contains(msg.header.port_number) {
        return None;
    }
    let ours_table = |t: u32| cfg.table_slot(t).is_some();
    match m {
        RouteNetlinkMessage::NewLink(l) => links.update(l, false).then_some(DriftCause::Link),
        RouteNetlinkMessage::DelLink(l) => links.update(l, true).then_some(DriftCause::Link),
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            (a.header.family == AddressFamily::Inet).then_some(DriftCause::Address)
        }
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            (r.header.address_family == AddressFamily::Inet && ours_table(table))
                .then_some(DriftCause::Route)
        }
        RouteNetlinkMessage::NewRule(r) | RouteNetlinkMessage::DelRule(r) => {
            let ours = r.attributes.iter().any(|a| match a {
                RuleAttribute::Priority(p) => *p == cfg.rule_priority,
                RuleAttribute::Table(t) => ours_table(*t),
                _ => false,
            }) || ours_table(u32::from(r.header.table));
            (r.header.family == AddressFamily::Inet && ours).then_some(DriftCause::Rule)
        }
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            let ours = n.attributes.iter().any(
                |a| matches!(a, NeighbourAttribute::Protocol(p) if u8::from(*p) == NEIGHBOUR_PROTO),
            );
            (n.header.family == AddressFamily::Inet && ours).then_some(DriftCause::Neighbour)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::NetlinkHeader;
    use rtnetlink::packet_route::address::AddressMessage;
    use rtnetlink::packet_route::route::RouteMessage;
    use rtnetlink::packet_route::rule::RuleMessage;

    /// One nftables notification as the kernel sends it.
    fn nft_msg(msg: u16, family: u8, table: &str, port: u32) -> Vec<u8> {
        let mut attr = Vec::new();
        let value: Vec<u8> = table.bytes().chain([0]).collect();
        attr.extend_from_slice(&((NLA_HDRLEN + value.len()) as u16).to_ne_bytes());
        attr.extend_from_slice(&NFTA_TABLE_ATTR.to_ne_bytes());
        attr.extend_from_slice(&value);
        attr.resize(align4(attr.len()), 0);
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + attr.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&port.to_ne_bytes());
        b.extend_from_slice(&[family, 0, 0, 0]);
        b.extend_from_slice(&attr);
        b
    }

    #[test]
    fn our_table_changed_by_others_is_drift_and_by_us_is_not() {
        let own = OwnPorts::default();
        own.note(1111);
        let mut dgram = nft_msg(2, NFPROTO_IPV4, TABLE, 2222); // nft delete table
        dgram.extend(nft_msg(8, NFPROTO_IPV4, TABLE, 1111)); // our own rule delete
        dgram.extend(nft_msg(14, NFPROTO_IPV4, "other", 2222)); // someone else's table
        dgram.extend(nft_msg(14, 10, TABLE, 2222)); // ip6 egressgw: not ours
        dgram.extend(nft_msg(16, NFPROTO_IPV4, TABLE, 2222)); // NEWGEN: not an object
        let events = parse_nft_events(&dgram);
        assert_eq!(events.len(), 5);
        assert_eq!(events[0].table.as_deref(), Some(TABLE));
        let drift: Vec<bool> = events.iter().map(|e| e.is_drift(&own)).collect();
        assert_eq!(drift, [true, false, false, false, false]);
        // truncated input yields what was whole
        assert_eq!(parse_nft_events(&dgram[..dgram.len() - 3]).len(), 4);
        assert!(parse_nft_events(&[1, 2, 3]).is_empty());
    }

    fn rt(payload: RouteNetlinkMessage, port: u32) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(payload),
        );
        m.header.port_number = port;
        m
    }

    fn link(index: u32, up: bool) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        if up {
            l.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running;
        }
        l
    }

    #[test]
    fn links_count_only_when_they_go_up_or_down() {
        let (cfg, own, mut links) = (
            DataplaneConfig::default(),
            OwnPorts::default(),
            LinkStates::default(),
        );
        let mut ev = |m| classify_route_event(&rt(m, 0), &cfg, &own, &mut links);
        assert_eq!(
            ev(RouteNetlinkMessage::NewLink(link(2, true))),
            Some(DriftCause::Link)
        );
        assert_eq!(ev(RouteNetlinkMessage::NewLink(link(2, true))), None);
        assert_eq!(
            ev(RouteNetlinkMessage::NewLink(link(2, false))),
            Some(DriftCause::Link)
        );
        assert_eq!(
            ev(RouteNetlinkMessage::NewLink(link(2, true))),
            Some(DriftCause::Link)
        );
        assert_eq!(
            ev(RouteNetlinkMessage::DelLink(link(2, true))),
            Some(DriftCause::Link)
        );
    }

    #[test]
    fn routes_and_rules_count_in_our_tables_and_priority_only() {
        let (cfg, own) = (DataplaneConfig::default(), OwnPorts::default());
        let mut links = LinkStates::default();
        let mut ours = RouteMessage::default();
        ours.header.address_family = AddressFamily::Inet;
        ours.attributes
            .push(RouteAttribute::Table(cfg.slot_table(1)));
        let mut main = ours.clone();
        main.attributes = vec![RouteAttribute::Table(254)];
        let mut rule = RuleMessage::default();
        rule.header.family = AddressFamily::Inet;
        rule.attributes
            .push(RuleAttribute::Priority(cfg.rule_priority));
        let mut other_rule = rule.clone();
        other_rule.attributes = vec![RuleAttribute::Priority(100), RuleAttribute::Table(100)];
        let mut addr = AddressMessage::default();
        addr.header.family = AddressFamily::Inet;
        let mut c = |m, port| classify_route_event(&rt(m, port), &cfg, &own, &mut links);
        assert_eq!(
            c(RouteNetlinkMessage::DelRoute(ours.clone()), 0),
            Some(DriftCause::Route)
        );
        assert_eq!(c(RouteNetlinkMessage::DelRoute(main), 0), None);
        assert_eq!(
            c(RouteNetlinkMessage::DelRule(rule.clone()), 9),
            Some(DriftCause::Rule)
        );
        assert_eq!(c(RouteNetlinkMessage::NewRule(other_rule), 9), None);
        assert_eq!(
            c(RouteNetlinkMessage::DelAddress(addr.clone()), 9),
            Some(DriftCause::Address)
        );
        // our own changes are not drift
        own.note(9);
        let mut c = |m, port| classify_route_event(&rt(m, port), &cfg, &own, &mut links);
        assert_eq!(c(RouteNetlinkMessage::DelRule(rule), 9), None);
        assert_eq!(c(RouteNetlinkMessage::NewAddress(addr), 9), None);
        // a lost event means a full read
        let overrun: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::Overrun(Vec::new()),
        );
        assert_eq!(
            classify_route_event(&overrun, &cfg, &own, &mut links),
            Some(DriftCause::Overrun)
        );
    }

    #[test]
    fn only_our_managed_neighbour_entries_count() {
        use rtnetlink::packet_route::neighbour::NeighbourMessage;
        use rtnetlink::packet_route::route::RouteProtocol;
        let (cfg, own) = (DataplaneConfig::default(), OwnPorts::default());
        let mut links = LinkStates::default();
        let mut ours = NeighbourMessage::default();
        ours.header.family = AddressFamily::Inet;
        ours.attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::from(
                NEIGHBOUR_PROTO,
            )));
        let mut learned = ours.clone();
        learned.attributes.clear();
        let mut c = |m, port| classify_route_event(&rt(m, port), &cfg, &own, &mut links);
        assert_eq!(
            c(RouteNetlinkMessage::NewNeighbour(ours.clone()), 0),
            Some(DriftCause::Neighbour),
            "the kernel resolved (or re-resolved) a node we SNAT pods of"
        );
        assert_eq!(
            c(RouteNetlinkMessage::DelNeighbour(ours), 0),
            Some(DriftCause::Neighbour)
        );
        assert_eq!(
            c(RouteNetlinkMessage::NewNeighbour(learned), 0),
            None,
            "the kernel's own entries change all the time"
        );
    }
}
