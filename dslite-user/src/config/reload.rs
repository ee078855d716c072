//! What a reload (SIGHUP) does to the AFTR's settings: the live half of the new ones replaces
//! the running one, the startup half stays as it is, and both differences are named for the
//! log. The differences are found by destructuring each half without `..`, so a new field
//! does not compile until it is named here.

use std::fmt;

use super::settings::{AftrLive, AftrSettings, AftrStartup, Limits, Sinks, SlowSettings};
use super::timeouts::Timeouts;

/// The outcome of a reload, computed before anything is applied.
pub struct Reload {
    /// The running startup half with the new live half.
    pub settings: AftrSettings,
    /// `key: old -> new` for each live setting that changed (B4 prefixes as `+added
    /// -removed`).
    pub applied: Vec<String>,
    /// Settings that changed in the file but need a restart (their running value stays).
    pub need_restart: Vec<&'static str>,
}

impl AftrSettings {
    /// A reload to `new` (validated from the file and the command line): its live half is
    /// taken, with the MSS resolved for a tunnel interface of `tunnel_mtu`; its startup half
    /// only says which restart-only settings differ.
    pub fn reload_to(&self, new: AftrSettings, tunnel_mtu: u32) -> Reload {
        let (startup, mut live) = new.split();
        live.mss = live.mss_clamp.resolve(tunnel_mtu);
        let need_restart = self.restart_changes(&startup);
        let applied = self.live_changes(&live);
        let (running, _) = self.clone().split();
        Reload {
            settings: AftrSettings::join(running, live),
            applied,
            need_restart,
        }
    }

    /// The flags of the startup settings that differ in `new`, for a "needs a restart"
    /// warning.
    pub fn restart_changes(&self, new: &AftrStartup) -> Vec<&'static str> {
        let AftrStartup {
            tunnel_iface,
            internet_iface,
            address,
            pool,
            ports,
            block_size,
            max_blocks,
            max_mappings,
            subscriber_prefix_len,
            slow:
                SlowSettings {
                    tap_name,
                    tunnel_mtu,
                    reassembly_timeout,
                    reassembly_memory,
                },
            metrics,
            persist,
            nexthop_cache,
            pin_path,
            hook,
            xdp_mode,
            bpf_object,
            // Resolved at start from the interfaces, not from the file.
            tunnel_ifindex: _,
            internet_ifindex: _,
            v4_mtu: _,
        } = new;
        [
            (*tunnel_iface != self.tunnel_iface, "tunnel-iface"),
            (*internet_iface != self.internet_iface, "internet-iface"),
            (*address != self.address, "address"),
            (*pool != self.pool, "pool"),
            (*ports != self.ports, "port-range"),
            (*block_size != self.block_size, "block-size"),
            (*max_blocks != self.max_blocks, "max-blocks"),
            (*max_mappings != self.max_mappings, "max-mappings"),
            (*pin_path != self.pin_path, "pin-path"),
            (*hook != self.hook, "hook"),
            (*xdp_mode != self.xdp_mode, "xdp-mode"),
            (*bpf_object != self.bpf_object, "bpf-object"),
            (*metrics != self.metrics, "metrics"),
            (*persist != self.persist, "persist"),
            (*nexthop_cache != self.nexthop_cache, "no-nexthop-cache"),
            (*tap_name != self.slow.tap_name, "slow-iface"),
            (*tunnel_mtu != self.slow.tunnel_mtu, "tunnel-mtu"),
            (
                *reassembly_timeout != self.slow.reassembly_timeout,
                "reassembly-timeout",
            ),
            (
                *reassembly_memory != self.slow.reassembly_memory,
                "reassembly-memory",
            ),
            (
                *subscriber_prefix_len != self.subscriber_prefix_len,
                "subscriber-prefix-len",
            ),
        ]
        .into_iter()
        .filter_map(|(differs, flag)| differs.then_some(flag))
        .collect()
    }

    /// What `new` changes among the live settings, one `key: old -> new` per setting (B4
    /// prefixes as `+added -removed`), for the log.
    pub fn live_changes(&self, new: &AftrLive) -> Vec<String> {
        let AftrLive {
            b4_prefixes,
            timeouts:
                Timeouts {
                    udp,
                    tcp_established,
                    tcp_transitory,
                    icmp,
                    block_hold_down,
                },
            inbound_refresh,
            deny_destinations,
            max_peers,
            fragment_rate,
            limits:
                Limits {
                    max_sessions,
                    new_mapping_rate,
                    icmp_rate,
                    icmp_code,
                },
            filtering,
            mss_clamp,
            // Follows from mss_clamp.
            mss: _,
            natlog:
                Sinks {
                    file,
                    syslog,
                    ipfix,
                    // Applied, not logged.
                    queue: _,
                },
            log_sessions,
            log_destinations,
        } = new;
        let mut changed = Vec::new();
        macro_rules! diff {
            ($flag:expr, $old:expr, $new:expr $(,)?) => {
                if $old != $new {
                    changed.push(format!("{}: {} -> {}", $flag, show($old), show($new)));
                }
            };
        }
        let (t, l, n) = (&self.timeouts, &self.limits, &self.natlog);
        diff!("udp-timeout", &t.udp, udp);
        diff!(
            "tcp-established-timeout",
            &t.tcp_established,
            tcp_established,
        );
        diff!("tcp-transitory-timeout", &t.tcp_transitory, tcp_transitory);
        diff!("icmp-timeout", &t.icmp, icmp);
        diff!("block-hold-down", &t.block_hold_down, block_hold_down);
        diff!("max-sessions", &l.max_sessions, max_sessions);
        diff!("new-mapping-rate", &l.new_mapping_rate, new_mapping_rate);
        diff!("icmp-rate", &l.icmp_rate, icmp_rate);
        diff!("icmp-unreachable-code", &l.icmp_code, icmp_code);
        diff!("inbound-refresh", &self.inbound_refresh, inbound_refresh);
        diff!("mss-clamp", &self.mss_clamp, mss_clamp);
        diff!("nat-log", &n.file, file);
        diff!("syslog", &n.syslog, syslog);
        diff!("ipfix", &n.ipfix, ipfix);
        diff!("log-sessions", &self.log_sessions, log_sessions);
        diff!("log-destinations", &self.log_destinations, log_destinations);
        diff!(
            "deny-destination",
            &self.deny_destinations,
            deny_destinations,
        );
        diff!("max-peers", &self.max_peers, max_peers);
        diff!("fragment-rate", &self.fragment_rate, fragment_rate);
        for (i, flag) in ["udp-filtering", "tcp-filtering", "icmp-filtering"]
            .iter()
            .enumerate()
        {
            diff!(flag, &self.filtering[i], &filtering[i]);
        }
        let added: Vec<String> = b4_prefixes
            .iter()
            .filter(|p| !self.b4_prefixes.contains(p))
            .map(|p| format!("+{p}"))
            .collect();
        let removed: Vec<String> = self
            .b4_prefixes
            .iter()
            .filter(|p| !b4_prefixes.contains(p))
            .map(|p| format!("-{p}"))
            .collect();
        if !added.is_empty() || !removed.is_empty() {
            changed.push(format!(
                "b4-prefix: {}",
                [added, removed].concat().join(" ")
            ));
        }
        changed
    }
}

/// A setting's value for the log: `Some(x)` as `x`, `None` as `unset`, lower case.
fn show(v: &dyn fmt::Debug) -> String {
    let s = format!("{v:?}");
    let s = match s.strip_prefix("Some(").and_then(|x| x.strip_suffix(')')) {
        Some(inner) => inner.to_string(),
        None if s == "None" => "unset".to_string(),
        None => s,
    };
    s.trim_matches('"').to_lowercase()
}
