//! The value types options are made of, with their parsers: prefixes, port ranges, filtering
//! and attach modes, MSS clamping, the AFTR's source. Each parser's error names the bad
//! value; the option it came from is named by clap or by the TOML reader.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    str::FromStr,
};

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

/// Which kernel hook runs the dataplane on an interface (docs/operations.md, "Hooks"):
/// `auto` picks tc on virtual devices and native XDP on NICs whose driver has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HookOpt {
    #[default]
    Auto,
    Xdp,
    Tc,
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

pub(super) fn parse_ipv6(s: &str) -> Result<Ipv6Addr, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not an IPv6 address"))
}

pub(super) fn parse_cidr4(s: &str) -> Result<Cidr4, String> {
    s.parse()
}

pub(super) fn parse_cidr6(s: &str) -> Result<Cidr6, String> {
    s.parse()
}

pub(super) fn parse_ports(s: &str) -> Result<PortRange, String> {
    s.parse()
}

/// TCP MSS clamping (RFC 6908 §2.3).
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

pub(super) fn parse_mss(s: &str) -> Result<MssClamp, String> {
    match s {
        "auto" => Ok(MssClamp::Auto),
        "off" => Ok(MssClamp::Off),
        _ => match s.parse::<u16>() {
            Ok(m) if (536..=65495).contains(&m) => Ok(MssClamp::Fixed(m)),
            _ => Err(format!("'{s}' is not auto, off or an MSS of 536-65495")),
        },
    }
}

pub(super) fn de_opt_mss<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<MssClamp>, D::Error> {
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

pub(super) fn de_opt_aftr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<AftrSource>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

pub(super) fn parse_dns_server(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .map_err(|_| format!("'{s}' is not an IP address or [IP]:PORT"))
}

pub(super) fn de_dns_servers<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<std::net::SocketAddr>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| parse_dns_server(s).map_err(serde::de::Error::custom))
        .collect()
}

pub(super) fn de_opt_ipv6<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Ipv6Addr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_ipv6(&s).map(Some).map_err(serde::de::Error::custom)
}

/// Where the AFTR's address comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AftrSource {
    Addr(Ipv6Addr),
    Name(String),
    /// A file holding an address or a name (a DHCPv6 hook writes it).
    File(PathBuf),
}

impl std::fmt::Display for AftrSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AftrSource::Addr(a) => write!(f, "{a}"),
            AftrSource::Name(n) => write!(f, "{n}"),
            AftrSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

impl std::str::FromStr for AftrSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<Ipv6Addr>() {
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                return Err(format!("{a} is not a unicast address"));
            }
            return Ok(AftrSource::Addr(a));
        }
        let name = s.trim_end_matches('.');
        let ok_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(ok_label) {
            return Err(format!("'{s}' is neither an IPv6 address nor a host name"));
        }
        Ok(AftrSource::Name(name.to_ascii_lowercase()))
    }
}
