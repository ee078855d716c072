//! One NAT log record: its fields, its event and protocol names, and its making from a
//! kernel event. Its text forms are [`super::json`]'s (the JSON line) and
//! [`super::syslog`]'s (the RFC 5424 message).

use std::net::{Ipv4Addr, Ipv6Addr};

use dslite_common::maps::{
    NatEvent, EVENT_ADDRESSES_EXHAUSTED, EVENT_BLOCK_ALLOCATED, EVENT_BLOCK_RELEASED,
    EVENT_MAPPING_CREATED, EVENT_MAPPING_DELETED, EVENT_PORTS_EXHAUSTED, EVENT_QUOTA_EXCEEDED,
};

/// Which limit refused a subscriber's new mappings (a `quota-exceeded` record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The port quota: `--max-blocks` blocks of `--block-size` ports (RFC 6888 REQ-4).
    Ports(u32),
    /// `--max-sessions` mappings per subscriber.
    Sessions(u32),
    /// `--new-mapping-rate` new mappings per second per subscriber.
    Rate(u32),
    /// The whole AFTR's mapping table (`--max-mappings`): no subscriber in particular.
    Mappings(u32),
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Limit::Ports(_) => "ports",
            Limit::Sessions(_) => "sessions",
            Limit::Rate(_) => "rate",
            Limit::Mappings(_) => "mappings",
        }
    }

    pub fn max(self) -> u32 {
        match self {
            Limit::Ports(n) | Limit::Sessions(n) | Limit::Rate(n) | Limit::Mappings(n) => n,
        }
    }

    pub(super) fn from_name(name: &str, max: u32) -> Option<Limit> {
        Some(match name {
            "ports" => Limit::Ports(max),
            "sessions" => Limit::Sessions(max),
            "rate" => Limit::Rate(max),
            "mappings" => Limit::Mappings(max),
            _ => return None,
        })
    }
}

/// One NAT log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatRecord {
    pub unix_ms: i128,
    /// RFC 8158 natEvent (`EVENT_*`).
    pub kind: u8,
    /// The subscriber (unspecified for a record about the whole AFTR).
    pub b4: Ipv6Addr,
    /// Public address (unspecified for a quota or an addresses-exhausted event).
    pub outside: Ipv4Addr,
    /// The block's ports, or the mapping's outside port twice.
    pub port_lo: u16,
    pub port_hi: u16,
    /// Mapping events only.
    pub proto: u8,
    pub inside: Option<(Ipv4Addr, u16)>,
    pub dst: Option<(Ipv4Addr, u16)>,
    /// Quota events: the limit that refused (`None` in logs written before it was recorded).
    pub limit: Option<Limit>,
}

pub fn event_name(kind: u8) -> &'static str {
    match kind {
        EVENT_BLOCK_ALLOCATED => "block-allocated",
        EVENT_BLOCK_RELEASED => "block-released",
        EVENT_MAPPING_CREATED => "mapping-created",
        EVENT_MAPPING_DELETED => "mapping-deleted",
        EVENT_QUOTA_EXCEEDED => "quota-exceeded",
        EVENT_PORTS_EXHAUSTED => "ports-exhausted",
        EVENT_ADDRESSES_EXHAUSTED => "addresses-exhausted",
        _ => "unknown",
    }
}

pub(crate) fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        p => p.to_string(),
    }
}

impl NatRecord {
    /// A record from the kernel's ring buffer; `offset` from [`crate::clock::realtime_offset_ns`].
    pub fn from_event(ev: &NatEvent, offset: i128) -> NatRecord {
        let mapping = ev.kind == EVENT_MAPPING_CREATED || ev.kind == EVENT_MAPPING_DELETED;
        NatRecord {
            unix_ms: (ev.ts_ns as i128 + offset) / 1_000_000,
            kind: ev.kind,
            b4: ev.b4.into(),
            outside: ev.addr.into(),
            port_lo: ev.port_lo,
            port_hi: ev.port_hi,
            proto: ev.proto,
            inside: mapping.then(|| (ev.inside_addr.into(), ev.inside_port)),
            dst: (ev.dst_addr != [0; 4]).then(|| (ev.dst_addr.into(), ev.dst_port)),
            limit: None,
        }
    }

    pub(super) fn is_mapping(&self) -> bool {
        self.kind == EVENT_MAPPING_CREATED || self.kind == EVENT_MAPPING_DELETED
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn block(kind: u8, ms: i128, b4: &str, lo: u16) -> NatRecord {
        NatRecord {
            unix_ms: ms,
            kind,
            b4: b4.parse().unwrap(),
            outside: Ipv4Addr::new(198, 51, 100, 1),
            port_lo: lo,
            port_hi: lo + 511,
            proto: 0,
            inside: None,
            dst: None,
            limit: None,
        }
    }
}
