//! The upper-layer field the NAT translates: a TCP or UDP port, or an ICMP echo
//! identifier (RFC 5508 §3.1), checked before any mapping is made for it.

use dslite_common::{proto::*, Counter};

use crate::{
    ctx::Pkt,
    exit::{Exit, Res},
    packet::{at, read16},
    parse::Ipv4,
};

/// Where the NAT reads and writes in the upper-layer header. The offsets inside the header
/// are bytes: this struct lives in `from_b4`'s frame, on the NAT search's call chain.
#[derive(Clone, Copy, Default)]
pub struct L4 {
    pub off: usize,
    /// Offset of the port (or ICMP identifier) the NAT rewrites, from `off`.
    pub port_off: u8,
    pub csum_off: u8,
    pub port: u16,
    /// TCP flags byte (0 for UDP and ICMP).
    pub tcp_flags: u8,
}

/// Locate the translatable field: the source port (outbound) or destination port (inbound)
/// of TCP/UDP, or the ICMP echo identifier (RFC 5508 §3.1, REQ-1).
#[inline(always)]
pub fn l4<C: Pkt>(ctx: &C, ip: &Ipv4, outbound: bool, l: &mut L4) -> Res<()> {
    let off = ip.off + ip.hlen;
    let (need, port_off, csum_off) = match ip.proto {
        IPPROTO_TCP => (TCP_MIN_LEN, if outbound { 0 } else { 2 }, TCP_CSUM_OFF),
        IPPROTO_UDP => (UDP_LEN, if outbound { 0 } else { 2 }, UDP_CSUM_OFF),
        IPPROTO_ICMP => (ICMP_MIN_LEN, 4, ICMP_CSUM_OFF),
        _ => return Err(Exit::Drop(Counter::DropUnsupportedProto)),
    };
    if ip.tot_len < ip.hlen + need {
        return Err(Exit::Drop(Counter::DropBadL4));
    }
    let h: *mut [u8; ICMP_MIN_LEN] = at(ctx, off, Counter::DropBadL4)?;
    let mut tcp_flags = 0;
    let l4_len = ip.tot_len - ip.hlen;
    if ip.proto == IPPROTO_TCP {
        let t: *mut [u8; TCP_MIN_LEN] = at(ctx, off, Counter::DropBadL4)?;
        // SAFETY: bounds-checked by `at`.
        let (flags, data_off) = unsafe {
            (
                (*t)[TCP_FLAGS_OFF],
                (((*t)[TCP_DOFF_OFF] >> 4) as usize) * 4,
            )
        };
        // The header must be a header (RFC 9293 §3.1): no mapping for garbage.
        if data_off < TCP_MIN_LEN || data_off > l4_len {
            return Err(Exit::Drop(Counter::DropBadL4));
        }
        tcp_flags = flags;
    } else if ip.proto == IPPROTO_UDP {
        // SAFETY: bounds-checked by `at` (8 bytes).
        let udp_len =
            unsafe { u16::from_be_bytes([(*h)[UDP_LEN_OFF], (*h)[UDP_LEN_OFF + 1]]) } as usize;
        // A first fragment carries only part of the datagram its length counts.
        if udp_len < UDP_LEN || (udp_len > l4_len && !ip.fragment) {
            return Err(Exit::Drop(Counter::DropBadL4));
        }
    }
    // SAFETY: bounds-checked by `at` (8 bytes: enough for ports, ICMP type and id).
    let h = unsafe { &*h };
    if ip.proto == IPPROTO_ICMP {
        let want = if outbound {
            ICMP_ECHO_REQUEST
        } else {
            ICMP_ECHO_REPLY
        };
        if h[0] != want {
            return Err(Exit::Drop(Counter::DropIcmpType));
        }
    }
    l.off = off;
    l.port_off = port_off as u8;
    l.csum_off = csum_off as u8;
    l.port = read16(h[port_off..].as_ptr());
    l.tcp_flags = tcp_flags;
    Ok(())
}
