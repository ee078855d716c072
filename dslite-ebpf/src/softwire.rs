//! Softwire encapsulation and decapsulation (RFC 6333 §5.2, §6.2): an IPv4 packet in an
//! IPv6 one, and the tail of every path into a softwire.

use dslite_common::{proto::*, slow::SLOW_ENCAP_FRAGMENT, Counter};

use crate::{
    ctx::Pkt,
    exit::{too_big_mtu, Res},
    packet::at,
    parse::{wire_len, Ipv4},
    route::redirect_v6,
};

/// Strip `hdr_len` bytes of outer headers that follow the Ethernet header (IPv6 + extension
/// headers), keeping the Ethernet addresses and setting the EtherType to IPv4.
///
/// The functions here are real BPF calls (`inline(never)`): they run after the NAT decision,
/// so their stack frames never add to the NAT search's (the verifier allows 512 bytes for
/// the deepest call chain).
#[inline(never)]
pub fn decapsulate<C: Pkt>(ctx: &C, hdr_len: usize, inner_len: usize) -> Res<()> {
    ctx.decap_room(hdr_len as u32, inner_len as u32)?;
    set_ethertype(ctx, ETH_P_IP)
}

#[inline(always)]
fn set_ethertype<C: Pkt>(ctx: &C, ty: u16) -> Res<()> {
    let t: *mut [u8; 2] = at(ctx, ETH_TYPE_OFF, Counter::DropAdjustHead)?;
    // SAFETY: bounds-checked by `at`.
    unsafe { *t = ty.to_be_bytes() };
    Ok(())
}

/// What the outer IPv6 header takes from the inner packet and the configuration.
pub struct Outer {
    pub inner_tos: u8,
    pub inner_len: u16,
    pub hop_limit: u8,
}

impl Outer {
    /// The outer header for the IPv4 packet `ip`.
    #[inline(always)]
    pub fn of(ip: &Ipv4, hop_limit: u8) -> Outer {
        Outer {
            inner_tos: ip.tos,
            inner_len: ip.tot_len as u16,
            hop_limit,
        }
    }
}

/// Prepend an IPv6 header (RFC 6333 §5.2/§6.2) in front of the IPv4 packet that starts
/// right after the Ethernet header; the Ethernet addresses are kept for now and the
/// EtherType becomes IPv6.
#[inline(never)]
pub fn encapsulate<C: Pkt>(ctx: &C, o: &Outer, src: &[u8; 16], dst: &[u8; 16]) -> Res<()> {
    ctx.encap_room(IPV6_HLEN as u32)?;
    write_outer(ctx, o, src, dst)
}

/// Write the Ethernet type and the outer IPv6 header of a softwire packet whose IPv4 packet
/// starts `IPV6_HLEN` bytes after the Ethernet header.
#[inline(always)]
fn write_outer<C: Pkt>(ctx: &C, o: &Outer, src: &[u8; 16], dst: &[u8; 16]) -> Res<()> {
    set_ethertype(ctx, ETH_P_IPV6)?;
    let ip6: *mut [u8; IPV6_HLEN] = at(ctx, ETH_HLEN, Counter::DropAdjustHead)?;
    // SAFETY: bounds-checked by `at`.
    unsafe {
        write_softwire_ipv6_header(&mut *ip6, o.inner_tos, o.inner_len, o.hop_limit, src, dst)
    };
    Ok(())
}

/// Turn a softwire packet whose outer header is a plain 40 bytes (no extension headers) into
/// one from `src` to `dst` with its IPv4 packet (`ip`, already rewritten) in place: for
/// answers and hairpins that go back down a softwire. On tc this is the only way: a
/// decapsulated GRO aggregate stays marked as tunnelled on Linux 6.18, so encapsulating it
/// again fails.
#[inline(never)]
pub fn re_address<C: Pkt>(ctx: &C, o: &Outer, src: &[u8; 16], dst: &[u8; 16]) -> Res<()> {
    write_outer(ctx, o, src, dst)
}

/// Encapsulate the IPv4 packet `ip` (right after Ethernet) toward `dst` and send it: the
/// common tail of every path into a softwire. An outer packet larger than the tunnel MTU or
/// the route's MTU goes to the slow path, which sends it as IPv6 fragments: the inner IPv4
/// packet is never fragmented (RFC 6333 §5.3/§6.3).
#[inline(always)]
pub fn encapsulate_and_send<C: Pkt>(
    ctx: &C,
    ip: &Ipv4,
    hop_limit: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> Res<u32> {
    encapsulate(ctx, &Outer::of(ip, hop_limit), src, dst)?;
    crate::exit::bench_stage!(9);
    send(ctx, ip, src, dst)
}

/// Send the IPv4 packet `ip` of a softwire packet (already rewritten) back down a softwire,
/// from `src` to `dst`: the outer header rewritten in place when it has no extension headers
/// ([`re_address`]), else replaced.
#[inline(always)]
pub fn send_back<C: Pkt>(
    ctx: &C,
    ip: &Ipv4,
    hop_limit: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> Res<u32> {
    if ip.off == ETH_HLEN + IPV6_HLEN {
        re_address(ctx, &Outer::of(ip, hop_limit), src, dst)?;
        return send(ctx, ip, src, dst);
    }
    decapsulate(ctx, ip.off - ETH_HLEN, ip.tot_len)?;
    encapsulate_and_send(ctx, ip, hop_limit, src, dst)
}

/// Send a softwire packet whose outer header is written: to the slow path when it is larger
/// than the tunnel MTU or the route's MTU, which sends it as IPv6 fragments (RFC 6333
/// §5.3/§6.3); else routed.
#[inline(always)]
pub fn send<C: Pkt>(ctx: &C, ip: &Ipv4, src: &[u8; 16], dst: &[u8; 16]) -> Res<u32> {
    let tunnel_mtu = crate::slow::tunnel_mtu();
    // The IPv4 header is right after the outer one by now.
    if tunnel_mtu != 0 && (IPV6_HLEN + wire_len(ctx, ip, ETH_HLEN + IPV6_HLEN)) as u32 > tunnel_mtu
    {
        return crate::slow::to_controller(ctx, SLOW_ENCAP_FRAGMENT, tunnel_mtu);
    }
    let action = redirect_v6(ctx, src, dst)?;
    if let Some(mtu) = too_big_mtu(action) {
        return crate::slow::to_controller(ctx, SLOW_ENCAP_FRAGMENT, mtu);
    }
    Ok(action)
}
