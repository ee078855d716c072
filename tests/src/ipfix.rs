//! A test IPFIX collector's decoder (RFC 7011): templates, then the data records that use
//! them, reduced to the NAT fields the tests check. Independent of the exporter's code.

use std::{collections::HashMap, net::Ipv6Addr};

/// One decoded data record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub template: u16,
    /// natEvent (IE 230).
    pub nat_event: u8,
    /// sourceIPv6Address (IE 27): the B4.
    pub b4: String,
    /// postNAPTSourceTransportPort (IE 227), for mappings.
    pub post_nat_port: Option<u16>,
    /// portRangeStart / portRangeEnd (IEs 361/362), for blocks.
    pub port_range: Option<(u16, u16)>,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Decode messages in order (templates must precede the data that uses them).
pub fn decode(messages: &[Vec<u8>]) -> Vec<Event> {
    let mut templates: HashMap<u16, Vec<(u16, u16)>> = HashMap::new();
    let mut out = Vec::new();
    for m in messages {
        assert!(m.len() >= 16 && be16(m) == 10, "IPFIX version 10");
        assert_eq!(be16(&m[2..]) as usize, m.len(), "message length");
        let mut off = 16;
        while off + 4 <= m.len() {
            let (id, len) = (be16(&m[off..]), be16(&m[off + 2..]) as usize);
            assert!(len >= 4 && off + len <= m.len(), "set length");
            let body = &m[off + 4..off + len];
            if id == 2 {
                let mut t = 0;
                while t + 4 <= body.len() {
                    let (tid, n) = (be16(&body[t..]), be16(&body[t + 2..]) as usize);
                    let fields = (0..n)
                        .map(|i| {
                            let f = t + 4 + i * 4;
                            (be16(&body[f..]), be16(&body[f + 2..]))
                        })
                        .collect();
                    templates.insert(tid, fields);
                    t += 4 + n * 4;
                }
            } else if let Some(fields) = templates.get(&id) {
                let rec_len: usize = fields.iter().map(|f| f.1 as usize).sum();
                let mut r = 0;
                while r + rec_len <= body.len() {
                    let mut e = Event {
                        template: id,
                        ..Default::default()
                    };
                    let mut p = r;
                    let mut range = (None, None);
                    for (ie, l) in fields {
                        let v = &body[p..p + *l as usize];
                        match ie {
                            230 => e.nat_event = v[0],
                            27 => {
                                e.b4 = Ipv6Addr::from(<[u8; 16]>::try_from(v).unwrap()).to_string()
                            }
                            227 => e.post_nat_port = Some(be16(v)),
                            361 => range.0 = Some(be16(v)),
                            362 => range.1 = Some(be16(v)),
                            _ => {}
                        }
                        p += *l as usize;
                    }
                    if let (Some(a), Some(b)) = range {
                        e.port_range = Some((a, b));
                    }
                    out.push(e);
                    r += rec_len;
                }
            }
            off += len;
        }
    }
    out
}
