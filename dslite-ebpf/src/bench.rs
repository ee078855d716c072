//! Benchmark programs (`cargo xtask bench`, cargo feature `bench`): a baseline and probes
//! that time the building blocks of the paths. The production object (`cargo xtask
//! build-ebpf`) is built without them.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::packet;

/// Benchmark baseline (`cargo xtask bench`): parse Ethernet and the IP header, swap the MAC
/// addresses and send the frame back (XDP_TX). The least a forwarding program does: the
/// per-path costs are reported against it.
#[xdp]
pub fn dslite_bench_baseline(ctx: XdpContext) -> u32 {
    let Some(eth) = packet::ptr_at::<[u8; 14], _>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let eth = unsafe { &mut *eth };
    let ok = match u16::from_be_bytes([eth[12], eth[13]]) {
        0x0800 => packet::ptr_at::<[u8; 20], _>(&ctx, 14).is_some(),
        0x86dd => packet::ptr_at::<[u8; 40], _>(&ctx, 14).is_some(),
        _ => false,
    };
    if !ok {
        return xdp_action::XDP_PASS;
    }
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&eth[0..6]);
    eth.copy_within(6..12, 0);
    eth[6..12].copy_from_slice(&dst);
    xdp_action::XDP_TX
}

/// Benchmark probes (`cargo xtask bench`): the building blocks of the paths, each alone, so
/// the per-path costs can be taken apart. Each returns XDP_DROP.
mod probes {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, maps::lpm_trie::Key, programs::XdpContext};

    use crate::{maps, packet::ptr_at};

    /// One IPv6 FIB lookup (with the MTU check) for the frame's IPv6 addresses.
    #[xdp]
    pub fn dslite_probe_fib6(ctx: XdpContext) -> u32 {
        let Some(h) = ptr_at::<[u8; 40], _>(&ctx, 14) else {
            return xdp_action::XDP_PASS;
        };
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        // SAFETY: bounds-checked by `ptr_at`.
        unsafe {
            src.copy_from_slice(&(&*h)[8..24]);
            dst.copy_from_slice(&(&*h)[24..40]);
        }
        crate::route::fib_probe(&ctx, true, &src, &dst);
        xdp_action::XDP_DROP
    }

    /// One IPv4 FIB lookup for the frame's IPv4 addresses.
    #[xdp]
    pub fn dslite_probe_fib4(ctx: XdpContext) -> u32 {
        let Some(h) = ptr_at::<[u8; 20], _>(&ctx, 14) else {
            return xdp_action::XDP_PASS;
        };
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        // SAFETY: bounds-checked by `ptr_at`.
        unsafe {
            src[..4].copy_from_slice(&(&*h)[12..16]);
            dst[..4].copy_from_slice(&(&*h)[16..20]);
        }
        crate::route::fib_probe(&ctx, false, &src, &dst);
        xdp_action::XDP_DROP
    }

    /// The lookups a packet pays before any work: the config arrays, an LPM trie (B4_ALLOW,
    /// 128-bit) and a counter update.
    #[xdp]
    pub fn dslite_probe_lookups(ctx: XdpContext) -> u32 {
        let _ = maps::AFTR_CONFIG.get(0);
        let _ = maps::SLOW_CONFIG.get(0);
        if let Some(h) = ptr_at::<[u8; 40], _>(&ctx, 14) {
            let mut src = [0u8; 16];
            // SAFETY: bounds-checked by `ptr_at`.
            unsafe { src.copy_from_slice(&(&*h)[8..24]) };
            let _ = maps::B4_ALLOW.get(Key::new(128, src));
        }
        maps::count(dslite_common::Counter::AftrOutPackets);
        xdp_action::XDP_DROP
    }
}
