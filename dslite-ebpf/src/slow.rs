//! Handing a packet to the controller's slow path (`dslite_common::slow`): prepend a
//! [`SlowMeta`] and redirect the frame into the controller's TAP device (XDP: through the
//! devmap SLOW_DEV; tc: `bpf_redirect`). The TAP's queue is
//! bounded (its txqueuelen); when it is full the kernel drops and counts (TAP tx_dropped).

use dslite_common::{
    slow::{
        SlowMeta, SLOW_ENCAP_FRAGMENT, SLOW_ICMP_REFUSAL, SLOW_MAGIC, SLOW_META_LEN,
        SLOW_TTL_EXPIRED,
    },
    Counter,
};

use crate::{
    ctx::{Pkt, V_REDIRECT},
    exit::{Exit, Res},
    maps::{count, SLOW_CONFIG},
    packet::at,
};

/// The controller's TAP device, or 0.
#[inline(always)]
pub fn slow_ifindex() -> u32 {
    SLOW_CONFIG.get(0).map_or(0, |c| c.ifindex)
}

/// The configured tunnel MTU (largest outer IPv6 packet), or 0 for "the route's".
#[inline(always)]
pub fn tunnel_mtu() -> u32 {
    SLOW_CONFIG.get(0).map_or(0, |c| c.tunnel_mtu)
}

/// True when this packet is one the slow path wrote back.
#[inline(always)]
pub fn from_slow_path<C: Pkt>(ctx: &C) -> bool {
    let ingress = ctx.ingress_ifindex();
    let tap = slow_ifindex();
    tap != 0 && ingress == tap
}

/// Hand the whole frame to the controller with `reason` (`SLOW_*`) and, for
/// [`SLOW_ENCAP_FRAGMENT`], the MTU to fragment to.
#[inline(always)]
pub fn to_controller<C: Pkt>(ctx: &C, reason: u8, mtu: u32) -> Res<u32> {
    hand_over(ctx, reason, mtu, 0, 0)
}

/// Hand a refused softwire packet to the controller, which answers it with this ICMP error
/// ([`SLOW_ICMP_REFUSAL`]).
#[inline(always)]
pub fn to_controller_icmp<C: Pkt>(ctx: &C, icmp_type: u8, icmp_code: u8, mtu: u16) -> Res<u32> {
    hand_over(ctx, SLOW_ICMP_REFUSAL, mtu as u32, icmp_type, icmp_code)
}

#[inline(always)]
fn hand_over<C: Pkt>(ctx: &C, reason: u8, mtu: u32, icmp_type: u8, icmp_code: u8) -> Res<u32> {
    let tap = slow_ifindex();
    if tap == 0 {
        return Err(Exit::Drop(Counter::DropSlowPathUnavailable));
    }
    let ingress = ctx.ingress_ifindex();
    if ctx.gso_size() != 0 {
        // A GSO aggregate (tc only) cannot cross the TAP with a header in front of it, and
        // the slow path's work (fragments, ICMP) is per packet.
        return Err(Exit::Drop(Counter::DropGsoSlowPath));
    }
    ctx.push_front(SLOW_META_LEN as u32)?;
    let m: *mut SlowMeta = at(ctx, 0, Counter::DropAdjustHead)?;
    // SAFETY: bounds-checked by `at` after the head moved.
    unsafe {
        (*m).magic = SLOW_MAGIC;
        (*m).reason = reason;
        (*m).icmp_type = icmp_type;
        (*m).mtu = mtu.min(u16::MAX as u32) as u16;
        (*m).ingress = ingress;
        (*m).icmp_code = icmp_code;
        (*m)._pad = [0; 3];
    }
    let action = ctx.to_tap(tap);
    if action != V_REDIRECT {
        return Err(Exit::Drop(Counter::DropSlowPathUnavailable));
    }
    count(match reason {
        SLOW_ENCAP_FRAGMENT => Counter::SlowEncapFragment,
        SLOW_TTL_EXPIRED => Counter::SlowTtlExpired,
        SLOW_ICMP_REFUSAL => Counter::SlowIcmpRefusal,
        _ => Counter::SlowV4Fragment,
    });
    Ok(action)
}
