//! Traffic of our own, run on threads inside namespaces: TCP ([`tcp`]: echo, one-way and
//! HTTP transfers, every byte verified) and UDP ([`udp`]: echo, mirror, bursts, DF control)
//! servers and clients, and here ping and probes over raw ICMP sockets, raw Ethernet frames,
//! the MSS of a SYN, /proc/net/snmp counters and a DNS server.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::netns::Netns;

mod tcp;
mod udp;

pub use tcp::{
    http_get, http_server, pattern, tcp_echo_server, tcp_one_way, tcp_pattern_server, tcp_transfer,
    Direction, HTTP_BODY_LEN,
};
pub use udp::{
    path_mtu_after, udp_burst, udp_collect, udp_connected_exchange, udp_echo_server,
    udp_listen_once, udp_mirror_exchange, udp_mirror_server, udp_request, udp_send, udp_send_df,
    BurstResult, Df,
};

/// `ip:port`, the way the tests name every endpoint.
pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// A server thread; stopped (and joined) on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    /// Run a server in `ns`: `body` sets up (binds), calls its `ready` argument, then serves
    /// until the flag it is given is set (by dropping the `Server`). Waits for `ready`.
    fn spawn(
        ns: &Netns,
        what: &'static str,
        body: impl FnOnce(&AtomicBool, &dyn Fn()) + Send + 'static,
    ) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.run(move || {
            body(&s, &|| {
                let _ = ready_tx.send(());
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{what} ready"));
        Server {
            stop,
            handle: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// An ICMP echo request (type 8) with a correct checksum.
fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(payload);
    let c = dslite_common::csum::checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_ne_bytes());
    pkt
}

/// One IPv4 packet from a raw socket (header included), if one came before the timeout.
fn recv_raw(s: &socket2::Socket) -> Option<Vec<u8>> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    let n = s.recv(&mut buf).ok()?;
    // SAFETY: `recv` initialised the first n bytes.
    Some(
        buf[..n]
            .iter()
            .map(|x| unsafe { x.assume_init() })
            .collect(),
    )
}

/// Send `count` ICMP echo requests with identifier `id` from `ns` to `dst` over a raw socket,
/// 100 ms apart; returns how many distinct sequence numbers were answered within 3 s of the
/// last request.
pub fn ping(ns: &Netns, dst: Ipv4Addr, id: u16, count: u16) -> Result<u16> {
    ns.run(move || -> Result<u16> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut answered = std::collections::HashSet::new();
        let mut deadline = Instant::now();
        let mut next_seq = 0;
        while next_seq < count || (Instant::now() < deadline && answered.len() < count as usize) {
            if next_seq < count {
                let pkt = echo_request(id, next_seq, b"dslite ping payload");
                s.send_to(&pkt, &SocketAddr::from((dst, 0)).into())?;
                next_seq += 1;
                deadline = Instant::now() + Duration::from_secs(3);
            }
            let Some(b) = recv_raw(&s) else { continue };
            let ihl = ((b[0] & 0x0f) as usize) * 4;
            if b.len() >= ihl + 8
                && b[ihl] == 0
                && u16::from_be_bytes([b[ihl + 4], b[ihl + 5]]) == id
                && b[12..16] == dst.octets()
            {
                answered.insert(u16::from_be_bytes([b[ihl + 6], b[ihl + 7]]));
            }
        }
        Ok(answered.len() as u16)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("ping thread panicked"))?
}

/// Send one raw Ethernet frame out of `ifname` (AF_PACKET) from inside `ns`.
pub fn send_frame(ns: &Netns, ifname: &str, frame: Vec<u8>) -> Result<()> {
    send_frames(ns, ifname, vec![frame])
}

/// Send raw Ethernet frames, in order, out of `ifname` (AF_PACKET) from inside `ns`.
pub fn send_frames(ns: &Netns, ifname: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    send_frames_in_background(ns, ifname, frames)
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
}

/// [`send_frames`] on a thread of its own, to run beside other traffic.
pub fn send_frames_in_background(
    ns: &Netns,
    ifname: &str,
    frames: Vec<Vec<u8>>,
) -> JoinHandle<Result<()>> {
    let ifname = ifname.to_string();
    ns.run(move || -> Result<()> {
        // SAFETY: plain socket/bind/send calls on a local fd, closed at the end.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            let name = std::ffi::CString::new(ifname.clone())?;
            let index = libc::if_nametoindex(name.as_ptr());
            let mut result = Ok(());
            for frame in &frames {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_ifindex = index as i32;
                sll.sll_halen = 6;
                sll.sll_addr[..6].copy_from_slice(&frame[..6]);
                let rc = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if rc < 0 {
                    let err = std::io::Error::last_os_error();
                    if err.raw_os_error() == Some(libc::ENOBUFS) {
                        // A full device queue: wait for it instead of failing the flood.
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    result = Err(anyhow::anyhow!("sendto {ifname}: {err}"));
                    break;
                }
            }
            libc::close(fd);
            result
        }
    })
}

/// Send one echo request with IP TTL `ttl` from `ns` to `dst` (a traceroute probe); return
/// the source and type of the first ICMP message about it (an echo reply, or an error that
/// quotes it).
pub fn icmp_probe(ns: &Netns, dst: Ipv4Addr, id: u16, ttl: u32) -> Result<(Ipv4Addr, u8)> {
    ns.run(move || -> Result<(Ipv4Addr, u8)> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        s.set_ttl(ttl)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let pkt = echo_request(id, 1, b"probe");
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut sent = Instant::now() - Duration::from_secs(1);
        while Instant::now() < deadline {
            if sent.elapsed() > Duration::from_millis(700) {
                s.send_to(&pkt, &SocketAddr::from((dst, 0)).into())?;
                sent = Instant::now();
            }
            let Some(b) = recv_raw(&s) else { continue };
            let ihl = ((b[0] & 0x0f) as usize) * 4;
            let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
            let ty = b[ihl];
            let quoted_id = |off: usize| {
                b.len() >= off + 6 && u16::from_be_bytes([b[off + 4], b[off + 5]]) == id
            };
            match ty {
                0 if quoted_id(ihl) => return Ok((src, ty)),
                3 | 11 => {
                    let q = ihl + 8;
                    let qihl = ((b.get(q).copied().unwrap_or(0) & 0x0f) as usize) * 4;
                    if quoted_id(q + qihl) {
                        return Ok((src, ty));
                    }
                }
                _ => {}
            }
        }
        bail!("no ICMP answer to a TTL {ttl} probe to {dst}")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
}

/// The MSS option of the first TCP SYN that reaches port `port` in `ns` within `wait`
/// (read with a raw socket beside the real listener).
pub fn syn_mss_seen(ns: &Netns, port: u16, wait: Duration) -> JoinHandle<Result<Option<u16>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.run(move || -> Result<Option<u16>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        tx.send(()).unwrap();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let Some(b) = recv_raw(&s) else { continue };
            let ihl = ((b[0] & 0x0f) as usize) * 4;
            if b.len() < ihl + 20 || u16::from_be_bytes([b[ihl + 2], b[ihl + 3]]) != port {
                continue;
            }
            if b[ihl + 13] & 0x12 == 0x02 {
                return Ok(crate::packets::tcp_mss(&b));
            }
        }
        Ok(None)
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("SYN watcher ready");
    h
}

/// A counter of the IPv4 MIB (/proc/net/snmp "Ip:" line, e.g. ReasmOKs) in `ns`.
pub fn ip_mib(ns: &Netns, key: &str) -> Result<u64> {
    snmp(ns, "Ip", key)
}

/// A counter of /proc/net/snmp in `ns`: `section` is the line's prefix without the colon
/// (`Ip`, `Tcp`, `Udp`...), `key` the counter (`InCsumErrors`).
pub fn snmp(ns: &Netns, section: &str, key: &str) -> Result<u64> {
    let (section, key) = (format!("{section}:"), key.to_string());
    ns.run(move || -> Result<u64> {
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let mut lines = text.lines().filter(|l| l.starts_with(&section));
        let (names, values) = (
            lines.next().context("snmp header")?,
            lines.next().context("snmp values")?,
        );
        let i = names
            .split_whitespace()
            .position(|n| n == key)
            .with_context(|| format!("no {section} counter {key}"))?;
        Ok(values
            .split_whitespace()
            .nth(i)
            .context("short snmp line")?
            .parse()?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("snmp reader panicked"))?
}

/// Every ICMP message that reaches `ns` within `wait`: (source, type, code).
pub fn icmp_listen(ns: &Netns, wait: Duration) -> JoinHandle<Result<Vec<(Ipv4Addr, u8, u8)>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.run(move || -> Result<Vec<(Ipv4Addr, u8, u8)>> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        tx.send(()).unwrap();
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Some(b) = recv_raw(&s) else { continue };
            let ihl = ((b[0] & 0x0f) as usize) * 4;
            if b.len() >= ihl + 2 {
                seen.push((
                    Ipv4Addr::new(b[12], b[13], b[14], b[15]),
                    b[ihl],
                    b[ihl + 1],
                ));
            }
        }
        Ok(seen)
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("ICMP listener ready");
    h
}

/// A DNS server in `ns` answering AAAA queries for `name` with `addrs` (TTL `ttl`), and
/// NXDOMAIN for anything else.
pub fn dns_server(
    ns: &Netns,
    bind: SocketAddr,
    name: &str,
    addrs: Vec<std::net::Ipv6Addr>,
    ttl: u32,
) -> Server {
    let name = name.to_ascii_lowercase();
    udp::udp_server(
        ns,
        bind,
        "dns server",
        |_| {},
        move |sock, q, from| {
            let n = q.len();
            if n < 17 {
                return;
            }
            // The question: labels from offset 12 to the root, then type and class.
            let mut off = 12;
            let mut labels = Vec::new();
            while off < n && q[off] != 0 {
                let l = q[off] as usize;
                labels.push(
                    String::from_utf8_lossy(&q[off + 1..(off + 1 + l).min(n)]).to_ascii_lowercase(),
                );
                off += 1 + l;
            }
            let qend = off + 5;
            if qend > n {
                return;
            }
            let qtype = u16::from_be_bytes([q[off + 1], q[off + 2]]);
            let found = labels.join(".") == name;
            let mut r = q[..qend].to_vec();
            r[2] = 0x81; // QR, RD
            r[3] = if found { 0x80 } else { 0x83 }; // RA; NXDOMAIN when not ours
            let answers: Vec<_> = if found && qtype == 28 {
                addrs.clone()
            } else {
                vec![]
            };
            r[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
            for a in answers {
                r.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1]);
                r.extend_from_slice(&ttl.to_be_bytes());
                r.extend_from_slice(&16u16.to_be_bytes());
                r.extend_from_slice(&a.octets());
            }
            let _ = sock.send_to(&r, from);
        },
    )
}
