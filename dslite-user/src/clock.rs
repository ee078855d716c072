//! The controller's clocks: CLOCK_MONOTONIC (the kernel's `bpf_ktime_get_ns`, in which the
//! maps' timestamps are), the wall clock, and RFC 3339 times (the NAT log, `dslite whois`).

use anyhow::Result;

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock milliseconds (the NAT log's time) of monotonic `now` (ns).
pub fn unix_ms(now: u64) -> i128 {
    (now as i128 + realtime_offset_ns()) / 1_000_000
}

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

/// The wall clock in Unix milliseconds.
pub fn now_unix_ms() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i128)
}

/// RFC 3339 UTC with milliseconds (`2026-11-26T07:00:00.123Z`), from Unix milliseconds.
/// Instants beyond what jiff represents (about years ±9999) are written as the nearest one.
pub fn rfc3339_ms(unix_ms: i128) -> String {
    let ms = unix_ms.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    format!("{ts:.3}")
}

/// Unix milliseconds from RFC 3339 (`2026-11-26T07:00:00Z`, fractions and offsets allowed;
/// digits past the millisecond are dropped).
pub fn parse_rfc3339_ms(s: &str) -> Result<i128> {
    let shown: String = s.chars().take(64).collect();
    let ts: jiff::Timestamp = s.trim().parse().map_err(|e| {
        anyhow::anyhow!("'{shown}' is not an RFC 3339 time (like 2026-11-26T07:00:00Z): {e}")
    })?;
    Ok(ts.as_millisecond() as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants_both_ways() {
        for (ms, s) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_795_664_096_789, "2026-11-26T03:34:56.789Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339_ms(ms), s);
            assert_eq!(parse_rfc3339_ms(s).unwrap(), ms);
        }
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T12:34:56.7+09:00").unwrap(),
            1_795_664_096_700
        );
        // RFC 3339 §5.6: "T" and "Z" may be lower case.
        assert_eq!(
            parse_rfc3339_ms("2026-11-26t03:34:56.789z").unwrap(),
            1_795_664_096_789
        );
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T07:00:00",
            "yesterday",
            "",
        ] {
            let e = parse_rfc3339_ms(bad).unwrap_err().to_string();
            assert!(e.contains("not an RFC 3339 time"), "{bad}: {e}");
        }
        // Out of range: clamped, never a panic, and still a time whois can read back.
        for (ms, year) in [(i128::MAX, "9999-12-"), (i128::MIN, "-009999-01-")] {
            let far = rfc3339_ms(ms);
            assert!(far.starts_with(year), "{far}");
            let back = parse_rfc3339_ms(&far).unwrap();
            assert_eq!(rfc3339_ms(back), far);
        }
    }
}
