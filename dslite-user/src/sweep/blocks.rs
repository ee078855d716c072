//! Port blocks (RFC 6888 REQ-8): released into hold-down when their last mapping goes,
//! taken back into use, freed after the hold-down, and the free-block hints XDP's block
//! search starts from.

use std::collections::HashMap as StdMap;

use anyhow::Result;
use aya::maps::IterableMap as _;
use dslite_common::{
    maps::{
        self as m, BlockKey, BlockValue, Slot, SlotKey, EVENT_BLOCK_ALLOCATED, EVENT_BLOCK_RELEASED,
    },
    nat::stamped_since,
};

use crate::{clock::unix_ms, dataplane::batch::scan_map};

use super::{block_event, CycleSpan, SweepReport, Sweeper, Tally, BLOCK_GRACE_NS, BPF_NOEXIST};

impl Sweeper {
    /// Port blocks (RFC 6888 REQ-8): release blocks with no live mapping into hold-down
    /// (their slot stays, marked held, so the subscriber gets them back first), take back
    /// into use a held block that has a live mapping again (a mapping made while the release
    /// was under way: its allocation is logged again, so `whois` stays right), free held
    /// blocks after the hold-down only when no mapping uses them, and repair a live
    /// mapping's block that lost its entry (freed in the same instant as it was reclaimed).
    ///
    /// `live` is what the cycle `span` saw. A cycle spread over several sweeps misses the
    /// mappings XDP made behind its cursor: a block it did not see in use is released only
    /// if it was allocated before the cycle began and its slot has no mapping made since
    /// (`Slot::last_new`); else it waits for the next cycle, which sees those mappings.
    pub(super) fn sweep_blocks(
        &mut self,
        now: u64,
        span: CycleSpan,
        live: &Tally<BlockKey, [u8; 16]>,
        r: &mut SweepReport,
    ) -> Result<()> {
        let (ms, cfg) = (unix_ms(now), self.cfg);
        let record = |kind, b4, bk: &BlockKey| block_event(ms, &cfg, kind, b4, bk);
        // Slots by block, to mark or free the slot with its block.
        // (Tables read in batches: BLOCKS and SW_BLOCKS hold an entry per block in use.)
        let mut slot_of: StdMap<BlockKey, (SlotKey, Slot)> = StdMap::new();
        scan_map::<SlotKey, Slot>(self.slots.map(), |k, s| {
            let bk = BlockKey {
                addr: s.addr,
                block: s.block,
                _pad: 0,
            };
            slot_of.insert(bk, (k, s));
        })?;
        let hold = self.timeouts.block_hold_down.saturating_mul(1_000_000_000);
        let mut present = std::collections::HashSet::new();
        let mut changes = Vec::new();
        let mut blocks = Vec::new();
        scan_map::<BlockKey, BlockValue>(self.blocks.map(), |bk, bv| blocks.push((bk, bv)))?;
        for (bk, bv) in blocks {
            present.insert(bk);
            let in_use = live.contains_key(&bk);
            if bv.released_ns == 0 {
                let settled = if span.spread {
                    bv.allocated_ns.saturating_add(BLOCK_GRACE_NS) < span.started_ns
                        && !slot_of
                            .get(&bk)
                            .is_some_and(|(_, s)| stamped_since(s.last_new, span.started_ns))
                } else {
                    now.saturating_sub(bv.allocated_ns) > BLOCK_GRACE_NS
                };
                if !in_use && settled {
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
        // Only on a pool address: a block elsewhere is nobody's to claim (and would take a
        // BLOCKS entry the pool's blocks need).
        for (bk, sub) in live {
            if present.contains(bk) || !self.pool.contains(&bk.addr) {
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
        scan_map::<BlockKey, BlockValue>(self.blocks.map(), |bk, bv| {
            *used.entry(bk.addr).or_default() += 1;
            if bv.released_ns == 0 {
                *r.blocks_in_use.entry(bk.addr).or_default() += 1;
            } else {
                *r.blocks_held.entry(bk.addr).or_default() += 1;
            }
        })?;
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
        // XDP lowers the hints as it claims, to 0 when its search finds the address full
        // (then it searches there no more): write every entry whose truth differs from
        // what the map holds now, so a block freed on an address XDP found full is seen.
        for (i, f) in free.iter().enumerate() {
            if self.addr_free.get(&(i as u32), 0).ok() != Some(*f) {
                self.addr_free.set(i as u32, *f, 0)?;
            }
        }
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
}

enum BlockChange {
    Release,
    Unrelease,
    Free,
}
