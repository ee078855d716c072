//! Cleaning up after test runs that were killed. A namespace or a bpffs pin directory a
//! test makes is removed by its guard's `Drop`, also when the test panics; a run killed by a
//! signal (a CI timeout, Ctrl-C, `kill`) unwinds nothing. So each such resource is recorded
//! under [`OWNERS`] with its owner (pid and start time), and the first resource a process
//! creates first removes every recorded one whose owner is gone.

use std::{path::Path, sync::Once};

/// One file per live resource: `netns:NAME` or `pin:PATH-with-slashes-as-%`, holding the
/// owner's "pid starttime".
pub const OWNERS: &str = "/run/dslite-tests";

/// A process's identity that survives pid reuse: its pid and its start time in clock ticks
/// (field 22 of /proc/PID/stat).
fn identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

fn record_name(kind: &str, name: &str) -> String {
    format!("{kind}:{}", name.replace('/', "%"))
}

/// Record that this process owns `name` (`kind` is "netns" or "pin"), after removing what
/// killed runs left behind.
pub fn claim(kind: &str, name: &str) {
    static REAP: Once = Once::new();
    REAP.call_once(reap);
    let _ = std::fs::create_dir_all(OWNERS);
    if let Some(me) = identity(std::process::id()) {
        let _ = std::fs::write(Path::new(OWNERS).join(record_name(kind, name)), me);
    }
}

/// `name` is gone (its guard removed it).
pub fn release(kind: &str, name: &str) {
    let _ = std::fs::remove_file(Path::new(OWNERS).join(record_name(kind, name)));
}

/// Remove every recorded resource whose owner no longer runs.
pub fn reap() {
    let Ok(dir) = std::fs::read_dir(OWNERS) else {
        return;
    };
    for entry in dir.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let alive = owner
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .and_then(identity)
            .is_some_and(|now| now == owner.trim());
        if alive {
            continue;
        }
        match file.split_once(':') {
            Some(("netns", name)) => {
                let _ = crate::netns::ip(&["netns", "del", name]);
            }
            Some(("pin", path)) => {
                let _ = std::fs::remove_dir_all(path.replace('%', "/"));
            }
            _ => {}
        }
        eprintln!("dslite-tests: removed {file}, left by a killed run");
        let _ = std::fs::remove_file(entry.path());
    }
}
