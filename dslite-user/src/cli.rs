//! Command line: `dslite aftr|b4|stats|sessions|softwires|check-config|whois`, parsed and
//! dispatched to [`crate::daemon`] and [`crate::commands`].
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad input (flags, config, interfaces). A
//! command whose reader goes away early (`dslite sessions | head -1`) stops writing and exits
//! 0.

use std::io::Write as _;

use clap::{Parser, Subcommand};

use crate::{
    commands::{
        check_config::{self, CheckArgs},
        inspect::{self, ViewArgs},
        whois::{self, WhoisArgs},
    },
    config::{AftrOptions, B4Options},
    daemon,
};

pub use crate::usage::Usage;

#[derive(Parser)]
#[command(
    name = "dslite",
    version,
    about = "DS-Lite (RFC 6333) B4 and AFTR with an XDP dataplane",
    after_help = "Examples:\n  \
        dslite aftr --tunnel-iface eth0 --internet-iface eth1 --address 2001:db8:f::2 \\\n    \
        --pool 198.51.100.0/30 --b4-prefix 2001:db8::/32\n  \
        dslite b4 --lan-iface br-lan --wan-iface wan --aftr 2001:db8:f::2\n  \
        dslite stats --pin-path /sys/fs/bpf/dslite/aftr --json\n  \
        dslite sessions --json"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the AFTR: decapsulate, NAT44 and encapsulate in XDP (foreground until SIGINT/SIGTERM).
    #[command(after_help = "Examples:\n  \
        dslite aftr --tunnel-iface eth0 --internet-iface eth1 --address 2001:db8:f::2 \\\n    \
        --pool 198.51.100.0/28 --b4-prefix 2001:db8::/32\n  \
        dslite aftr --config /etc/dslite/aftr.toml --persist --nat-log /var/log/dslite/nat.log \\\n    \
        --log-sessions --metrics 127.0.0.1:9464\n\n\
        SIGHUP reloads the config file (limits, timeouts, filtering, B4 prefixes, NAT log).")]
    Aftr(Box<AftrOptions>),
    /// Run a B4: encapsulate LAN IPv4 toward the AFTR and decapsulate what comes back.
    #[command(after_help = "Examples:\n  \
        dslite b4 --lan-iface br-lan --wan-iface wan --aftr 2001:db8:f::2\n  \
        dslite b4 --lan-iface br-lan --wan-iface wan --aftr gw.transix.jp\n  \
        dslite b4 --lan-iface br-lan --wan-iface wan --aftr-file /run/dslite/aftr   # from DHCPv6")]
    B4(Box<B4Options>),
    /// Print every counter (summed over CPUs).
    Stats(ViewArgs),
    /// Print the AFTR's NAT mappings.
    Sessions(ViewArgs),
    /// Print the AFTR's subscribers: port blocks, mappings, refusals.
    Softwires(ViewArgs),
    /// Check a TOML configuration file (the role comes from its keys); exit 2 if it is bad.
    CheckConfig(CheckArgs),
    /// Who held a public IPv4 address and port at a time, from NAT log files (RFC 6888 §4).
    #[command(after_help = "Example:\n  \
        dslite whois 198.51.100.7:40123 --at 2026-11-26T16:04:05+09:00 \\\n    \
        --nat-log /var/log/dslite/nat.log /var/log/dslite/nat.log-2026*")]
    Whois(WhoisArgs),
}

pub fn main() -> i32 {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,netlink_packet_route=error"),
    )
    .format_timestamp_millis()
    .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Aftr(o) => daemon::run_async(daemon::aftr::run(*o)),
        Cmd::B4(o) => daemon::run_async(daemon::b4::run(*o)),
        Cmd::Stats(v) => inspect::print_stats(&v.pin_path(), v.json),
        Cmd::Sessions(v) => inspect::print_sessions(&v.pin_path(), v.json),
        Cmd::Whois(w) => whois::run(&w),
        Cmd::Softwires(v) => inspect::print_softwires(&v.pin_path(), v.json),
        Cmd::CheckConfig(c) => check_config::run(&c.file),
    };
    match r {
        Ok(()) => 0,
        // writeln!, not eprintln!: a closed stderr must not turn an error into a panic.
        Err(e) if e.is::<Usage>() => {
            let _ = writeln!(std::io::stderr(), "dslite: error: {e}");
            2
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "dslite: error: {e:#}");
            1
        }
    }
}
