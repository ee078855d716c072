//! Seeded, bounded fuzzing of everything that reads a NAT log or a time from outside: the
//! record parser, the RFC 3339 parser, the file reader and whois. Random and mutated
//! inputs, thousands of each, the same every run; each must give an answer or a named
//! error, never a panic, and what is accepted must be consistent.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    panic::{catch_unwind, AssertUnwindSafe},
};

use dslite_common::maps::{
    EVENT_BLOCK_ALLOCATED, EVENT_BLOCK_RELEASED, EVENT_MAPPING_CREATED, EVENT_MAPPING_DELETED,
};

use super::{read_logs, record::tests::block, whois, whois::MAX_LINE, Holder, Limit, NatRecord};
use crate::clock::{parse_rfc3339_ms, rfc3339_ms};

/// splitmix64: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Pieces that break parsers: numbers at and past their limits, other types, odd text.
const TOKENS: &[&str] = &[
    "-",
    ":",
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ",",
    "null",
    "true",
    "[]",
    "{}",
    "0",
    "-0",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "1e400",
    "-1",
    "1.5",
    "NaN",
    "é",
    "💥",
    "\u{0}",
    "\\u0000",
    "\\ud800",
    "::",
    "::ffff:1.2.3.4",
    "255.255.255.255",
    "999.1.1.1",
    "T",
    "Z",
    "z",
    "+",
    "+09:00",
    "-00:00",
    "+24:00",
    "60",
    "23:59:60",
    ".",
    ".123456789",
    "9999",
    "10000",
    "0000",
    "-009999",
    "[Asia/Tokyo]",
    " ",
    "\t",
    "\r",
    "\n",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    // Often one change (to stay near valid input), sometimes several.
    let rounds = if rng.below(2) == 0 {
        1
    } else {
        2 + rng.below(3)
    };
    for _ in 0..rounds {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(v.len());
                v.drain(at.min(end)..end);
            }
            2 => {
                let t = rng.pick(TOKENS).as_bytes();
                v.splice(at..at, t.iter().copied());
            }
            3 => v.truncate(at),
            4 if !v.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(v.len());
                let piece = v[at.min(end)..end].to_vec();
                v.splice(at..at, piece);
            }
            5 => {
                let end = (at + rng.below(6)).min(v.len());
                let t = rng.pick(TOKENS).as_bytes();
                v.splice(at..end, t.iter().copied());
            }
            _ => {
                let b = rng.next() as u8;
                v.insert(at, b);
            }
        }
    }
    v
}

/// One valid line of each kind the log holds.
fn seeds() -> Vec<String> {
    let b = block(
        EVENT_BLOCK_ALLOCATED,
        1_795_664_096_789,
        "2001:db8:a::2",
        1024,
    );
    let m = NatRecord {
        kind: EVENT_MAPPING_CREATED,
        port_lo: 1030,
        port_hi: 1030,
        proto: 17,
        inside: Some((Ipv4Addr::new(192, 168, 1, 10), 5000)),
        dst: Some((Ipv4Addr::new(203, 0, 113, 2), 53)),
        ..b.clone()
    };
    let q = NatRecord {
        kind: dslite_common::maps::EVENT_QUOTA_EXCEEDED,
        outside: Ipv4Addr::UNSPECIFIED,
        port_lo: 0,
        port_hi: 0,
        limit: Some(Limit::Ports(2048)),
        ..b.clone()
    };
    vec![
        b.to_json(),
        m.to_json(),
        q.to_json(),
        NatRecord {
            kind: EVENT_MAPPING_DELETED,
            dst: None,
            ..m.clone()
        }
        .to_json(),
        NatRecord {
            kind: dslite_common::maps::EVENT_PORTS_EXHAUSTED,
            port_lo: 0,
            port_hi: 0,
            ..b.clone()
        }
        .to_json(),
    ]
}

/// Run `f` on `input`; a panic fails the test naming the input.
fn no_panic<T>(what: &str, input: &[u8], f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => panic!("{what} panicked on {:?}", String::from_utf8_lossy(input)),
    }
}

/// What is accepted is whole: it writes back to the same record, and carries what its
/// kind needs.
fn check_accepted(line: &str, r: &NatRecord) {
    assert_eq!(
        NatRecord::from_json(&r.to_json()).as_ref(),
        Ok(r),
        "accepted {line:?} but its record does not round-trip"
    );
    match r.kind {
        EVENT_BLOCK_ALLOCATED | EVENT_BLOCK_RELEASED => {
            assert!(
                r.port_lo <= r.port_hi && !r.outside.is_unspecified(),
                "{line}"
            )
        }
        EVENT_MAPPING_CREATED | EVENT_MAPPING_DELETED => {
            assert!(r.inside.is_some() && r.port_lo == r.port_hi, "{line}")
        }
        _ => assert!(r.inside.is_none() && r.port_hi == 0, "{line}"),
    }
}

#[test]
fn the_record_parser_survives_random_and_mutated_lines() {
    let mut rng = Rng(0x5eed_0001);
    let seeds = seeds();
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..30_000 {
        let bytes = if i % 5 == 0 {
            (0..rng.below(200)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = rng.pick(&seeds).clone();
            mutate(&mut rng, seed.as_bytes())
        };
        let line = String::from_utf8_lossy(&bytes).into_owned();
        match no_panic("from_json", &bytes, || NatRecord::from_json(&line)) {
            Ok(r) => {
                check_accepted(&line, &r);
                accepted += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
    }
    // The mutations must have exercised both sides.
    assert!(
        accepted > 300 && refused > 10_000,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn the_time_parser_survives_random_and_mutated_times() {
    let mut rng = Rng(0x5eed_0002);
    let alphabet = b"0123456789-:.TtZz+ \x00\xc3\xa9";
    let seeds = [
        "2026-11-26T07:00:00Z",
        "2026-11-26T16:04:05+09:00",
        "2000-02-29T23:59:59.999999999-12:30",
        "1970-01-01t00:00:00.1z",
    ];
    let mut ok = 0;
    for i in 0..30_000 {
        let bytes: Vec<u8> = if i % 3 == 0 {
            (0..rng.below(40)).map(|_| *rng.pick(alphabet)).collect()
        } else {
            let seed = *rng.pick(&seeds);
            mutate(&mut rng, seed.as_bytes())
        };
        let s = String::from_utf8_lossy(&bytes).into_owned();
        match no_panic("parse_rfc3339_ms", &bytes, || parse_rfc3339_ms(&s)) {
            Ok(ms) => {
                ok += 1;
                let back = rfc3339_ms(ms);
                assert_eq!(parse_rfc3339_ms(&back).unwrap(), ms, "{s:?} -> {back}");
            }
            Err(e) => assert!(e.to_string().contains("not an RFC 3339 time"), "{e}"),
        }
    }
    assert!(ok > 500, "{ok} accepted");
    // Every millisecond of five centuries either way writes and reads back exactly.
    for _ in 0..20_000 {
        let ms = (rng.next() % 32_000_000_000_000) as i128 - 16_000_000_000_000;
        let s = rfc3339_ms(ms);
        assert_eq!(parse_rfc3339_ms(&s).unwrap(), ms, "{s}");
    }
}

/// The reader's answer, computed line by line the slow way.
fn expected_counts(data: &[u8]) -> (usize, usize) {
    let (mut recs, mut skipped) = (0, 0);
    let mut lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    if data.ends_with(b"\n") || data.is_empty() {
        lines.pop();
    }
    for l in lines {
        if l.len() > MAX_LINE {
            skipped += 1;
            continue;
        }
        match std::str::from_utf8(l) {
            Err(_) => skipped += 1,
            Ok(s) if s.trim().is_empty() => {}
            Ok(s) => match NatRecord::from_json(s.trim()) {
                Ok(_) => recs += 1,
                Err(_) => skipped += 1,
            },
        }
    }
    (recs, skipped)
}

#[test]
fn the_file_reader_survives_any_bytes() {
    let mut rng = Rng(0x5eed_0003);
    let dir = std::env::temp_dir().join(format!("dslite-fuzz-read-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = seeds();
    for f in 0..40 {
        let mut data = Vec::new();
        for _ in 0..rng.below(400) {
            match rng.below(10) {
                0 => data.extend((0..rng.below(300)).map(|_| rng.next() as u8)),
                1 if f % 8 == 0 => data.extend(std::iter::repeat_n(b'x', MAX_LINE + rng.below(3))),
                2 => data.extend_from_slice(rng.pick(&seeds).as_bytes()),
                _ => {
                    let seed = rng.pick(&seeds).clone();
                    data.extend(mutate(&mut rng, seed.as_bytes()))
                }
            }
            if rng.below(20) != 0 {
                data.push(b'\n');
            }
        }
        let p = dir.join(format!("nat.log.{f}"));
        std::fs::write(&p, &data).unwrap();
        let logs = no_panic("read_logs", &data, || {
            read_logs(std::slice::from_ref(&p), |_| true)
        })
        .unwrap();
        assert_eq!(
            (logs.records.len(), logs.skipped),
            expected_counts(&data),
            "file {f}"
        );
        assert!(logs.examples.len() <= 3);
        // And whois on whatever came out.
        for _ in 0..20 {
            let port = rng.next() as u16;
            let at = (rng.next() % 4_000_000_000_000) as i128;
            no_panic("whois", &data, || {
                whois(&logs.records, Ipv4Addr::new(198, 51, 100, 1), port, at)
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// whois the slow way (each start looks ahead for its end): what the one-pass version must
/// agree with.
fn whois_reference(recs: &[NatRecord], outside: Ipv4Addr, port: u16, at: i128) -> Vec<Holder> {
    let mut rs: Vec<&NatRecord> = recs
        .iter()
        .filter(|r| r.outside == outside && r.port_lo <= port && port <= r.port_hi)
        .collect();
    rs.sort_by_key(|r| r.unix_ms);
    let mut out = Vec::new();
    for (i, s) in rs.iter().enumerate() {
        let end_kind = match s.kind {
            EVENT_BLOCK_ALLOCATED => EVENT_BLOCK_RELEASED,
            EVENT_MAPPING_CREATED => EVENT_MAPPING_DELETED,
            _ => continue,
        };
        if s.unix_ms > at {
            continue;
        }
        let end = rs[i + 1..].iter().find(|r| {
            r.kind == end_kind
                && r.b4 == s.b4
                && (r.port_lo, r.port_hi, r.proto, r.inside)
                    == (s.port_lo, s.port_hi, s.proto, s.inside)
        });
        if end.is_some_and(|e| e.unix_ms < at) {
            continue;
        }
        let mapping = s.kind == EVENT_MAPPING_CREATED;
        out.push(Holder {
            b4: s.b4.to_string(),
            ports: (!mapping).then(|| format!("{}-{}", s.port_lo, s.port_hi)),
            inside: s.inside.map(|(a, p)| format!("{a}:{p}")),
            proto: mapping.then(|| super::record::proto_name(s.proto)),
            from: rfc3339_ms(s.unix_ms),
            until: end.map(|e| rfc3339_ms(e.unix_ms)),
        });
    }
    out
}

#[test]
fn whois_agrees_with_the_slow_way_on_random_logs() {
    let mut rng = Rng(0x5eed_0004);
    let addr = Ipv4Addr::new(198, 51, 100, 1);
    let key = |h: &Holder| {
        (
            h.from.clone(),
            h.b4.clone(),
            h.ports.clone(),
            h.inside.clone(),
            h.until.clone(),
        )
    };
    for _ in 0..2_000 {
        let n = rng.below(60);
        let recs: Vec<NatRecord> = (0..n)
            .map(|_| {
                let b4 = Ipv6Addr::new(0x2001, 0xdb8, rng.below(3) as u16, 0, 0, 0, 0, 2);
                let t = rng.below(20) as i128 * 1000;
                let kind = *rng.pick(&[
                    EVENT_BLOCK_ALLOCATED,
                    EVENT_BLOCK_RELEASED,
                    EVENT_MAPPING_CREATED,
                    EVENT_MAPPING_DELETED,
                ]);
                let lo = 1024 + 512 * rng.below(2) as u16;
                if kind == EVENT_MAPPING_CREATED || kind == EVENT_MAPPING_DELETED {
                    let p = lo + rng.below(3) as u16;
                    NatRecord {
                        kind,
                        port_lo: p,
                        port_hi: p,
                        proto: *rng.pick(&[6, 17]),
                        inside: Some((Ipv4Addr::new(192, 168, 1, 10), 5000 + rng.below(2) as u16)),
                        ..block(kind, t, &b4.to_string(), lo)
                    }
                } else {
                    block(kind, t, &b4.to_string(), lo)
                }
            })
            .collect();
        for _ in 0..5 {
            let port = 1024 + rng.below(1100) as u16;
            let at = rng.below(22) as i128 * 1000 - 500 + rng.below(2) as i128 * 500;
            let mut fast: Vec<_> = whois(&recs, addr, port, at).iter().map(key).collect();
            let mut slow: Vec<_> = whois_reference(&recs, addr, port, at)
                .iter()
                .map(key)
                .collect();
            fast.sort();
            slow.sort();
            assert_eq!(fast, slow, "port {port} at {at} in {recs:?}");
        }
    }
}

#[test]
fn whois_on_a_hostile_log_is_not_quadratic() {
    // 200,000 allocations of one block and no release: each start looking ahead for its
    // end would take minutes; one pass takes milliseconds.
    let recs: Vec<NatRecord> = (0..200_000)
        .map(|i| block(EVENT_BLOCK_ALLOCATED, i, "2001:db8:a::2", 1024))
        .collect();
    let t0 = std::time::Instant::now();
    let h = whois(&recs, Ipv4Addr::new(198, 51, 100, 1), 1100, 300_000);
    assert_eq!(h.len(), 200_000);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
}
