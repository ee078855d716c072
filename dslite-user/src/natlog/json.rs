//! The JSON line of a NAT record: what the file sink writes, what the syslog and journal
//! messages carry, and what `dslite whois` reads back.

use std::net::{Ipv4Addr, Ipv6Addr};

use dslite_common::maps::{
    EVENT_ADDRESSES_EXHAUSTED, EVENT_BLOCK_ALLOCATED, EVENT_BLOCK_RELEASED, EVENT_MAPPING_CREATED,
    EVENT_MAPPING_DELETED, EVENT_PORTS_EXHAUSTED, EVENT_QUOTA_EXCEEDED,
};
use serde_json::{Map, Value};

use super::record::{event_name, proto_name, Limit, NatRecord};
use crate::clock::{parse_rfc3339_ms, rfc3339_ms};

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::natlog::record::tests::block;

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
}
