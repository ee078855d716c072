//! TCP servers and clients whose every byte is checked against [`pattern`]: an echo, one-way
//! downloads and uploads verified by their receiver, and a minimal HTTP server and client.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::atomic::Ordering,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::Server;
use crate::netns::Netns;

/// A TCP server in `ns`: every accepted connection runs `handle` on a thread of its own,
/// with 20 s timeouts so a stalled peer ends the worker instead of hanging the test.
fn tcp_server(ns: &Netns, addr: SocketAddr, handle: fn(TcpStream)) -> Server {
    Server::spawn(ns, "tcp server", move |stop, ready| {
        let l = TcpListener::bind(addr).expect("bind tcp server");
        l.set_nonblocking(true).unwrap();
        ready();
        while !stop.load(Ordering::Relaxed) {
            let Ok((c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            std::thread::spawn(move || handle(c));
        }
    })
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
