//! IPv6, with the extension-header walk a softwire needs (RFC 2473 §4.1.1): finds the
//! inner IPv4 packet of a softwire.

use dslite_common::{proto::*, Counter};

use crate::{
    ctx::Pkt,
    exit::{Exit, Res},
    packet::{at, len},
};

/// An IPv6 packet after the extension-header walk. Parsers fill caller-owned structs
/// (out-parameters) rather than returning them: that keeps copies off the 512-byte stack.
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

// SAFETY: integers, a bool and byte arrays: all-zero is valid (false, 0). Zeroed through
// `crate::zeroed`, never `Default`: LLVM makes a zeroed `Softwire` a byte-loop `memset`
// when its fields are used in certain ways (it did, +35 ns, once the B4 check moved).
unsafe impl crate::zeroed::Zeroable for Softwire {}

/// Parse the IPv6 header at offset 14 and walk at most `MAX_EXT_HEADERS` hop-by-hop or
/// destination-options headers (RFC 2473 §4.1.1: a Tunnel Encapsulation Limit option, as
/// Linux ip6tnl and OpenWrt B4s send by default).
#[inline(always)]
pub fn ipv6<C: Pkt>(ctx: &C, sw: &mut Softwire) -> Res<()> {
    let ip6: *mut [u8; IPV6_HLEN] = at(ctx, ETH_HLEN, Counter::DropBadIpv6)?;
    // SAFETY: bounds-checked by `at`.
    let h = unsafe { &*ip6 };
    if h[0] >> 4 != 6 {
        return Err(Exit::Drop(Counter::DropBadIpv6));
    }
    let payload_len = u16::from_be_bytes([h[IPV6_PLEN_OFF], h[IPV6_PLEN_OFF + 1]]) as usize;
    let outer_len = IPV6_HLEN + payload_len;
    // Jumbograms (payload length 0) are not softwire traffic; a payload longer than the frame
    // is malformed. Trailing bytes (Ethernet padding) are allowed.
    if ETH_HLEN + outer_len > len(ctx) {
        return Err(Exit::Drop(Counter::DropBadIpv6));
    }
    sw.outer_len = outer_len;
    let mut next = h[IPV6_NEXT_OFF];
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
        core::ptr::copy_nonoverlapping(base.add(IPV6_SRC_OFF), sw.src.as_mut_ptr(), 16);
        core::ptr::copy_nonoverlapping(base.add(IPV6_DST_OFF), sw.dst.as_mut_ptr(), 16);
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
