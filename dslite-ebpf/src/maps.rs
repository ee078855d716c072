//! Every map of both programs. Layouts and names come from `dslite_common::maps`.
//! All maps are pinned by name under the controller's `--pin-path`, so `dslite stats` and
//! `dslite sessions` can read them from another process. Sizes here are defaults: the
//! controller sizes each map for its role at load time (`dataplane::map_sizes`).

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use dslite_common::{
    maps::{
        AftrConfig, B4Config, BlockKey, BlockValue, FragBudget, FragKey, IcmpBucket, NatInKey,
        NatInValue, NatOutKey, NatOutValue, NextHop, NextHopKey, PeerKey, Slot, SlotKey,
        SoftwireState, DEFAULT_MAX_MAPPINGS, FREE_ADDRS_LEN, MAX_POOL, MAX_PREFIXES,
    },
    slow::SlowConfig,
    Counter,
};

/// Per-reason packet counters, indexed by `Counter`. Written by both programs.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

/// AFTR configuration, one entry. Written by the controller before attach.
#[map(name = "AFTR_CONFIG")]
pub static AFTR_CONFIG: Array<AftrConfig> = Array::pinned(1, 0);

/// B4 configuration, one entry. Written by the controller before attach.
#[map(name = "B4_CONFIG")]
pub static B4_CONFIG: Array<B4Config> = Array::pinned(1, 0);

/// Public IPv4 pool: index -> address. Written by the controller.
#[map(name = "POOL")]
pub static POOL: Array<[u8; 4]> = Array::pinned(MAX_POOL, 0);

/// Public IPv4 pool: address -> index, to recognise inbound traffic.
#[map(name = "POOL_INDEX")]
pub static POOL_INDEX: HashMap<[u8; 4], u32> = HashMap::pinned(MAX_POOL, 0);

/// B4 IPv6 prefixes allowed to open softwires (RFC 6333 §11).
#[map(name = "B4_ALLOW")]
pub static B4_ALLOW: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(MAX_PREFIXES, 0);

/// B4: IPv4 destinations that stay on the LAN (its subnets, broadcast, multicast).
#[map(name = "LOCAL_V4")]
pub static LOCAL_V4: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(MAX_PREFIXES, 0);

/// AFTR: softwire + inside endpoint -> outside endpoint. Created in XDP.
#[map(name = "NAT_OUT")]
pub static NAT_OUT: HashMap<NatOutKey, NatOutValue> = HashMap::pinned(DEFAULT_MAX_MAPPINGS, 0);

/// AFTR: outside endpoint -> softwire + inside endpoint. Created in XDP, with NAT_OUT.
#[map(name = "NAT_IN")]
pub static NAT_IN: HashMap<NatInKey, NatInValue> = HashMap::pinned(DEFAULT_MAX_MAPPINGS, 0);

/// AFTR: port blocks in use or held down; absent means free. Claimed by XDP (BPF_NOEXIST),
/// released and freed by the controller's sweep.
#[map(name = "BLOCKS")]
pub static BLOCKS: HashMap<BlockKey, BlockValue> = HashMap::pinned(1 << 16, 0);

/// AFTR: each softwire's blocks by slot. Claimed by XDP, freed by the controller.
#[map(name = "SW_BLOCKS")]
pub static SW_BLOCKS: HashMap<SlotKey, Slot> = HashMap::pinned(1 << 16, 0);

/// AFTR: events for the NAT log (block allocations), read by the controller.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(1 << 20, 0);

/// AFTR: per-softwire limit state (sessions, new-mapping tokens). XDP creates and updates;
/// the sweep recounts sessions and removes idle entries.
#[map(name = "SOFTWIRES")]
pub static SOFTWIRES: HashMap<[u8; 16], SoftwireState> = HashMap::pinned(1 << 16, 0);

/// AFTR: remotes each mapping has sent to, for non-endpoint-independent filtering. Not
/// preallocated (BPF_F_NO_PREALLOC): sized for every mode, it costs memory only when used,
/// so a reload may switch from EIF to ADF/APDF.
#[map(name = "PEERS")]
pub static PEERS: HashMap<PeerKey, u64> = HashMap::pinned(1 << 16, BPF_F_NO_PREALLOC);

const BPF_F_NO_PREALLOC: u32 = 1;

/// AFTR: per-CPU token bucket for generated ICMP errors.
#[map(name = "ICMP_BUCKET")]
pub static ICMP_BUCKET: PerCpuArray<IcmpBucket> = PerCpuArray::pinned(1, 0);

/// The slow path (TAP ifindex, tunnel MTU), one entry. Written by the controller.
#[map(name = "SLOW_CONFIG")]
pub static SLOW_CONFIG: Array<SlowConfig> = Array::pinned(1, 0);

/// The slow path's TAP as a devmap: when the TAP is gone the kernel removes the entry, and
/// a redirect through it fails visibly (counted) instead of after the program returned.
#[map(name = "SLOW_DEV")]
pub static SLOW_DEV: DevMap = DevMap::pinned(1, 0);

/// The FIB's answers, per CPU (see `forward::fib_redirect`).
#[map(name = "NEXT_HOPS")]
pub static NEXT_HOPS: LruPerCpuHashMap<NextHopKey, NextHop> = LruPerCpuHashMap::pinned(4096, 0);

/// The next-hop cache's generation (0: cache off).
#[map(name = "NH_GEN")]
pub static NH_GEN: Array<u32> = Array::pinned(1, 0);

/// AFTR: IPv4 destinations subscribers may not reach (longest match; any entry denies).
#[map(name = "DENY_V4")]
pub static DENY_V4: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(MAX_PREFIXES, 0);

/// AFTR: IPv4 fragment chains from the internet that a first fragment opened (value: the
/// fragments passed so far). LRU: a flood of chains evicts the oldest, never refuses new.
#[map(name = "FRAG_CHAINS")]
pub static FRAG_CHAINS: LruHashMap<FragKey, u64> = LruHashMap::pinned(FRAG_CHAIN_SLOTS, 0);

/// AFTR: per-subscriber fragment budget (token buckets).
#[map(name = "FRAG_BUDGET")]
pub static FRAG_BUDGET: LruHashMap<[u8; 16], FragBudget> = LruHashMap::pinned(1 << 14, 0);

/// AFTR: free blocks per pool address at the last sweep (a hint for the block search).
#[map(name = "ADDR_FREE")]
pub static ADDR_FREE: Array<u32> = Array::pinned(MAX_POOL, 0);

/// AFTR: pool indexes with free blocks at the last sweep (entry 0: how many).
#[map(name = "FREE_ADDRS")]
pub static FREE_ADDRS: Array<u32> = Array::pinned(FREE_ADDRS_LEN + 1, 0);

/// What a `BPF_NOEXIST` insert returns when the key is there already (-EEXIST).
pub const EEXIST: i32 = -17;

/// Chains of IPv4 fragments from the internet tracked at once.
pub const FRAG_CHAIN_SLOTS: u32 = 4096;

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
