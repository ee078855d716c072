//! One NAT log record and its two text forms: the JSON line (the file sink, and
//! what `dslite whois` reads back) and the RFC 5424 syslog message.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use dslite_common::maps::{
    NatEvent, EVENT_ADDRESSES_EXHAUSTED, EVENT_BLOCK_ALLOCATED, EVENT_BLOCK_RELEASED,
    EVENT_MAPPING_CREATED, EVENT_MAPPING_DELETED, EVENT_PORTS_EXHAUSTED, EVENT_QUOTA_EXCEEDED,
};
use serde_json::{Map, Value};

use crate::clock::{parse_rfc3339_ms, rfc3339_ms};

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

    fn from_name(name: &str, max: u32) -> Option<Limit> {
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

fn event_kind(name: &str) -> Option<u8> {
    [
        EVENT_BLOCK_ALLOCATED,
        EVENT_BLOCK_RELEASED,
        EVENT_MAPPING_CREATED,
        EVENT_MAPPING_DELETED,
        EVENT_QUOTA_EXCEEDED,
        EVENT_PORTS_EXHAUSTED,
        EVENT_ADDRESSES_EXHAUSTED,
    ]
    .into_iter()
    .find(|k| event_name(*k) == name)
}

pub(crate) fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        p => p.to_string(),
    }
}

fn proto_number(s: &str) -> Option<u8> {
    match s {
        "icmp" => Some(1),
        "tcp" => Some(6),
        "udp" => Some(17),
        n => n.parse().ok(),
    }
}

/// Why a line is not a NAT record: the field at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRecord(pub &'static str);

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            "json" => f.write_str("not a JSON object"),
            field => write!(f, "missing or bad \"{field}\""),
        }
    }
}

impl std::error::Error for BadRecord {}

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

    fn is_mapping(&self) -> bool {
        self.kind == EVENT_MAPPING_CREATED || self.kind == EVENT_MAPPING_DELETED
    }

    /// One JSON line (no newline); keys in sorted order.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("ts".into(), rfc3339_ms(self.unix_ms).into());
        m.insert("event".into(), event_name(self.kind).into());
        if !self.b4.is_unspecified() {
            m.insert("b4".into(), self.b4.to_string().into());
        }
        if !self.outside.is_unspecified() {
            m.insert("outside".into(), self.outside.to_string().into());
        }
        match self.inside {
            Some((a, p)) => {
                m.insert("proto".into(), proto_name(self.proto).into());
                m.insert("inside".into(), format!("{a}:{p}").into());
                m.insert("port".into(), self.port_lo.into());
            }
            None if self.port_hi != 0 => {
                m.insert(
                    "ports".into(),
                    format!("{}-{}", self.port_lo, self.port_hi).into(),
                );
            }
            None => {}
        }
        if let Some((a, p)) = self.dst {
            m.insert("dst".into(), format!("{a}:{p}").into());
        }
        if let Some(l) = self.limit {
            m.insert("limit".into(), l.name().into());
            m.insert("max".into(), l.max().into());
        }
        Value::Object(m).to_string()
    }

    /// Parse a line written by [`NatRecord::to_json`]. Anything else, including a line cut
    /// short or with a field out of range, is an error naming the field; never a panic.
    pub fn from_json(line: &str) -> Result<NatRecord, BadRecord> {
        let v: Value = serde_json::from_str(line).map_err(|_| BadRecord("json"))?;
        let obj = v.as_object().ok_or(BadRecord("json"))?;
        let text = |k: &'static str| -> Result<Option<&str>, BadRecord> {
            match obj.get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(BadRecord(k)),
            }
        };
        let endpoint = |k: &'static str| -> Result<Option<(Ipv4Addr, u16)>, BadRecord> {
            let Some(s) = text(k)? else {
                return Ok(None);
            };
            let (a, p) = s.rsplit_once(':').ok_or(BadRecord(k))?;
            Ok(Some((
                a.parse().map_err(|_| BadRecord(k))?,
                p.parse().map_err(|_| BadRecord(k))?,
            )))
        };
        let kind = text("event")?
            .and_then(event_kind)
            .ok_or(BadRecord("event"))?;
        let unix_ms = text("ts")?
            .and_then(|t| parse_rfc3339_ms(t).ok())
            .ok_or(BadRecord("ts"))?;
        let b4 = match text("b4")? {
            Some(s) => Some(s.parse::<Ipv6Addr>().map_err(|_| BadRecord("b4"))?),
            None => None,
        };
        let outside = match text("outside")? {
            Some(s) => Some(s.parse::<Ipv4Addr>().map_err(|_| BadRecord("outside"))?),
            None => None,
        };
        let ports = match text("ports")? {
            Some(r) => {
                let (a, b) = r.split_once('-').ok_or(BadRecord("ports"))?;
                let (a, b): (u16, u16) = (
                    a.parse().map_err(|_| BadRecord("ports"))?,
                    b.parse().map_err(|_| BadRecord("ports"))?,
                );
                if a > b {
                    return Err(BadRecord("ports"));
                }
                Some((a, b))
            }
            None => None,
        };
        let port = match obj.get("port") {
            None => None,
            Some(p) => Some(
                p.as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or(BadRecord("port"))?,
            ),
        };
        let proto = match text("proto")? {
            Some(p) => Some(proto_number(p).ok_or(BadRecord("proto"))?),
            None => None,
        };
        let inside = endpoint("inside")?;
        let dst = endpoint("dst")?;
        let limit = match (text("limit")?, obj.get("max")) {
            (None, None) => None,
            (Some(name), Some(max)) => {
                let max = max
                    .as_u64()
                    .and_then(|m| u32::try_from(m).ok())
                    .ok_or(BadRecord("max"))?;
                Some(Limit::from_name(name, max).ok_or(BadRecord("limit"))?)
            }
            (None, Some(_)) => return Err(BadRecord("limit")),
            (Some(_), None) => return Err(BadRecord("max")),
        };
        let mut r = NatRecord {
            unix_ms,
            kind,
            b4: b4.unwrap_or(Ipv6Addr::UNSPECIFIED),
            outside: outside.unwrap_or(Ipv4Addr::UNSPECIFIED),
            port_lo: 0,
            port_hi: 0,
            proto: proto.unwrap_or(0),
            inside,
            dst,
            limit,
        };
        // Each kind carries what whois needs to answer from it.
        let whole_aftr = matches!(limit, Some(Limit::Mappings(_)));
        if b4.is_none() && !whole_aftr {
            return Err(BadRecord("b4"));
        }
        match kind {
            EVENT_BLOCK_ALLOCATED | EVENT_BLOCK_RELEASED => {
                (r.port_lo, r.port_hi) = ports.ok_or(BadRecord("ports"))?;
                outside.ok_or(BadRecord("outside"))?;
            }
            _ if r.is_mapping() => {
                let p = port.ok_or(BadRecord("port"))?;
                (r.port_lo, r.port_hi) = (p, p);
                outside.ok_or(BadRecord("outside"))?;
                inside.ok_or(BadRecord("inside"))?;
                proto.ok_or(BadRecord("proto"))?;
            }
            _ => {
                if ports.is_some() || port.is_some() {
                    return Err(BadRecord("ports"));
                }
            }
        }
        if !r.is_mapping() && (inside.is_some() || dst.is_some()) {
            return Err(BadRecord("inside"));
        }
        if kind != EVENT_QUOTA_EXCEEDED && limit.is_some() {
            return Err(BadRecord("limit"));
        }
        Ok(r)
    }

    /// An RFC 5424 message: facility local0, severity info, structured data `natlog`, the
    /// JSON line as the message.
    pub fn to_syslog(&self, host: &str, json: &str) -> String {
        let b4 = if self.b4.is_unspecified() {
            String::new()
        } else {
            format!(" b4=\"{}\"", self.b4)
        };
        format!(
            "<134>1 {} {host} dslite {} natlog [natlog@32473 event=\"{}\"{b4}] {json}",
            rfc3339_ms(self.unix_ms),
            std::process::id(),
            event_name(self.kind),
        )
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

    #[test]
    fn records_round_trip_through_json() {
        let b = block(
            EVENT_BLOCK_ALLOCATED,
            1_795_664_096_789,
            "2001:db8:a::2",
            1024,
        );
        let line = b.to_json();
        assert_eq!(
            line,
            "{\"b4\":\"2001:db8:a::2\",\"event\":\"block-allocated\",\"outside\":\"198.51.100.1\",\"ports\":\"1024-1535\",\"ts\":\"2026-11-26T03:34:56.789Z\"}"
        );
        assert_eq!(NatRecord::from_json(&line), Ok(b));
        let m = NatRecord {
            kind: EVENT_MAPPING_CREATED,
            port_lo: 1030,
            port_hi: 1030,
            proto: 17,
            inside: Some((Ipv4Addr::new(192, 168, 1, 10), 5000)),
            dst: Some((Ipv4Addr::new(203, 0, 113, 2), 53)),
            ..block(0, 5, "2001:db8:b::2", 0)
        };
        let line = m.to_json();
        assert!(line.contains("\"inside\":\"192.168.1.10:5000\"") && line.contains("\"dst\""));
        assert_eq!(NatRecord::from_json(&line), Ok(m));
        let q = NatRecord {
            kind: EVENT_QUOTA_EXCEEDED,
            outside: Ipv4Addr::UNSPECIFIED,
            port_lo: 0,
            port_hi: 0,
            limit: Some(Limit::Sessions(100)),
            ..block(0, 5, "2001:db8:b::2", 0)
        };
        let line = q.to_json();
        assert!(
            line.contains("\"limit\":\"sessions\",\"max\":100"),
            "{line}"
        );
        assert_eq!(NatRecord::from_json(&line), Ok(q.clone()));
        let full = NatRecord {
            b4: Ipv6Addr::UNSPECIFIED,
            limit: Some(Limit::Mappings(1 << 20)),
            ..q
        };
        let line = full.to_json();
        assert!(!line.contains("b4"), "{line}");
        assert_eq!(NatRecord::from_json(&line), Ok(full));
        // What an earlier version wrote for a refusal still reads.
        let old = "{\"b4\":\"2001:db8:a::2\",\"event\":\"quota-exceeded\",\"ts\":\"2026-11-26T03:34:56.789Z\"}";
        assert_eq!(NatRecord::from_json(old).unwrap().limit, None);
    }

    #[test]
    fn bad_lines_name_the_field() {
        let good = block(EVENT_BLOCK_ALLOCATED, 0, "2001:db8:a::2", 1024).to_json();
        for (line, field) in [
            ("not json".to_string(), "json"),
            ("[1,2]".into(), "json"),
            (good.replace("block-allocated", "block-stolen"), "event"),
            (good.replace("1970", "19x0"), "ts"),
            (good.replace("2001:db8:a::2", "2001:db8:::2"), "b4"),
            (good.replace("1024-1535", "1535-1024"), "ports"),
            (good.replace("1024-1535", "1024-70000"), "ports"),
            (good.replace("\"198.51.100.1\"", "7"), "outside"),
            (good.replace(",\"ports\":\"1024-1535\"", ""), "ports"),
            (good.replace("\"b4\":\"2001:db8:a::2\",", ""), "b4"),
            (
                "{\"b4\":\"::1\",\"event\":\"mapping-created\",\"inside\":\"10.0.0.1:1\",\"outside\":\"198.51.100.1\",\"port\":65536,\"proto\":\"udp\",\"ts\":\"2026-11-26T03:34:56Z\"}".into(),
                "port",
            ),
            (
                "{\"b4\":\"::1\",\"event\":\"mapping-created\",\"outside\":\"198.51.100.1\",\"port\":6,\"proto\":\"udp\",\"ts\":\"2026-11-26T03:34:56Z\"}".into(),
                "inside",
            ),
            (
                "{\"b4\":\"::1\",\"event\":\"quota-exceeded\",\"limit\":\"ports\",\"max\":-1,\"ts\":\"2026-11-26T03:34:56Z\"}".into(),
                "max",
            ),
            (
                "{\"event\":\"quota-exceeded\",\"limit\":\"ports\",\"max\":5,\"ts\":\"2026-11-26T03:34:56Z\"}".into(),
                "b4",
            ),
        ] {
            assert_eq!(NatRecord::from_json(&line), Err(BadRecord(field)), "{line}");
        }
        assert_eq!(
            BadRecord("ts").to_string(),
            "missing or bad \"ts\"",
            "the reader's error says which field"
        );
    }

    #[test]
    fn syslog_lines_are_rfc5424() {
        let r = block(EVENT_BLOCK_RELEASED, 0, "2001:db8:a::2", 1024);
        let s = r.to_syslog("aftr1", &r.to_json());
        assert!(
            s.starts_with("<134>1 1970-01-01T00:00:00.000Z aftr1 dslite "),
            "{s}"
        );
        assert!(s.contains("natlog [natlog@32473 event=\"block-released\" b4=\"2001:db8:a::2\"] {"));
        assert!(s.ends_with(&r.to_json()));
    }
}
