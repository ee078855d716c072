//! Handing a packet to the controller's slow path (`dslite_common::slow`): prepend a
//! [`SlowMeta`] and redirect the frame into the controller's TAP device. The TAP's queue is
//! bounded (its txqueuelen); when it is full the kernel drops and counts (TAP tx_dropped).

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_head, programs::XdpContext,
};
use dslite_common::{
    slow::{SlowMeta, SLOW_ENCAP_FRAGMENT, SLOW_MAGIC, SLOW_META_LEN, SLOW_TTL_EXPIRED},
    Counter,
};

use crate::{
    exit::{Exit, Res},
    maps::{count, SLOW_CONFIG, SLOW_DEV},
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
pub fn from_slow_path(ctx: &XdpContext) -> bool {
    // SAFETY: reading the ingress ifindex from the context.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let tap = slow_ifindex();
    tap != 0 && ingress == tap
}

/// Hand the whole frame to the controller with `reason` (`SLOW_*`) and, for
/// [`SLOW_ENCAP_FRAGMENT`], the MTU to fragment to.
#[inline(always)]
pub fn to_controller(ctx: &XdpContext, reason: u8, mtu: u32) -> Res<u32> {
    let tap = slow_ifindex();
    if tap == 0 {
        return Err(Exit::Drop(Counter::DropSlowPathUnavailable));
    }
    // SAFETY: reading the ingress ifindex from the context.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: the helper checks the headroom itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(SLOW_META_LEN as i32)) } != 0 {
        return Err(Exit::Drop(Counter::DropAdjustHead));
    }
    let m: *mut SlowMeta = at(ctx, 0, Counter::DropAdjustHead)?;
    // SAFETY: bounds-checked by `at` after the head moved.
    unsafe {
        (*m).magic = SLOW_MAGIC;
        (*m).reason = reason;
        (*m)._pad = 0;
        (*m).mtu = mtu.min(u16::MAX as u32) as u16;
        (*m).ingress = ingress;
        (*m)._pad2 = 0;
    }
    // Through the devmap: an entry the kernel removed with its TAP fails here, counted.
    if SLOW_DEV.redirect(0, 0) != Ok(xdp_action::XDP_REDIRECT) {
        return Err(Exit::Drop(Counter::DropSlowPathUnavailable));
    }
    let action = xdp_action::XDP_REDIRECT;
    count(match reason {
        SLOW_ENCAP_FRAGMENT => Counter::SlowEncapFragment,
        SLOW_TTL_EXPIRED => Counter::SlowTtlExpired,
        _ => Counter::SlowV4Fragment,
    });
    Ok(action)
}
