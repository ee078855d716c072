//! `dslite whois`: who held a public address and port at a time, from the JSON-lines NAT
//! log (RFC 6888 §4). The reader takes any bytes: a line that is not a record (cut short,
//! not UTF-8, too long, a field out of range) is skipped and counted, never a panic, and a
//! file of any size is read in bounded memory per line.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use dslite_common::maps::{
    EVENT_BLOCK_ALLOCATED, EVENT_BLOCK_RELEASED, EVENT_MAPPING_CREATED, EVENT_MAPPING_DELETED,
};

use super::record::{proto_name, NatRecord};
use crate::clock::rfc3339_ms;

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

/// What closes an interval opened by a record: same kind of end, same holder and ports.
type IntervalKey = (u8, Ipv6Addr, u16, u16, u8, Option<(Ipv4Addr, u16)>);

fn interval_key(kind: u8, r: &NatRecord) -> IntervalKey {
    (kind, r.b4, r.port_lo, r.port_hi, r.proto, r.inside)
}

/// Every holder of `outside`:`port` at `at_ms`, from `records` in any order: blocks (from
/// their allocation to their release) and, where sessions were logged, mappings. An
/// interval ends at the first matching end record after it; one pass after a sort, so a
/// log of any length answers in O(n log n).
pub fn whois(records: &[NatRecord], outside: Ipv4Addr, port: u16, at_ms: i128) -> Vec<Holder> {
    let mut recs: Vec<&NatRecord> = records
        .iter()
        .filter(|r| r.outside == outside && r.port_lo <= port && port <= r.port_hi)
        .collect();
    recs.sort_by_key(|r| r.unix_ms);
    // Starts at or before `at_ms` still open, by the end that would close them.
    let mut open: HashMap<IntervalKey, Vec<&NatRecord>> = HashMap::new();
    let mut answers: Vec<(&NatRecord, Option<&NatRecord>)> = Vec::new();
    for r in recs {
        match r.kind {
            EVENT_BLOCK_ALLOCATED | EVENT_MAPPING_CREATED if r.unix_ms <= at_ms => {
                let end = if r.kind == EVENT_BLOCK_ALLOCATED {
                    EVENT_BLOCK_RELEASED
                } else {
                    EVENT_MAPPING_DELETED
                };
                open.entry(interval_key(end, r)).or_default().push(r);
            }
            EVENT_BLOCK_RELEASED | EVENT_MAPPING_DELETED => {
                if let Some(starts) = open.remove(&interval_key(r.kind, r)) {
                    // Ended before the time asked: not a holder then.
                    if r.unix_ms >= at_ms {
                        answers.extend(starts.into_iter().map(|s| (s, Some(r))));
                    }
                }
            }
            _ => {}
        }
    }
    answers.extend(open.into_values().flatten().map(|s| (s, None)));
    answers.sort_by_key(|(s, _)| (s.unix_ms, s.b4, s.port_lo, s.inside));
    answers
        .into_iter()
        .map(|(start, end)| {
            let mapping = start.kind == EVENT_MAPPING_CREATED;
            Holder {
                b4: start.b4.to_string(),
                ports: (!mapping).then(|| format!("{}-{}", start.port_lo, start.port_hi)),
                inside: start.inside.map(|(a, p)| format!("{a}:{p}")),
                proto: mapping.then(|| proto_name(start.proto)),
                from: rfc3339_ms(start.unix_ms),
                until: end.map(|e| rfc3339_ms(e.unix_ms)),
            }
        })
        .collect()
}

/// Lines longer than this are not records (ours are under 400 bytes): skipped without
/// being held in memory.
pub const MAX_LINE: usize = 64 * 1024;

/// What [`read_logs`] found.
#[derive(Debug, Default)]
pub struct Logs {
    pub records: Vec<NatRecord>,
    /// Lines that are not records, and where the first few are (`FILE:LINE: why`).
    pub skipped: usize,
    pub examples: Vec<String>,
}

/// One line into `buf` (without its newline), at most `max` bytes kept: `None` at the end,
/// `Some(false)` for a line that was longer (its bytes are dropped as they are read).
fn read_line<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let (mut any, mut fits) = (false, true);
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let (chunk, used, newline) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if fits && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else {
            fits = false;
            buf.clear();
        }
        r.consume(used);
        if newline {
            return Ok(Some(fits));
        }
    }
}

/// Every record in the JSON-lines files, rotated ones included, that `keep` accepts (whois
/// keeps only its address: memory follows the answer, not the log). Lines that are not
/// records are skipped and counted; a file that cannot be read is an error naming it.
pub fn read_logs(paths: &[PathBuf], mut keep: impl FnMut(&NatRecord) -> bool) -> Result<Logs> {
    let mut logs = Logs::default();
    let mut buf = Vec::new();
    for p in paths {
        let f =
            std::fs::File::open(p).with_context(|| format!("reading NAT log {}", p.display()))?;
        let mut r = BufReader::with_capacity(1 << 16, f);
        let mut n = 0u64;
        while let Some(fits) = read_line(&mut r, &mut buf, MAX_LINE)
            .with_context(|| format!("reading NAT log {}", p.display()))?
        {
            n += 1;
            let why = if !fits {
                format!("longer than {MAX_LINE} bytes")
            } else {
                match std::str::from_utf8(&buf) {
                    Err(_) => "not UTF-8".to_string(),
                    Ok(line) if line.trim().is_empty() => continue,
                    Ok(line) => match NatRecord::from_json(line.trim()) {
                        Ok(rec) => {
                            if keep(&rec) {
                                logs.records.push(rec);
                            }
                            continue;
                        }
                        Err(e) => e.to_string(),
                    },
                }
            };
            logs.skipped += 1;
            if logs.examples.len() < 3 {
                logs.examples.push(format!("{}:{n}: {why}", p.display()));
            }
        }
    }
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::natlog::record::tests::block;

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
        assert_eq!(at(5000, 1100), vec![a], "the release instant still counts");
        assert_eq!(at(7000, 1100), Vec::<String>::new(), "held down, nobody");
        assert_eq!(at(9500, 1100), vec![b]);
        assert_eq!(
            whois(&recs, ip, 1100, 3000)[0].until.as_deref(),
            Some("1970-01-01T00:00:05.000Z")
        );
        assert_eq!(whois(&recs, ip, 1100, 9500)[0].until, None);
        assert!(at(3000, 4000).is_empty());
        assert!(whois(&recs, Ipv4Addr::new(198, 51, 100, 2), 1100, 3000).is_empty());
    }

    #[test]
    fn the_reader_skips_and_names_what_is_not_a_record() {
        let dir = std::env::temp_dir().join(format!("dslite-whois-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let good = block(EVENT_BLOCK_ALLOCATED, 1000, "2001:db8:a::2", 1024).to_json();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(format!("{good}\n\n").as_bytes());
        bytes.extend_from_slice(b"\xff\xfe not utf-8\n");
        bytes.extend_from_slice(&vec![b'{'; MAX_LINE + 10]);
        bytes.extend_from_slice(b"\n");
        bytes.extend_from_slice(&good.as_bytes()[..good.len() / 2]);
        bytes.extend_from_slice(format!("\n{good}\r\n{good}").as_bytes());
        let p = dir.join("nat.log");
        std::fs::write(&p, &bytes).unwrap();
        let logs = read_logs(std::slice::from_ref(&p), |_| true).unwrap();
        assert_eq!(
            logs.records.len(),
            3,
            "the last line needs no newline; CRLF is fine"
        );
        assert_eq!(logs.skipped, 3);
        assert_eq!(
            logs.examples,
            vec![
                format!("{}:3: not UTF-8", p.display()),
                format!("{}:4: longer than {MAX_LINE} bytes", p.display()),
                format!("{}:5: not a JSON object", p.display()),
            ]
        );
        let only_other = read_logs(std::slice::from_ref(&p), |r| r.port_lo == 1).unwrap();
        assert!(only_other.records.is_empty() && only_other.skipped == 3);
        let e = read_logs(&[dir.join("missing")], |_| true).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
