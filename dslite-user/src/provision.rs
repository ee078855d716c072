//! B4 provisioning: finding the AFTR by itself (RFC 6333 §5.4, RFC 6334).
//!
//! `--aftr` is an IPv6 address or a name. A name is resolved over DNS for AAAA records (a small
//! client of our own, so `--dns-server` can point anywhere, as transix users reach
//! `gw.transix.jp` through their ISP's resolver), every record is tried with an ICMPv6 echo
//! and the first that answers is used, and the name is resolved again when its TTL runs out
//! (bounded to 30 s - 1 h). `--aftr-file` names a file holding the name or address, written
//! by a DHCPv6 client hook from the AFTR-Name option (RFC 6334 §3); it is read
//! again when it changes.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

pub use crate::config::AftrSource;

/// A DNS query for the AAAA records of `name`, with transaction `id`.
pub fn aaaa_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 28, 0, 1]); // root, AAAA, IN
    q
}

/// Skip a (possibly compressed) name at `off`; the offset after it.
fn skip_name(m: &[u8], mut off: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *m.get(off)? as usize;
        if len == 0 {
            return Some(off + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(off + 2);
        }
        off += 1 + len;
    }
    None
}

/// The AAAA records (address, TTL seconds) of a response to query `id`.
pub fn parse_aaaa(m: &[u8], id: u16) -> Result<Vec<(Ipv6Addr, u32)>> {
    if m.len() < 12 || u16::from_be_bytes([m[0], m[1]]) != id || m[2] & 0x80 == 0 {
        bail!("not a DNS response to our query");
    }
    let rcode = m[3] & 0x0f;
    if rcode != 0 {
        bail!("DNS error (rcode {rcode})");
    }
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    let mut off = 12;
    for _ in 0..qd {
        off = skip_name(m, off).context("bad question")? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        off = skip_name(m, off).context("bad answer name")?;
        let h = m.get(off..off + 10).context("short answer")?;
        let (ty, ttl) = (
            u16::from_be_bytes([h[0], h[1]]),
            u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        );
        let len = u16::from_be_bytes([h[8], h[9]]) as usize;
        let data = m
            .get(off + 10..off + 10 + len)
            .context("short answer data")?;
        if ty == 28 && len == 16 {
            out.push((Ipv6Addr::from(<[u8; 16]>::try_from(data)?), ttl));
        }
        off += 10 + len;
    }
    Ok(out)
}

/// The nameservers of /etc/resolv.conf.
pub fn system_nameservers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Resolve `name` to its AAAA records (and the smallest TTL) with `servers`, in turn.
pub fn resolve(name: &str, servers: &[SocketAddr]) -> Result<(Vec<Ipv6Addr>, u32)> {
    let mut last = anyhow::anyhow!("no DNS server (pass --dns-server)");
    for server in servers {
        let bind: SocketAddr = if server.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let sock = UdpSocket::bind(bind)?;
        sock.set_read_timeout(Some(Duration::from_millis(1500)))?;
        let id = crate::rand::random_seed() as u16;
        let q = aaaa_query(name, id);
        for _ in 0..2 {
            if let Err(e) = sock.send_to(&q, server) {
                last = anyhow::anyhow!("asking {server}: {e}");
                break;
            }
            let mut buf = [0u8; 1500];
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == *server => match parse_aaaa(&buf[..n], id) {
                    Ok(recs) if !recs.is_empty() => {
                        let ttl = recs.iter().map(|r| r.1).min().unwrap_or(300);
                        return Ok((recs.into_iter().map(|r| r.0).collect(), ttl));
                    }
                    Ok(_) => {
                        last = anyhow::anyhow!("{server}: no AAAA record for {name}");
                        break;
                    }
                    Err(e) => last = e.context(format!("{server}")),
                },
                Ok(_) => {}
                Err(e) => last = anyhow::anyhow!("{server}: {e}"),
            }
        }
    }
    Err(last)
}

/// Whether `addr` answers an ICMPv6 echo within `wait`.
pub fn answers_ping(addr: Ipv6Addr, wait: Duration) -> bool {
    // SAFETY: plain socket calls on a local fd, closed on every path.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        );
        if fd < 0 {
            return false;
        }
        let mut to: libc::sockaddr_in6 = std::mem::zeroed();
        to.sin6_family = libc::AF_INET6 as u16;
        to.sin6_addr.s6_addr = addr.octets();
        let id = (std::process::id() as u16).to_be_bytes();
        // Echo request; the kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets.
        let req = [128u8, 0, 0, 0, id[0], id[1], 0, 1, b'd', b's', b'l', b't'];
        let sent = libc::sendto(
            fd,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&to as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        );
        let deadline = std::time::Instant::now() + wait;
        let mut ok = false;
        while sent > 0 && !ok {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut p, 1, left.as_millis() as i32) <= 0 {
                break;
            }
            let mut buf = [0u8; 1500];
            let mut from: libc::sockaddr_in6 = std::mem::zeroed();
            let mut fl = std::mem::size_of::<libc::sockaddr_in6>() as u32;
            let n = libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_in6).cast(),
                &mut fl,
            );
            ok = n >= 8
                && buf[0] == 129
                && buf[4..6] == id
                && from.sin6_addr.s6_addr == addr.octets();
        }
        libc::close(fd);
        ok
    }
}

/// The AFTR to use among `candidates`: the first that answers a ping, else the first.
pub fn choose(candidates: &[Ipv6Addr]) -> Option<Ipv6Addr> {
    candidates
        .iter()
        .copied()
        .find(|a| answers_ping(*a, Duration::from_secs(1)))
        .or_else(|| candidates.first().copied())
}

/// What a provisioning round found: the AFTR and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub aftr: Ipv6Addr,
    /// Seconds until the next resolution (None: a fixed address, never).
    pub refresh: Option<u64>,
}

/// One provisioning round for `src`.
pub fn find_aftr(src: &AftrSource, servers: &[SocketAddr]) -> Result<Found> {
    match src {
        AftrSource::Addr(a) => Ok(Found {
            aftr: *a,
            refresh: None,
        }),
        AftrSource::Name(n) => {
            let (addrs, ttl) =
                resolve(n, servers).with_context(|| format!("resolving --aftr {n}"))?;
            let aftr = choose(&addrs).context("no address")?;
            Ok(Found {
                aftr,
                refresh: Some((ttl as u64).clamp(30, 3600)),
            })
        }
        AftrSource::File(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading --aftr-file {}", p.display()))?;
            let inner: AftrSource = text
                .trim()
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--aftr-file {}: {e}", p.display()))?;
            if let AftrSource::File(_) = inner {
                unreachable!("a file's content parses as an address or a name");
            }
            let f = find_aftr(&inner, servers)?;
            // The file may change at any time: look at it again soon.
            Ok(Found {
                refresh: Some(f.refresh.unwrap_or(5).min(5)),
                ..f
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            "2001:db8::1".parse::<AftrSource>(),
            Ok(AftrSource::Addr("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(
            "GW.transix.jp.".parse::<AftrSource>(),
            Ok(AftrSource::Name("gw.transix.jp".into()))
        );
        assert!("::1".parse::<AftrSource>().is_err());
        assert!("bad_name!".parse::<AftrSource>().is_err());
        assert!("-x.example".parse::<AftrSource>().is_err());
    }

    #[test]
    fn aaaa_query_and_response() {
        let q = aaaa_query("aftr.example", 0x1234);
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[12..], b"\x04aftr\x07example\x00\x00\x1c\x00\x01");
        // The response: the query, QR set, two answers with compressed names, one A record.
        let mut r = q.clone();
        r[2] |= 0x80;
        r[7] = 3;
        for (ty, data, ttl) in [
            (
                28u16,
                "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
                600u32,
            ),
            (1, vec![192, 0, 2, 1], 600),
            (
                28,
                "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
                120,
            ),
        ] {
            r.extend_from_slice(&[0xc0, 12]);
            r.extend_from_slice(&ty.to_be_bytes());
            r.extend_from_slice(&[0, 1]);
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(&data);
        }
        let got = parse_aaaa(&r, 0x1234).unwrap();
        assert_eq!(
            got,
            vec![
                ("2001:db8::1".parse().unwrap(), 600),
                ("2001:db8::2".parse().unwrap(), 120)
            ]
        );
        assert!(parse_aaaa(&r, 0x9999).is_err(), "another query's answer");
        let mut nx = q.clone();
        nx[2] |= 0x80;
        nx[3] = 3;
        assert!(parse_aaaa(&nx, 0x1234).is_err(), "NXDOMAIN");
        assert!(parse_aaaa(&r[..r.len() - 3], 0x1234).is_err(), "truncated");
    }
}
