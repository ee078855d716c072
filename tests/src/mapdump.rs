//! Whole-map snapshots as raw bytes, one `BPF_MAP_LOOKUP_BATCH` call per map.
//!
//! The fuzzer compares the AFTR's state before and after every frame. aya iterates a map with
//! two syscalls per entry; the batch command (Linux 5.6) returns every entry in one, which
//! keeps a snapshot of thousands of mappings in the tens of microseconds. aya 0.14 has no
//! batch API; the controller's `dataplane::batch` issues the command, for the sweep and
//! here. Keys and values stay raw bytes: the
//! comparison does not depend on the layouts, which the maps' owners may change.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::maps::{MapData, MapType};
use dslite_user::dataplane::batch::{lookup_batch_into, BatchBuffers};

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
    bufs: BatchBuffers,
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
            bufs: BatchBuffers::default(),
        })
    }

    /// Every entry of the map.
    pub fn snapshot(&mut self) -> io::Result<Snapshot> {
        Ok(self.raw()?.entries())
    }

    /// Every entry of the map, as the batch returned them (one call for the whole map).
    pub fn raw(&mut self) -> io::Result<Raw> {
        let (key_size, value_size) = (self.key_size, self.value_size);
        let mut keys = Vec::new();
        let mut values = Vec::new();
        lookup_batch_into(
            &mut self.bufs,
            self.map.fd().as_fd().as_raw_fd(),
            key_size,
            value_size,
            self.max_entries,
            |k, v, _| {
                keys.extend_from_slice(k);
                values.extend_from_slice(v);
            },
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("BPF_MAP_LOOKUP_BATCH on {}: {e}", self.name),
            )
        })?;
        let count = keys.len() / key_size.max(1);
        keys.extend_from_slice(&values);
        Ok(Raw {
            count,
            key_size,
            value_size,
            data: keys,
        })
    }
}
