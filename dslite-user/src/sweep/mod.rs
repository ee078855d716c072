//! Expiry, done by the controller: a sweep every second reclaims idle mappings, releases
//! port blocks whose last mapping is gone into a hold-down, and frees held blocks after it.
//!
//! Each sweep reads at most [`SWEEP_SLICE`] mappings, from where the last one stopped, and
//! expires the idle ones among them at once; a *cycle* is one walk through the whole table
//! (one sweep up to that size; 10M mappings: 77 sweeps). What needs the whole table (which
//! blocks are still in use, each subscriber's count, filtering state) is decided at the
//! cycle's end from what the cycle saw, minding what XDP made behind its cursor (stamps on
//! the slot and the subscriber, [`dslite_common::nat::stamped_since`]). So the work per
//! second is bounded at any table size, like Linux conntrack's garbage collector, which
//! also scans its table a slice per run; the price is that a mapping may outlive its
//! timeout by up to a cycle (RFC 4787 REQ-5 sets the timeout's floor, not a ceiling).
//!
//! Here: the sweep's tables and one pass, which expires idle mappings. [`blocks`]: releasing
//! and freeing port blocks; [`peers`]: purging filtering state; [`subscribers`]: recounting
//! each subscriber's mappings and telling its refusals apart; [`reconcile`]: the tables
//! brought in line with a changed configuration (start, reload), and released at a stop.
//!
//! Why the controller and not `bpf_timer`: a timer per mapping costs 48+ bytes of map
//! memory and timer work per flow, while a sweep reads the tables in bulk off the fast path
//! and can emit release events in order for the NAT log. The fast path never waits on it:
//! XDP only ever inserts; the sweep only ever deletes entries it has found idle.

mod blocks;
mod peers;
mod reconcile;
mod subscribers;

use std::{collections::HashMap as StdMap, path::Path, time::Instant};

use anyhow::Result;
use aya::maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray};
use dslite_common::{
    maps::{
        self as m, AftrConfig, BlockKey, BlockValue, NatInKey, NatInValue, NatOutKey, NatOutValue,
        PeerKey, Slot, SlotKey, SoftwireState, EVENT_MAPPING_DELETED,
    },
    nat::{block_first_port, block_of, subscriber_of, tcp_established},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    clock::unix_ms,
    config::Timeouts,
    dataplane::{
        batch::{delete_keys, walk_map, Walk},
        Pinned,
    },
    natlog::NatRecord,
};

pub use reconcile::Reconciled;
pub use subscribers::{refusal_record, Refused, Rose};

/// Most mappings one sweep reads (and so expires): bounds its work at any table size
/// (docs/benchmarks.md: about a quarter of a core at 10M mappings with 100k expiring a
/// second, most of it the two hash-table deletes of each expired mapping).
/// A table up to this size is read whole every second, as a single-sweep cycle.
pub const SWEEP_SLICE: usize = 1 << 17;
/// Mappings read and expired together: a refresh after the read and before the delete
/// (an idle mapping's first packet in minutes, within a millisecond) is lost, and the
/// flow's next packet makes a new mapping.
const SWEEP_CHUNK: usize = 4096;
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
    /// This sweep ended a cycle (a walk through the whole table): the fields below the
    /// records are the cycle's. False: they are empty, keep the last cycle's.
    pub cycle_done: bool,
    /// The cycle's length (ns), when it ended.
    pub cycle_ns: u64,
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
    nat_in: HashMap<MapData, NatInKey, NatInValue>,
    blocks: HashMap<MapData, BlockKey, BlockValue>,
    slots: HashMap<MapData, SlotKey, Slot>,
    softwires: HashMap<MapData, [u8; 16], SoftwireState>,
    peers: HashMap<MapData, PeerKey, u64>,
    addr_free: Array<MapData, u32>,
    free_addrs: Array<MapData, u32>,
    /// The pool, in POOL order (to publish free blocks per address).
    pool: Vec<[u8; 4]>,
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
    /// Mappings read per sweep ([`SWEEP_SLICE`]; tests make cycles of several sweeps).
    pub slice: usize,
    cycle: Cycle,
    /// Records of a sweep that failed part-way, for the next one.
    carried: Vec<NatRecord>,
}

/// A hash map for the sweep's tallies: keyed per mapping read (up to SWEEP_SLICE a
/// second), so hashed with foldhash (hashbrown's default) rather than SipHash.
pub(super) type Tally<K, V> = hashbrown::HashMap<K, V>;

/// One walk through NAT_OUT over one or more sweeps, and what it saw of the live mappings.
#[derive(Default)]
struct Cycle {
    /// When its first sweep began (monotonic ns).
    started_ns: u64,
    /// Sweeps so far: a cycle of one saw the whole table at once.
    sweeps: u32,
    walk: Walk,
    /// Blocks with a live mapping, and the subscriber the mapping belongs to.
    live: Tally<BlockKey, [u8; 16]>,
    /// Mappings per subscriber (RFC 7785 §3: limits are the subscriber's).
    sessions: Tally<[u8; 16], u64>,
    /// Mappings expired per subscriber.
    expired: Tally<[u8; 16], u64>,
    /// XDP's count of each subscriber when the cycle began.
    at_start: Tally<[u8; 16], u64>,
    /// Live mappings by outside endpoint: (timeout, peers recorded on the mapping, key).
    by_outside: Tally<NatInKey, (u64, u8, NatOutKey)>,
    /// Live mappings by protocol.
    mappings: [u64; 4],
}

impl Cycle {
    /// A live mapping seen.
    fn keep(&mut self, cfg: &AftrConfig, timeouts: &Timeouts, k: &NatOutKey, v: &NatOutValue) {
        let sub = subscriber_of(&k.b4, &cfg.subscriber_mask);
        *self.sessions.entry(sub).or_default() += 1;
        self.mappings[proto_slot(k.proto)] += 1;
        if let Some(b) = block_key(cfg, v.outside_addr, v.outside_port) {
            self.live.insert(b, sub);
        }
        if cfg.filter_modes != 0 {
            self.by_outside.insert(
                k.inbound_key(v.outside_addr, v.outside_port),
                (timeout_ns(timeouts, k.proto, v.tcp_state), v.peers, *k),
            );
        }
    }
}

/// What the end of a cycle needs to know of it.
#[derive(Clone, Copy, Debug)]
pub(super) struct CycleSpan {
    /// When it began (monotonic ns).
    pub started_ns: u64,
    /// It took more than one sweep: XDP may have made mappings behind its cursor.
    pub spread: bool,
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

impl Sweeper {
    pub fn open(pin: &Path, cfg: AftrConfig, timeouts: Timeouts) -> Result<Sweeper> {
        let pinned = Pinned::new(pin);
        Ok(Sweeper {
            nat_out: pinned.hash(m::NAT_OUT)?,
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
            free_list_written: Vec::new(),
            timeouts,
            cfg,
            log_sessions: false,
            refused: StdMap::new(),
            stats: pinned.per_cpu_array(m::STATS).ok(),
            last_refusals: None,
            max_mappings: 0,
            slice: SWEEP_SLICE,
            cycle: Cycle::default(),
            carried: Vec::new(),
        })
    }

    /// A reloaded configuration (filtering modes; the block layout never changes live).
    pub fn set_config(&mut self, cfg: AftrConfig) {
        if cfg.filter_modes != self.cfg.filter_modes {
            // The cycle gathered filtering state for the old modes only.
            self.restart_cycle();
        }
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
    /// One sweep at time `now` (monotonic ns): the next slice of the table, its idle
    /// mappings expired; at the end of a cycle, the blocks, filtering state and subscribers.
    pub fn sweep(&mut self, now: u64) -> Result<SweepReport> {
        let start = Instant::now();
        let mut r = SweepReport {
            records: std::mem::take(&mut self.carried),
            ..Default::default()
        };
        match self.sweep_into(now, &mut r) {
            Ok(()) => {
                r.micros = start.elapsed().as_micros();
                Ok(r)
            }
            Err(e) => {
                // Start the cycle over (its tallies are no longer the table's), and keep the
                // records of what was done for the next sweep: the NAT log loses none.
                self.cycle = Cycle::default();
                self.carried = r.records;
                Err(e)
            }
        }
    }

    fn sweep_into(&mut self, now: u64, r: &mut SweepReport) -> Result<()> {
        let ms = unix_ms(now);
        let (cfg, timeouts) = (self.cfg, self.timeouts);
        let first = self.cycle.sweeps == 0;
        if first {
            self.cycle.started_ns = now;
        }
        self.cycle.sweeps += 1;
        // Refusals every sweep; XDP's counts at the cycle's start, before its walk.
        let live = std::mem::take(&mut self.cycle.sessions);
        let at = self.note_refusals(&live, first, ms, r)?;
        self.cycle.sessions = live;
        if first {
            self.cycle.at_start = at;
        }
        let mut chunk: Vec<(NatOutKey, NatOutValue)> = Vec::with_capacity(SWEEP_CHUNK);
        let mut expired = Vec::new();
        let mut done = false;
        while !done && r.scanned < self.slice {
            chunk.clear();
            let max = SWEEP_CHUNK.min(self.slice - r.scanned);
            done = walk_map(&mut self.cycle.walk, self.nat_out.map(), max, |k, v| {
                chunk.push((k, v))
            })?;
            r.scanned += chunk.len();
            expired.clear();
            for (k, v) in &chunk {
                let idle = now.saturating_sub(v.last_seen_ns);
                if idle >= timeout_ns(&timeouts, k.proto, v.tcp_state) {
                    let sub = subscriber_of(&k.b4, &cfg.subscriber_mask);
                    *self.cycle.expired.entry(sub).or_default() += 1;
                    expired.push((*k, *v));
                } else {
                    self.cycle.keep(&cfg, &timeouts, k, v);
                }
            }
            r.expired += self.delete_mappings(&expired, ms, &mut r.records)?;
        }
        if done {
            let c = std::mem::take(&mut self.cycle);
            let span = CycleSpan {
                started_ns: c.started_ns,
                spread: c.sweeps > 1,
            };
            self.sweep_blocks(now, span, &c.live, r)?;
            self.sweep_peers(now, span, &c.by_outside)?;
            self.recount_subscribers(&c.sessions, &c.expired, &c.at_start, span, r)?;
            r.mappings = c.mappings;
            r.cycle_done = true;
            r.cycle_ns = now.saturating_sub(c.started_ns);
        }
        Ok(())
    }

    /// Start the cycle over: what it saw is no longer the table (a reconcile deleted
    /// mappings; the filtering modes changed).
    pub(super) fn restart_cycle(&mut self) {
        self.cycle = Cycle::default();
    }
}

impl Sweeper {
    /// Delete mappings: NAT_OUT first, so a new packet makes a fresh mapping from then on,
    /// and each outside port last (its NAT_IN entry), so it is never shared: two batched
    /// system calls. With `log_sessions`, a deletion record for each into `records`.
    ///
    /// The NAT_IN entry of a mapping in NAT_OUT points back to it, so it is deleted without
    /// a look-up (which cost 1.4 us a mapping, more than both deletes): XDP inserts NAT_IN
    /// before NAT_OUT and removes only the NAT_IN entry it inserted when another CPU
    /// published the mapping first; the controller removes NAT_IN entries only here, after
    /// their NAT_OUT entry. The fuzzer checks the invariant after every packet
    /// (`tests/tests/fuzz.rs`, "has no matching NAT_IN").
    fn delete_mappings(
        &mut self,
        gone: &[(NatOutKey, NatOutValue)],
        ms: i128,
        records: &mut Vec<NatRecord>,
    ) -> Result<usize> {
        if gone.is_empty() {
            return Ok(0);
        }
        let keys: Vec<NatOutKey> = gone.iter().map(|(k, _)| *k).collect();
        let (kept, out_err) = delete_keys(self.nat_out.map(), &keys);
        // A mapping not deleted (already gone, or a failure) keeps its outside port: a port
        // whose NAT_OUT entry was gone before may already be another mapping's.
        let deleted: Vec<&(NatOutKey, NatOutValue)> = gone
            .iter()
            .enumerate()
            .filter(|(i, _)| kept.binary_search(i).is_err())
            .map(|(_, m)| m)
            .collect();
        let ports: Vec<NatInKey> = deleted
            .iter()
            .map(|(k, v)| k.inbound_key(v.outside_addr, v.outside_port))
            .collect();
        let (_, in_err) = delete_keys(self.nat_in.map(), &ports);
        if self.log_sessions {
            records.extend(deleted.iter().map(|(k, v)| {
                let port = u16::from_be(v.outside_port);
                NatRecord {
                    kind: EVENT_MAPPING_DELETED,
                    proto: k.proto,
                    inside: Some((k.inside_addr.into(), u16::from_be(k.inside_port))),
                    ..event(ms, 0, k.b4, v.outside_addr, port, port)
                }
            }));
        }
        match out_err.or(in_err) {
            Some(e) => Err(e),
            None => Ok(deleted.len()),
        }
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
