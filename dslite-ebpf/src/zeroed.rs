//! Zeroing stack structs with 8-byte stores. LLVM turns a zeroed struct with byte-array
//! fields into a `memset` call, and the BPF `memset` (compiler_builtins) stores one byte per
//! loop round: 5 instructions a byte, 74 bytes (~40 ns) on entry to the outbound path alone
//! (docs/benchmarks.md, "Stages"). Volatile stores are never merged back into a `memset`.

use core::{
    mem::{align_of, size_of, MaybeUninit},
    ptr::write_volatile,
};

/// Types for which all-zero bytes are a valid value (integers, bools, byte arrays and
/// structs of them), 8-byte aligned so that 8-byte stack stores are aligned (the verifier
/// requires it of every stack access).
///
/// # Safety
/// Implement only for such types.
pub unsafe trait Zeroable: Sized {}

/// Zero `slot` in place, 8 bytes a store, and hand it out initialised.
#[inline(always)]
pub fn zeroed<T: Zeroable>(slot: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(align_of::<T>().is_multiple_of(8) && size_of::<T>().is_multiple_of(8)) };
    let w = slot.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: in bounds of `slot` (whole words, by the assertion above), aligned.
        unsafe { write_volatile(w.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte is now zero, a valid `T` (`Zeroable`).
    unsafe { slot.assume_init_mut() }
}
