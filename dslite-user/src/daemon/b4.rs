//! The B4 daemon: its start (links, its own address, finding the AFTR, the LAN's prefixes)
//! and its loop (following the WAN address and the AFTR's DNS name or file).

use anyhow::Result;
use dslite_common::maps::B4Config;
use log::{info, warn};

use super::{
    bring_up, load, publish, serve_metrics, start_log_forwarding, stopped, warn_tunnel_mtu,
    Received, Signals,
};
use crate::{
    config::{B4Options, Cidr4},
    dataplane, netlink, slowpath,
    usage::usage,
};

/// `dslite b4`: run until SIGTERM or SIGINT.
pub async fn run(o: B4Options) -> Result<()> {
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
    let mut ebpf = load(
        s.bpf_object.as_deref(),
        &s.pin_path,
        &dataplane::map_sizes(None),
        s.persist,
    )?;
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
        let role = slowpath::Role::B4 {
            b4: address,
            aftr: found.aftr,
        };
        let running = bring_up(
            &mut ebpf,
            dataplane::PROG_B4,
            &[&lan, &wan],
            super::Attach {
                hook: s.hook,
                xdp_mode: s.xdp_mode,
                persist: s.persist,
            },
            &s.pin_path,
            s.nexthop_cache,
            role,
            &s.slow,
        )
        .await?;
        info!(
            "B4 {address} up: AFTR {}, LAN {} ({} local prefixes), WAN {}, maps at {}",
            found.aftr,
            lan.name,
            lan_prefixes.len(),
            wan.name,
            s.pin_path.display()
        );
        let _metrics = serve_metrics(s.metrics, &s.pin_path, Default::default()).await?;
        let mut st = B4State {
            b4: address,
            aftr: found,
            follow_wan: s.address.is_none().then_some(wan.index),
            source: s.aftr.clone(),
            dns: s.dns_servers.clone(),
            next_lookup: std::time::Instant::now(),
        };
        st.schedule();
        b4_loop(&s.pin_path, &running.slow, &mut st).await
    }
    .await;
    drop(logger);
    drop(ebpf);
    stopped("B4", s.persist, &s.pin_path);
    r
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
    let mut signals = Signals::new()?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            received = signals.next() => {
                if let Received::Stop = received {
                    return Ok(());
                }
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
