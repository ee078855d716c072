//! Reading a whole map with BPF_MAP_LOOKUP_BATCH: one system call per few thousand entries
//! instead of two per entry (the difference between 0.3 s and 3 s for a million mappings,
//! docs/benchmarks.md). The sweep reads NAT_OUT, BLOCKS and SW_BLOCKS this way; the tests'
//! map snapshots (`tests/src/mapdump.rs`) can read any map through [`lookup_batch`].

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use anyhow::Result;
use aya::{maps::MapData, Pod};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr`, the batch member.
#[repr(C)]
#[derive(Default)]
struct Batch {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Most entries asked for in one call: a hash bucket larger than the chunk doubles it up to
/// this.
const MAX_CHUNK: usize = 1 << 20;

/// Buffers for [`lookup_batch_into`], kept by a caller that reads the same maps again and
/// again (the fuzzer's snapshots) so that a read allocates nothing.
#[derive(Default)]
pub struct BatchBuffers {
    keys: Vec<u8>,
    values: Vec<u8>,
    token_in: Vec<u8>,
    token_out: Vec<u8>,
}

/// Walk the map `fd` with BPF_MAP_LOOKUP_BATCH, `chunk` entries a call, handing each batch
/// to `f` as (keys, values, count): `count` keys of `key_size` bytes, then as many values
/// of `value_size` (a per-CPU map's value is one 8-byte slot per possible CPU). Ends at the
/// map's end (ENOENT); a bucket larger than the chunk (ENOSPC) doubles it and asks again;
/// any other failure is the system call's error, after the entries that came with it.
pub fn lookup_batch(
    fd: RawFd,
    key_size: usize,
    value_size: usize,
    chunk: usize,
    f: impl FnMut(&[u8], &[u8], usize),
) -> std::io::Result<()> {
    lookup_batch_into(
        &mut BatchBuffers::default(),
        fd,
        key_size,
        value_size,
        chunk,
        f,
    )
}

/// [`lookup_batch`] with the caller's buffers.
pub fn lookup_batch_into(
    bufs: &mut BatchBuffers,
    fd: RawFd,
    key_size: usize,
    value_size: usize,
    chunk: usize,
    mut f: impl FnMut(&[u8], &[u8], usize),
) -> std::io::Result<()> {
    let mut chunk = chunk.max(1);
    let BatchBuffers {
        keys,
        values,
        token_in,
        token_out,
    } = bufs;
    // The batch cursor: a bucket index (u32) for hash maps, a key for arrays.
    token_in.resize(key_size.max(8), 0);
    token_out.resize(key_size.max(8), 0);
    let mut first = true;
    loop {
        keys.resize(chunk * key_size, 0);
        values.resize(chunk * value_size, 0);
        let mut attr = Batch {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: a BPF_MAP_LOOKUP_BATCH with buffers for `chunk` keys and values of the
        // sizes given, and cursors as large as a key (at least a u32), all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut Batch,
                std::mem::size_of::<Batch>(),
            )
        };
        let err = std::io::Error::last_os_error();
        let got = (attr.count as usize).min(chunk);
        f(&keys[..got * key_size], &values[..got * value_size], got);
        if rc < 0 {
            match err.raw_os_error() {
                Some(libc::ENOENT) => return Ok(()),
                // A bucket holds more entries than the chunk: grow it and retry this batch.
                Some(libc::ENOSPC) if chunk < MAX_CHUNK => {
                    chunk *= 2;
                    continue;
                }
                _ => return Err(err),
            }
        }
        std::mem::swap(token_in, token_out);
        first = false;
    }
}

/// Every (key, value) of the hash map `fd`, read with [`lookup_batch`], 4096 at a time.
pub fn scan_hash<K: Pod, V: Pod>(fd: RawFd, mut f: impl FnMut(K, V)) -> Result<()> {
    let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    lookup_batch(fd, ks, vs, 4096, |keys, values, n| {
        for i in 0..n {
            // SAFETY: `keys` and `values` hold `n` entries of K and V, read unaligned; both
            // are Pod, so any bytes are a value.
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(keys[i * ks..].as_ptr().cast::<K>()),
                    std::ptr::read_unaligned(values[i * vs..].as_ptr().cast::<V>()),
                )
            };
            f(k, v);
        }
    })
    .map_err(|err| anyhow::anyhow!("BPF_MAP_LOOKUP_BATCH: {err}"))
}

/// [`scan_hash`] on an open map.
pub fn scan_map<K: Pod, V: Pod>(map: &MapData, f: impl FnMut(K, V)) -> Result<()> {
    scan_hash(map.fd().as_fd().as_raw_fd(), f)
}
