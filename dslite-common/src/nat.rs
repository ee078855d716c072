//! NAT44 decisions that the kernel makes and the controller and tests must reproduce:
//! which pool address a softwire uses, and which outside ports a new mapping tries.

use crate::maps::NatOutKey;

/// How many ports a new mapping tries inside one block before moving to the softwire's
/// next block. Bounded so the XDP program stays verifiable and the first packet's cost is
/// capped (cilium uses 128 retries; einat 32).
pub const PORT_SEARCH_TRIES: u32 = 16;
/// Most port blocks one softwire can hold (the `--max-blocks` ceiling).
pub const MAX_BLOCKS: u32 = 8;
/// Public addresses tried for a softwire's first block (its hashed one, then the next).
pub const ADDR_TRIES: u32 = 4;
/// Blocks tried per address when a softwire needs a new block.
pub const BLOCK_TRIES: u32 = 8;
/// Smallest block (ports).
pub const MIN_BLOCK_SIZE: u16 = 16;
/// Default block size and count (RFC 6888 REQ-4 limits; a 512-port block is common PBA).
pub const DEFAULT_BLOCK_SIZE: u16 = 512;
pub const DEFAULT_MAX_BLOCKS: u8 = 4;

/// Filtering behaviours (RFC 4787 §5, REQ-8): endpoint-independent (the default),
/// address-dependent, address-and-port-dependent.
pub const FILTER_EIF: u8 = 0;
pub const FILTER_ADF: u8 = 1;
pub const FILTER_APDF: u8 = 2;

/// The filtering mode for `proto` from the packed per-protocol modes.
pub const fn filter_mode(modes: u8, proto: u8) -> u8 {
    match proto {
        crate::proto::IPPROTO_UDP => modes & 3,
        crate::proto::IPPROTO_TCP => (modes >> 2) & 3,
        crate::proto::IPPROTO_ICMP => (modes >> 4) & 3,
        _ => FILTER_EIF,
    }
}

/// Pack per-protocol modes for `AftrConfig::filter_modes`.
pub const fn filter_modes(udp: u8, tcp: u8, icmp: u8) -> u8 {
    (udp & 3) | (tcp & 3) << 2 | (icmp & 3) << 4
}

// TCP flags seen on a mapping (RFC 7857 §2 state, checklist 33).
pub const TCP_SYN_OUT: u8 = 1;
pub const TCP_SYN_IN: u8 = 2;
pub const TCP_FIN_OUT: u8 = 4;
pub const TCP_FIN_IN: u8 = 8;
pub const TCP_RST: u8 = 16;

/// A TCP mapping is established once SYNs went both ways and neither a RST nor FINs in
/// both directions have been seen since; otherwise it is transitory (RFC 5382 REQ-5).
pub const fn tcp_established(state: u8) -> bool {
    state & (TCP_SYN_OUT | TCP_SYN_IN) == (TCP_SYN_OUT | TCP_SYN_IN)
        && state & TCP_RST == 0
        && state & (TCP_FIN_OUT | TCP_FIN_IN) != (TCP_FIN_OUT | TCP_FIN_IN)
}

/// The state bits a TCP segment adds, from its flags byte (offset 13 of the header).
pub const fn tcp_bits(flags: u8, outbound: bool) -> u8 {
    let mut b = 0;
    if flags & 0x02 != 0 {
        b |= if outbound { TCP_SYN_OUT } else { TCP_SYN_IN };
    }
    if flags & 0x01 != 0 {
        b |= if outbound { TCP_FIN_OUT } else { TCP_FIN_IN };
    }
    if flags & 0x04 != 0 {
        b |= TCP_RST;
    }
    b
}

/// First port of block `block` (host order).
#[inline(always)]
pub const fn block_first_port(block: u16, port_lo: u16, block_size: u16) -> u16 {
    port_lo.wrapping_add(block.wrapping_mul(block_size))
}

/// Block number of a port (host order), or `None` outside the block range.
pub const fn block_of(
    port: u16,
    port_lo: u16,
    block_size: u16,
    blocks_per_addr: u16,
) -> Option<u16> {
    if port < port_lo || block_size == 0 {
        return None;
    }
    let b = (port - port_lo) / block_size;
    if b >= blocks_per_addr {
        None
    } else {
        Some(b)
    }
}

/// Hash of the softwire only: picks its first address and blocks.
#[inline(always)]
pub const fn softwire_hash(b4: &[u8; 16], seed: u32) -> u32 {
    pool_hash(b4, &[0, 0, 0, 0], seed)
}

/// The `attempt`-th candidate port inside a block, keeping the parity of the inside port
/// (RFC 4787 REQ-4, checklist 20; the block itself keeps the 0-1023 / 1024+ class when the
/// range does) and starting at a keyed-hash offset (RFC 6056, checklist 47).
#[inline(always)]
pub const fn candidate_in_block(
    hash: u32,
    attempt: u32,
    first: u16,
    block_size: u16,
    parity: u16,
) -> u16 {
    let half = (block_size / 2) as u32;
    let half = if half == 0 { 1 } else { half };
    // Odd stride over the half-block: distinct for the first `half` attempts when `half` is
    // a power of two.
    let stride = (hash >> 16) | 1;
    let slot = (hash.wrapping_add(attempt.wrapping_mul(stride))) % half;
    first.wrapping_add((slot * 2) as u16 + (parity & 1))
}

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

/// Starting point of the port search for a full mapping key (keyed by a secret seed, so
/// outside ports are not predictable from inside ports: RFC 6056, checklist 47).
#[inline(always)]
pub const fn port_hash(key: &NatOutKey, seed: u32) -> u32 {
    let h = pool_hash(&key.b4, &key.inside_addr, seed);
    mix32(h ^ (key.inside_port as u32) ^ ((key.proto as u32) << 16))
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
    fn block_candidates_stay_in_block_and_keep_parity() {
        for h in [0u32, 1, 0xffff_ffff, 0x1234_5678, 0x8000_0000] {
            for bs in [16u16, 64, 512, 4096] {
                let first = block_first_port(3, 1024, bs);
                for parity in [0u16, 1] {
                    for a in 0..PORT_SEARCH_TRIES {
                        let p = candidate_in_block(h, a, first, bs, parity);
                        assert!(p >= first && p < first + bs, "h={h:#x} bs={bs} -> {p}");
                        assert_eq!(p & 1, (first + parity) & 1, "parity kept");
                    }
                }
            }
        }
    }

    #[test]
    fn block_candidates_are_distinct() {
        for h in [0u32, 7, 0xdead_beef, 0xffff_ffff] {
            let mut seen = std::collections::HashSet::new();
            for a in 0..PORT_SEARCH_TRIES {
                assert!(
                    seen.insert(candidate_in_block(h, a, 1024, 512, 0)),
                    "h={h:#x} a={a}"
                );
            }
            // A 16-port block has 8 ports of each parity: the first 8 attempts cover them.
            let all: std::collections::HashSet<u16> = (0..8)
                .map(|a| candidate_in_block(h, a, 2048, 16, 1))
                .collect();
            assert_eq!(all.len(), 8);
        }
    }

    #[test]
    fn block_math_round_trips() {
        for b in 0..126u16 {
            let first = block_first_port(b, 1024, 512);
            assert_eq!(block_of(first, 1024, 512, 126), Some(b));
            assert_eq!(block_of(first + 511, 1024, 512, 126), Some(b));
        }
        assert_eq!(block_of(1023, 1024, 512, 126), None);
        assert_eq!(block_of(65535, 1024, 512, 126), Some(125));
        assert_eq!(
            block_of(65535, 1024, 1000, 64),
            None,
            "the tail past the last block"
        );
    }

    #[test]
    fn filter_modes_pack_per_protocol() {
        let m = filter_modes(FILTER_ADF, FILTER_EIF, FILTER_APDF);
        assert_eq!(filter_mode(m, crate::proto::IPPROTO_UDP), FILTER_ADF);
        assert_eq!(filter_mode(m, crate::proto::IPPROTO_TCP), FILTER_EIF);
        assert_eq!(filter_mode(m, crate::proto::IPPROTO_ICMP), FILTER_APDF);
        assert_eq!(filter_mode(m, 47), FILTER_EIF);
    }

    #[test]
    fn tcp_state_machine() {
        let syn_out = tcp_bits(0x02, true);
        let synack_in = tcp_bits(0x12, false);
        assert!(!tcp_established(syn_out), "a lone SYN is transitory");
        assert!(tcp_established(syn_out | synack_in));
        assert!(
            !tcp_established(syn_out | synack_in | tcp_bits(0x04, false)),
            "RST"
        );
        let fin_out = tcp_bits(0x11, true);
        assert!(
            tcp_established(syn_out | synack_in | fin_out),
            "half-closed stays open"
        );
        assert!(!tcp_established(
            syn_out | synack_in | fin_out | tcp_bits(0x11, false)
        ));
    }

    #[test]
    fn port_hash_depends_on_softwire() {
        // Same inside endpoint behind two B4s must not start the search at the same port.
        assert_ne!(port_hash(&key(2, 5000), 42), port_hash(&key(3, 5000), 42));
    }
}
