//! The AFTR's side of the maps: the table sizes of each role, the kernel's view of an AFTR
//! configuration, and its configuration maps written so that they say exactly one
//! configuration, as a plan of writes applied all or nothing (a reload either takes or
//! leaves the old one), and checked against maps adopted with `--persist`.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData},
    Ebpf,
};
use dslite_common::maps::{self as m, AftrConfig};

use super::{
    maps::{Pinned, Prefix},
    ALWAYS_DENIED,
};
use crate::config::{AftrSettings, Cidr4};

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
        let [Some(deny), Some(hint)] = ebpf.maps_disjoint_mut([m::DENY_V4, m::DENY_HINT]) else {
            bail!("maps DENY_V4 and DENY_HINT missing from the object");
        };
        let mut deny: LpmTrie<&mut MapData, [u8; 4], u32> = LpmTrie::try_from(deny)?;
        let mut hint: Array<&mut MapData, u64> = Array::try_from(hint)?;
        // Adopted entries (the host's own addresses) stay until the first sync.
        let want = denied_destinations(s, &[]);
        super::maps::sync_v4_prefixes(&mut deny, &mut hint, &want, super::maps::Prune::Keep)?;
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
    let [mut f, mut l] = Pinned::new(pin).maps([m::ADDR_FREE, m::FREE_ADDRS])?;
    write_block_hints(&mut f, &mut l, s, hash_seed)
}

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

/// The same through the pins of a running dataplane (SIGHUP): the plan first, so that a
/// caller can still refuse it, then [`apply_aftr`].
pub fn plan_aftr(pin: &Path, s: &AftrSettings, hash_seed: u32) -> Result<AftrPlan> {
    let mut pinned = Pinned::new(pin).maps(AFTR_MAPS)?;
    AftrMaps::new(pinned.each_mut().map(Some))?.plan(s, hash_seed)
}

/// Apply a plan from [`plan_aftr`]: every write or none.
pub fn apply_aftr(pin: &Path, plan: &AftrPlan) -> Result<()> {
    let mut pinned = Pinned::new(pin).maps(AFTR_MAPS)?;
    AftrMaps::new(pinned.each_mut().map(Some))?.apply(plan)
}

/// The maps an AFTR's configuration lives in.
const AFTR_MAPS: [&str; 4] = [m::B4_ALLOW, m::POOL, m::POOL_INDEX, m::AFTR_CONFIG];

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
    // A pinned map made by another version with another layout (an entry's size changed)
    // cannot be adopted: say so, rather than let the verifier refuse the programs.
    for spec in dslite_common::map_list::MAPS {
        let Ok(data) = Pinned::new(pin).data(spec.name) else {
            continue;
        };
        let info = data.info()?;
        if (info.key_size(), info.value_size()) != (spec.key_size, spec.value_size) {
            bail!(
                "the pinned {} under {} has {}-byte keys and {}-byte values, this version's \
                 {} and {}: it was made by another version of dslite; stop that one without \
                 --persist (or remove the pins) and start this one clean (drops every mapping)",
                spec.name,
                pin.display(),
                info.key_size(),
                info.value_size(),
                spec.key_size,
                spec.value_size
            );
        }
    }
    for (name, want) in map_sizes(Some(s)) {
        let Ok(data) = Pinned::new(pin).data(name) else {
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
    let running: Array<MapData, AftrConfig> = Pinned::new(pin).array(m::AFTR_CONFIG)?;
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
        pool_lowest: s
            .pool
            .iter()
            .map(|a| u32::from(*a))
            .min()
            .unwrap_or(u32::MAX),
        pool_highest: s.pool.iter().map(|a| u32::from(*a)).max().unwrap_or(0),
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
                (m::LOCAL_HINT, 1),
            ]
        }
        None => dslite_common::map_list::MAPS
            .iter()
            .filter(|s| s.shrinks_on_b4())
            .map(|s| (s.name, 1))
            .collect(),
    }
}
