//! IPFIX (RFC 7011) over UDP with the RFC 8158 information elements (`--ipfix`).
//!
//! Each record is one data set in its event's template. The message header is written by
//! the sink's thread when the message leaves: its export time is the send time (RFC 7011
//! §3.1), and its sequence number counts the data records sent before it (ibid.).
//! Templates go with the first message, then every [`TEMPLATE_EVERY`] and after SIGHUP
//! (RFC 7011 §8.4: over UDP they are resent periodically).
//!
//! One file of 550 lines, over half of them its tests (283 lines without): the templates,
//! the data sets that must match them and the message they go in change together.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use dslite_common::maps::{
    EVENT_ADDRESSES_EXHAUSTED, EVENT_MAPPING_CREATED, EVENT_MAPPING_DELETED, EVENT_PORTS_EXHAUSTED,
    EVENT_QUOTA_EXCEEDED,
};

use super::{
    record::{Limit, NatRecord},
    sink::{Delivery, Transport},
    syslog::Datagrams,
};

/// Template IDs. 258 (a quota template that carried only the B4) is retired: its layout
/// changed, and a collector may still hold the old one for that ID.
pub const TPL_BLOCK: u16 = 256;
pub const TPL_MAPPING: u16 = 257;
pub const TPL_QUOTA_PER_USER: u16 = 259;
pub const TPL_QUOTA_BIB: u16 = 260;
pub const TPL_ADDRESSES_EXHAUSTED: u16 = 261;
pub const TPL_PORTS_EXHAUSTED: u16 = 262;

/// IANA IPFIX information elements.
pub mod ie {
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const POST_NAT_SOURCE_IPV4_ADDRESS: u16 = 225;
    pub const POST_NAPT_SOURCE_TRANSPORT_PORT: u16 = 227;
    pub const NAT_EVENT: u16 = 230;
    pub const NAT_POOL_ID: u16 = 283;
    pub const OBSERVATION_TIME_MILLISECONDS: u16 = 323;
    pub const PORT_RANGE_START: u16 = 361;
    pub const PORT_RANGE_END: u16 = 362;
    pub const NAT_QUOTA_EXCEEDED_EVENT: u16 = 466;
    pub const MAX_BIB_ENTRIES: u16 = 472;
    pub const MAX_ENTRIES_PER_USER: u16 = 473;
}

/// natQuotaExceededEvent values (RFC 8158 §4, IANA "NAT Quota Exceeded Event Type").
pub const QUOTA_MAX_BIB_ENTRIES: u32 = 2;
pub const QUOTA_MAX_ENTRIES_PER_USER: u32 = 3;

/// The one address pool (natPoolId), for the addresses-exhausted event.
pub const POOL_ID: u32 = 0;

/// Ports are shared by every protocol in a port block: when a block's address has none
/// left, all three are exhausted, and RFC 8158 reports port exhaustion per protocol.
const EXHAUSTIBLE_PROTOCOLS: [u8; 3] = [6, 17, 1];

use ie::*;

/// (information element, length) per template.
const FIELDS_BLOCK: &[(u16, u16)] = &[
    (OBSERVATION_TIME_MILLISECONDS, 8),
    (NAT_EVENT, 1),
    (SOURCE_IPV6_ADDRESS, 16),
    (POST_NAT_SOURCE_IPV4_ADDRESS, 4),
    (PORT_RANGE_START, 2),
    (PORT_RANGE_END, 2),
];
const FIELDS_MAPPING: &[(u16, u16)] = &[
    (OBSERVATION_TIME_MILLISECONDS, 8),
    (NAT_EVENT, 1),
    (SOURCE_IPV6_ADDRESS, 16),
    (SOURCE_IPV4_ADDRESS, 4),
    (POST_NAT_SOURCE_IPV4_ADDRESS, 4),
    (PROTOCOL_IDENTIFIER, 1),
    (SOURCE_TRANSPORT_PORT, 2),
    (POST_NAPT_SOURCE_TRANSPORT_PORT, 2),
    (DESTINATION_IPV4_ADDRESS, 4),
    (DESTINATION_TRANSPORT_PORT, 2),
];
/// RFC 8158 §4 "maximum entries per user exceeded": the limit and the user, who for
/// DS-Lite is the softwire (the B4's IPv6 address).
const FIELDS_QUOTA_PER_USER: &[(u16, u16)] = &[
    (OBSERVATION_TIME_MILLISECONDS, 8),
    (NAT_EVENT, 1),
    (NAT_QUOTA_EXCEEDED_EVENT, 4),
    (MAX_ENTRIES_PER_USER, 4),
    (SOURCE_IPV6_ADDRESS, 16),
];
/// RFC 8158 §4 "maximum BIB entries exceeded": the mapping table (our mappings are
/// NAT44 BIB entries, natEvent 8/9).
const FIELDS_QUOTA_BIB: &[(u16, u16)] = &[
    (OBSERVATION_TIME_MILLISECONDS, 8),
    (NAT_EVENT, 1),
    (NAT_QUOTA_EXCEEDED_EVENT, 4),
    (MAX_BIB_ENTRIES, 4),
];
/// RFC 8158 "NAT addresses exhausted" (natEvent 3): the pool; and the subscriber refused.
const FIELDS_ADDRESSES_EXHAUSTED: &[(u16, u16)] = &[
    (OBSERVATION_TIME_MILLISECONDS, 8),
    (NAT_EVENT, 1),
    (NAT_POOL_ID, 4),
    (SOURCE_IPV6_ADDRESS, 16),
];
/// RFC 8158 "NAT ports exhausted" (natEvent 12): the address and protocol; and the
/// subscriber refused.
const FIELDS_PORTS_EXHAUSTED: &[(u16, u16)] = &[
    (OBSERVATION_TIME_MILLISECONDS, 8),
    (NAT_EVENT, 1),
    (POST_NAT_SOURCE_IPV4_ADDRESS, 4),
    (PROTOCOL_IDENTIFIER, 1),
    (SOURCE_IPV6_ADDRESS, 16),
];

pub const TEMPLATES: &[(u16, &[(u16, u16)])] = &[
    (TPL_BLOCK, FIELDS_BLOCK),
    (TPL_MAPPING, FIELDS_MAPPING),
    (TPL_QUOTA_PER_USER, FIELDS_QUOTA_PER_USER),
    (TPL_QUOTA_BIB, FIELDS_QUOTA_BIB),
    (TPL_ADDRESSES_EXHAUSTED, FIELDS_ADDRESSES_EXHAUSTED),
    (TPL_PORTS_EXHAUSTED, FIELDS_PORTS_EXHAUSTED),
];

/// Templates are resent this often over UDP (RFC 7011 §8.4).
pub const TEMPLATE_EVERY: Duration = Duration::from_secs(60);

/// The template set (ID 2) with every template.
pub fn template_set() -> Vec<u8> {
    let mut body = Vec::new();
    for (id, fields) in TEMPLATES {
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        for (ie, len) in *fields {
            body.extend_from_slice(&ie.to_be_bytes());
            body.extend_from_slice(&len.to_be_bytes());
        }
    }
    set(2, &body)
}

fn set(id: u16, body: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(4 + body.len());
    s.extend_from_slice(&id.to_be_bytes());
    s.extend_from_slice(&((4 + body.len()) as u16).to_be_bytes());
    s.extend_from_slice(body);
    s
}

/// One data set holding `r` in the template its event uses, and how many data records it
/// holds; `None` for what RFC 8158 has no element for (a new-mapping rate limit).
pub fn data_set(r: &NatRecord) -> Option<(Vec<u8>, u32)> {
    let mut d = Vec::new();
    let time = |d: &mut Vec<u8>| {
        d.extend_from_slice(&(r.unix_ms.clamp(0, u64::MAX as i128) as u64).to_be_bytes());
        d.push(r.kind);
    };
    let mut records = 1;
    let tpl = match (r.kind, r.limit, r.inside) {
        (EVENT_QUOTA_EXCEEDED, Some(Limit::Mappings(max)), _) => {
            time(&mut d);
            d.extend_from_slice(&QUOTA_MAX_BIB_ENTRIES.to_be_bytes());
            d.extend_from_slice(&max.to_be_bytes());
            TPL_QUOTA_BIB
        }
        (EVENT_QUOTA_EXCEEDED, Some(Limit::Ports(max) | Limit::Sessions(max)), _) => {
            time(&mut d);
            d.extend_from_slice(&QUOTA_MAX_ENTRIES_PER_USER.to_be_bytes());
            d.extend_from_slice(&max.to_be_bytes());
            d.extend_from_slice(&r.b4.octets());
            TPL_QUOTA_PER_USER
        }
        (EVENT_QUOTA_EXCEEDED, _, _) => return None,
        (EVENT_ADDRESSES_EXHAUSTED, _, _) => {
            time(&mut d);
            d.extend_from_slice(&POOL_ID.to_be_bytes());
            d.extend_from_slice(&r.b4.octets());
            TPL_ADDRESSES_EXHAUSTED
        }
        (EVENT_PORTS_EXHAUSTED, _, _) => {
            for p in EXHAUSTIBLE_PROTOCOLS {
                time(&mut d);
                d.extend_from_slice(&r.outside.octets());
                d.push(p);
                d.extend_from_slice(&r.b4.octets());
            }
            records = EXHAUSTIBLE_PROTOCOLS.len() as u32;
            TPL_PORTS_EXHAUSTED
        }
        (EVENT_MAPPING_CREATED | EVENT_MAPPING_DELETED, _, Some((inside, iport))) => {
            let (dst, dport) = r.dst.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
            time(&mut d);
            d.extend_from_slice(&r.b4.octets());
            d.extend_from_slice(&inside.octets());
            d.extend_from_slice(&r.outside.octets());
            d.push(r.proto);
            d.extend_from_slice(&iport.to_be_bytes());
            d.extend_from_slice(&r.port_lo.to_be_bytes());
            d.extend_from_slice(&dst.octets());
            d.extend_from_slice(&dport.to_be_bytes());
            TPL_MAPPING
        }
        _ => {
            time(&mut d);
            d.extend_from_slice(&r.b4.octets());
            d.extend_from_slice(&r.outside.octets());
            d.extend_from_slice(&r.port_lo.to_be_bytes());
            d.extend_from_slice(&r.port_hi.to_be_bytes());
            TPL_BLOCK
        }
    };
    Some((set(tpl, &d), records))
}

/// An IPFIX message: version 10, length, export time (s), sequence, observation domain 0.
pub fn message(sets: &[u8], export_secs: u32, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + sets.len());
    m.extend_from_slice(&10u16.to_be_bytes());
    m.extend_from_slice(&((16 + sets.len()) as u16).to_be_bytes());
    m.extend_from_slice(&export_secs.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    m.extend_from_slice(sets);
    m
}

/// The IPFIX sink's transport: each item is one data set; the header goes on at send time.
pub(crate) struct IpfixSink {
    sock: Datagrams,
    /// Data records sent so far (the next message's sequence number).
    seq: u32,
    templates_sent: Option<Instant>,
}

impl IpfixSink {
    pub(crate) fn new(sock: Datagrams) -> IpfixSink {
        IpfixSink {
            sock,
            seq: 0,
            templates_sent: None,
        }
    }
}

impl Transport for IpfixSink {
    fn deliver(&mut self, data: &[u8], records: u32) -> Delivery {
        let with_templates = self
            .templates_sent
            .is_none_or(|t| t.elapsed() >= TEMPLATE_EVERY);
        let mut sets = if with_templates {
            template_set()
        } else {
            Vec::new()
        };
        sets.extend_from_slice(data);
        let now = crate::clock::now_unix_ms().clamp(0, u32::MAX as i128 * 1000);
        let msg = message(&sets, (now / 1000) as u32, self.seq);
        let r = self.sock.send(&msg);
        if r == Delivery::Done {
            self.seq = self.seq.wrapping_add(records);
            if with_templates {
                self.templates_sent = Some(Instant::now());
            }
        }
        r
    }
    fn wait(&mut self, t: Duration) {
        self.sock.wait(t)
    }
    fn reopen(&mut self) {
        self.templates_sent = None;
    }
    fn last_error(&self) -> Option<String> {
        self.sock.last_error()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::natlog::record::tests::block;
    use dslite_common::maps::{EVENT_BLOCK_ALLOCATED, EVENT_BLOCK_RELEASED};
    use std::{collections::HashMap, net::Ipv6Addr};

    /// A decoded message: header fields, then each data record as (template, IE → bytes).
    #[derive(Debug)]
    pub(crate) struct Decoded {
        pub export_secs: u32,
        pub seq: u32,
        pub domain: u32,
        pub templates: HashMap<u16, Vec<(u16, u16)>>,
        pub records: Vec<(u16, HashMap<u16, Vec<u8>>)>,
    }

    fn be16(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[0], b[1]])
    }
    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Decode one message against `known` templates (RFC 7011 §3), checking every length.
    pub(crate) fn decode(m: &[u8], known: &mut HashMap<u16, Vec<(u16, u16)>>) -> Decoded {
        assert!(m.len() >= 16);
        assert_eq!(be16(m), 10, "version");
        assert_eq!(be16(&m[2..]) as usize, m.len(), "message length");
        let mut d = Decoded {
            export_secs: be32(&m[4..]),
            seq: be32(&m[8..]),
            domain: be32(&m[12..]),
            templates: HashMap::new(),
            records: Vec::new(),
        };
        let mut off = 16;
        while off < m.len() {
            let (id, len) = (be16(&m[off..]), be16(&m[off + 2..]) as usize);
            assert!(len >= 4 && off + len <= m.len(), "set length");
            let body = &m[off + 4..off + len];
            if id == 2 {
                let mut t = 0;
                while t < body.len() {
                    let (tid, n) = (be16(&body[t..]), be16(&body[t + 2..]) as usize);
                    assert!(tid >= 256);
                    let fields: Vec<(u16, u16)> = (0..n)
                        .map(|i| {
                            let f = t + 4 + i * 4;
                            (be16(&body[f..]), be16(&body[f + 2..]))
                        })
                        .collect();
                    d.templates.insert(tid, fields.clone());
                    known.insert(tid, fields);
                    t += 4 + n * 4;
                }
                assert_eq!(t, body.len(), "template set has no trailing bytes");
            } else {
                let fields = known.get(&id).expect("data set before its template");
                let rec_len: usize = fields.iter().map(|f| f.1 as usize).sum();
                assert_eq!(body.len() % rec_len, 0, "whole records, no padding");
                for rec in body.chunks(rec_len) {
                    let mut p = 0;
                    let mut vals = HashMap::new();
                    for (ie, l) in fields {
                        vals.insert(*ie, rec[p..p + *l as usize].to_vec());
                        p += *l as usize;
                    }
                    d.records.push((id, vals));
                }
            }
            off += len;
        }
        d
    }

    fn v4(b: &[u8]) -> Ipv4Addr {
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    fn v6(b: &[u8]) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap())
    }
    fn u64be(b: &[u8]) -> u64 {
        u64::from_be_bytes(b.try_into().unwrap())
    }

    /// Send `recs` through a real IPFIX sink to a UDP socket here; every message received.
    fn through_the_sink(recs: &[NatRecord]) -> (Vec<Vec<u8>>, u64, u64) {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dest = super::super::syslog::Dest::Udp(rx.local_addr().unwrap());
        let mut t = IpfixSink::new(Datagrams::new(dest));
        let before = crate::clock::now_unix_ms() as u64 / 1000;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        for r in recs {
            let Some((d, n)) = data_set(r) else { continue };
            assert_eq!(t.deliver(&d, n), Delivery::Done);
            let len = rx.recv(&mut buf).unwrap();
            out.push(buf[..len].to_vec());
        }
        let after = crate::clock::now_unix_ms() as u64 / 1000;
        (out, before, after)
    }

    #[test]
    fn every_event_decodes_to_its_rfc8158_fields() {
        // Records from 2001: the export time must be now, not theirs.
        let t0: i128 = 1_000_000_000_123;
        let a: Ipv6Addr = "2001:db8:a::2".parse().unwrap();
        let pool = Ipv4Addr::new(198, 51, 100, 1);
        let base = block(EVENT_BLOCK_ALLOCATED, t0, "2001:db8:a::2", 1024);
        let mapping = NatRecord {
            kind: EVENT_MAPPING_CREATED,
            port_lo: 1030,
            port_hi: 1030,
            proto: 17,
            inside: Some((Ipv4Addr::new(192, 168, 1, 10), 5000)),
            dst: Some((Ipv4Addr::new(203, 0, 113, 2), 53)),
            ..base.clone()
        };
        let quota = |l| NatRecord {
            kind: EVENT_QUOTA_EXCEEDED,
            outside: Ipv4Addr::UNSPECIFIED,
            port_lo: 0,
            port_hi: 0,
            limit: Some(l),
            ..base.clone()
        };
        let recs = vec![
            base.clone(),
            NatRecord {
                kind: EVENT_BLOCK_RELEASED,
                ..base.clone()
            },
            mapping.clone(),
            NatRecord {
                kind: EVENT_MAPPING_DELETED,
                dst: None,
                ..mapping.clone()
            },
            quota(Limit::Ports(2048)),
            quota(Limit::Sessions(100)),
            quota(Limit::Rate(50)),
            NatRecord {
                b4: Ipv6Addr::UNSPECIFIED,
                ..quota(Limit::Mappings(1 << 20))
            },
            NatRecord {
                kind: EVENT_ADDRESSES_EXHAUSTED,
                outside: Ipv4Addr::UNSPECIFIED,
                port_lo: 0,
                port_hi: 0,
                ..base.clone()
            },
            NatRecord {
                kind: EVENT_PORTS_EXHAUSTED,
                port_lo: 0,
                port_hi: 0,
                ..base.clone()
            },
        ];
        let (msgs, before, after) = through_the_sink(&recs);
        assert_eq!(
            msgs.len(),
            recs.len() - 1,
            "no IPFIX element for a rate limit"
        );
        let mut known = HashMap::new();
        let mut seq = 0;
        let mut decoded = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let d = decode(m, &mut known);
            assert!(
                (before..=after).contains(&(d.export_secs as u64)),
                "export time {} is the send time, not the record's",
                d.export_secs
            );
            assert_eq!(d.seq, seq, "sequence counts the data records before");
            assert_eq!(d.domain, 0);
            assert_eq!(
                !d.templates.is_empty(),
                i == 0,
                "templates with the first only"
            );
            seq += d.records.len() as u32;
            decoded.extend(d.records);
        }
        assert_eq!(known.len(), TEMPLATES.len());
        for (_, vals) in &decoded {
            assert_eq!(u64be(&vals[&OBSERVATION_TIME_MILLISECONDS]), t0 as u64);
        }
        let ev = |i: usize| decoded[i].1[&NAT_EVENT][0];
        // Blocks: natEvent 16/17, the B4, the address and the range.
        for (i, want) in [(0, 16), (1, 17)] {
            let (tpl, v) = &decoded[i];
            assert_eq!((*tpl, ev(i)), (TPL_BLOCK, want));
            assert_eq!(v6(&v[&SOURCE_IPV6_ADDRESS]), a);
            assert_eq!(v4(&v[&POST_NAT_SOURCE_IPV4_ADDRESS]), pool);
            assert_eq!(be16(&v[&PORT_RANGE_START]), 1024);
            assert_eq!(be16(&v[&PORT_RANGE_END]), 1535);
        }
        // Mappings: natEvent 8/9 (NAT44 BIB), inside and outside endpoints, destination.
        for (i, want, dst) in [
            (2, 8, Ipv4Addr::new(203, 0, 113, 2)),
            (3, 9, Ipv4Addr::UNSPECIFIED),
        ] {
            let (tpl, v) = &decoded[i];
            assert_eq!((*tpl, ev(i)), (TPL_MAPPING, want));
            assert_eq!(v6(&v[&SOURCE_IPV6_ADDRESS]), a);
            assert_eq!(v4(&v[&SOURCE_IPV4_ADDRESS]), Ipv4Addr::new(192, 168, 1, 10));
            assert_eq!(be16(&v[&SOURCE_TRANSPORT_PORT]), 5000);
            assert_eq!(v4(&v[&POST_NAT_SOURCE_IPV4_ADDRESS]), pool);
            assert_eq!(be16(&v[&POST_NAPT_SOURCE_TRANSPORT_PORT]), 1030);
            assert_eq!(v[&PROTOCOL_IDENTIFIER], [17]);
            assert_eq!(v4(&v[&DESTINATION_IPV4_ADDRESS]), dst);
        }
        // Per-user quotas: natEvent 13, natQuotaExceededEvent 3, the limit, the softwire.
        for (i, max) in [(4, 2048), (5, 100)] {
            let (tpl, v) = &decoded[i];
            assert_eq!((*tpl, ev(i)), (TPL_QUOTA_PER_USER, 13));
            assert_eq!(be32(&v[&NAT_QUOTA_EXCEEDED_EVENT]), 3);
            assert_eq!(be32(&v[&MAX_ENTRIES_PER_USER]), max);
            assert_eq!(v6(&v[&SOURCE_IPV6_ADDRESS]), a);
        }
        // The whole table: natQuotaExceededEvent 2 with maxBIBEntries.
        let (tpl, v) = &decoded[6];
        assert_eq!((*tpl, ev(6)), (TPL_QUOTA_BIB, 13));
        assert_eq!(be32(&v[&NAT_QUOTA_EXCEEDED_EVENT]), 2);
        assert_eq!(be32(&v[&MAX_BIB_ENTRIES]), 1 << 20);
        // No free block on any address: natEvent 3 with the pool.
        let (tpl, v) = &decoded[7];
        assert_eq!((*tpl, ev(7)), (TPL_ADDRESSES_EXHAUSTED, 3));
        assert_eq!(be32(&v[&NAT_POOL_ID]), POOL_ID);
        assert_eq!(v6(&v[&SOURCE_IPV6_ADDRESS]), a);
        // No free block on the subscriber's address: natEvent 12 per protocol.
        let mut protos = Vec::new();
        for (tpl, v) in &decoded[8..] {
            assert_eq!((*tpl, v[&NAT_EVENT][0]), (TPL_PORTS_EXHAUSTED, 12));
            assert_eq!(v4(&v[&POST_NAT_SOURCE_IPV4_ADDRESS]), pool);
            assert_eq!(v6(&v[&SOURCE_IPV6_ADDRESS]), a);
            protos.push(v[&PROTOCOL_IDENTIFIER][0]);
        }
        assert_eq!(protos, [6, 17, 1]);
        assert_eq!(decoded.len(), 11);
    }

    #[test]
    fn templates_come_again_after_a_reopen() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dest = super::super::syslog::Dest::Udp(rx.local_addr().unwrap());
        let mut t = IpfixSink::new(Datagrams::new(dest));
        let (d, n) = data_set(&block(EVENT_BLOCK_ALLOCATED, 5, "2001:db8::1", 1024)).unwrap();
        let mut buf = vec![0u8; 65536];
        let mut known = HashMap::new();
        let mut has_templates = || {
            let len = rx.recv(&mut buf).unwrap();
            !decode(&buf[..len], &mut known).templates.is_empty()
        };
        assert_eq!(t.deliver(&d, n), Delivery::Done);
        assert!(has_templates());
        assert_eq!(t.deliver(&d, n), Delivery::Done);
        assert!(!has_templates());
        t.reopen();
        assert_eq!(t.deliver(&d, n), Delivery::Done);
        assert!(has_templates(), "SIGHUP resends them");
    }
}
