//! Datagram sinks: RFC 5424 syslog over UDP or a unix datagram socket (`--syslog`), and
//! the socket IPFIX uses. Sockets are non-blocking and connected: a receiver that does not
//! read (a full unix socket queue, EAGAIN) or is not there yet (no socket file, nobody
//! bound, ECONNREFUSED) leaves the record queued and retried; a UDP receiver host that
//! answered an earlier datagram with ICMP port unreachable is counted as one loss.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    os::{fd::AsRawFd as _, unix::net::UnixDatagram},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    record::{event_name, NatRecord},
    sink::{Delivery, Transport},
};
use crate::clock::rfc3339_ms;

impl NatRecord {
    /// An RFC 5424 message: facility local0, severity info, structured data `natlog`, the
    /// JSON line as the message.
    pub fn to_syslog(&self, host: &str, json: &str) -> String {
        let b4 = if self.b4.is_unspecified() {
            String::new()
        } else {
            format!(" b4=\"{}\"", self.b4)
        };
        format!(
            "<134>1 {} {host} dslite {} natlog [natlog@32473 event=\"{}\"{b4}] {json}",
            rfc3339_ms(self.unix_ms),
            std::process::id(),
            event_name(self.kind),
        )
    }
}

/// Where datagrams go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    Udp(SocketAddr),
    Unix(PathBuf),
}

impl Dest {
    /// `udp:HOST:PORT` or `unix:PATH` (the `--syslog` value).
    pub(crate) fn parse_syslog(s: &str) -> Result<Dest> {
        Ok(match s.split_once(':') {
            Some(("udp", to)) => Dest::Udp(
                to.parse()
                    .with_context(|| format!("--syslog udp:{to}: not HOST:PORT"))?,
            ),
            Some(("unix", path)) if !path.is_empty() => Dest::Unix(path.into()),
            _ => bail!("--syslog '{s}' is not udp:HOST:PORT or unix:PATH"),
        })
    }

    fn show(&self) -> String {
        match self {
            Dest::Udp(a) => format!("udp:{a}"),
            Dest::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

enum Sock {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

/// How soon to connect again after a failed connect.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// A connected, non-blocking datagram socket that reconnects when its receiver goes away.
pub(crate) struct Datagrams {
    dest: Dest,
    sock: Option<Sock>,
    next_connect: Instant,
    /// The last send found the socket buffer (or the receiver's queue) full.
    full: bool,
    last_error: Option<String>,
}

fn is(e: &io::Error, code: i32) -> bool {
    e.raw_os_error() == Some(code)
}

impl Datagrams {
    pub(crate) fn new(dest: Dest) -> Datagrams {
        Datagrams {
            dest,
            sock: None,
            next_connect: Instant::now(),
            full: false,
            last_error: None,
        }
    }

    fn connect(&self) -> io::Result<Sock> {
        Ok(match &self.dest {
            Dest::Udp(to) => {
                let bind: SocketAddr = if to.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(bind)?;
                s.connect(to)?;
                s.set_nonblocking(true)?;
                Sock::Udp(s)
            }
            Dest::Unix(path) => {
                let s = UnixDatagram::unbound()?;
                s.connect(path)?;
                s.set_nonblocking(true)?;
                Sock::Unix(s)
            }
        })
    }

    fn error(&mut self, what: &str, e: &io::Error) {
        self.last_error = Some(format!("{what} {}: {e}", self.dest.show()));
    }

    /// Send one datagram without blocking.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> Delivery {
        self.full = false;
        if self.sock.is_none() {
            if Instant::now() < self.next_connect {
                return Delivery::Retry;
            }
            match self.connect() {
                Ok(s) => self.sock = Some(s),
                Err(e) => {
                    self.error("connecting to", &e);
                    self.next_connect = Instant::now() + RECONNECT_EVERY;
                    return Delivery::Retry;
                }
            }
        }
        let r = match &self.sock {
            Some(Sock::Udp(s)) => s.send(bytes),
            Some(Sock::Unix(s)) => s.send(bytes),
            None => return Delivery::Retry,
        };
        let unix = matches!(self.dest, Dest::Unix(_));
        match r {
            Ok(_) => {
                self.last_error = None;
                Delivery::Done
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || is(&e, libc::ENOBUFS) => {
                self.error("sending to", &e);
                self.full = true;
                Delivery::Retry
            }
            Err(e) if is(&e, libc::EMSGSIZE) => {
                self.error("sending to", &e);
                Delivery::Lost
            }
            // UDP: an ICMP port unreachable answered an earlier datagram; this one was not
            // sent (the error is reported once), so it can go again.
            Err(e) if !unix && is(&e, libc::ECONNREFUSED) => {
                self.error("sending to", &e);
                Delivery::EarlierRefused
            }
            Err(e) => {
                // The receiver went away (a restarted syslog daemon binds a new socket), or
                // the network did: connect again later.
                self.error("sending to", &e);
                self.sock = None;
                self.next_connect = Instant::now() + RECONNECT_EVERY;
                Delivery::Retry
            }
        }
    }

    /// Wait until the socket (for a unix socket: the receiver's queue) has room, at most `t`.
    pub(crate) fn wait(&mut self, t: Duration) {
        let fd = match (&self.sock, self.full) {
            (Some(Sock::Udp(s)), true) => s.as_raw_fd(),
            (Some(Sock::Unix(s)), true) => s.as_raw_fd(),
            _ => {
                std::thread::sleep(t);
                return;
            }
        };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: poll on one pollfd of a socket we own, with a timeout.
        unsafe { libc::poll(&mut p, 1, t.as_millis().min(i32::MAX as u128) as i32) };
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.clone()
    }
}

/// The syslog sink's transport: each item is one formatted RFC 5424 message.
pub(crate) struct SyslogSink(pub(crate) Datagrams);

impl Transport for SyslogSink {
    fn deliver(&mut self, bytes: &[u8], _records: u32) -> Delivery {
        self.0.send(bytes)
    }
    fn wait(&mut self, t: Duration) {
        self.0.wait(t)
    }
    fn last_error(&self) -> Option<String> {
        self.0.last_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::natlog::record::tests::block;
    use dslite_common::maps::EVENT_BLOCK_RELEASED;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dslite-natlog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn syslog_destinations_parse() {
        assert_eq!(
            Dest::parse_syslog("udp:127.0.0.1:514").unwrap(),
            Dest::Udp("127.0.0.1:514".parse().unwrap())
        );
        assert_eq!(
            Dest::parse_syslog("unix:/dev/log").unwrap(),
            Dest::Unix("/dev/log".into())
        );
        for bad in ["tcp:1.2.3.4:5", "udp:host", "unix:", "/dev/log"] {
            assert!(Dest::parse_syslog(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_unix_receiver_that_never_reads_gets_eagain_not_a_blocked_sender() {
        let dir = tmp("unix-stall");
        let path = dir.join("log.sock");
        let _rx = UnixDatagram::bind(&path).unwrap();
        let mut d = Datagrams::new(Dest::Unix(path.clone()));
        let t0 = Instant::now();
        let mut sent = 0;
        let outcome = loop {
            match d.send(b"<134>1 - - - - - - a record") {
                Delivery::Done => sent += 1,
                other => break other,
            }
            assert!(sent < 100_000, "the receiver's queue never filled");
        };
        assert_eq!(outcome, Delivery::Retry);
        assert!(sent > 0);
        // Waiting for room is bounded too.
        d.wait(Duration::from_millis(50));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(
            d.last_error().unwrap().contains("unix:"),
            "{:?}",
            d.last_error()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_absent_unix_receiver_is_retried_and_found_when_it_appears() {
        let dir = tmp("unix-absent");
        let path = dir.join("log.sock");
        let mut d = Datagrams::new(Dest::Unix(path.clone()));
        assert_eq!(d.send(b"x"), Delivery::Retry, "no socket file");
        assert!(d.last_error().unwrap().contains("connecting to"));
        let rx = UnixDatagram::bind(&path).unwrap();
        std::thread::sleep(RECONNECT_EVERY);
        assert_eq!(d.send(b"hello"), Delivery::Done);
        let mut buf = [0u8; 16];
        assert_eq!(rx.recv(&mut buf).unwrap(), 5);
        // The receiver restarts: its old socket is gone, a new one takes the path.
        drop(rx);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(d.send(b"lost?"), Delivery::Retry);
        let rx = UnixDatagram::bind(&path).unwrap();
        std::thread::sleep(RECONNECT_EVERY);
        assert_eq!(d.send(b"again"), Delivery::Done);
        assert_eq!(rx.recv(&mut buf).unwrap(), 5);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_absent_udp_receiver_is_seen_as_refusals() {
        // A port with nobody on it: loopback answers every datagram with port unreachable.
        let free = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = free.local_addr().unwrap();
        drop(free);
        let mut d = Datagrams::new(Dest::Udp(to));
        let mut refused = 0;
        for _ in 0..20 {
            match d.send(b"x") {
                Delivery::Done => {}
                Delivery::EarlierRefused => {
                    refused += 1;
                    assert_eq!(d.send(b"x"), Delivery::Done, "sent after the report");
                }
                other => panic!("{other:?}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(refused >= 5, "{refused} refusals seen");
        assert!(d.last_error().is_none(), "the last send went out");
    }

    #[test]
    fn a_datagram_too_long_is_lost_not_retried() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut d = Datagrams::new(Dest::Udp(rx.local_addr().unwrap()));
        assert_eq!(d.send(&vec![b'x'; 70_000]), Delivery::Lost);
        assert_eq!(d.send(b"fine"), Delivery::Done);
    }

    #[test]
    fn syslog_lines_are_rfc5424() {
        let r = block(EVENT_BLOCK_RELEASED, 0, "2001:db8:a::2", 1024);
        let s = r.to_syslog("aftr1", &r.to_json());
        assert!(
            s.starts_with("<134>1 1970-01-01T00:00:00.000Z aftr1 dslite "),
            "{s}"
        );
        assert!(s.contains("natlog [natlog@32473 event=\"block-released\" b4=\"2001:db8:a::2\"] {"));
        assert!(s.ends_with(&r.to_json()));
    }
}
