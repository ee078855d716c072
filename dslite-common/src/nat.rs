//! NAT44 decisions that the kernel makes and the controller and tests must reproduce:
//! which pool address a softwire uses, and which outside ports a new mapping tries.

use crate::maps::NatOutKey;

/// How many outside ports a new mapping tries before the packet is dropped as exhausted.
/// Bounded so the XDP program stays verifiable and the first packet's cost is capped
/// (cilium uses 128 retries; einat 32).
pub const PORT_SEARCH_TRIES: u32 = 32;

/// Default outside port range (RFC 6056 suggests 1024-65535 for ephemeral ports).
pub const DEFAULT_PORT_LO: u16 = 1024;
pub const DEFAULT_PORT_HI: u16 = 65535;

/// 32-bit finaliser from MurmurHash3: cheap, no loops, good avalanche.
#[inline(always)]
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
const fn word(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Hash of the softwire and inside address only: selects the pool address, so every flow of
/// one inside host on one softwire uses the same public address ("paired" pooling,
/// RFC 4787 REQ-2, checklist 18).
#[inline(always)]
pub const fn pool_hash(b4: &[u8; 16], inside_addr: &[u8; 4], seed: u32) -> u32 {
    let mut h = seed ^ 0x9e37_79b9;
    h = mix32(h ^ word(b4, 0));
    h = mix32(h ^ word(b4, 4));
    h = mix32(h ^ word(b4, 8));
    h = mix32(h ^ word(b4, 12));
    mix32(h ^ word(inside_addr, 0))
}

/// Index into the pool for this softwire's inside host.
#[inline(always)]
pub const fn pool_index(key: &NatOutKey, seed: u32, pool_len: u32) -> u32 {
    if pool_len == 0 {
        return 0;
    }
    pool_hash(&key.b4, &key.inside_addr, seed) % pool_len
}

/// Starting point of the port search for a full mapping key (keyed by a secret seed, so
/// outside ports are not predictable from inside ports: RFC 6056, checklist 47).
#[inline(always)]
pub const fn port_hash(key: &NatOutKey, seed: u32) -> u32 {
    let h = pool_hash(&key.b4, &key.inside_addr, seed);
    mix32(h ^ (key.inside_port as u32) ^ ((key.proto as u32) << 16))
}

/// The `attempt`-th candidate outside port (host order) in `[lo, hi]`.
///
/// Candidates walk the range with an odd stride from a hashed start, so attempts never
/// repeat a port before covering `PORT_SEARCH_TRIES` distinct ones (for ranges larger than
/// that).
#[inline(always)]
pub const fn candidate_port(hash: u32, attempt: u32, lo: u16, hi: u16) -> u16 {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let span = (hi as u32) - (lo as u32) + 1;
    // Odd stride derived from the hash: co-prime with power-of-two spans, distinct otherwise
    // within the first tries because stride < span is enforced below.
    let stride = ((hash >> 16) | 1) % span;
    let stride = if stride == 0 { 1 } else { stride };
    let off = ((hash % span) as u64 + attempt as u64 * stride as u64) % span as u64;
    (lo as u32 + off as u32) as u16
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn key(b4_last: u8, port: u16) -> NatOutKey {
        let mut b4 = [0x20, 0x01, 0x0d, 0xb8, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        b4[15] = b4_last;
        NatOutKey {
            b4,
            inside_addr: [192, 168, 1, 10],
            inside_port: port.to_be(),
            proto: 17,
            _pad: 0,
        }
    }

    #[test]
    fn candidates_stay_in_range() {
        for h in [0u32, 1, 0xffff_ffff, 0x1234_5678, 0x8000_0000] {
            for (lo, hi) in [(1024u16, 65535u16), (2000, 2000), (5000, 5003), (0, 65535)] {
                for a in 0..PORT_SEARCH_TRIES {
                    let p = candidate_port(h, a, lo, hi);
                    assert!(p >= lo && p <= hi, "h={h:#x} a={a} {lo}-{hi} -> {p}");
                }
            }
        }
    }

    #[test]
    fn candidates_are_distinct_in_a_large_range() {
        for h in [0u32, 7, 0xdead_beef, 0xffff_ffff] {
            let mut seen = std::collections::HashSet::new();
            for a in 0..PORT_SEARCH_TRIES {
                assert!(
                    seen.insert(candidate_port(h, a, 1024, 65535)),
                    "h={h:#x} a={a}"
                );
            }
        }
    }

    #[test]
    fn small_range_is_fully_covered() {
        // A 4-port range: the search must reach every port, or exhaustion comes early.
        for h in [0u32, 1, 2, 3, 0xabcd_ef01] {
            let seen: std::collections::HashSet<u16> = (0..PORT_SEARCH_TRIES)
                .map(|a| candidate_port(h, a, 5000, 5003))
                .collect();
            assert_eq!(seen.len(), 4, "h={h:#x}");
        }
    }

    #[test]
    fn pool_choice_is_paired_per_inside_host() {
        // Different ports and protocols of one inside host on one softwire: one address.
        let a = key(2, 5000);
        let mut b = key(2, 6000);
        b.proto = 6;
        assert_eq!(pool_index(&a, 42, 4), pool_index(&b, 42, 4));
    }

    #[test]
    fn port_hash_depends_on_softwire() {
        // Same inside endpoint behind two B4s must not start the search at the same port.
        assert_ne!(port_hash(&key(2, 5000), 42), port_hash(&key(3, 5000), 42));
    }

    #[test]
    fn pool_index_handles_empty_pool() {
        assert_eq!(pool_index(&key(2, 1), 0, 0), 0);
    }
}
