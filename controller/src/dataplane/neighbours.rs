//! The neighbour table through rtnetlink, for anti-spoofing (see [`super::origins`]): read
//! the IPv4 entries; keep the nodes whose pods this node SNATs resolved, as kernel-managed
//! entries (`NTF_EXT_MANAGED`: the kernel resolves them at once and keeps them resolved)
//! tagged [`NEIGHBOUR_PROTO`]; remove ours when no SNATed pod comes from that node any more.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteProtocol;

use super::config::NEIGHBOUR_PROTO;
use super::error::DataplaneError;
use super::origins::{NeighOp, Neighbour};
use super::rtnl::{Rtnl, absent_ok};

/// `NUD_VALID`: states whose link-layer address the kernel uses.
fn valid(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

/// One dumped entry, `None` for anything but an IPv4 unicast neighbour.
fn neighbour_entry(m: &NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    let mut ours = false;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(&l[..]).ok(),
            NeighbourAttribute::Protocol(p) => ours = u8::from(*p) == NEIGHBOUR_PROTO,
            _ => {}
        }
    }
    Some(Neighbour {
        ip: ip?,
        ifindex: m.header.ifindex,
        mac,
        valid: valid(m.header.state),
        ours,
    })
}

fn message(ip: Ipv4Addr, ifindex: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = rtnetlink::packet_route::AddressFamily::Inet;
    m.header.ifindex = ifindex;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    m
}

impl Rtnl {
    /// Every IPv4 neighbour entry of the namespace.
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>, DataplaneError> {
        let req = self
            .handle
            .neighbours()
            .get()
            .set_address_family(rtnetlink::packet_route::AddressFamily::Inet);
        let msgs: Vec<NeighbourMessage> = self
            .run(req.execute().try_collect())
            .map_err(|e| DataplaneError::kernel("RTM_GETNEIGH", "IPv4 neighbours", e))?;
        Ok(msgs.iter().filter_map(neighbour_entry).collect())
    }

    /// Applies one neighbour change (idempotent: replace on add, "not there" on delete).
    pub fn apply_neigh(&mut self, op: &NeighOp) -> Result<(), DataplaneError> {
        match op {
            NeighOp::Manage { ip, ifindex, mac } => {
                let mut req = self
                    .handle
                    .neighbours()
                    .add(*ifindex, IpAddr::V4(*ip))
                    .replace();
                let m = req.message_mut();
                // A known address is kept (as stale: the kernel confirms it on use); without
                // one the entry starts empty and the kernel resolves it now.
                m.header.state = match mac {
                    Some(_) => NeighbourState::Stale,
                    None => NeighbourState::None,
                };
                if let Some(mac) = mac {
                    m.attributes
                        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
                }
                m.attributes
                    .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
                m.attributes
                    .push(NeighbourAttribute::Protocol(RouteProtocol::from(
                        NEIGHBOUR_PROTO,
                    )));
                self.run(req.execute()).map_err(|e| {
                    DataplaneError::kernel(
                        "RTM_NEWNEIGH",
                        format!("managed neighbour {ip} on link {ifindex}"),
                        e,
                    )
                })
            }
            NeighOp::Forget { ip, ifindex } => self
                .run(
                    self.handle
                        .neighbours()
                        .del(message(*ip, *ifindex))
                        .execute(),
                )
                .or_else(absent_ok)
                .map_err(|e| {
                    DataplaneError::kernel(
                        "RTM_DELNEIGH",
                        format!("neighbour {ip} on link {ifindex}"),
                        e,
                    )
                }),
        }
    }
}
