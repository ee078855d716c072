//! IPv4: header validation, and the TTL edits (the B4 and the AFTR are router hops).

use dslite_common::{proto::*, Counter};

use crate::{
    ctx::Pkt,
    exit::{Exit, Res},
    packet::{at, ptr_at, read16},
};

/// The fields of a validated IPv4 header that the programs use.
#[derive(Default)]
#[repr(C)]
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

// SAFETY: integers, bools and byte arrays; `usize` fields make it 8-byte aligned.
unsafe impl crate::zeroed::Zeroable for Ipv4 {}

/// The IPv4 address at constant offset `$off` of a header array already read: a macro, so
/// the bytes are read exactly as if written out (a function returning the array changed
/// the generated code).
macro_rules! addr4 {
    ($h:expr, $off:expr) => {
        [$h[$off], $h[$off + 1], $h[$off + 2], $h[$off + 3]]
    };
}
pub(crate) use addr4;

/// Validate the IPv4 header at `off`: version 4, IHL >= 5, total length covering the header
/// and within the `avail` bytes that enclose it (the frame, or the outer IPv6 payload).
#[inline(always)]
pub fn ipv4<C: Pkt>(ctx: &C, off: usize, avail: usize, ip: &mut Ipv4) -> Res<()> {
    let hdr: *mut [u8; IPV4_MIN_HLEN] = at(ctx, off, Counter::DropBadIpv4)?;
    // SAFETY: bounds-checked by `at`.
    let h = unsafe { &*hdr };
    let hlen = ((h[0] & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([h[IPV4_TOT_LEN_OFF], h[IPV4_TOT_LEN_OFF + 1]]) as usize;
    if h[0] >> 4 != 4 || hlen < IPV4_MIN_HLEN || tot_len < hlen || tot_len > avail {
        return Err(Exit::Drop(Counter::DropBadIpv4));
    }
    let frag = u16::from_be_bytes([h[IPV4_FRAG_OFF], h[IPV4_FRAG_OFF + 1]]);
    ip.off = off;
    ip.hlen = hlen;
    ip.tot_len = tot_len;
    ip.tos = h[1];
    ip.ttl = h[IPV4_TTL_OFF];
    ip.proto = h[IPV4_PROTO_OFF];
    ip.fragment = frag & (IPV4_MF | IPV4_OFFSET_MASK) != 0;
    ip.df = frag & IPV4_DF != 0;
    ip.src = addr4!(h, IPV4_SRC_OFF);
    ip.dst = addr4!(h, IPV4_DST_OFF);
    Ok(())
}

/// The length one IPv4 packet of `ip` (whose header is now at `at`) has on the wire: its
/// total length, or for a GSO packet (tc only) that of one segment, its headers and
/// `gso_size` bytes of payload: the kernel cuts the aggregate after us, and MTUs limit the
/// segments, not the aggregate.
#[inline(always)]
pub fn wire_len<C: Pkt>(ctx: &C, ip: &Ipv4, at: usize) -> usize {
    let gso = ctx.gso_size() as usize;
    if gso == 0 {
        return ip.tot_len;
    }
    let l4_hlen = match ip.proto {
        IPPROTO_TCP => match ptr_at::<[u8; TCP_MIN_LEN], _>(ctx, at + ip.hlen) {
            // SAFETY: bounds-checked by `ptr_at`.
            Some(t) => ((unsafe { (*t)[TCP_DOFF_OFF] } >> 4) as usize) * 4,
            None => TCP_MIN_LEN,
        },
        IPPROTO_UDP => UDP_LEN,
        _ => 0,
    };
    ip.hlen + l4_hlen + gso
}

/// Decrement the IPv4 TTL (the B4 and the AFTR each act as a router: RFC 2473 §3,
/// RFC 4213 §3.3), updating the header checksum incrementally.
#[inline(always)]
pub fn decrement_ttl<C: Pkt>(ctx: &C, ip: &Ipv4) -> Res<()> {
    if ip.ttl <= 1 {
        return Err(Exit::Drop(Counter::DropTtlExceeded));
    }
    let h: *mut [u8; IPV4_MIN_HLEN] = at(ctx, ip.off, Counter::DropBadIpv4)?;
    // SAFETY: bounds-checked by `at`.
    let h = unsafe { &mut *h };
    let check = read16(h[IPV4_CSUM_OFF..].as_ptr());
    h[IPV4_TTL_OFF] = ip.ttl - 1;
    let new = dslite_common::csum::ttl_decrement(check, ip.ttl, ip.proto);
    crate::packet::write16(h[IPV4_CSUM_OFF..].as_mut_ptr(), new);
    Ok(())
}

/// Add one to the TTL of the IPv4 header after Ethernet (checksum updated incrementally).
#[inline(always)]
pub fn restore_ttl<C: Pkt>(ctx: &C) -> Res<()> {
    let h: *mut [u8; IPV4_MIN_HLEN] = at(ctx, ETH_HLEN, Counter::DropBadIpv4)?;
    // SAFETY: bounds-checked by `at`.
    let h = unsafe { &mut *h };
    set_ttl(h, h[IPV4_TTL_OFF].wrapping_add(1));
    Ok(())
}

/// Set the TTL of the IPv4 header `h` to `ttl`, updating the header checksum incrementally
/// (RFC 1624).
#[inline(always)]
pub fn set_ttl(h: &mut [u8; IPV4_MIN_HLEN], ttl: u8) {
    let old = u16::from_ne_bytes([h[IPV4_TTL_OFF], h[IPV4_TTL_OFF + 1]]);
    h[IPV4_TTL_OFF] = ttl;
    let c = dslite_common::csum::replace2(
        read16(h[IPV4_CSUM_OFF..].as_ptr()),
        old,
        u16::from_ne_bytes([h[IPV4_TTL_OFF], h[IPV4_TTL_OFF + 1]]),
    );
    crate::packet::write16(h[IPV4_CSUM_OFF..].as_mut_ptr(), c);
}
