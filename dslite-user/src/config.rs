//! Options for each role: the same struct is parsed from flags (clap) and from a TOML file
//! (serde); flags override the file. Validation turns them into resolved configurations or a
//! one-line error that names the bad value (exit code 2).

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

/// An IPv4 or IPv6 prefix in CIDR notation; `N` is 4 or 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr<const N: usize> {
    pub addr: [u8; N],
    pub len: u8,
}

pub type Cidr4 = Cidr<4>;
pub type Cidr6 = Cidr<16>;

impl<const N: usize> Cidr<N> {
    /// The network address (host bits cleared).
    pub fn network(&self) -> [u8; N] {
        let mut a = self.addr;
        for (i, b) in a.iter_mut().enumerate() {
            let bits = (self.len as i32 - 8 * i as i32).clamp(0, 8);
            *b &= (0xffu16 << (8 - bits)) as u8;
        }
        a
    }

    pub fn contains(&self, addr: &[u8; N]) -> bool {
        Cidr {
            addr: *addr,
            len: self.len,
        }
        .network()
            == self.network()
    }

    pub fn overlaps(&self, other: &Self) -> bool {
        let shorter = if self.len <= other.len { self } else { other };
        let longer = if self.len <= other.len { other } else { self };
        shorter.contains(&longer.addr)
    }
}

impl<const N: usize> FromStr for Cidr<N> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let max = (N * 8) as u8;
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: [u8; N] = if N == 4 {
            let v: Ipv4Addr = a
                .parse()
                .map_err(|_| format!("'{s}' is not an IPv4 prefix"))?;
            v.octets()[..].try_into().unwrap()
        } else {
            let v: Ipv6Addr = a
                .parse()
                .map_err(|_| format!("'{s}' is not an IPv6 prefix"))?;
            v.octets()[..].try_into().unwrap()
        };
        let len = match l {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("'{s}': prefix length must be 0-{max}")),
            },
        };
        Ok(Cidr { addr, len })
    }
}

impl<const N: usize> fmt::Display for Cidr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if N == 4 {
            let a: [u8; 4] = self.addr[..].try_into().unwrap();
            write!(f, "{}/{}", Ipv4Addr::from(a), self.len)
        } else {
            let a: [u8; 16] = self.addr[..].try_into().unwrap();
            write!(f, "{}/{}", Ipv6Addr::from(a), self.len)
        }
    }
}

impl<'de, const N: usize> Deserialize<'de> for Cidr<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `LO-HI`, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("'{s}' is not a port range LO-HI with 1 <= LO <= HI <= 65535");
        let (lo, hi) = s.split_once('-').ok_or_else(err)?;
        let lo: u16 = lo.trim().parse().map_err(|_| err())?;
        let hi: u16 = hi.trim().parse().map_err(|_| err())?;
        if lo == 0 || lo > hi {
            return Err(err());
        }
        Ok(PortRange { lo, hi })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Inbound filtering behaviour (RFC 4787 §5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Filtering {
    /// Endpoint-independent: anyone may reach a mapping.
    #[default]
    Eif,
    /// Address-dependent: only addresses the mapping has sent to.
    Adf,
    /// Address-and-port-dependent: only address:ports the mapping has sent to.
    Apdf,
}

impl Filtering {
    pub fn code(self) -> u8 {
        match self {
            Filtering::Eif => dslite_common::nat::FILTER_EIF,
            Filtering::Adf => dslite_common::nat::FILTER_ADF,
            Filtering::Apdf => dslite_common::nat::FILTER_APDF,
        }
    }
}

/// How to attach XDP: `auto` tries native (driver) mode and falls back to generic (skb).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeOpt {
    #[default]
    Auto,
    Native,
    Skb,
}

fn parse_ipv6(s: &str) -> Result<Ipv6Addr, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not an IPv6 address"))
}

fn parse_cidr4(s: &str) -> Result<Cidr4, String> {
    s.parse()
}

fn parse_cidr6(s: &str) -> Result<Cidr6, String> {
    s.parse()
}

fn parse_ports(s: &str) -> Result<PortRange, String> {
    s.parse()
}

/// `dslite aftr` options (flags or TOML keys with the same names).
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct AftrOptions {
    /// Interface facing the IPv6 access network (the B4s).
    #[arg(long, value_name = "IF")]
    pub tunnel_iface: Option<String>,
    /// Interface facing the IPv4 internet (default: the tunnel interface).
    #[arg(long, value_name = "IF")]
    pub internet_iface: Option<String>,
    /// The AFTR's softwire endpoint address.
    #[arg(long, value_name = "IPV6", value_parser = parse_ipv6)]
    #[serde(deserialize_with = "de_opt_ipv6")]
    pub address: Option<Ipv6Addr>,
    /// Public IPv4 pool; repeat or list several prefixes.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr4, num_args = 1..)]
    pub pool: Vec<Cidr4>,
    /// B4 prefixes allowed to open softwires (`::/0` allows everyone).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr6, num_args = 1..)]
    pub b4_prefix: Vec<Cidr6>,
    /// Outside port range for TCP/UDP ports and ICMP identifiers.
    #[arg(long, value_name = "LO-HI", value_parser = parse_ports)]
    pub port_range: Option<PortRange>,
    /// Ports per block a softwire takes at a time (power of two, default 512).
    #[arg(long, value_name = "PORTS")]
    pub block_size: Option<u16>,
    /// Most blocks one softwire may hold (1-8, default 4): its port quota.
    #[arg(long, value_name = "N")]
    pub max_blocks: Option<u8>,
    /// Size of the NAT tables (mappings); a full table drops new flows, never evicts.
    #[arg(long, value_name = "N")]
    pub max_mappings: Option<u32>,
    /// UDP mapping idle timeout in seconds (default 300, floor 120: RFC 4787 REQ-5).
    #[arg(long, value_name = "SECS")]
    pub udp_timeout: Option<u64>,
    /// Established TCP idle timeout (default and floor 7440: RFC 5382 REQ-5).
    #[arg(long, value_name = "SECS")]
    pub tcp_established_timeout: Option<u64>,
    /// Transitory TCP (opening, closing, reset) idle timeout (default and floor 240).
    #[arg(long, value_name = "SECS")]
    pub tcp_transitory_timeout: Option<u64>,
    /// ICMP echo mapping idle timeout (default and floor 60: RFC 5508 REQ-2).
    #[arg(long, value_name = "SECS")]
    pub icmp_timeout: Option<u64>,
    /// Seconds a released port block waits before another softwire may take it
    /// (default and floor 120: RFC 6888 REQ-8).
    #[arg(long, value_name = "SECS")]
    pub block_hold_down: Option<u64>,
    /// Accept timeouts below the RFC floors (labs and tests only).
    #[arg(long)]
    pub allow_short_timeouts: bool,
    /// Most mappings one softwire may hold (0: only the port quota limits it).
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<u32>,
    /// New mappings per second one softwire may open, with a burst of the same size
    /// (0: unlimited).
    #[arg(long, value_name = "PER_SEC")]
    pub new_mapping_rate: Option<u32>,
    /// ICMP destination-unreachable messages per second per CPU for refused new mappings
    /// (default 100; 0 sends none).
    #[arg(long, value_name = "PER_SEC")]
    pub icmp_rate: Option<u32>,
    /// Code of those messages: 13 (administratively prohibited, RFC 5508 REQ-8, the
    /// default) or 1 (host unreachable, RFC 6888 REQ-11).
    #[arg(long, value_name = "CODE")]
    pub icmp_unreachable_code: Option<u8>,
    /// UDP filtering: eif (endpoint-independent, the default), adf (address-dependent) or
    /// apdf (address-and-port-dependent): RFC 4787 REQ-8.
    #[arg(long, value_enum, value_name = "MODE")]
    pub udp_filtering: Option<Filtering>,
    /// TCP filtering (eif, adf or apdf).
    #[arg(long, value_enum, value_name = "MODE")]
    pub tcp_filtering: Option<Filtering>,
    /// ICMP echo filtering (eif or adf; apdf behaves as adf).
    #[arg(long, value_enum, value_name = "MODE")]
    pub icmp_filtering: Option<Filtering>,
    /// Inbound packets refresh their mapping too (off by default: RFC 4787 REQ-6 makes it a
    /// MAY, and it lets outsiders keep a mapping alive).
    #[arg(long)]
    pub inbound_refresh: bool,
    /// A subscriber is the B4 address masked to this length (32-128, default 56: RFC 7785
    /// §3). Port quota, blocks, session limit and new-mapping rate are per subscriber, so
    /// rotating source addresses inside a delegated prefix gains nothing.
    #[arg(long, value_name = "LEN")]
    pub subscriber_prefix_len: Option<u8>,
    /// IPv4 destinations subscribers may not reach through the AFTR (ISP-internal networks),
    /// besides the AFTR's own addresses and special-purpose ranges, which are always denied.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr4, num_args = 1..)]
    pub deny_destination: Vec<Cidr4>,
    /// Most remote endpoints one mapping keeps under address(-and-port)-dependent filtering
    /// (default 64; 0: no limit but the table's).
    #[arg(long, value_name = "N")]
    pub max_peers: Option<u16>,
    /// Fragments per second one subscriber may hand to reassembly, each direction's first
    /// fragments included (default 1000; 0: unlimited).
    #[arg(long, value_name = "PER_SEC")]
    pub fragment_rate: Option<u32>,
    /// NAT log: append JSON lines to FILE (reopened on SIGHUP, for logrotate).
    #[arg(long, value_name = "FILE")]
    pub nat_log: Option<PathBuf>,
    /// NAT log: RFC 5424 syslog to `udp:HOST:PORT` or `unix:PATH` (e.g. unix:/dev/log).
    #[arg(long, value_name = "udp:HOST:PORT|unix:PATH")]
    pub syslog: Option<String>,
    /// NAT log: IPFIX (RFC 7011, RFC 8158 fields) over UDP to a collector.
    #[arg(long, value_name = "HOST:PORT")]
    pub ipfix: Option<std::net::SocketAddr>,
    /// NAT log: records each sink (file, syslog, IPFIX) holds while its receiver or disk
    /// does not keep up; beyond that they are lost, counted (default 16384).
    #[arg(long, value_name = "RECORDS")]
    pub nat_log_queue: Option<usize>,
    /// NAT log: every mapping created and deleted, not only port blocks.
    #[arg(long)]
    pub log_sessions: bool,
    /// NAT log: with --log-sessions, the destination of each mapping's first packet.
    #[arg(long)]
    pub log_destinations: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonOptions,
}

/// `dslite b4` options.
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct B4Options {
    /// Interface facing the customer's IPv4 LAN.
    #[arg(long, value_name = "IF")]
    pub lan_iface: Option<String>,
    /// Interface facing the IPv6 access network.
    #[arg(long, value_name = "IF")]
    pub wan_iface: Option<String>,
    /// The AFTR: an IPv6 address, or a name resolved over DNS (AAAA; every record tried,
    /// resolved again when its TTL runs out), e.g. gw.transix.jp.
    #[arg(long, value_name = "IPV6|NAME")]
    #[serde(default, deserialize_with = "de_opt_aftr")]
    pub aftr: Option<crate::provision::AftrSource>,
    /// A file holding the AFTR's address or name, read again when it changes: what a DHCPv6
    /// client hook writes from the AFTR-Name option (RFC 6334). Instead of --aftr.
    #[arg(long, value_name = "FILE")]
    pub aftr_file: Option<PathBuf>,
    /// DNS servers for an AFTR name (default: /etc/resolv.conf), IP or [IP]:PORT.
    #[arg(long, value_name = "ADDR", value_parser = parse_dns_server, num_args = 1..)]
    #[serde(default, deserialize_with = "de_dns_servers")]
    pub dns_server: Vec<std::net::SocketAddr>,
    /// The B4's softwire address (default: the WAN interface's global IPv6 address).
    #[arg(long, value_name = "IPV6", value_parser = parse_ipv6)]
    #[serde(deserialize_with = "de_opt_ipv6")]
    pub address: Option<Ipv6Addr>,
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonOptions,
}

/// Options both roles share.
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CommonOptions {
    /// Where maps are pinned (default /sys/fs/bpf/dslite/<role>).
    #[arg(long, value_name = "DIR")]
    pub pin_path: Option<PathBuf>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeOpt>,
    /// Kernel object to load instead of the one built in.
    #[arg(long, value_name = "FILE")]
    pub bpf_object: Option<PathBuf>,
    /// TCP MSS clamping on SYNs both ways: `auto` (the default: fit the softwire over the
    /// IPv6 interface's MTU), `off`, or an MSS value.
    #[arg(long, value_name = "auto|off|MSS", value_parser = parse_mss)]
    #[serde(default, deserialize_with = "de_opt_mss")]
    pub mss_clamp: Option<MssClamp>,
    /// Largest outer IPv6 packet on a softwire; bigger ones leave as IPv6 fragments
    /// (default: the route's MTU toward the peer).
    #[arg(long, value_name = "BYTES")]
    pub tunnel_mtu: Option<u32>,
    /// Seconds an incomplete fragment chain is kept (IPv6 by the kernel, IPv4 by the NAT).
    #[arg(long, value_name = "SECS")]
    pub reassembly_timeout: Option<u64>,
    /// Bytes of fragments held for reassembly (each of IPv6 and IPv4).
    #[arg(long, value_name = "BYTES")]
    pub reassembly_memory: Option<u32>,
    /// Name of the slow path's TAP device.
    #[arg(long, value_name = "NAME")]
    pub slow_iface: Option<String>,
    /// Serve Prometheus metrics on ADDR:PORT (`/metrics`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Keep XDP attached and the maps pinned when the controller stops or dies; a controller
    /// started with --persist on the same pin path adopts them (mappings, blocks, NAT events).
    #[arg(long)]
    #[serde(default)]
    pub persist: bool,
    /// Ask the kernel FIB for every packet instead of caching its answers in XDP (for routing
    /// that depends on the source address, which the cache ignores).
    #[arg(long)]
    #[serde(default)]
    pub no_nexthop_cache: bool,
    /// TOML file with any of these options; flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// TCP MSS clamping (RFC 6908 §2.3, checklist 13).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MssClamp {
    /// From the MTU of the interface the softwire runs over.
    #[default]
    Auto,
    Off,
    Fixed(u16),
}

impl MssClamp {
    /// The MSS to program for a softwire over a link of `link_mtu` (0: off).
    pub fn resolve(self, link_mtu: u32) -> u16 {
        match self {
            MssClamp::Auto => dslite_common::proto::mss_for_link_mtu(link_mtu),
            MssClamp::Off => 0,
            MssClamp::Fixed(m) => m,
        }
    }
}

fn parse_mss(s: &str) -> Result<MssClamp, String> {
    match s {
        "auto" => Ok(MssClamp::Auto),
        "off" => Ok(MssClamp::Off),
        _ => match s.parse::<u16>() {
            Ok(m) if (536..=65495).contains(&m) => Ok(MssClamp::Fixed(m)),
            _ => Err(format!("'{s}' is not auto, off or an MSS of 536-65495")),
        },
    }
}

fn de_opt_mss<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<MssClamp>, D::Error> {
    let v = toml::Value::deserialize(d)?;
    let s = match v {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "mss-clamp: {other} is not auto, off or a number"
            )))
        }
    };
    parse_mss(&s).map(Some).map_err(serde::de::Error::custom)
}

fn de_opt_aftr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::provision::AftrSource>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

fn parse_dns_server(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .map_err(|_| format!("'{s}' is not an IP address or [IP]:PORT"))
}

fn de_dns_servers<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<std::net::SocketAddr>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| parse_dns_server(s).map_err(serde::de::Error::custom))
        .collect()
}

fn de_opt_ipv6<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Ipv6Addr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_ipv6(&s).map(Some).map_err(serde::de::Error::custom)
}

impl CommonOptions {
    /// The slow path's settings, checked.
    fn slow(&self) -> Result<crate::slowpath::Settings> {
        if let Some(m) = self.tunnel_mtu {
            if !(1280..=65535).contains(&m) {
                bail!("--tunnel-mtu {m} is outside 1280-65535 (IPv6's minimum MTU is 1280)");
            }
        }
        use crate::slowpath::{
            Settings, DEFAULT_REASSEMBLY_MEMORY, DEFAULT_REASSEMBLY_SECS, DEFAULT_TAP,
        };
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
        Ok(Settings {
            tap_name,
            tunnel_mtu: self.tunnel_mtu,
            reassembly_timeout: std::time::Duration::from_secs(timeout),
            reassembly_memory: memory,
        })
    }

    fn merge(self, file: CommonOptions) -> CommonOptions {
        CommonOptions {
            pin_path: self.pin_path.or(file.pin_path),
            xdp_mode: self.xdp_mode.or(file.xdp_mode),
            bpf_object: self.bpf_object.or(file.bpf_object),
            mss_clamp: self.mss_clamp.or(file.mss_clamp),
            tunnel_mtu: self.tunnel_mtu.or(file.tunnel_mtu),
            reassembly_timeout: self.reassembly_timeout.or(file.reassembly_timeout),
            reassembly_memory: self.reassembly_memory.or(file.reassembly_memory),
            slow_iface: self.slow_iface.or(file.slow_iface),
            metrics: self.metrics.or(file.metrics),
            persist: self.persist || file.persist,
            no_nexthop_cache: self.no_nexthop_cache || file.no_nexthop_cache,
            config: self.config,
        }
    }
}

/// The TOML keys a role's file may hold: exactly its long flags (serde cannot deny unknown
/// keys through `flatten`, and one list means a new flag is a new key, always).
fn keys_of<T: clap::Args>() -> Vec<String> {
    T::augment_args(clap::Command::new("keys"))
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|k| *k != "config")
        .map(str::to_string)
        .collect()
}

pub(crate) fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

fn read_toml<T: for<'de> Deserialize<'de> + clap::Args>(path: &Path) -> Result<T> {
    let keys = keys_of::<T>();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("config '{}'", path.display()))?;
    let err = |line: usize, msg: String| {
        anyhow::anyhow!("config '{}' line {line}: {msg}", path.display())
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |s| text[..s.start].lines().count().max(1));
        err(line, e.message().to_string())
    })?;
    for k in table.keys() {
        if !keys.iter().any(|x| x == k) {
            return Err(err(line_of(&text, k), format!("unknown key '{k}'")));
        }
    }
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |s| text[..s.start].lines().count().max(1));
        err(line, e.message().to_string())
    })
}

impl AftrOptions {
    /// Flags override the TOML file named by `--config`.
    pub fn merged(self) -> Result<AftrOptions> {
        let Some(path) = self.common.config.clone() else {
            return Ok(self);
        };
        let f: AftrOptions = read_toml(&path)?;
        Ok(AftrOptions {
            tunnel_iface: self.tunnel_iface.or(f.tunnel_iface),
            internet_iface: self.internet_iface.or(f.internet_iface),
            address: self.address.or(f.address),
            pool: if self.pool.is_empty() {
                f.pool
            } else {
                self.pool
            },
            b4_prefix: if self.b4_prefix.is_empty() {
                f.b4_prefix
            } else {
                self.b4_prefix
            },
            port_range: self.port_range.or(f.port_range),
            block_size: self.block_size.or(f.block_size),
            max_blocks: self.max_blocks.or(f.max_blocks),
            max_mappings: self.max_mappings.or(f.max_mappings),
            udp_timeout: self.udp_timeout.or(f.udp_timeout),
            tcp_established_timeout: self.tcp_established_timeout.or(f.tcp_established_timeout),
            tcp_transitory_timeout: self.tcp_transitory_timeout.or(f.tcp_transitory_timeout),
            icmp_timeout: self.icmp_timeout.or(f.icmp_timeout),
            block_hold_down: self.block_hold_down.or(f.block_hold_down),
            allow_short_timeouts: self.allow_short_timeouts || f.allow_short_timeouts,
            inbound_refresh: self.inbound_refresh || f.inbound_refresh,
            subscriber_prefix_len: self.subscriber_prefix_len.or(f.subscriber_prefix_len),
            deny_destination: if self.deny_destination.is_empty() {
                f.deny_destination
            } else {
                self.deny_destination
            },
            max_peers: self.max_peers.or(f.max_peers),
            fragment_rate: self.fragment_rate.or(f.fragment_rate),
            nat_log: self.nat_log.or(f.nat_log),
            syslog: self.syslog.or(f.syslog),
            ipfix: self.ipfix.or(f.ipfix),
            nat_log_queue: self.nat_log_queue.or(f.nat_log_queue),
            log_sessions: self.log_sessions || f.log_sessions,
            log_destinations: self.log_destinations || f.log_destinations,
            max_sessions: self.max_sessions.or(f.max_sessions),
            new_mapping_rate: self.new_mapping_rate.or(f.new_mapping_rate),
            icmp_rate: self.icmp_rate.or(f.icmp_rate),
            icmp_unreachable_code: self.icmp_unreachable_code.or(f.icmp_unreachable_code),
            udp_filtering: self.udp_filtering.or(f.udp_filtering),
            tcp_filtering: self.tcp_filtering.or(f.tcp_filtering),
            icmp_filtering: self.icmp_filtering.or(f.icmp_filtering),
            common: self.common.merge(f.common),
        })
    }
}

impl B4Options {
    pub fn merged(self) -> Result<B4Options> {
        let Some(path) = self.common.config.clone() else {
            return Ok(self);
        };
        let f: B4Options = read_toml(&path)?;
        Ok(B4Options {
            lan_iface: self.lan_iface.or(f.lan_iface),
            wan_iface: self.wan_iface.or(f.wan_iface),
            aftr: self.aftr.or(f.aftr),
            aftr_file: self.aftr_file.or(f.aftr_file),
            dns_server: if self.dns_server.is_empty() {
                f.dns_server
            } else {
                self.dns_server
            },
            address: self.address.or(f.address),
            common: self.common.merge(f.common),
        })
    }
}

/// A fully validated AFTR configuration.
#[derive(Clone, Debug)]
pub struct AftrSettings {
    pub tunnel_iface: String,
    pub internet_iface: String,
    pub address: Ipv6Addr,
    /// Every public address, in pool order.
    pub pool: Vec<Ipv4Addr>,
    pub b4_prefixes: Vec<Cidr6>,
    pub ports: PortRange,
    pub block_size: u16,
    pub max_blocks: u8,
    pub max_mappings: u32,
    pub timeouts: Timeouts,
    pub inbound_refresh: bool,
    /// RFC 7785 §3: the subscriber is the B4 address masked to this length.
    pub subscriber_prefix_len: u8,
    /// `--deny-destination`, besides [`crate::dataplane::ALWAYS_DENIED`].
    pub deny_destinations: Vec<Cidr4>,
    pub max_peers: u16,
    pub fragment_rate: u32,
    /// The interfaces' indexes (resolved at start): softwire packets and IPv4 to the pool
    /// are accepted only where they belong.
    pub tunnel_ifindex: u32,
    pub internet_ifindex: u32,
    pub limits: Limits,
    /// Filtering per protocol: UDP, TCP, ICMP.
    pub filtering: [Filtering; 3],
    pub mss_clamp: MssClamp,
    pub slow: crate::slowpath::Settings,
    pub natlog: crate::natlog::Sinks,
    pub log_sessions: bool,
    pub log_destinations: bool,
    pub metrics: Option<std::net::SocketAddr>,
    pub persist: bool,
    pub nexthop_cache: bool,
    /// MTU of the internet interface (resolved at start; 0: DF=1 packets too big for it are
    /// dropped without an ICMP 3/4).
    pub v4_mtu: u16,
    /// The MSS programmed into the dataplane (resolved from `mss_clamp` at start; 0: off).
    pub mss: u16,
    pub pin_path: PathBuf,
    pub xdp_mode: XdpModeOpt,
    pub bpf_object: Option<PathBuf>,
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

/// Idle timeouts and the block hold-down, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub udp: u64,
    pub tcp_established: u64,
    pub tcp_transitory: u64,
    pub icmp: u64,
    pub block_hold_down: u64,
}

impl Default for Timeouts {
    /// The defaults are the RFC recommendations (checklist 31-35).
    fn default() -> Self {
        Timeouts {
            udp: 300,
            tcp_established: 7440,
            tcp_transitory: 240,
            icmp: 60,
            block_hold_down: 120,
        }
    }
}

/// RFC floors: (flag, floor). UDP: RFC 4787 REQ-5; TCP: RFC 5382 REQ-5; ICMP: RFC 5508
/// REQ-2; hold-down: RFC 6888 REQ-8.
const FLOORS: [(&str, u64); 5] = [
    ("--udp-timeout", 120),
    ("--tcp-established-timeout", 7440),
    ("--tcp-transitory-timeout", 240),
    ("--icmp-timeout", 60),
    ("--block-hold-down", 120),
];

impl Timeouts {
    fn values(&self) -> [u64; 5] {
        [
            self.udp,
            self.tcp_established,
            self.tcp_transitory,
            self.icmp,
            self.block_hold_down,
        ]
    }

    /// Reject values under the RFC floors unless `allow_short`; never accept 0.
    pub fn check(&self, allow_short: bool) -> Result<()> {
        for ((flag, floor), v) in FLOORS.iter().zip(self.values()) {
            if v == 0 {
                bail!("{flag} 0: a timeout must be at least 1 second");
            }
            if v < *floor && !allow_short {
                bail!("{flag} {v} is below the RFC floor of {floor} s (use --allow-short-timeouts in labs)");
            }
        }
        Ok(())
    }
}

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/dslite";

/// Expand pool prefixes into addresses, rejecting overlaps (RFC 6888 REQ-3, checklist 46).
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
        let nat_log_queue = self.nat_log_queue.unwrap_or(crate::natlog::DEFAULT_QUEUE);
        let q = crate::natlog::QUEUE_RANGE;
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
            natlog: crate::natlog::Sinks {
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
    /// A reload to `new` keeps what cannot change while running (the interfaces, the address
    /// and pool, the port layout and table sizes, the slow path, where maps are pinned, the
    /// attach mode): those are put back into `new` from `self`, and the flags that differed
    /// are returned, for a "needs a restart" warning. Everything else (limits, timeouts,
    /// filtering, B4 prefixes, MSS clamping, NAT log settings) is applied live.
    pub fn keep_restart_only(&self, new: &mut AftrSettings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! keep {
            ($($field:ident $(.$sub:ident)? => $flag:literal),* $(,)?) => {$(
                if new.$field$(.$sub)? != self.$field$(.$sub)? {
                    changed.push($flag);
                    new.$field$(.$sub)? = self.$field$(.$sub)?.clone();
                }
            )*};
        }
        keep!(
            tunnel_iface => "tunnel-iface",
            internet_iface => "internet-iface",
            address => "address",
            pool => "pool",
            ports => "port-range",
            block_size => "block-size",
            max_blocks => "max-blocks",
            max_mappings => "max-mappings",
            pin_path => "pin-path",
            xdp_mode => "xdp-mode",
            bpf_object => "bpf-object",
            metrics => "metrics",
            persist => "persist",
            nexthop_cache => "no-nexthop-cache",
            slow.tap_name => "slow-iface",
            slow.tunnel_mtu => "tunnel-mtu",
            slow.reassembly_timeout => "reassembly-timeout",
            slow.reassembly_memory => "reassembly-memory",
            subscriber_prefix_len => "subscriber-prefix-len",
        );
        // Resolved at start from the interfaces, not from the file.
        new.v4_mtu = self.v4_mtu;
        new.tunnel_ifindex = self.tunnel_ifindex;
        new.internet_ifindex = self.internet_ifindex;
        changed
    }
}

impl AftrSettings {
    /// What a reload to `new` changes among the settings applied live, one `key: old -> new`
    /// per setting (B4 prefixes as `+added -removed`), for the log.
    pub fn live_changes(&self, new: &AftrSettings) -> Vec<String> {
        fn show<T: fmt::Debug>(v: &T) -> String {
            let s = format!("{v:?}");
            let s = match s.strip_prefix("Some(").and_then(|x| x.strip_suffix(')')) {
                Some(inner) => inner.to_string(),
                None if s == "None" => "unset".to_string(),
                None => s,
            };
            s.trim_matches('"').to_lowercase()
        }
        let mut changed = Vec::new();
        macro_rules! diff {
            ($($($field:ident).+ => $flag:literal),* $(,)?) => {$(
                if new.$($field).+ != self.$($field).+ {
                    changed.push(format!(
                        "{}: {} -> {}",
                        $flag,
                        show(&self.$($field).+),
                        show(&new.$($field).+)
                    ));
                }
            )*};
        }
        diff!(
            timeouts.udp => "udp-timeout",
            timeouts.tcp_established => "tcp-established-timeout",
            timeouts.tcp_transitory => "tcp-transitory-timeout",
            timeouts.icmp => "icmp-timeout",
            timeouts.block_hold_down => "block-hold-down",
            limits.max_sessions => "max-sessions",
            limits.new_mapping_rate => "new-mapping-rate",
            limits.icmp_rate => "icmp-rate",
            limits.icmp_code => "icmp-unreachable-code",
            inbound_refresh => "inbound-refresh",
            mss_clamp => "mss-clamp",
            natlog.file => "nat-log",
            natlog.syslog => "syslog",
            natlog.ipfix => "ipfix",
            log_sessions => "log-sessions",
            log_destinations => "log-destinations",
            deny_destinations => "deny-destination",
            max_peers => "max-peers",
            fragment_rate => "fragment-rate",
        );
        for (i, flag) in ["udp-filtering", "tcp-filtering", "icmp-filtering"]
            .iter()
            .enumerate()
        {
            if new.filtering[i] != self.filtering[i] {
                changed.push(format!(
                    "{flag}: {} -> {}",
                    show(&self.filtering[i]),
                    show(&new.filtering[i])
                ));
            }
        }
        let added: Vec<String> = new
            .b4_prefixes
            .iter()
            .filter(|p| !self.b4_prefixes.contains(p))
            .map(|p| format!("+{p}"))
            .collect();
        let removed: Vec<String> = self
            .b4_prefixes
            .iter()
            .filter(|p| !new.b4_prefixes.contains(p))
            .map(|p| format!("-{p}"))
            .collect();
        if !added.is_empty() || !removed.is_empty() {
            changed.push(format!(
                "b4-prefix: {}",
                [added, removed].concat().join(" ")
            ));
        }
        changed
    }
}

/// A validated B4 configuration (the B4 address may still come from netlink).
#[derive(Clone, Debug)]
pub struct B4Settings {
    pub lan_iface: String,
    pub wan_iface: String,
    pub aftr: crate::provision::AftrSource,
    pub dns_servers: Vec<std::net::SocketAddr>,
    pub address: Option<Ipv6Addr>,
    pub mss_clamp: MssClamp,
    pub slow: crate::slowpath::Settings,
    pub metrics: Option<std::net::SocketAddr>,
    pub persist: bool,
    pub nexthop_cache: bool,
    pub pin_path: PathBuf,
    pub xdp_mode: XdpModeOpt,
    pub bpf_object: Option<PathBuf>,
}

impl B4Options {
    pub fn validate(self) -> Result<B4Settings> {
        let lan_iface = self.lan_iface.context("--lan-iface is required")?;
        let wan_iface = self.wan_iface.context("--wan-iface is required")?;
        if lan_iface == wan_iface {
            bail!("--lan-iface and --wan-iface must differ (both are '{lan_iface}')");
        }
        let aftr = match (self.aftr, self.aftr_file) {
            (Some(a), None) => a,
            (None, Some(f)) => crate::provision::AftrSource::File(f),
            (Some(_), Some(_)) => bail!("--aftr and --aftr-file exclude each other"),
            (None, None) => bail!("--aftr (or --aftr-file) is required"),
        };
        let dns_servers = if self.dns_server.is_empty() {
            crate::provision::system_nameservers()
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
            pin_path: self
                .common
                .pin_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT).join("b4")),
            xdp_mode: self.common.xdp_mode.unwrap_or_default(),
            bpf_object: self.common.bpf_object,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_errors() {
        let c: Cidr4 = "198.51.100.7/30".parse().unwrap();
        assert_eq!(c.network(), [198, 51, 100, 4]);
        assert!("198.51.100.0/33"
            .parse::<Cidr4>()
            .unwrap_err()
            .contains("0-32"));
        assert!("nope".parse::<Cidr4>().unwrap_err().contains("'nope'"));
        let c6: Cidr6 = "::/0".parse().unwrap();
        assert!(c6.contains(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
        let c6: Cidr6 = "2001:db8:a::/48".parse().unwrap();
        assert!(!c6.contains(&Ipv6Addr::from_str("2001:db8:b::1").unwrap().octets()));
    }

    #[test]
    fn pool_expands_and_rejects_overlap() {
        let p = expand_pool(&[
            "198.51.100.0/30".parse().unwrap(),
            "203.0.113.9".parse().unwrap(),
        ])
        .unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(p[4], Ipv4Addr::new(203, 0, 113, 9));
        let e = expand_pool(&[
            "198.51.100.0/30".parse().unwrap(),
            "198.51.100.2/32".parse().unwrap(),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
    }

    #[test]
    fn mss_clamp_values() {
        assert_eq!(parse_mss("auto").unwrap().resolve(1540), 1460);
        assert_eq!(parse_mss("off").unwrap().resolve(1540), 0);
        assert_eq!(parse_mss("1400").unwrap().resolve(9000), 1400);
        assert!(parse_mss("100").unwrap_err().contains("'100'"));
        assert!(parse_mss("big").is_err());
    }

    #[test]
    fn port_range_rules() {
        assert_eq!(
            "1024-2047".parse::<PortRange>().unwrap(),
            PortRange { lo: 1024, hi: 2047 }
        );
        for bad in ["0-10", "10-5", "a-b", "100", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_file_is_overridden_by_flags() {
        let dir = std::env::temp_dir().join(format!("dslite-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("aftr.toml");
        std::fs::write(
            &f,
            "tunnel-iface = \"eth0\"\naddress = \"2001:db8::1\"\npool = [\"198.51.100.0/30\"]\n\
             b4-prefix = [\"2001:db8::/32\"]\nport-range = \"2000-3000\"\nxdp-mode = \"skb\"\n",
        )
        .unwrap();
        let flags = AftrOptions {
            tunnel_iface: Some("eth1".into()),
            common: CommonOptions {
                config: Some(f.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = flags.merged().unwrap().validate().unwrap();
        assert_eq!(s.tunnel_iface, "eth1");
        assert_eq!(s.internet_iface, "eth1");
        assert_eq!(s.ports, PortRange { lo: 2000, hi: 3000 });
        assert_eq!(s.xdp_mode, XdpModeOpt::Skb);
        assert_eq!(s.pool.len(), 4);

        std::fs::write(&f, "tunnel-iface = \"eth0\"\n\nbogus-key = 1\n").unwrap();
        let flags = AftrOptions {
            common: CommonOptions {
                config: Some(f.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = flags.merged().unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("bogus-key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn aftr(extra: AftrOptions) -> Result<AftrSettings> {
        AftrOptions {
            tunnel_iface: Some("eth0".into()),
            address: Some("2001:db8::1".parse().unwrap()),
            pool: vec!["198.51.100.0/30".parse().unwrap()],
            b4_prefix: vec!["::/0".parse().unwrap()],
            ..extra
        }
        .validate()
    }

    #[test]
    fn timeouts_respect_rfc_floors() {
        let s = aftr(AftrOptions::default()).unwrap();
        assert_eq!(s.timeouts, Timeouts::default());
        let e = aftr(AftrOptions {
            udp_timeout: Some(60),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("--udp-timeout 60") && e.to_string().contains("120"),
            "{e}"
        );
        let e = aftr(AftrOptions {
            icmp_timeout: Some(30),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--icmp-timeout 30"), "{e}");
        let e = aftr(AftrOptions {
            tcp_established_timeout: Some(600),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("7440"), "{e}");
        let s = aftr(AftrOptions {
            udp_timeout: Some(2),
            allow_short_timeouts: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.timeouts.udp, 2);
        let e = aftr(AftrOptions {
            udp_timeout: Some(0),
            allow_short_timeouts: true,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }

    #[test]
    fn block_settings_are_checked() {
        let s = aftr(AftrOptions::default()).unwrap();
        assert_eq!((s.block_size, s.max_blocks), (512, 4));
        for bad in [0u16, 100, 8] {
            let e = aftr(AftrOptions {
                block_size: Some(bad),
                ..Default::default()
            })
            .unwrap_err();
            assert!(
                e.to_string().contains(&format!("--block-size {bad}")),
                "{e}"
            );
        }
        let e = aftr(AftrOptions {
            max_blocks: Some(9),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--max-blocks 9"), "{e}");
        let e = aftr(AftrOptions {
            port_range: Some(PortRange { lo: 5000, hi: 5063 }),
            block_size: Some(128),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("(64)"), "{e}");
    }

    fn aftr_with(pool: &str, b4_prefix: &str, extra: AftrOptions) -> AftrSettings {
        AftrOptions {
            tunnel_iface: Some("eth0".into()),
            address: Some("2001:db8::1".parse().unwrap()),
            pool: vec![pool.parse().unwrap()],
            b4_prefix: vec![b4_prefix.parse().unwrap()],
            ..extra
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn a_reload_names_what_it_applies_and_what_needs_a_restart() {
        let old = aftr_with("198.51.100.0/30", "2001:db8:a::/64", AftrOptions::default());
        let mut new = aftr_with(
            "198.51.100.8/30",
            "2001:db8:b::/64",
            AftrOptions {
                max_sessions: Some(5),
                udp_filtering: Some(Filtering::Adf),
                syslog: Some("unix:/dev/log".into()),
                max_mappings: Some(10),
                ..Default::default()
            },
        );
        let restart = old.keep_restart_only(&mut new);
        assert_eq!(restart, ["pool", "max-mappings"]);
        assert_eq!(new.pool, old.pool, "the running pool stays");
        let applied = old.live_changes(&new);
        assert_eq!(
            applied,
            [
                "max-sessions: 0 -> 5",
                "syslog: unset -> unix:/dev/log",
                "udp-filtering: eif -> adf",
                "b4-prefix: +2001:db8:b::/64 -2001:db8:a::/64",
            ]
        );
        assert!(old.live_changes(&old.clone()).is_empty());
    }

    #[test]
    fn too_many_b4_prefixes_are_refused_before_any_map_write() {
        let e = AftrOptions {
            tunnel_iface: Some("eth0".into()),
            address: Some("2001:db8::1".parse().unwrap()),
            pool: vec!["198.51.100.0/30".parse().unwrap()],
            b4_prefix: (0..=dslite_common::maps::MAX_PREFIXES)
                .map(|i| format!("2001:db8:{i:x}::/48").parse().unwrap())
                .collect(),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("at most 1024"), "{e}");
    }

    #[test]
    fn nat_log_queue_is_bounded() {
        let s = aftr(AftrOptions::default()).unwrap();
        assert_eq!(s.natlog.queue, crate::natlog::DEFAULT_QUEUE);
        let s = aftr(AftrOptions {
            nat_log_queue: Some(64),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.natlog.queue, 64);
        for bad in [0, 15, 1 << 21] {
            let e = aftr(AftrOptions {
                nat_log_queue: Some(bad),
                ..Default::default()
            })
            .unwrap_err();
            assert!(
                e.to_string().contains(&format!("--nat-log-queue {bad}")),
                "{e}"
            );
        }
    }

    #[test]
    fn missing_required_values_are_named() {
        let e = AftrOptions::default().validate().unwrap_err().to_string();
        assert!(e.contains("--tunnel-iface"), "{e}");
        let e = B4Options {
            lan_iface: Some("a".into()),
            wan_iface: Some("a".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("must differ"), "{e}");
    }
}
