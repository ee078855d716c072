//! The NAT log (RFC 6888 §4, checklist 50-53): who held which public address and ports, when.
//!
//! Records come from the kernel's EVENTS ring buffer (port blocks allocated; mappings created,
//! with `--log-sessions`) and from the controller's sweep (blocks released, mappings deleted,
//! quota and exhaustion refusals). Each goes to every configured sink:
//!
//! - a JSON-lines file (`--nat-log`), appended with one `write` per record (O_APPEND, so a
//!   record is whole in the kernel's page cache before the next event is consumed: a killed
//!   controller loses none), reopened on SIGHUP for logrotate;
//! - RFC 5424 syslog over UDP or a unix datagram socket (`--syslog`);
//! - IPFIX (RFC 7011) with the RFC 8158 information elements over UDP (`--ipfix`).
//!
//! The JSON-lines file is also what `dslite whois` reads.

use std::{
    fs::File,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use dslite_common::maps::{
    NatEvent, EVENT_BLOCK_ALLOCATED, EVENT_BLOCK_RELEASED, EVENT_MAPPING_CREATED,
    EVENT_MAPPING_DELETED, EVENT_PORTS_EXHAUSTED, EVENT_QUOTA_EXCEEDED,
};
use serde_json::json;

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns: converts `bpf_ktime_get_ns` to wall time.
pub fn realtime_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime into a local struct.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

/// RFC 3339 UTC with milliseconds, from Unix milliseconds.
pub fn rfc3339_ms(unix_ms: i128) -> String {
    let ms = unix_ms.rem_euclid(1000);
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Unix milliseconds from RFC 3339 (`2026-11-26T07:00:00Z`, fractions and offsets allowed).
pub fn parse_rfc3339_ms(s: &str) -> Result<i128> {
    let bad = || anyhow::anyhow!("'{s}' is not an RFC 3339 time (like 2026-11-26T07:00:00Z)");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i128> {
        s.get(r).and_then(|x| x.parse().ok()).ok_or_else(bad)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut ms = 0i128;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let f = &frac[..digits.min(3)];
        ms = f.parse::<i128>().map_err(|_| bad())? * 10i128.pow(3 - f.len() as u32);
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let v = o[1..3].parse::<i128>().map_err(|_| bad())? * 60
                + o[4..6].parse::<i128>().map_err(|_| bad())?;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return Err(bad()),
    };
    // Days from civil (H. Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Ok(secs * 1000 + ms)
}

/// One NAT log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatRecord {
    pub unix_ms: i128,
    /// RFC 8158 natEvent (`EVENT_*`).
    pub kind: u8,
    pub b4: Ipv6Addr,
    /// Public address (unspecified for a quota event).
    pub outside: Ipv4Addr,
    /// The block's ports, or the mapping's outside port twice.
    pub port_lo: u16,
    pub port_hi: u16,
    /// Mapping events only.
    pub proto: u8,
    pub inside: Option<(Ipv4Addr, u16)>,
    pub dst: Option<(Ipv4Addr, u16)>,
}

pub fn event_name(kind: u8) -> &'static str {
    match kind {
        EVENT_BLOCK_ALLOCATED => "block-allocated",
        EVENT_BLOCK_RELEASED => "block-released",
        EVENT_MAPPING_CREATED => "mapping-created",
        EVENT_MAPPING_DELETED => "mapping-deleted",
        EVENT_QUOTA_EXCEEDED => "quota-exceeded",
        EVENT_PORTS_EXHAUSTED => "ports-exhausted",
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
    ]
    .into_iter()
    .find(|k| event_name(*k) == name)
}

fn proto_name(p: u8) -> String {
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

impl NatRecord {
    /// A record from the kernel's ring buffer; `offset` from [`realtime_offset_ns`].
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
        }
    }

    /// One JSON line (no newline).
    pub fn to_json(&self) -> String {
        let mut v = json!({
            "ts": rfc3339_ms(self.unix_ms),
            "event": event_name(self.kind),
            "b4": self.b4.to_string(),
        });
        let m = v.as_object_mut().expect("an object");
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
        v.to_string()
    }

    /// Parse a line written by [`NatRecord::to_json`]; `None` for anything else.
    pub fn from_json(line: &str) -> Option<NatRecord> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let kind = event_kind(v["event"].as_str()?)?;
        let endpoint = |k: &str| -> Option<(Ipv4Addr, u16)> {
            let (a, p) = v[k].as_str()?.rsplit_once(':')?;
            Some((a.parse().ok()?, p.parse().ok()?))
        };
        let (port_lo, port_hi) = match (v["ports"].as_str(), v["port"].as_u64()) {
            (Some(r), _) => {
                let (a, b) = r.split_once('-')?;
                (a.parse().ok()?, b.parse().ok()?)
            }
            (None, Some(p)) => (p as u16, p as u16),
            _ => (0, 0),
        };
        Some(NatRecord {
            unix_ms: parse_rfc3339_ms(v["ts"].as_str()?).ok()?,
            kind,
            b4: v["b4"].as_str()?.parse().ok()?,
            outside: v["outside"]
                .as_str()
                .map_or(Some(Ipv4Addr::UNSPECIFIED), |s| s.parse().ok())?,
            port_lo,
            port_hi,
            proto: v["proto"].as_str().and_then(proto_number).unwrap_or(0),
            inside: endpoint("inside"),
            dst: endpoint("dst"),
        })
    }

    /// An RFC 5424 message: facility local0, severity info, structured data `natlog`, the
    /// JSON line as the message.
    pub fn to_syslog(&self, host: &str) -> String {
        format!(
            "<134>1 {} {host} dslite {} natlog [natlog@32473 event=\"{}\" b4=\"{}\"] {}",
            rfc3339_ms(self.unix_ms),
            std::process::id(),
            event_name(self.kind),
            self.b4,
            self.to_json()
        )
    }
}

/// Where records go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sinks {
    pub file: Option<PathBuf>,
    /// `udp:HOST:PORT` or `unix:PATH`.
    pub syslog: Option<String>,
    pub ipfix: Option<SocketAddr>,
}

enum Syslog {
    Udp(UdpSocket, SocketAddr),
    Unix(UnixDatagram, PathBuf),
}

/// The open sinks.
pub struct NatLog {
    cfg: Sinks,
    file: Option<File>,
    syslog: Option<Syslog>,
    ipfix: Option<Ipfix>,
    host: String,
    /// Records a sink failed to take (logged once per failure streak).
    pub failures: u64,
    failing: bool,
}

fn open_append(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening NAT log {}", path.display()))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname into a local buffer of the given size.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "-".into();
    }
    let n = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

impl NatLog {
    pub fn open(cfg: &Sinks) -> Result<NatLog> {
        let syslog = match cfg.syslog.as_deref() {
            None => None,
            Some(s) => Some(match s.split_once(':') {
                Some(("udp", to)) => {
                    let to: SocketAddr = to
                        .parse()
                        .with_context(|| format!("--syslog udp:{to}: not HOST:PORT"))?;
                    let bind: SocketAddr = if to.is_ipv4() {
                        "0.0.0.0:0".parse()?
                    } else {
                        "[::]:0".parse()?
                    };
                    Syslog::Udp(UdpSocket::bind(bind)?, to)
                }
                Some(("unix", path)) => Syslog::Unix(UnixDatagram::unbound()?, path.into()),
                _ => bail!("--syslog '{s}' is not udp:HOST:PORT or unix:PATH"),
            }),
        };
        Ok(NatLog {
            file: cfg.file.as_deref().map(open_append).transpose()?,
            syslog,
            ipfix: cfg.ipfix.map(Ipfix::new).transpose()?,
            cfg: cfg.clone(),
            host: hostname(),
            failures: 0,
            failing: false,
        })
    }

    /// Send one record everywhere; failures are counted and logged once per streak. With no
    /// sink configured, records go to the controller's own log (target `natlog`).
    pub fn emit(&mut self, r: &NatRecord) {
        if self.file.is_none() && self.syslog.is_none() && self.ipfix.is_none() {
            log::info!(target: "natlog", "{}", r.to_json());
            return;
        }
        let mut ok = true;
        if let Some(f) = &mut self.file {
            ok &= f.write_all(format!("{}\n", r.to_json()).as_bytes()).is_ok();
        }
        match &self.syslog {
            Some(Syslog::Udp(s, to)) => {
                ok &= s.send_to(r.to_syslog(&self.host).as_bytes(), to).is_ok()
            }
            Some(Syslog::Unix(s, p)) => {
                ok &= s.send_to(r.to_syslog(&self.host).as_bytes(), p).is_ok()
            }
            None => {}
        }
        if let Some(x) = &mut self.ipfix {
            ok &= x.send(r).is_ok();
        }
        if !ok {
            self.failures += 1;
            if !self.failing {
                log::warn!(
                    "NAT log: a sink refused a record (counting; logged once until one succeeds)"
                );
            }
        }
        self.failing = !ok;
    }

    /// SIGHUP: reopen the file (logrotate moved it away) and resend IPFIX templates.
    pub fn reopen(&mut self) -> Result<()> {
        if let Some(p) = &self.cfg.file {
            self.file = Some(open_append(p)?);
        }
        if let Some(x) = &mut self.ipfix {
            x.templates_sent_ms = 0;
        }
        Ok(())
    }
}

// ---- IPFIX (RFC 7011) with RFC 8158 information elements ------------------------------------

/// Template IDs.
const TPL_BLOCK: u16 = 256;
const TPL_MAPPING: u16 = 257;
const TPL_SOFTWIRE: u16 = 258;

/// (information element, length) per template. IANA IPFIX IEs: observationTimeMilliseconds
/// 323, natEvent 230, sourceIPv6Address 27, postNATSourceIPv4Address 225, portRangeStart
/// 361, portRangeEnd 362, sourceIPv4Address 8, protocolIdentifier 4, sourceTransportPort 7,
/// postNAPTSourceTransportPort 227, destinationIPv4Address 12, destinationTransportPort 11.
const FIELDS_BLOCK: &[(u16, u16)] = &[(323, 8), (230, 1), (27, 16), (225, 4), (361, 2), (362, 2)];
const FIELDS_MAPPING: &[(u16, u16)] = &[
    (323, 8),
    (230, 1),
    (27, 16),
    (8, 4),
    (225, 4),
    (4, 1),
    (7, 2),
    (227, 2),
    (12, 4),
    (11, 2),
];
const FIELDS_SOFTWIRE: &[(u16, u16)] = &[(323, 8), (230, 1), (27, 16)];

/// Templates are resent this often over UDP (RFC 7011 §8.4).
const TEMPLATE_EVERY_MS: i128 = 60_000;

struct Ipfix {
    sock: UdpSocket,
    to: SocketAddr,
    seq: u32,
    templates_sent_ms: i128,
}

impl Ipfix {
    fn new(to: SocketAddr) -> Result<Ipfix> {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        Ok(Ipfix {
            sock: UdpSocket::bind(bind)?,
            to,
            seq: 0,
            templates_sent_ms: 0,
        })
    }

    fn send(&mut self, r: &NatRecord) -> std::io::Result<()> {
        let mut sets = Vec::new();
        if r.unix_ms - self.templates_sent_ms >= TEMPLATE_EVERY_MS || self.templates_sent_ms == 0 {
            sets.extend(template_set());
            self.templates_sent_ms = r.unix_ms.max(1);
        }
        sets.extend(data_set(r));
        let msg = message(&sets, r.unix_ms, self.seq);
        self.seq = self.seq.wrapping_add(1);
        self.sock.send_to(&msg, self.to).map(|_| ())
    }
}

/// The template set (ID 2) with all three templates.
pub fn template_set() -> Vec<u8> {
    let mut body = Vec::new();
    for (id, fields) in [
        (TPL_BLOCK, FIELDS_BLOCK),
        (TPL_MAPPING, FIELDS_MAPPING),
        (TPL_SOFTWIRE, FIELDS_SOFTWIRE),
    ] {
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        for (ie, len) in fields {
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

/// One data set holding `r` in the template its event uses.
pub fn data_set(r: &NatRecord) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(r.unix_ms as u64).to_be_bytes());
    d.push(r.kind);
    d.extend_from_slice(&r.b4.octets());
    let tpl = match (r.kind, r.inside) {
        (EVENT_QUOTA_EXCEEDED | EVENT_PORTS_EXHAUSTED, _) => TPL_SOFTWIRE,
        (_, Some((inside, iport))) => {
            let (dst, dport) = r.dst.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
            d.extend_from_slice(&inside.octets());
            d.extend_from_slice(&r.outside.octets());
            d.push(r.proto);
            d.extend_from_slice(&iport.to_be_bytes());
            d.extend_from_slice(&r.port_lo.to_be_bytes());
            d.extend_from_slice(&dst.octets());
            d.extend_from_slice(&dport.to_be_bytes());
            TPL_MAPPING
        }
        (_, None) => {
            d.extend_from_slice(&r.outside.octets());
            d.extend_from_slice(&r.port_lo.to_be_bytes());
            d.extend_from_slice(&r.port_hi.to_be_bytes());
            TPL_BLOCK
        }
    };
    set(tpl, &d)
}

/// An IPFIX message: version 10, length, export time, sequence, observation domain 0.
pub fn message(sets: &[u8], unix_ms: i128, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + sets.len());
    m.extend_from_slice(&10u16.to_be_bytes());
    m.extend_from_slice(&((16 + sets.len()) as u16).to_be_bytes());
    m.extend_from_slice(&((unix_ms / 1000) as u32).to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    m.extend_from_slice(sets);
    m
}

// ---- whois ------------------------------------------------------------------------------------

/// Who held a public address and port at a time, from the JSON-lines NAT log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub b4: String,
    /// `lo-hi`, for a block answer.
    pub ports: Option<String>,
    /// `addr:port` and protocol, for a mapping answer (needs `--log-sessions`).
    pub inside: Option<String>,
    pub proto: Option<String>,
    pub from: String,
    /// `None`: still held when the log ends.
    pub until: Option<String>,
}

/// Every holder of `outside`:`port` at `at_ms`, from `records` in any order: blocks (from
/// their allocation to their release) and, where sessions were logged, mappings.
pub fn whois(records: &[NatRecord], outside: Ipv4Addr, port: u16, at_ms: i128) -> Vec<Holder> {
    let mut recs: Vec<&NatRecord> = records
        .iter()
        .filter(|r| r.outside == outside && r.port_lo <= port && port <= r.port_hi)
        .collect();
    recs.sort_by_key(|r| r.unix_ms);
    let mut out = Vec::new();
    for (i, start) in recs.iter().enumerate() {
        let end_kind = match start.kind {
            EVENT_BLOCK_ALLOCATED => EVENT_BLOCK_RELEASED,
            EVENT_MAPPING_CREATED => EVENT_MAPPING_DELETED,
            _ => continue,
        };
        if start.unix_ms > at_ms {
            continue;
        }
        let end = recs[i + 1..].iter().find(|r| {
            r.kind == end_kind
                && r.b4 == start.b4
                && r.port_lo == start.port_lo
                && r.port_hi == start.port_hi
                && r.proto == start.proto
                && r.inside == start.inside
        });
        if end.is_some_and(|e| e.unix_ms < at_ms) {
            continue;
        }
        let mapping = start.kind == EVENT_MAPPING_CREATED;
        out.push(Holder {
            b4: start.b4.to_string(),
            ports: (!mapping).then(|| format!("{}-{}", start.port_lo, start.port_hi)),
            inside: start.inside.map(|(a, p)| format!("{a}:{p}")),
            proto: mapping.then(|| proto_name(start.proto)),
            from: rfc3339_ms(start.unix_ms),
            until: end.map(|e| rfc3339_ms(e.unix_ms)),
        });
    }
    out
}

/// Every record in the JSON-lines files, rotated ones included (lines that are not records are
/// skipped and counted).
pub fn read_logs(paths: &[PathBuf]) -> Result<(Vec<NatRecord>, usize)> {
    let mut recs = Vec::new();
    let mut skipped = 0;
    for p in paths {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("reading NAT log {}", p.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match NatRecord::from_json(line) {
                Some(r) => recs.push(r),
                None => skipped += 1,
            }
        }
    }
    Ok((recs, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(kind: u8, ms: i128, b4: &str, lo: u16) -> NatRecord {
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
        }
    }

    #[test]
    fn rfc3339_known_instants_both_ways() {
        for (ms, s) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_795_664_096_789, "2026-11-26T03:34:56.789Z"),
        ] {
            assert_eq!(rfc3339_ms(ms), s);
            assert_eq!(parse_rfc3339_ms(s).unwrap(), ms);
        }
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T12:34:56.7+09:00").unwrap(),
            1_795_664_096_700
        );
        assert!(parse_rfc3339_ms("2026-13-01T00:00:00Z").is_err());
        assert!(parse_rfc3339_ms("yesterday").is_err());
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
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "block-allocated");
        assert_eq!(v["ports"], "1024-1535");
        assert_eq!(v["ts"], "2026-11-26T03:34:56.789Z");
        assert_eq!(NatRecord::from_json(&line), Some(b));
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
        assert_eq!(NatRecord::from_json(&line), Some(m));
        assert_eq!(NatRecord::from_json("not json"), None);
    }

    #[test]
    fn whois_finds_the_holder_at_each_time() {
        let a = "2001:db8:a::2";
        let b = "2001:db8:b::2";
        let recs = vec![
            block(EVENT_BLOCK_ALLOCATED, 1000, a, 1024),
            block(EVENT_BLOCK_RELEASED, 5000, a, 1024),
            block(EVENT_BLOCK_ALLOCATED, 9000, b, 1024),
            block(EVENT_BLOCK_ALLOCATED, 2000, b, 1536),
        ];
        let ip = Ipv4Addr::new(198, 51, 100, 1);
        let at = |ms, port| -> Vec<String> {
            whois(&recs, ip, port, ms)
                .into_iter()
                .map(|h| h.b4)
                .collect()
        };
        assert_eq!(at(500, 1100), Vec::<String>::new());
        assert_eq!(at(3000, 1100), vec![a]);
        assert_eq!(at(3000, 1600), vec![b]);
        assert_eq!(at(7000, 1100), Vec::<String>::new(), "held down, nobody");
        assert_eq!(at(9500, 1100), vec![b]);
        assert_eq!(
            whois(&recs, ip, 1100, 3000)[0].until.as_deref(),
            Some("1970-01-01T00:00:05.000Z")
        );
        assert!(at(3000, 4000).is_empty());
    }

    #[test]
    fn ipfix_messages_follow_their_templates() {
        let t = template_set();
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 2);
        assert_eq!(u16::from_be_bytes([t[2], t[3]]) as usize, t.len());
        let r = block(
            EVENT_BLOCK_ALLOCATED,
            1_795_664_096_789,
            "2001:db8:a::2",
            1024,
        );
        let d = data_set(&r);
        assert_eq!(u16::from_be_bytes([d[0], d[1]]), TPL_BLOCK);
        let want: u16 = FIELDS_BLOCK.iter().map(|f| f.1).sum();
        assert_eq!(d.len(), 4 + want as usize);
        assert_eq!(d[4 + 8], EVENT_BLOCK_ALLOCATED);
        let m = message(&d, r.unix_ms, 7);
        assert_eq!(u16::from_be_bytes([m[0], m[1]]), 10);
        assert_eq!(u16::from_be_bytes([m[2], m[3]]) as usize, m.len());
    }

    #[test]
    fn syslog_lines_are_rfc5424() {
        let r = block(EVENT_BLOCK_RELEASED, 0, "2001:db8:a::2", 1024);
        let s = r.to_syslog("aftr1");
        assert!(
            s.starts_with("<134>1 1970-01-01T00:00:00.000Z aftr1 dslite "),
            "{s}"
        );
        assert!(s.contains("natlog [natlog@32473 event=\"block-released\""));
        assert!(s.ends_with(&r.to_json()));
    }
}
