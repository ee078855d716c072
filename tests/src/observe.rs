//! Watching a running controller from a test: waiting for a condition, counting NAT-log
//! lines, asking `dslite whois`, scraping its metrics.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// Wait up to 10 s for `f`; fail naming `what`.
pub fn wait_for(what: &str, f: impl FnMut() -> bool) {
    wait_for_secs(what, 10, f)
}

/// Wait up to `secs` for `f`; fail naming `what`.
pub fn wait_for_secs(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of the file at `path` containing `needle` (0 while it does not exist).
pub fn lines_with(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// `GET /metrics` from inside `ns`; empty if the controller does not answer within 3 s (a
/// frozen controller must fail the test, not hang it).
pub fn scrape(ns: &Netns, port: u16) -> String {
    ns.run(move || {
        use std::io::{Read as _, Write as _};
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        s
    })
    .join()
    .unwrap()
}

/// The value of the sample line starting with `name` (labels included).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// `dslite whois ... --json`: the holders' (b4, inside-or-ports) pairs.
pub fn whois(
    endpoint: impl std::fmt::Display,
    at: &str,
    logs: &[&Path],
) -> Vec<(String, Option<String>)> {
    let out = std::process::Command::new(crate::dslite_bin())
        .arg("whois")
        .arg(endpoint.to_string())
        .args(["--at", at, "--json", "--nat-log"])
        .args(logs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["b4"].as_str().unwrap().to_string(),
                h["inside"].as_str().map(str::to_string),
            )
        })
        .collect()
}
