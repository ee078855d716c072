//! The one way the programs touch packet memory: every access goes through [`ptr_at`],
//! which checks the access against `data_end` (and bounds the offset so the verifier can
//! follow variable offsets such as IHL and extension-header lengths).

use core::mem::size_of;

use dslite_common::Counter;

use crate::{
    ctx::Pkt,
    exit::{Exit, Res},
};

/// Largest offset the programs ever read at: Ethernet 14 + IPv6 40 + extension headers
/// 2 x 64 + IPv4 60 + TCP 20 = 262. Bounding it keeps packet-pointer arithmetic verifiable.
const MAX_OFFSET: usize = 512;

/// Bounds-checked pointer to a `T` at `off` bytes from the start of the packet.
///
/// SAFETY of the returned pointer: valid for reads and writes of `size_of::<T>()` bytes until
/// the next [`Pkt`] method that moves data (crate::ctx), after which every pointer must be
/// taken again. On tc it covers only the linear head, which the entry pulls up to 320 bytes.
#[inline(always)]
pub fn ptr_at<T, C: Pkt>(ctx: &C, off: usize) -> Option<*mut T> {
    if off > MAX_OFFSET {
        return None;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Like [`ptr_at`], turning a short packet into a counted drop.
#[inline(always)]
pub fn at<T, C: Pkt>(ctx: &C, off: usize, short: Counter) -> Res<*mut T> {
    ptr_at(ctx, off).ok_or(Exit::Drop(short))
}

/// Length of the whole frame (on tc it may exceed what [`ptr_at`] reaches).
#[inline(always)]
pub fn len<C: Pkt>(ctx: &C) -> usize {
    ctx.len()
}

/// Read a raw (memory-order) 16-bit word.
#[inline(always)]
pub fn read16(p: *const u8) -> u16 {
    // SAFETY: callers pass pointers obtained from `ptr_at` covering these bytes.
    unsafe { core::ptr::read_unaligned(p as *const u16) }
}

/// Write a raw (memory-order) 16-bit word.
#[inline(always)]
pub fn write16(p: *mut u8, v: u16) {
    // SAFETY: as for `read16`.
    unsafe { core::ptr::write_unaligned(p as *mut u16, v) }
}
