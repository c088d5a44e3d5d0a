//! Reading our table back from the kernel (nftnl 0.9 has no listing; libnftnl's parsers do
//! the decoding).

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::io;
use std::net::Ipv4Addr;

use nftnl::nftnl_sys::{self as sys, libc};

use super::config::TABLE;
use super::error::DataplaneError;
use super::names::SetName;
use super::nfnl_socket::{NfnlSocket, RawMsg};
use super::nft_fingerprint::{expected, expr_text};
use super::nft_model::{
    ChainHook, ChainKind, ChainSpec, ForeignRule, IpRange, NftSet, NftState, RuleHandle, RuleSpec,
    SetContent,
};
use super::origins::{ORIGIN_KEY_LEN, Origin};

const REQUEST_BUF: usize = 4096;

/// Builds a GET request for one libnftnl object kind.
fn get_request(kind: i32, dump: bool, payload: impl FnOnce(*mut libc::nlmsghdr)) -> Vec<u8> {
    let mut buf = vec![0u64; REQUEST_BUF / 8];
    let flags = if dump { libc::NLM_F_DUMP as u16 } else { 0 };
    let len = unsafe {
        let hdr = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr().cast(),
            kind as u16,
            libc::NFPROTO_IPV4 as u16,
            flags,
            0,
        );
        payload(hdr);
        (*hdr).nlmsg_len as usize
    };
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, len) };
    bytes.to_vec()
}

fn table_cstr() -> CString {
    CString::new(TABLE).expect("no NUL")
}

fn str_of(p: *const libc::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// The string of a comment TLV of `kind` in libnftnl userdata.
fn udata_comment(data: &[u8], kind: u8) -> Option<String> {
    let mut rest = data;
    while rest.len() >= 2 {
        let (t, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if t == kind {
            let v = value.strip_suffix(&[0]).unwrap_or(value);
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

struct Owned<T> {
    ptr: *mut T,
    free: unsafe extern "C" fn(*const T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        unsafe { (self.free)(self.ptr) }
    }
}

/// Pairs interval elements (key, is_end) into ranges.
pub fn ranges_from_elements(mut elems: Vec<(u32, bool)>) -> BTreeSet<IpRange> {
    // ends before starts at the same key
    elems.sort_by_key(|(k, end)| (*k, !*end));
    let mut out = BTreeSet::new();
    let mut open: Option<u32> = None;
    for (key, is_end) in elems {
        match (is_end, open) {
            (false, Some(s)) => {
                out.insert(IpRange {
                    start: s,
                    end: u64::from(key),
                });
                open = Some(key);
            }
            (false, None) => open = Some(key),
            (true, Some(s)) => {
                out.insert(IpRange {
                    start: s,
                    end: u64::from(key),
                });
                open = None;
            }
            (true, None) => {}
        }
    }
    if let Some(s) = open {
        out.insert(IpRange {
            start: s,
            end: 1 << 32,
        });
    }
    out
}

/// Our table's flags, or `None` when it does not exist.
fn table_flags(sock: &mut NfnlSocket) -> Result<Option<u32>, DataplaneError> {
    let name = table_cstr();
    let mut req = get_request(libc::NFT_MSG_GETTABLE, false, |hdr| unsafe {
        let t = sys::nftnl_table_alloc();
        sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
        sys::nftnl_table_nlmsg_build_payload(hdr, t);
        sys::nftnl_table_free(t);
    });
    let mut flags = 0;
    let parsed = sock.request(&mut req, |m| {
        unsafe {
            let t = Owned {
                ptr: sys::nftnl_table_alloc(),
                free: sys::nftnl_table_free,
            };
            if sys::nftnl_table_nlmsg_parse(m.header_ptr(), t.ptr) < 0 {
                return Err(io::Error::last_os_error());
            }
            if sys::nftnl_table_is_set(t.ptr, sys::NFTNL_TABLE_FLAGS as u16) {
                flags = sys::nftnl_table_get_u32(t.ptr, sys::NFTNL_TABLE_FLAGS as u16);
            }
        }
        Ok(())
    });
    match parsed {
        Ok(()) => Ok(Some(flags)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(DataplaneError::kernel(
            "NFT_MSG_GETTABLE",
            format!("table ip {TABLE}"),
            e,
        )),
    }
}

fn read_chains(sock: &mut NfnlSocket, st: &mut NftState) -> Result<(), DataplaneError> {
    let mut req = get_request(libc::NFT_MSG_GETCHAIN, true, |_| {});
    let mut out = Vec::new();
    sock.request(&mut req, |m: &RawMsg<'_>| {
        unsafe {
            let c = Owned {
                ptr: sys::nftnl_chain_alloc(),
                free: sys::nftnl_chain_free,
            };
            if sys::nftnl_chain_nlmsg_parse(m.header_ptr(), c.ptr) < 0 {
                return Err(io::Error::last_os_error());
            }
            if str_of(sys::nftnl_chain_get_str(
                c.ptr,
                sys::NFTNL_CHAIN_TABLE as u16,
            )) != TABLE
            {
                return Ok(());
            }
            let name = str_of(sys::nftnl_chain_get_str(
                c.ptr,
                sys::NFTNL_CHAIN_NAME as u16,
            ));
            let has_hook = sys::nftnl_chain_is_set(c.ptr, sys::NFTNL_CHAIN_HOOKNUM as u16);
            let hooknum = if has_hook {
                sys::nftnl_chain_get_u32(c.ptr, sys::NFTNL_CHAIN_HOOKNUM as u16)
            } else {
                u32::MAX
            };
            let prio = if sys::nftnl_chain_is_set(c.ptr, sys::NFTNL_CHAIN_PRIO as u16) {
                sys::nftnl_chain_get_s32(c.ptr, sys::NFTNL_CHAIN_PRIO as u16)
            } else {
                i32::MIN
            };
            let kind = str_of(sys::nftnl_chain_get_str(
                c.ptr,
                sys::NFTNL_CHAIN_TYPE as u16,
            ));
            let hook = match hooknum as i32 {
                libc::NF_INET_PRE_ROUTING => Some(ChainHook::Prerouting),
                libc::NF_INET_LOCAL_IN => Some(ChainHook::Input),
                libc::NF_INET_FORWARD => Some(ChainHook::Forward),
                libc::NF_INET_POST_ROUTING => Some(ChainHook::Postrouting),
                _ => None,
            };
            let kind = match kind.as_str() {
                "filter" => Some(ChainKind::Filter),
                "nat" => Some(ChainKind::Nat),
                _ => None,
            };
            // A chain we cannot describe gets a spec no desired chain has: it is replaced.
            let spec = match (has_hook, hook, kind) {
                (true, Some(hook), Some(kind)) => ChainSpec {
                    kind,
                    hook,
                    priority: prio,
                },
                _ => ChainSpec {
                    kind: ChainKind::Filter,
                    hook: ChainHook::Prerouting,
                    priority: i32::MIN,
                },
            };
            out.push((name, spec));
        }
        Ok(())
    })
    .map_err(|e| {
        DataplaneError::kernel("NFT_MSG_GETCHAIN", format!("chains of table ip {TABLE}"), e)
    })?;
    st.chains.extend(out);
    Ok(())
}

fn read_sets(sock: &mut NfnlSocket, st: &mut NftState) -> Result<(), DataplaneError> {
    let table = table_cstr();
    let mut req = get_request(libc::NFT_MSG_GETSET, true, |hdr| unsafe {
        let s = sys::nftnl_set_alloc();
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_nlmsg_build_payload(hdr, s);
        sys::nftnl_set_free(s);
    });
    let mut sets: Vec<(String, bool, Option<String>)> = Vec::new();
    sock.request(&mut req, |m| {
        unsafe {
            let s = Owned {
                ptr: sys::nftnl_set_alloc(),
                free: sys::nftnl_set_free,
            };
            if sys::nftnl_set_nlmsg_parse(m.header_ptr(), s.ptr) < 0 {
                return Err(io::Error::last_os_error());
            }
            if str_of(sys::nftnl_set_get_str(s.ptr, sys::NFTNL_SET_TABLE as u16)) != TABLE {
                return Ok(());
            }
            let name = str_of(sys::nftnl_set_get_str(s.ptr, sys::NFTNL_SET_NAME as u16));
            let flags = if sys::nftnl_set_is_set(s.ptr, sys::NFTNL_SET_FLAGS as u16) {
                sys::nftnl_set_get_u32(s.ptr, sys::NFTNL_SET_FLAGS as u16)
            } else {
                0
            };
            let mut len = 0u32;
            let ud = sys::nftnl_set_get_data(s.ptr, sys::NFTNL_SET_USERDATA as u16, &mut len);
            let comment = if ud.is_null() {
                None
            } else {
                udata_comment(
                    std::slice::from_raw_parts(ud as *const u8, len as usize),
                    sys::NFTNL_UDATA_SET_COMMENT as u8,
                )
            };
            sets.push((name, flags & libc::NFT_SET_INTERVAL as u32 != 0, comment));
        }
        Ok(())
    })
    .map_err(|e| {
        DataplaneError::kernel("NFT_MSG_GETSET", format!("sets of table ip {TABLE}"), e)
    })?;

    for (name, interval, comment) in sets {
        let elems = read_elements(sock, &name)?;
        let content = if interval {
            SetContent::Ranges(ranges_from_elements(
                elems
                    .iter()
                    .filter_map(|e| Some((e.addr()?, e.end)))
                    .collect(),
            ))
        } else if name.parse::<SetName>() == Ok(SetName::Origins) {
            SetContent::Origins(
                elems
                    .iter()
                    .filter_map(|e| Origin::from_key(e.key()))
                    .collect(),
            )
        } else {
            SetContent::Addrs(
                elems
                    .iter()
                    .filter_map(|e| e.addr().map(Ipv4Addr::from))
                    .collect(),
            )
        };
        st.sets.insert(name, NftSet { comment, content });
    }
    Ok(())
}

/// One set element as read: its key (up to [`ORIGIN_KEY_LEN`] bytes) and whether it ends an
/// interval.
struct RawElem {
    key: [u8; ORIGIN_KEY_LEN],
    len: usize,
    end: bool,
}

impl RawElem {
    fn key(&self) -> &[u8] {
        &self.key[..self.len]
    }

    /// A 4-byte key as a number (network order), `None` for other lengths.
    fn addr(&self) -> Option<u32> {
        (self.len == 4)
            .then(|| u32::from_be_bytes([self.key[0], self.key[1], self.key[2], self.key[3]]))
    }
}

/// The elements of one set.
fn read_elements(sock: &mut NfnlSocket, set: &str) -> Result<Vec<RawElem>, DataplaneError> {
    let table = table_cstr();
    let name = CString::new(set).map_err(|_| DataplaneError::Decode {
        what: "set name",
        detail: set.into(),
    })?;
    let mut req = get_request(libc::NFT_MSG_GETSETELEM, true, |hdr| unsafe {
        let s = sys::nftnl_set_alloc();
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
        sys::nftnl_set_elems_nlmsg_build_payload(hdr, s);
        sys::nftnl_set_free(s);
    });
    let mut out = Vec::new();
    sock.request(&mut req, |m| {
        unsafe {
            let s = Owned {
                ptr: sys::nftnl_set_alloc(),
                free: sys::nftnl_set_free,
            };
            if sys::nftnl_set_elems_nlmsg_parse(m.header_ptr(), s.ptr) < 0 {
                return Err(io::Error::last_os_error());
            }
            let it = Owned {
                ptr: sys::nftnl_set_elems_iter_create(s.ptr),
                free: iter_destroy,
            };
            let mut e = sys::nftnl_set_elems_iter_next(it.ptr);
            while !e.is_null() {
                let mut len = 0u32;
                let key = sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut len);
                if !key.is_null() && (len == 4 || len as usize == ORIGIN_KEY_LEN) {
                    let mut k = [0u8; ORIGIN_KEY_LEN];
                    std::ptr::copy_nonoverlapping(key as *const u8, k.as_mut_ptr(), len as usize);
                    // libnftnl's *_get_u32 dereferences unset attributes: read them raw
                    let mut flen = 0u32;
                    let fp =
                        sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_FLAGS as u16, &mut flen);
                    let flags = if fp.is_null() || flen < 4 {
                        0
                    } else {
                        std::ptr::read_unaligned(fp as *const u32)
                    };
                    out.push(RawElem {
                        key: k,
                        len: len as usize,
                        end: flags & libc::NFT_SET_ELEM_INTERVAL_END as u32 != 0,
                    });
                }
                e = sys::nftnl_set_elems_iter_next(it.ptr);
            }
        }
        Ok(())
    })
    .map_err(|e| DataplaneError::kernel("NFT_MSG_GETSETELEM", format!("set {set}"), e))?;
    Ok(out)
}

/// A u64 attribute of an expression, 0 when unset (libnftnl's getter would dereference NULL).
unsafe fn expr_u64(e: *const sys::nftnl_expr, attr: u32) -> u64 {
    let mut len = 0u32;
    let p = unsafe { sys::nftnl_expr_get(e, attr as u16, &mut len) };
    if p.is_null() || len < 8 {
        0
    } else {
        unsafe { std::ptr::read_unaligned(p as *const u64) }
    }
}

unsafe extern "C" fn iter_destroy(it: *const sys::nftnl_set_elems_iter) {
    unsafe { sys::nftnl_set_elems_iter_destroy(it as *mut _) }
}

unsafe extern "C" fn expr_iter_destroy(it: *const sys::nftnl_expr_iter) {
    unsafe { sys::nftnl_expr_iter_destroy(it as *mut _) }
}

fn read_rules(sock: &mut NfnlSocket, st: &mut NftState) -> Result<(), DataplaneError> {
    let table = table_cstr();
    let mut req = get_request(libc::NFT_MSG_GETRULE, true, |hdr| unsafe {
        let r = sys::nftnl_rule_alloc();
        sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
        sys::nftnl_rule_nlmsg_build_payload(hdr, r);
        sys::nftnl_rule_free(r);
    });
    let mut rules = Vec::new();
    sock.request(&mut req, |m| {
        unsafe {
            let r = Owned {
                ptr: sys::nftnl_rule_alloc(),
                free: sys::nftnl_rule_free,
            };
            if sys::nftnl_rule_nlmsg_parse(m.header_ptr(), r.ptr) < 0 {
                return Err(io::Error::last_os_error());
            }
            if str_of(sys::nftnl_rule_get_str(r.ptr, sys::NFTNL_RULE_TABLE as u16)) != TABLE {
                return Ok(());
            }
            let chain = str_of(sys::nftnl_rule_get_str(r.ptr, sys::NFTNL_RULE_CHAIN as u16));
            if !sys::nftnl_rule_is_set(r.ptr, sys::NFTNL_RULE_HANDLE as u16) {
                return Err(io::Error::other("rule without handle"));
            }
            let handle = sys::nftnl_rule_get_u64(r.ptr, sys::NFTNL_RULE_HANDLE as u16);
            let mut len = 0u32;
            let ud = sys::nftnl_rule_get_data(r.ptr, sys::NFTNL_RULE_USERDATA as u16, &mut len);
            let comment = if ud.is_null() {
                None
            } else {
                udata_comment(
                    std::slice::from_raw_parts(ud as *const u8, len as usize),
                    sys::NFTNL_UDATA_RULE_COMMENT as u8,
                )
            };
            let (mut packets, mut bytes) = (0, 0);
            let mut texts = Vec::new();
            let it = Owned {
                ptr: sys::nftnl_expr_iter_create(r.ptr),
                free: expr_iter_destroy,
            };
            let mut e = sys::nftnl_expr_iter_next(it.ptr);
            while !e.is_null() {
                if str_of(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16)) == "counter" {
                    packets = expr_u64(e, sys::NFTNL_EXPR_CTR_PACKETS);
                    bytes = expr_u64(e, sys::NFTNL_EXPR_CTR_BYTES);
                }
                texts.extend(expr_text(e));
                e = sys::nftnl_expr_iter_next(it.ptr);
            }
            rules.push((chain, handle, comment, packets, bytes, texts));
        }
        Ok(())
    })
    .map_err(|e| {
        DataplaneError::kernel("NFT_MSG_GETRULE", format!("rules of table ip {TABLE}"), e)
    })?;

    for (chain, handle, comment, packets, bytes, texts) in rules {
        // ours only when the comment names it and the expressions are what we write for it
        let spec = comment
            .as_deref()
            .and_then(RuleSpec::parse_key)
            .filter(|s| s.chain() == chain && texts == expected(s));
        match spec {
            Some(spec) if !st.rules.contains_key(&spec) => {
                st.rules.insert(
                    spec,
                    Some(RuleHandle {
                        handle,
                        packets,
                        bytes,
                    }),
                );
            }
            _ => st.foreign_rules.push(ForeignRule { chain, handle }),
        }
    }
    Ok(())
}

/// Our table as the kernel holds it, or `None` when it does not exist.
pub fn read_table(sock: &mut NfnlSocket) -> Result<Option<NftState>, DataplaneError> {
    let Some(flags) = table_flags(sock)? else {
        return Ok(None);
    };
    let mut st = NftState {
        flags,
        ..NftState::default()
    };
    read_chains(sock, &mut st)?;
    read_sets(sock, &mut st)?;
    read_rules(sock, &mut st)?;
    Ok(Some(st))
}

/// Only the rules (handles and counters) of our table.
pub fn read_rules_only(sock: &mut NfnlSocket) -> Result<NftState, DataplaneError> {
    let mut st = NftState::default();
    if table_flags(sock)?.is_some() {
        read_rules(sock, &mut st)?;
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_elements_pair_into_ranges() {
        let r = ranges_from_elements(vec![(300, true), (200, true), (10, false), (250, false)]);
        let v: Vec<(u32, u64)> = r.iter().map(|x| (x.start, x.end)).collect();
        assert_eq!(v, [(10, 200), (250, 300)]);
        let open = ranges_from_elements(vec![(5, false)]);
        assert_eq!(open.iter().next().unwrap().end, 1 << 32);
    }

    #[test]
    fn comments_are_found_in_userdata() {
        let ud = [3u8, 1, 9, 7, 4, b'a', b'b', b'c', 0];
        assert_eq!(udata_comment(&ud, 7).as_deref(), Some("abc"));
        assert_eq!(udata_comment(&ud, 0), None);
        assert_eq!(udata_comment(&[7, 200], 7), None);
    }
}
