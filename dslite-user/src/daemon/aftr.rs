//! The AFTR daemon: its start (links, adoption of pinned maps, the configuration plan, the
//! NAT log), its loop (NAT events, the sweep, the host's addresses, SIGHUP reloads) and its
//! stop (the NAT log records of what goes).

use anyhow::{Context as _, Result};
use log::{info, warn};

use super::{
    bring_up, events, load, publish, serve_metrics, start_log_forwarding, stopped, warn_tunnel_mtu,
    Received, Signals,
};
use crate::{
    commands::inspect::read_counter, config::AftrOptions, dataplane, netlink, slowpath,
    usage::usage,
};

/// `dslite aftr`: run until SIGTERM or SIGINT.
pub async fn run(o: AftrOptions) -> Result<()> {
    let flags = o.clone();
    let mut s = o.merged().map_err(usage)?.validate().map_err(usage)?;
    let tunnel = netlink::link(&s.tunnel_iface).await.map_err(usage)?;
    s.mss = s.mss_clamp.resolve(tunnel.mtu);
    warn_tunnel_mtu(&tunnel, s.slow.tunnel_mtu);
    let internet = netlink::link(&s.internet_iface).await.map_err(usage)?;
    s.v4_mtu = internet.mtu.min(u16::MAX as u32) as u16;
    s.tunnel_ifindex = tunnel.index;
    s.internet_ifindex = internet.index;
    for w in s.warnings() {
        warn!("{w}");
    }
    let mut ebpf = load(
        s.bpf_object.as_deref(),
        &s.pin_path,
        &dataplane::map_sizes(Some(&s)),
        s.persist,
    )?;
    // An adopted dataplane keeps its port-search secret.
    let adopted = dataplane::running_seed(&mut ebpf);
    let seed = adopted.unwrap_or_else(crate::rand::random_seed);
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
    let (own_b4, written) = sync_host_addresses(&s).await?;
    written?;
    let logger = start_log_forwarding(&mut ebpf);
    let mut sweeper =
        crate::sweep::Sweeper::open(&s.pin_path, dataplane::aftr_config(&s, seed), s.timeouts)?;
    sweeper.log_sessions = s.log_sessions;
    sweeper.max_mappings = s.max_mappings;
    if adopted.is_some() {
        reconcile_tables(&mut sweeper, &mut natlog, &s, &own_b4)?;
    }
    // What the loop leaves: the NAT log and the sweeper, for the records of the stop.
    let mut left: Option<AftrState> = None;
    let r = async {
        let running = bring_up(
            &mut ebpf,
            dataplane::PROG_AFTR,
            &[&tunnel, &internet],
            super::Attach {
                hook: s.hook,
                xdp_mode: s.xdp_mode,
                persist: s.persist,
            },
            &s.pin_path,
            s.nexthop_cache,
            slowpath::Role::Aftr { aftr: s.address },
            &s.slow,
        )
        .await?;
        let slow = &running.slow;
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
        let _metrics = serve_metrics(s.metrics, &s.pin_path, gauges.clone()).await?;
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
            own_b4,
            reconcile_due: 0,
            reconcile_at: std::time::Instant::now(),
            reconcile_backoff: std::time::Duration::ZERO,
        };
        let r = aftr_loop(&s.pin_path, &mut st, slow).await;
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
    stopped("AFTR", s.persist, &s.pin_path);
    r
}

/// The allowed B4 prefixes as the slow path takes them.
fn prefix_list(p: &[crate::config::Cidr6]) -> Vec<([u8; 16], u8)> {
    p.iter().map(|c| (c.network(), c.len)).collect()
}

/// How often the AFTR reads the host's own addresses again.
const HOST_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keep the dataplane's view of the AFTR host's own addresses current: they are never a B4
/// source (B4_ALLOW denies them) and never a subscriber's destination (DENY_V4).
/// Returns the IPv6 addresses read (for the reconcile) and, apart, how writing them into the
/// maps went: the caller learns the addresses even when a write fails.
async fn sync_host_addresses(
    s: &crate::config::AftrSettings,
) -> Result<(Vec<[u8; 16]>, Result<()>)> {
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
    let written =
        dataplane::sync_local_b4_denies(&s.pin_path, &v6, &s.b4_prefixes).and_then(|()| {
            dataplane::sync_denied(&s.pin_path, &dataplane::denied_destinations(s, &v4))
        });
    Ok((v6.iter().map(|a| a.octets()).collect(), written))
}

/// True when the host has an address it did not have at the last read that a B4 could
/// have used (inside an allowed prefix): that B4's mappings must go, as XDP checks
/// B4_ALLOW only for packets without a mapping.
fn own_address_joined(
    before: &[[u8; 16]],
    now: &[[u8; 16]],
    prefixes: &[crate::config::Cidr6],
) -> bool {
    now.iter()
        .any(|a| !before.contains(a) && prefixes.iter().any(|p| p.contains(a)))
}

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
    /// The host's own IPv6 addresses at the last read (never a B4).
    own_b4: Vec<[u8; 16]>,
    /// Mappings of B4s that are no longer allowed may be in the tables (a reload removed a
    /// prefix, the host took an address), since XDP checks B4_ALLOW only for packets
    /// without a mapping: the [`AftrState::reconcile`] passes still to run. Two per cause:
    /// the second, a tick later, catches a mapping that a packet checked just before the
    /// change made after the first pass read the table.
    reconcile_due: u8,
    /// When the next pass may run: at each tick, backing off after a failure.
    reconcile_at: std::time::Instant,
    /// The wait after the last failure (doubles, to a minute).
    reconcile_backoff: std::time::Duration,
}

/// After adopting maps or removing B4 prefixes: delete what the configuration no longer
/// covers (mappings and blocks on removed pool addresses, mappings of removed B4 prefixes),
/// with NAT log records.
fn reconcile_tables(
    sweeper: &mut crate::sweep::Sweeper,
    natlog: &mut crate::natlog::NatLog,
    s: &crate::config::AftrSettings,
    own_b4: &[[u8; 16]],
) -> Result<()> {
    let r = sweeper.reconcile(
        crate::clock::monotonic_ns(),
        &s.pool,
        &s.b4_prefixes,
        own_b4,
    )?;
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
    /// Delete the mappings (and release the blocks) the configuration and the host's
    /// addresses no longer allow, when due; after a failure, again in 1, 2, 4 … 60 s.
    fn reconcile(&mut self) {
        let now = std::time::Instant::now();
        if self.reconcile_due == 0 || now < self.reconcile_at {
            return;
        }
        match reconcile_tables(
            &mut self.sweeper,
            &mut self.natlog,
            &self.settings,
            &self.own_b4,
        ) {
            Ok(()) => {
                self.reconcile_due -= 1;
                self.reconcile_backoff = std::time::Duration::ZERO;
            }
            Err(e) => {
                self.reconcile_backoff = (self.reconcile_backoff * 2).clamp(
                    std::time::Duration::from_secs(1),
                    std::time::Duration::from_secs(60),
                );
                self.reconcile_at = now + self.reconcile_backoff;
                warn!(
                    "releasing the mappings of B4s no longer allowed: {e:#} (tried again in {} s)",
                    self.reconcile_backoff.as_secs()
                );
            }
        }
    }

    /// Something made B4s not allowed: two reconcile passes, the first now.
    fn reconcile_soon(&mut self) {
        self.reconcile_due = 2;
        self.reconcile_at = std::time::Instant::now();
    }

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
            self.reconcile_soon();
            self.reconcile();
        }
        Ok(Reloaded {
            applied,
            need_restart,
        })
    }
}

/// The AFTR's controller work until a signal: NAT events from the kernel, and the sweep.
async fn aftr_loop(
    pin: &std::path::Path,
    st: &mut AftrState,
    slow: &slowpath::SlowPath,
) -> Result<()> {
    let events = events::open(pin)?;
    // SAFETY: the ring buffer owns its fd and the AsyncFd owns the ring buffer.
    let mut events = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {e}"))?;
    let mut signals = Signals::new()?;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            received = signals.next() => {
                if let Received::Stop = received {
                    return Ok(());
                }
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
                events::drain(g.get_inner_mut(), &mut st.natlog);
                g.clear_ready();
            }
            _ = tick.tick() => {
                publish(pin, slow).await;
                if std::time::Instant::now() >= st.host_sync_due {
                    st.host_sync_due = std::time::Instant::now() + HOST_SYNC_EVERY;
                    match sync_host_addresses(&st.settings).await {
                        Ok((own, written)) => {
                            if own_address_joined(&st.own_b4, &own, &st.settings.b4_prefixes) {
                                st.reconcile_soon();
                            }
                            st.own_b4 = own;
                            if let Err(e) = written {
                                warn!("writing the host's addresses into the deny lists: {e:#}");
                            }
                        }
                        Err(e) => warn!("reading the host's addresses: {e:#}"),
                    }
                }
                st.reconcile();
                // Nothing is lost silently: a full event ring is counted by XDP and said here.
                if let Ok(n) = read_counter(pin, dslite_common::Counter::EventsLost) {
                    if n > st.events_lost {
                        warn!("NAT log: {} events lost to a full ring buffer (events_lost = {n})", n - st.events_lost);
                    }
                    st.events_lost = n;
                }
                let now = crate::clock::monotonic_ns();
                let swept = st.sweeper.sweep(now);
                if let Ok(r) = &swept {
                    for rec in &r.records {
                        st.natlog.emit(rec);
                    }
                }
                st.natlog.tick();
                let natlog = st.natlog.snapshot();
                match swept {
                    // The table's figures come at the end of a cycle (every sweep up to
                    // SWEEP_SLICE mappings; every few at millions): between, the last
                    // cycle's stay and only the NAT log's counters move.
                    Ok(r) if !r.cycle_done => {
                        if let Ok(mut g) = st.gauges.lock() {
                            if let Some(g) = g.as_mut() {
                                g.natlog = natlog;
                            }
                        }
                    }
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

/// Stopping without `--persist` (XDP already detached, the maps still pinned): log what is
/// left in the ring buffer, then a release for every block still held (and, with
/// `--log-sessions`, a deletion for every mapping): the dataplane and its state go now.
fn log_the_stop(pin: &std::path::Path, st: &mut AftrState) {
    match events::open(pin) {
        Ok(mut ring) => {
            events::drain(&mut ring, &mut st.natlog);
        }
        Err(e) => warn!("NAT log: reading the last events at exit: {e:#}"),
    }
    match st.sweeper.release_all(crate::clock::monotonic_ns()) {
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

#[cfg(test)]
mod tests {
    use super::own_address_joined;

    #[test]
    fn an_own_address_joining_an_allowed_prefix_calls_for_a_reconcile() {
        let prefixes = vec!["2001:db8:a::/64".parse().unwrap()];
        let addr = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let (b4, link_local) = (addr("2001:db8:a::7"), addr("fe80::1"));
        assert!(own_address_joined(&[], &[b4], &prefixes));
        assert!(
            !own_address_joined(&[b4], &[b4], &prefixes),
            "had it already"
        );
        assert!(
            !own_address_joined(&[], &[link_local], &prefixes),
            "no B4 can have it: nothing to release"
        );
        assert!(
            !own_address_joined(&[b4], &[], &prefixes),
            "a lost address allows more, not less"
        );
    }
}
