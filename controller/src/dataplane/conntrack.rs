//! Deleting stale conntrack entries through ctnetlink (NFNL_SUBSYS_CTNETLINK): dump the IPv4
//! table, delete each entry the selector picks by its exact original tuple and id.

use std::net::Ipv4Addr;

use super::conntrack_select::CtSelector;
use super::error::DataplaneError;
use super::nfnl_socket::{MsgBuilder, NfnlSocket, attrs};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;

fn msg_type(cmd: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | cmd
}

/// (src, dst) of a CTA_TUPLE_* attribute.
fn tuple_addrs(tuple: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let ip = attrs(tuple).find(|a| a.kind == CTA_TUPLE_IP)?;
    let (mut src, mut dst) = (None, None);
    for a in attrs(ip.value) {
        let v: Option<[u8; 4]> = a.value.try_into().ok();
        match a.kind {
            CTA_IP_V4_SRC => src = v.map(Ipv4Addr::from),
            CTA_IP_V4_DST => dst = v.map(Ipv4Addr::from),
            _ => {}
        }
    }
    Some((src?, dst?))
}

/// The attributes that identify one entry for deletion, encoded.
struct Victim {
    identity: Vec<Vec<u8>>,
    describe: String,
}

/// Deletes every IPv4 conntrack entry `sel` matches; returns how many were deleted.
pub fn delete_stale(sock: &mut NfnlSocket, sel: &CtSelector) -> Result<usize, DataplaneError> {
    if sel.is_empty() {
        return Ok(0);
    }
    let mut dump = MsgBuilder::nfnl(
        msg_type(IPCTNL_MSG_CT_GET),
        libc::NLM_F_DUMP as u16,
        libc::AF_INET as u8,
    )
    .finish();
    let mut victims = Vec::new();
    sock.request(&mut dump, |m| {
        let Some(body) = m.body.get(4..) else {
            return Ok(());
        };
        let (mut orig, mut reply) = (None, None);
        let mut identity = Vec::new();
        for a in attrs(body) {
            match a.kind {
                CTA_TUPLE_ORIG => {
                    orig = tuple_addrs(a.value);
                    identity.push(a.encoded.to_vec());
                }
                CTA_TUPLE_REPLY => reply = tuple_addrs(a.value),
                CTA_ID | CTA_ZONE => identity.push(a.encoded.to_vec()),
                _ => {}
            }
        }
        if let (Some((osrc, odst)), Some((_, rdst))) = (orig, reply)
            && sel.matches(osrc, odst, rdst)
        {
            victims.push(Victim {
                identity,
                describe: format!("{osrc} -> {odst} (replies to {rdst})"),
            });
        }
        Ok(())
    })
    .map_err(|e| DataplaneError::kernel("IPCTNL_MSG_CT_GET", "IPv4 conntrack table", e))?;

    let mut deleted = 0;
    for v in victims {
        let mut b = MsgBuilder::nfnl(
            msg_type(IPCTNL_MSG_CT_DELETE),
            libc::NLM_F_ACK as u16,
            libc::AF_INET as u8,
        );
        for a in &v.identity {
            b.raw(a);
        }
        let mut msg = b.finish();
        match sock.request(&mut msg, |_| Ok(())) {
            Ok(()) => deleted += 1,
            // gone meanwhile (timed out, or replaced by a newer entry with another id)
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                return Err(DataplaneError::kernel(
                    "IPCTNL_MSG_CT_DELETE",
                    format!("conntrack entry {}", v.describe),
                    e,
                ));
            }
        }
    }
    Ok(deleted)
}
