//! Which outside ports are taken: one bit per (pool address, protocol, port), in an
//! mmapable array of words (issue #13 item 2, docs/design.md "Memory per mapping").
//!
//! Today a port is claimed by inserting the mapping's `NAT_IN` entry with `BPF_NOEXIST`.
//! The one-table layout's inbound index has no such insert (its claims would each need the
//! duplicate scan, and the port search tries several ports), so ports are claimed here
//! instead, with one compare-and-swap on the word that holds the port's bit; the inbound
//! index then only records a port this CPU owns. 8 KB per protocol and pool address, 24 KB
//! for TCP, UDP and ICMP: a /20 pool is 100 MB, ~10 bytes a mapping at 10M mappings.
//!
//! The kernel claims; the controller releases (expiry) through its `mmap` of the array.

/// Words of one protocol's ports on one address (65,536 bits).
pub const WORDS_PER_SPACE: u32 = 65_536 / 64;

/// Protocols with ports of their own (ICMP: the echo identifier).
pub const SPACES: u32 = 3;

/// Words of the array for a pool of `pool_len` addresses.
pub const fn words_for(pool_len: u32) -> u64 {
    pool_len as u64 * SPACES as u64 * WORDS_PER_SPACE as u64
}

/// The port space of an IP protocol number.
#[inline(always)]
pub const fn space_of(proto: u8) -> Option<u32> {
    match proto {
        crate::proto::IPPROTO_TCP => Some(0),
        crate::proto::IPPROTO_UDP => Some(1),
        crate::proto::IPPROTO_ICMP => Some(2),
        _ => None,
    }
}

/// The word holding `port` (host order) of `space` on pool address `pool_index`, and the
/// port's bit in it.
#[inline(always)]
pub const fn locate(pool_index: u32, space: u32, port: u16) -> (u32, u64) {
    let word = (pool_index * SPACES + space) * WORDS_PER_SPACE + (port as u32 >> 6);
    (word, 1 << (port & 63))
}

/// What [`claim`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The port is this CPU's.
    Claimed,
    /// Someone holds it.
    Taken,
    /// Other ports of the word changed under each try: try another port.
    Contended,
}

/// Compare-and-swap attempts per claim or release: a word is 64 ports, and every try that
/// fails saw one of them change.
pub const TRIES: u32 = 4;

/// Claim the port whose bit is `bit` in the word at `w`.
///
/// # Safety
/// `w` points to a live, 8-aligned word of the array.
#[inline(always)]
pub unsafe fn claim(w: *mut u64, bit: u64) -> Claim {
    let mut tries = 0;
    while tries < TRIES {
        // SAFETY: the caller's.
        let old = unsafe { crate::table::word::load(w) };
        if old & bit != 0 {
            return Claim::Taken;
        }
        // SAFETY: as above.
        if unsafe { crate::table::word::cas(w, old, old | bit) } {
            return Claim::Claimed;
        }
        tries += 1;
    }
    Claim::Contended
}

/// What [`release`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    Released,
    /// The port was not taken: released twice, a bug the caller should count, and must
    /// not retry (the port may be another mapping's by then).
    WasFree,
    /// The word kept changing: try again (the port is still taken).
    Contended,
}

/// Give back the port whose bit is `bit` in the word at `w`.
///
/// # Safety
/// As [`claim`].
#[inline(always)]
pub unsafe fn release(w: *mut u64, bit: u64) -> Release {
    let mut tries = 0;
    while tries < TRIES * 4 {
        // SAFETY: the caller's.
        let old = unsafe { crate::table::word::load(w) };
        if old & bit == 0 {
            return Release::WasFree;
        }
        // SAFETY: as above.
        if unsafe { crate::table::word::cas(w, old, old & !bit) } {
            return Release::Released;
        }
        tries += 1;
    }
    Release::Contended
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{sync::Barrier, vec, vec::Vec};

    use super::*;

    #[test]
    fn ports_are_located_without_overlap() {
        assert_eq!(locate(0, 0, 0), (0, 1));
        assert_eq!(locate(0, 0, 65), (1, 2));
        assert_eq!(locate(0, 1, 0).0, WORDS_PER_SPACE, "UDP after TCP");
        assert_eq!(
            locate(1, 0, 0).0,
            SPACES * WORDS_PER_SPACE,
            "the next address"
        );
        let (last, bit) = locate(2, 2, 65_535);
        assert_eq!(last as u64, words_for(3) - 1);
        assert_eq!(bit, 1 << 63);
        assert_eq!(words_for(4096) * 8, 100_663_296, "a /20 pool: 96 MiB");
        assert_eq!(space_of(47), None, "GRE has no ports");
    }

    #[test]
    fn a_port_is_claimed_once_and_free_again_after_release() {
        let mut word = 0u64;
        let w = &mut word as *mut u64;
        // SAFETY: a local word.
        unsafe {
            assert_eq!(claim(w, 1 << 5), Claim::Claimed);
            assert_eq!(claim(w, 1 << 5), Claim::Taken);
            assert_eq!(claim(w, 1 << 6), Claim::Claimed, "its neighbour is free");
            assert_eq!(release(w, 1 << 5), Release::Released);
            assert_eq!(release(w, 1 << 5), Release::WasFree, "released twice");
            assert_eq!(claim(w, 1 << 5), Claim::Claimed);
        }
        assert_eq!(word, (1 << 5) | (1 << 6));
    }

    #[test]
    fn cpus_claiming_the_same_ports_never_share_one() {
        // Four threads claim every port of 4 words (256 ports); each port has one owner.
        // 200 rounds: a non-atomic claim fails this within a few.
        const THREADS: usize = 4;
        for round in 0..200u16 {
            let words: Vec<u64> = vec![0; 4];
            let base = words.as_ptr() as usize;
            let barrier = Barrier::new(THREADS);
            let got: Vec<Vec<u16>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..THREADS)
                    .map(|id| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            let mut mine = Vec::new();
                            for i in 0..256u16 {
                                let port = (i * 97 + id as u16 * 31 + round) % 256;
                                let (wi, bit) = locate(0, 0, port);
                                let w = (base as *mut u64).wrapping_add(wi as usize);
                                // SAFETY: one of the four words, shared through atomics only.
                                loop {
                                    match unsafe { claim(w, bit) } {
                                        Claim::Claimed => {
                                            mine.push(port);
                                            break;
                                        }
                                        Claim::Taken => break,
                                        Claim::Contended => continue,
                                    }
                                }
                            }
                            mine
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let mut all: Vec<u16> = got.concat();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..256).collect::<Vec<u16>>(),
                "round {round}: each port exactly once"
            );
            assert!(words.iter().all(|&w| w == u64::MAX));
        }
    }
}
