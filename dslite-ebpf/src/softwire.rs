//! Softwire encapsulation and decapsulation (RFC 6333 §5.2, §6.2): an IPv4 packet in an
//! IPv6 one, and the tail of every path into a softwire.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use dslite_common::{proto::*, slow::SLOW_ENCAP_FRAGMENT, Counter};

use crate::{
    exit::{too_big_mtu, Exit, Res},
    packet::at,
    parse::Ipv4,
    route::redirect_v6,
};

/// Strip `hdr_len` bytes of outer headers that follow the Ethernet header (IPv6 + extension
/// headers), keeping the Ethernet addresses and setting the EtherType to IPv4.
///
/// The functions here are real BPF calls (`inline(never)`): they run after the NAT decision,
/// so their stack frames never add to the NAT search's (the verifier allows 512 bytes for
/// the deepest call chain).
#[inline(never)]
pub fn decapsulate(ctx: &XdpContext, hdr_len: usize) -> Res<()> {
    let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropTruncatedEth)?;
    // SAFETY: bounds-checked by `at`.
    let mut saved = unsafe { *eth };
    // SAFETY: the helper checks the new head against the frame itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, hdr_len as i32) } != 0 {
        return Err(Exit::Drop(Counter::DropAdjustHead));
    }
    let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropAdjustHead)?;
    saved[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    // SAFETY: re-checked after the head moved.
    unsafe { *eth = saved };
    Ok(())
}

/// What the outer IPv6 header takes from the inner packet and the configuration.
pub struct Outer {
    pub inner_tos: u8,
    pub inner_len: u16,
    pub hop_limit: u8,
}

/// Prepend an IPv6 header (RFC 6333 §5.2/§6.2) in front of the IPv4 packet that starts
/// right after the Ethernet header; the Ethernet addresses are kept for now and the
/// EtherType becomes IPv6.
#[inline(never)]
pub fn encapsulate(ctx: &XdpContext, o: &Outer, src: &[u8; 16], dst: &[u8; 16]) -> Res<()> {
    let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropTruncatedEth)?;
    // SAFETY: bounds-checked by `at`.
    let mut saved = unsafe { *eth };
    // SAFETY: the helper checks the headroom itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV6_HLEN as i32)) } != 0 {
        return Err(Exit::Drop(Counter::DropAdjustHead));
    }
    let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropAdjustHead)?;
    let ip6: *mut [u8; IPV6_HLEN] = at(ctx, ETH_HLEN, Counter::DropAdjustHead)?;
    saved[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    // SAFETY: re-checked after the head moved.
    unsafe {
        *eth = saved;
        write_softwire_ipv6_header(&mut *ip6, o.inner_tos, o.inner_len, o.hop_limit, src, dst);
    }
    Ok(())
}

/// Encapsulate the IPv4 packet `ip` (right after Ethernet) toward `dst` and send it: the
/// common tail of every path into a softwire. An outer packet larger than the tunnel MTU or
/// the route's MTU goes to the slow path, which sends it as IPv6 fragments: the inner IPv4
/// packet is never fragmented (RFC 6333 §5.3/§6.3).
#[inline(always)]
pub fn encapsulate_and_send(
    ctx: &XdpContext,
    ip: &Ipv4,
    hop_limit: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> Res<u32> {
    let o = Outer {
        inner_tos: ip.tos,
        inner_len: ip.tot_len as u16,
        hop_limit,
    };
    encapsulate(ctx, &o, src, dst)?;
    let tunnel_mtu = crate::slow::tunnel_mtu();
    if tunnel_mtu != 0 && (IPV6_HLEN + ip.tot_len) as u32 > tunnel_mtu {
        return crate::slow::to_controller(ctx, SLOW_ENCAP_FRAGMENT, tunnel_mtu);
    }
    let action = redirect_v6(ctx, src, dst)?;
    if let Some(mtu) = too_big_mtu(action) {
        return crate::slow::to_controller(ctx, SLOW_ENCAP_FRAGMENT, mtu);
    }
    Ok(action)
}
