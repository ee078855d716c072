//! Expiry, done by the controller: a sweep every second reclaims idle mappings, releases
//! port blocks whose last mapping is gone into a hold-down, and frees held blocks after it.
//!
//! Why the controller and not `bpf_timer`: a timer per mapping costs 48+ bytes of map
//! memory and timer work per flow, while a sweep reads the tables in bulk off the fast path
//! and can emit release events in order for the NAT log. The fast path never waits on it:
//! XDP only ever inserts; the sweep only ever deletes entries it has found idle.

use std::{collections::HashMap as StdMap, path::Path, time::Instant};

use anyhow::Result;
use aya::maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray};
use dslite_common::{
    maps::{
        self as m, AftrConfig, BlockKey, BlockValue, NatInKey, NatInValue, NatOutKey, NatOutValue,
        PeerKey, Slot, SlotKey, SoftwireState, EVENT_ADDRESSES_EXHAUSTED, EVENT_BLOCK_ALLOCATED,
        EVENT_BLOCK_RELEASED, EVENT_MAPPING_DELETED, EVENT_PORTS_EXHAUSTED, EVENT_QUOTA_EXCEEDED,
    },
    nat::{block_first_port, block_of, subscriber_of, tcp_established},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    clock::unix_ms,
    config::Timeouts,
    dataplane::{batch::scan_map, Pinned},
    natlog::{Limit, NatRecord},
};

/// Most mappings deleted per sweep: bounds one sweep's work (the rest go next second).
pub const MAX_EXPIRE_PER_SWEEP: usize = 1 << 16;
/// A block younger than this is never released: its first mapping may still be on its way
/// into NAT_OUT on another CPU.
const BLOCK_GRACE_NS: u64 = 2_000_000_000;
/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;

/// What one sweep did, and what it saw (for the NAT log and the metrics).
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub scanned: usize,
    pub expired: usize,
    /// NAT log records: blocks released; mappings deleted (with `log_sessions`); softwires
    /// that had new mappings refused since the last sweep (quota or exhaustion).
    pub records: Vec<NatRecord>,
    pub blocks_released: usize,
    pub blocks_freed: usize,
    /// Live mappings by protocol: UDP, TCP, ICMP, other.
    pub mappings: [u64; 4],
    /// Softwires holding at least one mapping.
    pub softwires: usize,
    /// Blocks in use and held down, per public address.
    pub blocks_in_use: std::collections::BTreeMap<[u8; 4], u64>,
    pub blocks_held: std::collections::BTreeMap<[u8; 4], u64>,
    pub micros: u128,
}

/// Handles on the AFTR's pinned tables.
pub struct Sweeper {
    nat_out: HashMap<MapData, NatOutKey, NatOutValue>,
    /// NAT_OUT again, for batch scans (its own descriptor).
    nat_out_scan: MapData,
    nat_in: HashMap<MapData, NatInKey, NatInValue>,
    blocks: HashMap<MapData, BlockKey, BlockValue>,
    slots: HashMap<MapData, SlotKey, Slot>,
    softwires: HashMap<MapData, [u8; 16], SoftwireState>,
    peers: HashMap<MapData, PeerKey, u64>,
    addr_free: Array<MapData, u32>,
    free_addrs: Array<MapData, u32>,
    /// The pool, in POOL order (to publish free blocks per address).
    pool: Vec<[u8; 4]>,
    /// ADDR_FREE as last written, so only changes are written.
    free_written: Vec<u32>,
    free_list_written: Vec<u32>,
    pub timeouts: Timeouts,
    cfg: AftrConfig,
    /// Log every mapping deleted (`--log-sessions`).
    pub log_sessions: bool,
    /// Each softwire's refusal count at the last sweep.
    refused: StdMap<[u8; 16], u64>,
    /// The kernel's counters, to tell which limit refused (None if unreadable).
    stats: Option<PerCpuArray<MapData, u64>>,
    /// The refusal counters at the last sweep.
    last_refusals: Option<[u64; 5]>,
    /// `--max-mappings`, for the record of a full mapping table.
    pub max_mappings: u32,
}

/// The kernel's refusal counters, in the order of [`Rose`]'s fields, then a full table.
const REFUSAL_COUNTERS: [dslite_common::Counter; 5] = [
    dslite_common::Counter::DropSessionLimit,
    dslite_common::Counter::DropRateLimit,
    dslite_common::Counter::DropQuotaExceeded,
    dslite_common::Counter::DropPoolExhausted,
    dslite_common::Counter::DropMappingTableFull,
];

/// Which refusal counters rose since the last sweep (for the whole AFTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rose {
    pub sessions: bool,
    pub rate: bool,
    pub quota: bool,
    pub pool: bool,
}

/// What the sweep knows of a subscriber that had new mappings refused since the last one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refused {
    pub b4: [u8; 16],
    /// Its mappings: the larger of XDP's count and the sweep's recount.
    pub sessions: u64,
    /// Blocks it holds now, and the address they are on (paired pooling: one).
    pub blocks: u32,
    pub addr: Option<[u8; 4]>,
}

/// The NAT log record for a subscriber's refusals: which limit, or which exhaustion.
///
/// XDP counts refusals per subscriber without saying which limit refused, and per limit
/// for the whole AFTR. The subscriber's state tells most cases apart, in the order XDP
/// checks them: at `--max-sessions`, the session limit; holding `--max-blocks` blocks, its
/// port quota (RFC 6888 REQ-4); fewer, no free block (RFC 8158 natEvent 12 on its
/// address, or 3 with no block at all). A rate refusal leaves no state, so the AFTR-wide
/// counters decide: when one kind of refusal alone rose since the last sweep, it is that
/// one; when several did, the state's answer if its counter rose, else the rate limit.
pub fn refusal_record(
    f: &Refused,
    rose: Option<Rose>,
    cfg: &AftrConfig,
    unix_ms: i128,
) -> NatRecord {
    #[derive(Clone, Copy, PartialEq)]
    enum Why {
        Sessions,
        Rate,
        Quota,
        Pool,
    }
    let by_state = if cfg.max_sessions != 0 && f.sessions >= cfg.max_sessions as u64 {
        Why::Sessions
    } else if f.blocks >= cfg.max_blocks as u32 {
        Why::Quota
    } else {
        Why::Pool
    };
    let why = match rose {
        None => by_state,
        Some(r) => {
            let rose: Vec<Why> = [
                (Why::Sessions, r.sessions),
                (Why::Rate, r.rate),
                (Why::Quota, r.quota),
                (Why::Pool, r.pool),
            ]
            .into_iter()
            .filter(|(_, up)| *up)
            .map(|(w, _)| w)
            .collect();
            match rose.as_slice() {
                [only] => *only,
                _ if rose.contains(&by_state) => by_state,
                _ if r.rate => Why::Rate,
                _ => by_state,
            }
        }
    };
    let base = NatRecord {
        unix_ms,
        kind: EVENT_QUOTA_EXCEEDED,
        b4: f.b4.into(),
        outside: std::net::Ipv4Addr::UNSPECIFIED,
        port_lo: 0,
        port_hi: 0,
        proto: 0,
        inside: None,
        dst: None,
        limit: None,
    };
    let ports = cfg.max_blocks as u32 * cfg.block_size as u32;
    match why {
        Why::Sessions => NatRecord {
            limit: Some(Limit::Sessions(cfg.max_sessions)),
            ..base
        },
        Why::Rate => NatRecord {
            limit: Some(Limit::Rate(cfg.new_per_sec)),
            ..base
        },
        Why::Quota => NatRecord {
            limit: Some(Limit::Ports(ports)),
            ..base
        },
        Why::Pool => match f.addr {
            Some(a) => NatRecord {
                kind: EVENT_PORTS_EXHAUSTED,
                outside: a.into(),
                ..base
            },
            None => NatRecord {
                kind: EVENT_ADDRESSES_EXHAUSTED,
                ..base
            },
        },
    }
}

/// Idle timeout (ns) of a mapping, by protocol and TCP state.
pub fn timeout_ns(t: &Timeouts, proto: u8, tcp_state: u8) -> u64 {
    let secs = match proto {
        IPPROTO_TCP if tcp_established(tcp_state) => t.tcp_established,
        IPPROTO_TCP => t.tcp_transitory,
        IPPROTO_UDP => t.udp,
        IPPROTO_ICMP => t.icmp,
        _ => t.udp,
    };
    secs.saturating_mul(1_000_000_000)
}

/// Index into `SweepReport::mappings`.
fn proto_slot(proto: u8) -> usize {
    match proto {
        IPPROTO_UDP => 0,
        IPPROTO_TCP => 1,
        IPPROTO_ICMP => 2,
        _ => 3,
    }
}

/// Kept for callers not yet switched to [`crate::clock::monotonic_ns`].
pub use crate::clock::monotonic_ns;

impl Sweeper {
    pub fn open(pin: &Path, cfg: AftrConfig, timeouts: Timeouts) -> Result<Sweeper> {
        let pinned = Pinned::new(pin);
        Ok(Sweeper {
            nat_out: pinned.hash(m::NAT_OUT)?,
            nat_out_scan: pinned.open(m::NAT_OUT)?,
            nat_in: pinned.hash(m::NAT_IN)?,
            blocks: pinned.hash(m::BLOCKS)?,
            slots: pinned.hash(m::SW_BLOCKS)?,
            softwires: pinned.hash(m::SOFTWIRES)?,
            peers: pinned.hash(m::PEERS)?,
            addr_free: pinned.array(m::ADDR_FREE)?,
            free_addrs: pinned.array(m::FREE_ADDRS)?,
            pool: {
                let a: Array<MapData, [u8; 4]> = pinned.array(m::POOL)?;
                (0..cfg.pool_len)
                    .map(|i| a.get(&i, 0))
                    .collect::<Result<_, _>>()?
            },
            free_written: Vec::new(),
            free_list_written: Vec::new(),
            timeouts,
            cfg,
            log_sessions: false,
            refused: StdMap::new(),
            stats: pinned.per_cpu_array(m::STATS).ok(),
            last_refusals: None,
            max_mappings: 0,
        })
    }

    /// The refusal counters summed over CPUs, and which rose since the last call.
    fn refusals_rose(&mut self) -> (Option<Rose>, bool) {
        let now: Option<[u64; 5]> = self.stats.as_ref().and_then(|s| {
            let mut v = [0u64; 5];
            for (i, c) in REFUSAL_COUNTERS.iter().enumerate() {
                v[i] = s.get(&(*c as u32), 0).ok()?.iter().sum();
            }
            Some(v)
        });
        let last = std::mem::replace(&mut self.last_refusals, now);
        match (last, now) {
            (Some(a), Some(b)) => (
                Some(Rose {
                    sessions: b[0] > a[0],
                    rate: b[1] > a[1],
                    quota: b[2] > a[2],
                    pool: b[3] > a[3],
                }),
                b[4] > a[4],
            ),
            _ => (None, false),
        }
    }

    /// A reloaded configuration (filtering modes; the block layout never changes live).
    pub fn set_config(&mut self, cfg: AftrConfig) {
        self.cfg = cfg;
    }
}

/// The block an outside endpoint lies in.
fn block_key(c: &AftrConfig, addr: [u8; 4], port_be: u16) -> Option<BlockKey> {
    block_of(
        u16::from_be(port_be),
        c.port_lo,
        c.block_size,
        c.blocks_per_addr,
    )
    .map(|block| BlockKey {
        addr,
        block,
        _pad: 0,
    })
}

/// A NAT-log record of `kind`: `b4` held ports `lo..=hi` of `addr`.
fn event(unix_ms: i128, kind: u8, b4: [u8; 16], addr: [u8; 4], lo: u16, hi: u16) -> NatRecord {
    NatRecord {
        unix_ms,
        kind,
        b4: b4.into(),
        outside: addr.into(),
        port_lo: lo,
        port_hi: hi,
        proto: 0,
        inside: None,
        dst: None,
        limit: None,
    }
}

/// The record of a whole block (its first to last port).
fn block_event(
    unix_ms: i128,
    cfg: &AftrConfig,
    kind: u8,
    b4: [u8; 16],
    bk: &BlockKey,
) -> NatRecord {
    let first = block_first_port(bk.block, cfg.port_lo, cfg.block_size);
    event(
        unix_ms,
        kind,
        b4,
        bk.addr,
        first,
        first + (cfg.block_size - 1),
    )
}

impl Sweeper {
    /// One pass at time `now` (monotonic ns).
    pub fn sweep(&mut self, now: u64) -> Result<SweepReport> {
        let start = Instant::now();
        let ms = unix_ms(now);
        let record = |kind, b4, addr, lo, hi| event(ms, kind, b4, addr, lo, hi);
        let mut r = SweepReport::default();
        let mask = self.cfg.subscriber_mask;
        // Blocks with a live mapping, and the subscriber the mapping belongs to.
        let mut live: StdMap<BlockKey, [u8; 16]> = StdMap::new();
        let mut expired = Vec::new();
        // Mappings per subscriber (RFC 7785 §3: limits are the subscriber's).
        let mut sessions: StdMap<[u8; 16], u64> = StdMap::new();
        // Live mappings by outside endpoint: (timeout, peers recorded on the mapping, key).
        let mut by_outside: StdMap<NatInKey, (u64, u8, NatOutKey)> = StdMap::new();
        let mut all = Vec::new();
        scan_map::<NatOutKey, NatOutValue>(&self.nat_out_scan, |k, v| all.push((k, v)))?;
        let (cfg, timeouts) = (self.cfg, self.timeouts);
        let mut keep = |k: &NatOutKey, v: &NatOutValue, r: &mut SweepReport| {
            *sessions.entry(subscriber_of(&k.b4, &mask)).or_default() += 1;
            r.mappings[proto_slot(k.proto)] += 1;
            if let Some(b) = block_key(&cfg, v.outside_addr, v.outside_port) {
                live.insert(b, subscriber_of(&k.b4, &mask));
            }
            if cfg.filter_modes != 0 {
                by_outside.insert(
                    k.inbound_key(v.outside_addr, v.outside_port),
                    (timeout_ns(&timeouts, k.proto, v.tcp_state), v.peers, *k),
                );
            }
        };
        for (k, v) in all {
            r.scanned += 1;
            let idle = now.saturating_sub(v.last_seen_ns);
            if idle >= timeout_ns(&self.timeouts, k.proto, v.tcp_state)
                && expired.len() < MAX_EXPIRE_PER_SWEEP
            {
                expired.push((k, v));
            } else {
                keep(&k, &v, &mut r);
            }
        }
        for (k, v) in expired {
            // Re-read: a packet may have refreshed it since the scan.
            match self.nat_out.get(&k, 0) {
                Ok(cur) if cur.last_seen_ns == v.last_seen_ns => {}
                _ => {
                    keep(&k, &v, &mut r);
                    continue;
                }
            }
            r.expired += 1;
            let port = u16::from_be(v.outside_port);
            if let Some(rec) =
                self.delete_mapping(&k, &v, record(0, k.b4, v.outside_addr, port, port))
            {
                r.records.push(rec);
            }
        }
        self.sweep_blocks(now, &live, &mut r)?;
        self.sweep_peers(now, &by_outside)?;

        // The blocks each subscriber holds (in use, not held down), to tell its refusals
        // apart.
        let mut holds: StdMap<[u8; 16], (u32, [u8; 4])> = StdMap::new();
        for e in self.slots.iter() {
            let (k, s) = e?;
            if s.held == 0 {
                let h = holds.entry(k.b4).or_insert((0, s.addr));
                h.0 += 1;
            }
        }
        // Recount each softwire's sessions (XDP's increments are not atomic, and expiry
        // happens here); forget softwires with none (their rate bucket starts full again).
        let mut updates = Vec::new();
        let mut refused = StdMap::new();
        let (rose, table_full) = self.refusals_rose();
        if table_full {
            // RFC 8158 natQuotaExceededEvent 2: the whole mapping table, no one subscriber.
            r.records.push(NatRecord {
                b4: std::net::Ipv6Addr::UNSPECIFIED,
                limit: Some(Limit::Mappings(self.max_mappings)),
                ..record(EVENT_QUOTA_EXCEEDED, [0; 16], [0; 4], 0, 0)
            });
        }
        for e in self.softwires.iter() {
            let (b4, st) = e?;
            // A softwire refused new mappings since the last sweep: one record per second
            // at most, saying which limit or which exhaustion.
            if st.refused > self.refused.get(&b4).copied().unwrap_or(0) {
                let (blocks, addr) = holds.get(&b4).copied().unwrap_or((0, [0; 4]));
                let facts = Refused {
                    b4,
                    sessions: st.sessions.max(sessions.get(&b4).copied().unwrap_or(0)),
                    blocks,
                    addr: (blocks > 0).then_some(addr),
                };
                r.records.push(refusal_record(&facts, rose, &self.cfg, ms));
            }
            refused.insert(b4, st.refused);
            match sessions.get(&b4) {
                None => updates.push((b4, None)),
                Some(&n) if n != st.sessions => {
                    updates.push((b4, Some(SoftwireState { sessions: n, ..st })))
                }
                Some(_) => {}
            }
        }
        self.refused = refused;
        r.softwires = sessions.len();
        for (b4, st) in updates {
            match st {
                None => {
                    let _ = self.softwires.remove(&b4);
                    self.refused.remove(&b4);
                }
                Some(st) => self.softwires.insert(b4, st, 0)?,
            }
        }
        r.micros = start.elapsed().as_micros();
        Ok(r)
    }

    /// Stopping without `--persist` takes the dataplane, and every block and mapping with it:
    /// a release record for each block still held and, with `log_sessions`, a deletion for
    /// each mapping, at `now`, so that no log shows them held past the stop (a later owner
    /// of the same ports would otherwise share the answer of `dslite whois`). Blocks in
    /// hold-down had their release logged already. Call it once XDP is detached.
    pub fn release_all(&mut self, now: u64) -> Result<Vec<NatRecord>> {
        let ms = unix_ms(now);
        let mut out = Vec::new();
        if self.log_sessions {
            scan_map::<NatOutKey, NatOutValue>(&self.nat_out_scan, |k, v| {
                let port = u16::from_be(v.outside_port);
                out.push(NatRecord {
                    proto: k.proto,
                    inside: Some((k.inside_addr.into(), u16::from_be(k.inside_port))),
                    ..event(ms, EVENT_MAPPING_DELETED, k.b4, v.outside_addr, port, port)
                });
            })?;
        }
        let mut blocks = Vec::new();
        scan_map::<BlockKey, BlockValue>(self.blocks.map(), |bk, bv| {
            if bv.released_ns == 0 {
                blocks.push((bk, bv));
            }
        })?;
        // In a stable order (the map's is its hash's).
        blocks.sort_by_key(|(bk, _)| (bk.addr, bk.block));
        for (bk, bv) in blocks {
            out.push(block_event(ms, &self.cfg, EVENT_BLOCK_RELEASED, bv.b4, &bk));
        }
        Ok(out)
    }
}

impl Sweeper {
    /// Delete one mapping: NAT_OUT first, so a new packet makes a fresh mapping from then on,
    /// and the outside port last (its NAT_IN entry, only if it still points back), so it is
    /// never shared. Returns the deletion record (`base` with the mapping's fields) when
    /// sessions are logged.
    fn delete_mapping(
        &mut self,
        k: &NatOutKey,
        v: &NatOutValue,
        base: NatRecord,
    ) -> Option<NatRecord> {
        let _ = self.nat_out.remove(k);
        let kin = k.inbound_key(v.outside_addr, v.outside_port);
        if self.nat_in.get(&kin, 0).ok() == Some(k.inbound_value()) {
            let _ = self.nat_in.remove(&kin);
        }
        self.log_sessions.then(|| NatRecord {
            kind: EVENT_MAPPING_DELETED,
            proto: k.proto,
            inside: Some((k.inside_addr.into(), u16::from_be(k.inside_port))),
            ..base
        })
    }

    /// Port blocks (RFC 6888 REQ-8): release blocks with no live mapping into hold-down
    /// (their slot stays, marked held, so the subscriber gets them back first), take back
    /// into use a held block that has a live mapping again (a mapping made while the release
    /// was under way: its allocation is logged again, so `whois` stays right), free held
    /// blocks after the hold-down only when no mapping uses them, and repair a live
    /// mapping's block that lost its entry (freed in the same instant as it was reclaimed).
    fn sweep_blocks(
        &mut self,
        now: u64,
        live: &StdMap<BlockKey, [u8; 16]>,
        r: &mut SweepReport,
    ) -> Result<()> {
        let (ms, cfg) = (unix_ms(now), self.cfg);
        let record = |kind, b4, bk: &BlockKey| block_event(ms, &cfg, kind, b4, bk);
        // Slots by block, to mark or free the slot with its block.
        let mut slot_of: StdMap<BlockKey, (SlotKey, Slot)> = StdMap::new();
        for e in self.slots.iter() {
            let (k, s) = e?;
            let bk = BlockKey {
                addr: s.addr,
                block: s.block,
                _pad: 0,
            };
            slot_of.insert(bk, (k, s));
        }
        let hold = self.timeouts.block_hold_down.saturating_mul(1_000_000_000);
        let mut present = std::collections::HashSet::new();
        let mut changes = Vec::new();
        for e in self.blocks.iter() {
            let (bk, bv) = e?;
            present.insert(bk);
            let in_use = live.contains_key(&bk);
            if bv.released_ns == 0 {
                if !in_use && now.saturating_sub(bv.allocated_ns) > BLOCK_GRACE_NS {
                    changes.push((bk, bv, BlockChange::Release));
                }
            } else if in_use {
                changes.push((bk, bv, BlockChange::Unrelease));
            } else if now.saturating_sub(bv.released_ns) >= hold {
                changes.push((bk, bv, BlockChange::Free));
            }
        }
        for (bk, bv, change) in changes {
            let slot = slot_of.get(&bk).copied();
            match change {
                BlockChange::Release => {
                    // Hold it down (RFC 6888 REQ-8); the slot stays, for its owner only.
                    if let Some((sk, s)) = slot {
                        self.slots.insert(sk, Slot { held: 1, ..s }, 0)?;
                    }
                    self.blocks.insert(
                        bk,
                        BlockValue {
                            released_ns: now,
                            ..bv
                        },
                        0,
                    )?;
                    r.records.push(record(EVENT_BLOCK_RELEASED, bv.b4, &bk));
                    r.blocks_released += 1;
                }
                BlockChange::Unrelease => {
                    self.blocks.insert(
                        bk,
                        BlockValue {
                            released_ns: 0,
                            allocated_ns: now,
                            ..bv
                        },
                        0,
                    )?;
                    if let Some((sk, s)) = slot {
                        self.slots.insert(sk, Slot { held: 0, ..s }, 0)?;
                    }
                    r.records.push(record(EVENT_BLOCK_ALLOCATED, bv.b4, &bk));
                }
                BlockChange::Free => {
                    // Re-read: its owner may have taken it back since the scan.
                    match self.blocks.get(&bk, 0) {
                        Ok(cur) if cur.released_ns == bv.released_ns => {}
                        _ => continue,
                    }
                    if let Some((sk, s)) = slot {
                        if self.slots.get(&sk, 0).ok() == Some(s) {
                            let _ = self.slots.remove(&sk);
                        }
                    }
                    let _ = self.blocks.remove(&bk);
                    present.remove(&bk);
                    r.blocks_freed += 1;
                }
            }
        }
        // A live mapping whose block has no entry: claim it back for the mapping's owner.
        for (bk, sub) in live {
            if present.contains(bk) {
                continue;
            }
            let owner = BlockValue {
                b4: *sub,
                allocated_ns: now,
                released_ns: 0,
            };
            if self.blocks.insert(*bk, owner, BPF_NOEXIST).is_ok() {
                r.records.push(record(EVENT_BLOCK_ALLOCATED, *sub, bk));
                present.insert(*bk);
            }
        }
        // Counts per address, and the free-block hints the XDP block search starts from.
        let mut used: StdMap<[u8; 4], u32> = StdMap::new();
        for e in self.blocks.iter() {
            let (bk, bv) = e?;
            *used.entry(bk.addr).or_default() += 1;
            if bv.released_ns == 0 {
                *r.blocks_in_use.entry(bk.addr).or_default() += 1;
            } else {
                *r.blocks_held.entry(bk.addr).or_default() += 1;
            }
        }
        self.publish_free(&used)
    }

    /// Write ADDR_FREE (changed entries only) and FREE_ADDRS (addresses with the most free
    /// blocks first).
    fn publish_free(&mut self, used: &StdMap<[u8; 4], u32>) -> Result<()> {
        let per = self.cfg.blocks_per_addr as u32;
        let free: Vec<u32> = self
            .pool
            .iter()
            .map(|a| per.saturating_sub(used.get(a).copied().unwrap_or(0)))
            .collect();
        // XDP lowers the hints as it claims; write every entry whose truth differs from
        // what we last wrote, and on the first sweep all of them.
        for (i, f) in free.iter().enumerate() {
            if self.free_written.get(i) != Some(f) {
                self.addr_free.set(i as u32, *f, 0)?;
            }
        }
        self.free_written = free.clone();
        let mut order: Vec<u32> = (0..free.len() as u32)
            .filter(|i| free[*i as usize] > 0)
            .collect();
        order.sort_by_key(|i| std::cmp::Reverse(free[*i as usize]));
        order.truncate(m::FREE_ADDRS_LEN as usize);
        if order != self.free_list_written {
            for (j, i) in order.iter().enumerate() {
                self.free_addrs.set(1 + j as u32, *i, 0)?;
            }
            self.free_addrs.set(0, order.len() as u32, 0)?;
            self.free_list_written = order;
        }
        Ok(())
    }

    /// Filtering state (RFC 4787 REQ-8): a remote expires by its own timestamp, after the
    /// idle timeout of its mapping, and with its mapping; each mapping's peer count (which
    /// bounds it in XDP) is recounted. The count is written back into the mapping only when
    /// it changed: that write can race an XDP refresh, whose lost timestamp costs at most
    /// that packet's refresh.
    fn sweep_peers(
        &mut self,
        now: u64,
        by_outside: &StdMap<NatInKey, (u64, u8, NatOutKey)>,
    ) -> Result<()> {
        let mut gone = Vec::new();
        let mut counts: StdMap<NatInKey, u32> = StdMap::new();
        for e in self.peers.iter() {
            let (pk, ts) = e?;
            let kin = NatInKey {
                outside_addr: pk.outside_addr,
                outside_port: pk.outside_port,
                proto: pk.proto,
                _pad: 0,
            };
            match by_outside.get(&kin) {
                Some((timeout, _, _)) if now.saturating_sub(ts) < *timeout => {
                    *counts.entry(kin).or_default() += 1;
                }
                _ => gone.push(pk),
            }
        }
        for pk in gone {
            let _ = self.peers.remove(&pk);
        }
        for (kin, (_, recorded, key)) in by_outside {
            let n = counts.get(kin).copied().unwrap_or(0).min(u8::MAX as u32) as u8;
            if n != *recorded {
                if let Ok(cur) = self.nat_out.get(key, 0) {
                    let _ = self.nat_out.insert(key, NatOutValue { peers: n, ..cur }, 0);
                }
            }
        }
        Ok(())
    }
}

enum BlockChange {
    Release,
    Unrelease,
    Free,
}

/// What [`Sweeper::reconcile`] did.
#[derive(Clone, Debug, Default)]
pub struct Reconciled {
    pub slots: usize,
    pub mappings: usize,
    pub blocks: usize,
    /// NAT log records: the blocks released, and (with `log_sessions`) the mappings deleted.
    pub records: Vec<NatRecord>,
}

impl Sweeper {
    /// Bring the tables in line with a configuration whose pool or B4 prefixes lost entries
    /// (a `--persist` restart, a reload). What is on a public address no longer in `pool`
    /// goes: its slots first, so XDP puts no new mapping there; then its mappings; then its
    /// blocks are released into the hold-down like any other, logged, so `whois` stays right
    /// and no other subscriber gets those ports at once (RFC 6888 REQ-8). The mappings of a
    /// softwire no longer in `allowed` go too; its emptied blocks are then released by the
    /// next sweep, as any emptied block is. A slot that stays learns its address's index in
    /// the new pool (XDP takes a softwire's next block on the address of its others).
    pub fn reconcile(
        &mut self,
        now: u64,
        pool: &[std::net::Ipv4Addr],
        allowed: &[crate::config::Cidr6],
    ) -> Result<Reconciled> {
        // Hashed: a pool has up to 65536 addresses, the tables millions of entries.
        let at: StdMap<[u8; 4], usize> = pool
            .iter()
            .enumerate()
            .map(|(i, a)| (a.octets(), i))
            .collect();
        let index_of = |addr: [u8; 4]| at.get(&addr).copied();
        let allowed_b4 = |b4: &[u8; 16]| allowed.iter().any(|p| p.contains(b4));
        let ms = unix_ms(now);
        let record = |kind, b4, addr, lo, hi| event(ms, kind, b4, addr, lo, hi);
        let mut r = Reconciled::default();
        let mut slots: Vec<(SlotKey, Slot)> = Vec::new();
        scan_map(self.slots.map(), |k, s| slots.push((k, s)))?;
        for (k, s) in slots {
            match index_of(s.addr) {
                Some(i) => {
                    if s.addr_index != i as u32 {
                        let s = Slot {
                            addr_index: i as u32,
                            ..s
                        };
                        self.slots.insert(k, s, 0)?;
                    }
                }
                None => {
                    let _ = self.slots.remove(&k);
                    r.slots += 1;
                }
            }
        }
        let mut all = Vec::new();
        // Only what goes is kept.
        scan_map::<NatOutKey, NatOutValue>(&self.nat_out_scan, |k, v| {
            if !allowed_b4(&k.b4) || index_of(v.outside_addr).is_none() {
                all.push((k, v));
            }
        })?;
        for (k, v) in all {
            r.mappings += 1;
            let port = u16::from_be(v.outside_port);
            if let Some(rec) =
                self.delete_mapping(&k, &v, record(0, k.b4, v.outside_addr, port, port))
            {
                r.records.push(rec);
            }
        }
        let mut blocks: Vec<(BlockKey, BlockValue)> = Vec::new();
        scan_map(self.blocks.map(), |k, v| blocks.push((k, v)))?;
        for (bk, bv) in blocks {
            if bv.released_ns != 0 || index_of(bk.addr).is_some() {
                continue;
            }
            self.blocks.insert(
                bk,
                BlockValue {
                    released_ns: now,
                    ..bv
                },
                0,
            )?;
            r.records
                .push(block_event(ms, &self.cfg, EVENT_BLOCK_RELEASED, bv.b4, &bk));
            r.blocks += 1;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dslite_common::nat::{TCP_CONFIRMED, TCP_FIN_IN, TCP_FIN_OUT, TCP_SYN_IN, TCP_SYN_OUT};

    #[test]
    fn timeouts_follow_protocol_and_tcp_state() {
        let t = Timeouts::default();
        let s = 1_000_000_000;
        assert_eq!(timeout_ns(&t, IPPROTO_UDP, 0), 300 * s);
        assert_eq!(timeout_ns(&t, IPPROTO_ICMP, 0), 60 * s);
        assert_eq!(
            timeout_ns(&t, IPPROTO_TCP, TCP_SYN_OUT),
            240 * s,
            "opening is transitory"
        );
        assert_eq!(
            timeout_ns(&t, IPPROTO_TCP, TCP_SYN_OUT | TCP_SYN_IN | TCP_CONFIRMED),
            7440 * s
        );
        assert_eq!(
            timeout_ns(&t, IPPROTO_TCP, TCP_SYN_OUT | TCP_SYN_IN),
            240 * s,
            "an inbound SYN alone does not establish"
        );
        assert_eq!(
            timeout_ns(
                &t,
                IPPROTO_TCP,
                TCP_SYN_OUT | TCP_SYN_IN | TCP_FIN_OUT | TCP_FIN_IN
            ),
            240 * s,
            "closed both ways is transitory"
        );
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    fn cfg() -> AftrConfig {
        AftrConfig {
            max_blocks: 4,
            block_size: 512,
            max_sessions: 100,
            new_per_sec: 50,
            ..Default::default()
        }
    }

    fn facts(sessions: u64, blocks: u32) -> Refused {
        Refused {
            b4: [0x20, 1, 0xd, 0xb8, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            sessions,
            blocks,
            addr: (blocks > 0).then_some([198, 51, 100, 1]),
        }
    }

    fn what(r: &NatRecord) -> (u8, Option<Limit>, std::net::Ipv4Addr) {
        (r.kind, r.limit, r.outside)
    }

    const ANY: std::net::Ipv4Addr = std::net::Ipv4Addr::UNSPECIFIED;
    const POOL1: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 51, 100, 1);

    #[test]
    fn the_subscribers_state_tells_the_limit() {
        let c = cfg();
        let both = Some(Rose {
            sessions: true,
            rate: true,
            quota: true,
            pool: true,
        });
        for rose in [None, both] {
            let r = refusal_record(&facts(100, 1), rose, &c, 7);
            assert_eq!(
                what(&r),
                (EVENT_QUOTA_EXCEEDED, Some(Limit::Sessions(100)), ANY)
            );
            assert_eq!(r.unix_ms, 7);
            assert_eq!(r.b4.segments()[2], 0xa);
            let r = refusal_record(&facts(10, 4), rose, &c, 7);
            assert_eq!(
                what(&r),
                (EVENT_QUOTA_EXCEEDED, Some(Limit::Ports(2048)), ANY)
            );
            let r = refusal_record(&facts(10, 2), rose, &c, 7);
            assert_eq!(
                what(&r),
                (EVENT_PORTS_EXHAUSTED, None, POOL1),
                "natEvent 12"
            );
            let r = refusal_record(&facts(0, 0), rose, &c, 7);
            assert_eq!(
                what(&r),
                (EVENT_ADDRESSES_EXHAUSTED, None, ANY),
                "natEvent 3"
            );
        }
    }

    #[test]
    fn the_aftr_wide_counters_settle_what_the_state_cannot_show() {
        let c = cfg();
        let only_rate = Some(Rose {
            rate: true,
            ..Default::default()
        });
        let r = refusal_record(&facts(10, 4), only_rate, &c, 0);
        assert_eq!(what(&r), (EVENT_QUOTA_EXCEEDED, Some(Limit::Rate(50)), ANY));
        // Rate and pool refusals this second; this subscriber holds all its blocks, but
        // nobody hit a quota: the rate limit refused it.
        let rate_and_pool = Some(Rose {
            rate: true,
            pool: true,
            ..Default::default()
        });
        let r = refusal_record(&facts(10, 4), rate_and_pool, &c, 0);
        assert_eq!(r.limit, Some(Limit::Rate(50)));
        // ... and one with a block to spare was refused for want of a free one.
        let r = refusal_record(&facts(10, 1), rate_and_pool, &c, 0);
        assert_eq!(r.kind, EVENT_PORTS_EXHAUSTED);
        // The only kind that rose wins over a stale state.
        let only_quota = Some(Rose {
            quota: true,
            ..Default::default()
        });
        let r = refusal_record(&facts(100, 4), only_quota, &c, 0);
        assert_eq!(r.limit, Some(Limit::Ports(2048)));
        // No session limit configured: never the session limit.
        let c0 = AftrConfig {
            max_sessions: 0,
            ..cfg()
        };
        let r = refusal_record(&facts(5000, 4), None, &c0, 0);
        assert_eq!(r.limit, Some(Limit::Ports(2048)));
    }
}
