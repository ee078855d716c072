//! The block claim: a free port block for one of the subscriber's slots, on the address of
//! the blocks it holds (paired pooling, RFC 4787 REQ-2) or, for its first, on a hashed
//! address or one the sweep saw free blocks on; its own held-down block taken back first.

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_loop};
use dslite_common::{
    maps::{AftrConfig, BlockKey, BlockValue, Slot, SlotKey, FREE_ADDRS_LEN},
    nat::{softwire_hash, ADDR_TRIES, MAX_BLOCKS},
    Counter,
};

use crate::{
    events::block_event,
    exit::{
        nat::{
            BlockAt, HashHeld, BLOCK_NONE, BLOCK_NO_ADDR, BLOCK_OURS, BLOCK_TABLE_FULL,
            BLOCK_TAKEN, FOUND, NOT_CONFIGURED, NOT_FOUND, POOL_EXHAUSTED, TABLE_FULL,
        },
        LOOP_BREAK, LOOP_CONTINUE,
    },
    maps::{count, ADDR_FREE, BLOCKS, FREE_ADDRS, POOL, SW_BLOCKS},
};

/// The pool index of any block this softwire already holds (blocks are released
/// independently, so any slot may be the one left); `u32::MAX` if none.
#[inline(never)]
fn held_address(sk: &SlotKey) -> u32 {
    let mut slot = 0u32;
    while slot < MAX_BLOCKS {
        if slot != sk.slot as u32 {
            let k = SlotKey {
                slot: slot as u8,
                ..*sk
            };
            if let Some(p) = SW_BLOCKS.get_ptr(&k) {
                // SAFETY: map value pointer from the kernel.
                return unsafe { (*p).addr_index };
            }
        }
        slot += 1;
    }
    u32::MAX
}

/// The subscriber's own block in hold-down (slot `sk`, holding `s`), taken back (RFC 6888
/// REQ-8 protects attribution between subscribers, not from the same one): same address and
/// range, logged as allocated again (its release was logged). `FOUND`, or `NOT_FOUND` after
/// removing a slot whose block is no longer the subscriber's.
#[inline(never)]
fn reclaim(sk: &SlotKey, s: &Slot, cfg: &AftrConfig, now: u64) -> u32 {
    let bk = BlockKey {
        addr: s.addr,
        block: s.block,
        _pad: 0,
    };
    if let Some(b) = BLOCKS.get_ptr_mut(&bk) {
        // SAFETY: map value pointers from the kernel.
        unsafe {
            if (*b).b4 == sk.b4 {
                (*b).released_ns = 0;
                if let Some(slot) = SW_BLOCKS.get_ptr_mut(sk) {
                    (*slot).held = 0;
                    (*slot).full = 0;
                }
                count(Counter::BlockReclaimed);
                // Its release was logged: log it held again, so `whois` stays right.
                block_event(sk, s, cfg, now);
                return FOUND;
            }
        }
    }
    // Freed by the sweep meanwhile: the slot is stale.
    let _ = SW_BLOCKS.remove(sk);
    NOT_FOUND
}

/// One address's block search under `bpf_loop`: from `start`, stepping by `stride` (coprime
/// to `n`, so `n` steps visit every block once), stop at the first block with no `BLOCKS`
/// entry.
#[repr(C)]
struct Scan {
    addr: [u8; 4],
    start: u32,
    stride: u32,
    n: u32,
    found: u32,
}

unsafe extern "C" fn scan_block(i: u32, c: *mut c_void) -> i64 {
    // SAFETY: `c` is the `Scan` on the caller's stack (bpf_loop passes it through).
    let c = unsafe { &mut *(c as *mut Scan) };
    if c.n == 0 {
        return LOOP_BREAK;
    }
    let b = (c.start as u64 + i as u64 * c.stride as u64) % c.n as u64;
    let bk = BlockKey {
        addr: c.addr,
        block: b as u16,
        _pad: 0,
    };
    if BLOCKS.get_ptr(&bk).is_none() {
        c.found = b as u32;
        return LOOP_BREAK;
    }
    LOOP_CONTINUE
}

/// Largest block count per address the search covers (65536 ports / the smallest block).
const MAX_BLOCKS_PER_ADDR: u32 = 65536 / dslite_common::nat::MIN_BLOCK_SIZE as u32;

impl Scan {
    /// The search of address `addr` (`per_addr` blocks, not 0) for hash `h` (16 bits): its
    /// start and its stride.
    #[inline(always)]
    fn new(addr: [u8; 4], h: u32, per_addr: u32, cfg: &AftrConfig) -> Scan {
        let stride = cfg.block_strides[(h & 3) as usize] as u32;
        Scan {
            addr,
            start: h % per_addr,
            stride: if stride == 0 { 1 } else { stride },
            n: per_addr,
            found: u32::MAX,
        }
    }

    /// Search from `start`: `found` is the first free block, or `u32::MAX`.
    #[inline(always)]
    fn run(&mut self) {
        self.found = u32::MAX;
        // SAFETY: bpf_loop calls `scan_block` with a pointer to `self`, which outlives it.
        unsafe {
            bpf_loop(
                MAX_BLOCKS_PER_ADDR,
                scan_block as *mut c_void,
                self as *mut Scan as *mut c_void,
                0,
            )
        };
    }
}

/// Bench probes of a block claim's parts (`dslite_probe_claim_walk`, `_claim_search`):
/// `part` 0 walks the slots (`held_address`); 1 searches the first pool address for a free
/// block as a claim does, claiming nothing. Returns what the part found.
#[cfg(feature = "bench")]
#[inline(never)]
pub fn claim_part(sk: &SlotKey, cfg: &AftrConfig, part: u32) -> u32 {
    if part == 0 {
        return held_address(sk);
    }
    let (Some(addr), per_addr) = (POOL.get(0), cfg.blocks_per_addr as u32) else {
        return u32::MAX;
    };
    if per_addr == 0 {
        return u32::MAX;
    }
    let h = softwire_hash(&sk.b4, cfg.hash_seed) & 0xffff;
    let mut scan = Scan::new(*addr, h, per_addr, cfg);
    scan.run();
    scan.found
}

/// The `a`-th address to try for a subscriber's first block: its hashed address while the
/// last sweep saw free blocks there, then addresses from the sweep's list of addresses with
/// free blocks. `u32::MAX` when there is none (the pool is full: a cheap refusal).
#[inline(always)]
fn first_block_address(h: u32, a: u32, cfg: &AftrConfig) -> u32 {
    let hashed = h % cfg.pool_len;
    if a == 0 && ADDR_FREE.get(hashed).is_some_and(|f| *f != 0) {
        return hashed;
    }
    let n = FREE_ADDRS.get(0).copied().unwrap_or(0).min(FREE_ADDRS_LEN);
    if n == 0 {
        return u32::MAX;
    }
    let i = 1 + (h >> 8).wrapping_add(a) % n;
    match FREE_ADDRS.get(i) {
        Some(idx) if *idx < cfg.pool_len => *idx,
        _ => u32::MAX,
    }
}

/// Take a free block for slot `sk.slot`: on the address of the blocks the subscriber already
/// holds (paired pooling, RFC 4787 REQ-2), or, for its first block, on its hashed address or
/// one the sweep saw free blocks on. On an address the search visits every block (a stride
/// coprime to the block count), so it finds a free block whenever the address has one.
#[inline(never)]
pub fn claim_block(sk: &SlotKey, cfg: &AftrConfig, now: u64) -> u32 {
    let per_addr = cfg.blocks_per_addr as u32;
    if per_addr == 0 || cfg.pool_len == 0 || per_addr > MAX_BLOCKS_PER_ADDR {
        return NOT_CONFIGURED;
    }
    if let Some(p) = SW_BLOCKS.get_ptr(sk) {
        // SAFETY: map value pointer from the kernel; copied out.
        let s = unsafe { *p };
        // Not held down: another CPU filled the slot since the caller saw it empty. It is
        // theirs to log; taking it "back" would log the block allocated twice.
        if s.held == 0 || reclaim(sk, &s, cfg, now) == FOUND {
            return FOUND;
        }
    }
    let h = softwire_hash(&sk.b4, cfg.hash_seed);
    let held = held_address(sk);
    let owner = BlockValue {
        b4: sk.b4,
        allocated_ns: now,
        released_ns: 0,
    };
    let hh = HashHeld::new(h, held);
    // Each try ends the search or moves on: one outcome to carry round the loop.
    let mut r = BLOCK_TAKEN;
    let mut a = 0u32;
    while a < ADDR_TRIES {
        r = claim_on_address(sk, &owner, cfg, hh, a);
        if r != BLOCK_TAKEN {
            break;
        }
        a += 1;
    }
    match r {
        BLOCK_OURS => FOUND,
        BLOCK_NO_ADDR => NOT_CONFIGURED,
        BLOCK_TABLE_FULL => TABLE_FULL,
        _ => POOL_EXHAUSTED,
    }
}

/// The `a`-th try of [`claim_block`] (`hh`: the subscriber's hash and the
/// pool index of a block it holds, or `u32::MAX`, below): choose the address, then search it
/// for a free block. `BLOCK_OURS`, `BLOCK_TAKEN` when the address has no free block left
/// (its hint is then cleared until the next sweep), `BLOCK_NONE` when there is no address
/// left to try.
#[inline(never)]
fn claim_on_address(
    sk: &SlotKey,
    owner: &BlockValue,
    cfg: &AftrConfig,
    hh: HashHeld,
    a: u32,
) -> u32 {
    let (hash, held) = (hh.hash(), hh.held());
    let addr_index = if held != u32::MAX {
        if a > 0 {
            return BLOCK_NONE;
        }
        held
    } else {
        let i = first_block_address(hash, a, cfg);
        // An address the last search (or sweep) found full is not searched again until the
        // sweep sees a block freed there: with a full pool a refusal costs a few array
        // reads, not a scan of every block of every address.
        if i != u32::MAX && ADDR_FREE.get(i).is_some_and(|f| *f == 0) {
            return BLOCK_TAKEN;
        }
        i
    };
    if addr_index == u32::MAX {
        return BLOCK_NONE;
    }
    let h = hash & 0xffff;
    let addr = match POOL.get(addr_index) {
        Some(a) => *a,
        None => return BLOCK_NO_ADDR,
    };
    let per_addr = cfg.blocks_per_addr as u32;
    if per_addr == 0 {
        return BLOCK_NO_ADDR;
    }
    let mut scan = Scan::new(addr, h, per_addr, cfg);
    // A block taken by another CPU between the scan and the claim: scan on from there.
    let mut r = BLOCK_TAKEN;
    let mut round = 0;
    while round < 4 {
        scan.run();
        if scan.found == u32::MAX {
            break;
        }
        r = try_block(sk, owner, cfg, BlockAt::new(addr_index, scan.found));
        if r != BLOCK_TAKEN {
            break;
        }
        scan.start = (scan.found + scan.stride) % per_addr;
        round += 1;
    }
    note_free(addr_index, r, scan.found);
    r
}

/// Keep the free-block hint of an address honest after a search: one fewer after a claim,
/// none left when the search found nothing.
#[inline(never)]
fn note_free(addr_index: u32, r: u32, found: u32) {
    if let Some(f) = ADDR_FREE.get_ptr_mut(addr_index) {
        // SAFETY: map value pointer; a hint, so a lost update is harmless.
        unsafe {
            if r == BLOCK_OURS {
                *f = (*f).saturating_sub(1);
            } else if found == u32::MAX {
                *f = 0;
            }
        }
    }
}

/// Claim one block (`where_`: pool index and block) for slot `sk`. `BLOCK_OURS` also when
/// another CPU filled the slot first: the caller reads the slot back either way.
#[inline(never)]
fn try_block(sk: &SlotKey, owner: &BlockValue, cfg: &AftrConfig, where_: BlockAt) -> u32 {
    let addr_index = where_.addr_index();
    let addr = match POOL.get(addr_index) {
        Some(a) => *a,
        None => return BLOCK_NO_ADDR,
    };
    let s = Slot {
        addr,
        addr_index,
        block: where_.block(),
        held: 0,
        full: 0,
        last_new: 0,
    };
    let bk = BlockKey {
        addr,
        block: s.block,
        _pad: 0,
    };
    if BLOCKS.insert(&bk, owner, BPF_NOEXIST as u64).is_err() {
        return BLOCK_TAKEN;
    }
    if SW_BLOCKS.insert(sk, &s, BPF_NOEXIST as u64).is_ok() {
        block_event(sk, &s, cfg, owner.allocated_ns);
        return BLOCK_OURS;
    }
    // Another CPU filled this slot first (or the table is full).
    let _ = BLOCKS.remove(&bk);
    if SW_BLOCKS.get_ptr(sk).is_some() {
        BLOCK_OURS
    } else {
        BLOCK_TABLE_FULL
    }
}
