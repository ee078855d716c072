//! The port search: one slot of the subscriber, a port in its block (claimed in `NAT_IN`),
//! and the mapping published in `NAT_OUT`.

use aya_ebpf::bindings::BPF_NOEXIST;
use dslite_common::{
    maps::{AftrConfig, NatInKey, NatOutKey, NatOutValue, Slot, SlotKey},
    nat::{
        block_first_port, candidate_in_block, full_epoch, port_hash, stamp_epoch, subscriber_of,
        PORT_SEARCH_TRIES,
    },
    Counter,
};

use crate::{
    clock::{precise_ns, tick_ns},
    exit::nat::{need_block, SlotTry, FOUND, NOT_FOUND, TABLE_FULL},
    maps::{count, EEXIST, NAT_IN, NAT_OUT, SW_BLOCKS},
    nat::block::claim_block,
};

/// Outside endpoint chosen for a new mapping.
#[repr(C)]
pub struct Outside {
    pub addr: [u8; 4],
    pub port: u16,
    pub _pad: u16,
}

/// What a port search needs besides the key (bundled: BPF calls take five arguments).
struct Search {
    now: u64,
    hash: u32,
    parity: u16,
    tcp: u8,
}

/// One slot of the subscriber (`how`: the slot and the TCP bits): a port in its block.
/// `FOUND`, `NOT_FOUND` (the block is full: try the next slot), [`need_block`] (empty or
/// held down: [`give_block`] first), or a refusal.
#[inline(never)]
pub fn try_slot(key: &NatOutKey, cfg: &AftrConfig, how: SlotTry, out: &mut Outside) -> u32 {
    let q = Search {
        // The mapping's stamps come from the same clock as its refreshes.
        now: tick_ns(),
        hash: port_hash(key, cfg.hash_seed),
        parity: u16::from_be(key.inside_port) & 1,
        tcp: how.tcp(),
    };
    let sk = SlotKey {
        b4: subscriber_of(&key.b4, &cfg.subscriber_mask),
        slot: how.slot(),
        _pad: [0; 3],
    };
    use_slot(key, &sk, cfg, &q, out)
}

/// Give the subscriber's slot `slot` a block (see [`claim_block`]).
#[inline(never)]
pub fn give_block(key: &NatOutKey, cfg: &AftrConfig, slot: u32) -> u32 {
    let sk = SlotKey {
        b4: subscriber_of(&key.b4, &cfg.subscriber_mask),
        slot: slot as u8,
        _pad: [0; 3],
    };
    // The precise clock: a block's allocation is logged, and must not look older than the
    // sweep's release of it in the same tick (`whois` orders by time).
    claim_block(&sk, cfg, precise_ns())
}

/// Try the block in slot `sk`: [`need_block`] when the slot is empty (or its
/// held block is gone), else what the port search in it found.
#[inline(always)]
fn use_slot(key: &NatOutKey, sk: &SlotKey, cfg: &AftrConfig, q: &Search, out: &mut Outside) -> u32 {
    let need = need_block(sk.slot as u32);
    // The slot in place, not a copy (the AFTR's stack is at its 512-byte limit): its
    // address and block never change while it lives (a new block is a new entry).
    let p = match SW_BLOCKS.get_ptr_mut(sk) {
        Some(p) => p,
        None => return need,
    };
    // SAFETY: map value pointer from the kernel, valid for this program run.
    let s = unsafe { &mut *p };
    // A held block is taken back by `claim_block`, like an empty slot is filled: one path
    // into the port search, not two.
    if s.held != 0 {
        return need;
    }
    let epoch = full_epoch(q.now);
    if s.full == epoch {
        // Searched in vain this epoch: the next slot, without a search.
        return NOT_FOUND;
    }
    // A mapping is about to be made in this block: stamped before the search (one that
    // fails delays the block's release by a sweep cycle, no more), written only when it
    // changes. A hint, like `full`: a lost update is harmless.
    let stamp = stamp_epoch(q.now);
    if s.last_new != stamp {
        s.last_new = stamp;
    }
    let r = claim_port(key, s, cfg, q, out);
    if r == NOT_FOUND {
        // Looked up again, not through `s`: the sweep may have replaced the slot's entry
        // during the search, and a preallocated map reuses the old one at once.
        if let Some(p) = SW_BLOCKS.get_ptr_mut(sk) {
            // SAFETY: map value pointer from the kernel; a hint, a lost update is harmless.
            unsafe { (*p).full = epoch };
        }
    }
    r
}

/// Try `PORT_SEARCH_TRIES` ports of the block: `FOUND` (with `out` set), `NOT_FOUND` when
/// all were taken, or `TABLE_FULL`.
#[inline(never)]
fn claim_port(key: &NatOutKey, s: &Slot, cfg: &AftrConfig, q: &Search, out: &mut Outside) -> u32 {
    let first = block_first_port(s.block, cfg.port_lo, cfg.block_size);
    let back = key.inbound_value();
    let mut attempt = 0;
    while attempt < PORT_SEARCH_TRIES {
        let port = candidate_in_block(q.hash, attempt, first, cfg.block_size, q.parity).to_be();
        let kin = key.inbound_key(s.addr, port);
        match NAT_IN.insert(&kin, &back, BPF_NOEXIST as u64) {
            Ok(()) => return publish(key, &kin, q, out),
            Err(EEXIST) => {}
            Err(_) => return TABLE_FULL,
        }
        attempt += 1;
    }
    NOT_FOUND
}

/// Publish the mapping whose outside endpoint `kin` this CPU just claimed. If another CPU
/// published one for the same key first, release ours and adopt theirs.
#[inline(never)]
fn publish(key: &NatOutKey, kin: &NatInKey, q: &Search, out: &mut Outside) -> u32 {
    let v = NatOutValue {
        outside_addr: kin.outside_addr,
        outside_port: kin.outside_port,
        tcp_state: q.tcp,
        peers: 0,
        created_ns: q.now,
        last_seen_ns: q.now,
    };
    match NAT_OUT.insert(key, &v, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(Counter::NatMappingCreated);
            out.addr = kin.outside_addr;
            out.port = kin.outside_port;
            FOUND
        }
        Err(e) => {
            let _ = NAT_IN.remove(kin);
            if e != EEXIST {
                return TABLE_FULL;
            }
            count(Counter::NatMappingRaceLost);
            match NAT_OUT.get_ptr(key) {
                Some(w) => {
                    // SAFETY: map value pointer from the kernel.
                    unsafe {
                        out.addr = (*w).outside_addr;
                        out.port = (*w).outside_port;
                    }
                    FOUND
                }
                None => TABLE_FULL,
            }
        }
    }
}
