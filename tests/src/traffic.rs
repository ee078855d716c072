//! Traffic of our own, run on threads inside namespaces: UDP and TCP echo servers, a UDP
//! request/response client, verified TCP bulk transfers (echoed, or one way), and ping over
//! a raw ICMP socket.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::netns::Netns;

/// `ip:port`, the way the tests name every endpoint.
pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// A server thread; stopped (and joined) on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// UDP echo server: replies with the payload followed by `|` and the peer address it saw,
/// so clients learn their outside (NATed) address and port.
pub fn udp_echo_server(ns: &Netns, addr: SocketAddrV4) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.run(move || {
        let sock = UdpSocket::bind(addr).expect("bind udp echo");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 65536];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let mut reply = buf[..n].to_vec();
                reply.extend_from_slice(format!("|{peer}").as_bytes());
                let _ = sock.send_to(&reply, peer);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("udp echo server ready");
    Server {
        stop,
        handle: Some(handle),
    }
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

/// A TCP server in `ns`: every accepted connection runs `handle` on a thread of its own,
/// with 20 s timeouts so a stalled peer ends the worker instead of hanging the test.
fn tcp_server(ns: &Netns, addr: SocketAddr, handle: fn(TcpStream)) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = ns.run(move || {
        let l = TcpListener::bind(addr).expect("bind tcp server");
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !s.load(Ordering::Relaxed) {
            let Ok((c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            std::thread::spawn(move || handle(c));
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("tcp server ready");
    Server {
        stop,
        handle: Some(thread),
    }
}

/// TCP echo server: copies every byte back on each connection.
pub fn tcp_echo_server(ns: &Netns, addr: impl Into<SocketAddr>) -> Server {
    tcp_server(ns, addr.into(), |mut c| {
        let mut r = c.try_clone().unwrap();
        let _ = std::io::copy(&mut r, &mut c);
        let _ = c.shutdown(std::net::Shutdown::Write);
    })
}

/// A server for one-way transfers of pattern bytes. A client sends `D` or `U` and a
/// length (8 bytes, big-endian): for `D` the server sends that many bytes and closes; for
/// `U` it reads and verifies them, then answers `ok` or what went wrong.
pub fn tcp_pattern_server(ns: &Netns, addr: impl Into<SocketAddr>) -> Server {
    tcp_server(ns, addr.into(), |mut c| {
        let mut head = [0u8; 9];
        if c.read_exact(&mut head).is_err() {
            return;
        }
        let len = u64::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        let _ = match head[0] {
            b'D' => {
                send_pattern(&mut c, len, None).and_then(|()| c.shutdown(std::net::Shutdown::Write))
            }
            b'U' => {
                let answer = match read_pattern(&mut c, len, None) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("{e:#}"),
                };
                c.write_all(answer.as_bytes())
                    .and_then(|()| c.shutdown(std::net::Shutdown::Write))
            }
            _ => Ok(()),
        };
    })
}

/// Write `len` pattern bytes to `w`, by `deadline` if one is given.
fn send_pattern(
    w: &mut impl std::io::Write,
    len: usize,
    deadline: Option<Instant>,
) -> std::io::Result<()> {
    let mut sent = 0;
    let mut buf = vec![0u8; 65536];
    while sent < len {
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("only {sent} of {len} bytes sent in time"),
            ));
        }
        let n = (len - sent).min(buf.len());
        for (j, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(sent + j);
        }
        w.write_all(&buf[..n])?;
        sent += n;
    }
    Ok(())
}

/// Read exactly `len` pattern bytes from `r` up to its end, verifying each, by `deadline`
/// if one is given.
fn read_pattern(r: &mut impl std::io::Read, len: usize, deadline: Option<Instant>) -> Result<()> {
    let mut got = 0;
    let mut buf = vec![0u8; 65536];
    loop {
        if deadline.is_some_and(|d| Instant::now() > d) {
            bail!("only {got} of {len} bytes received in time");
        }
        let n = r
            .read(&mut buf)
            .with_context(|| format!("reading after {got} bytes"))?;
        if n == 0 {
            break;
        }
        for (j, b) in buf[..n].iter().enumerate() {
            if *b != pattern(got + j) {
                bail!("byte {} corrupted: {} != {}", got + j, b, pattern(got + j));
            }
        }
        got += n;
        if got > len {
            bail!("{got} bytes, more than the {len} expected");
        }
    }
    if got != len {
        bail!("received {got} of {len} bytes");
    }
    Ok(())
}

/// Which way a one-way transfer goes.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// From the server to the client.
    Download,
    /// From the client to the server.
    Upload,
}

/// `len` pattern bytes one way between `ns` and a [`tcp_pattern_server`] at `to`, every byte
/// verified by its receiver, within `limit` (a stalled transfer that still trickles would
/// otherwise outlast every socket timeout). Returns the seconds it took.
pub fn tcp_one_way(
    ns: &Netns,
    to: impl Into<SocketAddr>,
    dir: Direction,
    len: usize,
    limit: Duration,
) -> JoinHandle<Result<f64>> {
    let to: SocketAddr = to.into();
    ns.run(move || -> Result<f64> {
        let start = Instant::now();
        let deadline = Some(start + limit);
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(10))
            .with_context(|| format!("connect {to}"))?;
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        c.set_write_timeout(Some(Duration::from_secs(20)))?;
        let op = match dir {
            Direction::Download => b'D',
            Direction::Upload => b'U',
        };
        let mut head = vec![op];
        head.extend_from_slice(&(len as u64).to_be_bytes());
        c.write_all(&head)?;
        match dir {
            Direction::Download => read_pattern(&mut c, len, deadline)?,
            Direction::Upload => {
                send_pattern(&mut c, len, deadline).context("sending")?;
                c.shutdown(std::net::Shutdown::Write)?;
                let mut answer = String::new();
                c.read_to_string(&mut answer)
                    .context("waiting for the server's verdict")?;
                if answer != "ok" {
                    bail!("the server received: {answer:?}");
                }
            }
        }
        Ok(start.elapsed().as_secs_f64())
    })
}

/// Byte `i` of the test stream (not periodic in any small power of two).
pub fn pattern(i: usize) -> u8 {
    ((i * 7 + i / 251) % 256) as u8
}

/// Send `len` pattern bytes to an echo server from `ns` and verify every byte that comes
/// back. Returns the number of verified bytes.
pub fn tcp_transfer(
    ns: &Netns,
    to: impl Into<SocketAddr>,
    len: usize,
) -> JoinHandle<Result<usize>> {
    let to: SocketAddr = to.into();
    ns.run(move || -> Result<usize> {
        let c = TcpStream::connect_timeout(&to, Duration::from_secs(10))
            .with_context(|| format!("connect {to}"))?;
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        c.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut w = c.try_clone()?;
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            send_pattern(&mut w, len, None)?;
            w.shutdown(std::net::Shutdown::Write)
        });
        let mut r = c;
        // On a failed read the writer is left to its timeout, as the test fails anyway.
        read_pattern(&mut r, len, None).context("the echo")?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(len)
    })
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

/// Length of the body [`http_server`] serves.
pub const HTTP_BODY_LEN: usize = 8 * 1024 * 1024;

/// Minimal HTTP/1.1 server: every GET is answered with [`HTTP_BODY_LEN`] pattern bytes.
pub fn http_server(ns: &Netns, addr: SocketAddrV4) -> Server {
    tcp_server(ns, addr.into(), |mut c| {
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {HTTP_BODY_LEN}\r\nConnection: close\r\n\r\n"
        );
        let _ = c.write_all(head.as_bytes());
        let body: Vec<u8> = (0..HTTP_BODY_LEN).map(pattern).collect();
        let _ = c.write_all(&body);
    })
}

/// GET `/` from `to` inside `ns`; verifies the body. Returns (bytes, seconds).
pub fn http_get(ns: &Netns, to: SocketAddrV4) -> JoinHandle<Result<(usize, f64)>> {
    ns.run(move || -> Result<(usize, f64)> {
        let start = Instant::now();
        let mut c = TcpStream::connect_timeout(&to.into(), Duration::from_secs(10))?;
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        c.write_all(format!("GET / HTTP/1.1\r\nHost: {to}\r\n\r\n").as_bytes())?;
        let mut all = Vec::new();
        c.read_to_end(&mut all)?;
        let split = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no HTTP header")?
            + 4;
        let head = std::str::from_utf8(&all[..split])?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("bad response: {head}");
        }
        let body = &all[split..];
        if let Some(i) = body.iter().enumerate().position(|(i, b)| *b != pattern(i)) {
            bail!("body corrupted at byte {i}");
        }
        Ok((body.len(), start.elapsed().as_secs_f64()))
    })
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
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = ns.run(move || {
        use std::os::fd::AsRawFd as _;
        let sock = UdpSocket::bind(addr).expect("bind udp mirror");
        set_df(sock.as_raw_fd(), Df::Set).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 65536];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("udp mirror ready");
    Server {
        stop,
        handle: Some(thread),
    }
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
    ns.run(move || -> Result<usize> {
        use std::os::fd::AsRawFd as _;
        let sock = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
        set_df(sock.as_raw_fd(), df)?;
        sock.set_read_timeout(Some(Duration::from_millis(700)))?;
        let mut buf = vec![0u8; 65536];
        for i in 1..=tries {
            // EMSGSIZE after an ICMP lowered the path MTU under DF=1: try again later.
            let _ = sock.send_to(&payload, to);
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if buf[..n] == payload[..] => return Ok(i),
                Ok((n, _)) => bail!("mirror returned {n} different bytes"),
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
    ns.run(move || -> Result<usize> {
        use std::os::fd::AsRawFd as _;
        let sock = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
        set_df(sock.as_raw_fd(), df)?;
        sock.connect(to)?;
        sock.set_read_timeout(Some(Duration::from_millis(700)))?;
        let mut buf = vec![0u8; 65536];
        for i in 1..=tries {
            sock.send(&payload)
                .with_context(|| format!("send {} #{i}", payload.len()))?;
            match sock.recv(&mut buf) {
                Ok(n) if buf[..n] == payload[..] => return Ok(i),
                Ok(n) => bail!("mirror returned {n} different bytes"),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => bail!("recv after send #{i}: {e}"),
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
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let name = name.to_ascii_lowercase();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = ns.run(move || {
        let sock = UdpSocket::bind(bind).expect("bind dns server");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 1500];
        while !s.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let q = &buf[..n];
            if n < 17 {
                continue;
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
                continue;
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
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("dns server ready");
    Server {
        stop,
        handle: Some(thread),
    }
}
