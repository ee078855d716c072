//! `dslite whois IPV4:PORT --at TIME --nat-log FILE...`: who held a public address and port
//! at a time, from NAT log files (RFC 6888 §4).

use std::path::PathBuf;

use anyhow::Result;
use log::warn;

use crate::{commands::inspect::to_stdout, usage::usage};

#[derive(clap::Args)]
pub struct WhoisArgs {
    /// The public endpoint, ADDR:PORT.
    #[arg(value_name = "IPV4:PORT")]
    pub endpoint: std::net::SocketAddrV4,
    /// The time, RFC 3339 (2026-11-26T07:00:00Z, or with an offset like +09:00).
    #[arg(long, value_name = "TIME")]
    pub at: String,
    /// JSON-lines NAT log files written by --nat-log; list rotated ones too, in any order.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub nat_log: Vec<PathBuf>,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Answer from the records of that address and port.
pub fn run(w: &WhoisArgs) -> Result<()> {
    use std::fmt::Write as _;
    let at = crate::clock::parse_rfc3339_ms(&w.at).map_err(usage)?;
    let (ip, port) = (*w.endpoint.ip(), w.endpoint.port());
    // Only records of this address and port are kept: memory follows the answer, not the log.
    let logs = crate::natlog::read_logs(&w.nat_log, |r| {
        r.outside == ip && r.port_lo <= port && port <= r.port_hi
    })
    .map_err(usage)?;
    if logs.skipped > 0 {
        warn!(
            "{} lines in the NAT logs are not NAT records; skipped (first: {})",
            logs.skipped,
            logs.examples.join("; ")
        );
    }
    let holders = crate::natlog::whois(&logs.records, ip, port, at);
    let at_s = crate::clock::rfc3339_ms(at);
    let mut out = String::new();
    if w.json {
        let doc = serde_json::json!({ "endpoint": w.endpoint.to_string(), "at": at_s, "holders": holders });
        let _ = writeln!(out, "{doc}");
        return print_out(&out);
    }
    if holders.is_empty() {
        let _ = writeln!(
            out,
            "{} at {at_s}: no softwire held it (in {} records of {ip} port {port})",
            w.endpoint,
            logs.records.len()
        );
    }
    for h in holders {
        let what = match (&h.inside, &h.ports) {
            (Some(i), _) => format!("inside {i} ({})", h.proto.as_deref().unwrap_or("?")),
            (None, Some(p)) => format!("port block {p}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{} at {at_s}: softwire {} {what}, from {} until {}",
            w.endpoint,
            h.b4,
            h.from,
            h.until
                .as_deref()
                .unwrap_or("(still held at the end of the log)")
        );
    }
    print_out(&out)
}

/// Write a command's output; a reader that went away (`| head`) ends it quietly.
fn print_out(text: &str) -> Result<()> {
    to_stdout(|w| w.write_all(text.as_bytes()))
}
