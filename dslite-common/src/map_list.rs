//! The one list of maps: each map's name, kind, key and value size, default size and flags,
//! and which role uses it. The kernel's `maps.rs` takes its sizes and flags from here, the
//! controller sizes maps from it (`dataplane::map_sizes`), and `tests/tests/maps.rs` checks
//! that the built object's maps are exactly this list.

use core::mem::size_of;

use crate::{
    hint::HINT_WORDS,
    maps::{self as m, *},
    slow::SlowConfig,
    Counter,
};

/// A map's kind, as its `BPF_MAP_TYPE_*` number (include/uapi/linux/bpf.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuArray = 6,
    LruHash = 9,
    LruPerCpuHash = 10,
    LpmTrie = 11,
    DevMap = 14,
    RingBuf = 27,
}

/// Which program uses a map (both are in one object, so every map exists for both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Both,
    Aftr,
    B4,
}

#[derive(Clone, Copy, Debug)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    /// Default entries (bytes for a ring buffer); the controller resizes some at load time.
    pub max_entries: u32,
    pub flags: u32,
    pub role: Role,
}

impl MapSpec {
    /// True for the AFTR's tables that a B4 shrinks to one entry (hash maps are
    /// preallocated, so unused capacity is memory; a ring buffer cannot shrink).
    pub fn shrinks_on_b4(&self) -> bool {
        self.role == Role::Aftr && self.kind != MapKind::RingBuf && self.max_entries > 1
    }
}

/// `BPF_F_NO_PREALLOC`: hash entries allocated on insert.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Key of an LPM trie over `n`-byte addresses: the prefix length, then the address.
const fn lpm_key(n: usize) -> u32 {
    (4 + n) as u32
}

const fn spec<K, V>(name: &'static str, kind: MapKind, max_entries: u32, role: Role) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        max_entries,
        flags: 0,
        role,
    }
}

const fn lpm(name: &'static str, addr_len: usize, role: Role) -> MapSpec {
    MapSpec {
        name,
        kind: MapKind::LpmTrie,
        key_size: lpm_key(addr_len),
        value_size: 4,
        max_entries: MAX_PREFIXES,
        // The kernel requires it of an LPM trie.
        flags: BPF_F_NO_PREALLOC,
        role,
    }
}

use MapKind::*;
use Role::*;

pub const STATS: MapSpec = spec::<u32, u64>(m::STATS, PerCpuArray, Counter::COUNT, Both);
pub const AFTR_CONFIG: MapSpec = spec::<u32, AftrConfig>(m::AFTR_CONFIG, Array, 1, Aftr);
pub const B4_CONFIG: MapSpec = spec::<u32, B4Config>(m::B4_CONFIG, Array, 1, B4);
pub const POOL: MapSpec = spec::<u32, [u8; 4]>(m::POOL, Array, MAX_POOL, Aftr);
pub const POOL_INDEX: MapSpec = spec::<[u8; 4], u32>(m::POOL_INDEX, Hash, MAX_POOL, Aftr);
pub const B4_ALLOW: MapSpec = lpm(m::B4_ALLOW, 16, Aftr);
pub const LOCAL_V4: MapSpec = lpm(m::LOCAL_V4, 4, B4);
pub const LOCAL_HINT: MapSpec = spec::<u32, u64>(m::LOCAL_HINT, Array, HINT_WORDS, B4);
pub const NAT_OUT: MapSpec =
    spec::<NatOutKey, NatOutValue>(m::NAT_OUT, Hash, DEFAULT_MAX_MAPPINGS, Aftr);
pub const NAT_IN: MapSpec =
    spec::<NatInKey, NatInValue>(m::NAT_IN, Hash, DEFAULT_MAX_MAPPINGS, Aftr);
pub const BLOCKS: MapSpec = spec::<BlockKey, BlockValue>(m::BLOCKS, Hash, 1 << 16, Aftr);
pub const SW_BLOCKS: MapSpec = spec::<SlotKey, Slot>(m::SW_BLOCKS, Hash, 1 << 16, Aftr);
pub const EVENTS: MapSpec = spec::<(), ()>(m::EVENTS, RingBuf, 1 << 20, Aftr);
pub const SOFTWIRES: MapSpec = spec::<[u8; 16], SoftwireState>(m::SOFTWIRES, Hash, 1 << 16, Aftr);
/// Not preallocated: sized for every filtering mode, it costs memory only when used, so a
/// reload may switch from EIF to ADF/APDF.
pub const PEERS: MapSpec = MapSpec {
    flags: BPF_F_NO_PREALLOC,
    ..spec::<PeerKey, u64>(m::PEERS, Hash, 1 << 16, Aftr)
};
pub const ICMP_BUCKET: MapSpec = spec::<u32, IcmpBucket>(m::ICMP_BUCKET, PerCpuArray, 1, Aftr);
pub const SLOW_CONFIG: MapSpec = spec::<u32, SlowConfig>(m::SLOW_CONFIG, Array, 1, Both);
/// The value is a `struct bpf_devmap_val`: the ifindex and a program (unused).
pub const SLOW_DEV: MapSpec = spec::<u32, [u32; 2]>(m::SLOW_DEV, DevMap, 1, Both);
pub const NEXT_HOPS: MapSpec =
    spec::<u32, NextHopSlot>(m::NEXT_HOPS, PerCpuArray, NEXT_HOP_SLOTS, Both);
pub const CLOCK: MapSpec = spec::<u32, Tick>(m::CLOCK, PerCpuArray, 1, Both);
pub const NH_GEN: MapSpec = spec::<u32, u32>(m::NH_GEN, Array, 2, Both);
pub const PEER_REDIRECT: MapSpec = spec::<u32, u32>(m::PEER_REDIRECT, Hash, 64, Both);
pub const DENY_V4: MapSpec = lpm(m::DENY_V4, 4, Aftr);
pub const DENY_HINT: MapSpec = spec::<u32, u64>(m::DENY_HINT, Array, HINT_WORDS, Aftr);
/// Chains of IPv4 fragments from the internet tracked at once.
pub const FRAG_CHAINS: MapSpec = spec::<FragKey, u64>(m::FRAG_CHAINS, LruHash, 4096, Aftr);
pub const FRAG_BUDGET: MapSpec =
    spec::<[u8; 16], FragBudget>(m::FRAG_BUDGET, LruHash, 1 << 14, Aftr);
pub const ADDR_FREE: MapSpec = spec::<u32, u32>(m::ADDR_FREE, Array, MAX_POOL, Aftr);
/// Entry 0 holds how many of the others are used.
pub const FREE_ADDRS: MapSpec = spec::<u32, u32>(m::FREE_ADDRS, Array, FREE_ADDRS_LEN + 1, Aftr);

/// Every map of the object, in the kernel's declaration order.
pub const MAPS: &[MapSpec] = &[
    STATS,
    AFTR_CONFIG,
    B4_CONFIG,
    POOL,
    POOL_INDEX,
    B4_ALLOW,
    LOCAL_V4,
    LOCAL_HINT,
    NAT_OUT,
    NAT_IN,
    BLOCKS,
    SW_BLOCKS,
    EVENTS,
    SOFTWIRES,
    PEERS,
    ICMP_BUCKET,
    SLOW_CONFIG,
    SLOW_DEV,
    NEXT_HOPS,
    CLOCK,
    NH_GEN,
    PEER_REDIRECT,
    DENY_V4,
    DENY_HINT,
    FRAG_CHAINS,
    FRAG_BUDGET,
    ADDR_FREE,
    FREE_ADDRS,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fit_the_kernel() {
        for (i, a) in MAPS.iter().enumerate() {
            assert!(a.name.len() <= 15, "{}", a.name);
            assert!(MAPS[i + 1..].iter().all(|b| b.name != a.name), "{}", a.name);
        }
    }
}
