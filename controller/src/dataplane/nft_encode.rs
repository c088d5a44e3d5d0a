//! Encoding of [`NftOp`]s into one nftnl batch (one nfnetlink transaction).

use std::ffi::{CString, c_void};
use std::net::Ipv4Addr;

use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::set::Set;
use nftnl::{
    Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, NlMsg, Policy, ProtoFamily, Rule, Table,
};

use super::config::TABLE;
use super::names::SetName;
use super::nft_diff::NftOp;
use super::nft_expr::{Expr, Ip4Field, REG_1, REG32_01, REG32_02};
use super::nft_model::{ChainHook, ChainKind, RuleSpec, SetContent};
use super::origins::ORIGIN_KEY_LEN;

/// nftables' userspace datatype id of packet marks (`TYPE_MARK` in nftables' datatype.h).
const NFT_TYPE_MARK: u32 = 19;
/// `TYPE_IPADDR`, `TYPE_ETHERADDR`, `TYPE_IFINDEX` in nftables' datatype.h.
const NFT_TYPE_IPADDR: u32 = 7;
const NFT_TYPE_ETHERADDR: u32 = 9;
const NFT_TYPE_IFINDEX: u32 = 20;
/// Bits per part of a concatenated datatype id (`TYPE_BITS`).
const NFT_TYPE_BITS: u32 = 6;
/// `ipv4_addr . iface_index . ether_addr`, the key type of the `origins` set (so `nft list`
/// shows it).
const ORIGINS_KEY_TYPE: u32 =
    (((NFT_TYPE_IPADDR << NFT_TYPE_BITS) | NFT_TYPE_IFINDEX) << NFT_TYPE_BITS) | NFT_TYPE_ETHERADDR;

/// A finalized batch and which op each of its messages came from.
pub struct EncodedBatch {
    pub batch: FinalizedBatch,
    /// Number of messages, BATCH_BEGIN/END not counted.
    pub messages: usize,
    pub bytes: usize,
    op_of_message: Vec<usize>,
    first_seq: u32,
}

impl EncodedBatch {
    /// The index of the op whose message carried sequence number `seq`.
    pub fn op_for_seq(&self, seq: u32) -> Option<usize> {
        let i = seq.checked_sub(self.first_seq)? as usize;
        self.op_of_message.get(i).copied()
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("our names contain no NUL")
}

pub fn table() -> Table {
    Table::new(cstr(TABLE), ProtoFamily::Ipv4)
}

/// NEWTABLE for our table with `NFTA_TABLE_FLAGS` (nftnl's `Table` always sends 0): creates
/// it, or on an existing orphaned table takes ownership of it.
struct TableWithFlags(u32);

unsafe impl NlMsg for TableWithFlags {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        let name = cstr(TABLE);
        unsafe {
            let t = sys::nftnl_table_alloc();
            if t.is_null() {
                std::process::abort();
            }
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FAMILY as u16, ProtoFamily::Ipv4 as u32);
            sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FLAGS as u16, self.0);
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf.cast(),
                libc::NFT_MSG_NEWTABLE as u16,
                ProtoFamily::Ipv4 as u16,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(hdr, t);
            sys::nftnl_table_free(t);
        }
    }
}

/// DELSETELEM without elements: flushes the set.
struct FlushSet<'a>(&'a Set<'a, Ipv4Addr>);

unsafe impl NlMsg for FlushSet<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        unsafe {
            let hdr = sys::nftnl_nlmsg_build_hdr(
                buf.cast(),
                libc::NFT_MSG_DELSETELEM as u16,
                ProtoFamily::Ipv4 as u16,
                libc::NLM_F_ACK as u16,
                seq,
            );
            sys::nftnl_set_elems_nlmsg_build_payload(hdr, self.0.as_ptr().as_ptr());
        }
    }
}

fn push_elem(set: &Set<'_, Ipv4Addr>, key: u32, interval_end: bool) {
    push_key(set, &key.to_be_bytes(), interval_end)
}

fn push_key(set: &Set<'_, Ipv4Addr>, key: &[u8], interval_end: bool) {
    unsafe {
        let e = sys::nftnl_set_elem_alloc();
        if e.is_null() {
            std::process::abort();
        }
        sys::nftnl_set_elem_set(
            e,
            sys::NFTNL_SET_ELEM_KEY as u16,
            key.as_ptr() as *const c_void,
            key.len() as u32,
        );
        if interval_end {
            sys::nftnl_set_elem_set_u32(
                e,
                sys::NFTNL_SET_ELEM_FLAGS as u16,
                libc::NFT_SET_ELEM_INTERVAL_END as u32,
            );
        }
        sys::nftnl_set_elem_add(set.as_ptr().as_ptr(), e);
    }
}

/// Fills `set` with the elements of `content` (ranges as `[start, end)` pairs; a range
/// reaching 2^32 has no end element).
fn fill(set: &Set<'_, Ipv4Addr>, content: &SetContent) {
    match content {
        SetContent::Addrs(addrs) => addrs
            .iter()
            .for_each(|a| push_elem(set, u32::from(*a), false)),
        SetContent::Ranges(ranges) => {
            for r in ranges {
                push_elem(set, r.start, false);
                if r.end <= u64::from(u32::MAX) {
                    push_elem(set, r.end as u32, true);
                }
            }
        }
        SetContent::Origins(origins) => origins.iter().for_each(|o| push_key(set, &o.key(), false)),
    }
}

/// Userdata holding a comment, in libnftnl's TLV layout (`nft list` shows it).
fn comment_udata(kind: u32, comment: &str) -> Vec<u8> {
    let bytes: Vec<u8> = comment.bytes().take(253).collect();
    let mut out = vec![kind as u8, (bytes.len() + 1) as u8];
    out.extend_from_slice(&bytes);
    out.push(0);
    out
}

fn set_object<'a>(table: &'a Table, name: &str, id: u32) -> Set<'a, Ipv4Addr> {
    Set::new_named(&cstr(name), id, table, ProtoFamily::Ipv4)
}

fn chain_object<'a>(table: &'a Table, name: &str) -> Chain<'a> {
    Chain::new(cstr(name), table)
}

/// The chain object a rule of `spec` goes in (for building its expressions elsewhere).
pub(crate) fn rule_chain_object<'a>(table: &'a Table, spec: &RuleSpec) -> Chain<'a> {
    chain_object(table, spec.chain())
}

fn lookup(set: SetName, invert: bool) -> Expr {
    Expr::Lookup {
        set: cstr(&set.to_string()),
        invert,
    }
}

/// The expressions of a rule (see [`RuleSpec`] for what each one says in nft syntax).
pub fn rule_exprs(spec: &RuleSpec) -> Vec<Expr> {
    let scope = |gid: &super::names::GatewayId, src: SetName| {
        vec![
            Expr::CtDirection,
            Expr::CmpEq(vec![0]), // IP_CT_DIR_ORIGINAL: replies into a pod are not ours
            Expr::Payload(Ip4Field::Saddr),
            lookup(src, false),
            Expr::Payload(Ip4Field::Daddr),
            lookup(SetName::Dst(gid.clone()), false),
            lookup(SetName::Excl(gid.clone()), true),
            Expr::Counter,
        ]
    };
    match spec {
        RuleSpec::Guard => vec![
            Expr::Payload(Ip4Field::Daddr),
            lookup(SetName::Hosted, false),
            Expr::Counter,
            Expr::Drop,
        ],
        RuleSpec::MarkSnat { mark, mask } => vec![
            Expr::MarkLoad,
            Expr::Bitwise {
                mask: *mask,
                xor: 0,
            },
            Expr::CmpEq(mark.to_ne_bytes().to_vec()),
            Expr::Counter,
            Expr::Payload(Ip4Field::Saddr),
            Expr::SnatReg1,
        ],
        RuleSpec::Snat { gid, egress_ip } => {
            let mut v = scope(gid, spec.source_set());
            v.extend([Expr::LoadAddr(egress_ip.octets()), Expr::SnatReg1]);
            v
        }
        RuleSpec::Account { gid, .. } => scope(gid, spec.source_set()),
        RuleSpec::Steer {
            gid, mark, mask, ..
        } => {
            let mut v = scope(gid, spec.source_set());
            v.extend([
                Expr::MarkLoad,
                Expr::Bitwise {
                    mask: !*mask,
                    xor: *mark,
                },
                Expr::MarkStore,
            ]);
            v
        }
        RuleSpec::Block { gid } => {
            let mut v = scope(gid, spec.source_set());
            v.push(Expr::Drop);
            v
        }
        RuleSpec::SpoofRoute { gid, .. } => {
            let mut v = scope(gid, spec.source_set());
            v.pop(); // the counter counts drops only
            v.extend([
                Expr::FibSaddrIifOif,
                Expr::CmpEq(vec![0; 4]), // `missing`: the route back leaves elsewhere
                Expr::Counter,
                Expr::Drop,
            ]);
            v
        }
        RuleSpec::SpoofNode { gid, .. } => {
            let mut v = scope(gid, spec.source_set());
            v.pop(); // the counter counts drops only
            v.extend([
                Expr::Iif { reg: REG_1 },
                lookup(SetName::NodeIfs, false),
                // ip saddr . iif . ether saddr, laid out from register 1 on
                Expr::Payload(Ip4Field::Saddr),
                Expr::Iif { reg: REG32_01 },
                Expr::EtherSaddr { reg: REG32_02 },
                lookup(SetName::Origins, true),
                Expr::Counter,
                Expr::Drop,
            ]);
            v
        }
        RuleSpec::Leak { gid, mask } | RuleSpec::LeakRemote { gid, mask } => vec![
            Expr::CtDirection,
            Expr::CmpEq(vec![0]), // IP_CT_DIR_ORIGINAL
            Expr::CtOriginalSaddr,
            lookup(spec.source_set(), false),
            Expr::Payload(Ip4Field::Daddr),
            lookup(SetName::Dst(gid.clone()), false),
            lookup(SetName::Excl(gid.clone()), true),
            Expr::MarkLoad,
            Expr::Bitwise {
                mask: *mask,
                xor: 0,
            },
            lookup(SetName::Marks, true),
            Expr::Payload(Ip4Field::Saddr),
            lookup(SetName::Egress(gid.clone()), true),
            Expr::Counter,
            Expr::Drop,
        ],
    }
}

fn hook(h: ChainHook) -> Hook {
    match h {
        ChainHook::Prerouting => Hook::PreRouting,
        ChainHook::Input => Hook::In,
        ChainHook::Forward => Hook::Forward,
        ChainHook::Postrouting => Hook::PostRouting,
    }
}

/// Builds the batch for `ops`. Panics never: every name is ours and NUL-free.
pub fn encode(ops: &[NftOp]) -> EncodedBatch {
    let table = table();
    let mut batch = Batch::new();
    let mut op_of_message = Vec::new();
    let mut next_set_id = 1u32;
    for (i, op) in ops.iter().enumerate() {
        let before = op_of_message.len();
        let mut count = |n: usize| op_of_message.extend(std::iter::repeat_n(i, n));
        match op {
            NftOp::AddTable { flags } | NftOp::AdoptTable { flags } => {
                batch.add(&TableWithFlags(*flags), MsgType::Add);
                count(1);
            }
            NftOp::DelTable => {
                batch.add(&table, MsgType::Del);
                count(1);
            }
            NftOp::AddChain { name, spec } => {
                let mut chain = chain_object(&table, name);
                chain.set_hook(hook(spec.hook), spec.priority);
                chain.set_type(match spec.kind {
                    ChainKind::Filter => ChainType::Filter,
                    ChainKind::Nat => ChainType::Nat,
                });
                chain.set_policy(Policy::Accept);
                batch.add(&chain, MsgType::Add);
                count(1);
            }
            NftOp::DelChain { name } => {
                batch.add(&chain_object(&table, name), MsgType::Del);
                count(1);
            }
            NftOp::AddSet { name, set } => {
                let s = set_object(&table, name, next_set_id);
                next_set_id += 1;
                unsafe {
                    let p = s.as_ptr().as_ptr();
                    match name.parse::<SetName>() {
                        // nft's `mark` datatype (host byte order), so `nft list` shows them
                        Ok(SetName::Marks) => {
                            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, NFT_TYPE_MARK)
                        }
                        Ok(SetName::NodeIfs) => sys::nftnl_set_set_u32(
                            p,
                            sys::NFTNL_SET_KEY_TYPE as u16,
                            NFT_TYPE_IFINDEX,
                        ),
                        _ => {}
                    }
                    if matches!(set.content, SetContent::Origins(_)) {
                        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, ORIGINS_KEY_TYPE);
                        sys::nftnl_set_set_u32(
                            p,
                            sys::NFTNL_SET_KEY_LEN as u16,
                            ORIGIN_KEY_LEN as u32,
                        );
                    }
                    if set.content.is_interval() {
                        sys::nftnl_set_set_u32(
                            p,
                            sys::NFTNL_SET_FLAGS as u16,
                            libc::NFT_SET_INTERVAL as u32,
                        );
                    }
                    if let Some(c) = &set.comment {
                        let ud = comment_udata(sys::NFTNL_UDATA_SET_COMMENT, c);
                        sys::nftnl_set_set_data(
                            p,
                            sys::NFTNL_SET_USERDATA as u16,
                            ud.as_ptr() as *const c_void,
                            ud.len() as u32,
                        );
                    }
                }
                batch.add(&s, MsgType::Add);
                count(1);
                fill(&s, &set.content);
                let mut n = 0;
                for m in s.elems_iter() {
                    batch.add(&m, MsgType::Add);
                    n += 1;
                }
                count(n);
            }
            NftOp::DelSet { name } => {
                batch.add(&set_object(&table, name, 0), MsgType::Del);
                count(1);
            }
            NftOp::FlushSet { name } => {
                let s = set_object(&table, name, 0);
                batch.add(&FlushSet(&s), MsgType::Del);
                count(1);
            }
            NftOp::AddElems { set, content } | NftOp::DelElems { set, content } => {
                let kind = if matches!(op, NftOp::AddElems { .. }) {
                    MsgType::Add
                } else {
                    MsgType::Del
                };
                let s = set_object(&table, set, 0);
                fill(&s, content);
                let mut n = 0;
                for m in s.elems_iter() {
                    batch.add(&m, kind);
                    n += 1;
                }
                count(n);
            }
            NftOp::AddRule(spec) => {
                let chain = chain_object(&table, spec.chain());
                let mut rule = Rule::new(&chain);
                for e in rule_exprs(spec) {
                    rule.add_expr(&e);
                }
                rule.set_comment(cstr(&spec.key()))
                    .expect("rule keys are shorter than 128 bytes");
                batch.add(&rule, MsgType::Add);
                count(1);
            }
            NftOp::DelRule { chain, handle, .. } => {
                let chain = chain_object(&table, chain);
                let mut rule = Rule::new(&chain);
                rule.set_handle(*handle);
                batch.add(&rule, MsgType::Del);
                count(1);
            }
        }
        debug_assert!(
            op_of_message.len() > before
                || matches!(op, NftOp::AddElems { .. } | NftOp::DelElems { .. })
        );
    }
    let batch = batch.finalize();
    let seqs = batch.sequence_numbers();
    let messages = op_of_message.len();
    let framing = (seqs.len() - messages) as u32 / 2;
    let bytes = batch.iter().map(|b| b.len()).sum();
    EncodedBatch {
        first_seq: seqs.start + framing,
        batch,
        messages,
        bytes,
        op_of_message,
    }
}
