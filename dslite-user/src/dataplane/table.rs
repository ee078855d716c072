//! The one-table layout's tables as the controller sees them: an `mmap` of the array map
//! (`BPF_F_MMAPABLE`), read and written through `dslite_common::table` like the kernel does,
//! at memory speed instead of a system call per bucket (docs/design.md, "Memory per
//! mapping"). Not yet used by the sweep or the views: the paths still use `NAT_OUT`/`NAT_IN`.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::{bail, Context as _, Result};
use aya::maps::MapData;
use dslite_common::table::{Bucket, Entry, Table, MAX_BUCKETS};

/// An array map of `Bucket<E>` mapped into this process.
pub struct Mapped<E> {
    base: NonNull<Bucket<E>>,
    len: usize,
    table: Table<E>,
}

// SAFETY: the mapping is plain shared memory; what threads (and the kernel) share through
// it is governed by the table's protocol (`dslite_common::table`), as for `Table`.
unsafe impl<E> Send for Mapped<E> {}
// SAFETY: as above.
unsafe impl<E> Sync for Mapped<E> {}

impl<E: Entry + Copy> Mapped<E> {
    /// Map the array map `map` of `buckets` buckets. The kernel refuses a map that is not
    /// mmapable (an error, not a fault later).
    pub fn new(map: &MapData, buckets: u32) -> Result<Mapped<E>> {
        if buckets == 0 || buckets > MAX_BUCKETS {
            bail!("a table has 1 to {MAX_BUCKETS} buckets, not {buckets}");
        }
        // The map must be exactly this table: another bucket count places keys elsewhere
        // than the kernel does, another value size misreads every entry.
        let info = map.info().context("the table's map")?;
        let value = std::mem::size_of::<Bucket<E>>() as u32;
        if info.value_size() != value || info.max_entries() != buckets {
            bail!(
                "the table's map has {} entries of {} bytes, not {buckets} buckets of {value}",
                info.max_entries(),
                info.value_size()
            );
        }
        let len = (buckets as usize)
            .checked_mul(std::mem::size_of::<Bucket<E>>())
            .ok_or_else(|| anyhow::anyhow!("{buckets} buckets do not fit in memory"))?;
        // SAFETY: a fresh shared mapping of the map's memory; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "mmap of the table's map ({buckets} buckets, {len} bytes): {} (is it a \
                 BPF_F_MMAPABLE array of at least that many entries?)",
                std::io::Error::last_os_error()
            );
        }
        let base = NonNull::new(p as *mut Bucket<E>).expect("mmap returned null");
        // SAFETY: `buckets` buckets behind `base`, mapped until drop.
        let table = unsafe { Table::from_raw(base.as_ptr(), buckets) };
        Ok(Mapped { base, len, table })
    }

    pub fn table(&self) -> &Table<E> {
        &self.table
    }
}

impl<E> Drop for Mapped<E> {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}
