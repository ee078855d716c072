//! The NAT log (RFC 6888 §4, REQ-12 to REQ-14): who held which public address and ports, when.
//!
//! Records come from the kernel's EVENTS ring buffer (port blocks allocated; mappings created,
//! with `--log-sessions`) and from the controller's sweep (blocks released, mappings deleted,
//! refusals by a limit or by exhaustion). Each goes to every configured sink:
//!
//! - a JSON-lines file (`--nat-log`, [`file`]; the line is [`json`]'s), which is also what
//!   `dslite whois` reads ([`whois`]);
//! - RFC 5424 syslog over UDP or a unix datagram socket (`--syslog`, [`syslog`]);
//! - IPFIX (RFC 7011) with the RFC 8158 information elements over UDP (`--ipfix`, [`ipfix`]).
//!
//! No sink can stall the controller ([`sink`]): each has a bounded queue and a thread of its
//! own, and what a sink cannot take is counted per sink and logged, never waited for.

pub mod file;
#[cfg(test)]
mod fuzz;
pub mod ipfix;
pub mod json;
pub mod record;
pub mod sink;
pub mod syslog;
pub mod whois;

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub use json::BadRecord;
pub use record::{event_name, Limit, NatRecord};
pub use sink::SinkStats;
pub use whois::{read_logs, whois, Holder, Logs};

use sink::{Item, Sink};

pub use crate::config::{Sinks, DEFAULT_QUEUE, QUEUE_RANGE};

/// The three sinks, in a fixed order (for the metrics' `sink` label).
pub const SINK_NAMES: [&str; 3] = ["file", "syslog", "ipfix"];

/// Every sink's counters; they outlive a reload that reopens the sinks.
#[derive(Debug, Default)]
pub struct NatLogStats {
    pub sinks: [Arc<SinkStats>; 3],
}

/// One sink's counters at one instant, for the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkSnapshot {
    pub sink: &'static str,
    pub delivered: u64,
    pub lost_queue_full: u64,
    pub lost_refused: u64,
    pub lost_error: u64,
    pub lost_shutdown: u64,
    pub queued: u64,
}

impl SinkSnapshot {
    pub fn lost(&self) -> u64 {
        self.lost_queue_full + self.lost_refused + self.lost_error + self.lost_shutdown
    }
}

/// Losses already reported in the log, per sink.
#[derive(Clone, Copy, Debug, Default)]
struct Reported {
    lost: u64,
    at: Option<Instant>,
    /// Losses since the last message (the streak is over when a tick sees none).
    streak: bool,
}

/// A loss is logged at once, then at most this often while the sink keeps losing.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Sinks opened by [`NatLog::prepare`], not yet in use.
pub struct PendingSinks {
    cfg: Sinks,
    fresh: [Option<Option<Sink>>; 3],
}

/// The open sinks.
pub struct NatLog {
    cfg: Sinks,
    /// Indexed like [`SINK_NAMES`].
    sinks: [Option<Sink>; 3],
    host: String,
    stats: Arc<NatLogStats>,
    reported: [Reported; 3],
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname into a local buffer of the given size.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "-".into();
    }
    let n = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

const FILE: usize = 0;
const SYSLOG: usize = 1;
const IPFIX: usize = 2;

fn open_sink(cfg: &Sinks, i: usize, stats: &NatLogStats) -> Result<Option<Sink>> {
    let (cap, counters) = (cfg.queue, stats.sinks[i].clone());
    Ok(match i {
        FILE => match &cfg.file {
            None => None,
            Some(p) => {
                // Past RLIMIT_FSIZE a write raises SIGXFSZ, which kills: ignore it, so that
                // the write fails with EFBIG and the record waits in the queue instead.
                // SAFETY: setting a signal's disposition to SIG_IGN.
                unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
                let t = file::FileSink::new(p)
                    .with_context(|| format!("opening NAT log {}", p.display()))?;
                Some(Sink::start("file", t, cap, counters, true)?)
            }
        },
        SYSLOG => match &cfg.syslog {
            None => None,
            Some(s) => {
                let dest = syslog::Dest::parse_syslog(s)?;
                let t = syslog::SyslogSink(syslog::Datagrams::new(dest));
                Some(Sink::start("syslog", t, cap, counters, false)?)
            }
        },
        _ => match cfg.ipfix {
            None => None,
            Some(to) => {
                let t = ipfix::IpfixSink::new(syslog::Datagrams::new(syslog::Dest::Udp(to)));
                Some(Sink::start("ipfix", t, cap, counters, false)?)
            }
        },
    })
}

impl NatLog {
    /// Open every configured sink; `stats` carries the counters across reloads.
    pub fn open(cfg: &Sinks, stats: Arc<NatLogStats>) -> Result<NatLog> {
        let mut log = NatLog {
            cfg: cfg.clone(),
            sinks: [None, None, None],
            host: hostname(),
            stats,
            reported: Default::default(),
        };
        for i in 0..3 {
            log.sinks[i] = open_sink(cfg, i, &log.stats)?;
        }
        Ok(log)
    }

    pub fn stats(&self) -> Arc<NatLogStats> {
        self.stats.clone()
    }

    /// Send one record everywhere, without waiting on a receiver (the file: within a small
    /// budget, see [`sink`]). With no sink configured, records go to the controller's own
    /// log (target `natlog`).
    pub fn emit(&mut self, r: &NatRecord) {
        if self.sinks.iter().all(Option::is_none) {
            log::info!(target: "natlog", "{}", r.to_json());
            return;
        }
        let json = r.to_json();
        if let Some(s) = &mut self.sinks[SYSLOG] {
            s.push(Item::Data {
                bytes: r.to_syslog(&self.host, &json).into_bytes(),
                records: 1,
            });
        }
        if let Some(s) = &mut self.sinks[IPFIX] {
            if let Some((bytes, records)) = ipfix::data_set(r) {
                s.push(Item::Data { bytes, records });
            }
        }
        // The file last: the datagram threads start on theirs while this waits for its write.
        if let Some(s) = &mut self.sinks[FILE] {
            let mut line = json.into_bytes();
            line.push(b'\n');
            s.push(Item::Data {
                bytes: line,
                records: 1,
            });
        }
    }

    /// SIGHUP with the same sinks: reopen the file (logrotate moved it away) and resend the
    /// IPFIX templates, in order with the records before and after.
    pub fn reopen(&mut self) {
        for s in self.sinks.iter_mut().flatten() {
            s.push(Item::Reopen);
        }
    }

    /// SIGHUP with new settings: sinks that changed are replaced (the old ones flush in the
    /// background), the others reopened. Nothing changes if a new sink cannot be opened.
    pub fn reconfigure(&mut self, cfg: &Sinks) -> Result<()> {
        let pending = self.prepare(cfg)?;
        self.commit(pending);
        Ok(())
    }

    /// The first half of [`NatLog::reconfigure`]: open the sinks that `cfg` changes, beside
    /// the running ones, touching nothing (so a reload can still be refused after this).
    pub fn prepare(&self, cfg: &Sinks) -> Result<PendingSinks> {
        let queue_changed = cfg.queue != self.cfg.queue;
        let changed = [
            queue_changed || cfg.file != self.cfg.file,
            queue_changed || cfg.syslog != self.cfg.syslog,
            queue_changed || cfg.ipfix != self.cfg.ipfix,
        ];
        let mut fresh: [Option<Option<Sink>>; 3] = [None, None, None];
        for i in 0..3 {
            if changed[i] {
                fresh[i] = Some(open_sink(cfg, i, &self.stats)?);
            }
        }
        Ok(PendingSinks {
            cfg: cfg.clone(),
            fresh,
        })
    }

    /// The second half: put the prepared sinks in place, reopen the others.
    pub fn commit(&mut self, p: PendingSinks) {
        for (i, f) in p.fresh.into_iter().enumerate() {
            match f {
                Some(new) => self.sinks[i] = new,
                None => {
                    if let Some(s) = &mut self.sinks[i] {
                        s.push(Item::Reopen);
                    }
                }
            }
        }
        self.cfg = p.cfg;
    }

    /// Each second: say in the log what each sink lost since it last said so.
    pub fn tick(&mut self) {
        for (i, name) in SINK_NAMES.iter().enumerate() {
            let st = &self.stats.sinks[i];
            let lost = st.lost();
            let rep = &mut self.reported[i];
            if lost == rep.lost {
                if rep.streak && rep.at.is_some_and(|t| t.elapsed() >= REPORT_EVERY) {
                    rep.streak = false;
                }
                continue;
            }
            if rep.streak && rep.at.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
                continue;
            }
            let why = st
                .last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .map_or(String::new(), |e| format!("; last error: {e}"));
            log::warn!(
                "NAT log: {name} sink lost {} records (total {lost}: {} queue full, {} refused by the receiver, {} undeliverable, {} at exit; {} queued now){why}",
                lost - rep.lost,
                st.lost_queue_full.load(Relaxed),
                st.lost_refused.load(Relaxed),
                st.lost_error.load(Relaxed),
                st.lost_shutdown.load(Relaxed),
                st.queued.load(Relaxed),
            );
            *rep = Reported {
                lost,
                at: Some(Instant::now()),
                streak: true,
            };
        }
    }

    /// Stop: give queued records up to [`sink::FLUSH_AT_EXIT`] to go out, count the rest,
    /// and say what was lost.
    pub fn close(&mut self) {
        // All at once: the whole stop waits for the slowest sink, not for their sum.
        for s in self.sinks.iter_mut().flatten() {
            s.begin_close();
        }
        let deadline = Instant::now() + sink::FLUSH_AT_EXIT + Duration::from_millis(500);
        for s in self.sinks.iter_mut().flatten() {
            s.close(deadline.saturating_duration_since(Instant::now()));
        }
        self.reported.iter_mut().for_each(|r| r.streak = false);
        self.tick();
    }

    /// Every configured sink's counters now.
    pub fn snapshot(&self) -> Vec<SinkSnapshot> {
        (0..3)
            .filter(|i| self.sinks[*i].is_some())
            .map(|i| {
                let s = &self.stats.sinks[i];
                SinkSnapshot {
                    sink: SINK_NAMES[i],
                    delivered: s.delivered.load(Relaxed),
                    lost_queue_full: s.lost_queue_full.load(Relaxed),
                    lost_refused: s.lost_refused.load(Relaxed),
                    lost_error: s.lost_error.load(Relaxed),
                    lost_shutdown: s.lost_shutdown.load(Relaxed),
                    queued: s.queued.load(Relaxed),
                }
            })
            .collect()
    }
}
