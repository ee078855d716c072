//! Prometheus metrics (`--metrics ADDR:PORT`, text format 0.0.4 at `/metrics`): every counter,
//! and the gauges the AFTR's sweep measures each second. The exposition text is built here;
//! [`server`] serves it.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use dslite_common::{counters::CounterKind, Counter};

/// What the AFTR's controller knows beyond the counters (none on a B4).
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// Live mappings: UDP, TCP, ICMP, other.
    pub mappings: [u64; 4],
    pub softwires: u64,
    /// Every pool address, with its blocks in use and held down.
    pub pool: Vec<Ipv4Addr>,
    pub blocks_per_addr: u64,
    pub blocks_in_use: BTreeMap<[u8; 4], u64>,
    pub blocks_held: BTreeMap<[u8; 4], u64>,
    pub sweep_seconds: f64,
    /// Each configured NAT log sink's counters.
    pub natlog: Vec<crate::natlog::SinkSnapshot>,
}

pub type Shared = Arc<Mutex<Option<Gauges>>>;

pub(crate) fn family(out: &mut String, name: &str, ty: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {ty}");
}

/// The exposition text for `counters` (summed over CPUs) and `g`.
pub fn render(counters: &[(Counter, u64)], g: Option<&Gauges>) -> String {
    let mut out = String::new();
    for (c, v) in counters {
        let kind = c.kind();
        if matches!(kind, CounterKind::Drop | CounterKind::Pass) {
            continue;
        }
        let name = format!("dslite_{}_total", c.name());
        family(
            &mut out,
            &name,
            "counter",
            &format!("dslite counter {} ({}).", c.name(), kind.name()),
        );
        let _ = writeln!(out, "{name} {v}");
    }
    for (kind, name, prefix, help) in [
        (
            CounterKind::Drop,
            "dslite_drops_total",
            "drop_",
            "Packets dropped, by reason.",
        ),
        (
            CounterKind::Pass,
            "dslite_passes_total",
            "pass_",
            "Packets handed to the kernel, by reason.",
        ),
    ] {
        family(&mut out, name, "counter", help);
        for (c, v) in counters.iter().filter(|(c, _)| c.kind() == kind) {
            let reason = c.name().strip_prefix(prefix).unwrap_or(c.name());
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {v}");
        }
    }
    let Some(g) = g else {
        return out;
    };
    family(
        &mut out,
        "dslite_mappings",
        "gauge",
        "NAT mappings, by protocol.",
    );
    for (i, p) in ["udp", "tcp", "icmp", "other"].iter().enumerate() {
        let _ = writeln!(out, "dslite_mappings{{proto=\"{p}\"}} {}", g.mappings[i]);
    }
    family(
        &mut out,
        "dslite_softwires",
        "gauge",
        "Softwires (B4s) holding mappings.",
    );
    let _ = writeln!(out, "dslite_softwires {}", g.softwires);
    family(
        &mut out,
        "dslite_port_blocks",
        "gauge",
        "Port blocks per public address, by state.",
    );
    for a in &g.pool {
        let k = a.octets();
        let used = g.blocks_in_use.get(&k).copied().unwrap_or(0);
        let held = g.blocks_held.get(&k).copied().unwrap_or(0);
        let free = g.blocks_per_addr.saturating_sub(used + held);
        for (state, n) in [("in_use", used), ("held", held), ("free", free)] {
            let _ = writeln!(
                out,
                "dslite_port_blocks{{address=\"{a}\",state=\"{state}\"}} {n}"
            );
        }
    }
    family(
        &mut out,
        "dslite_sweep_duration_seconds",
        "gauge",
        "Duration of the last expiry sweep.",
    );
    let _ = writeln!(out, "dslite_sweep_duration_seconds {}", g.sweep_seconds);
    family(
        &mut out,
        "dslite_natlog_records_total",
        "counter",
        "NAT log records a sink sent (a datagram: the receiver may still refuse it) or wrote (the file).",
    );
    for s in &g.natlog {
        let _ = writeln!(
            out,
            "dslite_natlog_records_total{{sink=\"{}\"}} {}",
            s.sink, s.delivered
        );
    }
    family(
        &mut out,
        "dslite_natlog_lost_total",
        "counter",
        "NAT log records a sink lost: its queue was full, the receiver refused them, they could not be sent, or they were still queued at exit.",
    );
    for s in &g.natlog {
        for (reason, n) in [
            ("queue_full", s.lost_queue_full),
            ("refused", s.lost_refused),
            ("undeliverable", s.lost_error),
            ("shutdown", s.lost_shutdown),
        ] {
            let _ = writeln!(
                out,
                "dslite_natlog_lost_total{{sink=\"{}\",reason=\"{reason}\"}} {n}",
                s.sink
            );
        }
    }
    family(
        &mut out,
        "dslite_natlog_queued",
        "gauge",
        "NAT log records waiting in a sink's queue.",
    );
    for s in &g.natlog {
        let _ = writeln!(
            out,
            "dslite_natlog_queued{{sink=\"{}\"}} {}",
            s.sink, s.queued
        );
    }
    family(
        &mut out,
        "dslite_natlog_failures_total",
        "counter",
        "NAT log records lost, all sinks and reasons together.",
    );
    let lost: u64 = g.natlog.iter().map(|s| s.lost()).sum();
    let _ = writeln!(out, "dslite_natlog_failures_total {lost}");
    out
}

pub mod server;

pub use server::serve;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_counter_and_the_gauges() {
        let counters: Vec<(Counter, u64)> = Counter::ALL
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, i as u64))
            .collect();
        let mut g = Gauges {
            mappings: [3, 2, 1, 0],
            softwires: 2,
            pool: vec![Ipv4Addr::new(198, 51, 100, 1)],
            blocks_per_addr: 126,
            ..Default::default()
        };
        g.blocks_in_use.insert([198, 51, 100, 1], 4);
        g.blocks_held.insert([198, 51, 100, 1], 1);
        g.natlog = vec![
            crate::natlog::SinkSnapshot {
                sink: "file",
                delivered: 10,
                ..Default::default()
            },
            crate::natlog::SinkSnapshot {
                sink: "syslog",
                delivered: 3,
                lost_queue_full: 5,
                lost_shutdown: 2,
                queued: 7,
                ..Default::default()
            },
        ];
        let text = render(&counters, Some(&g));
        assert!(text.contains("dslite_natlog_records_total{sink=\"file\"} 10\n"));
        assert!(
            text.contains("dslite_natlog_lost_total{sink=\"syslog\",reason=\"queue_full\"} 5\n")
        );
        assert!(text.contains("dslite_natlog_queued{sink=\"syslog\"} 7\n"));
        assert!(text.contains("dslite_natlog_failures_total 7\n"));
        let idx = Counter::AftrOutPackets as usize;
        assert!(text.contains(&format!("dslite_aftr_out_packets_total {idx}\n")));
        let idx = Counter::DropBadIpv4 as usize;
        assert!(text.contains(&format!(
            "dslite_drops_total{{reason=\"bad_ipv4\"}} {idx}\n"
        )));
        assert!(text.contains("dslite_mappings{proto=\"udp\"} 3\n"));
        assert!(text.contains("dslite_port_blocks{address=\"198.51.100.1\",state=\"free\"} 121\n"));
        // Every sample line is "name{labels} value" with a number.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit_once(' ').unwrap().1;
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
        // Each family is declared once.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut dedup = types.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(types.len(), dedup.len());
    }

    #[test]
    fn the_grafana_dashboard_uses_only_metrics_we_serve() {
        let dash = include_str!("../../../contrib/grafana-dashboard.json");
        let counters: Vec<(Counter, u64)> = Counter::ALL.iter().map(|c| (*c, 0)).collect();
        let g = Gauges {
            pool: vec![Ipv4Addr::new(198, 51, 100, 1)],
            ..Default::default()
        };
        let text = render(&counters, Some(&g));
        let mut names = 0;
        for (i, _) in dash.match_indices("dslite_") {
            let name: String = dash[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name == "dslite_" {
                continue;
            }
            names += 1;
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} is not served"
            );
        }
        assert!(names > 10);
    }
}
