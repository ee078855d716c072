//! NAT44 decisions that the kernel makes and the controller and tests must reproduce:
//! which pool address a softwire uses, and which outside ports a new mapping tries.

use crate::maps::NatOutKey;

/// How many ports a new mapping tries inside one block before moving to the softwire's
/// next block. Bounded so the XDP program stays verifiable and the first packet's cost is
/// capped (cilium uses 128 retries; einat 32).
pub const PORT_SEARCH_TRIES: u32 = 16;
/// Most port blocks one softwire can hold (the `--max-blocks` ceiling).
pub const MAX_BLOCKS: u32 = 8;
/// Addresses tried for a subscriber's first block: its hashed one, then ones the sweep saw
/// free blocks on.
pub const ADDR_TRIES: u32 = 4;
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

// TCP flags seen on a mapping (RFC 7857 §2 state).
pub const TCP_SYN_OUT: u8 = 1;
pub const TCP_SYN_IN: u8 = 2;
pub const TCP_FIN_OUT: u8 = 4;
pub const TCP_FIN_IN: u8 = 8;
pub const TCP_RST: u8 = 16;
/// The inside host sent a segment after a SYN came in: the handshake is its own doing, not
/// an outsider's (RFC 7857 §2.1: a half-open mapping is not established by inbound
/// packets alone).
pub const TCP_CONFIRMED: u8 = 32;

/// A TCP mapping is established once SYNs went both ways and the inside host answered the
/// inbound one, and neither a RST (since the last packet) nor FINs in both directions have
/// been seen; otherwise it is transitory (RFC 5382 REQ-5, RFC 7857 §2.1).
pub const fn tcp_established(state: u8) -> bool {
    let want = TCP_SYN_OUT | TCP_SYN_IN | TCP_CONFIRMED;
    state & want == want
        && state & TCP_RST == 0
        && state & (TCP_FIN_OUT | TCP_FIN_IN) != (TCP_FIN_OUT | TCP_FIN_IN)
}

/// A mapping's TCP state after a segment that adds `bits` ([`tcp_bits`]) in direction
/// `outbound`. A RST makes the mapping transitory only until the next segment without one
/// (RFC 7857 §2.2: four minutes after a RST, unless traffic shows the connection lives):
/// so an outsider's RST cannot shorten a live connection's timeout for good. An outbound
/// segment after an inbound SYN confirms the handshake.
pub const fn tcp_next_state(state: u8, bits: u8, outbound: bool) -> u8 {
    let mut s = state | bits;
    if bits & TCP_RST == 0 {
        s &= !TCP_RST;
    }
    if outbound && state & TCP_SYN_IN != 0 {
        s |= TCP_CONFIRMED;
    }
    s
}

/// The subscriber mask for `--subscriber-prefix-len` (RFC 7785 §3).
pub const fn subscriber_mask(len: u8) -> [u8; 16] {
    let mut m = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bits = len as i32 - (i as i32) * 8;
        m[i] = if bits >= 8 {
            0xff
        } else if bits <= 0 {
            0
        } else {
            0xffu8 << (8 - bits)
        };
        i += 1;
    }
    m
}

/// The subscriber a B4 address belongs to: the address under the mask.
#[inline(always)]
pub const fn subscriber_of(b4: &[u8; 16], mask: &[u8; 16]) -> [u8; 16] {
    // Four word ANDs, no loop: the BPF verifier walks every iteration of a loop.
    let a = u128::from_ne_bytes(*b4) & u128::from_ne_bytes(*mask);
    a.to_ne_bytes()
}

/// The unit of XDP's coarse stamps ([`stamp_epoch`], [`full_epoch`]): 2^30 ns (1.07 s),
/// a power of two so the fast path shifts instead of dividing.
pub const EPOCH_NS: u64 = 1 << 30;

/// A coarse time stamp of `now_ns` (monotonic), in [`EPOCH_NS`] units, for "did this
/// happen since then" questions the sweep asks of XDP's state ([`crate::maps::Slot`]'s
/// `last_new`).
#[inline(always)]
pub const fn stamp_epoch(now_ns: u64) -> u32 {
    (now_ns / EPOCH_NS) as u32
}

/// The epoch of a [`crate::maps::Slot::full`] hint stamped at `now_ns`: 1..=255, never 0
/// (no hint). One that comes round again 255 epochs later only skips a block for one epoch.
#[inline(always)]
pub const fn full_epoch(now_ns: u64) -> u8 {
    (stamp_epoch(now_ns) % 255 + 1) as u8
}

/// Whether something stamped `stamp` ([`stamp_epoch`]) may have happened at or after
/// `since_ns`: XDP's clock may lag the controller's by a tick, so the epoch before counts.
#[inline(always)]
pub const fn stamped_since(stamp: u32, since_ns: u64) -> bool {
    stamp as u64 + 1 >= stamp_epoch(since_ns) as u64
}

/// Default `--subscriber-prefix-len` (RFC 7785 §3 suggests the delegated prefix, commonly
/// a /56).
pub const DEFAULT_SUBSCRIBER_PREFIX_LEN: u8 = 56;

const fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

/// Four strides coprime to `n` blocks (spread over the range): a search stepping by one
/// visits every block once in `n` steps, wherever it starts.
pub const fn coprime_strides(n: u16) -> [u16; 4] {
    let n = n as u32;
    let mut out = [1u16; 4];
    if n <= 2 {
        return out;
    }
    let mut k = 0;
    while k < 4 {
        // Start near n * (2k+1) / 8 and walk up to the first coprime value.
        let mut s = n * (2 * k as u32 + 1) / 8;
        if s == 0 {
            s = 1;
        }
        while gcd(s, n) != 1 {
            s += 1;
        }
        out[k] = (s % n) as u16;
        if out[k] == 0 {
            out[k] = 1;
        }
        k += 1;
    }
    out
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
/// whatever the block's first port (RFC 4787 REQ-4; the block itself keeps the 0-1023 /
/// 1024+ class when the range does) and starting at a keyed-hash offset (RFC 6056 §3.3.3).
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
    // An odd first port shifts the pairs by one: the candidate's own parity is what counts.
    first.wrapping_add((slot * 2) as u16 + ((parity ^ first) & 1))
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
/// RFC 4787 REQ-2).
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
/// outside ports are not predictable from inside ports: RFC 6056, RFC 6888 REQ-15).
#[inline(always)]
pub const fn port_hash(key: &NatOutKey, seed: u32) -> u32 {
    let h = pool_hash(&key.b4, &key.inside_addr, seed);
    mix32(h ^ (key.inside_port as u32) ^ ((key.proto as u32) << 16))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn a_stamp_counts_as_since_a_time_in_its_epoch_and_the_next_only() {
        let e = EPOCH_NS;
        let t = 1_000 * e + 5;
        let stamp = stamp_epoch(t);
        assert_eq!(stamp, 1_000);
        assert!(stamped_since(stamp, t), "the same instant");
        assert!(stamped_since(stamp, t - 5), "earlier in its epoch");
        assert!(
            stamped_since(stamp, t + e),
            "XDP's clock may lag a tick: the next epoch still counts"
        );
        assert!(!stamped_since(stamp, t + 2 * e), "two epochs later: before");
        assert!(stamped_since(stamp, 0));
        assert!(!stamped_since(0, 5 * e), "never stamped");
    }

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
            for (bs, lo) in [
                (16u16, 1024u16),
                (64, 1025),
                (512, 1024),
                (512, 1),
                (4096, 1027),
            ] {
                let first = block_first_port(3, lo, bs);
                for parity in [0u16, 1] {
                    for a in 0..PORT_SEARCH_TRIES {
                        let p = candidate_in_block(h, a, first, bs, parity);
                        assert!(p >= first && p < first + bs, "h={h:#x} bs={bs} -> {p}");
                        assert_eq!(p & 1, parity, "parity kept");
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
        let open = syn_out | synack_in | TCP_CONFIRMED;
        assert!(tcp_established(open));
        assert!(!tcp_established(open | tcp_bits(0x04, false)), "RST");
        let fin_out = tcp_bits(0x11, true);
        assert!(tcp_established(open | fin_out), "half-closed stays open");
        assert!(!tcp_established(open | fin_out | tcp_bits(0x11, false)));
    }

    #[test]
    fn tcp_rst_from_outside_does_not_stick() {
        let est = tcp_next_state(
            tcp_next_state(tcp_bits(0x02, true), tcp_bits(0x12, false), false),
            0,
            true,
        );
        assert!(tcp_established(est), "SYN, SYN-ACK, ACK");
        let rst = tcp_next_state(est, tcp_bits(0x04, false), false);
        assert!(!tcp_established(rst), "after a RST: transitory");
        let again = tcp_next_state(rst, tcp_bits(0x10, true), true);
        assert!(tcp_established(again), "later traffic restores it");
        let syn_in = tcp_next_state(est, tcp_bits(0x02, false), false);
        assert!(tcp_established(syn_in), "an inbound SYN changes nothing");
    }

    #[test]
    fn inbound_packets_alone_do_not_establish() {
        let half_open = tcp_bits(0x02, true);
        let s = tcp_next_state(half_open, tcp_bits(0x12, false), false);
        assert!(!tcp_established(s), "SYN out, SYN-ACK in: not yet");
        let s = tcp_next_state(s, tcp_bits(0x10, false), false);
        assert!(!tcp_established(s), "more inbound: still not");
        assert!(tcp_established(tcp_next_state(s, 0, true)));
    }

    #[test]
    fn subscriber_masks() {
        let a = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0xa, 0x12, 0x34, 9, 9, 9, 9, 9, 9, 9, 9,
        ];
        let s56 = subscriber_of(&a, &subscriber_mask(56));
        assert_eq!(&s56[..7], &a[..7]);
        assert_eq!(&s56[7..], &[0; 9]);
        let s60 = subscriber_of(&a, &subscriber_mask(60));
        assert_eq!(s60[7], 0x30);
        assert_eq!(subscriber_of(&a, &subscriber_mask(128)), a);
        assert_eq!(subscriber_mask(32)[4], 0);
    }

    #[test]
    fn coprime_strides_visit_every_block() {
        for n in [1u16, 2, 3, 7, 126, 128, 4032, 4096, 63] {
            for s in coprime_strides(n) {
                let mut seen = std::collections::HashSet::new();
                for t in 0..n as u32 {
                    seen.insert((17 + t * s as u32) % n as u32);
                }
                assert_eq!(seen.len(), n as usize, "n={n} stride={s}");
            }
        }
    }

    #[test]
    fn port_hash_depends_on_softwire() {
        // Same inside endpoint behind two B4s must not start the search at the same port.
        assert_ne!(port_hash(&key(2, 5000), 42), port_hash(&key(3, 5000), 42));
    }
}
