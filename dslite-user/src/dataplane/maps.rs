//! The pinned maps of a dataplane, opened by name in one place ([`Pinned`]), and the small
//! configuration writes: the B4's maps, where the slow path is, controller counters, the
//! next-hop cache, the deny lists. The AFTR's configuration maps are [`super::aftr`]'s.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
    },
    Ebpf, Pod,
};
use dslite_common::{
    maps::{self as m, AftrConfig, B4Config},
    slow::SlowConfig,
    Counter,
};

use crate::config::Cidr4;

/// The maps pinned under one directory (a running or adopted dataplane), each opened by
/// its name through here: `opening pinned NAME` on failure, unless the caller says more.
#[derive(Clone, Copy, Debug)]
pub struct Pinned<'a> {
    dir: &'a Path,
}

impl<'a> Pinned<'a> {
    pub fn new(dir: &'a Path) -> Self {
        Pinned { dir }
    }

    /// Where map `name` is pinned.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Map `name`, with aya's error alone (for callers that word their own).
    pub fn data(&self, name: &str) -> Result<MapData, MapError> {
        MapData::from_pin(self.path(name))
    }

    /// Map `name`.
    pub fn open(&self, name: &str) -> Result<MapData> {
        self.data(name)
            .with_context(|| format!("opening pinned {name}"))
    }

    /// Maps `names`, each of the kind its pin says.
    pub fn maps<const N: usize>(&self, names: [&str; N]) -> Result<[Map; N]> {
        let mut out = Vec::with_capacity(N);
        for n in names {
            out.push(Map::from_map_data(self.open(n)?)?);
        }
        out.try_into()
            .map_err(|_| anyhow::anyhow!("opening {N} maps"))
    }

    pub fn hash<K: Pod, V: Pod>(&self, name: &str) -> Result<HashMap<MapData, K, V>> {
        Ok(HashMap::try_from(Map::HashMap(self.open(name)?))?)
    }

    pub fn array<V: Pod>(&self, name: &str) -> Result<Array<MapData, V>> {
        Ok(Array::try_from(Map::Array(self.open(name)?))?)
    }

    pub fn lpm<K: Pod, V: Pod>(&self, name: &str) -> Result<LpmTrie<MapData, K, V>> {
        Ok(LpmTrie::try_from(Map::LpmTrie(self.open(name)?))?)
    }

    pub fn per_cpu_array<V: Pod>(&self, name: &str) -> Result<PerCpuArray<MapData, V>> {
        Ok(PerCpuArray::try_from(Map::PerCpuArray(self.open(name)?))?)
    }
}

/// Map `name` of a loaded object.
pub(super) fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the object"))
}

/// An LPM key as (prefix length, network).
pub(super) type Prefix<const N: usize> = (u32, [u8; N]);

/// Make DENY_V4 hold exactly `want` (a reload, or the host's addresses changed).
pub fn sync_denied(pin: &Path, want: &[Cidr4]) -> Result<()> {
    let pinned = Pinned::new(pin);
    let mut deny: LpmTrie<MapData, [u8; 4], u32> = pinned.lpm(m::DENY_V4)?;
    let mut hint: Array<MapData, u64> = pinned.array(m::DENY_HINT)?;
    sync_v4_prefixes(&mut deny, &mut hint, want, Prune::Stale)
}

/// Whether [`sync_v4_prefixes`] removes the prefixes `want` does not name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prune {
    Stale,
    /// Keep them (a start over adopted maps: the next sync decides).
    Keep,
}

/// Make an IPv4 trie hold `want` (and, with [`Prune::Stale`], nothing else), with its /16
/// summary (`dslite_common::hint`) a superset of the trie at every moment: the bits of
/// `want` are set before the trie changes, the bits of what went are cleared after. A
/// failure on the way leaves the superset, which is only slower, never wrong.
pub(super) fn sync_v4_prefixes<T, H>(
    trie: &mut LpmTrie<T, [u8; 4], u32>,
    hint: &mut Array<H, u64>,
    want: &[Cidr4],
    prune: Prune,
) -> Result<()>
where
    T: std::borrow::BorrowMut<MapData>,
    H: std::borrow::BorrowMut<MapData>,
{
    use dslite_common::hint::{mark, superset, HINT_WORDS};
    /// The summary of `prefixes` (network, length).
    fn words(prefixes: impl Iterator<Item = ([u8; 4], u8)>) -> Vec<u64> {
        let mut w = vec![0u64; HINT_WORDS as usize];
        prefixes.for_each(|(net, len)| mark(&mut w, net, len));
        w
    }
    let have: Vec<Key<[u8; 4]>> = trie.keys().collect::<Result<_, _>>()?;
    let prefix = |k: &Key<[u8; 4]>| (k.data(), k.prefix_len() as u8);
    type Keys<'k> = Vec<&'k Key<[u8; 4]>>;
    let (stale, kept): (Keys, Keys) = have.iter().partition(|k| {
        prune == Prune::Stale
            && !want
                .iter()
                .any(|p| p.len as u32 == k.prefix_len() && p.network() == k.data())
    });
    let after = words(
        want.iter()
            .map(|p| (p.network(), p.len))
            .chain(kept.into_iter().map(prefix)),
    );
    let before = words(have.iter().map(prefix));
    let mut during = vec![0u64; HINT_WORDS as usize];
    superset(&before, &after, &mut during);
    write_hint(hint, &during)?;
    for p in want {
        trie.insert(&Key::new(p.len as u32, p.network()), 1, 0)?;
    }
    for k in stale {
        trie.remove(k)?;
    }
    write_hint(hint, &after)
}

/// Write the words of a /16 summary that differ from what the map holds.
fn write_hint<H: std::borrow::BorrowMut<MapData>>(
    hint: &mut Array<H, u64>,
    words: &[u64],
) -> Result<()> {
    for (i, w) in words.iter().enumerate() {
        let i = i as u32;
        if hint.get(&i, 0)? != *w {
            hint.set(i, *w, 0)
                .with_context(|| format!("writing word {i} of a /16 summary"))?;
        }
    }
    Ok(())
}

/// Deny the AFTR host's own IPv6 addresses as B4 sources: /128 entries in B4_ALLOW with
/// [`m::B4_DENY`], which the longest match prefers over any allowing prefix. Entries for
/// addresses the host no longer has are removed. `prefixes` are the allowed prefixes (never
/// removed here). A B4 newly denied here keeps its mappings until the controller's
/// reconcile (`daemon::aftr`), as XDP checks B4_ALLOW only for packets without a mapping.
pub fn sync_local_b4_denies(
    pin: &Path,
    own: &[std::net::Ipv6Addr],
    prefixes: &[crate::config::Cidr6],
) -> Result<()> {
    let mut allow: LpmTrie<MapData, [u8; 16], u32> = Pinned::new(pin).lpm(m::B4_ALLOW)?;
    let stale: Vec<Key<[u8; 16]>> = allow
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(k, v)| {
            *v == m::B4_DENY
                && k.prefix_len() == 128
                && !own.iter().any(|a| a.octets() == k.data())
                && !prefixes
                    .iter()
                    .any(|p| p.len == 128 && p.network() == k.data())
        })
        .map(|(k, _)| k)
        .collect();
    for k in stale {
        let _ = allow.remove(&k);
    }
    for a in own {
        allow.insert(&Key::new(128, a.octets()), m::B4_DENY, 0)?;
    }
    Ok(())
}

/// Change the running B4's configuration in place (a new WAN address or AFTR).
pub fn update_b4_config(pin: &Path, f: impl FnOnce(&mut B4Config)) -> Result<()> {
    let mut c: Array<MapData, B4Config> = Pinned::new(pin).array(m::B4_CONFIG)?;
    let mut cfg = c.get(&0, 0)?;
    f(&mut cfg);
    c.set(0, cfg, 0)?;
    Ok(())
}

/// IPv4 destinations a B4 never puts into the softwire, besides its LAN subnets: "this
/// network", loopback, link-local, multicast and limited broadcast (RFC 6890).
pub const B4_ALWAYS_LOCAL: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
];

/// Write the B4's configuration: LAN-local prefixes, then the config entry (enabled last).
pub fn configure_b4(ebpf: &mut Ebpf, cfg: B4Config, lan_prefixes: &[Cidr4]) -> Result<()> {
    {
        let [Some(local), Some(hint)] = ebpf.maps_disjoint_mut([m::LOCAL_V4, m::LOCAL_HINT]) else {
            anyhow::bail!("maps LOCAL_V4 and LOCAL_HINT missing from the object");
        };
        let mut local: LpmTrie<&mut MapData, [u8; 4], u32> = LpmTrie::try_from(local)?;
        let mut hint: Array<&mut MapData, u64> = Array::try_from(hint)?;
        let want: Vec<Cidr4> = B4_ALWAYS_LOCAL
            .iter()
            .map(|s| s.parse::<Cidr4>().unwrap())
            .chain(lan_prefixes.iter().copied())
            .collect();
        // Adopted maps (--persist) may hold LAN prefixes this LAN no longer has.
        sync_v4_prefixes(&mut local, &mut hint, &want, Prune::Stale)?;
    }
    let mut c: Array<&mut MapData, B4Config> = Array::try_from(map_mut(ebpf, m::B4_CONFIG)?)?;
    c.set(0, B4Config { enabled: 1, ..cfg }, 0)?;
    Ok(())
}

/// Tell both programs where the slow path is: SLOW_CONFIG, and the one-entry devmap XDP
/// redirects through (the kernel empties it when the TAP goes away, so a dead slow path is
/// a counted drop, not a silent one).
pub fn set_slow_config(ebpf: &mut Ebpf, cfg: SlowConfig) -> Result<()> {
    let mut c: Array<&mut MapData, SlowConfig> = Array::try_from(map_mut(ebpf, m::SLOW_CONFIG)?)?;
    c.set(0, cfg, 0)?;
    let mut dev: aya::maps::DevMap<&mut MapData> =
        aya::maps::DevMap::try_from(map_mut(ebpf, m::SLOW_DEV)?)?;
    dev.set(0, cfg.ifindex, None, 0)?;
    Ok(())
}

/// The interfaces tc redirects into with `bpf_redirect_peer` (veths whose peer is in
/// another namespace), replacing any set before.
pub fn set_peer_redirects(ebpf: &mut Ebpf, ifindexes: &[u32]) -> Result<()> {
    let mut map: aya::maps::HashMap<&mut MapData, u32, u32> =
        aya::maps::HashMap::try_from(map_mut(ebpf, m::PEER_REDIRECT)?)?;
    let old: Vec<u32> = map.keys().filter_map(|k| k.ok()).collect();
    for k in old {
        let _ = map.remove(&k);
    }
    for i in ifindexes {
        map.insert(i, 1, 0)?;
    }
    Ok(())
}

/// Write controller-side counters into STATS (CPU 0's slot; the others stay 0), so that
/// `dslite stats` shows one set of counters.
pub fn publish_counters(pin_path: &Path, values: &[(Counter, u64)]) -> Result<()> {
    let map = Pinned::new(pin_path).data(m::STATS)?;
    let mut stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(map))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    for (c, v) in values {
        let mut per_cpu = vec![0u64; cpus];
        per_cpu[0] = *v;
        stats.set(*c as u32, PerCpuValues::try_from(per_cpu)?, 0)?;
    }
    Ok(())
}

/// Invalidate the XDP next-hop cache (`NH_GEN` + 1), or switch it off (`enable` false).
/// Switched on from off, it starts at a random generation: its entries are never evicted,
/// so one cached under a generation used before would be believed again. The slot hash's
/// seed (`NH_GEN[1]`) is drawn once.
pub fn bump_next_hops(pin: &Path, enable: bool) -> Result<()> {
    let mut gen: Array<MapData, u32> = Pinned::new(pin).array(m::NH_GEN)?;
    let cur = gen.get(&0, 0)?;
    let next = match (enable, cur) {
        (false, _) => 0,
        (true, 0) => crate::rand::random_seed().max(1),
        (true, g) => g.wrapping_add(1).max(1),
    };
    gen.set(0, next, 0)?;
    if gen.get(&1, 0)? == 0 {
        gen.set(1, crate::rand::random_seed().max(1), 0)?;
    }
    Ok(())
}

/// The hash seed of a configured (adopted) AFTR dataplane, if there is one.
pub fn running_seed(ebpf: &mut Ebpf) -> Option<u32> {
    let c: Array<&mut MapData, AftrConfig> =
        Array::try_from(map_mut(ebpf, m::AFTR_CONFIG).ok()?).ok()?;
    let cfg = c.get(&0, 0).ok()?;
    (cfg.pool_len != 0).then_some(cfg.hash_seed)
}
