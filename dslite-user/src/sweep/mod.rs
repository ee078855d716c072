//! Expiry, done by the controller: a sweep every second reclaims idle mappings, releases
//! port blocks whose last mapping is gone into a hold-down, and frees held blocks after it.
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
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
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
    dataplane::{batch::scan_map, Pinned},
    natlog::NatRecord,
};

pub use reconcile::Reconciled;
pub use subscribers::{refusal_record, Refused, Rose};

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
        self.recount_subscribers(&sessions, ms, &mut r)?;
        r.micros = start.elapsed().as_micros();
        Ok(r)
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
