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

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_ns};
use dslite_common::{
    maps::{
        AftrConfig, BlockKey, BlockValue, NatEvent, NatInKey, NatInValue, NatOutKey, NatOutValue,
        Slot, SlotKey, SoftwireState, EVENT_BLOCK_ALLOCATED, EVENT_MAPPING_CREATED,
    },
    nat::{
        block_first_port, candidate_in_block, port_hash, softwire_hash, ADDR_TRIES, BLOCK_TRIES,
        MAX_BLOCKS, PORT_SEARCH_TRIES,
    },
    Counter,
};

use crate::{
    maps::{count, BLOCKS, EVENTS, NAT_IN, NAT_OUT, POOL, SOFTWIRES, SW_BLOCKS},
    packet::{Exit, Res},
};

const EEXIST: i32 = -17;

// Results of the BPF calls below. Plain integers on purpose: returning enums from a BPF call
// can make LLVM store uninitialised padding, which the verifier rejects, and a scalar result
// lets the verifier prune the many ways out of a search into one state.
const FOUND: u32 = 0;
const NOT_FOUND: u32 = 1;
const QUOTA_EXCEEDED: u32 = 2;
const POOL_EXHAUSTED: u32 = 3;
const TABLE_FULL: u32 = 4;
const NOT_CONFIGURED: u32 = 5;
/// `NEED_BLOCK | slot << 8`: slot `slot` is empty and must be given a block first.
const NEED_BLOCK: u32 = 6;
const SESSION_LIMIT: u32 = 7;
const RATE_LIMIT: u32 = 8;

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
            if tcp & !(*v).tcp_state != 0 {
                (*v).tcp_state |= tcp;
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
    // Each round either ends the search or claims one more block for an empty slot; the
    // two are separate BPF calls so their stack frames are never stacked.
    let mut round = 0;
    let mut r = QUOTA_EXCEEDED;
    while round <= MAX_BLOCKS {
        r = create(key, cfg, tcp as u32, &mut out);
        if r & 0xff != NEED_BLOCK {
            break;
        }
        let sk = SlotKey {
            b4: key.b4,
            slot: (r >> 8) as u8,
            _pad: [0; 3],
        };
        // SAFETY: plain helper call.
        r = claim_block(&sk, cfg, unsafe { bpf_ktime_get_ns() });
        if r != FOUND {
            break;
        }
        r = QUOTA_EXCEEDED;
        round += 1;
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

/// Count a refusal on the softwire (the sweep turns new refusals into one NAT log record per
/// softwire per second, natEvent 13). Refusals are the exception: the insert is off the
/// normal path.
#[inline(never)]
fn note_refusal(b4: &[u8; 16], cfg: &AftrConfig) {
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

/// Per-softwire limits before a new mapping (RFC 6888 REQ-4/5): at most `max_sessions`
/// mappings, and new ones at `new_per_sec` with that burst (token bucket). The state is
/// updated without locks: two CPUs may both take the last token, an error of one mapping
/// that the next refill absorbs.
#[inline(never)]
fn admit(b4: &[u8; 16], cfg: &AftrConfig, now: u64) -> u32 {
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
    FOUND
}

/// What a port search needs besides the key (bundled: BPF calls take five arguments).
struct Search {
    now: u64,
    hash: u32,
    parity: u16,
    tcp: u8,
}

/// Create a mapping: a free port in the softwire's blocks, in slot order. Returns
/// `NEED_BLOCK | slot << 8` at the first empty slot, `QUOTA_EXCEEDED` when all
/// `max_blocks` blocks are full.
#[inline(never)]
fn create(key: &NatOutKey, cfg: &AftrConfig, tcp: u32, out: &mut Outside) -> u32 {
    let q = Search {
        // SAFETY: plain helper call.
        now: unsafe { bpf_ktime_get_ns() },
        hash: port_hash(key, cfg.hash_seed),
        parity: u16::from_be(key.inside_port) & 1,
        tcp: tcp as u8,
    };
    let mut slot = 0u32;
    while slot < MAX_BLOCKS {
        if slot >= cfg.max_blocks as u32 {
            break;
        }
        let sk = SlotKey {
            b4: key.b4,
            slot: slot as u8,
            _pad: [0; 3],
        };
        let s = match SW_BLOCKS.get_ptr(&sk) {
            // SAFETY: map value pointer from the kernel; copied out.
            Some(p) => unsafe { *p },
            None => return NEED_BLOCK | (slot << 8),
        };
        let r = claim_port(key, &s, cfg, &q, out);
        if r != NOT_FOUND {
            return r;
        }
        slot += 1;
    }
    QUOTA_EXCEEDED
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

/// Take a free block for slot `sk.slot`: on the address of the blocks the softwire already
/// holds (paired pooling), or, for its first block, on its hashed address or the next ones.
#[inline(never)]
fn claim_block(sk: &SlotKey, cfg: &AftrConfig, now: u64) -> u32 {
    let per_addr = cfg.blocks_per_addr as u32;
    if per_addr == 0 || cfg.pool_len == 0 {
        return NOT_CONFIGURED;
    }
    let h = softwire_hash(&sk.b4, cfg.hash_seed);
    let held = held_address(sk);
    let (first_index, addr_tries) = if held != u32::MAX {
        (held, 1)
    } else {
        (h % cfg.pool_len, ADDR_TRIES)
    };
    let stride = (h >> 8) | 1;
    let owner = BlockValue {
        b4: sk.b4,
        allocated_ns: now,
        released_ns: 0,
    };
    let mut a = 0u32;
    while a < ADDR_TRIES {
        if a >= addr_tries {
            break;
        }
        let addr_index = (first_index + a) % cfg.pool_len;
        let mut t = 0u32;
        while t < BLOCK_TRIES {
            let block = h.wrapping_add(t.wrapping_mul(stride)) % per_addr;
            match try_block(sk, &owner, cfg, (addr_index << 16) | block) {
                BLOCK_TAKEN => {}
                BLOCK_OURS => return FOUND,
                BLOCK_NO_ADDR => return NOT_CONFIGURED,
                _ => return TABLE_FULL,
            }
            t += 1;
        }
        a += 1;
    }
    POOL_EXHAUSTED
}

const BLOCK_TAKEN: u32 = 0;
const BLOCK_OURS: u32 = 1;
const BLOCK_TABLE_FULL: u32 = 2;
const BLOCK_NO_ADDR: u32 = 3;

/// Claim one block (`where_` = pool index << 16 | block) for slot `sk`. `BLOCK_OURS` also
/// when another CPU filled the slot first: the caller reads the slot back either way.
#[inline(never)]
fn try_block(sk: &SlotKey, owner: &BlockValue, cfg: &AftrConfig, where_: u32) -> u32 {
    let addr_index = where_ >> 16;
    let addr = match POOL.get(addr_index) {
        Some(a) => *a,
        None => return BLOCK_NO_ADDR,
    };
    let s = Slot {
        addr,
        addr_index,
        block: where_ as u16,
        _pad: 0,
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

/// Emit a block-allocation event straight into the ring buffer; a full ring buffer is
/// counted, never silent.
#[inline(never)]
fn block_event(sk: &SlotKey, s: &Slot, cfg: &AftrConfig, now: u64) {
    count(Counter::BlockAllocated);
    let Some(mut entry) = EVENTS.reserve::<NatEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let first = block_first_port(s.block, cfg.port_lo, cfg.block_size);
    entry.write(NatEvent {
        ts_ns: now,
        b4: sk.b4,
        addr: s.addr,
        port_lo: first,
        port_hi: first + (cfg.block_size - 1),
        kind: EVENT_BLOCK_ALLOCATED,
        ..NatEvent::default()
    });
    entry.submit(0);
}

/// Report a mapping just created (`--log-sessions`, RFC 6888 REQ-12, checklist 50-51):
/// `out` is the outside address (high 32 bits, raw) and port (low 16, host order); `dst` the
/// first destination likewise, or 0. A full ring buffer is counted.
#[inline(never)]
pub fn mapping_event(key: &NatOutKey, out: u64, dst: u64) {
    let Some(mut entry) = EVENTS.reserve::<NatEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let port = out as u16;
    entry.write(NatEvent {
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        b4: key.b4,
        addr: ((out >> 32) as u32).to_ne_bytes(),
        port_lo: port,
        port_hi: port,
        kind: EVENT_MAPPING_CREATED,
        proto: key.proto,
        inside_port: u16::from_be(key.inside_port),
        inside_addr: key.inside_addr,
        dst_addr: ((dst >> 32) as u32).to_ne_bytes(),
        dst_port: dst as u16,
        _pad: 0,
    });
    entry.submit(0);
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
        _pad: 0,
        created_ns: q.now,
        last_seen_ns: q.now,
    };
    match NAT_OUT.insert(key, &v, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(Counter::NatMappingCreated);
            if let Some(st) = SOFTWIRES.get_ptr_mut(&key.b4) {
                // SAFETY: map value pointer. Not atomic (the BPF target has no fetch-add in
                // `core`): concurrent creations may lose an increment, which the sweep's
                // recount every second repairs.
                unsafe { (*st).sessions += 1 };
            }
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
            if bits & !(*v).tcp_state != 0 {
                (*v).tcp_state |= bits;
            }
            if refresh {
                (*v).last_seen_ns = bpf_ktime_get_ns();
            }
        }
    }
}
