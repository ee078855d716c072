//! Loading the kernel object, pinning its maps, writing configuration maps, attaching XDP.
//!
//! The same functions serve the controller and the tests (BPF_PROG_TEST_RUN fixtures load
//! the object and configure it through here), so map setup exists once.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use dslite_common::{
    maps::{self as m, AftrConfig, B4Config},
    slow::SlowConfig,
    Counter,
};
use log::{info, warn};

use crate::config::{AftrSettings, Cidr4, XdpModeOpt};

/// The object built by `cargo xtask build-ebpf`, embedded at build time (may be empty).
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dslite.bpf.o"));

pub const PROG_B4: &str = "dslite_b4";
pub const PROG_AFTR: &str = "dslite_aftr";
/// XDP_PASS only: makes a veth accept redirected frames (see dslite-ebpf).
pub const PROG_PASS: &str = "dslite_pass";

/// Read the kernel object: `path` if given, else the embedded one.
pub fn object_bytes(path: Option<&Path>) -> Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p).with_context(|| format!("--bpf-object '{}'", p.display())),
        None if EMBEDDED.is_empty() => bail!(
            "this dslite was built without its kernel object: run `cargo xtask build-ebpf` and \
             rebuild, or pass --bpf-object FILE"
        ),
        None => Ok(EMBEDDED.to_vec()),
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Make sure `pin_path` will be on a bpf filesystem: mount bpffs on /sys/fs/bpf when the
/// path is below it and nothing is mounted there yet (idempotent); any other location must
/// already be on a bpffs.
pub fn ensure_bpffs(pin_path: &Path) -> Result<()> {
    let existing = pin_path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !pin_path.starts_with(root) {
        bail!(
            "--pin-path {} is not on a bpf filesystem (mount -t bpf bpf DIR)",
            pin_path.display()
        );
    }
    // SAFETY: plain mount(2) call with constant NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // Mounting is the one thing here that needs CAP_SYS_ADMIN; a unit that mounts bpffs
        // beforehand runs without it (contrib/systemd).
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            ": mount it beforehand (mount -t bpf bpf /sys/fs/bpf), or grant CAP_SYS_ADMIN"
        } else {
            ""
        };
        bail!("mounting bpffs on /sys/fs/bpf: {e}{hint}");
    }
    info!("mounted bpffs on /sys/fs/bpf");
    Ok(())
}

/// Load the object with every map pinned under `pin_path`.
///
/// Without `persist`, pins left by an earlier run are removed first (detaching any XDP link
/// pinned there), so a start begins from a known state. With `persist`, they are adopted:
/// aya reuses a pinned map of the same name, so the mappings, blocks and the NAT event ring
/// of the previous controller carry on (checklist: restart without loss).
pub fn load(
    object: &[u8],
    pin_path: &Path,
    sizes: &[(&'static str, u32)],
    persist: bool,
) -> Result<Ebpf> {
    ensure_bpffs(pin_path)?;
    if persist && pin_path.join(m::STATS).exists() {
        info!(
            "adopting the pinned maps under {} (--persist)",
            pin_path.display()
        );
    } else if pin_path.exists() {
        let stale: Vec<PathBuf> = std::fs::read_dir(pin_path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        if !stale.is_empty() {
            warn!(
                "removing {} stale pinned maps under {}",
                stale.len(),
                pin_path.display()
            );
            for p in stale {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    std::fs::create_dir_all(pin_path)
        .with_context(|| format!("creating pin path {}", pin_path.display()))?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_path);
    for (name, size) in sizes {
        loader.map_max_entries(name, *size);
    }
    loader.load(object).context("loading the XDP programs")
}

/// Remove the pinned maps (clean shutdown).
pub fn unpin(pin_path: &Path) {
    if let Ok(dir) = std::fs::read_dir(pin_path) {
        for e in dir.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(pin_path);
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the object"))
}

/// Write the AFTR's configuration maps (pool, pool index, allowed B4 prefixes, config) so
/// that they say exactly `s`: on maps adopted from an earlier run (`--persist`), what `s` no
/// longer names is deleted. All or nothing, as [`AftrMaps::apply`].
pub fn configure_aftr(ebpf: &mut Ebpf, s: &AftrSettings, hash_seed: u32) -> Result<()> {
    {
        let mut maps = AftrMaps::new(ebpf.maps_disjoint_mut(AFTR_MAPS))?;
        let plan = maps.plan(s, hash_seed)?;
        maps.apply(&plan)?;
    }
    {
        let mut deny: LpmTrie<&mut MapData, [u8; 4], u32> =
            LpmTrie::try_from(map_mut(ebpf, m::DENY_V4)?)?;
        for p in denied_destinations(s, &[]) {
            deny.insert(&Key::new(p.len as u32, p.network()), 1, 0)?;
        }
    }
    let [Some(free), Some(list)] = ebpf.maps_disjoint_mut([m::ADDR_FREE, m::FREE_ADDRS]) else {
        bail!("maps ADDR_FREE and FREE_ADDRS missing from the object");
    };
    write_block_hints(free, list, s, hash_seed)
}

/// The block search's hints: every block of every address free, until the sweep (within a
/// second) publishes what it finds.
fn write_block_hints(
    free: &mut aya::maps::Map,
    list: &mut aya::maps::Map,
    s: &AftrSettings,
    hash_seed: u32,
) -> Result<()> {
    let cfg = aftr_config(s, hash_seed);
    let mut free: Array<&mut MapData, u32> = Array::try_from(free)?;
    for i in 0..s.pool.len() as u32 {
        free.set(i, cfg.blocks_per_addr as u32, 0)?;
    }
    let mut list: Array<&mut MapData, u32> = Array::try_from(list)?;
    let n = (s.pool.len() as u32).min(m::FREE_ADDRS_LEN);
    for i in 0..n {
        list.set(1 + i, i, 0)?;
    }
    list.set(0, n, 0)?;
    Ok(())
}

/// [`write_block_hints`] through the pins of a running (or adopted) dataplane.
pub fn reset_block_hints(pin: &Path, s: &AftrSettings, hash_seed: u32) -> Result<()> {
    let [mut f, mut l] = open_pinned(pin, [m::ADDR_FREE, m::FREE_ADDRS])?;
    write_block_hints(&mut f, &mut l, s, hash_seed)
}

/// Destinations a subscriber never reaches through the AFTR, whatever the configuration:
/// "this network", loopback, the IETF protocol assignments block (192.0.0.1, the AFTR's
/// echo, is answered before this list is consulted), multicast, reserved and limited
/// broadcast (RFC 6890; RFC 6333 §5.7).
pub const ALWAYS_DENIED: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "192.0.0.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
];

/// Everything that goes into DENY_V4: [`ALWAYS_DENIED`], `--deny-destination`, and the AFTR
/// host's own IPv4 addresses (`own`), except pool addresses (hairpinning reaches those).
pub fn denied_destinations(s: &AftrSettings, own: &[Ipv4Addr]) -> Vec<Cidr4> {
    let mut v: Vec<Cidr4> = ALWAYS_DENIED
        .iter()
        .map(|p| p.parse::<Cidr4>().expect("constant prefixes parse"))
        .chain(s.deny_destinations.iter().copied())
        .collect();
    for a in own.iter().filter(|a| !s.pool.contains(a)) {
        v.push(Cidr4 {
            addr: a.octets(),
            len: 32,
        });
    }
    v.sort_by_key(|p| (p.network(), p.len));
    v.dedup();
    v
}

/// Make DENY_V4 hold exactly `want` (a reload, or the host's addresses changed).
pub fn sync_denied(pin: &Path, want: &[Cidr4]) -> Result<()> {
    let data = MapData::from_pin(pin.join(m::DENY_V4)).context("opening pinned DENY_V4")?;
    let mut deny: LpmTrie<MapData, [u8; 4], u32> =
        LpmTrie::try_from(aya::maps::Map::LpmTrie(data))?;
    let have: Vec<Key<[u8; 4]>> = deny.keys().filter_map(|k| k.ok()).collect();
    for k in have {
        let c = Cidr4 {
            addr: k.data(),
            len: k.prefix_len() as u8,
        };
        if !want.contains(&c) {
            let _ = deny.remove(&k);
        }
    }
    for p in want {
        deny.insert(&Key::new(p.len as u32, p.network()), 1, 0)?;
    }
    Ok(())
}

/// Deny the AFTR host's own IPv6 addresses as B4 sources: /128 entries in B4_ALLOW with
/// [`m::B4_DENY`], which the longest match prefers over any allowing prefix. Entries for
/// addresses the host no longer has are removed. `prefixes` are the allowed prefixes (never
/// removed here).
pub fn sync_local_b4_denies(
    pin: &Path,
    own: &[std::net::Ipv6Addr],
    prefixes: &[crate::config::Cidr6],
) -> Result<()> {
    let data = MapData::from_pin(pin.join(m::B4_ALLOW)).context("opening pinned B4_ALLOW")?;
    let mut allow: LpmTrie<MapData, [u8; 16], u32> =
        LpmTrie::try_from(aya::maps::Map::LpmTrie(data))?;
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

/// The same through the pins of a running dataplane (SIGHUP): the plan first, so that a
/// caller can still refuse it, then [`apply_aftr`].
pub fn plan_aftr(pin: &Path, s: &AftrSettings, hash_seed: u32) -> Result<AftrPlan> {
    let mut pinned = open_pinned(pin, AFTR_MAPS)?;
    AftrMaps::new(pinned.each_mut().map(Some))?.plan(s, hash_seed)
}

/// Apply a plan from [`plan_aftr`]: every write or none.
pub fn apply_aftr(pin: &Path, plan: &AftrPlan) -> Result<()> {
    let mut pinned = open_pinned(pin, AFTR_MAPS)?;
    AftrMaps::new(pinned.each_mut().map(Some))?.apply(plan)
}

/// The maps an AFTR's configuration lives in.
const AFTR_MAPS: [&str; 4] = [m::B4_ALLOW, m::POOL, m::POOL_INDEX, m::AFTR_CONFIG];

fn open_pinned<const N: usize>(pin: &Path, names: [&str; N]) -> Result<[aya::maps::Map; N]> {
    let mut out = Vec::with_capacity(N);
    for n in names {
        let data = MapData::from_pin(pin.join(n)).with_context(|| format!("opening pinned {n}"))?;
        out.push(aya::maps::Map::from_map_data(data)?);
    }
    out.try_into()
        .map_err(|_| anyhow::anyhow!("opening {N} maps"))
}

/// An LPM key as (prefix length, network).
type Prefix<const N: usize> = (u32, [u8; N]);

/// Every write that makes the AFTR's configuration maps say one configuration, computed from
/// what they hold now, with what they held, to undo.
#[derive(Clone, Debug, Default)]
pub struct AftrPlan {
    allow_add: Vec<Prefix<16>>,
    allow_del: Vec<Prefix<16>>,
    /// (index, old, new) for each POOL entry that changes.
    pool: Vec<(u32, [u8; 4], [u8; 4])>,
    /// (address, old index, new index) for each POOL_INDEX entry added or changed.
    index_set: Vec<([u8; 4], Option<u32>, u32)>,
    /// (address, old index) for each POOL_INDEX entry deleted.
    index_del: Vec<([u8; 4], u32)>,
    /// Delete before adding: the adds alone would not fit next to what goes.
    allow_del_first: bool,
    index_del_first: bool,
    config: (AftrConfig, AftrConfig),
}

impl AftrPlan {
    /// What changes, for the log: `B4_ALLOW +1 -2`, `POOL_INDEX +1 -1`, ...
    pub fn describe(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (name, add, del) in [
            (m::B4_ALLOW, self.allow_add.len(), self.allow_del.len()),
            (m::POOL_INDEX, self.index_set.len(), self.index_del.len()),
            (m::POOL, self.pool.len(), 0),
        ] {
            if add + del > 0 {
                v.push(format!("{name} +{add} -{del}"));
            }
        }
        if self.config.0 != self.config.1 {
            v.push(m::AFTR_CONFIG.to_string());
        }
        v
    }
}

/// One write of a plan, and how to undo it.
#[derive(Clone, Copy, Debug)]
enum Write {
    AllowInsert(Prefix<16>),
    AllowRemove(Prefix<16>),
    Pool(u32, [u8; 4]),
    IndexInsert([u8; 4], u32),
    IndexRemove([u8; 4]),
    Config(AftrConfig),
}

/// The AFTR's configuration maps, borrowed from a loaded object or opened through pins.
pub struct AftrMaps<'a> {
    allow: LpmTrie<&'a mut MapData, [u8; 16], u32>,
    pool: Array<&'a mut MapData, [u8; 4]>,
    index: HashMap<&'a mut MapData, [u8; 4], u32>,
    config: Array<&'a mut MapData, AftrConfig>,
}

fn max_entries(m: &MapData) -> Result<usize> {
    Ok(m.info()?.max_entries() as usize)
}

impl<'a> AftrMaps<'a> {
    fn new(maps: [Option<&'a mut aya::maps::Map>; 4]) -> Result<Self> {
        let [a, p, i, c] = maps;
        let need = |m: Option<&'a mut aya::maps::Map>, n: &str| {
            m.with_context(|| format!("map {n} missing from the object"))
        };
        Ok(AftrMaps {
            allow: LpmTrie::try_from(need(a, m::B4_ALLOW)?)?,
            pool: Array::try_from(need(p, m::POOL)?)?,
            index: HashMap::try_from(need(i, m::POOL_INDEX)?)?,
            config: Array::try_from(need(c, m::AFTR_CONFIG)?)?,
        })
    }

    /// Compute every write for `s` and check that it fits the maps, touching nothing.
    pub fn plan(&mut self, s: &AftrSettings, hash_seed: u32) -> Result<AftrPlan> {
        use aya::maps::IterableMap as _;
        let mut plan = AftrPlan::default();
        // B4_ALLOW: exactly the configured prefixes.
        let mut want: Vec<Prefix<16>> = Vec::new();
        for p in &s.b4_prefixes {
            let k = (p.len as u32, p.network());
            if !want.contains(&k) {
                want.push(k);
            }
        }
        // The denying /128s of the host's own addresses are kept by `sync_local_b4_denies`.
        let have: Vec<Prefix<16>> = self
            .allow
            .iter()
            .filter(|e| !matches!(e, Ok((_, v)) if *v == m::B4_DENY))
            .map(|e| e.map(|(k, _)| (k.prefix_len(), k.data())))
            .collect::<Result<_, _>>()
            .context("reading B4_ALLOW")?;
        plan.allow_add = want.iter().filter(|k| !have.contains(k)).copied().collect();
        plan.allow_del = have.iter().filter(|k| !want.contains(k)).copied().collect();
        let cap = max_entries(self.allow.map())?;
        if want.len() > cap {
            bail!(
                "--b4-prefix: {} prefixes, but B4_ALLOW holds at most {cap}",
                want.len()
            );
        }
        plan.allow_del_first = have.len() + plan.allow_add.len() > cap;

        // POOL and POOL_INDEX: the pool in order, and nothing else recognised inbound.
        let cap = max_entries(self.pool.map())?;
        if s.pool.len() > cap {
            bail!(
                "--pool: {} addresses, but the POOL map holds {cap} (it was sized when its \
                 dataplane started; a larger pool needs a start without --persist, which drops \
                 every mapping)",
                s.pool.len()
            );
        }
        for (i, a) in s.pool.iter().enumerate() {
            let old = self.pool.get(&(i as u32), 0)?;
            if old != a.octets() {
                plan.pool.push((i as u32, old, a.octets()));
            }
        }
        let have: Vec<([u8; 4], u32)> = self
            .index
            .iter()
            .collect::<Result<_, _>>()
            .context("reading POOL_INDEX")?;
        // Hashed, both ways: a pool has up to 65536 addresses.
        let have_at: std::collections::HashMap<[u8; 4], u32> = have.iter().copied().collect();
        let in_pool: std::collections::HashSet<[u8; 4]> =
            s.pool.iter().map(|a| a.octets()).collect();
        for (i, a) in s.pool.iter().enumerate() {
            let old = have_at.get(&a.octets()).copied();
            if old != Some(i as u32) {
                plan.index_set.push((a.octets(), old, i as u32));
            }
        }
        plan.index_del = have
            .iter()
            .filter(|(k, _)| !in_pool.contains(k))
            .copied()
            .collect();
        let cap = max_entries(self.index.map())?;
        if s.pool.len() > cap {
            bail!(
                "--pool: {} addresses, but POOL_INDEX holds {cap} (a larger pool needs a start \
                 without --persist)",
                s.pool.len()
            );
        }
        let adds = plan
            .index_set
            .iter()
            .filter(|(_, o, _)| o.is_none())
            .count();
        plan.index_del_first = have.len() + adds > cap;

        plan.config = (self.config.get(&0, 0)?, aftr_config(s, hash_seed));
        Ok(plan)
    }

    fn write(&mut self, w: Write) -> Result<()> {
        let key = |(len, net): Prefix<16>| Key::new(len, net);
        match w {
            Write::AllowInsert(p) => self.allow.insert(&key(p), m::B4_PERMIT, 0)?,
            Write::AllowRemove(p) => self.allow.remove(&key(p))?,
            Write::Pool(i, a) => self.pool.set(i, a, 0)?,
            Write::IndexInsert(a, i) => self.index.insert(a, i, 0)?,
            Write::IndexRemove(a) => self.index.remove(&a)?,
            Write::Config(c) => self.config.set(0, c, 0)?,
        }
        Ok(())
    }

    /// Apply `plan` in an order that keeps traffic flowing (new prefixes and addresses first,
    /// the config, then deletions). A failed write undoes every write before it, so the maps
    /// hold either the new configuration or the old one.
    pub fn apply(&mut self, plan: &AftrPlan) -> Result<()> {
        let mut steps: Vec<(Write, Write)> = Vec::new();
        let allow_add = plan
            .allow_add
            .iter()
            .map(|p| (Write::AllowInsert(*p), Write::AllowRemove(*p)));
        let allow_del = plan
            .allow_del
            .iter()
            .map(|p| (Write::AllowRemove(*p), Write::AllowInsert(*p)));
        if plan.allow_del_first {
            steps.extend(allow_del.clone());
        }
        steps.extend(allow_add);
        let index_del = plan
            .index_del
            .iter()
            .map(|(a, old)| (Write::IndexRemove(*a), Write::IndexInsert(*a, *old)));
        if plan.index_del_first {
            steps.extend(index_del.clone());
        }
        steps.extend(plan.index_set.iter().map(|(a, old, new)| {
            let undo = match old {
                Some(o) => Write::IndexInsert(*a, *o),
                None => Write::IndexRemove(*a),
            };
            (Write::IndexInsert(*a, *new), undo)
        }));
        steps.extend(
            plan.pool
                .iter()
                .map(|(i, old, new)| (Write::Pool(*i, *new), Write::Pool(*i, *old))),
        );
        steps.push((Write::Config(plan.config.1), Write::Config(plan.config.0)));
        if !plan.index_del_first {
            steps.extend(index_del);
        }
        if !plan.allow_del_first {
            steps.extend(allow_del);
        }
        for (n, (w, _)) in steps.iter().enumerate() {
            if let Err(e) = self.write(*w) {
                let mut undo_failed = None;
                for (_, u) in steps[..n].iter().rev() {
                    if let Err(u) = self.write(*u) {
                        undo_failed.get_or_insert(u);
                    }
                }
                return Err(match undo_failed {
                    None => e.context(format!(
                        "writing the configuration maps ({w:?}); the earlier writes were undone"
                    )),
                    Some(u) => e.context(format!(
                        "writing the configuration maps ({w:?}), and undoing the earlier writes \
                         failed too ({u:#}): restart the controller"
                    )),
                });
            }
        }
        Ok(())
    }
}

/// Refuse to adopt (`--persist`) pinned maps that `s` does not fit: a table smaller than the
/// configuration asks for (table sizes are fixed when a map is created), or a port layout
/// other than the one its blocks and mappings were made with.
pub fn check_adopted_aftr(pin: &Path, s: &AftrSettings, hash_seed: u32) -> Result<()> {
    let setting = |name: &str| match name {
        m::NAT_OUT | m::NAT_IN => "--max-mappings",
        m::POOL | m::POOL_INDEX => "--pool",
        m::BLOCKS | m::SW_BLOCKS | m::SOFTWIRES => "--pool, --port-range and --block-size",
        m::PEERS => "the filtering modes",
        _ => "the configuration",
    };
    for (name, want) in map_sizes(Some(s)) {
        let Ok(data) = MapData::from_pin(pin.join(name)) else {
            continue;
        };
        let have = max_entries(&data)?;
        if (want as usize) > have {
            bail!(
                "{} needs {want} entries in the pinned {name}, which holds {have}: its size was \
                 fixed when the dataplane under {} started; start without --persist to resize \
                 it (drops every mapping), or keep the old values",
                setting(name),
                pin.display()
            );
        }
    }
    let data = MapData::from_pin(pin.join(m::AFTR_CONFIG)).context("opening pinned AFTR_CONFIG")?;
    let running: Array<MapData, AftrConfig> = Array::try_from(aya::maps::Map::Array(data))?;
    let old = running.get(&0, 0)?;
    let new = aftr_config(s, hash_seed);
    if old.pool_len != 0
        && (old.port_lo, old.port_hi, old.block_size) != (new.port_lo, new.port_hi, new.block_size)
    {
        bail!(
            "--port-range {}-{} with --block-size {}: the adopted dataplane's blocks and mappings \
             are laid out for {}-{} in blocks of {}; start without --persist to change it (drops \
             every mapping), or keep the old values",
            new.port_lo,
            new.port_hi,
            new.block_size,
            old.port_lo,
            old.port_hi,
            old.block_size
        );
    }
    Ok(())
}

/// Change the running B4's configuration in place (a new WAN address or AFTR).
pub fn update_b4_config(pin: &Path, f: impl FnOnce(&mut B4Config)) -> Result<()> {
    let data = MapData::from_pin(pin.join(m::B4_CONFIG)).context("opening pinned B4_CONFIG")?;
    let mut c: Array<MapData, B4Config> = Array::try_from(aya::maps::Map::Array(data))?;
    let mut cfg = c.get(&0, 0)?;
    f(&mut cfg);
    c.set(0, cfg, 0)?;
    Ok(())
}

/// The kernel's view of an AFTR configuration.
pub fn aftr_config(s: &AftrSettings, hash_seed: u32) -> AftrConfig {
    let span = s.ports.hi as u32 - s.ports.lo as u32 + 1;
    AftrConfig {
        aftr_addr: s.address.octets(),
        port_lo: s.ports.lo,
        port_hi: s.ports.hi,
        pool_len: s.pool.len() as u32,
        hash_seed,
        hop_limit: dslite_common::proto::DEFAULT_HOP_LIMIT,
        max_blocks: s.max_blocks,
        block_size: s.block_size,
        blocks_per_addr: (span / s.block_size as u32) as u16,
        flags: [
            (s.inbound_refresh, m::AFTR_INBOUND_REFRESH),
            (s.log_sessions, m::AFTR_LOG_SESSIONS),
            (s.log_destinations, m::AFTR_LOG_DESTINATIONS),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |f, (_, bit)| f | bit),
        max_sessions: s.limits.max_sessions,
        new_per_sec: s.limits.new_mapping_rate,
        icmp_per_sec: s.limits.icmp_rate,
        icmp_code: s.limits.icmp_code,
        filter_modes: dslite_common::nat::filter_modes(
            s.filtering[0].code(),
            s.filtering[1].code(),
            s.filtering[2].code(),
        ),
        mss: s.mss,
        v4_mtu: s.v4_mtu,
        max_peers: s.max_peers,
        subscriber_mask: dslite_common::nat::subscriber_mask(s.subscriber_prefix_len),
        tunnel_ifindex: s.tunnel_ifindex,
        internet_ifindex: s.internet_ifindex,
        frag_per_sec: s.fragment_rate,
        block_strides: dslite_common::nat::coprime_strides((span / s.block_size as u32) as u16),
    }
}

/// Map sizes for a role: an AFTR sizes its NAT tables from `--max-mappings` and its block
/// tables from the pool; a B4 shrinks every AFTR-only table to one entry (hash maps are
/// preallocated, so unused capacity is memory).
pub fn map_sizes(aftr: Option<&AftrSettings>) -> Vec<(&'static str, u32)> {
    match aftr {
        Some(s) => {
            let cfg = aftr_config(s, 0);
            let blocks = (s.pool.len() as u32 * cfg.blocks_per_addr as u32).max(1);
            vec![
                (m::NAT_OUT, s.max_mappings),
                (m::NAT_IN, s.max_mappings),
                (m::BLOCKS, blocks),
                (m::SW_BLOCKS, blocks),
                // One entry per softwire holding a block (or at its limits).
                (m::SOFTWIRES, blocks.max(1024)),
                // Remote endpoints of mappings under ADF/APDF: not preallocated, so sized for
                // any mode (a reload may switch to one) at no cost until used.
                (m::PEERS, s.max_mappings.saturating_mul(2)),
                (m::POOL, s.pool.len() as u32),
                (m::POOL_INDEX, s.pool.len() as u32),
                (m::ADDR_FREE, s.pool.len() as u32),
                (m::LOCAL_V4, 1),
            ]
        }
        None => dslite_common::map_list::MAPS
            .iter()
            .filter(|s| s.shrinks_on_b4())
            .map(|s| (s.name, 1))
            .collect(),
    }
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
        let mut local: LpmTrie<&mut MapData, [u8; 4], u32> =
            LpmTrie::try_from(map_mut(ebpf, m::LOCAL_V4)?)?;
        let want: Vec<Prefix<4>> = B4_ALWAYS_LOCAL
            .iter()
            .map(|s| s.parse::<Cidr4>().unwrap())
            .chain(lan_prefixes.iter().copied())
            .map(|p| (p.len as u32, p.network()))
            .collect();
        for (len, net) in &want {
            local.insert(&Key::new(*len, *net), 1, 0)?;
        }
        // Adopted maps (--persist) may hold LAN prefixes this LAN no longer has.
        let stale: Vec<Key<[u8; 4]>> = local
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            local.remove(&k)?;
        }
    }
    let mut c: Array<&mut MapData, B4Config> = Array::try_from(map_mut(ebpf, m::B4_CONFIG)?)?;
    c.set(0, B4Config { enabled: 1, ..cfg }, 0)?;
    Ok(())
}

/// Load program `name` into the kernel (verifier) without attaching it.
pub fn load_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?;
    prog.load().with_context(|| format!("verifying {name}"))?;
    Ok(prog)
}

/// Where the XDP link of `ifname` is pinned with `--persist`.
pub fn link_pin(pin_path: &Path, ifname: &str) -> PathBuf {
    pin_path.join(format!("link-{ifname}"))
}

/// Attach program `name` to every interface index (each once). With `persist`, each link is
/// pinned under the pin path, so XDP stays attached when the controller exits or is killed;
/// an interface whose link is already pinned there keeps its running program (adopted).
pub fn attach(
    ebpf: &mut Ebpf,
    name: &str,
    ifaces: &[(String, u32)],
    mode: XdpModeOpt,
    persist: Option<&Path>,
) -> Result<()> {
    let prog = load_program(ebpf, name)?;
    let mut done = Vec::new();
    for (ifname, index) in ifaces {
        if done.contains(index) {
            continue;
        }
        if let Some(pin) = persist {
            if link_pin(pin, ifname).exists() {
                info!("{name} on {ifname}: adopted the running XDP link (--persist)");
                done.push(*index);
                continue;
            }
        }
        let r = match mode {
            XdpModeOpt::Native => prog.attach_to_if_index(*index, XdpMode::Driver),
            XdpModeOpt::Skb => prog.attach_to_if_index(*index, XdpMode::Skb),
            XdpModeOpt::Auto => prog
                .attach_to_if_index(*index, XdpMode::Driver)
                .or_else(|e| {
                    warn!(
                        "native XDP on {ifname} failed ({e}); falling back to generic (skb) mode"
                    );
                    prog.attach_to_if_index(*index, XdpMode::Skb)
                }),
        };
        let id = r.with_context(|| format!("attaching {name} to {ifname}"))?;
        if let Some(pin) = persist {
            let link = prog.take_link(id)?;
            let fd: aya::programs::links::FdLink = link
                .try_into()
                .with_context(|| format!("{ifname}: --persist needs bpf_link XDP (Linux 5.9+)"))?;
            fd.pin(link_pin(pin, ifname))
                .with_context(|| format!("pinning the XDP link of {ifname}"))?;
        }
        info!("{name} attached to {ifname} (ifindex {index})");
        done.push(*index);
    }
    Ok(())
}

/// Attach the (already loaded) program `name` to the slow path's TAP in generic mode: the
/// frames the controller writes back run through the same code as the wire's.
pub fn attach_tap(ebpf: &mut Ebpf, name: &str, ifname: &str, index: u32) -> Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?;
    prog.attach_to_if_index(index, XdpMode::Skb)
        .with_context(|| format!("attaching {name} to the slow path's {ifname}"))?;
    info!("{name} attached to the slow path's {ifname} (ifindex {index}, generic mode)");
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

/// Write controller-side counters into STATS (CPU 0's slot; the others stay 0), so that
/// `dslite stats` shows one set of counters.
pub fn publish_counters(pin_path: &Path, values: &[(Counter, u64)]) -> Result<()> {
    let map = MapData::from_pin(pin_path.join(m::STATS))?;
    let mut stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    for (c, v) in values {
        let mut per_cpu = vec![0u64; cpus];
        per_cpu[0] = *v;
        stats.set(*c as u32, PerCpuValues::try_from(per_cpu)?, 0)?;
    }
    Ok(())
}

/// Invalidate the XDP next-hop cache (`NH_GEN` + 1), or switch it off (`enable` false).
pub fn bump_next_hops(pin: &Path, enable: bool) -> Result<()> {
    let data = MapData::from_pin(pin.join(m::NH_GEN)).context("opening pinned NH_GEN")?;
    let mut gen: Array<MapData, u32> = Array::try_from(aya::maps::Map::Array(data))?;
    let next = if enable {
        gen.get(&0, 0)?.wrapping_add(1).max(1)
    } else {
        0
    };
    gen.set(0, next, 0)?;
    Ok(())
}

/// The hash seed of a configured (adopted) AFTR dataplane, if there is one.
pub fn running_seed(ebpf: &mut Ebpf) -> Option<u32> {
    let c: Array<&mut MapData, AftrConfig> =
        Array::try_from(map_mut(ebpf, m::AFTR_CONFIG).ok()?).ok()?;
    let cfg = c.get(&0, 0).ok()?;
    (cfg.pool_len != 0).then_some(cfg.hash_seed)
}

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

/// Format helper used in logs.
pub fn pool_summary(pool: &[Ipv4Addr]) -> String {
    match pool {
        [] => "empty".into(),
        [a] => a.to_string(),
        [a, .., b] => format!("{a} .. {b} ({} addresses)", pool.len()),
    }
}
