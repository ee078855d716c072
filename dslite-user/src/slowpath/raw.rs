//! The raw IPv6 socket of protocol 4: it sends oversized softwire packets for the kernel to
//! fragment (RFC 6333 §5.3, §6.3), receives softwire packets the kernel reassembled (with
//! the policy of which go back into the TAP), and reads ICMPv6 errors from its error queue.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{bail, Context as _, Result};
use dslite_common::proto::DEFAULT_HOP_LIMIT;
use log::warn;

use super::{Role, Settings, Shared};

impl Shared {
    /// A softwire packet the kernel delivered to the raw socket (reassembled) goes back into
    /// the TAP only when it is one the dataplane serves: to the B4's softwire address from
    /// its AFTR, or to the AFTR's address from an allowed B4. Anything else (another local
    /// address, another source) would only come round again: it is dropped, counted.
    pub(super) fn may_write_back(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        match self.role() {
            Role::B4 { b4, aftr } => *dst == b4.octets() && *src == aftr.octets(),
            Role::Aftr { aftr } => {
                *dst == aftr.octets()
                    && in_prefixes(
                        src,
                        &self.b4_prefixes.lock().unwrap_or_else(|e| e.into_inner()),
                    )
            }
        }
    }
}

/// Set the namespace's IPv6 reassembly bounds (RFC 6333 §6.3: reassembly is costly, bound it).
pub fn set_kernel_reassembly(s: &Settings) {
    let high = s.reassembly_memory.max(1 << 16);
    for (path, v) in [
        (
            "net/ipv6/ip6frag_time",
            s.reassembly_timeout.as_secs().max(1).to_string(),
        ),
        ("net/ipv6/ip6frag_high_thresh", high.to_string()),
        ("net/ipv6/ip6frag_low_thresh", (high / 4 * 3).to_string()),
    ] {
        // high must stay above low while both change: raise high first, then low.
        if let Err(e) = crate::sysctl::ensure_sysctl(path, &v) {
            warn!("could not set {path} = {v}: {e:#}");
        }
    }
}

/// True when `addr` is in one of `prefixes` (network, length).
fn in_prefixes(addr: &[u8; 16], prefixes: &[([u8; 16], u8)]) -> bool {
    let a = u128::from_be_bytes(*addr);
    prefixes.iter().any(|(net, len)| {
        let mask = if *len == 0 {
            0
        } else {
            u128::MAX << (128 - (*len).min(128) as u32)
        };
        a & mask == u128::from_be_bytes(*net) & mask
    })
}

/// The raw IPv6 socket of protocol 4 (IPv4-in-IPv6).
pub(super) struct RawSock {
    pub(super) fd: OwnedFd,
    /// The fragment size last set with IPV6_MTU (only the TAP thread sends).
    pub(super) mtu: AtomicU64,
}

pub(super) struct Received {
    pub(super) len: usize,
    pub(super) src: [u8; 16],
    pub(super) dst: [u8; 16],
    pub(super) tclass: u8,
    pub(super) hop_limit: u8,
}

pub(super) struct IcmpErr {
    pub(super) len: usize,
    /// Destination of the packet the error is about.
    pub(super) peer: [u8; 16],
    /// Who sent the error (SO_EE_OFFENDER), for the per-source relay budget.
    pub(super) offender: [u8; 16],
    pub(super) icmp_type: u8,
    pub(super) icmp_code: u8,
}

fn setsockopt_int(fd: i32, level: i32, name: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

const SO_EE_ORIGIN_ICMP6: u8 = 3;

impl RawSock {
    pub(super) fn open() -> Result<RawSock> {
        // SAFETY: plain socket call; the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 4) };
        if fd < 0 {
            bail!(
                "opening a raw IPv6 socket of protocol 4: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        for (name, what) in [
            (libc::IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO"),
            (libc::IPV6_RECVTCLASS, "IPV6_RECVTCLASS"),
            (libc::IPV6_RECVHOPLIMIT, "IPV6_RECVHOPLIMIT"),
            (libc::IPV6_RECVERR, "IPV6_RECVERR"),
            // Send from the softwire address even when it is not configured locally.
            (libc::IPV6_TRANSPARENT, "IPV6_TRANSPARENT"),
        ] {
            setsockopt_int(raw, libc::IPPROTO_IPV6, name, 1)
                .with_context(|| format!("setting {what} on the raw socket"))?;
        }
        // Room for bursts of reassembled packets; the kernel counts what overflows.
        let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20);
        Ok(RawSock {
            fd,
            mtu: AtomicU64::new(0),
        })
    }

    pub(super) fn send(
        &self,
        payload: &[u8],
        src: &[u8; 16],
        dst: &[u8; 16],
        tclass: u8,
        hop: u8,
        mtu: u16,
    ) -> std::io::Result<()> {
        let fd = self.fd.as_raw_fd();
        let mtu = (mtu as u64).max(1280);
        if self.mtu.swap(mtu, Ordering::Relaxed) != mtu {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU, mtu as i32)?;
        }
        // SAFETY: zeroed sockaddr_in6 is valid.
        let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        to.sin6_family = libc::AF_INET6 as u16;
        to.sin6_addr.s6_addr = *dst;
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr { s6_addr: *src },
            ipi6_ifindex: 0,
        };
        let mut cbuf = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        };
        // SAFETY: zeroed msghdr is valid; every pointer below outlives the sendmsg call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut to as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        let info_bytes: [u8; std::mem::size_of::<libc::in6_pktinfo>()] =
            // SAFETY: in6_pktinfo is plain bytes (an address and an int).
            unsafe { std::mem::transmute(info) };
        let mut used = 0usize;
        for (ty, data) in [
            (libc::IPV6_PKTINFO, &info_bytes[..]),
            (libc::IPV6_TCLASS, &(tclass as i32).to_ne_bytes()[..]),
            (libc::IPV6_HOPLIMIT, &(hop as i32).to_ne_bytes()[..]),
        ] {
            // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations.
            let (space, clen) = unsafe {
                (
                    libc::CMSG_SPACE(data.len() as u32) as usize,
                    libc::CMSG_LEN(data.len() as u32) as usize,
                )
            };
            assert!(
                used + space <= std::mem::size_of_val(&cbuf),
                "control buffer size"
            );
            // SAFETY: `used + space` is within `cbuf` (asserted); cmsg headers are aligned
            // because `cbuf` is u64-aligned and CMSG_SPACE keeps that alignment.
            unsafe {
                let c = (cbuf.as_mut_ptr() as *mut u8).add(used) as *mut libc::cmsghdr;
                (*c).cmsg_level = libc::IPPROTO_IPV6;
                (*c).cmsg_type = ty;
                (*c).cmsg_len = clen as _;
                std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
            }
            used += space;
        }
        msg.msg_controllen = used as _;
        // SAFETY: `msg` is fully initialised above.
        let n = unsafe { libc::sendmsg(fd, &msg, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// One `recvmsg(flags)` without blocking: the byte count and the address in `msg_name`,
    /// calling `on_cmsg(type, data)` for each IPv6 control message.
    fn recv_with(
        &self,
        buf: &mut [u8],
        flags: i32,
        mut on_cmsg: impl FnMut(i32, *const u8),
    ) -> Option<(usize, [u8; 16])> {
        // SAFETY: zeroed sockaddr_in6 / msghdr are valid.
        let mut name: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut cbuf = [0u64; 32];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: `msg` points at buffers we own.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, flags | libc::MSG_DONTWAIT) };
        if n < 0 || msg.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        // SAFETY: walking the control messages the kernel wrote into `cbuf`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IPV6 {
                    on_cmsg((*c).cmsg_type, libc::CMSG_DATA(c));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Some((n as usize, name.sin6_addr.s6_addr))
    }

    /// One packet the kernel delivered (already reassembled), without blocking.
    pub(super) fn recv(&self, buf: &mut [u8]) -> Option<Received> {
        let (mut dst, mut tclass, mut hop_limit) = ([0u8; 16], 0u8, DEFAULT_HOP_LIMIT);
        let (n, src) = self.recv_with(buf, 0, |ty, d| {
            // SAFETY: the kernel wrote this control message's data at `d`.
            unsafe {
                match ty {
                    libc::IPV6_PKTINFO => {
                        let info: libc::in6_pktinfo = std::ptr::read_unaligned(d.cast());
                        dst = info.ipi6_addr.s6_addr;
                    }
                    libc::IPV6_TCLASS => tclass = std::ptr::read_unaligned(d.cast::<i32>()) as u8,
                    libc::IPV6_HOPLIMIT => {
                        hop_limit = std::ptr::read_unaligned(d.cast::<i32>()) as u8
                    }
                    _ => {}
                }
            }
        })?;
        (n > 0).then_some(Received {
            len: n,
            src,
            dst,
            tclass,
            hop_limit,
        })
    }

    /// One ICMPv6 error from the socket's error queue, without blocking.
    pub(super) fn recv_error(&self, buf: &mut [u8]) -> Option<IcmpErr> {
        loop {
            let mut ee: Option<libc::sock_extended_err> = None;
            let mut offender = [0u8; 16];
            let (n, peer) = self.recv_with(buf, libc::MSG_ERRQUEUE, |ty, d| {
                if ty == libc::IPV6_RECVERR {
                    // SAFETY: the kernel wrote a sock_extended_err at `d`, followed by the
                    // offender's sockaddr_in6 (SO_EE_OFFENDER) for ICMPv6 errors.
                    unsafe {
                        ee = Some(std::ptr::read_unaligned(d.cast()));
                        let off = d.add(std::mem::size_of::<libc::sock_extended_err>());
                        let sa: libc::sockaddr_in6 = std::ptr::read_unaligned(off.cast());
                        offender = sa.sin6_addr.s6_addr;
                    }
                }
            })?;
            // Not an ICMPv6 error (a local one): next.
            if let Some(e) = ee.filter(|e| e.ee_origin == SO_EE_ORIGIN_ICMP6) {
                return Some(IcmpErr {
                    len: n,
                    peer,
                    offender,
                    icmp_type: e.ee_type,
                    icmp_code: e.ee_code,
                });
            }
        }
    }
}
