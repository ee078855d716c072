//! Map names and the layouts of their keys and values.
//!
//! Rules (einat.h, cilium): `#[repr(C)]`, no implicit padding (explicit `_pad` fields that
//! writers zero, or lookups miss), addresses as network-order byte arrays, ports as the raw
//! 16-bit word read from the packet (network order in memory). Sizes are asserted below.

use core::mem::size_of;

// Map names: at most 15 characters (the kernel truncates longer names).
/// `PerCpuArray<u64>` indexed by [`crate::Counter`]: written by XDP, summed by the controller.
pub const STATS: &str = "STATS";
/// `Array<AftrConfig>` with one entry: written by the controller before attach.
pub const AFTR_CONFIG: &str = "AFTR_CONFIG";
/// `Array<B4Config>` with one entry: written by the controller before attach.
pub const B4_CONFIG: &str = "B4_CONFIG";
/// `Array<[u8; 4]>`: the public IPv4 pool, `pool_len` entries used.
pub const POOL: &str = "POOL";
/// `HashMap<[u8; 4], u32>`: pool address -> index, to recognise inbound traffic.
pub const POOL_INDEX: &str = "POOL_INDEX";
/// `LpmTrie<[u8; 16], u32>`: B4 prefixes allowed to open softwires (RFC 6333 §11).
pub const B4_ALLOW: &str = "B4_ALLOW";
/// `LpmTrie<[u8; 4], u32>`: IPv4 prefixes that stay on the B4's LAN side.
pub const LOCAL_V4: &str = "LOCAL_V4";
/// `Array<u64>`: which /16s `LOCAL_V4` may match (`crate::hint`).
pub const LOCAL_HINT: &str = "LOCAL_HINT";
/// `HashMap<NatOutKey, NatOutValue>`: softwire + inside endpoint -> outside endpoint.
pub const NAT_OUT: &str = "NAT_OUT";
/// `HashMap<NatInKey, NatInValue>`: outside endpoint -> softwire + inside endpoint.
pub const NAT_IN: &str = "NAT_IN";

/// `HashMap<BlockKey, BlockValue>`: port blocks in use or held down. Absent = free.
pub const BLOCKS: &str = "BLOCKS";
/// `HashMap<SlotKey, Slot>`: the port blocks each softwire holds, by slot.
pub const SW_BLOCKS: &str = "SW_BLOCKS";
/// `RingBuf` of [`NatEvent`]: port-block allocations and mapping creations, for the NAT log.
pub const EVENTS: &str = "EVENTS";
/// `Array<SlowConfig>`, one entry: the slow path (both roles).
pub const SLOW_CONFIG: &str = "SLOW_CONFIG";
/// `PerCpuArray<NextHopSlot>` of [`NEXT_HOP_SLOTS`]: the FIB's answers, cached per CPU in
/// a direct-mapped table (slot [`next_hop_slot`]); an array lookup is inlined by the
/// verifier, where a hash lookup cost a third of a forwarded packet (docs/benchmarks.md).
pub const NEXT_HOPS: &str = "NEXT_HOPS";
/// `PerCpuArray<Tick>`, one entry: the dataplane's clock, read once per tick
/// (`bpf_ktime_get_ns` costs more than a map lookup in a VM; docs/benchmarks.md).
pub const CLOCK: &str = "CLOCK";
/// `Array<u32>`, two entries: the next-hop cache's generation, and the seed of its slot hash
/// ([`next_hop_slot`]). Generation 0 disables the cache; the controller starts it at a
/// random value (so, but for a 1 in 2^32 chance, not one used before) and bumps it on every route, neighbour, address
/// or link change.
pub const NH_GEN: &str = "NH_GEN";
/// tc: interfaces (veth) whose peer is in another namespace: redirected with
/// `bpf_redirect_peer`.
pub const PEER_REDIRECT: &str = "PEER_REDIRECT";
/// `DevMap`, one entry: the slow path's TAP, the redirect target for hand-overs.
pub const SLOW_DEV: &str = "SLOW_DEV";

/// Default size of the NAT tables (mappings). Tunable at load time.
pub const DEFAULT_MAX_MAPPINGS: u32 = 1 << 20;
/// Largest public pool (addresses).
pub const MAX_POOL: u32 = 1 << 16;
/// Entries in each LPM trie.
pub const MAX_PREFIXES: u32 = 1024;

/// AFTR configuration (single entry in [`AFTR_CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AftrConfig {
    /// The AFTR's softwire endpoint (outer destination of B4 traffic).
    pub aftr_addr: [u8; 16],
    /// Outside port range, host order, inclusive.
    pub port_lo: u16,
    pub port_hi: u16,
    /// Number of valid entries in [`POOL`]; 0 means "not configured".
    pub pool_len: u32,
    /// Secret mixed into the port search so outside ports are hard to guess (RFC 6056).
    pub hash_seed: u32,
    /// Outer hop limit for packets sent to B4s.
    pub hop_limit: u8,
    /// Port blocks a softwire may hold (1..=[`crate::nat::MAX_BLOCKS`]).
    pub max_blocks: u8,
    /// Ports per block (a power of two, at least [`crate::nat::MIN_BLOCK_SIZE`]).
    pub block_size: u16,
    /// Blocks per public address: `(port_hi - port_lo + 1) / block_size`.
    pub blocks_per_addr: u16,
    /// `AFTR_*` flags.
    pub flags: u16,
    /// New mappings refused once a softwire holds this many (0: only the port quota).
    pub max_sessions: u32,
    /// New mappings per second per softwire, token bucket with this burst (0: unlimited).
    pub new_per_sec: u32,
    /// ICMP destination-unreachable replies per second per CPU (0: never send).
    pub icmp_per_sec: u32,
    /// Code of those replies (13 "administratively prohibited", RFC 5508 REQ-8; or 1).
    pub icmp_code: u8,
    /// Filtering per protocol, 2 bits each (`crate::nat::filter_mode`): UDP, TCP, ICMP.
    pub filter_modes: u8,
    /// TCP MSS that SYNs are clamped to, host order (0: off).
    pub mss: u16,
    /// MTU of the internet-side interface: a DF=1 packet larger than this gets its route's
    /// MTU checked before translation (0: never checked, such packets are dropped, counted).
    pub v4_mtu: u16,
    /// Remote endpoints one mapping may have in [`PEERS`] (non-EIF filtering); more are
    /// refused, counted (`peer_limit_refused`).
    pub max_peers: u16,
    /// The subscriber of a B4 address is the address ANDed with this mask
    /// (`--subscriber-prefix-len`, RFC 7785 §3): quota, blocks, session and rate limits
    /// belong to the subscriber; mappings belong to the /128 that made them.
    pub subscriber_mask: [u8; 16],
    /// Softwire packets are accepted only on this interface, and IPv4 to the pool only on
    /// `internet_ifindex` (both may be the same interface); 0 accepts any.
    pub tunnel_ifindex: u32,
    pub internet_ifindex: u32,
    /// Fragments per second per subscriber handed to reassembly (IPv6 to the kernel, IPv4 to
    /// the slow path), and first fragments opening a chain from the internet; 0: unlimited.
    pub frag_per_sec: u32,
    /// Strides coprime to `blocks_per_addr` (computed by the controller): a block search
    /// that steps by one of them visits every block of an address once.
    pub block_strides: [u16; 4],
    /// The pool's lowest and highest address, host order: an address outside is no pool
    /// address, without a POOL_INDEX lookup ([`AftrConfig::may_be_pool`]).
    pub pool_lowest: u32,
    pub pool_highest: u32,
}

impl AftrConfig {
    /// False when `a` cannot be a pool address (a cheap test before the POOL_INDEX lookup,
    /// which most internet destinations would miss).
    #[inline(always)]
    pub fn may_be_pool(&self, a: &[u8; 4]) -> bool {
        let x = u32::from_be_bytes(*a);
        self.pool_lowest <= x && x <= self.pool_highest
    }
}

/// `HashMap<PeerKey, u64>`: remote endpoints each mapping has sent to, for address- and
/// address-and-port-dependent filtering (RFC 4787 REQ-8); value: last use. Not
/// preallocated, sized for any filtering mode, so a reload may switch modes.
pub const PEERS: &str = "PEERS";

/// `LpmTrie<[u8; 4], u32>`: IPv4 destinations a subscriber may not reach through the AFTR
/// (the AFTR's own addresses, special-purpose ranges, `--deny-destination`).
pub const DENY_V4: &str = "DENY_V4";
/// `Array<u64>`: which /16s `DENY_V4` may match (`crate::hint`).
pub const DENY_HINT: &str = "DENY_HINT";
/// `LruHashMap<FragKey, u64>`: IPv4 fragment chains from the internet whose first fragment
/// matched a mapping (value: when); later fragments without a chain are dropped in XDP.
pub const FRAG_CHAINS: &str = "FRAG_CHAINS";
/// `LruHashMap<[u8; 16], FragBudget>`: per-subscriber budget for fragments handed to
/// reassembly (IPv6 to the kernel, IPv4 to the slow path).
pub const FRAG_BUDGET: &str = "FRAG_BUDGET";
/// `Array<u32>` indexed like [`POOL`]: free blocks on each address at the last sweep
/// (lowered by XDP as it claims them; a hint, never a promise).
pub const ADDR_FREE: &str = "ADDR_FREE";
/// `Array<u32>`: entry 0 holds a count n, entries 1..=n pool indexes with free blocks at the
/// last sweep, most free first (where a subscriber's first block goes when its hashed
/// address is full).
pub const FREE_ADDRS: &str = "FREE_ADDRS";
/// Entries of [`FREE_ADDRS`] after the count.
pub const FREE_ADDRS_LEN: u32 = 64;

/// [`B4_ALLOW`] value of a /128 entry that denies one of the AFTR host's own addresses as a
/// B4 source (longest match wins over the allowing prefix).
pub const B4_DENY: u32 = 0;
/// [`B4_ALLOW`] value of an allowed prefix.
pub const B4_PERMIT: u32 = 1;

/// Key of [`FRAG_CHAINS`]: what RFC 791 names a datagram by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Raw network-order identification.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`FRAG_BUDGET`]: a token bucket of fragments per second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragBudget {
    pub tokens: u32,
    pub _pad: u32,
    pub refill_ns: u64,
}

const _: () = assert!(size_of::<FragKey>() == 12);
const _: () = assert!(size_of::<FragBudget>() == 16);

/// Key of [`PEERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub outside_addr: [u8; 4],
    /// Raw network-order words.
    pub outside_port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub remote_addr: [u8; 4],
    /// 0 under address-dependent filtering.
    pub remote_port: u16,
    pub _pad2: u16,
}

const _: () = assert!(size_of::<PeerKey>() == 16);

/// Key of [`SOFTWIRES`]: the B4 address. Value: [`SoftwireState`].
pub const SOFTWIRES: &str = "SOFTWIRES";
/// `PerCpuArray<IcmpBucket>` (one entry): rate limit of generated ICMP errors.
pub const ICMP_BUCKET: &str = "ICMP_BUCKET";

/// Per-softwire limit state (RFC 6888 REQ-4/5).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftwireState {
    /// Mappings held: XDP adds one per new mapping; the sweep recounts every second.
    pub sessions: u64,
    /// Rate-limit tokens (new mappings) left.
    pub tokens: u32,
    /// The [`crate::nat::stamp_epoch`] of its newest admitted mapping: a sweep whose cycle
    /// began since then has not seen every mapping of it (see [`Slot::last_new`]).
    pub last_new: u32,
    /// When the tokens were last refilled (`bpf_ktime_get_ns`).
    pub refill_ns: u64,
    /// New mappings refused by a limit (quota, sessions or rate).
    pub refused: u64,
}

/// Token bucket for generated ICMP errors, one per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcmpBucket {
    pub tokens: u32,
    pub _pad: u32,
    pub refill_ns: u64,
}

const _: () = assert!(size_of::<SoftwireState>() == 32);
const _: () = assert!(size_of::<IcmpBucket>() == 16);

/// [`AftrConfig::flags`]: inbound packets refresh their mapping too (RFC 4787 REQ-6 MAY).
pub const AFTR_INBOUND_REFRESH: u16 = 1;
/// `AftrConfig.flags`: XDP reports every mapping it creates (`--log-sessions`).
pub const AFTR_LOG_SESSIONS: u16 = 2;
/// `AftrConfig.flags`: ... with the destination of its first packet (`--log-destinations`).
pub const AFTR_LOG_DESTINATIONS: u16 = 4;

/// B4 configuration (single entry in [`B4_CONFIG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct B4Config {
    /// The B4's softwire endpoint (outer source of encapsulated packets).
    pub b4_addr: [u8; 16],
    /// The AFTR (outer destination; the only accepted source of softwire packets).
    pub aftr_addr: [u8; 16],
    pub lan_ifindex: u32,
    pub wan_ifindex: u32,
    pub hop_limit: u8,
    /// Non-zero once the controller has written a complete configuration.
    pub enabled: u8,
    /// TCP MSS that SYNs are clamped to, host order (0: off).
    pub mss: u16,
}

/// Key of [`NAT_OUT`]: the softwire plus the inside endpoint (RFC 6333 §6.6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatOutKey {
    /// B4 IPv6 address: the softwire identifier.
    pub b4: [u8; 16],
    pub inside_addr: [u8; 4],
    /// Inside source port, or ICMP echo identifier; raw network-order word.
    pub inside_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`NAT_OUT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatOutValue {
    pub outside_addr: [u8; 4],
    /// Raw network-order word.
    pub outside_port: u16,
    /// TCP flags seen (`crate::nat::TCP_*` bits); 0 for UDP and ICMP.
    pub tcp_state: u8,
    /// Remote endpoints in [`PEERS`] for this mapping (approximate: XDP adds without
    /// atomics, the sweep recounts).
    pub peers: u8,
    /// `bpf_ktime_get_ns` at creation.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns` of the last outbound packet (RFC 4787 REQ-6: outbound refreshes).
    pub last_seen_ns: u64,
}

/// Key of [`NAT_IN`]: the outside endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatInKey {
    pub outside_addr: [u8; 4],
    /// Raw network-order word.
    pub outside_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`NAT_IN`]: enough to rebuild the inside endpoint and the softwire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatInValue {
    pub b4: [u8; 16],
    pub inside_addr: [u8; 4],
    /// Raw network-order word.
    pub inside_port: u16,
    pub _pad: u16,
}

impl NatOutKey {
    /// The reverse-table key for this mapping's outside endpoint.
    #[inline(always)]
    pub const fn inbound_key(&self, outside_addr: [u8; 4], outside_port: u16) -> NatInKey {
        NatInKey {
            outside_addr,
            outside_port,
            proto: self.proto,
            _pad: 0,
        }
    }

    /// The reverse-table value pointing back at this key.
    #[inline(always)]
    pub const fn inbound_value(&self) -> NatInValue {
        NatInValue {
            b4: self.b4,
            inside_addr: self.inside_addr,
            inside_port: self.inside_port,
            _pad: 0,
        }
    }
}

/// Key of [`BLOCKS`]: one block of ports on one public address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub addr: [u8; 4],
    /// Block number within the address's port range.
    pub block: u16,
    pub _pad: u16,
}

/// Value of [`BLOCKS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockValue {
    /// The softwire that holds (or last held) the block.
    pub b4: [u8; 16],
    pub allocated_ns: u64,
    /// 0 while in use; the release time while held down (RFC 6888 REQ-8).
    pub released_ns: u64,
}

/// Key of [`SW_BLOCKS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub b4: [u8; 16],
    pub slot: u8,
    pub _pad: [u8; 3],
}

/// Value of [`SW_BLOCKS`]: which block fills this slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub addr: [u8; 4],
    /// Index of `addr` in [`POOL`] (so later blocks stay on the same address: paired pooling).
    pub addr_index: u32,
    pub block: u16,
    /// Non-zero while the block is held down (released by the sweep, RFC 6888 REQ-8): the
    /// subscriber gets it back first, with the same address and range (logged as allocated
    /// again); nobody else can have it until the hold-down has passed.
    pub held: u8,
    /// Written by XDP when a port search found no free port in the block: the
    /// [`crate::nat::full_epoch`] it happened in. New mappings skip the block while the
    /// epoch lasts (about a second), so a subscriber with full blocks pays one search per
    /// block per second, not one per new mapping; 0: no hint.
    pub full: u8,
    /// Written by XDP when it makes a mapping in the block: the [`crate::nat::stamp_epoch`]
    /// of the newest one (written only when it changes, so once a second at most). A sweep
    /// that reads NAT_OUT over several seconds cannot see mappings made behind its cursor;
    /// it releases no block stamped since its cycle began.
    pub last_new: u32,
}

/// Key of [`NEXT_HOPS`]: where a packet goes, and where it came in (the FIB lookup's inputs,
/// but the source address: the cache assumes routes do not depend on it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHopKey {
    pub dst: [u8; 16],
    pub ifindex: u32,
    /// AF_INET or AF_INET6.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of [`NEXT_HOPS`]: what `bpf_fib_lookup` answered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    /// [`NH_GEN`] when cached: an older entry is ignored.
    pub gen: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The longest packet the FIB let through (its MTU check); longer ones ask it again.
    pub max_len: u16,
    pub _pad: u16,
}

/// One entry of [`NEXT_HOPS`]: the lookup it answers and the answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHopSlot {
    pub key: NextHopKey,
    pub hop: NextHop,
}

/// Entries of [`NEXT_HOPS`] per CPU (a power of two). Destinations that share a slot take
/// turns: each is still right, only slower (a FIB lookup when the other one is cached).
pub const NEXT_HOP_SLOTS: u32 = 1024;

/// The slot of [`NEXT_HOPS`] that caches `key`: the destination's words folded, with the
/// interface and the controller's random `seed` (`NH_GEN[1]`, so nobody can compute which
/// destinations share a victim's slot in advance), and multiplied (Fibonacci hashing), so
/// near addresses spread. Not a cryptographic hash: a collision costs a FIB lookup, never a
/// wrong answer (the key is compared).
#[inline(always)]
pub const fn next_hop_slot(key: &NextHopKey, seed: u32) -> u32 {
    let d = &key.dst;
    let mut x = seed ^ key.ifindex ^ (key.family as u32) << 24;
    let mut i = 0;
    while i < 16 {
        x ^= u32::from_ne_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        i += 4;
    }
    x.wrapping_mul(0x9e37_79b9) >> (32 - NEXT_HOP_SLOTS.trailing_zeros())
}

/// Value of [`CLOCK`]: `bpf_ktime_get_ns` as read at the start of tick `jiffies`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    pub jiffies: u64,
    pub ns: u64,
}

const _: () = assert!(size_of::<NextHopKey>() == 24);
const _: () = assert!(size_of::<NextHop>() == 24);
const _: () = assert!(size_of::<NextHopSlot>() == 48);
const _: () = assert!(NEXT_HOP_SLOTS.is_power_of_two());

/// Kinds of [`NatEvent`]: RFC 8158 natEvent values (IANA "NAT Event Type").
/// Written by the controller's sweep only (a subscriber found no address with a free block).
pub const EVENT_ADDRESSES_EXHAUSTED: u8 = 3;
pub const EVENT_MAPPING_CREATED: u8 = 8;
pub const EVENT_MAPPING_DELETED: u8 = 9;
pub const EVENT_PORTS_EXHAUSTED: u8 = 12;
pub const EVENT_QUOTA_EXCEEDED: u8 = 13;
pub const EVENT_BLOCK_ALLOCATED: u8 = 16;
pub const EVENT_BLOCK_RELEASED: u8 = 17;

/// A NAT event from the kernel to the controller: a port block allocated, or (with
/// `--log-sessions`) a mapping created.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub b4: [u8; 16],
    /// Outside (public) address.
    pub addr: [u8; 4],
    /// The block's first and last port, or the mapping's outside port twice; host order.
    pub port_lo: u16,
    pub port_hi: u16,
    /// `EVENT_*`.
    pub kind: u8,
    /// Mapping events: the protocol, inside endpoint and (with `--log-destinations`) the
    /// first destination; zero for blocks. Ports in host order.
    pub proto: u8,
    pub inside_port: u16,
    pub inside_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub dst_port: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<BlockKey>() == 8);
const _: () = assert!(size_of::<BlockValue>() == 32);
const _: () = assert!(size_of::<SlotKey>() == 20);
const _: () = assert!(size_of::<Slot>() == 16);
const _: () = assert!(size_of::<NatEvent>() == 48);
const _: () = assert!(size_of::<AftrConfig>() == 100);
const _: () = assert!(size_of::<B4Config>() == 44);
const _: () = assert!(size_of::<NatOutKey>() == 24);
const _: () = assert!(size_of::<NatOutValue>() == 24);
const _: () = assert!(size_of::<NatInKey>() == 8);
const _: () = assert!(size_of::<NatInValue>() == 24);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)] with explicit padding and only integer/byte-array fields.
    unsafe impl aya::Pod for AftrConfig {}
    unsafe impl aya::Pod for B4Config {}
    unsafe impl aya::Pod for NatOutKey {}
    unsafe impl aya::Pod for NatOutValue {}
    unsafe impl aya::Pod for NatInKey {}
    unsafe impl aya::Pod for NatInValue {}
    unsafe impl aya::Pod for BlockKey {}
    unsafe impl aya::Pod for BlockValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Slot {}
    unsafe impl aya::Pod for NatEvent {}
    unsafe impl aya::Pod for SoftwireState {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for IcmpBucket {}
    unsafe impl aya::Pod for crate::slow::SlowConfig {}
    unsafe impl aya::Pod for NextHopKey {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragBudget {}
}
