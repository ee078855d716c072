//! IPv4 fragments (RFC 4787 REQ-14): per-subscriber budgets, and the chains of fragments
//! from the internet that a first fragment opened.

use dslite_common::{
    bucket,
    maps::{AftrConfig, FragBudget, FragKey, NatInKey},
    nat::subscriber_of,
    proto::*,
    Counter,
};

use crate::{
    aftr::filter::peer_allowed,
    ctx::Pkt,
    exit::{Code, Exit},
    maps::{FRAG_BUDGET, FRAG_CHAINS, NAT_IN},
    packet::read16,
    parse::{l4, Ipv4, L4},
};

/// Most fragments one chain from the internet may pass: a 64 KiB datagram in 1280-byte
/// fragments needs 52.
const MAX_FRAGMENTS_PER_CHAIN: u64 = 64;

/// Take one token from `key`'s fragment bucket (`frag_per_sec` per second, that burst);
/// 1 if the fragment may go on. A BPF call: the bucket's temporaries stay off the callers'
/// frames.
#[inline(never)]
fn fragment_budget(key: &[u8; 16], cfg: &AftrConfig) -> u32 {
    let rate = cfg.frag_per_sec as u64;
    if rate == 0 {
        return 1;
    }
    // SAFETY: plain helper call.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
    let Some(b) = FRAG_BUDGET.get_ptr_mut(key) else {
        let fresh = FragBudget {
            tokens: cfg.frag_per_sec - 1,
            _pad: 0,
            refill_ns: now,
        };
        // A full LRU evicts its oldest bucket: a flood of sources cannot refuse new ones.
        let _ = FRAG_BUDGET.insert(key, &fresh, 0);
        return 1;
    };
    // SAFETY: map value pointer from the kernel. Not atomic: two CPUs may share a token.
    let b = unsafe { &mut *b };
    bucket::take(&mut b.tokens, &mut b.refill_ns, rate, now) as u32
}

/// The subscriber's fragment budget, by its B4 address.
#[inline(never)]
pub fn subscriber_fragment_budget(b4: &[u8; 16], cfg: &AftrConfig) -> u32 {
    let sub = subscriber_of(b4, &cfg.subscriber_mask);
    fragment_budget(&sub, cfg)
}

/// A fragment from the internet to a pool address (RFC 4787 REQ-14): the first one goes to
/// reassembly only if its ports match a mapping (and its filter), and opens a chain; a later
/// one only if a first one opened its chain. Everything else is dropped here, before it
/// costs the slow path anything.
#[inline(never)]
pub fn inbound_fragment<C: Pkt>(ctx: &C, cfg: &AftrConfig, ip: &Ipv4) -> Code {
    let Some(h) = crate::packet::ptr_at::<[u8; IPV4_MIN_HLEN], _>(ctx, ip.off) else {
        return Exit::Drop(Counter::DropBadIpv4).into();
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let h = unsafe { &*h };
    let (id, frag) = (
        read16(h[IPV4_ID_OFF..].as_ptr()),
        u16::from_be_bytes([h[IPV4_FRAG_OFF], h[IPV4_FRAG_OFF + 1]]),
    );
    let key = FragKey {
        src: ip.src,
        dst: ip.dst,
        id,
        proto: ip.proto,
        _pad: 0,
    };
    if frag & IPV4_OFFSET_MASK != 0 {
        let Some(n) = FRAG_CHAINS.get_ptr_mut(&key) else {
            return Exit::Drop(Counter::DropOrphanFragment).into();
        };
        // SAFETY: map value pointer from the kernel.
        unsafe {
            if *n >= MAX_FRAGMENTS_PER_CHAIN {
                return Exit::Drop(Counter::DropFragmentBudget).into();
            }
            *n += 1;
        }
        return Code::OK;
    }
    // The first fragment carries the ports: find the mapping as for a whole packet.
    let mut l4v = L4::default();
    if let Err(e) = l4(ctx, ip, false, &mut l4v) {
        return e.into();
    }
    let kin = NatInKey {
        outside_addr: ip.dst,
        outside_port: l4v.port,
        proto: ip.proto,
        _pad: 0,
    };
    let Some(m) = NAT_IN.get_ptr(&kin) else {
        return Exit::Drop(Counter::DropOrphanFragment).into();
    };
    if cfg.filter_modes != 0 && peer_allowed(ctx, cfg, ip, &l4v) == 0 {
        return Exit::Drop(Counter::DropFiltered).into();
    }
    // SAFETY: map value pointer from the kernel.
    let b4 = unsafe { (*m).b4 };
    if subscriber_fragment_budget(&b4, cfg) == 0 {
        return Exit::Drop(Counter::DropFragmentBudget).into();
    }
    let _ = FRAG_CHAINS.insert(&key, &1, 0);
    Code::OK
}
