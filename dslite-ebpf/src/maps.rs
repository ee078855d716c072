//! Every map of both programs. Layouts and names come from `dslite_common::maps`, kinds,
//! sizes and flags from the one list in `dslite_common::map_list` (`tests/tests/maps.rs`
//! checks that the object's maps are that list). All maps are pinned by name under the
//! controller's `--pin-path`, so `dslite stats` and `dslite sessions` can read them from
//! another process. Sizes here are defaults: the controller sizes each map for its role at
//! load time (`dataplane::map_sizes`).

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use dslite_common::{
    map_list as spec,
    maps::{
        AftrConfig, B4Config, BlockKey, BlockValue, FragBudget, FragKey, IcmpBucket, NatInKey,
        NatInValue, NatOutKey, NatOutValue, NextHopSlot, PeerKey, Slot, SlotKey, SoftwireState,
        Tick,
    },
    slow::SlowConfig,
    Counter,
};

/// Per-reason packet counters, indexed by `Counter`. Written by both programs.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> =
    PerCpuArray::pinned(spec::STATS.max_entries, spec::STATS.flags);

/// AFTR configuration, one entry. Written by the controller before attach.
#[map(name = "AFTR_CONFIG")]
pub static AFTR_CONFIG: Array<AftrConfig> =
    Array::pinned(spec::AFTR_CONFIG.max_entries, spec::AFTR_CONFIG.flags);

/// B4 configuration, one entry. Written by the controller before attach.
#[map(name = "B4_CONFIG")]
pub static B4_CONFIG: Array<B4Config> =
    Array::pinned(spec::B4_CONFIG.max_entries, spec::B4_CONFIG.flags);

/// Public IPv4 pool: index -> address. Written by the controller.
#[map(name = "POOL")]
pub static POOL: Array<[u8; 4]> = Array::pinned(spec::POOL.max_entries, spec::POOL.flags);

/// Public IPv4 pool: address -> index, to recognise inbound traffic.
#[map(name = "POOL_INDEX")]
pub static POOL_INDEX: HashMap<[u8; 4], u32> =
    HashMap::pinned(spec::POOL_INDEX.max_entries, spec::POOL_INDEX.flags);

/// B4 IPv6 prefixes allowed to open softwires (RFC 6333 §11).
#[map(name = "B4_ALLOW")]
pub static B4_ALLOW: LpmTrie<[u8; 16], u32> =
    LpmTrie::pinned(spec::B4_ALLOW.max_entries, spec::B4_ALLOW.flags);

/// B4: IPv4 destinations that stay on the LAN (its subnets, broadcast, multicast).
#[map(name = "LOCAL_V4")]
pub static LOCAL_V4: LpmTrie<[u8; 4], u32> =
    LpmTrie::pinned(spec::LOCAL_V4.max_entries, spec::LOCAL_V4.flags);

/// B4: which /16s `LOCAL_V4` may match (`dslite_common::hint`; see [`may_match`]).
#[map(name = "LOCAL_HINT")]
pub static LOCAL_HINT: Array<u64> =
    Array::pinned(spec::LOCAL_HINT.max_entries, spec::LOCAL_HINT.flags);

/// AFTR: softwire + inside endpoint -> outside endpoint. Created in XDP.
#[map(name = "NAT_OUT")]
pub static NAT_OUT: HashMap<NatOutKey, NatOutValue> =
    HashMap::pinned(spec::NAT_OUT.max_entries, spec::NAT_OUT.flags);

/// AFTR: outside endpoint -> softwire + inside endpoint. Created in XDP, with NAT_OUT.
#[map(name = "NAT_IN")]
pub static NAT_IN: HashMap<NatInKey, NatInValue> =
    HashMap::pinned(spec::NAT_IN.max_entries, spec::NAT_IN.flags);

/// AFTR: port blocks in use or held down; absent means free. Claimed by XDP (BPF_NOEXIST),
/// released and freed by the controller's sweep.
#[map(name = "BLOCKS")]
pub static BLOCKS: HashMap<BlockKey, BlockValue> =
    HashMap::pinned(spec::BLOCKS.max_entries, spec::BLOCKS.flags);

/// AFTR: each softwire's blocks by slot. Claimed by XDP, freed by the controller.
#[map(name = "SW_BLOCKS")]
pub static SW_BLOCKS: HashMap<SlotKey, Slot> =
    HashMap::pinned(spec::SW_BLOCKS.max_entries, spec::SW_BLOCKS.flags);

/// AFTR: events for the NAT log (block allocations), read by the controller.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(spec::EVENTS.max_entries, spec::EVENTS.flags);

/// AFTR: per-softwire limit state (sessions, new-mapping tokens). XDP creates and updates;
/// the sweep recounts sessions and removes idle entries.
#[map(name = "SOFTWIRES")]
pub static SOFTWIRES: HashMap<[u8; 16], SoftwireState> =
    HashMap::pinned(spec::SOFTWIRES.max_entries, spec::SOFTWIRES.flags);

/// AFTR: remotes each mapping has sent to, for non-endpoint-independent filtering. Not
/// preallocated (BPF_F_NO_PREALLOC): sized for every mode, it costs memory only when used,
/// so a reload may switch from EIF to ADF/APDF.
#[map(name = "PEERS")]
pub static PEERS: HashMap<PeerKey, u64> =
    HashMap::pinned(spec::PEERS.max_entries, spec::PEERS.flags);

/// AFTR: per-CPU token bucket for generated ICMP errors.
#[map(name = "ICMP_BUCKET")]
pub static ICMP_BUCKET: PerCpuArray<IcmpBucket> =
    PerCpuArray::pinned(spec::ICMP_BUCKET.max_entries, spec::ICMP_BUCKET.flags);

/// The slow path (TAP ifindex, tunnel MTU), one entry. Written by the controller.
#[map(name = "SLOW_CONFIG")]
pub static SLOW_CONFIG: Array<SlowConfig> =
    Array::pinned(spec::SLOW_CONFIG.max_entries, spec::SLOW_CONFIG.flags);

/// The slow path's TAP as a devmap: when the TAP is gone the kernel removes the entry, and
/// a redirect through it fails visibly (counted) instead of after the program returned.
#[map(name = "SLOW_DEV")]
pub static SLOW_DEV: DevMap = DevMap::pinned(spec::SLOW_DEV.max_entries, spec::SLOW_DEV.flags);

/// The FIB's answers, per CPU, direct-mapped (see `route::fib_redirect`).
#[map(name = "NEXT_HOPS")]
pub static NEXT_HOPS: PerCpuArray<NextHopSlot> =
    PerCpuArray::pinned(spec::NEXT_HOPS.max_entries, spec::NEXT_HOPS.flags);

/// The dataplane's clock, per CPU (see `clock::tick_ns`).
#[map(name = "CLOCK")]
pub static CLOCK: PerCpuArray<Tick> =
    PerCpuArray::pinned(spec::CLOCK.max_entries, spec::CLOCK.flags);

/// The next-hop cache's generation (0: cache off).
#[map(name = "NH_GEN")]
pub static NH_GEN: Array<u32> = Array::pinned(spec::NH_GEN.max_entries, spec::NH_GEN.flags);

/// tc: the interfaces to redirect into with `bpf_redirect_peer` (veths whose peer is in
/// another namespace; key: ifindex). Written by the controller at attach.
#[map(name = "PEER_REDIRECT")]
pub static PEER_REDIRECT: HashMap<u32, u32> =
    HashMap::pinned(spec::PEER_REDIRECT.max_entries, spec::PEER_REDIRECT.flags);

/// AFTR: IPv4 destinations subscribers may not reach (longest match; any entry denies).
#[map(name = "DENY_V4")]
pub static DENY_V4: LpmTrie<[u8; 4], u32> =
    LpmTrie::pinned(spec::DENY_V4.max_entries, spec::DENY_V4.flags);

/// AFTR: which /16s `DENY_V4` may match (`dslite_common::hint`; see [`may_match`]).
#[map(name = "DENY_HINT")]
pub static DENY_HINT: Array<u64> =
    Array::pinned(spec::DENY_HINT.max_entries, spec::DENY_HINT.flags);

/// False when `hint` proves its trie has no prefix covering `addr` (the /16's bit is clear):
/// the trie lookup (~20 ns) is skipped. One load from an 8 KB array the verifier inlines.
#[inline(always)]
pub fn may_match(hint: &Array<u64>, addr: &[u8; 4]) -> bool {
    let (word, bit) = dslite_common::hint::hint_bit(addr);
    match hint.get(word) {
        Some(w) => *w & bit != 0,
        // Out of range cannot happen (1024 words); the trie decides.
        None => true,
    }
}

/// AFTR: IPv4 fragment chains from the internet that a first fragment opened (value: the
/// fragments passed so far). LRU: a flood of chains evicts the oldest, never refuses new.
#[map(name = "FRAG_CHAINS")]
pub static FRAG_CHAINS: LruHashMap<FragKey, u64> =
    LruHashMap::pinned(spec::FRAG_CHAINS.max_entries, spec::FRAG_CHAINS.flags);

/// AFTR: per-subscriber fragment budget (token buckets).
#[map(name = "FRAG_BUDGET")]
pub static FRAG_BUDGET: LruHashMap<[u8; 16], FragBudget> =
    LruHashMap::pinned(spec::FRAG_BUDGET.max_entries, spec::FRAG_BUDGET.flags);

/// AFTR: free blocks per pool address at the last sweep (a hint for the block search).
#[map(name = "ADDR_FREE")]
pub static ADDR_FREE: Array<u32> =
    Array::pinned(spec::ADDR_FREE.max_entries, spec::ADDR_FREE.flags);

/// AFTR: pool indexes with free blocks at the last sweep (entry 0: how many).
#[map(name = "FREE_ADDRS")]
pub static FREE_ADDRS: Array<u32> =
    Array::pinned(spec::FREE_ADDRS.max_entries, spec::FREE_ADDRS.flags);

/// What a `BPF_NOEXIST` insert returns when the key is there already (-EEXIST).
pub const EEXIST: i32 = -17;

/// Add `n` to counter `c` on this CPU (per-CPU slot: no atomics needed).
#[inline(always)]
pub fn count_n(c: Counter, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU array slot, only this CPU writes it while this program runs.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn count(c: Counter) {
    count_n(c, 1);
}
