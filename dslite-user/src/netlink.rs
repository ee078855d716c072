//! Interface facts from the kernel over rtnetlink (never by parsing `ip` output).

use std::net::IpAddr;

use anyhow::{bail, Context as _, Result};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::{AddressAttribute, AddressScope},
    link::{InfoKind, LinkAttribute, LinkInfo},
};

/// An interface as the controller needs it.
#[derive(Clone, Debug)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// `IFLA_INFO_KIND` (veth, bridge, tun...): virtual devices have one, NICs none.
    pub kind: Option<String>,
    /// `IFLA_LINK`, for a veth its peer's ifindex, with `IFLA_LINK_NETNSID`, the peer's
    /// namespace as this one numbers it (None: this namespace).
    pub peer: Option<(u32, Option<i32>)>,
}

/// An address configured on an interface.
#[derive(Clone, Debug)]
pub struct Addr {
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub global: bool,
}

async fn handle() -> Result<rtnetlink::Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Look an interface up by name.
pub async fn link(name: &str) -> Result<Link> {
    let h = handle().await?;
    let mut links = h.link().get().match_name(name.to_string()).execute();
    let msg = match links.try_next().await {
        Ok(Some(m)) => m,
        _ => bail!("interface '{name}' does not exist"),
    };
    let mac = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
        _ => None,
    });
    let mtu = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500);
    let kind = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(InfoKind::Other(k)) => Some(k.clone()),
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    });
    let link = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    });
    let nsid = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::NetnsId(n) => Some(*n),
        _ => None,
    });
    Ok(Link {
        name: name.to_string(),
        index: msg.header.index,
        mac,
        mtu,
        kind,
        peer: link.map(|l| (l, nsid)),
    })
}

/// Every address on interface `index`.
pub async fn addresses(index: u32) -> Result<Vec<Addr>> {
    addresses_of(Some(index)).await
}

/// Every address on every interface of this namespace.
pub async fn all_addresses() -> Result<Vec<Addr>> {
    addresses_of(None).await
}

async fn addresses_of(index: Option<u32>) -> Result<Vec<Addr>> {
    let h = handle().await?;
    let mut out = Vec::new();
    let mut req = h.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let mut stream = req.execute();
    while let Some(msg) = stream.try_next().await.context("listing addresses")? {
        let global = msg.header.scope == AddressScope::Universe;
        for a in &msg.attributes {
            if let AddressAttribute::Address(ip) = a {
                out.push(Addr {
                    addr: *ip,
                    prefix_len: msg.header.prefix_len,
                    global,
                });
            }
        }
    }
    Ok(out)
}

/// Bring the slow path's TAP up: our MAC, a large MTU (whole reassembled packets cross it),
/// and no ARP (nothing on it needs resolving).
pub async fn configure_tap(index: u32, mac: [u8; 6], mtu: u32) -> Result<()> {
    let h = handle().await?;
    h.link()
        .set(index)
        .address(mac.to_vec())
        .mtu(mtu)
        .arp(false)
        .up()
        .execute()
        .await
        .context("configuring the slow path's TAP device")
}

/// B4: give the TAP the router's own IPv4 address (192.0.0.2, RFC 6333 §5.7) and, when the
/// namespace has no IPv4 default route, route IPv4 into the softwire through it. Returns
/// whether the default route was added.
pub async fn own_ipv4_route(index: u32, addr: std::net::Ipv4Addr) -> Result<bool> {
    let h = handle().await?;
    h.address()
        .add(index, IpAddr::V4(addr), 32)
        .execute()
        .await
        .context("adding 192.0.0.2 to the slow path's TAP device")?;
    let mut routes = h.route().get(rtnetlink::IpVersion::V4).execute();
    while let Some(r) = routes.try_next().await.context("listing IPv4 routes")? {
        let main = r.header.table == 254;
        if main && r.header.destination_prefix_length == 0 {
            return Ok(false);
        }
    }
    h.route()
        .add()
        .v4()
        .destination_prefix(std::net::Ipv4Addr::UNSPECIFIED, 0)
        .output_interface(index)
        .pref_source(addr)
        .execute()
        .await
        .context("adding the IPv4 default route into the softwire")?;
    Ok(true)
}

/// Frames the kernel dropped transmitting on interface `index` (for the slow path's TAP: its
/// queue toward the controller was full).
pub async fn tx_dropped(index: u32) -> Result<u64> {
    let h = handle().await?;
    let mut links = h.link().get().match_index(index).execute();
    let msg = links
        .try_next()
        .await
        .context("reading link statistics")?
        .context("the slow path's TAP is gone")?;
    Ok(msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(s.tx_dropped),
            _ => None,
        })
        .unwrap_or(0))
}

/// Call `on_change` for every route, neighbour, address or link change the kernel announces
/// (the XDP next-hop cache is invalidated on each).
pub fn watch_changes(
    mut on_change: impl FnMut() + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>> {
    use netlink_sys::{AsyncSocket as _, SocketAddr};
    let (mut conn, _handle, mut messages) =
        rtnetlink::new_connection().context("opening rtnetlink for change events")?;
    let groups = (libc::RTMGRP_LINK
        | libc::RTMGRP_NEIGH
        | libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV6_IFADDR
        | libc::RTMGRP_IPV6_ROUTE) as u32;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .context("subscribing to route, neighbour and link events")?;
    tokio::spawn(conn);
    Ok(tokio::spawn(async move {
        use futures::StreamExt as _;
        while messages.next().await.is_some() {
            on_change();
        }
    }))
}
