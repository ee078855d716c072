//! A one-bit-per-/16 summary of an IPv4 LPM trie, so the fast path can skip the trie for
//! the addresses it cannot match.
//!
//! Both IPv4 tries the fast path reads on every packet match rarely: `DENY_V4` (what no
//! subscriber may reach: special-purpose ranges, the AFTR's own addresses, the operator's
//! `--deny-destination`) and `LOCAL_V4` (what a B4 keeps on the LAN). A trie lookup costs
//! ~20 ns here (docs/benchmarks.md); the summary costs one load from an 8 KB array, which
//! stays in cache. A bit is set for every /16 that any prefix of the trie touches, so a
//! clear bit proves the trie has no match, and a set bit sends the packet to the trie as
//! before: the summary may only say "maybe", never "no" wrongly.
//!
//! The controller keeps that true while it edits a trie ([`superset`]): bits of what is
//! about to be added are set before the trie changes, and bits of what went are cleared only
//! after.

/// Words of 64 bits: one bit per /16 of the IPv4 space.
pub const HINT_WORDS: u32 = 1 << 10;

/// The word and the bit of `addr`'s /16.
#[inline(always)]
pub const fn hint_bit(addr: &[u8; 4]) -> (u32, u64) {
    let sixteen = ((addr[0] as u32) << 8) | addr[1] as u32;
    (sixteen >> 6, 1u64 << (sixteen & 63))
}

/// Set in `words` the bit of every /16 that the prefix `network/len` touches.
pub fn mark(words: &mut [u64], network: [u8; 4], len: u8) {
    let len = len.min(32) as u32;
    let first = u32::from_be_bytes(network) >> 16;
    // A prefix of /16 or longer touches one /16; a shorter one 2^(16-len) of them.
    let count = if len >= 16 { 1 } else { 1u32 << (16 - len) };
    let first = first & !(count - 1);
    for s in first..first + count {
        if let Some(w) = words.get_mut((s >> 6) as usize) {
            *w |= 1u64 << (s & 63);
        }
    }
}

/// Every bit set in `before` or `after`: what the summary must hold while a trie goes from
/// one set of prefixes to the other.
pub fn superset(before: &[u64], after: &[u64], out: &mut [u64]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = before.get(i).copied().unwrap_or(0) | after.get(i).copied().unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words() -> [u64; HINT_WORDS as usize] {
        [0; HINT_WORDS as usize]
    }

    fn hinted(w: &[u64], a: [u8; 4]) -> bool {
        let (i, bit) = hint_bit(&a);
        w[i as usize] & bit != 0
    }

    #[test]
    fn a_long_prefix_marks_its_own_sixteen_only() {
        let mut w = words();
        mark(&mut w, [203, 0, 113, 1], 32);
        assert!(hinted(&w, [203, 0, 113, 1]));
        // The same /16: a "maybe", the trie decides.
        assert!(hinted(&w, [203, 0, 7, 9]));
        assert!(!hinted(&w, [203, 1, 0, 0]));
        assert!(!hinted(&w, [202, 255, 255, 255]));
        assert_eq!(w.iter().map(|x| x.count_ones()).sum::<u32>(), 1);
    }

    #[test]
    fn a_short_prefix_marks_every_sixteen_it_covers_and_no_other() {
        let mut w = words();
        // 224.0.0.0/4: 4096 /16s, from 224.0 to 239.255.
        mark(&mut w, [224, 0, 0, 0], 4);
        assert_eq!(w.iter().map(|x| x.count_ones()).sum::<u32>(), 4096);
        assert!(hinted(&w, [224, 0, 0, 1]));
        assert!(hinted(&w, [239, 255, 255, 255]));
        assert!(!hinted(&w, [223, 255, 255, 255]));
        assert!(!hinted(&w, [240, 0, 0, 0]));
        // Host bits in the network are ignored, as the trie ignores them.
        let mut v = words();
        mark(&mut v, [10, 200, 3, 4], 8);
        assert!(hinted(&v, [10, 0, 0, 0]) && hinted(&v, [10, 255, 0, 0]));
        assert!(!hinted(&v, [11, 0, 0, 0]));
        // 0.0.0.0/0 marks everything.
        let mut all = words();
        mark(&mut all, [0; 4], 0);
        assert!(all.iter().all(|x| *x == u64::MAX));
    }

    /// The property the fast path relies on: no address inside a marked prefix has its bit
    /// clear, for prefix lengths around every boundary.
    #[test]
    fn every_address_of_a_marked_prefix_is_hinted() {
        for len in [1u8, 7, 8, 9, 15, 16, 17, 24, 31, 32] {
            let mut w = words();
            let net = [198, 51, 100, 77];
            mark(&mut w, net, len);
            let base =
                u32::from_be_bytes(net) & (u32::MAX.checked_shl(32 - len as u32).unwrap_or(0));
            let size = 1u64 << (32 - len as u32);
            // The first, the last and a spread of addresses in between.
            for k in 0..=64u64 {
                let a = base as u64 + (size - 1) * k / 64;
                assert!(hinted(&w, (a as u32).to_be_bytes()), "/{len}: {a:#x}");
            }
        }
    }

    #[test]
    fn the_superset_keeps_the_bits_of_both_sides() {
        let (mut a, mut b, mut out) = (words(), words(), words());
        mark(&mut a, [10, 0, 0, 0], 16);
        mark(&mut b, [192, 168, 0, 0], 16);
        superset(&a, &b, &mut out);
        assert!(hinted(&out, [10, 0, 1, 1]) && hinted(&out, [192, 168, 1, 1]));
        assert!(!hinted(&out, [8, 8, 8, 8]));
    }
}
