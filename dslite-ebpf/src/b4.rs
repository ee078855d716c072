//! B4 (RFC 6333 §5): IPv4 from the LAN goes into the softwire toward the AFTR; softwire
//! packets from the AFTR come out toward the LAN. No NAT here (RFC 6333 §4).

use aya_ebpf::{bindings::xdp_action, maps::lpm_trie::Key};
use dslite_common::{maps::B4Config, proto::*, slow::SLOW_TTL_EXPIRED, Counter};

use crate::{
    ctx::Pkt,
    exit::{bench_stage, Exit, Res},
    maps::{count, count_n, may_match, B4_CONFIG, LOCAL_HINT, LOCAL_V4},
    packet::len,
    parse::{decrement_ttl, ethernet, ipv4, ipv6, Ipv4, Softwire, L3},
    route::redirect_v4,
    slow::{from_slow_path, to_controller},
    softwire::{decapsulate, encapsulate_and_send},
};

#[inline(always)]
pub fn run<C: Pkt>(ctx: &C) -> Res<u32> {
    let cfg = match B4_CONFIG.get(0) {
        Some(c) if c.enabled != 0 => *c,
        _ => {
            // Cold path (only before the controller wrote the config): safe to log.
            aya_log_ebpf::warn!(ctx, "dslite_b4: packet before configuration, dropped");
            return Err(Exit::Drop(Counter::DropNotConfigured));
        }
    };
    let ingress = ctx.ingress_ifindex();
    // The slow path's TAP plays both sides: it writes back reassembled softwire packets
    // (IPv6, as from the WAN) and the router's own IPv4 from 192.0.0.2 (as from the LAN).
    match ethernet(ctx)? {
        L3::V4 if ingress == cfg.lan_ifindex || from_slow_path(ctx) => from_lan(ctx, &cfg),
        L3::V4 => Err(Exit::Pass(Counter::PassNotSoftwire)),
        L3::V6 if ingress == cfg.wan_ifindex || from_slow_path(ctx) => from_wan(ctx, &cfg),
        L3::V6 => {
            // Native IPv6 from the LAN: the kernel routes it; we only count it.
            count(Counter::NativeV6OutPackets);
            count_n(Counter::NativeV6OutBytes, (len(ctx) - ETH_HLEN) as u64);
            Ok(xdp_action::XDP_PASS)
        }
    }
}

/// LAN -> softwire (RFC 6333 §5.2).
#[inline(always)]
fn from_lan<C: Pkt>(ctx: &C, cfg: &B4Config) -> Res<u32> {
    let mut ip = Ipv4::default();
    ipv4(ctx, ETH_HLEN, len(ctx) - ETH_HLEN, &mut ip)?;
    bench_stage!(1);
    if may_match(&LOCAL_HINT, &ip.dst) && LOCAL_V4.get(Key::new(32, ip.dst)).is_some() {
        return Err(Exit::Pass(Counter::PassLocalV4));
    }
    if ip.ttl <= 1 && !from_slow_path(ctx) {
        // The B4 is a router hop: the slow path answers with a Time Exceeded from 192.0.0.2.
        return to_controller(ctx, SLOW_TTL_EXPIRED, 0);
    }
    bench_stage!(2);
    decrement_ttl(ctx, &ip)?;
    if ip.proto == IPPROTO_TCP && cfg.mss != 0 {
        crate::mss::clamp(ctx, ip.off + ip.hlen, cfg.mss);
    }
    bench_stage!(3);
    let outer_len = (IPV6_HLEN + ip.tot_len) as u64;
    let action = encapsulate_and_send(ctx, &ip, cfg.hop_limit, &cfg.b4_addr, &cfg.aftr_addr)?;
    count(Counter::B4EncapPackets);
    count_n(Counter::B4EncapBytes, outer_len);
    Ok(action)
}

/// Softwire -> LAN (RFC 6333 §5.2), and native IPv6 accounting.
#[inline(always)]
fn from_wan<C: Pkt>(ctx: &C, cfg: &B4Config) -> Res<u32> {
    let mut sw_slot = core::mem::MaybeUninit::uninit();
    let sw: &mut Softwire = crate::zeroed::zeroed(&mut sw_slot);
    let parsed = ipv6(ctx, sw);
    if let Err(Exit::Pass(Counter::PassIpv6Fragment)) = parsed {
        // Only the AFTR's fragments to the softwire address may fill the kernel's
        // reassembly memory (the addresses are in the fixed header).
        if sw.dst == cfg.b4_addr && sw.src != cfg.aftr_addr {
            return Err(Exit::Drop(Counter::DropNotFromAftr));
        }
    }
    parsed?;
    if !sw.is_softwire || sw.dst != cfg.b4_addr {
        if from_slow_path(ctx) {
            // Written back by the slow path, yet not for the softwire: passing it up would
            // hand it to the raw socket again.
            return Err(Exit::Drop(Counter::DropSlowLoop));
        }
        return native_in(sw.outer_len);
    }
    // Only the configured AFTR may inject IPv4 into this LAN.
    if sw.src != cfg.aftr_addr {
        return Err(Exit::Drop(Counter::DropNotFromAftr));
    }
    let mut ip = Ipv4::default();
    ipv4(ctx, sw.inner_off, sw.inner_avail, &mut ip)?;
    decrement_ttl(ctx, &ip)?;
    if ip.proto == IPPROTO_TCP && cfg.mss != 0 {
        crate::mss::clamp(ctx, ip.off + ip.hlen, cfg.mss);
    }
    decapsulate(ctx, sw.inner_off - ETH_HLEN, ip.tot_len)?;
    let action = redirect_v4(ctx, &ip.src, &ip.dst)?;
    count(Counter::B4DecapPackets);
    count_n(Counter::B4DecapBytes, sw.outer_len as u64);
    Ok(action)
}

#[inline(always)]
fn native_in(outer_len: usize) -> Res<u32> {
    count(Counter::NativeV6InPackets);
    count_n(Counter::NativeV6InBytes, outer_len as u64);
    Ok(xdp_action::XDP_PASS)
}
