//! Routing: `bpf_fib_lookup` (with a per-CPU next-hop cache) and `bpf_redirect`, and the
//! route MTU a "fragmentation needed" reports.

use core::mem::MaybeUninit;

use aya_ebpf::helpers::generated::bpf_fib_lookup;
use dslite_common::{
    maps::{next_hop_slot, NextHop, NextHopKey},
    proto::*,
    Counter,
};

use crate::{
    ctx::{Pkt, V_PASS},
    exit::{too_big, too_big_mtu, Exit, Res},
    maps::{count, NEXT_HOPS, NH_GEN},
    packet::{at, len},
    parse::restore_ttl,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

// enum bpf_fib_lookup return codes (include/uapi/linux/bpf.h).
const FIB_SUCCESS: i64 = 0;
const FIB_BLACKHOLE: i64 = 1;
const FIB_UNREACHABLE: i64 = 2;
const FIB_PROHIBIT: i64 = 3;
const FIB_NOT_FWDED: i64 = 4;
const FIB_FWD_DISABLED: i64 = 5;
const FIB_NO_NEIGH: i64 = 7;
const FIB_FRAG_NEEDED: i64 = 8;

/// `struct bpf_fib_lookup` flattened (64 bytes): the unions are written as the member we use.
/// 8-byte aligned so that it is zeroed with word stores ([`crate::zeroed`]).
#[repr(C, align(8))]
struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    /// In: packet length (for the MTU check). Out: MTU when FRAG_NEEDED.
    tot_len: u16,
    ifindex: u32,
    tos_flowinfo: u32,
    /// IPv4 uses the first 4 bytes.
    src: [u8; 16],
    dst: [u8; 16],
    vlan: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<FibParams>() == 64);

// SAFETY: integers and byte arrays.
unsafe impl crate::zeroed::Zeroable for FibParams {}

/// The lookup's inputs for a packet of `family` that came in on this context's interface, in
/// `slot`: zeroed, then the family, the length and the interface.
#[inline(always)]
fn fib_params<'a, C: Pkt>(
    ctx: &C,
    family: u8,
    slot: &'a mut MaybeUninit<FibParams>,
) -> &'a mut FibParams {
    let p = crate::zeroed::zeroed(slot);
    p.family = family;
    p.tot_len = fib_len(ctx);
    p.ifindex = ctx.ingress_ifindex();
    p
}

/// The length the FIB checks against the route's MTU: the L3 length, or 0 for a GSO packet
/// (tc only), for which the kernel checks only that the egress device takes GSO; its
/// segments are checked after routing ([`Pkt::segments_fit`]).
#[inline(always)]
fn fib_len<C: Pkt>(ctx: &C) -> u16 {
    if ctx.gso_size() != 0 {
        0
    } else {
        (len(ctx) - ETH_HLEN) as u16
    }
}

/// Route an IPv4 frame (IPv4 right after Ethernet) and redirect it; see [`fib_redirect`].
#[inline(never)]
pub fn redirect_v4<C: Pkt>(ctx: &C, src: &[u8; 4], dst: &[u8; 4]) -> Res<u32> {
    let mut slot = MaybeUninit::uninit();
    let p = fib_params(ctx, AF_INET, &mut slot);
    p.src[..4].copy_from_slice(src);
    p.dst[..4].copy_from_slice(dst);
    let mut action = fib_redirect(ctx, p)?;
    if too_big_mtu(action).is_some() {
        // Larger than the egress MTU. DF=0: the kernel forwards it and fragments it (RFC 4787
        // REQ-13a); DF=1 was answered before translation where an answer is due (AFTR).
        let h: *mut [u8; IPV4_MIN_HLEN] = at(ctx, ETH_HLEN, Counter::DropBadIpv4)?;
        // SAFETY: bounds-checked by `at`.
        if unsafe { (*h)[IPV4_FRAG_OFF] } & (IPV4_DF >> 8) as u8 != 0 {
            return Err(Exit::Drop(Counter::DropV4TooBig));
        }
        count(Counter::PassV4FragmentNeeded);
        action = V_PASS;
    }
    if action == V_PASS {
        // The kernel will forward it and spend a TTL itself: give back the one we spent,
        // or a packet arriving with TTL 2 would die in the kernel instead of being routed.
        restore_ttl(ctx)?;
    }
    Ok(action)
}

/// Benchmarks only: one FIB lookup for this frame's addresses (IPv4 if `v6` is false), as
/// the forwarding paths do it; returns the helper's result code.
#[cfg(feature = "bench")]
#[inline(always)]
pub fn fib_probe<C: Pkt>(ctx: &C, v6: bool, src: &[u8; 16], dst: &[u8; 16]) -> i64 {
    let mut slot = MaybeUninit::uninit();
    let p = fib_params(ctx, if v6 { AF_INET6 } else { AF_INET }, &mut slot);
    p.src = *src;
    p.dst = *dst;
    // SAFETY: `p` is a correctly sized `struct bpf_fib_lookup`.
    unsafe {
        bpf_fib_lookup(
            ctx.raw() as *mut _,
            p as *mut FibParams as *mut _,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    }
}

/// The MTU of the IPv4 route to `dst` if a packet of `tot_len` bytes exceeds it, else 0.
#[inline(never)]
pub fn v4_route_mtu<C: Pkt>(ctx: &C, dst: &[u8; 4], tot_len: u32) -> u32 {
    let mut slot = MaybeUninit::uninit();
    let p = fib_params(ctx, AF_INET, &mut slot);
    p.tot_len = tot_len as u16;
    p.dst[..4].copy_from_slice(dst);
    // SAFETY: `p` is a correctly sized `struct bpf_fib_lookup`.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.raw() as *mut _,
            p as *mut FibParams as *mut _,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == FIB_FRAG_NEEDED {
        p.tot_len as u32
    } else {
        0
    }
}

/// Route an IPv6 frame and redirect it; see [`fib_redirect`]. A packet larger than the
/// route's MTU is not sent: the result is [`too_big`] with the MTU.
#[inline(never)]
pub fn redirect_v6<C: Pkt>(ctx: &C, src: &[u8; 16], dst: &[u8; 16]) -> Res<u32> {
    let mut slot = MaybeUninit::uninit();
    let p = fib_params(ctx, AF_INET6, &mut slot);
    p.src = *src;
    p.dst = *dst;
    fib_redirect(ctx, p)
}

/// Route the frame with the kernel FIB and redirect it out of the egress interface. A
/// missing neighbour entry hands the packet to the kernel, which resolves the neighbour and
/// forwards it: later packets take the fast path. A packet larger than the egress MTU gives
/// [`too_big`] with the MTU for the caller to decide.
///
/// The FIB's answers are cached per CPU (`NEXT_HOPS`, direct-mapped): a lookup costs
/// 90-120 ns, more than half a path (docs/benchmarks.md). An entry is used while `NH_GEN` (bumped by the controller on
/// every route, neighbour, address or link change) is unchanged and the packet is no longer
/// than one the FIB let through.
#[inline(always)]
fn fib_redirect<C: Pkt>(ctx: &C, p: &mut FibParams) -> Res<u32> {
    let gen = NH_GEN.get(0).copied().unwrap_or(0);
    let key = NextHopKey {
        dst: p.dst,
        ifindex: p.ifindex,
        family: p.family,
        _pad: [0; 3],
    };
    let len = p.tot_len;
    let seed = NH_GEN.get(1).copied().unwrap_or(0);
    let slot = NEXT_HOPS.get_ptr_mut(next_hop_slot(&key, seed));
    if gen != 0 {
        if let Some(e) = slot {
            // SAFETY: map value pointer from the kernel (per-CPU: no writer but this CPU),
            // read in place: a copy would cost this frame 48 bytes, and it is the last one
            // of the hairpin's call chain (512 bytes for the whole chain).
            let (k, nh) = unsafe { (&(*e).key, &(*e).hop) };
            if nh.gen == gen && len <= nh.max_len && *k == key {
                if let Err(mtu) = ctx.segments_fit(nh.ifindex) {
                    return Ok(too_big(mtu));
                }
                let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropTruncatedEth)?;
                // SAFETY: bounds-checked by `at`.
                let eth = unsafe { &mut *eth };
                eth[0..6].copy_from_slice(&nh.dmac);
                eth[6..12].copy_from_slice(&nh.smac);
                count(Counter::NextHopCached);
                return Ok(ctx.redirect(nh.ifindex));
            }
        }
    }
    // SAFETY: `p` is a correctly sized `struct bpf_fib_lookup`.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.raw() as *mut _,
            p as *mut FibParams as *mut _,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc {
        FIB_SUCCESS => {
            if let Err(mtu) = ctx.segments_fit(p.ifindex) {
                return Ok(too_big(mtu));
            }
            let eth: *mut [u8; ETH_HLEN] = at(ctx, 0, Counter::DropTruncatedEth)?;
            // SAFETY: bounds-checked by `at`.
            let eth = unsafe { &mut *eth };
            eth[0..6].copy_from_slice(&p.dmac);
            eth[6..12].copy_from_slice(&p.smac);
            // A GSO packet was not checked against the route's MTU (`fib_len`): it says
            // nothing about the length a single packet may have.
            if let (Some(e), true) = (slot, gen != 0 && len != 0) {
                // SAFETY: as above; this CPU's slot, written in place (it may have held
                // another destination: that one asks the FIB next time). The generation
                // is written last and cleared first: a program that preempts this one on
                // this CPU (PREEMPT_RT) never sees a new key with an old hop.
                unsafe {
                    core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).hop.gen), 0);
                    (*e).key = key;
                    (*e).hop = NextHop {
                        ifindex: p.ifindex,
                        gen: 0,
                        dmac: p.dmac,
                        smac: p.smac,
                        max_len: len,
                        _pad: 0,
                    };
                    core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).hop.gen), gen);
                }
            }
            Ok(ctx.redirect(p.ifindex))
        }
        FIB_NO_NEIGH => {
            count(Counter::PassNoNeighbour);
            Ok(V_PASS)
        }
        FIB_NOT_FWDED | FIB_FWD_DISABLED => {
            count(Counter::PassFibNotForwarded);
            Ok(V_PASS)
        }
        FIB_BLACKHOLE | FIB_UNREACHABLE | FIB_PROHIBIT => {
            Err(Exit::Drop(Counter::DropFibUnreachable))
        }
        // `tot_len` now holds the MTU (`mtu_result` in the kernel's union).
        FIB_FRAG_NEEDED => Ok(too_big(p.tot_len as u32)),
        _ => Err(Exit::Drop(Counter::DropFibOther)),
    }
}
