//! Randomness: the seed of the AFTR's port search, and anything else that must be hard to
//! guess.

/// A random seed for the port search (RFC 6056: outside ports hard to guess).
pub fn random_seed() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom into a local buffer of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 4 {
        // Fall back to time: still unpredictable enough across restarts for port choice.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t;
    }
    u32::from_ne_bytes(b)
}
