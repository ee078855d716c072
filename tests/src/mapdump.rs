//! Whole-map snapshots as raw bytes, one `BPF_MAP_LOOKUP_BATCH` call per map.
//!
//! The fuzzer compares the AFTR's state before and after every frame. aya iterates a map with
//! two syscalls per entry; the batch command (Linux 5.6) returns every entry in one, which
//! keeps a snapshot of thousands of mappings in the tens of microseconds. aya 0.14 has no
//! batch API, so the command is issued here directly. Keys and values stay raw bytes: the
//! comparison does not depend on the layouts, which the maps' owners may change.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::maps::{MapData, MapType};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr`, the `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A map's entries: key bytes -> value bytes (for per-CPU maps, every CPU's value, each
/// padded to 8 bytes, in CPU order).
pub type Snapshot = BTreeMap<Vec<u8>, Vec<u8>>;

/// A map's entries as one batch returned them: `count` keys, then `count` values. Cheap to
/// take and to compare; [`Raw::entries`] sorts them out when a comparison says "changed"
/// (a hash map may return the same entries in another order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Raw {
    pub count: usize,
    key_size: usize,
    value_size: usize,
    data: Vec<u8>,
}

impl Raw {
    fn key(&self, i: usize) -> &[u8] {
        &self.data[i * self.key_size..(i + 1) * self.key_size]
    }

    fn value(&self, i: usize) -> &[u8] {
        let base = self.count * self.key_size;
        &self.data[base + i * self.value_size..base + (i + 1) * self.value_size]
    }

    pub fn entries(&self) -> Snapshot {
        (0..self.count)
            .map(|i| (self.key(i).to_vec(), self.value(i).to_vec()))
            .collect()
    }

    pub fn contains_key(&self, k: &[u8]) -> bool {
        (0..self.count).any(|i| self.key(i) == k)
    }

    /// The same entries, in whatever order.
    pub fn same(&self, other: &Raw) -> bool {
        self == other || (self.count == other.count && self.entries() == other.entries())
    }
}

/// A map opened for snapshots.
pub struct Dumper {
    map: MapData,
    pub name: String,
    key_size: usize,
    value_size: usize,
    max_entries: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Dumper {
    /// Open the map pinned at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Dumper> {
        let map = MapData::from_pin(path)?;
        let info = map.info()?;
        let percpu = matches!(
            info.map_type()?,
            MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash
        );
        let value_size = if percpu {
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            (info.value_size() as usize).div_ceil(8) * 8 * cpus
        } else {
            info.value_size() as usize
        };
        Ok(Dumper {
            map,
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            key_size: info.key_size() as usize,
            value_size,
            max_entries: info.max_entries() as usize,
            keys: Vec::new(),
            values: Vec::new(),
        })
    }

    /// Every entry of the map.
    pub fn snapshot(&mut self) -> io::Result<Snapshot> {
        Ok(self.raw()?.entries())
    }

    /// Every entry of the map, as the batch returned them.
    pub fn raw(&mut self) -> io::Result<Raw> {
        let n = self.max_entries.max(1);
        self.keys.resize(n * self.key_size, 0);
        self.values.resize(n * self.value_size, 0);
        let (keys, values) = (&mut self.keys, &mut self.values);
        // The batch cursor: a bucket index (u32) for hash maps, a key for arrays.
        let mut cursor_in = vec![0u8; self.key_size.max(8)];
        let mut cursor_out = vec![0u8; self.key_size.max(8)];
        let mut got_keys = Vec::new();
        let mut got_values = Vec::new();
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    cursor_in.as_mut_ptr() as u64
                },
                out_batch: cursor_out.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: n as u32,
                map_fd: self.map.fd().as_fd().as_raw_fd() as u32,
                ..Default::default()
            };
            // SAFETY: BPF_MAP_LOOKUP_BATCH with buffers for `count` keys and values of the
            // map's sizes, and cursors as large as a key; the kernel writes at most that.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            let err = (rc < 0).then(io::Error::last_os_error);
            let got = attr.count as usize;
            got_keys.extend_from_slice(&keys[..got * self.key_size]);
            got_values.extend_from_slice(&values[..got * self.value_size]);
            match err {
                // ENOENT: the walk reached the end (the last entries came with it).
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let count = got_keys.len() / self.key_size.max(1);
                    got_keys.extend_from_slice(&got_values);
                    return Ok(Raw {
                        count,
                        key_size: self.key_size,
                        value_size: self.value_size,
                        data: got_keys,
                    });
                }
                Some(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("BPF_MAP_LOOKUP_BATCH on {}: {e}", self.name),
                    ))
                }
                None => {
                    std::mem::swap(&mut cursor_in, &mut cursor_out);
                    first = false;
                }
            }
        }
    }
}
