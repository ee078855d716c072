//! What both role daemons share: the tokio runtime, loading the object (bpffs, sysctls,
//! pinned maps), attaching with the next-hop cache and the slow path, kernel log
//! forwarding, metrics, signals, and the stop (`--persist` or unpin). What differs is in
//! [`aftr`] and [`b4`].

use std::{net::SocketAddr, path::Path};

use anyhow::{Context as _, Result};
use log::{info, warn};

use crate::{
    config::{HookOpt, XdpModeOpt},
    dataplane::{self, hook},
    ethtool, netlink, slowpath, sysctl,
    usage::usage,
};

pub mod aftr;
pub mod b4;
mod events;

/// Run a daemon on a single-threaded runtime.
pub fn run_async(f: impl std::future::Future<Output = Result<()>>) -> Result<()> {
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
        match sysctl::ensure_sysctl(path, v) {
            Ok(true) => info!("set {path} = {v} (needed to forward what XDP passes up)"),
            Ok(false) => {}
            Err(e) => warn!("could not set {path}: {e:#}"),
        }
    }
}

/// RFC 6908 §2: the IPv6 path should carry a 1500-byte IPv4 packet plus the
/// 40-byte softwire header; below that, full-sized packets leave as IPv6 fragments.
fn warn_tunnel_mtu(link: &netlink::Link, tunnel_mtu: Option<u32>) {
    for w in tunnel_mtu_warnings(&link.name, link.mtu, tunnel_mtu) {
        warn!("{w}");
    }
}

/// What the softwire's MTU means for the operator: RFC 6908 §2 asks for an IPv6 path that
/// carries a 1500-byte IPv4 packet plus the 40-byte IPv6 header; below that, IPv4 packets
/// over MTU-40 bytes are fragmented by the slow path (RFC 6333 §5.3/§6.3).
fn tunnel_mtu_warnings(link: &str, link_mtu: u32, tunnel_mtu: Option<u32>) -> Vec<String> {
    let mut out = Vec::new();
    let mtu = tunnel_mtu.map_or(link_mtu, |t| t.min(link_mtu));
    if mtu < 1540 {
        out.push(format!(
            "softwire MTU {mtu} (on {link}) is below 1540: IPv4 packets over {} bytes will be sent as IPv6 fragments through the slow path",
            mtu.saturating_sub(40)
        ));
    }
    if let Some(t) = tunnel_mtu.filter(|t| *t > link_mtu) {
        out.push(format!(
            "--tunnel-mtu {t} is above {link}'s MTU {link_mtu}: the interface's wins"
        ));
    }
    out
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

/// Size of the TAP's MTU: a reassembled datagram plus its softwire header must cross it.
const TAP_MTU: u32 = 65000;

/// Create the slow path's TAP, point the dataplane at it, and start its threads
/// (docs/design.md, "The slow path").
async fn start_slow_path(
    ebpf: &mut aya::Ebpf,
    prog: &str,
    tc: bool,
    role: slowpath::Role,
    s: &slowpath::Settings,
    pin: &std::path::Path,
) -> Result<(slowpath::SlowPath, hook::HookRecord)> {
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
        if let Err(e) = sysctl::ensure_sysctl(&path, v) {
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
    let record = dataplane::attach_tap(ebpf, prog, name, index, tc)?;
    let slow = slowpath::start(tap, index, role, s, pin)?;
    info!(
        "slow path on {name}: tunnel MTU {}, reassembly {} s / {} bytes",
        s.tunnel_mtu
            .map_or("from the route".to_string(), |m| m.to_string()),
        s.reassembly_timeout.as_secs(),
        s.reassembly_memory
    );
    Ok((slow, record))
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

/// The kernel object loaded with its maps pinned at `pin` (created, or adopted with
/// `persist`), bpffs mounted and forwarding on.
fn load(
    bpf_object: Option<&Path>,
    pin: &Path,
    sizes: &[(&'static str, u32)],
    persist: bool,
) -> Result<aya::Ebpf> {
    let object = dataplane::object_bytes(bpf_object).map_err(usage)?;
    dataplane::ensure_bpffs(pin).map_err(usage)?;
    ensure_forwarding();
    dataplane::load(&object, pin, sizes, persist)
}

/// What runs once the programs are attached; dropping it stops it.
struct Running {
    slow: slowpath::SlowPath,
    _next_hops: Option<tokio::task::JoinHandle<()>>,
}

/// The hook each link gets ([`hook::plan`]); a refusal is a usage error. The veth peer's
/// TX checksumming is read only where it decides (`--hook xdp`).
fn plan_hooks(
    links: &[&netlink::Link],
    opt: HookOpt,
    xdp_mode: XdpModeOpt,
) -> Result<Vec<dataplane::Target>> {
    links
        .iter()
        .map(|l| {
            let peer = match (opt, l.kind.as_deref(), l.peer) {
                (HookOpt::Xdp, Some("veth"), Some((index, nsid))) => {
                    Some(ethtool::peer_tx_csum(index, nsid))
                }
                (HookOpt::Xdp, Some("veth"), None) => Some(ethtool::PeerTxCsum::Unknown(
                    "rtnetlink names no peer".into(),
                )),
                _ => None,
            };
            let facts = hook::Facts {
                name: &l.name,
                kind: l.kind.as_deref(),
                peer: peer.as_ref(),
            };
            let plan = hook::plan(&facts, opt, xdp_mode).map_err(|e| usage(anyhow::anyhow!(e)))?;
            Ok(dataplane::Target {
                name: l.name.clone(),
                index: l.index,
                plan,
            })
        })
        .collect()
}

/// How the role attaches: the hook option, the XDP mode, `--persist`.
#[derive(Clone, Copy)]
struct Attach {
    hook: HookOpt,
    xdp_mode: XdpModeOpt,
    persist: bool,
}

/// Attach `prog` (or its tc twin) to `links`, start the next-hop cache and the slow path,
/// and record which hook runs where (for `dslite stats`).
#[allow(clippy::too_many_arguments)]
async fn bring_up(
    ebpf: &mut aya::Ebpf,
    prog: &str,
    links: &[&netlink::Link],
    how: Attach,
    pin: &Path,
    nexthop_cache: bool,
    role: slowpath::Role,
    slow: &slowpath::Settings,
) -> Result<Running> {
    let targets = plan_hooks(links, how.hook, how.xdp_mode)?;
    let mut records = dataplane::attach_hooks(
        ebpf,
        prog,
        &targets,
        how.xdp_mode,
        how.persist.then_some(pin),
    )?;
    let tc = records.iter().any(|r| r.hook == "tc");
    // tc into a veth whose peer lives in another namespace: bpf_redirect_peer.
    let peers: Vec<u32> = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("veth"))
        .filter(|l| matches!(l.peer, Some((_, Some(_)))))
        .filter(|l| {
            records
                .iter()
                .any(|r| r.ifindex == l.index && r.hook == "tc")
        })
        .map(|l| l.index)
        .collect();
    dataplane::set_peer_redirects(ebpf, &peers)?;
    let next_hops = start_next_hop_cache(pin, nexthop_cache)?;
    let (slow, tap) = start_slow_path(ebpf, prog, tc, role, slow, pin).await?;
    records.push(tap);
    if let Err(e) = hook::write_records(pin, &records) {
        warn!("recording the hooks for dslite stats: {e:#}");
    }
    Ok(Running {
        slow,
        _next_hops: next_hops,
    })
}

/// Serve `/metrics` on `addr`, if set.
async fn serve_metrics(
    addr: Option<SocketAddr>,
    pin: &Path,
    gauges: crate::metrics::Shared,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    match addr {
        Some(a) => Ok(Some(
            crate::metrics::serve(a, pin.to_path_buf(), gauges)
                .await
                .map_err(usage)?,
        )),
        None => Ok(None),
    }
}

/// The signals a daemon answers: SIGTERM and SIGINT stop it, SIGHUP is the role's.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What [`Signals::next`] received.
enum Received {
    Stop,
    Hangup,
}

impl Signals {
    fn new() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal; a stop is logged here.
    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.term.recv() => { info!("SIGTERM: shutting down"); Received::Stop }
            _ = self.int.recv() => { info!("SIGINT: shutting down"); Received::Stop }
            _ = self.hup.recv() => Received::Hangup,
        }
    }
}

/// The end of a daemon `role` ("AFTR", "B4"), XDP already detached unless pinned: with
/// `persist` everything stays for the next controller, else the maps go.
fn stopped(role: &str, persist: bool, pin: &Path) {
    if persist {
        info!(
            "{role} controller stopped; XDP and tc stay attached and the maps pinned (--persist)"
        );
    } else {
        dataplane::unpin(pin);
        info!("{role} stopped and detached");
    }
}

#[cfg(test)]
mod tests {
    use super::tunnel_mtu_warnings;

    #[test]
    fn tunnel_mtu_below_1540_is_warned_about() {
        assert!(tunnel_mtu_warnings("wan", 1540, None).is_empty());
        assert!(tunnel_mtu_warnings("wan", 9000, Some(1540)).is_empty());
        let w = tunnel_mtu_warnings("wan", 1500, None);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("softwire MTU 1500 (on wan) is below 1540"),
            "{w:?}"
        );
        assert!(w[0].contains("over 1460 bytes"), "{w:?}");
        // --tunnel-mtu lowers the softwire's MTU below the link's.
        let w = tunnel_mtu_warnings("wan", 9000, Some(1480));
        assert!(w[0].contains("softwire MTU 1480"), "{w:?}");
        // Above the link's MTU: the link's wins, and both are said.
        let w = tunnel_mtu_warnings("tun", 1500, Some(1600));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("softwire MTU 1500 (on tun)"), "{w:?}");
        assert!(
            w[1].contains("--tunnel-mtu 1600 is above tun's MTU 1500"),
            "{w:?}"
        );
    }
}
