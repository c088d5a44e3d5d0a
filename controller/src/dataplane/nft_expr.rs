//! The nftables expressions our rules are made of, built through `nftnl_sys` (nftnl 0.9 has
//! no inverted lookup, no mark arithmetic and no verdict-less counters in its safe API).

use std::ffi::{CString, c_void};
use std::ptr::NonNull;

use nftnl::Rule;
use nftnl::expr::Expression;
use nftnl::nftnl_sys::{self as sys, libc};

/// `NF_NAT_RANGE_MAP_IPS`: the NAT maps addresses (set by the kernel for any address range).
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
/// `NFT_REG32_01`, `NFT_REG32_02`: the 32-bit registers after the first, where the parts of
/// a concatenation that starts in register 1 go.
pub const REG32_01: u32 = 9;
pub const REG32_02: u32 = 10;
/// `NFT_REG_1`: the register every other expression works on (its first 32 bits are
/// `NFT_REG32_00`, the start of a concatenation).
pub const REG_1: u32 = libc::NFT_REG_1 as u32;
/// `NFTA_FIB_F_SADDR`, `NFTA_FIB_F_IIF`: look the source address up, restricted to the input
/// interface.
const NFTA_FIB_F_SADDR: u32 = 1 << 0;
const NFTA_FIB_F_IIF: u32 = 1 << 3;
/// `NFT_FIB_RESULT_OIF`: the output interface of the route found (0 if none).
const NFT_FIB_RESULT_OIF: u32 = 1;
/// `NFT_META_IIF`: the input interface index.
const NFT_META_IIF: u32 = 4;
/// Offset and length of the source MAC address in the Ethernet header.
const ETHER_SADDR_OFFSET: u32 = 6;
const ETHER_ADDR_LEN: u32 = 6;

/// An IPv4 header field.
#[derive(Clone, Copy, Debug)]
pub enum Ip4Field {
    Saddr,
    Daddr,
}

/// One expression; every one works on register 1.
#[derive(Clone, Debug)]
pub enum Expr {
    /// reg1 = ip saddr / daddr
    Payload(Ip4Field),
    /// reg1 ∈ @set (or ∉ with `invert`), else stop
    Lookup { set: CString, invert: bool },
    /// reg1 = meta mark
    MarkLoad,
    /// meta mark = reg1
    MarkStore,
    /// reg1 = (reg1 & mask) ^ xor  (on a host-order u32)
    Bitwise { mask: u32, xor: u32 },
    /// reg1 != 0, else stop (host-order u32)
    NonZero,
    /// counter
    Counter,
    /// reg1 = ip
    LoadAddr([u8; 4]),
    /// snat to reg1
    SnatReg1,
    /// drop
    Drop,
    /// reg1 = ct original ip saddr (4 bytes; no conntrack entry: stop)
    CtOriginalSaddr,
    /// reg1 = ct direction (1 byte; no conntrack entry: stop)
    CtDirection,
    /// reg1 == data, else stop (the first `data.len()` bytes of reg1)
    CmpEq(Vec<u8>),
    /// reg1 = `fib saddr . iif oif`: the interface of the route back to the source, if that
    /// route leaves through the input interface; 0 otherwise
    FibSaddrIifOif,
    /// reg = meta iif (4 bytes, host order)
    Iif { reg: u32 },
    /// reg = ether saddr (6 bytes, the rest of the last 32-bit word zeroed)
    EtherSaddr { reg: u32 },
}

fn alloc(name: &std::ffi::CStr) -> NonNull<sys::nftnl_expr> {
    NonNull::new(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) })
        .unwrap_or_else(|| std::process::abort())
}

unsafe fn set_data(e: *mut sys::nftnl_expr, attr: u32, data: &[u8]) {
    unsafe {
        sys::nftnl_expr_set(
            e,
            attr as u16,
            data.as_ptr() as *const c_void,
            data.len() as u32,
        )
    };
}

impl Expression for Expr {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let reg1 = libc::NFT_REG_1 as u32;
        unsafe {
            match self {
                Expr::Payload(field) => {
                    let e = alloc(c"payload");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, reg1);
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_PAYLOAD_BASE as u16,
                        libc::NFT_PAYLOAD_NETWORK_HEADER as u32,
                    );
                    let offset = match field {
                        Ip4Field::Saddr => 12,
                        Ip4Field::Daddr => 16,
                    };
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, offset);
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, 4);
                    e
                }
                Expr::Lookup { set, invert } => {
                    let e = alloc(c"lookup");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LOOKUP_SREG as u16, reg1);
                    sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_LOOKUP_SET as u16, set.as_ptr());
                    // always set, as the kernel reports it (see nft_fingerprint)
                    let flags = if *invert {
                        libc::NFT_LOOKUP_F_INV as u32
                    } else {
                        0
                    };
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_LOOKUP_FLAGS as u16, flags);
                    e
                }
                Expr::MarkLoad | Expr::MarkStore => {
                    let e = alloc(c"meta");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_META_KEY as u16,
                        libc::NFT_META_MARK as u32,
                    );
                    let reg_attr = if matches!(self, Expr::MarkLoad) {
                        sys::NFTNL_EXPR_META_DREG
                    } else {
                        sys::NFTNL_EXPR_META_SREG
                    };
                    sys::nftnl_expr_set_u32(p, reg_attr as u16, reg1);
                    e
                }
                Expr::Bitwise { mask, xor } => {
                    let e = alloc(c"bitwise");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_BITWISE_SREG as u16, reg1);
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_BITWISE_DREG as u16, reg1);
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_BITWISE_LEN as u16, 4);
                    set_data(p, sys::NFTNL_EXPR_BITWISE_MASK, &mask.to_ne_bytes());
                    set_data(p, sys::NFTNL_EXPR_BITWISE_XOR, &xor.to_ne_bytes());
                    e
                }
                Expr::NonZero => {
                    let e = alloc(c"cmp");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_CMP_SREG as u16, reg1);
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_CMP_OP as u16,
                        libc::NFT_CMP_NEQ as u32,
                    );
                    set_data(p, sys::NFTNL_EXPR_CMP_DATA, &0u32.to_ne_bytes());
                    e
                }
                Expr::Counter => alloc(c"counter"),
                Expr::LoadAddr(octets) => {
                    let e = alloc(c"immediate");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_IMM_DREG as u16, reg1);
                    set_data(p, sys::NFTNL_EXPR_IMM_DATA, octets);
                    e
                }
                Expr::SnatReg1 => {
                    let e = alloc(c"nat");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_NAT_TYPE as u16,
                        libc::NFT_NAT_SNAT as u32,
                    );
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_NAT_FAMILY as u16,
                        libc::NFPROTO_IPV4 as u32,
                    );
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_NAT_REG_ADDR_MIN as u16, reg1);
                    // what the kernel makes of a single address anyway, and reports back (see
                    // nft_fingerprint): max = min, NF_NAT_RANGE_MAP_IPS
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_NAT_REG_ADDR_MAX as u16, reg1);
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_NAT_FLAGS as u16,
                        NF_NAT_RANGE_MAP_IPS,
                    );
                    e
                }
                Expr::CtOriginalSaddr | Expr::CtDirection => {
                    let e = alloc(c"ct");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_CT_DREG as u16, reg1);
                    if matches!(self, Expr::CtOriginalSaddr) {
                        sys::nftnl_expr_set_u32(
                            p,
                            sys::NFTNL_EXPR_CT_KEY as u16,
                            libc::NFT_CT_SRC_IP as u32,
                        );
                        // IP_CT_DIR_ORIGINAL
                        sys::nftnl_expr_set_u8(p, sys::NFTNL_EXPR_CT_DIR as u16, 0);
                    } else {
                        sys::nftnl_expr_set_u32(
                            p,
                            sys::NFTNL_EXPR_CT_KEY as u16,
                            libc::NFT_CT_DIRECTION as u32,
                        );
                    }
                    e
                }
                Expr::CmpEq(data) => {
                    let e = alloc(c"cmp");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_CMP_SREG as u16, reg1);
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_CMP_OP as u16,
                        libc::NFT_CMP_EQ as u32,
                    );
                    set_data(p, sys::NFTNL_EXPR_CMP_DATA, data);
                    e
                }
                Expr::FibSaddrIifOif => {
                    let e = alloc(c"fib");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_FIB_DREG as u16, reg1);
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_FIB_RESULT as u16,
                        NFT_FIB_RESULT_OIF,
                    );
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_FIB_FLAGS as u16,
                        NFTA_FIB_F_SADDR | NFTA_FIB_F_IIF,
                    );
                    e
                }
                Expr::Iif { reg } => {
                    let e = alloc(c"meta");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_META_KEY as u16, NFT_META_IIF);
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_META_DREG as u16, *reg);
                    e
                }
                Expr::EtherSaddr { reg } => {
                    let e = alloc(c"payload");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, *reg);
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_PAYLOAD_BASE as u16,
                        libc::NFT_PAYLOAD_LL_HEADER as u32,
                    );
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16,
                        ETHER_SADDR_OFFSET,
                    );
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, ETHER_ADDR_LEN);
                    e
                }
                Expr::Drop => {
                    let e = alloc(c"immediate");
                    let p = e.as_ptr();
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_IMM_DREG as u16,
                        libc::NFT_REG_VERDICT as u32,
                    );
                    sys::nftnl_expr_set_u32(
                        p,
                        sys::NFTNL_EXPR_IMM_VERDICT as u16,
                        libc::NF_DROP as u32,
                    );
                    e
                }
            }
        }
    }
}
