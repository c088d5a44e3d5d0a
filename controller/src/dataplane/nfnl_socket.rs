//! A NETLINK_NETFILTER socket: nftables batches in one `sendmsg` with every ACK checked, and
//! request/dump round trips (nftables listing, ctnetlink).
//!
//! nfnetlink commits a batch only when BATCH_BEGIN and BATCH_END arrive in the same skb, so a
//! batch larger than one nftnl page (128 KiB) must go out as one iovec `sendmsg`, with the
//! send buffer raised through `SO_SNDBUFFORCE` (CAP_NET_ADMIN).

use std::io;
use std::mem;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nftnl::FinalizedBatch;

const RECV_BUF_WORDS: usize = 1 << 15; // 256 KiB, 8-byte aligned
const NLMSG_HDRLEN: usize = 16;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt_int(fd: &OwnedFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &value as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A failed batch: the sequence number of the first rejected message (if the kernel named
/// one) and the error.
#[derive(Debug)]
pub struct BatchError {
    pub seq: Option<u32>,
    pub error: io::Error,
}

/// One netfilter netlink socket, opened in the calling thread's network namespace.
pub struct NfnlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u64>,
}

impl NfnlSocket {
    pub fn open() -> io::Result<Self> {
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        })?;
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        })?;
        // ACKs of big batches and dumps need room; best effort without CAP_NET_ADMIN.
        if setsockopt_int(&fd, libc::SO_RCVBUFFORCE, 8 << 20).is_err() {
            setsockopt_int(&fd, libc::SO_RCVBUF, 8 << 20)?;
        }
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                mem::size_of::<libc::timeval>() as u32,
            )
        })?;
        Ok(Self {
            fd,
            seq: 0x1000_0000,
            buf: vec![0u64; RECV_BUF_WORDS],
        })
    }

    /// The netlink port id the kernel bound this socket to (notifications caused by its
    /// requests carry it).
    pub fn portid(&self) -> io::Result<u32> {
        let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        cvt(unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                &mut sa as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        })?;
        Ok(sa.nl_pid)
    }

    /// Sends the whole batch in one `sendmsg` and checks every ACK.
    pub fn send_batch(&mut self, batch: &FinalizedBatch) -> Result<(), BatchError> {
        let err = |error| BatchError { seq: None, error };
        let mut iov: Vec<libc::iovec> = batch
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: b.len(),
            })
            .collect();
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        // netlink_sendmsg() rejects len > sk_sndbuf - 32; the kernel doubles what we set.
        let snd = (total + 64 * 1024).max(1 << 20).min(i32::MAX as usize) as libc::c_int;
        setsockopt_int(&self.fd, libc::SO_SNDBUFFORCE, snd).map_err(err)?;
        let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = &mut sa as *mut _ as *mut libc::c_void;
        msg.msg_namelen = mem::size_of::<libc::sockaddr_nl>() as u32;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
        if n < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        if n as usize != total {
            return Err(err(io::Error::other(format!(
                "short sendmsg: {n} of {total} bytes"
            ))));
        }
        self.wait_acks(batch.sequence_numbers())
    }

    fn recv(&mut self, flags: libc::c_int) -> io::Result<usize> {
        let len = self.buf.len() * 8;
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr() as *mut libc::c_void,
                len,
                flags | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize > len {
            return Err(io::Error::other(format!(
                "netlink message of {n} bytes truncated"
            )));
        }
        Ok(n as usize)
    }

    fn bytes(&self, n: usize) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const u8, n) }
    }

    /// Reads ACKs until the one for the last message. The kernel processes a batch inside
    /// `sendmsg`, so once an error is seen the rest is already queued: drain without blocking.
    fn wait_acks(&mut self, seqs: Range<u32>) -> Result<(), BatchError> {
        let last = seqs.end - 1;
        let mut first: Option<BatchError> = None;
        loop {
            let flags = if first.is_some() {
                libc::MSG_DONTWAIT
            } else {
                0
            };
            let n = match self.recv(flags) {
                Ok(n) => n,
                Err(e) => {
                    return Err(first.unwrap_or(BatchError {
                        seq: None,
                        error: e,
                    }));
                }
            };
            let mut done = false;
            for msg in messages(self.bytes(n)) {
                if msg.kind != libc::NLMSG_ERROR as u16 || msg.body.len() < 4 {
                    continue;
                }
                let code = i32::from_ne_bytes(msg.body[..4].try_into().expect("4 bytes"));
                if code != 0 && first.is_none() {
                    first = Some(BatchError {
                        seq: Some(msg.seq),
                        error: io::Error::from_raw_os_error(-code),
                    });
                }
                if msg.seq == last {
                    done = true;
                }
            }
            if done {
                return first.map_or(Ok(()), Err);
            }
        }
    }

    /// Sends one request (a complete netlink message; its sequence number is set here) and
    /// hands every reply message to `each` until DONE or the ACK. A NACK becomes the error.
    pub fn request(
        &mut self,
        msg: &mut [u8],
        mut each: impl FnMut(&RawMsg<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut result = Ok(());
        loop {
            let n = self.recv(0)?;
            let mut finished = false;
            for m in messages(self.bytes(n)) {
                if m.seq != seq {
                    continue;
                }
                match m.kind as libc::c_int {
                    libc::NLMSG_DONE => finished = true,
                    libc::NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(
                            m.body
                                .get(..4)
                                .and_then(|b| b.try_into().ok())
                                .unwrap_or([0; 4]),
                        );
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        finished = true;
                    }
                    _ => {
                        if result.is_ok() {
                            result = each(&m);
                        }
                        if m.flags & libc::NLM_F_MULTI as u16 == 0 {
                            finished = true;
                        }
                    }
                }
            }
            if finished {
                return result;
            }
        }
    }
}

/// One received netlink message.
pub struct RawMsg<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// The whole message, header included (4-byte aligned: parse functions take it as is).
    pub whole: &'a [u8],
    /// The payload after the netlink header.
    pub body: &'a [u8],
}

impl RawMsg<'_> {
    pub fn header_ptr(&self) -> *const libc::nlmsghdr {
        self.whole.as_ptr() as *const libc::nlmsghdr
    }
}

/// The netlink messages in one datagram.
pub fn messages(mut bytes: &[u8]) -> impl Iterator<Item = RawMsg<'_>> {
    std::iter::from_fn(move || {
        if bytes.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(bytes[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            return None;
        }
        let m = RawMsg {
            kind: u16::from_ne_bytes(bytes[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(bytes[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(bytes[8..12].try_into().ok()?),
            whole: &bytes[..len],
            body: &bytes[NLMSG_HDRLEN..len],
        };
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
        Some(m)
    })
}

/// Builds netlink messages with nested attributes (for ctnetlink, which nftnl does not speak).
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    /// A message of `kind` with `flags` (NLM_F_REQUEST is added) and the 4-byte nfgenmsg.
    pub fn nfnl(kind: u16, flags: u16, family: u8) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
        buf.extend_from_slice(&[family, libc::NFNETLINK_V0 as u8, 0, 0]);
        Self { buf }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Appends an attribute with a raw value.
    pub fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.buf
            .extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        self
    }

    /// Appends an already encoded attribute (header included), e.g. copied from a dump.
    pub fn raw(&mut self, encoded: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(encoded);
        self.pad();
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A netlink attribute.
pub struct Attr<'a> {
    pub kind: u16,
    pub value: &'a [u8],
    /// The attribute as encoded (header and value, unpadded).
    pub encoded: &'a [u8],
}

/// The attributes in `bytes`. The nested and byte-order flags are stripped from `kind`.
pub fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = Attr<'_>> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
        let a = Attr {
            kind,
            value: &bytes[4..len],
            encoded: &bytes[..len],
        };
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
        Some(a)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_output_parses_back() {
        let mut b = MsgBuilder::nfnl(0x0102, libc::NLM_F_ACK as u16, libc::AF_INET as u8);
        b.attr(1, &[1, 2, 3]).attr(2, &7u32.to_be_bytes());
        let msg = b.finish();
        let parsed: Vec<RawMsg<'_>> = messages(&msg).collect();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].kind, 0x0102);
        let a: Vec<(u16, Vec<u8>)> = attrs(&parsed[0].body[4..])
            .map(|a| (a.kind, a.value.to_vec()))
            .collect();
        assert_eq!(a, [(1, vec![1, 2, 3]), (2, vec![0, 0, 0, 7])]);
    }
}
