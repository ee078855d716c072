//! Which packets the AFTR accepts: the ingress interface, B4 sources (RFC 6333 §11),
//! reserved sources and denied destinations, and the NAT's filtering of inbound packets by
//! the remotes each mapping sent to (EIF/ADF/APDF, RFC 4787 REQ-8).

use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key};
use dslite_common::{
    maps::{AftrConfig, PeerKey, B4_DENY},
    nat::{filter_mode, FILTER_APDF, FILTER_EIF},
    proto::*,
    Counter,
};

use crate::{
    aftr::parsed::FromB4,
    ctx::Pkt,
    exit::{Exit, Res},
    maps::{count, may_match, B4_ALLOW, DENY_HINT, DENY_V4, EEXIST, NAT_OUT, PEERS},
    packet::read16,
    parse::{Ipv4, L4},
    slow::from_slow_path,
};

/// True when the packet came in on `want` (0: any), or from the slow path's TAP.
#[inline(always)]
pub fn on_interface<C: Pkt>(ctx: &C, want: u32) -> bool {
    let ingress = ctx.ingress_ifindex();
    want == 0 || ingress == want || from_slow_path(ctx)
}

/// A softwire's source must be in `B4_ALLOW` (RFC 6333 §11), not one of the AFTR host's own
/// addresses (the controller adds those as denying /128 entries), and the packet must have
/// come in on the tunnel interface.
#[inline(always)]
pub fn source_allowed<C: Pkt>(ctx: &C, cfg: &AftrConfig, src: &[u8; 16]) -> Res<()> {
    from_tunnel(ctx, cfg)?;
    b4_allowed(src)
}

/// The interface half of [`source_allowed`]: the packet came in on the tunnel interface.
#[inline(always)]
pub fn from_tunnel<C: Pkt>(ctx: &C, cfg: &AftrConfig) -> Res<()> {
    if !on_interface(ctx, cfg.tunnel_ifindex) {
        return Err(Exit::Drop(Counter::DropWrongInterface));
    }
    Ok(())
}

/// The prefix half of [`source_allowed`] (a 128-bit LPM lookup, ~15 ns). A packet of an
/// established mapping skips it: its B4 passed it when the mapping was made, and the
/// controller releases the mappings of a B4 that stops passing it (a reload removing its
/// prefix, the host taking its address) before anything else.
#[inline(always)]
pub fn b4_allowed(src: &[u8; 16]) -> Res<()> {
    match b4_verdict(src) {
        B4_NOT_ALLOWED => Err(Exit::Drop(Counter::DropB4NotAllowed)),
        B4_LOCAL => Err(Exit::Drop(Counter::DropB4SourceLocal)),
        _ => Ok(()),
    }
}

const B4_OK: u32 = 0;
const B4_NOT_ALLOWED: u32 = 1;
const B4_LOCAL: u32 = 2;

/// [`b4_allowed`]'s lookup, a BPF call of its own: its 20-byte key stays off the frame of
/// `from_b4`, which is on the NAT search's call chain (512 bytes of stack for all of it).
#[inline(never)]
fn b4_verdict(src: &[u8; 16]) -> u32 {
    match B4_ALLOW.get(Key::new(128, *src)) {
        None => B4_NOT_ALLOWED,
        Some(v) if *v == B4_DENY => B4_LOCAL,
        Some(_) => B4_OK,
    }
}

/// Sources no internet packet may have (RFC 6890): "this network", loopback, the IETF
/// protocol assignments (an outsider posing as the AFTR's 192.0.0.1), multicast, reserved
/// and broadcast. The kernel would drop them when routing; XDP forwards first, so it checks.
#[inline(always)]
pub fn reserved_source(src: &[u8; 4]) -> bool {
    src[0] == 0 || src[0] == 127 || src[0] >= 224 || (src[0] == 192 && src[1] == 0 && src[2] == 0)
}

/// 1 if a subscriber may send to `dst` (RFC 6333 §6.1 gives the AFTR a host's duties too:
/// nothing a subscriber sends reaches the AFTR's own stack, special-purpose ranges
/// (RFC 6890) or the operator's `--deny-destination` ranges).
#[inline(never)]
pub fn destination_allowed(dst: &[u8; 4]) -> u32 {
    if !may_match(&DENY_HINT, dst) {
        return 1;
    }
    DENY_V4.get(Key::new(32, *dst)).is_none() as u32
}

/// Remember the remote this mapping sends to, when its protocol's filtering depends on it
/// (RFC 4787 REQ-8): the address, and the port too for address-and-port-dependent
/// filtering. A known remote's timestamp is refreshed (the sweep expires remotes by it); a
/// new one is recorded only while the mapping has fewer than `max_peers`, so one mapping
/// cannot fill the table.
#[inline(never)]
pub fn note_peer<C: Pkt>(ctx: &C, cfg: &AftrConfig, p: &FromB4, out_port: u32) {
    let mode = filter_mode(cfg.filter_modes, p.ip.proto);
    if mode == FILTER_EIF {
        return;
    }
    let mut remote_port = 0;
    if mode == FILTER_APDF && p.ip.proto != IPPROTO_ICMP {
        if let Some(d) = crate::packet::ptr_at::<[u8; 4], _>(ctx, p.l4.off) {
            remote_port = read16((d as *const u8).wrapping_add(2));
        }
    }
    let key = PeerKey {
        outside_addr: p.out_addr,
        outside_port: out_port as u16,
        proto: p.ip.proto,
        _pad: 0,
        remote_addr: p.ip.dst,
        remote_port,
        _pad2: 0,
    };
    // SAFETY: plain helper call.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
    if let Some(ts) = PEERS.get_ptr_mut(&key) {
        // SAFETY: map value pointer from the kernel. Written at most once a second: the
        // sweep's resolution, and no cache-line bouncing between CPUs on every packet.
        unsafe {
            if now.saturating_sub(*ts) > 1_000_000_000 {
                *ts = now;
            }
        }
        return;
    }
    let Some(v) = NAT_OUT.get_ptr_mut(&p.key) else {
        return;
    };
    // SAFETY: map value pointer from the kernel. The count is approximate under races (no
    // atomics); the sweep recounts it.
    unsafe {
        if cfg.max_peers != 0 && (*v).peers as u16 >= cfg.max_peers {
            count(Counter::PeerLimitRefused);
            return;
        }
        match PEERS.insert(&key, &now, BPF_NOEXIST as u64) {
            Ok(()) => (*v).peers = (*v).peers.saturating_add(1),
            Err(EEXIST) => {}
            Err(_) => count(Counter::PeerLimitRefused),
        }
    }
}

/// 1 if a packet from `key.remote_*` to the mapping at `key.outside_*` passes its
/// protocol's filtering: always under endpoint-independent filtering, else only from a
/// remote the mapping has sent to (the port is ignored under address-dependent filtering).
#[inline(never)]
pub fn peer_known(cfg: &AftrConfig, key: &mut PeerKey) -> u32 {
    let mode = filter_mode(cfg.filter_modes, key.proto);
    if mode == FILTER_EIF {
        return 1;
    }
    if mode != FILTER_APDF || key.proto == IPPROTO_ICMP {
        key.remote_port = 0;
    }
    PEERS.get_ptr(key).is_some() as u32
}

/// 1 if an inbound packet passes its protocol's filtering (see [`peer_known`]).
#[inline(never)]
pub fn peer_allowed<C: Pkt>(ctx: &C, cfg: &AftrConfig, ip: &Ipv4, l4: &L4) -> u32 {
    let mut remote_port = 0;
    if ip.proto != IPPROTO_ICMP {
        let Some(s) = crate::packet::ptr_at::<[u8; 2], _>(ctx, l4.off) else {
            return 0;
        };
        remote_port = read16(s as *const u8);
    }
    let mut key = PeerKey {
        outside_addr: ip.dst,
        outside_port: l4.port,
        proto: ip.proto,
        _pad: 0,
        remote_addr: ip.src,
        remote_port,
        _pad2: 0,
    };
    peer_known(cfg, &mut key)
}
