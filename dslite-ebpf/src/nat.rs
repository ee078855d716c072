//! NAT44 mapping creation in XDP, with port-block allocation (RFC 6888 REQ-13/14,
//! RFC 7422-style blocks without the determinism).
//!
//! A softwire holds up to `max_blocks` blocks of `block_size` ports, all on one public
//! address (paired pooling, RFC 4787 REQ-2). A new mapping looks for a free port in the
//! softwire's blocks, in slot order; when they are full it takes a free block itself:
//! the first packet never waits on userspace. Every claim is a BPF_NOEXIST insert, so
//! concurrent CPUs can never share a block, a slot or an outside port:
//!
//! - `BLOCKS[(addr, block)]`: claims the block (absent = free; the controller frees held
//!   blocks after the hold-down);
//! - `SW_BLOCKS[(b4, slot)]`: records it as the softwire's slot-th block;
//! - `NAT_IN[(addr, port, proto)]` then `NAT_OUT[key]`: claim the port, publish the mapping.
//!
//! A CPU that loses a race releases what it claimed and adopts the winner's result.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_ktime_get_ns, bpf_loop},
};
use dslite_common::{
    maps::{
        AftrConfig, BlockKey, BlockValue, NatInKey, NatInValue, NatOutKey, NatOutValue, Slot,
        SlotKey, SoftwireState, FREE_ADDRS_LEN,
    },
    nat::{
        block_first_port, candidate_in_block, port_hash, softwire_hash, subscriber_of,
        tcp_next_state, ADDR_TRIES, MAX_BLOCKS, PORT_SEARCH_TRIES,
    },
    Counter,
};

use crate::{
    events::block_event,
    exit::{
        nat::{
            need_block, outcome, BlockAt, HashHeld, SlotTry, BLOCK_NONE, BLOCK_NO_ADDR, BLOCK_OURS,
            BLOCK_TABLE_FULL, BLOCK_TAKEN, FOUND, NEED_BLOCK, NOT_CONFIGURED, NOT_FOUND,
            POOL_EXHAUSTED, QUOTA_EXCEEDED, RATE_LIMIT, SESSION_LIMIT, TABLE_FULL,
        },
        Exit, Res, LOOP_BREAK, LOOP_CONTINUE,
    },
    maps::{count, ADDR_FREE, BLOCKS, FREE_ADDRS, NAT_IN, NAT_OUT, POOL, SOFTWIRES, SW_BLOCKS},
};

const EEXIST: i32 = -17;

// The BPF calls below return plain integers (`exit::nat`): see `exit.rs` for why.

/// Outside endpoint chosen for a new mapping.
#[repr(C)]
struct Outside {
    addr: [u8; 4],
    port: u16,
    _pad: u16,
}

/// Find this softwire endpoint's mapping (refreshing it: outbound traffic refreshes,
/// RFC 4787 REQ-6) or create it; `created` is set to 1 when this packet created it.
#[inline(always)]
pub fn lookup_or_create(
    key: &NatOutKey,
    cfg: &AftrConfig,
    tcp: u8,
    created: &mut u32,
) -> Res<([u8; 4], u16)> {
    if let Some(v) = NAT_OUT.get_ptr_mut(key) {
        // SAFETY: plain helper call; map value pointer from the kernel.
        unsafe {
            (*v).last_seen_ns = bpf_ktime_get_ns();
            if key.proto == dslite_common::proto::IPPROTO_TCP {
                let next = tcp_next_state((*v).tcp_state, tcp, true);
                if next != (*v).tcp_state {
                    (*v).tcp_state = next;
                }
            }
            return Ok(((*v).outside_addr, (*v).outside_port));
        }
    }
    let mut out = Outside {
        addr: [0; 4],
        port: 0,
        _pad: 0,
    };
    if cfg.max_sessions != 0 || cfg.new_per_sec != 0 {
        // SAFETY: plain helper call.
        let r = admit(&key.b4, cfg, unsafe { bpf_ktime_get_ns() });
        if r != FOUND {
            return Err(Exit::Drop(if r == SESSION_LIMIT {
                Counter::DropSessionLimit
            } else if r == RATE_LIMIT {
                Counter::DropRateLimit
            } else {
                Counter::DropMappingTableFull
            }));
        }
    }
    // The subscriber's slots in order: each one is searched, given a block first when it
    // is empty (or held down), or passed when full. One BPF call per slot returning one
    // scalar, so the verifier walks each slot once.
    let mut slot = 0u32;
    let mut r = QUOTA_EXCEEDED;
    while slot < MAX_BLOCKS {
        if slot >= cfg.max_blocks as u32 {
            break;
        }
        let how = SlotTry::new(tcp, slot);
        r = try_slot(key, cfg, how, &mut out);
        if outcome(r) == NEED_BLOCK {
            // Give the slot a block (or its own held one back), then search it: two BPF
            // calls side by side, so their frames never stack.
            r = give_block(key, cfg, slot);
            if r != FOUND {
                break;
            }
            r = try_slot(key, cfg, how, &mut out);
            if outcome(r) == NEED_BLOCK {
                // Freed under us at once: a full table, for this packet.
                r = TABLE_FULL;
            }
        }
        if r != NOT_FOUND {
            break;
        }
        r = QUOTA_EXCEEDED;
        slot += 1;
    }
    if r == QUOTA_EXCEEDED || r == POOL_EXHAUSTED {
        note_refusal(&key.b4, cfg);
    }
    let c = match r {
        FOUND => {
            *created = 1;
            return Ok((out.addr, out.port));
        }
        QUOTA_EXCEEDED => Counter::DropQuotaExceeded,
        POOL_EXHAUSTED => Counter::DropPoolExhausted,
        NOT_CONFIGURED => Counter::DropNotConfigured,
        _ => Counter::DropMappingTableFull,
    };
    Err(Exit::Drop(c))
}

/// Count a refusal on the subscriber (the sweep turns new refusals into one NAT log record
/// per subscriber per second, natEvent 13). Refusals are the exception: the insert is off
/// the normal path.
#[inline(never)]
fn note_refusal(b4: &[u8; 16], cfg: &AftrConfig) {
    let sub = subscriber_of(b4, &cfg.subscriber_mask);
    let b4 = &sub;
    if SOFTWIRES.get_ptr(b4).is_none() {
        let fresh = SoftwireState {
            sessions: 0,
            tokens: cfg.new_per_sec,
            _pad: 0,
            // SAFETY: plain helper call.
            refill_ns: unsafe { bpf_ktime_get_ns() },
            refused: 0,
        };
        let _ = SOFTWIRES.insert(b4, &fresh, BPF_NOEXIST as u64);
    }
    if let Some(st) = SOFTWIRES.get_ptr_mut(b4) {
        // SAFETY: map value pointer from the kernel.
        unsafe { (*st).refused += 1 };
    }
}

/// Per-subscriber limits before a new mapping (RFC 6888 REQ-4/5, RFC 7785 §3): at most
/// `max_sessions` mappings, and new ones at `new_per_sec` with that burst (token bucket).
/// The state is updated without locks: two CPUs may both take the last token, an error of
/// one mapping that the next refill absorbs. The admitted mapping is counted here (a
/// creation that then fails is repaired by the sweep's recount within a second).
#[inline(never)]
fn admit(b4: &[u8; 16], cfg: &AftrConfig, now: u64) -> u32 {
    let sub = subscriber_of(b4, &cfg.subscriber_mask);
    let b4 = &sub;
    if SOFTWIRES.get_ptr(b4).is_none() {
        let fresh = SoftwireState {
            sessions: 0,
            tokens: cfg.new_per_sec,
            _pad: 0,
            refill_ns: now,
            refused: 0,
        };
        let _ = SOFTWIRES.insert(b4, &fresh, BPF_NOEXIST as u64);
    }
    let Some(st) = SOFTWIRES.get_ptr_mut(b4) else {
        return TABLE_FULL;
    };
    // SAFETY: map value pointer from the kernel.
    let st = unsafe { &mut *st };
    if cfg.max_sessions != 0 && st.sessions >= cfg.max_sessions as u64 {
        st.refused += 1;
        return SESSION_LIMIT;
    }
    let rate = cfg.new_per_sec as u64;
    if rate != 0 {
        let add = now.saturating_sub(st.refill_ns) * rate / 1_000_000_000;
        if add > 0 {
            st.tokens = (st.tokens as u64 + add).min(rate) as u32;
            st.refill_ns = now;
        }
        if st.tokens == 0 {
            st.refused += 1;
            return RATE_LIMIT;
        }
        st.tokens -= 1;
    }
    st.sessions += 1;
    FOUND
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
fn try_slot(key: &NatOutKey, cfg: &AftrConfig, how: SlotTry, out: &mut Outside) -> u32 {
    let q = Search {
        // SAFETY: plain helper call.
        now: unsafe { bpf_ktime_get_ns() },
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
fn give_block(key: &NatOutKey, cfg: &AftrConfig, slot: u32) -> u32 {
    let sk = SlotKey {
        b4: subscriber_of(&key.b4, &cfg.subscriber_mask),
        slot: slot as u8,
        _pad: [0; 3],
    };
    // SAFETY: plain helper call.
    claim_block(&sk, cfg, unsafe { bpf_ktime_get_ns() })
}

/// Try the block in slot `sk`: [`need_block`] when the slot is empty (or its
/// held block is gone), else what the port search in it found.
#[inline(always)]
fn use_slot(key: &NatOutKey, sk: &SlotKey, cfg: &AftrConfig, q: &Search, out: &mut Outside) -> u32 {
    let need = need_block(sk.slot as u32);
    let s = match SW_BLOCKS.get_ptr(sk) {
        // SAFETY: map value pointer from the kernel; copied out.
        Some(p) => unsafe { *p },
        None => return need,
    };
    // A held block is taken back by `claim_block`, like an empty slot is filled: one path
    // into the port search, not two.
    if s.held != 0 {
        return need;
    }
    claim_port(key, &s, cfg, q, out)
}

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
fn claim_block(sk: &SlotKey, cfg: &AftrConfig, now: u64) -> u32 {
    let per_addr = cfg.blocks_per_addr as u32;
    if per_addr == 0 || cfg.pool_len == 0 || per_addr > MAX_BLOCKS_PER_ADDR {
        return NOT_CONFIGURED;
    }
    if let Some(p) = SW_BLOCKS.get_ptr(sk) {
        // SAFETY: map value pointer from the kernel; copied out.
        let s = unsafe { *p };
        if reclaim(sk, &s, cfg, now) == FOUND {
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
        first_block_address(hash, a, cfg)
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
    let stride = cfg.block_strides[(h & 3) as usize] as u32;
    let mut scan = Scan {
        addr,
        start: h % per_addr,
        stride: if stride == 0 { 1 } else { stride },
        n: per_addr,
        found: u32::MAX,
    };
    // A block taken by another CPU between the scan and the claim: scan on from there.
    let mut r = BLOCK_TAKEN;
    let mut round = 0;
    while round < 4 {
        scan.found = u32::MAX;
        // SAFETY: bpf_loop calls `scan_block` with a pointer to `scan`, which outlives it.
        unsafe {
            bpf_loop(
                MAX_BLOCKS_PER_ADDR,
                scan_block as *mut c_void,
                &mut scan as *mut Scan as *mut c_void,
                0,
            )
        };
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

/// Record TCP flags seen from outside on the mapping that `m` points back to, and refresh
/// it when `refresh` (inbound refresh enabled).
#[inline(always)]
pub fn note_inbound(m: &NatInValue, proto: u8, bits: u8, refresh: bool) {
    let key = NatOutKey {
        b4: m.b4,
        inside_addr: m.inside_addr,
        inside_port: m.inside_port,
        proto,
        _pad: 0,
    };
    if let Some(v) = NAT_OUT.get_ptr_mut(&key) {
        // SAFETY: map value pointer from the kernel; plain helper call.
        unsafe {
            if proto == dslite_common::proto::IPPROTO_TCP {
                let next = tcp_next_state((*v).tcp_state, bits, false);
                if next != (*v).tcp_state {
                    (*v).tcp_state = next;
                }
            }
            if refresh {
                (*v).last_seen_ns = bpf_ktime_get_ns();
            }
        }
    }
}
