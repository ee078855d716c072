//! NAT log records: port-block allocations (from the kernel's EVENTS ring buffer) and
//! releases (from the sweep), as JSON lines with millisecond UTC timestamps
//! (RFC 6888 §4, checklist 50). Issue 4/5 adds the file, syslog and IPFIX sinks; today the
//! records go to the controller's log.

use std::net::{Ipv4Addr, Ipv6Addr};

use dslite_common::maps::{NatEvent, EVENT_BLOCK_ALLOCATED, EVENT_BLOCK_RELEASED};

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

pub fn event_name(kind: u8) -> &'static str {
    match kind {
        EVENT_BLOCK_ALLOCATED => "block-allocated",
        EVENT_BLOCK_RELEASED => "block-released",
        _ => "unknown",
    }
}

/// One JSON line for a block event at monotonic time `ts_ns`.
pub fn block_record(
    kind: u8,
    ts_ns: u64,
    b4: [u8; 16],
    addr: [u8; 4],
    lo: u16,
    hi: u16,
    offset: i128,
) -> String {
    let unix_ms = (ts_ns as i128 + offset) / 1_000_000;
    serde_json::json!({
        "ts": rfc3339_ms(unix_ms),
        "event": event_name(kind),
        "b4": Ipv6Addr::from(b4).to_string(),
        "outside": Ipv4Addr::from(addr).to_string(),
        "ports": format!("{lo}-{hi}"),
    })
    .to_string()
}

pub fn event_record(ev: &NatEvent, offset: i128) -> String {
    block_record(
        ev.kind, ev.ts_ns, ev.b4, ev.addr, ev.port_lo, ev.port_hi, offset,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_664_096_789), "2026-11-26T03:34:56.789Z");
    }

    #[test]
    fn block_record_fields() {
        let b4: Ipv6Addr = "2001:db8:a::2".parse().unwrap();
        let line = block_record(
            EVENT_BLOCK_ALLOCATED,
            5_000_000,
            b4.octets(),
            [198, 51, 100, 1],
            1024,
            1535,
            1_000_000_000_000,
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "block-allocated");
        assert_eq!(v["b4"], "2001:db8:a::2");
        assert_eq!(v["outside"], "198.51.100.1");
        assert_eq!(v["ports"], "1024-1535");
        assert_eq!(v["ts"], "1970-01-01T00:16:40.005Z");
    }
}
