//! `dslite stats`, `dslite sessions` and `dslite softwires`: read the pinned maps of a
//! running dataplane (the readers serve the metrics endpoint too); `stats` also shows which
//! hook runs on each interface, as the controller recorded it (`dataplane::hook`).

use std::{
    io::Write,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use dslite_common::{
    counters::CounterKind,
    maps::{self as m, AftrConfig, NatOutKey, NatOutValue},
    proto::protocol_name,
    Counter,
};
use serde::Serialize;

use crate::{
    clock::monotonic_ns,
    config::DEFAULT_PIN_ROOT,
    dataplane::hook::{self, HookRecord},
};

#[derive(clap::Args)]
pub struct ViewArgs {
    /// Pin path of the running dataplane (default: /sys/fs/bpf/dslite/aftr, else .../b4).
    #[arg(long, value_name = "DIR")]
    pub pin_path: Option<PathBuf>,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ViewArgs {
    /// `--pin-path`, else the AFTR's default pin path if it exists, else the B4's.
    pub fn pin_path(&self) -> PathBuf {
        self.pin_path.clone().unwrap_or_else(|| {
            let aftr = PathBuf::from(DEFAULT_PIN_ROOT).join("aftr");
            if aftr.exists() {
                aftr
            } else {
                PathBuf::from(DEFAULT_PIN_ROOT).join("b4")
            }
        })
    }
}

fn open(pin_path: &Path, name: &str) -> Result<MapData> {
    let pinned = crate::dataplane::Pinned::new(pin_path);
    let p = pinned.path(name);
    pinned.data(name).with_context(|| {
        format!(
            "no pinned map at {} (is the dataplane running with this --pin-path?)",
            p.display()
        )
    })
}

/// Every counter summed over CPUs, in `Counter::ALL` order.
pub fn read_counters(pin_path: &Path) -> Result<Vec<(Counter, u64)>> {
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pin_path, m::STATS)?))?;
    Counter::ALL
        .iter()
        .map(|c| {
            let v = stats.get(&(*c as u32), 0)?;
            Ok((*c, v.iter().sum()))
        })
        .collect()
}

/// One counter summed over CPUs.
pub fn read_counter(pin_path: &Path, c: Counter) -> Result<u64> {
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pin_path, m::STATS)?))?;
    Ok(stats.get(&(c as u32), 0)?.iter().sum())
}

/// Write a command's output through `f` into `w`, buffered. A reader that went away early
/// (`dslite sessions --json | head -1`) ends the output quietly: the command exits 0, as
/// what the reader wanted was written; any other write error is an error (exit 1).
pub fn write_quietly<W: Write>(
    w: W,
    f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut w = std::io::BufWriter::new(w);
    match f(&mut w).and_then(|()| w.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            // The buffer's rest goes nowhere; dropping it must not try again.
            let _ = w.into_parts();
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// [`write_quietly`] to standard output.
pub fn to_stdout(f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    write_quietly(std::io::stdout().lock(), f)
}

/// What `stats` says of the hooks when no controller recorded them.
const HOOKS_UNKNOWN: &str = "unknown (controller not running)";

/// The hooks a controller recorded in the pin path, as `stats` prints them: JSON under the
/// key `hooks` (an array, or the "unknown" string), text as an `interface hook mode reason`
/// table.
fn hooks_json(records: Option<&[HookRecord]>) -> serde_json::Value {
    match records {
        Some(r) => serde_json::to_value(r).unwrap_or_default(),
        None => HOOKS_UNKNOWN.into(),
    }
}

fn write_hooks(w: &mut dyn Write, records: Option<&[HookRecord]>) -> std::io::Result<()> {
    writeln!(w, "hooks:")?;
    let Some(records) = records else {
        return writeln!(w, "  {HOOKS_UNKNOWN}");
    };
    writeln!(
        w,
        "  {:<16} {:<4} {:<8} reason",
        "interface", "hook", "mode"
    )?;
    for r in records {
        writeln!(
            w,
            "  {:<16} {:<4} {:<8} {}",
            r.interface, r.hook, r.mode, r.reason
        )?;
    }
    Ok(())
}

pub fn print_stats(pin_path: &Path, json: bool) -> Result<()> {
    let counters = read_counters(pin_path)?;
    let hooks = hook::read_records(pin_path);
    to_stdout(|w| {
        if json {
            let mut obj: serde_json::Map<String, serde_json::Value> = counters
                .iter()
                .map(|(c, v)| (c.name().to_string(), (*v).into()))
                .collect();
            obj.insert("hooks".into(), hooks_json(hooks.as_deref()));
            return writeln!(w, "{}", serde_json::Value::Object(obj));
        }
        write_hooks(w, hooks.as_deref())?;
        for kind in [
            CounterKind::Traffic,
            CounterKind::Event,
            CounterKind::Pass,
            CounterKind::Drop,
            CounterKind::Slow,
        ] {
            writeln!(w, "{}:", kind.name())?;
            for (c, v) in counters.iter().filter(|(c, _)| c.kind() == kind) {
                writeln!(w, "  {:<28} {v:>14}", c.name())?;
            }
        }
        Ok(())
    })
}

/// One NAT mapping as shown to operators.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Session {
    pub b4: String,
    pub proto: &'static str,
    pub inside: String,
    pub outside: String,
    /// The port block holding the outside port, `lo-hi`.
    pub block: String,
    /// TCP state (`opening`, `established`, `closing`, `reset`), `-` otherwise.
    pub state: &'static str,
    pub age_seconds: u64,
    pub idle_seconds: u64,
}

/// TCP state name from the flags seen on a mapping (RFC 7857 §2).
pub fn tcp_state_name(proto: u8, s: u8) -> &'static str {
    use dslite_common::nat::*;
    if proto != dslite_common::proto::IPPROTO_TCP {
        "-"
    } else if s & TCP_RST != 0 {
        "reset"
    } else if s & (TCP_FIN_OUT | TCP_FIN_IN) != 0 {
        "closing"
    } else if tcp_established(s) {
        "established"
    } else {
        "opening"
    }
}

impl Session {
    pub fn from_map(k: &NatOutKey, v: &NatOutValue, cfg: &AftrConfig, now_ns: u64) -> Session {
        let port = u16::from_be(v.outside_port);
        let block = match dslite_common::nat::block_of(
            port,
            cfg.port_lo,
            cfg.block_size,
            cfg.blocks_per_addr,
        ) {
            Some(b) => {
                let lo = dslite_common::nat::block_first_port(b, cfg.port_lo, cfg.block_size);
                format!("{lo}-{}", lo + (cfg.block_size - 1))
            }
            None => "-".into(),
        };
        Session {
            b4: Ipv6Addr::from(k.b4).to_string(),
            proto: protocol_name(k.proto),
            inside: format!(
                "{}:{}",
                Ipv4Addr::from(k.inside_addr),
                u16::from_be(k.inside_port)
            ),
            outside: format!("{}:{}", Ipv4Addr::from(v.outside_addr), port),
            block,
            state: tcp_state_name(k.proto, v.tcp_state),
            age_seconds: now_ns.saturating_sub(v.created_ns) / 1_000_000_000,
            idle_seconds: now_ns.saturating_sub(v.last_seen_ns) / 1_000_000_000,
        }
    }
}

pub fn read_sessions(pin_path: &Path) -> Result<Vec<Session>> {
    let out: HashMap<MapData, NatOutKey, NatOutValue> =
        HashMap::try_from(Map::HashMap(open(pin_path, m::NAT_OUT)?))?;
    let cfg: Array<MapData, AftrConfig> =
        Array::try_from(Map::Array(open(pin_path, m::AFTR_CONFIG)?))?;
    let cfg = cfg.get(&0, 0)?;
    let now = monotonic_ns();
    let mut v = Vec::new();
    for e in out.iter() {
        let (k, val) = e?;
        v.push(Session::from_map(&k, &val, &cfg, now));
    }
    v.sort_by(|a, b| (&a.b4, &a.inside, a.proto).cmp(&(&b.b4, &b.inside, b.proto)));
    Ok(v)
}

/// The table `dslite sessions` prints: one line per mapping, with its block, TCP state,
/// age and idle time.
pub fn sessions_table(sessions: &[Session]) -> String {
    let mut out = format!(
        "{:<28} {:<5} {:<21} {:<21} {:<11} {:<11} {:>7} {:>7}\n",
        "B4", "PROTO", "INSIDE", "OUTSIDE", "BLOCK", "STATE", "AGE(s)", "IDLE(s)"
    );
    for s in sessions {
        out.push_str(&format!(
            "{:<28} {:<5} {:<21} {:<21} {:<11} {:<11} {:>7} {:>7}\n",
            s.b4, s.proto, s.inside, s.outside, s.block, s.state, s.age_seconds, s.idle_seconds
        ));
    }
    out
}

pub fn print_sessions(pin_path: &Path, json: bool) -> Result<()> {
    let sessions = read_sessions(pin_path)?;
    to_stdout(|w| {
        if json {
            serde_json::to_writer(&mut *w, &sessions)?;
            return writeln!(w);
        }
        w.write_all(sessions_table(&sessions).as_bytes())?;
        writeln!(w, "{} mappings", sessions.len())
    })
}

/// One subscriber (RFC 7785 §3: the B4 addresses under one `--subscriber-prefix-len`
/// prefix), as `dslite softwires` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SoftwireView {
    /// The subscriber prefix, e.g. `2001:db8:a::/56`.
    pub subscriber: String,
    /// The B4 addresses (softwires) with mappings in it.
    pub b4s: Vec<String>,
    /// `address:lo-hi` for each block held; `(held)` after one in hold-down, which the
    /// subscriber gets back first.
    pub blocks: Vec<String>,
    pub mappings: u64,
    /// New mappings refused by a limit (quota, sessions, rate) while it has been tracked.
    pub refused: u64,
}

/// Every softwire holding a block or a mapping, from the pinned maps.
pub fn read_softwires(pin_path: &Path) -> Result<Vec<SoftwireView>> {
    use dslite_common::maps::{Slot, SlotKey, SoftwireState};
    let cfg: Array<MapData, AftrConfig> =
        Array::try_from(Map::Array(open(pin_path, m::AFTR_CONFIG)?))?;
    let cfg = cfg.get(&0, 0)?;
    let mask = cfg.subscriber_mask;
    let len: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let mut by: std::collections::BTreeMap<[u8; 16], SoftwireView> = Default::default();
    fn entry(
        by: &mut std::collections::BTreeMap<[u8; 16], SoftwireView>,
        sub: [u8; 16],
        len: u32,
    ) -> &mut SoftwireView {
        by.entry(sub).or_insert_with(|| SoftwireView {
            subscriber: format!("{}/{len}", Ipv6Addr::from(sub)),
            b4s: Vec::new(),
            blocks: Vec::new(),
            mappings: 0,
            refused: 0,
        })
    }
    let slots: HashMap<MapData, SlotKey, Slot> =
        HashMap::try_from(Map::HashMap(open(pin_path, m::SW_BLOCKS)?))?;
    for e in slots.iter() {
        let (k, s) = e?;
        let lo = dslite_common::nat::block_first_port(s.block, cfg.port_lo, cfg.block_size);
        let hi = lo + (cfg.block_size - 1);
        let held = if s.held != 0 { " (held)" } else { "" };
        entry(&mut by, k.b4, len)
            .blocks
            .push(format!("{}:{lo}-{hi}{held}", Ipv4Addr::from(s.addr)));
    }
    let out: HashMap<MapData, NatOutKey, NatOutValue> =
        HashMap::try_from(Map::HashMap(open(pin_path, m::NAT_OUT)?))?;
    // The B4 addresses of each subscriber, as a set: one subscriber may rotate through many.
    let mut b4s: std::collections::BTreeMap<[u8; 16], std::collections::BTreeSet<[u8; 16]>> =
        Default::default();
    for e in out.keys() {
        let b4 = e?.b4;
        let sub = dslite_common::nat::subscriber_of(&b4, &mask);
        entry(&mut by, sub, len).mappings += 1;
        b4s.entry(sub).or_default().insert(b4);
    }
    for (sub, set) in b4s {
        entry(&mut by, sub, len).b4s = set
            .into_iter()
            .map(|a| Ipv6Addr::from(a).to_string())
            .collect();
    }
    let sw: HashMap<MapData, [u8; 16], SoftwireState> =
        HashMap::try_from(Map::HashMap(open(pin_path, m::SOFTWIRES)?))?;
    for e in sw.iter() {
        let (sub, st) = e?;
        entry(&mut by, sub, len).refused = st.refused;
    }
    let mut v: Vec<SoftwireView> = by.into_values().collect();
    for s in &mut v {
        s.blocks.sort();
    }
    Ok(v)
}

pub fn print_softwires(pin_path: &Path, json: bool) -> Result<()> {
    let v = read_softwires(pin_path)?;
    to_stdout(|w| {
        if json {
            serde_json::to_writer(&mut *w, &v)?;
            return writeln!(w);
        }
        writeln!(
            w,
            "{:<44} {:>4} {:>8} {:>8}  BLOCKS",
            "SUBSCRIBER", "B4S", "MAPPINGS", "REFUSED"
        )?;
        for s in &v {
            writeln!(
                w,
                "{:<44} {:>4} {:>8} {:>8}  {}",
                s.subscriber,
                s.b4s.len(),
                s.mappings,
                s.refused,
                s.blocks.join(" ")
            )?;
        }
        writeln!(w, "{} subscribers", v.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `0` more bytes, then fails like a pipe whose reader left, or a full disk.
    struct Sink(usize, std::io::ErrorKind);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(self.1.into());
            }
            let n = b.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_cut_short_ends_quietly_and_other_write_errors_do_not() {
        let mut lines = 0;
        let r = write_quietly(Sink(100, std::io::ErrorKind::BrokenPipe), |w| {
            for i in 0..1_000_000 {
                writeln!(w, "mapping {i}")?;
                lines += 1;
            }
            Ok(())
        });
        assert!(r.is_ok(), "{r:?}");
        assert!(
            lines < 1_000_000,
            "the writer stopped at the first failed write"
        );
        // Gone before the first byte, and the error only at the final flush.
        assert!(
            write_quietly(Sink(0, std::io::ErrorKind::BrokenPipe), |w| writeln!(
                w,
                "x"
            ))
            .is_ok()
        );
        let e = write_quietly(Sink(5, std::io::ErrorKind::StorageFull), |w| {
            serde_json::to_writer(&mut *w, &vec!["x"; 100_000])?;
            writeln!(w)
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("writing to standard output"),
            "{e:#}"
        );
    }

    #[test]
    fn session_formatting_uses_host_order_ports() {
        let k = NatOutKey {
            b4: "2001:db8:a::2".parse::<Ipv6Addr>().unwrap().octets(),
            inside_addr: [192, 168, 1, 10],
            inside_port: 5000u16.to_be(),
            proto: 17,
            _pad: 0,
        };
        let v = NatOutValue {
            outside_addr: [198, 51, 100, 1],
            outside_port: 40000u16.to_be(),
            tcp_state: 0,
            peers: 0,
            created_ns: 1_000_000_000,
            last_seen_ns: 3_000_000_000,
        };
        let cfg = AftrConfig {
            port_lo: 1024,
            port_hi: 65535,
            block_size: 512,
            blocks_per_addr: 126,
            ..Default::default()
        };
        let s = Session::from_map(&k, &v, &cfg, 5_000_000_000);
        assert_eq!(s.block, "39936-40447");
        assert_eq!(s.state, "-");
        let table = sessions_table(std::slice::from_ref(&s));
        let mut lines = table.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            head,
            ["B4", "PROTO", "INSIDE", "OUTSIDE", "BLOCK", "STATE", "AGE(s)", "IDLE(s)"]
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "2001:db8:a::2",
                "udp",
                "192.168.1.10:5000",
                "198.51.100.1:40000",
                "39936-40447",
                "-",
                "4",
                "2"
            ]
        );
        assert_eq!(s.b4, "2001:db8:a::2");
        assert_eq!(s.proto, "udp");
        assert_eq!(s.inside, "192.168.1.10:5000");
        assert_eq!(s.outside, "198.51.100.1:40000");
        assert_eq!(s.age_seconds, 4);
        assert_eq!(s.idle_seconds, 2);
    }

    #[test]
    fn stats_shows_the_hooks_or_that_they_are_unknown() {
        let r = vec![HookRecord {
            interface: "veth0".into(),
            ifindex: 5,
            program: "dslite_b4_tc".into(),
            hook: "tc".into(),
            mode: "tcx".into(),
            reason: "virtual device: veth".into(),
        }];
        let mut out = Vec::new();
        write_hooks(&mut out, Some(&r)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("interface"), "{text}");
        assert!(
            text.contains("veth0            tc   tcx      virtual device: veth"),
            "{text}"
        );
        let mut out = Vec::new();
        write_hooks(&mut out, None).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("unknown (controller not running)"));
        let j = hooks_json(Some(&r));
        assert_eq!(j[0]["hook"], "tc");
        assert_eq!(j[0]["reason"], "virtual device: veth");
        assert_eq!(hooks_json(None), "unknown (controller not running)");
    }
}
