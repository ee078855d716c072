//! The `/metrics` HTTP server (hyper, HTTP/1.1): limits that keep idle or stalled clients
//! from locking a scraper out, and one render per scrape.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header::HeaderValue, Response, StatusCode};

use super::{family, render, Shared};

/// How the server defends itself against clients that connect and then stall (idle sockets,
/// a slowloris dribbling its request headers, a reader that never drains the response).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; one more evicts the oldest that has not sent its request
    /// yet (else the oldest), so a stalled crowd cannot lock a scraper out.
    pub max_connections: usize,
    /// The whole request head must arrive within this, counted from the connection's start.
    pub header_timeout: Duration,
    /// Nothing, a response included, keeps a connection open longer than this.
    pub lifetime: Duration,
    /// Scrapes rendered at once (each reads every counter and formats the whole text).
    pub renders: usize,
}

/// The limits `--metrics` serves with. A scrape of the loopback or a LAN takes milliseconds;
/// Prometheus's default scrape timeout is 10 s.
pub const LIMITS: Limits = Limits {
    max_connections: 64,
    header_timeout: Duration::from_secs(5),
    lifetime: Duration::from_secs(10),
    renders: 2,
};

/// What produces the exposition text of one scrape (runs on a blocking thread).
pub type Source = Arc<dyn Fn() -> Result<String> + Send + Sync>;

/// Serve `/metrics` on `addr`, reading counters from the pinned maps at `pin` per scrape.
pub async fn serve(
    addr: SocketAddr,
    pin: PathBuf,
    gauges: Shared,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics {addr}: cannot listen"))?;
    log::info!("metrics on http://{addr}/metrics");
    let source: Source = Arc::new(move || {
        let c = crate::commands::inspect::read_counters(&pin)?;
        let g = gauges.lock().ok().and_then(|g| g.clone());
        Ok(render(&c, g.as_ref()))
    });
    Ok(serve_on(listener, LIMITS, source))
}

/// One open connection, as the cap sees it.
#[derive(Clone)]
struct Conn {
    id: u64,
    /// Its request head has arrived (it is being answered).
    busy: Arc<AtomicBool>,
    close: Arc<tokio::sync::Notify>,
}

struct Server {
    limits: Limits,
    source: Source,
    /// Open connections, oldest first.
    conns: Mutex<(u64, VecDeque<Conn>)>,
    renders: tokio::sync::Semaphore,
    evicted: AtomicU64,
    timed_out: AtomicU64,
}

impl Server {
    /// Take a place for a new connection, evicting one if every place is taken.
    fn admit(&self) -> Conn {
        let mut g = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let (next, open) = &mut *g;
        if open.len() >= self.limits.max_connections.max(1) {
            let victim = open
                .iter()
                .position(|c| !c.busy.load(Ordering::Relaxed))
                .unwrap_or(0);
            if let Some(v) = open.remove(victim) {
                v.close.notify_one();
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        *next += 1;
        let c = Conn {
            id: *next,
            busy: Arc::default(),
            close: Arc::default(),
        };
        open.push_back(c.clone());
        c
    }

    fn release(&self, id: u64) {
        let mut g = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        g.1.retain(|c| c.id != id);
    }

    /// The server's own counters, after the dataplane's.
    fn render_self(&self, out: &mut String) {
        family(
            out,
            "dslite_metrics_connections_closed_total",
            "counter",
            "Metrics connections closed by the server before an answer: evicted at the connection cap, or out of time.",
        );
        for (reason, n) in [("evicted", &self.evicted), ("timeout", &self.timed_out)] {
            let _ = writeln!(
                out,
                "dslite_metrics_connections_closed_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }

    async fn respond(&self, req: &hyper::Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        };
        if !matches!(req.uri().path(), "/metrics" | "/") {
            return text(StatusCode::NOT_FOUND, "not found: try /metrics\n".into());
        }
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let Ok(_permit) = self.renders.acquire().await else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
        };
        // Reading the maps is system calls: off the controller's (single) async thread.
        let source = self.source.clone();
        match tokio::task::spawn_blocking(move || source()).await {
            Ok(Ok(mut body)) => {
                self.render_self(&mut body);
                text(StatusCode::OK, body)
            }
            Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        }
    }

    async fn handle(self: Arc<Self>, stream: tokio::net::TcpStream, conn: Conn) {
        let busy = conn.busy.clone();
        let me = self.clone();
        let service = hyper::service::service_fn(move |req| {
            busy.store(true, Ordering::Relaxed);
            let me = me.clone();
            async move { Ok::<_, std::convert::Infallible>(me.respond(&req).await) }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(8192)
            // `Content-Type`, as scrapers and scripts matching it literally have seen it.
            .title_case_headers(true)
            .keep_alive(false);
        let served = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        tokio::select! {
            _ = conn.close.notified() => {}
            r = tokio::time::timeout(self.limits.lifetime, served) => {
                let late = match r {
                    Err(_) => true,
                    Ok(Err(e)) => e.is_timeout(),
                    Ok(Ok(())) => false,
                };
                if late {
                    self.timed_out.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.release(conn.id);
    }
}

/// Serve `/metrics` (and `/`) on `listener` with `source`'s text, within `limits`, until
/// the task is dropped. HTTP/1.1 is hyper's; one request per connection.
pub fn serve_on(
    listener: tokio::net::TcpListener,
    limits: Limits,
    source: Source,
) -> tokio::task::JoinHandle<()> {
    let server = Arc::new(Server {
        limits,
        source,
        conns: Mutex::new((0, VecDeque::new())),
        renders: tokio::sync::Semaphore::new(limits.renders.max(1)),
        evicted: AtomicU64::new(0),
        timed_out: AtomicU64::new(0),
    });
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => {
                    failing = false;
                    s
                }
                Err(e) => {
                    // Out of file descriptors, say: wait for some to close instead of spinning.
                    if !failing {
                        log::warn!("metrics: accept failed: {e}");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let conn = server.admit();
            tokio::spawn(server.clone().handle(stream, conn));
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use dslite_common::Counter;

    use super::*;
    use crate::metrics::Gauges;

    /// Run `serve_on` on 127.0.0.1 in a current-thread runtime of its own, as the controller
    /// does, and return its address.
    fn start(source: Source) -> SocketAddr {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                let _ = serve_on(l, LIMITS, source).await;
            });
        });
        rx.recv().unwrap()
    }

    /// One request; the status code and the body, checked against its Content-Length.
    fn request(addr: SocketAddr, req: &str) -> (u16, String) {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .expect("Content-Length")
            .parse()
            .unwrap();
        assert_eq!(body.len(), len, "the whole body arrived");
        (status, body.to_string())
    }

    fn big_source() -> Source {
        let counters: Vec<(Counter, u64)> = Counter::ALL.iter().map(|c| (*c, 7)).collect();
        // 4096 public addresses: 12,288 port-block lines, most of a megabyte.
        let g = Gauges {
            pool: (0..4096u32)
                .map(|i| Ipv4Addr::from(0xc633_0000 + i))
                .collect(),
            blocks_per_addr: 126,
            ..Default::default()
        };
        Arc::new(move || Ok(render(&counters, Some(&g))))
    }

    /// 200 idle connections and a slowloris (one header byte a second) do not stop a scrape:
    /// it is answered at once, in full, and the server closes every stalled connection
    /// within its header timeout, counting what it evicted and timed out.
    #[test]
    fn stalled_clients_cannot_stop_a_scrape() {
        use std::io::{Read as _, Write as _};
        let addr = start(big_source());
        let opened = std::time::Instant::now();
        let idle: Vec<std::net::TcpStream> = (0..200)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let loris = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let t0 = std::time::Instant::now();
            let mut sent = 0;
            for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n"
                .iter()
                .cycle()
            {
                if c.write_all(&[*b]).is_err() {
                    break;
                }
                sent += 1;
                let mut buf = [0u8; 64];
                match c.read(&mut buf) {
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    _ => break,
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            (t0.elapsed(), sent)
        });
        std::thread::sleep(Duration::from_millis(300));

        let t = std::time::Instant::now();
        let (status, body) = request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
        assert!(body.contains("dslite_aftr_out_packets_total 7\n"));
        assert!(body.len() > 500_000, "{}", body.len());

        // Every idle connection is closed by the server by the header timeout (plus slack).
        let deadline = opened + LIMITS.header_timeout + Duration::from_millis(1500);
        for mut c in idle {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut buf = [0u8; 16];
            match c.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("an idle connection is still open: {other:?}"),
            }
        }
        let (took, sent) = loris.join().unwrap();
        assert!(sent >= 3, "the slowloris was dribbling ({sent} bytes)");
        assert!(
            took < LIMITS.header_timeout + Duration::from_millis(1500),
            "the slowloris was cut off after {took:?}"
        );

        let (_, body) = request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let closed = |reason: &str| -> u64 {
            let l = format!("dslite_metrics_connections_closed_total{{reason=\"{reason}\"}} ");
            body.lines()
                .find_map(|x| x.strip_prefix(&l))
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(
            closed("evicted") >= 200 - LIMITS.max_connections as u64,
            "{body}"
        );
        assert!(closed("timeout") >= 1);
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        let addr = start(big_source());
        assert_eq!(
            request(addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").0,
            404
        );
        assert_eq!(
            request(
                addr,
                "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            )
            .0,
            405
        );
        assert_eq!(request(addr, "GET / HTTP/1.0\r\n\r\n").0, 200);
        // A request head larger than the server buffers is refused, not accumulated.
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(100_000)
        );
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(huge.as_bytes());
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(!got.contains(" 200 "), "{got}");
    }
}
