//! The one-table layout's tables as the controller sees them: an `mmap` of the array map
//! (`BPF_F_MMAPABLE`), read and written through `dslite_common::table` like the kernel does,
//! at memory speed instead of a system call per bucket (docs/design.md, "Memory per
//! mapping"). Not yet used by the sweep or the views: the paths still use `NAT_OUT`/`NAT_IN`.

use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
};

use anyhow::{bail, Result};
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
    /// Map the array map `fd` of `buckets` buckets. The kernel refuses a map that is not
    /// mmapable or is smaller than asked (an error, not a fault later).
    pub fn new(fd: BorrowedFd<'_>, buckets: u32) -> Result<Mapped<E>> {
        if buckets == 0 || buckets > MAX_BUCKETS {
            bail!("a table has 1 to {MAX_BUCKETS} buckets, not {buckets}");
        }
        // The map must be exactly this table: another bucket count places keys elsewhere
        // than the kernel does, another value size misreads every entry.
        let info = map_info(fd)?;
        let value = std::mem::size_of::<Bucket<E>>() as u32;
        if info.value_size != value || info.max_entries != buckets {
            bail!(
                "the table's map has {} entries of {} bytes, not {buckets} buckets of {value}",
                info.max_entries,
                info.value_size
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
                fd.as_raw_fd(),
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

/// What `BPF_OBJ_GET_INFO_BY_FD` says of a map (the start of `struct bpf_map_info`).
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

fn map_info(fd: BorrowedFd<'_>) -> Result<MapInfo> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut info = MapInfo::default();
    // union bpf_attr's info member: bpf_fd, info_len, info (a pointer); zero-padded.
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u64 | ((std::mem::size_of::<MapInfo>() as u64) << 32);
    attr[1] = &mut info as *mut MapInfo as u64;
    // SAFETY: a zero-padded bpf_attr; the kernel writes at most info_len bytes to `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            128,
        )
    };
    if rc != 0 {
        bail!(
            "BPF_OBJ_GET_INFO_BY_FD: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(info)
}
