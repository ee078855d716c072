//! Header parsing shared by both roles: Ethernet dispatch, IPv6 (with the extension-header
//! walk a softwire needs), and IPv4 validation.

use aya_ebpf::programs::XdpContext;
use dslite_common::{proto::*, Counter};

use crate::{
    exit::{Exit, Res},
    packet::{at, len, read16},
};

/// What the Ethernet header says.
pub enum L3 {
    V4,
    V6,
}

/// Classify the frame; everything that is not plain IPv4/IPv6 goes to the kernel, counted.
#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Res<L3> {
    let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropTruncatedEth)?;
    // SAFETY: bounds-checked by `at`.
    let ty = u16::from_be(read16(unsafe { (*eth).as_ptr().add(12) }));
    match ty {
        ETH_P_IP => Ok(L3::V4),
        ETH_P_IPV6 => Ok(L3::V6),
        ETH_P_8021Q | ETH_P_8021AD => Err(Exit::Pass(Counter::PassVlan)),
        _ => Err(Exit::Pass(Counter::PassNotIp)),
    }
}

/// An IPv6 packet after the extension-header walk. Parsers fill caller-owned structs
/// (out-parameters) rather than returning them: that keeps copies off the 512-byte stack.
#[derive(Default)]
pub struct Softwire {
    /// Next header 4 after the walk (otherwise native IPv6: ND, ping6, ...).
    pub is_softwire: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Offset of the inner IPv4 header from the start of the frame.
    pub inner_off: usize,
    /// Bytes from `inner_off` to the end of the IPv6 payload.
    pub inner_avail: usize,
    /// Length of the whole outer IPv6 packet (header + payload).
    pub outer_len: usize,
}

/// Parse the IPv6 header at offset 14 and walk at most `MAX_EXT_HEADERS` hop-by-hop or
/// destination-options headers (RFC 2473 §4.1.1: a Tunnel Encapsulation Limit option, as
/// Linux ip6tnl and OpenWrt B4s send by default, checklist item 5).
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, sw: &mut Softwire) -> Res<()> {
    let ip6: *mut [u8; IPV6_HLEN] = at(ctx, ETH_HLEN, Counter::DropBadIpv6)?;
    // SAFETY: bounds-checked by `at`.
    let h = unsafe { &*ip6 };
    if h[0] >> 4 != 6 {
        return Err(Exit::Drop(Counter::DropBadIpv6));
    }
    let payload_len = u16::from_be_bytes([h[4], h[5]]) as usize;
    let outer_len = IPV6_HLEN + payload_len;
    // Jumbograms (payload length 0) are not softwire traffic; a payload longer than the frame
    // is malformed. Trailing bytes (Ethernet padding) are allowed.
    if ETH_HLEN + outer_len > len(ctx) {
        return Err(Exit::Drop(Counter::DropBadIpv6));
    }
    sw.outer_len = outer_len;
    let mut next = h[6];
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        if next != IPPROTO_HOPOPTS && next != IPPROTO_DSTOPTS {
            break;
        }
        let ext: *mut [u8; 2] = at(ctx, off, Counter::DropBadIpv6Ext)?;
        // SAFETY: bounds-checked by `at`.
        let (nh, hlen) = unsafe { ((*ext)[0], ((*ext)[1] as usize + 1) * 8) };
        // A hop-by-hop header may only come first (RFC 8200 §4.1).
        if nh == IPPROTO_HOPOPTS {
            return Err(Exit::Drop(Counter::DropBadIpv6Ext));
        }
        if hlen > MAX_EXT_HEADER_LEN {
            return Err(Exit::Pass(Counter::PassIpv6ExtHeader));
        }
        off += hlen;
        if off > ETH_HLEN + outer_len {
            return Err(Exit::Drop(Counter::DropBadIpv6Ext));
        }
        next = nh;
        i += 1;
    }
    // Addresses are copied last, straight into the caller's struct: read earlier, their 32
    // bytes would stay live across the walk above and spill a byte per stack slot.
    let ip6: *mut [u8; IPV6_HLEN] = at(ctx, ETH_HLEN, Counter::DropBadIpv6)?;
    // SAFETY: bounds-checked by `at`; the source and destination do not overlap.
    unsafe {
        let base = ip6 as *const u8;
        core::ptr::copy_nonoverlapping(base.add(8), sw.src.as_mut_ptr(), 16);
        core::ptr::copy_nonoverlapping(base.add(24), sw.dst.as_mut_ptr(), 16);
    }
    match next {
        IPPROTO_IPIP => {
            sw.is_softwire = true;
            sw.inner_off = off;
            sw.inner_avail = ETH_HLEN + outer_len - off;
            Ok(())
        }
        IPPROTO_FRAGMENT => Err(Exit::Pass(Counter::PassIpv6Fragment)),
        IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING => {
            Err(Exit::Pass(Counter::PassIpv6ExtHeader))
        }
        _ => Ok(()),
    }
}

/// The fields of a validated IPv4 header that the programs use.
#[derive(Default)]
pub struct Ipv4 {
    pub off: usize,
    pub hlen: usize,
    pub tot_len: usize,
    pub tos: u8,
    pub ttl: u8,
    pub proto: u8,
    /// More-fragments set or a non-zero fragment offset.
    pub fragment: bool,
    /// Don't Fragment.
    pub df: bool,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// Validate the IPv4 header at `off`: version 4, IHL >= 5, total length covering the header
/// and within the `avail` bytes that enclose it (the frame, or the outer IPv6 payload).
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, off: usize, avail: usize, ip: &mut Ipv4) -> Res<()> {
    let hdr: *mut [u8; IPV4_MIN_HLEN] = at(ctx, off, Counter::DropBadIpv4)?;
    // SAFETY: bounds-checked by `at`.
    let h = unsafe { &*hdr };
    let hlen = ((h[0] & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if h[0] >> 4 != 4 || hlen < IPV4_MIN_HLEN || tot_len < hlen || tot_len > avail {
        return Err(Exit::Drop(Counter::DropBadIpv4));
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    ip.off = off;
    ip.hlen = hlen;
    ip.tot_len = tot_len;
    ip.tos = h[1];
    ip.ttl = h[8];
    ip.proto = h[9];
    ip.fragment = frag & (IPV4_MF | IPV4_OFFSET_MASK) != 0;
    ip.df = frag & IPV4_DF != 0;
    ip.src = [h[12], h[13], h[14], h[15]];
    ip.dst = [h[16], h[17], h[18], h[19]];
    Ok(())
}

/// Decrement the IPv4 TTL (the B4 and the AFTR each act as a router: RFC 2473 §3,
/// checklist item 9), updating the header checksum incrementally.
#[inline(always)]
pub fn decrement_ttl(ctx: &XdpContext, ip: &Ipv4) -> Res<()> {
    if ip.ttl <= 1 {
        return Err(Exit::Drop(Counter::DropTtlExceeded));
    }
    let h: *mut [u8; IPV4_MIN_HLEN] = at(ctx, ip.off, Counter::DropBadIpv4)?;
    // SAFETY: bounds-checked by `at`.
    let h = unsafe { &mut *h };
    let check = read16(h[10..].as_ptr());
    h[8] = ip.ttl - 1;
    let new = dslite_common::csum::ttl_decrement(check, ip.ttl, ip.proto);
    crate::packet::write16(h[10..].as_mut_ptr(), new);
    Ok(())
}
