//! `dslite` controllers running inside test namespaces.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{dslite_bin, netns::Netns};

/// A running `dslite aftr|b4`; SIGTERM and reaped on drop.
pub struct Controller {
    child: Child,
    pub pin_path: PathBuf,
    log: Arc<Mutex<String>>,
    /// Disconnected when the child's stderr closes (all of it is then in `log`).
    stderr_closed: Mutex<std::sync::mpsc::Receiver<()>>,
    /// Leave the pin path in place on drop (after [`Controller::kill`]).
    keep_pins: bool,
}

impl Controller {
    /// Start `dslite ARGS` in `ns` and wait until it reports the dataplane is up.
    pub fn start(ns: &Netns, args: &[&str], pin_path: PathBuf) -> Result<Controller> {
        let mut cmd = Command::new(dslite_bin());
        cmd.args(args)
            .arg("--pin-path")
            .arg(&pin_path)
            .env("RUST_LOG", "info,netlink_packet_route=error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = ns.spawn(&mut cmd)?;
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        // Told when stderr closes, so that an exit's last words (its error) are in the log
        // before we report the exit: the reader may still be behind when try_wait sees it.
        let (closed_tx, closed) = std::sync::mpsc::channel::<()>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains(" up: ") {
                        let _ = tx.send(());
                    }
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
                drop(closed_tx);
            });
        }
        let mut c = Controller {
            child,
            pin_path,
            log,
            stderr_closed: Mutex::new(closed),
            keep_pins: false,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(c);
            }
            if let Some(status) = c.child.try_wait()? {
                c.await_stderr();
                bail!(
                    "dslite {} exited with {status}:\n{}",
                    args.join(" "),
                    c.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "dslite {} did not come up in 30 s:\n{}",
                    args.join(" "),
                    c.log()
                );
            }
        }
    }

    /// After an exit: wait (up to 5 s) until the reader has logged the child's last lines.
    fn await_stderr(&self) {
        let _ = (self.stderr_closed.lock().unwrap()).recv_timeout(Duration::from_secs(5));
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `dslite stats --json` for this controller's pin path.
    pub fn stats(&self) -> Result<serde_json::Value> {
        self.view("stats")
    }

    /// `dslite sessions --json` for this controller's pin path.
    pub fn sessions(&self) -> Result<Vec<serde_json::Value>> {
        match self.view("sessions")? {
            serde_json::Value::Array(v) => Ok(v),
            other => bail!("sessions is not an array: {other}"),
        }
    }

    /// One counter by name.
    pub fn counter(&self, name: &str) -> u64 {
        let s = self.stats().expect("dslite stats");
        s.get(name)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("no counter {name} in {s}"))
    }

    /// SIGKILL, as a crash would: the pins stay for a successor (`--persist`).
    pub fn kill(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        self.keep_pins = true;
    }

    /// Send signal `sig` (e.g. `libc::SIGHUP`) to the controller.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// CPU time the controller process has used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is the 14th
        // field of the line, stime the 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|x| x.parse().ok())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        f.iter().sum::<u64>() as f64 / hz
    }

    /// Wait up to 5 s for counter `name` to reach `min` (the controller publishes its slow
    /// path counters every half second or so); returns its last value.
    pub fn counter_at_least(&self, name: &str, min: u64) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let v = self.counter(name);
            if v >= min || std::time::Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    pub fn softwires(&self) -> Result<Vec<serde_json::Value>> {
        match self.view("softwires")? {
            serde_json::Value::Array(v) => Ok(v),
            other => bail!("softwires: not an array: {other}"),
        }
    }

    fn view(&self, what: &str) -> Result<serde_json::Value> {
        let out = Command::new(dslite_bin())
            .args([what, "--json", "--pin-path"])
            .arg(&self.pin_path)
            .output()
            .context("running dslite")?;
        if !out.status.success() {
            bail!("dslite {what}: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("parsing dslite JSON")
    }

    /// Stop with SIGTERM and return the exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait()? {
                self.await_stderr();
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let s = self.child.wait()?;
                self.await_stderr();
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.terminate();
        }
        if !self.keep_pins {
            let _ = std::fs::remove_dir_all(&self.pin_path);
        }
    }
}
