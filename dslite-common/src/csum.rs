//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Every function works on 16-bit words exactly as they sit in packet memory (loaded with
//! native byte order). The one's complement sum is byte-order independent (RFC 1071 §2(B)),
//! so the kernel never swaps bytes: it reads a field, updates, and writes it back raw.

/// Fold a 32-bit accumulator into 16 bits with end-around carry.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    // Two rounds always suffice for a 32-bit accumulator; no loop for the verifier.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Two raw 16-bit words from a 4-byte field (an IPv4 address), in memory order.
#[inline(always)]
pub const fn words4(b: [u8; 4]) -> [u16; 2] {
    [
        u16::from_ne_bytes([b[0], b[1]]),
        u16::from_ne_bytes([b[2], b[3]]),
    ]
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` for one 16-bit word changing from `old` to `new`.
#[inline(always)]
pub const fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + (new as u32);
    !fold(sum)
}

/// Incremental update for a 4-byte field (an IPv4 address) changing from `old` to `new`.
#[inline(always)]
pub const fn replace4(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let o = words4(old);
    let n = words4(new);
    let sum = (!check as u32) + (!o[0] as u32) + (!o[1] as u32) + (n[0] as u32) + (n[1] as u32);
    !fold(sum)
}

/// UDP over IPv4 may carry checksum 0, meaning "none" (RFC 768): it must stay 0 through NAT.
/// A computed checksum of 0 is sent as 0xffff instead.
#[inline(always)]
pub const fn udp_replace4(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    if check == 0 {
        return 0;
    }
    let c = replace4(check, old, new);
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// See [`udp_replace4`]: the zero-checksum rule for a 16-bit field (a port).
#[inline(always)]
pub const fn udp_replace2(check: u16, old: u16, new: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    let c = replace2(check, old, new);
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// The IPv4 TTL shares a 16-bit word with the protocol field: decrementing TTL by one
/// changes that word by `0x0100` in network order. Returns the new header checksum.
#[inline(always)]
pub const fn ttl_decrement(check: u16, ttl: u8, proto: u8) -> u16 {
    let old = u16::from_ne_bytes([ttl, proto]);
    let new = u16::from_ne_bytes([ttl.wrapping_sub(1), proto]);
    replace2(check, old, new)
}

/// Full checksum of a byte slice (odd length padded with zero), as a raw memory-order word.
/// Used off the fast path: by the controller and the tests to build and verify packets.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_bytes(data, 0))
}

/// Write the header checksum of the IPv4 packet at the start of `ip` (its IHL says how long
/// the header is). Off the fast path: for packets the controller and the tests build.
pub fn set_ipv4_header_checksum(ip: &mut [u8]) {
    let hlen = ((ip[0] & 0x0f) as usize) * 4;
    ip[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&ip[..hlen]);
    ip[10..12].copy_from_slice(&sum.to_ne_bytes());
}

/// One's complement accumulation of `data` onto `acc` (without the final inversion).
pub fn sum_bytes(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u16::from_ne_bytes([c[0], c[1]]) as u32);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u16::from_ne_bytes([*last, 0]) as u32);
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20-byte IPv4 header with a correct checksum (from RFC 1071 style worked examples).
    fn header() -> [u8; 20] {
        let mut h = [
            0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0, 0, 192, 168, 1, 10, 203,
            0, 113, 2,
        ];
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        h
    }

    fn read(h: &[u8], off: usize) -> u16 {
        u16::from_ne_bytes([h[off], h[off + 1]])
    }

    #[test]
    fn full_checksum_verifies_to_zero() {
        let h = header();
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn replace4_matches_recomputation() {
        let mut h = header();
        let old = [192, 168, 1, 10];
        let new = [198, 51, 100, 1];
        let c = replace4(read(&h, 10), old, new);
        h[12..16].copy_from_slice(&new);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        assert_eq!(
            checksum(&h),
            0,
            "incremental update must equal a full recomputation"
        );
    }

    #[test]
    fn ttl_decrement_matches_recomputation() {
        for ttl in [1u8, 2, 64, 128, 255] {
            let mut h = header();
            h[8] = ttl;
            h[10] = 0;
            h[11] = 0;
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_ne_bytes());
            let n = ttl_decrement(read(&h, 10), ttl, h[9]);
            h[8] = ttl - 1;
            h[10..12].copy_from_slice(&n.to_ne_bytes());
            assert_eq!(checksum(&h), 0, "ttl {ttl}");
        }
    }

    #[test]
    fn replace2_matches_recomputation_for_every_port_pair_sample() {
        let mut h = header();
        for (old, new) in [
            (5000u16, 1024u16),
            (0, 65535),
            (65535, 0),
            (1, 2),
            (40000, 40000),
        ] {
            h[4..6].copy_from_slice(&old.to_be_bytes());
            h[10] = 0;
            h[11] = 0;
            let c = checksum(&h);
            let n = replace2(
                c,
                u16::from_ne_bytes(old.to_be_bytes()),
                u16::from_ne_bytes(new.to_be_bytes()),
            );
            h[4..6].copy_from_slice(&new.to_be_bytes());
            h[10..12].copy_from_slice(&n.to_ne_bytes());
            assert_eq!(checksum(&h), 0, "{old} -> {new}");
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(udp_replace4(0, [1, 2, 3, 4], [5, 6, 7, 8]), 0);
        assert_eq!(udp_replace2(0, 1, 2), 0);
        assert_ne!(udp_replace4(0x1234, [1, 2, 3, 4], [5, 6, 7, 8]), 0);
    }

    #[test]
    fn udp_computed_zero_becomes_ffff() {
        // Find a checksum whose update lands exactly on 0, then check the UDP rule.
        let mut found = false;
        for c in 1u16..=0xffff {
            if replace2(c, 0x1111, 0x2222) == 0 {
                assert_eq!(udp_replace2(c, 0x1111, 0x2222), 0xffff);
                found = true;
                break;
            }
        }
        assert!(found, "some checksum must update to zero");
    }

    #[test]
    fn odd_length_sums_pad_with_zero() {
        assert_eq!(sum_bytes(&[0x12], 0), sum_bytes(&[0x12, 0x00], 0));
    }
}
