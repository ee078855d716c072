//! TCP MSS clamping on SYN and SYN-ACK, in both elements, so TCP fits the softwire without
//! fragmentation (RFC 6908 §2.3 / RFC 8513).

use dslite_common::{proto::*, Counter};

use crate::{
    ctx::{CsumEdit, Pkt},
    maps::count,
    packet::{ptr_at, read16, write16},
};

const TCP_OPT_MSS: u8 = 2;

/// If the TCP segment at `l4` is a SYN whose first option is an MSS above `mss`, lower it
/// to `mss` and fix the TCP checksum incrementally; returns 1 if it clamped.
///
/// Only the first option is looked at: every common stack (Linux, Windows, BSD, Apple) puts
/// the MSS first in a SYN, and a walk over all options (up to 40 steps with three-way
/// branches) cost the AFTR program its verifier budget. A BPF call returning a plain
/// integer, so its exits meet the caller in one state.
#[inline(never)]
pub fn clamp<C: Pkt>(ctx: &C, l4: usize, mss: u16) -> u32 {
    // A fresh copy: the verifier links an argument to the caller's register it came from.
    let l4 = l4 & 0x1ff;
    let Some(t) = ptr_at::<[u8; TCP_MIN_LEN], _>(ctx, l4) else {
        return 0;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (hlen, flags) = unsafe {
        (
            (((*t)[TCP_DOFF_OFF] >> 4) as usize) * 4,
            (*t)[TCP_FLAGS_OFF],
        )
    };
    if flags & 0x02 == 0 || mss == 0 || hlen < TCP_MIN_LEN + 4 {
        return 0;
    }
    let Some(o) = ptr_at::<[u8; 4], _>(ctx, l4 + TCP_MIN_LEN) else {
        return 0;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let o = unsafe { &mut *o };
    if o[0] != TCP_OPT_MSS || o[1] != 4 {
        return 0;
    }
    let old = read16(o[2..].as_ptr());
    if u16::from_be(old) <= mss {
        return 0;
    }
    let new = mss.to_be();
    write16(o[2..].as_mut_ptr(), new);
    // Last, by offset: on tc the helper invalidates packet pointers.
    if ctx
        .l4_csum_replace(l4 + TCP_CSUM_OFF, old as u32, new as u32, CsumEdit::WORD)
        .is_err()
    {
        return 0;
    }
    count(Counter::MssClamped);
    1
}
