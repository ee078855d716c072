//! Command line: `dslite aftr|b4|stats|sessions`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad input (flags, config, interfaces). A
//! command whose reader goes away early (`dslite sessions | head -1`) stops writing and exits
//! 0.

use std::{io::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use dslite_common::maps::B4Config;
use log::{info, warn};

use crate::{
    config::{AftrOptions, B4Options, Cidr4, DEFAULT_PIN_ROOT},
    dataplane, netlink, slowpath, views,
};

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

#[derive(clap::Args)]
struct CheckArgs {
    /// The file to check.
    file: PathBuf,
}

#[derive(clap::Args)]
struct WhoisArgs {
    /// The public endpoint, ADDR:PORT.
    #[arg(value_name = "IPV4:PORT")]
    endpoint: std::net::SocketAddrV4,
    /// The time, RFC 3339 (2026-11-26T07:00:00Z, or with an offset like +09:00).
    #[arg(long, value_name = "TIME")]
    at: String,
    /// JSON-lines NAT log files written by --nat-log; list rotated ones too, in any order.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    nat_log: Vec<PathBuf>,
    /// One JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ViewArgs {
    /// Pin path of the running dataplane (default: /sys/fs/bpf/dslite/aftr, else .../b4).
    #[arg(long, value_name = "DIR")]
    pin_path: Option<PathBuf>,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

impl ViewArgs {
    fn pin_path(&self) -> PathBuf {
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

/// Bad input: printed as one line, exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);
impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

fn usage(e: anyhow::Error) -> anyhow::Error {
    Usage(format!("{e:#}")).into()
}

pub fn main() -> i32 {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,netlink_packet_route=error"),
    )
    .format_timestamp_millis()
    .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Aftr(o) => run_async(run_aftr(*o)),
        Cmd::B4(o) => run_async(run_b4(*o)),
        Cmd::Stats(v) => views::print_stats(&v.pin_path(), v.json),
        Cmd::Sessions(v) => views::print_sessions(&v.pin_path(), v.json),
        Cmd::Whois(w) => whois(&w),
        Cmd::Softwires(v) => views::print_softwires(&v.pin_path(), v.json),
        Cmd::CheckConfig(c) => check_config(&c.file),
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

/// `dslite check-config FILE`: parse and validate as the role its keys name, without
/// touching interfaces or the kernel.
fn check_config(file: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading {}", file.display()))
        .map_err(usage)?;
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        // Let the full reader word the syntax error, with its line.
        Err(_) => toml::Table::new(),
    };
    let common = crate::config::CommonOptions {
        config: Some(file.to_path_buf()),
        ..Default::default()
    };
    // A value error names its flag (`--max-blocks 99 ...`): point at the key's line too.
    let at_line = |e: anyhow::Error| -> anyhow::Error {
        let msg = format!("{e:#}");
        if msg.contains(" line ") {
            return usage(e);
        }
        let key: String = msg
            .find("--")
            .map(|i| {
                msg[i + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                    .collect()
            })
            .unwrap_or_default();
        match crate::config::line_of(&text, &key) {
            0 => usage(e),
            n => Usage(format!("config '{}' line {n}: {msg}", file.display())).into(),
        }
    };
    if table.contains_key("lan-iface")
        || table.contains_key("wan-iface")
        || table.contains_key("aftr")
    {
        let s = crate::config::B4Options {
            common,
            ..Default::default()
        }
        .merged()
        .and_then(|o| o.validate(crate::provision::system_nameservers))
        .map_err(at_line)?;
        views::to_stdout(|w| {
            writeln!(
                w,
                "{}: a valid B4 configuration (LAN {}, WAN {}, AFTR {})",
                file.display(),
                s.lan_iface,
                s.wan_iface,
                s.aftr
            )
        })?;
    } else {
        let s = crate::config::AftrOptions {
            common,
            ..Default::default()
        }
        .merged()
        .and_then(|o| o.validate())
        .map_err(at_line)?;
        views::to_stdout(|w| {
            for warning in aftr_warnings(&s) {
                writeln!(w, "{}: warning: {warning}", file.display())?;
            }
            writeln!(
                w,
                "{}: a valid AFTR configuration ({} on {}, {} pool addresses, {} B4 prefixes)",
                file.display(),
                s.address,
                s.tunnel_iface,
                s.pool.len(),
                s.b4_prefixes.len()
            )
        })?;
    }
    Ok(())
}

fn whois(w: &WhoisArgs) -> Result<()> {
    use std::fmt::Write as _;
    let at = crate::natlog::parse_rfc3339_ms(&w.at).map_err(usage)?;
    let (ip, port) = (*w.endpoint.ip(), w.endpoint.port());
    // Only records of this address and port are kept: memory follows the answer, not the log.
    let logs = crate::natlog::read_logs(&w.nat_log, |r| {
        r.outside == ip && r.port_lo <= port && port <= r.port_hi
    })
    .map_err(usage)?;
    if logs.skipped > 0 {
        warn!(
            "{} lines in the NAT logs are not NAT records; skipped (first: {})",
            logs.skipped,
            logs.examples.join("; ")
        );
    }
    let holders = crate::natlog::whois(&logs.records, ip, port, at);
    let at_s = crate::natlog::rfc3339_ms(at);
    let mut out = String::new();
    if w.json {
        let doc = serde_json::json!({ "endpoint": w.endpoint.to_string(), "at": at_s, "holders": holders });
        let _ = writeln!(out, "{doc}");
        return print_out(&out);
    }
    if holders.is_empty() {
        let _ = writeln!(
            out,
            "{} at {at_s}: no softwire held it (in {} records of {ip} port {port})",
            w.endpoint,
            logs.records.len()
        );
    }
    for h in holders {
        let what = match (&h.inside, &h.ports) {
            (Some(i), _) => format!("inside {i} ({})", h.proto.as_deref().unwrap_or("?")),
            (None, Some(p)) => format!("port block {p}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{} at {at_s}: softwire {} {what}, from {} until {}",
            w.endpoint,
            h.b4,
            h.from,
            h.until
                .as_deref()
                .unwrap_or("(still held at the end of the log)")
        );
    }
    print_out(&out)
}

/// Write a command's output; a reader that went away (`| head`) ends it quietly.
fn print_out(text: &str) -> Result<()> {
    views::to_stdout(|w| w.write_all(text.as_bytes()))
}

fn run_async(f: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(f)
}

/// A router forwards: the kernel handles the packets XDP passes up (no neighbour yet).
fn ensure_forwarding() {
    for (path, v) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv6/conf/all/forwarding", "1"),
    ] {
        match netlink::ensure_sysctl(path, v) {
            Ok(true) => info!("set {path} = {v} (needed to forward what XDP passes up)"),
            Ok(false) => {}
            Err(e) => warn!("could not set {path}: {e:#}"),
        }
    }
}

async fn run_aftr(o: AftrOptions) -> Result<()> {
    let flags = o.clone();
    let mut s = o.merged().map_err(usage)?.validate().map_err(usage)?;
    let tunnel = netlink::link(&s.tunnel_iface).await.map_err(usage)?;
    s.mss = s.mss_clamp.resolve(tunnel.mtu);
    warn_tunnel_mtu(&tunnel, s.slow.tunnel_mtu);
    let internet = netlink::link(&s.internet_iface).await.map_err(usage)?;
    s.v4_mtu = internet.mtu.min(u16::MAX as u32) as u16;
    s.tunnel_ifindex = tunnel.index;
    s.internet_ifindex = internet.index;
    for w in aftr_warnings(&s) {
        warn!("{w}");
    }
    let object = dataplane::object_bytes(s.bpf_object.as_deref()).map_err(usage)?;
    dataplane::ensure_bpffs(&s.pin_path).map_err(usage)?;
    ensure_forwarding();
    let mut ebpf = dataplane::load(
        &object,
        &s.pin_path,
        &dataplane::map_sizes(Some(&s)),
        s.persist,
    )?;
    // An adopted dataplane keeps its port-search secret.
    let adopted = dataplane::running_seed(&mut ebpf);
    let seed = adopted.unwrap_or_else(dataplane::random_seed);
    if adopted.is_some() {
        dataplane::check_adopted_aftr(&s.pin_path, &s, seed).map_err(usage)?;
    }
    // Adopted maps say what the last configuration said: make them say exactly this one
    // (removed B4 prefixes and pool addresses stop working).
    let plan = dataplane::plan_aftr(&s.pin_path, &s, seed).map_err(usage)?;
    if adopted.is_some() {
        let what = plan.describe();
        info!(
            "adopted maps brought to this configuration: {}",
            if what.is_empty() {
                "nothing to change".to_string()
            } else {
                what.join(", ")
            }
        );
    }
    // The sinks before the maps: a bad one leaves an adopted dataplane as it was.
    let mut natlog = crate::natlog::NatLog::open(&s.natlog, Default::default()).map_err(usage)?;
    dataplane::apply_aftr(&s.pin_path, &plan)?;
    dataplane::reset_block_hints(&s.pin_path, &s, seed)?;
    sync_host_addresses(&s).await?;
    let logger = start_log_forwarding(&mut ebpf);
    let mut sweeper =
        crate::sweep::Sweeper::open(&s.pin_path, dataplane::aftr_config(&s, seed), s.timeouts)?;
    sweeper.log_sessions = s.log_sessions;
    sweeper.max_mappings = s.max_mappings;
    if adopted.is_some() {
        reconcile_tables(&mut sweeper, &mut natlog, &s)?;
    }
    // What the loop leaves: the NAT log and the sweeper, for the records of the stop.
    let mut left: Option<AftrState> = None;
    let r = async {
        dataplane::attach(
            &mut ebpf,
            dataplane::PROG_AFTR,
            &[
                (tunnel.name.clone(), tunnel.index),
                (internet.name.clone(), internet.index),
            ],
            s.xdp_mode,
            s.persist.then_some(s.pin_path.as_path()),
        )?;
        let _nh = start_next_hop_cache(&s.pin_path, s.nexthop_cache)?;
        let role = slowpath::Role::Aftr { aftr: s.address };
        let slow =
            start_slow_path(&mut ebpf, dataplane::PROG_AFTR, role, &s.slow, &s.pin_path).await?;
        slow.set_b4_prefixes(prefix_list(&s.b4_prefixes));
        info!(
            "AFTR {} up: pool {}, ports {}-{} in blocks of {} (at most {} per softwire), {} B4 prefixes, MSS clamp {}, maps at {}",
            s.address,
            dataplane::pool_summary(&s.pool),
            s.ports.lo,
            s.ports.hi,
            s.block_size,
            s.max_blocks,
            s.b4_prefixes.len(),
            s.mss,
            s.pin_path.display()
        );
        let gauges = crate::metrics::Shared::default();
        let _metrics = match s.metrics {
            Some(a) => Some(crate::metrics::serve(a, s.pin_path.clone(), gauges.clone()).await.map_err(usage)?),
            None => None,
        };
        let mut st = AftrState {
            sweeper,
            natlog,
            gauges,
            pool: s.pool.clone(),
            blocks_per_addr: dataplane::aftr_config(&s, seed).blocks_per_addr as u64,
            flags,
            settings: s.clone(),
            seed,
            tunnel_mtu: tunnel.mtu,
            events_lost: 0,
            host_sync_due: std::time::Instant::now() + HOST_SYNC_EVERY,
        };
        let r = aftr_loop(&s.pin_path, &mut st, &slow).await;
        left = Some(st);
        r
    }
    .await;
    drop(logger);
    drop(ebpf); // detaches the XDP links that are not pinned
    if let Some(st) = &mut left {
        if !s.persist {
            log_the_stop(&s.pin_path, st);
        }
        // Queued records get a bounded time to go out; what is left is counted and said.
        st.natlog.close();
    }
    if s.persist {
        info!("AFTR controller stopped; XDP stays attached and the maps pinned (--persist)");
    } else {
        dataplane::unpin(&s.pin_path);
        info!("AFTR stopped and detached");
    }
    r
}

async fn run_b4(o: B4Options) -> Result<()> {
    let s = o
        .merged()
        .map_err(usage)?
        .validate(crate::provision::system_nameservers)
        .map_err(usage)?;
    let lan = netlink::link(&s.lan_iface).await.map_err(usage)?;
    let wan = netlink::link(&s.wan_iface).await.map_err(usage)?;
    warn_tunnel_mtu(&wan, s.slow.tunnel_mtu);
    let address = match s.address {
        Some(a) => a,
        None => wan_address(wan.index, None).await?.ok_or_else(|| {
            usage(anyhow::anyhow!(
                "no global IPv6 address on --wan-iface {}: pass --address",
                s.wan_iface
            ))
        })?,
    };
    let (src, servers) = (s.aftr.clone(), s.dns_servers.clone());
    let found = tokio::task::spawn_blocking(move || crate::provision::find_aftr(&src, &servers))
        .await?
        .map_err(usage)?;
    if !matches!(s.aftr, crate::provision::AftrSource::Addr(_)) {
        info!("AFTR {} found from {}", found.aftr, s.aftr);
    }
    let lan_prefixes: Vec<Cidr4> = netlink::addresses(lan.index)
        .await?
        .into_iter()
        .filter_map(|a| match a.addr {
            std::net::IpAddr::V4(v4) => Some(Cidr4 {
                addr: v4.octets(),
                len: a.prefix_len,
            }),
            _ => None,
        })
        .collect();
    let object = dataplane::object_bytes(s.bpf_object.as_deref()).map_err(usage)?;
    dataplane::ensure_bpffs(&s.pin_path).map_err(usage)?;
    ensure_forwarding();
    let mut ebpf = dataplane::load(&object, &s.pin_path, &dataplane::map_sizes(None), s.persist)?;
    let cfg = B4Config {
        b4_addr: address.octets(),
        aftr_addr: found.aftr.octets(),
        lan_ifindex: lan.index,
        wan_ifindex: wan.index,
        hop_limit: dslite_common::proto::DEFAULT_HOP_LIMIT,
        mss: s.mss_clamp.resolve(wan.mtu),
        ..Default::default()
    };
    dataplane::configure_b4(&mut ebpf, cfg, &lan_prefixes)?;
    let logger = start_log_forwarding(&mut ebpf);
    let r = async {
        dataplane::attach(
            &mut ebpf,
            dataplane::PROG_B4,
            &[(lan.name.clone(), lan.index), (wan.name.clone(), wan.index)],
            s.xdp_mode,
            s.persist.then_some(s.pin_path.as_path()),
        )?;
        let _nh = start_next_hop_cache(&s.pin_path, s.nexthop_cache)?;
        let role = slowpath::Role::B4 {
            b4: address,
            aftr: found.aftr,
        };
        let slow =
            start_slow_path(&mut ebpf, dataplane::PROG_B4, role, &s.slow, &s.pin_path).await?;
        info!(
            "B4 {address} up: AFTR {}, LAN {} ({} local prefixes), WAN {}, maps at {}",
            found.aftr,
            lan.name,
            lan_prefixes.len(),
            wan.name,
            s.pin_path.display()
        );
        let _metrics = match s.metrics {
            Some(a) => Some(
                crate::metrics::serve(a, s.pin_path.clone(), Default::default())
                    .await
                    .map_err(usage)?,
            ),
            None => None,
        };
        let mut st = B4State {
            b4: address,
            aftr: found,
            follow_wan: s.address.is_none().then_some(wan.index),
            source: s.aftr.clone(),
            dns: s.dns_servers.clone(),
            next_lookup: std::time::Instant::now(),
        };
        st.schedule();
        b4_loop(&s.pin_path, &slow, &mut st).await
    }
    .await;
    drop(logger);
    drop(ebpf);
    if s.persist {
        info!("B4 controller stopped; XDP stays attached and the maps pinned (--persist)");
    } else {
        dataplane::unpin(&s.pin_path);
        info!("B4 stopped and detached");
    }
    r
}

/// RFC 6908 §2: the IPv6 path should carry a 1500-byte IPv4 packet plus the
/// 40-byte softwire header; below that, full-sized packets leave as IPv6 fragments.
fn warn_tunnel_mtu(link: &netlink::Link, tunnel_mtu: Option<u32>) {
    let mtu = tunnel_mtu.map_or(link.mtu, |t| t.min(link.mtu));
    if mtu < 1540 {
        warn!(
            "softwire MTU {mtu} (on {}) is below 1540: IPv4 packets over {} bytes will be sent as IPv6 fragments through the slow path",
            link.name,
            mtu.saturating_sub(40)
        );
    }
    if let Some(t) = tunnel_mtu.filter(|t| *t > link.mtu) {
        warn!(
            "--tunnel-mtu {t} is above {}'s MTU {}: the interface's wins",
            link.name, link.mtu
        );
    }
}

/// Turn on XDP's next-hop cache and keep it true: every route, neighbour, address or link
/// change the kernel announces invalidates it (docs/design.md, Forwarding).
fn start_next_hop_cache(
    pin: &std::path::Path,
    enable: bool,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    dataplane::bump_next_hops(pin, enable)?;
    if !enable {
        info!("next-hop cache off: every packet asks the kernel FIB");
        return Ok(None);
    }
    let pin = pin.to_path_buf();
    let watcher = netlink::watch_changes(move || {
        if let Err(e) = dataplane::bump_next_hops(&pin, true) {
            warn!("invalidating the next-hop cache: {e:#}");
        }
    })?;
    Ok(Some(watcher))
}

/// What a valid AFTR configuration still gets wrong, for `check-config` and the start log.
pub fn aftr_warnings(s: &crate::config::AftrSettings) -> Vec<String> {
    let mut w = Vec::new();
    for p in &s.b4_prefixes {
        if p.contains(&s.address.octets()) {
            w.push(format!(
                "b4-prefix {p} covers the AFTR's own address {}: narrow it to the access \
                 network's prefixes (packets from the AFTR host's own addresses are dropped \
                 anyway, drop_b4_source_local)",
                s.address
            ));
        }
    }
    w
}

/// The allowed B4 prefixes as the slow path takes them.
fn prefix_list(p: &[crate::config::Cidr6]) -> Vec<([u8; 16], u8)> {
    p.iter().map(|c| (c.network(), c.len)).collect()
}

/// How often the AFTR reads the host's own addresses again.
const HOST_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Size of the TAP's MTU: a reassembled datagram plus its softwire header must cross it.
const TAP_MTU: u32 = 65000;

/// Create the slow path's TAP, point the dataplane at it, and start its threads
/// (docs/design.md, "The slow path").
async fn start_slow_path(
    ebpf: &mut aya::Ebpf,
    prog: &str,
    role: slowpath::Role,
    s: &slowpath::Settings,
    pin: &std::path::Path,
) -> Result<slowpath::SlowPath> {
    let (tap, index) = slowpath::create_tap(&s.tap_name)?;
    netlink::configure_tap(index, slowpath::TAP_MAC, TAP_MTU).await?;
    let name = &s.tap_name;
    // Written-back packets are routed from the TAP (forwarding); the kernel must not filter
    // them by reverse path, nor configure IPv6 from router advertisements on it.
    for (path, v) in [
        (format!("net/ipv4/conf/{name}/forwarding"), "1"),
        (format!("net/ipv4/conf/{name}/rp_filter"), "0"),
        (format!("net/ipv6/conf/{name}/forwarding"), "1"),
        (format!("net/ipv6/conf/{name}/accept_ra"), "0"),
    ] {
        if let Err(e) = netlink::ensure_sysctl(&path, v) {
            warn!("could not set {path} = {v}: {e:#}");
        }
    }
    if let slowpath::Role::B4 { .. } = role {
        if netlink::own_ipv4_route(index, slowpath::B4_V4).await? {
            info!(
                "no IPv4 default route here: this router's own IPv4 goes into the softwire from {}",
                slowpath::B4_V4
            );
        }
    }
    slowpath::set_kernel_reassembly(s);
    dataplane::set_slow_config(
        ebpf,
        dslite_common::slow::SlowConfig {
            ifindex: index,
            tunnel_mtu: s.tunnel_mtu.unwrap_or(0),
        },
    )?;
    dataplane::attach_tap(ebpf, prog, name, index)?;
    let slow = slowpath::start(tap, index, role, s, pin)?;
    info!(
        "slow path on {name}: tunnel MTU {}, reassembly {} s / {} bytes",
        s.tunnel_mtu
            .map_or("from the route".to_string(), |m| m.to_string()),
        s.reassembly_timeout.as_secs(),
        s.reassembly_memory
    );
    Ok(slow)
}

/// Keep the dataplane's view of the AFTR host's own addresses current: they are never a B4
/// source (B4_ALLOW denies them) and never a subscriber's destination (DENY_V4).
async fn sync_host_addresses(s: &crate::config::AftrSettings) -> Result<()> {
    let all = netlink::all_addresses().await?;
    let v4: Vec<std::net::Ipv4Addr> = all
        .iter()
        .filter_map(|a| match a.addr {
            std::net::IpAddr::V4(v4) => Some(v4),
            _ => None,
        })
        .collect();
    let v6: Vec<std::net::Ipv6Addr> = all
        .iter()
        .filter_map(|a| match a.addr {
            std::net::IpAddr::V6(v6) => Some(v6),
            _ => None,
        })
        .collect();
    dataplane::sync_local_b4_denies(&s.pin_path, &v6, &s.b4_prefixes)?;
    dataplane::sync_denied(&s.pin_path, &dataplane::denied_destinations(s, &v4))?;
    Ok(())
}

/// Publish the slow path's counters next to the kernel's.
async fn publish(pin: &std::path::Path, slow: &slowpath::SlowPath) {
    slow.stats.read_kernel();
    if let Ok(n) = netlink::tx_dropped(slow.tap_index).await {
        slow.stats.set(dslite_common::Counter::SlowQueueDropped, n);
    }
    if let Err(e) = dataplane::publish_counters(pin, &slow.stats.snapshot()) {
        warn!("publishing slow path counters: {e:#}");
    }
}

/// The first global IPv6 address on interface `index`, preferring `current` if still there.
async fn wan_address(
    index: u32,
    current: Option<std::net::Ipv6Addr>,
) -> Result<Option<std::net::Ipv6Addr>> {
    let globals: Vec<std::net::Ipv6Addr> = netlink::addresses(index)
        .await?
        .into_iter()
        .filter_map(|a| match a.addr {
            std::net::IpAddr::V6(v6) if a.global => Some(v6),
            _ => None,
        })
        .collect();
    Ok(match current {
        Some(c) if globals.contains(&c) => Some(c),
        _ => globals.first().copied(),
    })
}

/// The B4's view of where it is and where its AFTR is.
struct B4State {
    b4: std::net::Ipv6Addr,
    aftr: crate::provision::Found,
    /// The WAN's ifindex when the B4 address follows it (no --address).
    follow_wan: Option<u32>,
    source: crate::provision::AftrSource,
    dns: Vec<std::net::SocketAddr>,
    next_lookup: std::time::Instant,
}

impl B4State {
    fn schedule(&mut self) {
        if let Some(s) = self.aftr.refresh {
            self.next_lookup = std::time::Instant::now() + std::time::Duration::from_secs(s);
        }
    }

    /// Follow the WAN address and re-resolve the AFTR when due; apply changes to the running
    /// dataplane and slow path.
    async fn refresh(&mut self, pin: &std::path::Path, slow: &slowpath::SlowPath) {
        let mut changed = false;
        if let Some(index) = self.follow_wan {
            match wan_address(index, Some(self.b4)).await {
                Ok(Some(a)) if a != self.b4 => {
                    info!("WAN address changed: softwire source {} -> {a}", self.b4);
                    self.b4 = a;
                    changed = true;
                }
                Ok(_) => {}
                Err(e) => warn!("reading WAN addresses: {e:#}"),
            }
        }
        if self.aftr.refresh.is_some() && std::time::Instant::now() >= self.next_lookup {
            let (src, dns) = (self.source.clone(), self.dns.clone());
            match tokio::task::spawn_blocking(move || crate::provision::find_aftr(&src, &dns)).await
            {
                Ok(Ok(f)) => {
                    if f.aftr != self.aftr.aftr {
                        info!("AFTR changed: {} -> {}", self.aftr.aftr, f.aftr);
                        changed = true;
                    }
                    self.aftr = f;
                }
                Ok(Err(e)) => warn!(
                    "finding the AFTR again failed, keeping {}: {e:#}",
                    self.aftr.aftr
                ),
                Err(e) => warn!("AFTR lookup task: {e}"),
            }
            self.schedule();
        }
        if changed {
            let (b4, aftr) = (self.b4, self.aftr.aftr);
            let r = dataplane::update_b4_config(pin, |c| {
                c.b4_addr = b4.octets();
                c.aftr_addr = aftr.octets();
            });
            if let Err(e) = r {
                warn!("updating the dataplane's B4 configuration: {e:#}");
            }
            slow.set_role(slowpath::Role::B4 { b4, aftr });
        }
    }
}

/// The B4's controller work until a signal: counters, the WAN address and the AFTR.
async fn b4_loop(pin: &std::path::Path, slow: &slowpath::SlowPath, st: &mut B4State) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(()); }
            _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(()); }
            _ = hup.recv() => {
                info!("SIGHUP: looking for the AFTR again now");
                st.next_lookup = std::time::Instant::now();
            }
            _ = tick.tick() => {
                publish(pin, slow).await;
                st.refresh(pin, slow).await;
            }
        }
    }
}

/// The AFTR's controller work until a signal: NAT events from the kernel, and the sweep.
/// What the AFTR's controller loop works on.
struct AftrState {
    sweeper: crate::sweep::Sweeper,
    natlog: crate::natlog::NatLog,
    gauges: crate::metrics::Shared,
    pool: Vec<std::net::Ipv4Addr>,
    blocks_per_addr: u64,
    /// The command line, to merge the reloaded file under.
    flags: AftrOptions,
    settings: crate::config::AftrSettings,
    /// `events_lost` at the last check, to log each overflow.
    events_lost: u64,
    seed: u32,
    tunnel_mtu: u32,
    /// When the host's own addresses are read again (and after a reload).
    host_sync_due: std::time::Instant,
}

/// After adopting maps or removing B4 prefixes: delete what the configuration no longer
/// covers (mappings and blocks on removed pool addresses, mappings of removed B4 prefixes),
/// with NAT log records.
fn reconcile_tables(
    sweeper: &mut crate::sweep::Sweeper,
    natlog: &mut crate::natlog::NatLog,
    s: &crate::config::AftrSettings,
) -> Result<()> {
    let r = sweeper.reconcile(crate::sweep::monotonic_ns(), &s.pool, &s.b4_prefixes)?;
    for rec in &r.records {
        natlog.emit(rec);
    }
    if r.mappings + r.blocks + r.slots > 0 {
        info!(
            "{} mappings and {} port blocks were on pool addresses or B4 prefixes no longer \
             configured: deleted, and the blocks released",
            r.mappings, r.blocks
        );
    }
    Ok(())
}

/// What a successful reload did.
struct Reloaded {
    /// `key: old -> new` for each setting applied.
    applied: Vec<String>,
    /// Settings that changed in the file but need a restart (their running value stays).
    need_restart: Vec<&'static str>,
}

impl AftrState {
    /// SIGHUP: read the configuration file again and apply what can change live (limits,
    /// timeouts, filtering, B4 prefixes, MSS clamping, NAT log settings) without touching a
    /// mapping of a softwire that stays allowed. All or nothing: the whole file is parsed and
    /// validated, the new NAT log sinks opened and every map write computed and checked
    /// before anything changes; a failed map write undoes the ones before it. On an error
    /// the running configuration stays, all of it.
    fn reload(&mut self, pin: &std::path::Path) -> Result<Reloaded> {
        let new = self
            .flags
            .clone()
            .merged()
            .and_then(|o| o.validate())
            .context("the configuration does not validate")?;
        let crate::config::Reload {
            settings: new,
            applied,
            need_restart,
        } = self.settings.reload_to(new, self.tunnel_mtu);
        let plan = dataplane::plan_aftr(pin, &new, self.seed)?;
        // The sinks: changed ones opened beside the running ones, put in place (and the others
        // reopened, the file for logrotate) only once the maps are written.
        let sinks = self
            .natlog
            .prepare(&new.natlog)
            .context("opening the NAT log")?;
        dataplane::apply_aftr(pin, &plan)?;
        self.natlog.commit(sinks);
        // From here on nothing fails. The host's addresses and the denied destinations are
        // synced again at the next tick.
        self.host_sync_due = std::time::Instant::now();
        self.sweeper.timeouts = new.timeouts;
        self.sweeper.log_sessions = new.log_sessions;
        self.sweeper
            .set_config(dataplane::aftr_config(&new, self.seed));
        let prefixes_removed = self
            .settings
            .b4_prefixes
            .iter()
            .any(|p| !new.b4_prefixes.contains(p));
        self.settings = new;
        if prefixes_removed {
            if let Err(e) = reconcile_tables(&mut self.sweeper, &mut self.natlog, &self.settings) {
                warn!("reload: releasing the mappings of removed B4 prefixes: {e:#} (the sweep's expiry will)");
            }
        }
        Ok(Reloaded {
            applied,
            need_restart,
        })
    }
}

async fn aftr_loop(
    pin: &std::path::Path,
    st: &mut AftrState,
    slow: &slowpath::SlowPath,
) -> Result<()> {
    use aya::maps::{Map, MapData, RingBuf};
    use tokio::signal::unix::{signal, SignalKind};
    let events = RingBuf::try_from(Map::RingBuf(MapData::from_pin(
        pin.join(dslite_common::maps::EVENTS),
    )?))?;
    // SAFETY: the ring buffer owns its fd and the AsyncFd owns the ring buffer.
    let mut events = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {e}"))?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(()); }
            _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(()); }
            _ = hup.recv() => {
                match st.reload(pin) {
                    Ok(r) => {
                        slow.set_b4_prefixes(prefix_list(&st.settings.b4_prefixes));
                        info!(
                            "SIGHUP: configuration reloaded, NAT log reopened; applied: {}",
                            if r.applied.is_empty() { "no change".to_string() } else { r.applied.join(", ") }
                        );
                        if !r.need_restart.is_empty() {
                            warn!(
                                "SIGHUP: changed in the file but needing a restart, so still running with the old value: {}",
                                r.need_restart.join(", ")
                            );
                        }
                    }
                    Err(e) => warn!(
                        "SIGHUP: reload failed, nothing changed, the running configuration stays: {e:#}"
                    ),
                }
            }
            g = events.readable_mut() => {
                let mut g = g?;
                drain_events(g.get_inner_mut(), &mut st.natlog);
                g.clear_ready();
            }
            _ = tick.tick() => {
                publish(pin, slow).await;
                if std::time::Instant::now() >= st.host_sync_due {
                    st.host_sync_due = std::time::Instant::now() + HOST_SYNC_EVERY;
                    if let Err(e) = sync_host_addresses(&st.settings).await {
                        warn!("reading the host's addresses: {e:#}");
                    }
                }
                // Nothing is lost silently: a full event ring is counted by XDP and said here.
                if let Ok(n) = views::read_counter(pin, dslite_common::Counter::EventsLost) {
                    if n > st.events_lost {
                        warn!("NAT log: {} events lost to a full ring buffer (events_lost = {n})", n - st.events_lost);
                    }
                    st.events_lost = n;
                }
                let now = crate::sweep::monotonic_ns();
                let swept = st.sweeper.sweep(now);
                if let Ok(r) = &swept {
                    for rec in &r.records {
                        st.natlog.emit(rec);
                    }
                }
                st.natlog.tick();
                let natlog = st.natlog.snapshot();
                match swept {
                    Ok(r) => {
                        if let Ok(mut g) = st.gauges.lock() {
                            *g = Some(crate::metrics::Gauges {
                                mappings: r.mappings,
                                softwires: r.softwires as u64,
                                pool: st.pool.clone(),
                                blocks_per_addr: st.blocks_per_addr,
                                blocks_in_use: r.blocks_in_use.clone(),
                                blocks_held: r.blocks_held.clone(),
                                sweep_seconds: r.micros as f64 / 1e6,
                                natlog,
                            });
                        }
                        if r.expired > 0 || r.blocks_freed > 0 {
                            log::debug!("sweep: {} mappings scanned, {} expired, {} blocks released, {} freed, {} us",
                                r.scanned, r.expired, r.blocks_released, r.blocks_freed, r.micros);
                        }
                    }
                    Err(e) => {
                        warn!("sweep failed: {e:#}");
                        // The NAT log's counters stay current all the same.
                        if let Ok(mut g) = st.gauges.lock() {
                            if let Some(g) = g.as_mut() {
                                g.natlog = natlog;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Every event the kernel has put in the ring buffer, into the NAT log. Each is handed to
/// the sinks before the next is taken (the file's write included, while it keeps up): the
/// ring's consumer position moves past an event only once it is logged.
fn drain_events<T: std::borrow::BorrowMut<aya::maps::MapData>>(
    ring: &mut aya::maps::RingBuf<T>,
    natlog: &mut crate::natlog::NatLog,
) -> usize {
    let offset = crate::natlog::realtime_offset_ns();
    let mut n = 0;
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<dslite_common::maps::NatEvent>() {
            // SAFETY: the kernel wrote a NatEvent (repr(C), any bit pattern valid).
            let ev: dslite_common::maps::NatEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            natlog.emit(&crate::natlog::NatRecord::from_event(&ev, offset));
            n += 1;
        }
    }
    n
}

/// Stopping without `--persist` (XDP already detached, the maps still pinned): log what is
/// left in the ring buffer, then a release for every block still held (and, with
/// `--log-sessions`, a deletion for every mapping): the dataplane and its state go now.
fn log_the_stop(pin: &std::path::Path, st: &mut AftrState) {
    use aya::maps::{Map, MapData, RingBuf};
    let ring = MapData::from_pin(pin.join(dslite_common::maps::EVENTS))
        .map_err(anyhow::Error::from)
        .and_then(|d| Ok(RingBuf::try_from(Map::RingBuf(d))?));
    match ring {
        Ok(mut ring) => {
            drain_events(&mut ring, &mut st.natlog);
        }
        Err(e) => warn!("NAT log: reading the last events at exit: {e:#}"),
    }
    match st.sweeper.release_all(crate::sweep::monotonic_ns()) {
        Ok(records) => {
            let blocks = records
                .iter()
                .filter(|r| r.kind == dslite_common::maps::EVENT_BLOCK_RELEASED)
                .count();
            for r in &records {
                st.natlog.emit(r);
            }
            info!(
                "NAT log: {blocks} port blocks released at exit ({} records)",
                records.len()
            );
        }
        Err(e) => warn!("NAT log: reading the blocks held at exit: {e:#}"),
    }
}

/// Forward kernel-side aya-log records (cold paths only) into this process's log.
fn start_log_forwarding(ebpf: &mut aya::Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!("kernel-side log forwarding unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring-buffer fd and the AsyncFd owns the logger, so the fd
    // stays open and unchanged for the AsyncFd's whole life.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("kernel-side log forwarding unavailable: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(_) => return,
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
