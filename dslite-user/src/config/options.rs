//! The options of each role: one struct parsed both from flags (clap) and from a TOML file
//! (serde) with the same names; flags override the file.

use std::{
    net::Ipv6Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use super::values::{
    de_dns_servers, de_opt_aftr, de_opt_ipv6, de_opt_mss, parse_cidr4, parse_cidr6,
    parse_dns_server, parse_ipv6, parse_mss, parse_ports, AftrSource, Cidr4, Cidr6, Filtering,
    HookOpt, MssClamp, PortRange, XdpModeOpt,
};

/// Flags over the file: a value given as a flag wins; a list given as flags replaces the
/// file's; a switch is on if either turns it on.
trait Merge {
    fn merge(self, file: Self) -> Self;
}

impl<T> Merge for Option<T> {
    fn merge(self, file: Self) -> Self {
        self.or(file)
    }
}

impl<T> Merge for Vec<T> {
    fn merge(self, file: Self) -> Self {
        if self.is_empty() {
            file
        } else {
            self
        }
    }
}

impl Merge for bool {
    fn merge(self, file: Self) -> Self {
        self || file
    }
}

/// Declares an options struct (each field once: its clap flag and its TOML key, which serde
/// derives from the same name) and its field-by-field [`Merge`].
macro_rules! options {
    (
        $(#[$m:meta])*
        pub struct $name:ident {
            $($(#[$fm:meta])* pub $f:ident: $t:ty,)*
        }
    ) => {
        $(#[$m])*
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
        }

        impl Merge for $name {
            fn merge(self, file: Self) -> Self {
                $name {
                    $($f: Merge::merge(self.$f, file.$f),)*
                }
            }
        }
    };
}

options! {
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
}

options! {
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
        pub aftr: Option<AftrSource>,
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
}

options! {
    /// Options both roles share.
    #[derive(Clone, Debug, Default, clap::Args, Deserialize)]
    #[serde(default, rename_all = "kebab-case")]
    pub struct CommonOptions {
        /// Where maps are pinned (default /sys/fs/bpf/dslite/<role>).
        #[arg(long, value_name = "DIR")]
        pub pin_path: Option<PathBuf>,
        /// Kernel hook: auto (tc on virtual devices, native XDP on NICs), xdp or tc.
        #[arg(long, value_enum)]
        pub hook: Option<HookOpt>,
        /// XDP attach mode, where the hook is XDP.
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

pub fn line_of(text: &str, key: &str) -> usize {
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
        let path = self.common.config.clone();
        merged(self, path.as_deref())
    }
}

impl B4Options {
    /// Flags override the TOML file named by `--config`.
    pub fn merged(self) -> Result<B4Options> {
        let path = self.common.config.clone();
        merged(self, path.as_deref())
    }
}

fn merged<T: Merge + clap::Args + for<'de> Deserialize<'de>>(
    flags: T,
    config: Option<&Path>,
) -> Result<T> {
    match config {
        None => Ok(flags),
        Some(path) => Ok(flags.merge(read_toml(path)?)),
    }
}
