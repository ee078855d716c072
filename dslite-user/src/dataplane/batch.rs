//! Reading a whole map with BPF_MAP_LOOKUP_BATCH: one system call per few thousand entries
//! instead of two per entry (the difference between 0.3 s and 3 s for a million mappings,
//! docs/benchmarks.md). The sweep reads NAT_OUT, BLOCKS and SW_BLOCKS this way (NAT_OUT a
//! slice a second, [`Walk`]) and deletes what expired with BPF_MAP_DELETE_BATCH; the tests'
//! map snapshots (`tests/src/mapdump.rs`) can read any map through [`lookup_batch`].

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use anyhow::Result;
use aya::{maps::MapData, Pod};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

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
    f: impl FnMut(&[u8], &[u8], usize),
) -> std::io::Result<()> {
    let mut walk = Walk {
        bufs: std::mem::take(bufs),
        started: false,
    };
    let r = walk.next(fd, key_size, value_size, chunk, usize::MAX, f);
    *bufs = walk.bufs;
    r.map(|_| ())
}

/// A walk through a map that can stop and go on later: the batch cursor (for a hash map,
/// the next bucket) is kept between calls. Entries inserted behind the cursor are not seen
/// until the next walk; none is seen twice in one walk (a bucket is read whole, once).
#[derive(Default)]
pub struct Walk {
    bufs: BatchBuffers,
    /// The cursor in `bufs.token_in` is the walk's: false before its first call.
    started: bool,
}

impl Walk {
    /// Read on from where the last call stopped, `chunk` entries a system call, until about
    /// `max` entries (a hash bucket is never split, so a call may read a few more). True
    /// when the map's end was reached: the next call starts a new walk.
    pub fn next(
        &mut self,
        fd: RawFd,
        key_size: usize,
        value_size: usize,
        chunk: usize,
        max: usize,
        mut f: impl FnMut(&[u8], &[u8], usize),
    ) -> std::io::Result<bool> {
        let mut chunk = chunk.max(1);
        let BatchBuffers {
            keys,
            values,
            token_in,
            token_out,
        } = &mut self.bufs;
        // The batch cursor: a bucket index (u32) for hash maps, a key for arrays.
        token_in.resize(key_size.max(8), 0);
        token_out.resize(key_size.max(8), 0);
        // `floor`: at least this many a call once a bucket proved larger than asked for.
        let (mut read, mut floor) = (0usize, 1usize);
        while read < max {
            let want = chunk.min(max - read).max(floor);
            keys.resize(want * key_size, 0);
            values.resize(want * value_size, 0);
            let mut attr = Batch {
                in_batch: if self.started {
                    token_in.as_ptr() as u64
                } else {
                    0
                },
                out_batch: token_out.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: want as u32,
                map_fd: fd as u32,
                ..Default::default()
            };
            let (rc, err) = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let got = (attr.count as usize).min(want);
            f(&keys[..got * key_size], &values[..got * value_size], got);
            read += got;
            if rc < 0 {
                match err.raw_os_error() {
                    Some(libc::ENOENT) => {
                        self.started = false;
                        return Ok(true);
                    }
                    // A bucket holds more entries than asked for (nothing was read):
                    // ask again for twice as many.
                    Some(libc::ENOSPC) if want < MAX_CHUNK => {
                        floor = want * 2;
                        chunk = chunk.max(floor);
                        continue;
                    }
                    _ => {
                        self.started = false;
                        return Err(err);
                    }
                }
            }
            std::mem::swap(token_in, token_out);
            self.started = true;
        }
        Ok(false)
    }
}

/// Delete `keys` (each `key_size` bytes) from the map `fd` with BPF_MAP_DELETE_BATCH, one
/// system call for all of them. The kernel stops at a key it cannot delete (one already
/// gone: ENOENT); that key is passed over and the rest asked again. Returns the indices of
/// the keys not deleted, and the first failure other than ENOENT.
pub fn delete_batch(
    fd: RawFd,
    keys: &[u8],
    key_size: usize,
) -> (Vec<usize>, Option<std::io::Error>) {
    let total = keys.len() / key_size.max(1);
    let (mut at, mut kept, mut first) = (0usize, Vec::new(), None);
    while at < total {
        let mut attr = Batch {
            keys: keys[at * key_size..].as_ptr() as u64,
            count: (total - at) as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        let (rc, err) = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        at += (attr.count as usize).min(total - at);
        if rc < 0 && at < total {
            kept.push(at);
            if err.raw_os_error() != Some(libc::ENOENT) && first.is_none() {
                first = Some(err);
            }
            at += 1;
        }
    }
    (kept, first)
}

/// One `bpf(2)` batch command: its return value and the error it left.
fn bpf(cmd: libc::c_long, attr: &mut Batch) -> (libc::c_long, std::io::Error) {
    // SAFETY: a batch command whose `Batch` points at buffers the caller keeps alive for
    // the call, sized for `count` keys and values and cursors as large as a key.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Batch,
            std::mem::size_of::<Batch>(),
        )
    };
    (rc, std::io::Error::last_os_error())
}

/// Typed entries from a batch read: `n` keys of K, then `n` values of V.
fn typed<K: Pod, V: Pod>(keys: &[u8], values: &[u8], n: usize, mut f: impl FnMut(K, V)) {
    let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    for i in 0..n {
        // SAFETY: `keys` and `values` hold `n` entries of K and V, read unaligned; both are
        // Pod, so any bytes are a value.
        let (k, v) = unsafe {
            (
                std::ptr::read_unaligned(keys[i * ks..].as_ptr().cast::<K>()),
                std::ptr::read_unaligned(values[i * vs..].as_ptr().cast::<V>()),
            )
        };
        f(k, v);
    }
}

/// Up to about `max` (key, value) of the hash map `map` from where `walk` stands; true at
/// the map's end (see [`Walk::next`]).
pub fn walk_map<K: Pod, V: Pod>(
    walk: &mut Walk,
    map: &MapData,
    max: usize,
    mut f: impl FnMut(K, V),
) -> Result<bool> {
    let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    let fd = map.fd().as_fd().as_raw_fd();
    walk.next(fd, ks, vs, 4096, max, |keys, values, n| {
        typed(keys, values, n, &mut f)
    })
    .map_err(|err| anyhow::anyhow!("BPF_MAP_LOOKUP_BATCH: {err}"))
}

/// Delete `keys` from `map` ([`delete_batch`]): the indices of the keys not deleted, and
/// the first failure other than a key already gone.
pub fn delete_keys<K: Pod>(map: &MapData, keys: &[K]) -> (Vec<usize>, Option<anyhow::Error>) {
    // SAFETY: K is Pod: its bytes are plain data, `len * size_of::<K>()` of them.
    let bytes = unsafe {
        std::slice::from_raw_parts(keys.as_ptr().cast::<u8>(), std::mem::size_of_val(keys))
    };
    let (kept, err) = delete_batch(map.fd().as_fd().as_raw_fd(), bytes, size_of::<K>());
    (
        kept,
        err.map(|e| anyhow::anyhow!("BPF_MAP_DELETE_BATCH: {e}")),
    )
}

/// Every (key, value) of the hash map `fd`, read with [`lookup_batch`], 4096 at a time.
pub fn scan_hash<K: Pod, V: Pod>(fd: RawFd, mut f: impl FnMut(K, V)) -> Result<()> {
    let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    lookup_batch(fd, ks, vs, 4096, |keys, values, n| {
        typed(keys, values, n, &mut f)
    })
    .map_err(|err| anyhow::anyhow!("BPF_MAP_LOOKUP_BATCH: {err}"))
}

/// [`scan_hash`] on an open map.
pub fn scan_map<K: Pod, V: Pod>(map: &MapData, f: impl FnMut(K, V)) -> Result<()> {
    scan_hash(map.fd().as_fd().as_raw_fd(), f)
}
