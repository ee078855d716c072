//! Internet checksums over packet bytes (RFC 1071): bounded loops for headers, `bpf_loop`
//! for whole ICMP messages. Incremental updates (RFC 1624) are in `dslite_common::csum`.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use dslite_common::{csum, proto::*};

use crate::{
    ctx::Pkt,
    exit::{LOOP_BREAK, LOOP_CONTINUE},
    packet::{ptr_at, read16},
};

/// Sum of `n` bytes (even, at most `max`) of the packet at `off`, as raw words.
#[inline(always)]
pub fn sum_words<C: Pkt>(ctx: &C, off: usize, n: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0usize;
    while i < (ICMP_MIN_LEN + 68) / 2 {
        if i * 2 >= n {
            break;
        }
        let Some(w) = ptr_at::<[u8; 2], _>(ctx, off + i * 2) else {
            break;
        };
        sum += read16(w as *const u8) as u32;
        i += 1;
    }
    sum
}

/// Longest ICMP error translated (a full Ethernet payload).
pub const MAX_ICMP_LEN: usize = 1480;

/// State of a checksum run over packet bytes, shared with [`sum_chunk`].
#[repr(C)]
struct SumLoop {
    ctx: *mut c_void,
    off: u64,
    n: u64,
    sum: u64,
    failed: u64,
}

/// `bpf_loop` callback: add the `i`-th 64-byte chunk (the last one zero-padded, which is
/// also the odd-length rule) to the sum, as 64-bit words folded later (RFC 1071 §2(C)).
/// 1 stops the loop. One per hook: the load goes through that hook's helper.
unsafe extern "C" fn sum_chunk<C: Pkt>(i: u32, c: *mut c_void) -> i64 {
    // SAFETY: `c` is the `SumLoop` on the caller's stack (bpf_loop passes it through).
    let c = unsafe { &mut *(c as *mut SumLoop) };
    let done = i as u64 * 64;
    if done >= c.n {
        return LOOP_BREAK;
    }
    let left = c.n - done;
    let chunk = if left > 64 { 64 } else { left };
    // The verifier must see 1..=64 for the helper's length; LLVM knows `chunk` is and
    // drops any check, so hide the value and re-derive the range arithmetically.
    // SAFETY: a volatile read of a local.
    let chunk = unsafe { core::ptr::read_volatile(&chunk) };
    let chunk = (chunk.wrapping_sub(1) & 63) + 1;
    let mut buf = [0u64; 8];
    // SAFETY: the helper checks the read against the frame; `chunk` fits the buffer.
    let rc = unsafe {
        C::load_bytes(
            c.ctx,
            (c.off + done) as u32,
            buf.as_mut_ptr().cast(),
            chunk as u32,
        )
    };
    if rc != 0 {
        c.failed = 1;
        return LOOP_BREAK;
    }
    let mut w = 0;
    while w < 8 {
        c.sum += (buf[w] & 0xffff_ffff) + (buf[w] >> 32);
        w += 1;
    }
    LOOP_CONTINUE
}

/// 1 if the `n` bytes at `off` (at most `MAX_ICMP_LEN`) sum to 0xffff: the whole ICMP
/// message (RFC 5508 REQ-3a). The chunks run under `bpf_loop`, so the verifier checks the
/// loop body once, not once per iteration and caller state.
#[inline(never)]
pub fn checksum_ok<C: Pkt>(ctx: &C, off: usize, n: usize) -> u32 {
    if n > MAX_ICMP_LEN {
        return 0;
    }
    let mut st = SumLoop {
        ctx: ctx.raw(),
        off: off as u64,
        n: n as u64,
        sum: 0,
        failed: 0,
    };
    // SAFETY: bpf_loop calls `sum_chunk` with a pointer to `st`, which outlives the call.
    unsafe {
        bpf_loop(
            MAX_ICMP_LEN.div_ceil(64) as u32,
            sum_chunk::<C> as *mut c_void,
            &mut st as *mut SumLoop as *mut c_void,
            0,
        )
    };
    if st.failed != 0 {
        return 0;
    }
    let sum = (st.sum & 0xffff_ffff) + (st.sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    (csum::fold(sum as u32) == 0xffff) as u32
}

/// 1 if the IPv4 header of `hlen` bytes (options included) at `off` sums to 0xffff. A BPF
/// call returning a plain integer, so its loop exits meet the caller in one state.
#[inline(never)]
pub fn header_ok<C: Pkt>(ctx: &C, off: usize, hlen: usize) -> u32 {
    // Fresh copies: the verifier links an argument to the caller's register it came from.
    let hlen = hlen & 0x3c;
    let off = off & 0x7ff;
    let mut sum = 0u32;
    let mut i = 0usize;
    while i < 30 {
        if i * 2 >= hlen {
            break;
        }
        let Some(w) = ptr_at::<[u8; 2], _>(ctx, off + i * 2) else {
            return 0;
        };
        sum += read16(w as *const u8) as u32;
        i += 1;
    }
    (csum::fold(sum) == 0xffff) as u32
}
