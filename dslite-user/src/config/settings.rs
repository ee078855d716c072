//! Validation: options become resolved settings, or a one-line error that names the bad
//! value (exit code 2).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use super::{
    options::{AftrOptions, B4Options, CommonOptions},
    timeouts::Timeouts,
    values::{AftrSource, Cidr4, Cidr6, Filtering, HookOpt, MssClamp, PortRange, XdpModeOpt},
};

/// Slow path settings (from the command line or TOML).
#[derive(Clone, Debug)]
pub struct SlowSettings {
    pub tap_name: String,
    /// Largest outer IPv6 packet on a softwire (None: the route MTU decides).
    pub tunnel_mtu: Option<u32>,
    pub reassembly_timeout: Duration,
    /// Bytes the kernel's IPv6 reassembly, and our IPv4 reassembly, may each hold (and one
    /// IPv4 chain per KiB of it, [`SlowSettings::chains_for`]).
    pub reassembly_memory: u32,
}

pub const DEFAULT_TAP: &str = "dslite0";
pub const DEFAULT_REASSEMBLY_SECS: u64 = 5;
pub const DEFAULT_REASSEMBLY_MEMORY: u32 = 4 << 20;

impl SlowSettings {
    /// IPv4 chains held at once for `memory` bytes: one per KiB, so that a flood of
    /// one-fragment chains cannot pin all the memory in bookkeeping.
    pub fn chains_for(memory: u32) -> u32 {
        (memory >> 10).max(64)
    }
}

impl Default for SlowSettings {
    fn default() -> SlowSettings {
        SlowSettings {
            tap_name: DEFAULT_TAP.into(),
            tunnel_mtu: None,
            reassembly_timeout: Duration::from_secs(DEFAULT_REASSEMBLY_SECS),
            reassembly_memory: DEFAULT_REASSEMBLY_MEMORY,
        }
    }
}

/// Records a NAT log sink's queue holds by default while its receiver does not keep up.
pub const DEFAULT_QUEUE: usize = 16384;
/// Bounds of `--nat-log-queue`.
pub const QUEUE_RANGE: std::ops::RangeInclusive<usize> = 16..=1 << 20;

/// Where NAT log records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sinks {
    pub file: Option<PathBuf>,
    /// `udp:HOST:PORT` or `unix:PATH`.
    pub syslog: Option<String>,
    pub ipfix: Option<SocketAddr>,
    /// Records each sink's queue holds (`--nat-log-queue`).
    pub queue: usize,
}

impl Default for Sinks {
    fn default() -> Sinks {
        Sinks {
            file: None,
            syslog: None,
            ipfix: None,
            queue: DEFAULT_QUEUE,
        }
    }
}

impl CommonOptions {
    /// The hook, checked against `--xdp-mode`: an XDP attach mode means nothing where tc
    /// runs everywhere.
    pub(super) fn hook(&self) -> Result<HookOpt> {
        let hook = self.hook.unwrap_or_default();
        match (hook, self.xdp_mode) {
            (HookOpt::Tc, Some(m @ (XdpModeOpt::Native | XdpModeOpt::Skb))) => bail!(
                "--xdp-mode {} applies only where the hook is XDP, and --hook tc runs tc on \
                 every interface: drop --xdp-mode, or use --hook xdp or auto",
                if m == XdpModeOpt::Native {
                    "native"
                } else {
                    "skb"
                }
            ),
            _ => Ok(hook),
        }
    }

    /// The slow path's settings, checked.
    pub(super) fn slow(&self) -> Result<SlowSettings> {
        if let Some(m) = self.tunnel_mtu {
            if !(1280..=65535).contains(&m) {
                bail!("--tunnel-mtu {m} is outside 1280-65535 (IPv6's minimum MTU is 1280)");
            }
        }
        let timeout = self.reassembly_timeout.unwrap_or(DEFAULT_REASSEMBLY_SECS);
        if !(1..=60).contains(&timeout) {
            bail!("--reassembly-timeout {timeout} is outside 1-60 seconds");
        }
        let memory = self.reassembly_memory.unwrap_or(DEFAULT_REASSEMBLY_MEMORY);
        if !((64 << 10)..=(1 << 30)).contains(&memory) {
            bail!("--reassembly-memory {memory} is outside 65536-1073741824 bytes");
        }
        let tap_name = self
            .slow_iface
            .clone()
            .unwrap_or_else(|| DEFAULT_TAP.into());
        if tap_name.is_empty() || tap_name.len() > 15 || tap_name.contains(['/', ' ']) {
            bail!("--slow-iface '{tap_name}' is not a valid interface name (1-15 bytes)");
        }
        Ok(SlowSettings {
            tap_name,
            tunnel_mtu: self.tunnel_mtu,
            reassembly_timeout: std::time::Duration::from_secs(timeout),
            reassembly_memory: memory,
        })
    }
}

/// One struct of every field, and its two halves as types of their own, from one list:
/// `split` and `join` move the fields between them, so a field is in exactly one half.
macro_rules! halves {
    (
        $(#[$m:meta])* pub struct $all:ident;
        $(#[$sm:meta])* startup $startup:ident {
            $($(#[$sfm:meta])* $sf:ident: $st:ty,)*
        }
        $(#[$lm:meta])* live $live:ident {
            $($(#[$lfm:meta])* $lf:ident: $lt:ty,)*
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Debug)]
        pub struct $all {
            $($(#[$sfm])* pub $sf: $st,)*
            $($(#[$lfm])* pub $lf: $lt,)*
        }

        $(#[$sm])*
        #[derive(Clone, Debug)]
        pub struct $startup {
            $($(#[$sfm])* pub $sf: $st,)*
        }

        $(#[$lm])*
        #[derive(Clone, Debug)]
        pub struct $live {
            $($(#[$lfm])* pub $lf: $lt,)*
        }

        impl $all {
            pub fn split(self) -> ($startup, $live) {
                ($startup { $($sf: self.$sf,)* }, $live { $($lf: self.$lf,)* })
            }

            pub fn join(startup: $startup, live: $live) -> $all {
                $all { $($sf: startup.$sf,)* $($lf: live.$lf,)* }
            }
        }
    };
}

halves! {
    /// A fully validated AFTR configuration: its [`AftrStartup`] and [`AftrLive`] halves.
    pub struct AftrSettings;

    /// What only a restart changes: the interfaces, the address and pool, the port layout
    /// and table sizes, the slow path, where maps are pinned, the attach mode.
    startup AftrStartup {
        tunnel_iface: String,
        internet_iface: String,
        address: Ipv6Addr,
        /// Every public address, in pool order.
        pool: Vec<Ipv4Addr>,
        ports: PortRange,
        block_size: u16,
        max_blocks: u8,
        max_mappings: u32,
        /// RFC 7785 §3: the subscriber is the B4 address masked to this length.
        subscriber_prefix_len: u8,
        /// The interfaces' indexes (resolved at start): softwire packets and IPv4 to the pool
        /// are accepted only where they belong.
        tunnel_ifindex: u32,
        internet_ifindex: u32,
        slow: SlowSettings,
        metrics: Option<SocketAddr>,
        persist: bool,
        nexthop_cache: bool,
        /// MTU of the internet interface (resolved at start; 0: DF=1 packets too big for it
        /// are dropped without an ICMP 3/4).
        v4_mtu: u16,
        pin_path: PathBuf,
        hook: HookOpt,
        xdp_mode: XdpModeOpt,
        bpf_object: Option<PathBuf>,
    }

    /// What a reload (SIGHUP) applies while running: limits, timeouts, filtering, B4
    /// prefixes, MSS clamping, NAT log settings.
    live AftrLive {
        b4_prefixes: Vec<Cidr6>,
        timeouts: Timeouts,
        inbound_refresh: bool,
        /// `--deny-destination`, besides the ranges the dataplane always denies
        /// (its `ALWAYS_DENIED`).
        deny_destinations: Vec<Cidr4>,
        max_peers: u16,
        fragment_rate: u32,
        limits: Limits,
        /// Filtering per protocol: UDP, TCP, ICMP.
        filtering: [Filtering; 3],
        mss_clamp: MssClamp,
        /// The MSS programmed into the dataplane (resolved from `mss_clamp` at start; 0: off).
        mss: u16,
        natlog: Sinks,
        log_sessions: bool,
        log_destinations: bool,
    }
}

/// Default `--max-peers`: remotes one mapping keeps under ADF/APDF.
pub const DEFAULT_MAX_PEERS: u16 = 64;
/// Default `--fragment-rate` per subscriber.
pub const DEFAULT_FRAGMENT_RATE: u32 = 1000;

/// Per-softwire limits and the ICMP feedback for refused mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions: u32,
    pub new_mapping_rate: u32,
    pub icmp_rate: u32,
    pub icmp_code: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 0,
            new_mapping_rate: 0,
            icmp_rate: 100,
            icmp_code: 13,
        }
    }
}

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/dslite";

/// Expand pool prefixes into addresses, rejecting overlaps (RFC 6888 REQ-3).
pub fn expand_pool(pool: &[Cidr4]) -> Result<Vec<Ipv4Addr>> {
    for (i, a) in pool.iter().enumerate() {
        for b in &pool[i + 1..] {
            if a.overlaps(b) {
                bail!("--pool {a} overlaps --pool {b}");
            }
        }
    }
    let mut out = Vec::new();
    for c in pool {
        let base = u32::from_be_bytes(c.network());
        let n: u64 = 1u64 << (32 - c.len as u32);
        if out.len() as u64 + n > dslite_common::maps::MAX_POOL as u64 {
            bail!(
                "--pool {c}: the pool is limited to {} addresses",
                dslite_common::maps::MAX_POOL
            );
        }
        for i in 0..n {
            out.push(Ipv4Addr::from(base.wrapping_add(i as u32)));
        }
    }
    Ok(out)
}

impl AftrOptions {
    pub fn validate(self) -> Result<AftrSettings> {
        let tunnel_iface = self.tunnel_iface.context("--tunnel-iface is required")?;
        let address = self.address.context("--address is required")?;
        if self.pool.is_empty() {
            bail!("--pool is required");
        }
        if self.b4_prefix.is_empty() {
            bail!("--b4-prefix is required (use ::/0 to allow every B4)");
        }
        if self.b4_prefix.len() > dslite_common::maps::MAX_PREFIXES as usize {
            bail!(
                "--b4-prefix: {} prefixes, at most {} (B4_ALLOW's size)",
                self.b4_prefix.len(),
                dslite_common::maps::MAX_PREFIXES
            );
        }
        if address.is_unspecified() || address.is_multicast() {
            bail!("--address {address} cannot be a softwire endpoint");
        }
        let pool = expand_pool(&self.pool)?;
        let ports = self.port_range.unwrap_or(PortRange {
            lo: dslite_common::nat::DEFAULT_PORT_LO,
            hi: dslite_common::nat::DEFAULT_PORT_HI,
        });
        let span = ports.hi as u32 - ports.lo as u32 + 1;
        let block_size = self
            .block_size
            .unwrap_or(dslite_common::nat::DEFAULT_BLOCK_SIZE);
        if !block_size.is_power_of_two()
            || block_size < dslite_common::nat::MIN_BLOCK_SIZE
            || block_size as u32 > span
        {
            bail!(
                "--block-size {block_size} must be a power of two from {} to the port range size ({span})",
                dslite_common::nat::MIN_BLOCK_SIZE
            );
        }
        let max_blocks = self
            .max_blocks
            .unwrap_or(dslite_common::nat::DEFAULT_MAX_BLOCKS);
        if max_blocks == 0 || max_blocks as u32 > dslite_common::nat::MAX_BLOCKS {
            bail!(
                "--max-blocks {max_blocks} must be 1-{}",
                dslite_common::nat::MAX_BLOCKS
            );
        }
        let max_mappings = self
            .max_mappings
            .unwrap_or(dslite_common::maps::DEFAULT_MAX_MAPPINGS);
        if max_mappings == 0 {
            bail!("--max-mappings 0: the table needs room for at least one mapping");
        }
        let d = Timeouts::default();
        let timeouts = Timeouts {
            udp: self.udp_timeout.unwrap_or(d.udp),
            tcp_established: self.tcp_established_timeout.unwrap_or(d.tcp_established),
            tcp_transitory: self.tcp_transitory_timeout.unwrap_or(d.tcp_transitory),
            icmp: self.icmp_timeout.unwrap_or(d.icmp),
            block_hold_down: self.block_hold_down.unwrap_or(d.block_hold_down),
        };
        timeouts.check(self.allow_short_timeouts)?;
        let dl = Limits::default();
        let limits = Limits {
            max_sessions: self.max_sessions.unwrap_or(dl.max_sessions),
            new_mapping_rate: self.new_mapping_rate.unwrap_or(dl.new_mapping_rate),
            icmp_rate: self.icmp_rate.unwrap_or(dl.icmp_rate),
            icmp_code: self.icmp_unreachable_code.unwrap_or(dl.icmp_code),
        };
        let subscriber_prefix_len = self
            .subscriber_prefix_len
            .unwrap_or(dslite_common::nat::DEFAULT_SUBSCRIBER_PREFIX_LEN);
        if !(32..=128).contains(&subscriber_prefix_len) {
            bail!("--subscriber-prefix-len {subscriber_prefix_len} must be 32-128");
        }
        if limits.icmp_code > 15 {
            bail!(
                "--icmp-unreachable-code {} is not a destination-unreachable code (0-15)",
                limits.icmp_code
            );
        }
        let nat_log_queue = self.nat_log_queue.unwrap_or(DEFAULT_QUEUE);
        let q = QUEUE_RANGE;
        if !q.contains(&nat_log_queue) {
            bail!(
                "--nat-log-queue {nat_log_queue} must be {}-{} records",
                q.start(),
                q.end()
            );
        }
        Ok(AftrSettings {
            internet_iface: self.internet_iface.unwrap_or_else(|| tunnel_iface.clone()),
            tunnel_iface,
            address,
            pool,
            b4_prefixes: self.b4_prefix,
            ports,
            block_size,
            max_blocks,
            max_mappings,
            timeouts,
            inbound_refresh: self.inbound_refresh,
            subscriber_prefix_len,
            deny_destinations: self.deny_destination,
            max_peers: self.max_peers.unwrap_or(DEFAULT_MAX_PEERS),
            fragment_rate: self.fragment_rate.unwrap_or(DEFAULT_FRAGMENT_RATE),
            tunnel_ifindex: 0,
            internet_ifindex: 0,
            limits,
            filtering: [
                self.udp_filtering.unwrap_or_default(),
                self.tcp_filtering.unwrap_or_default(),
                self.icmp_filtering.unwrap_or_default(),
            ],
            mss_clamp: self.common.mss_clamp.unwrap_or_default(),
            slow: self.common.slow()?,
            natlog: Sinks {
                file: self.nat_log,
                syslog: self.syslog,
                ipfix: self.ipfix,
                queue: nat_log_queue,
            },
            log_sessions: self.log_sessions || self.log_destinations,
            log_destinations: self.log_destinations,
            metrics: self.common.metrics,
            persist: self.common.persist,
            nexthop_cache: !self.common.no_nexthop_cache,
            v4_mtu: 0,
            mss: 0,
            hook: self.common.hook()?,
            pin_path: self
                .common
                .pin_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT).join("aftr")),
            xdp_mode: self.common.xdp_mode.unwrap_or_default(),
            bpf_object: self.common.bpf_object,
        })
    }
}

impl AftrSettings {
    /// What a valid AFTR configuration still gets wrong, for `check-config` and the start
    /// log.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for p in &self.b4_prefixes {
            if p.contains(&self.address.octets()) {
                w.push(format!(
                    "b4-prefix {p} covers the AFTR's own address {}: narrow it to the access \
                     network's prefixes (packets from the AFTR host's own addresses are dropped \
                     anyway, drop_b4_source_local)",
                    self.address
                ));
            }
        }
        w
    }
}

/// A validated B4 configuration (the B4 address may still come from netlink).
#[derive(Clone, Debug)]
pub struct B4Settings {
    pub lan_iface: String,
    pub wan_iface: String,
    pub aftr: AftrSource,
    pub dns_servers: Vec<SocketAddr>,
    pub address: Option<Ipv6Addr>,
    pub mss_clamp: MssClamp,
    pub slow: SlowSettings,
    pub metrics: Option<SocketAddr>,
    pub persist: bool,
    pub nexthop_cache: bool,
    pub pin_path: PathBuf,
    pub hook: HookOpt,
    pub xdp_mode: XdpModeOpt,
    pub bpf_object: Option<PathBuf>,
}

impl B4Options {
    /// `system_nameservers` gives the DNS servers when no `--dns-server` is set (reading
    /// /etc/resolv.conf is the caller's business: this module does no I/O).
    pub fn validate(
        self,
        system_nameservers: impl FnOnce() -> Vec<SocketAddr>,
    ) -> Result<B4Settings> {
        let lan_iface = self.lan_iface.context("--lan-iface is required")?;
        let wan_iface = self.wan_iface.context("--wan-iface is required")?;
        if lan_iface == wan_iface {
            bail!("--lan-iface and --wan-iface must differ (both are '{lan_iface}')");
        }
        let aftr = match (self.aftr, self.aftr_file) {
            (Some(a), None) => a,
            (None, Some(f)) => AftrSource::File(f),
            (Some(_), Some(_)) => bail!("--aftr and --aftr-file exclude each other"),
            (None, None) => bail!("--aftr (or --aftr-file) is required"),
        };
        let dns_servers = if self.dns_server.is_empty() {
            system_nameservers()
        } else {
            self.dns_server
        };
        Ok(B4Settings {
            lan_iface,
            wan_iface,
            aftr,
            dns_servers,
            address: self.address,
            mss_clamp: self.common.mss_clamp.unwrap_or_default(),
            slow: self.common.slow()?,
            metrics: self.common.metrics,
            persist: self.common.persist,
            nexthop_cache: !self.common.no_nexthop_cache,
            hook: self.common.hook()?,
            pin_path: self
                .common
                .pin_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT).join("b4")),
            xdp_mode: self.common.xdp_mode.unwrap_or_default(),
            bpf_object: self.common.bpf_object,
        })
    }
}
