//! UDP servers and clients: an echo that names the peer it saw (the outside address), a
//! mirror, single datagrams and bursts, collectors, and the DF behaviour of a sender.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    sync::atomic::Ordering,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::Server;
use crate::netns::Netns;

/// A UDP server in `ns` on `addr`: `setup` adjusts the bound socket, then `reply` handles
/// each datagram (the bytes and their sender) until the server is dropped.
pub(super) fn udp_server(
    ns: &Netns,
    addr: impl Into<SocketAddr>,
    what: &'static str,
    setup: impl FnOnce(&UdpSocket) + Send + 'static,
    mut reply: impl FnMut(&UdpSocket, &[u8], SocketAddr) + Send + 'static,
) -> Server {
    let addr = addr.into();
    Server::spawn(ns, what, move |stop, ready| {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {what}: {e}"));
        setup(&sock);
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                reply(&sock, &buf[..n], peer);
            }
        }
    })
}

/// UDP echo server: replies with the payload followed by `|` and the peer address it saw,
/// so clients learn their outside (NATed) address and port.
pub fn udp_echo_server(ns: &Netns, addr: SocketAddrV4) -> Server {
    udp_server(
        ns,
        addr,
        "udp echo server",
        |_| {},
        |sock, data, peer| {
            let mut reply = data.to_vec();
            reply.extend_from_slice(format!("|{peer}").as_bytes());
            let _ = sock.send_to(&reply, peer);
        },
    )
}

/// Send `payload` from `bind` to `to` and wait for the echo; retries a few times.
/// Returns the peer address the server saw (the outside address:port).
pub fn udp_request(
    ns: &Netns,
    bind: SocketAddrV4,
    to: SocketAddrV4,
    payload: &str,
) -> Result<SocketAddr> {
    let payload = payload.to_string();
    ns.run(move || -> Result<SocketAddr> {
        let sock = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = vec![0u8; 65536];
        for _ in 0..6 {
            sock.send_to(payload.as_bytes(), to)?;
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if from != SocketAddr::V4(to) {
                    bail!("reply from {from}, expected {to}");
                }
                let text = std::str::from_utf8(&buf[..n])?;
                let (echo, seen) = text.rsplit_once('|').context("no peer in reply")?;
                if echo != payload {
                    bail!("echo mismatch: sent {payload:?}, got {echo:?}");
                }
                return Ok(seen.parse()?);
            }
        }
        bail!("no UDP reply from {to} to {bind}")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("udp client panicked"))?
}

/// Wait for one UDP datagram on `bind` (used with crafted packets).
pub fn udp_listen_once(
    ns: &Netns,
    bind: SocketAddrV4,
    timeout: Duration,
) -> JoinHandle<Result<(Vec<u8>, SocketAddr)>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.run(move || {
        let sock = UdpSocket::bind(bind)?;
        tx.send(()).unwrap();
        sock.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 65536];
        let (n, from) = sock.recv_from(&mut buf).context("waiting for a datagram")?;
        Ok((buf[..n].to_vec(), from))
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    h
}

/// Send one datagram from `bind` to `to` inside `ns` (no reply expected).
pub fn udp_send(ns: &Netns, bind: SocketAddrV4, to: SocketAddr, payload: &[u8]) -> Result<()> {
    udp_send_df(ns, bind, to, payload, Df::Want)
}

/// [`udp_send`] with the given DF behaviour.
pub fn udp_send_df(
    ns: &Netns,
    bind: SocketAddrV4,
    to: SocketAddr,
    payload: &[u8],
    df: Df,
) -> Result<()> {
    let payload = payload.to_vec();
    ns.run(move || -> Result<()> {
        use std::os::fd::AsRawFd as _;
        let sock = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
        set_df(sock.as_raw_fd(), df)?;
        sock.send_to(&payload, to)?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("udp sender panicked"))?
}

/// What a burst of one-datagram flows got back.
#[derive(Debug, Default)]
pub struct BurstResult {
    pub replies: usize,
    /// Sockets that got an ICMP error (reported by the kernel as a socket error).
    pub icmp_errors: usize,
    pub silent: usize,
}

/// From each source port in `ports`, send one datagram to `to` over a connected UDP socket,
/// then give every flow up to `wait` to get a reply or an ICMP error.
pub fn udp_burst(
    ns: &Netns,
    addr: Ipv4Addr,
    ports: std::ops::Range<u16>,
    to: SocketAddrV4,
    wait: Duration,
) -> Result<BurstResult> {
    ns.run(move || -> Result<BurstResult> {
        let mut socks = Vec::new();
        for p in ports {
            let s = UdpSocket::bind(SocketAddrV4::new(addr, p))?;
            s.connect(to)?;
            s.set_nonblocking(true)?;
            s.send(b"burst")?;
            socks.push(Some(s));
        }
        let mut r = BurstResult::default();
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline && socks.iter().any(Option::is_some) {
            for slot in socks.iter_mut() {
                let Some(s) = slot else { continue };
                match s.recv(&mut buf) {
                    Ok(_) => {
                        r.replies += 1;
                        *slot = None;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        r.icmp_errors += 1;
                        *slot = None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        r.silent = socks.iter().filter(|s| s.is_some()).count();
        Ok(r)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("burst thread panicked"))?
}

/// How a UDP sender treats DF (IP_MTU_DISCOVER).
#[derive(Clone, Copy, Debug)]
pub enum Df {
    /// DF=1, never fragment locally (IP_PMTUDISC_DO).
    Set,
    /// DF=1 until an ICMP lowers the path MTU, then fragment locally (IP_PMTUDISC_WANT).
    Want,
    /// DF=0 (IP_PMTUDISC_DONT).
    Clear,
}

fn set_df(fd: i32, df: Df) -> std::io::Result<()> {
    let v: libc::c_int = match df {
        Df::Set => libc::IP_PMTUDISC_DO,
        Df::Want => libc::IP_PMTUDISC_WANT,
        Df::Clear => libc::IP_PMTUDISC_DONT,
    };
    // SAFETY: an int option of the right size on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// UDP mirror: sends every datagram back unchanged, with DF=1 and never fragmented locally.
pub fn udp_mirror_server(ns: &Netns, addr: SocketAddrV4) -> Server {
    use std::os::fd::AsRawFd as _;
    udp_server(
        ns,
        addr,
        "udp mirror",
        |sock| set_df(sock.as_raw_fd(), Df::Set).unwrap(),
        |sock, data, peer| {
            let _ = sock.send_to(data, peer);
        },
    )
}

/// Send `payload` from `bind` to `to` with `df` until the same bytes come back (a
/// [`udp_mirror_server`]), up to `tries` times 700 ms. Returns how many sends it took.
pub fn udp_mirror_exchange(
    ns: &Netns,
    bind: SocketAddrV4,
    to: SocketAddrV4,
    payload: Vec<u8>,
    df: Df,
    tries: usize,
) -> Result<usize> {
    mirror_exchange(ns, bind, to, payload, df, tries, false)
}

/// Like [`udp_mirror_exchange`] from a *connected* socket: any error it reports (EMSGSIZE
/// once an ICMP lowered the path MTU under DF=1, ECONNREFUSED or EHOSTUNREACH from an ICMP
/// error) fails at once, as it would fail the application. Returns how many sends it took.
pub fn udp_connected_exchange(
    ns: &Netns,
    bind: SocketAddrV4,
    to: SocketAddrV4,
    payload: Vec<u8>,
    df: Df,
    tries: usize,
) -> Result<usize> {
    mirror_exchange(ns, bind, to, payload, df, tries, true)
}

fn mirror_exchange(
    ns: &Netns,
    bind: SocketAddrV4,
    to: SocketAddrV4,
    payload: Vec<u8>,
    df: Df,
    tries: usize,
    connected: bool,
) -> Result<usize> {
    ns.run(move || -> Result<usize> {
        use std::os::fd::AsRawFd as _;
        let sock = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
        set_df(sock.as_raw_fd(), df)?;
        if connected {
            sock.connect(to)?;
        }
        sock.set_read_timeout(Some(Duration::from_millis(700)))?;
        let mut buf = vec![0u8; 65536];
        for i in 1..=tries {
            if connected {
                sock.send(&payload)
                    .with_context(|| format!("send {} #{i}", payload.len()))?;
            } else {
                // EMSGSIZE after an ICMP lowered the path MTU under DF=1: try again later.
                let _ = sock.send_to(&payload, to);
            }
            match sock.recv(&mut buf) {
                Ok(n) if buf[..n] == payload[..] => return Ok(i),
                Ok(n) => bail!("mirror returned {n} different bytes"),
                Err(e)
                    if connected
                        && !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                {
                    bail!("recv after send #{i}: {e}")
                }
                Err(_) => continue,
            }
        }
        bail!(
            "no intact mirror of {} bytes from {to} after {tries} sends",
            payload.len()
        )
    })
    .join()
    .map_err(|_| anyhow::anyhow!("udp client panicked"))?
}

/// Every datagram that reaches `bind` within `wait`.
pub fn udp_collect(
    ns: &Netns,
    bind: SocketAddrV4,
    wait: Duration,
) -> JoinHandle<Result<Vec<Vec<u8>>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.run(move || {
        let sock = UdpSocket::bind(bind)?;
        tx.send(()).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        Ok(got)
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("collector ready");
    h
}

/// The path MTU `ns`'s kernel holds toward `to` after sending it a DF=1 datagram of
/// `len` bytes and giving an ICMP "fragmentation needed" time to arrive (IP_MTU).
pub fn path_mtu_after(ns: &Netns, bind: SocketAddrV4, to: SocketAddrV4, len: usize) -> Result<u32> {
    ns.run(move || -> Result<u32> {
        use std::os::fd::AsRawFd as _;
        let sock = UdpSocket::bind(bind)?;
        sock.connect(to)?;
        set_df(sock.as_raw_fd(), Df::Set)?;
        let payload = vec![0x5au8; len];
        let mut mtu: libc::c_int = 0;
        for _ in 0..10 {
            let _ = sock.send(&payload);
            std::thread::sleep(Duration::from_millis(300));
            let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: an int option read into a local of the right size.
            let rc = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU,
                    (&mut mtu as *mut libc::c_int).cast(),
                    &mut l,
                )
            };
            if rc != 0 {
                bail!("IP_MTU: {}", std::io::Error::last_os_error());
            }
            if mtu < 1500 {
                break;
            }
        }
        Ok(mtu as u32)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("path MTU probe panicked"))?
}
