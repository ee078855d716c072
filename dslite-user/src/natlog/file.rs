//! The JSON-lines file sink (`--nat-log`): one `write(2)` per record on an `O_APPEND`
//! descriptor, created mode 0640 (it names subscribers), reopened on SIGHUP for logrotate.
//!
//! The file never holds a partial record: a short write (a full disk, a file size limit)
//! is cut back off the end before anything else is written, and the record is written
//! again whole once there is room. Until then it waits in the sink's queue.

use std::{
    fs::File,
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use super::sink::{Delivery, Transport};

/// Mode of a new NAT log: the owner writes, its group (the operator's) reads, nobody else.
pub const FILE_MODE: u32 = 0o640;

/// What the sink needs of a file (a trait so that tests can make writes fall short).
pub(crate) trait AppendFile: Send + 'static {
    /// One `write(2)`.
    fn write_once(&mut self, buf: &[u8]) -> io::Result<usize>;
    fn size(&self) -> io::Result<u64>;
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl AppendFile for File {
    fn write_once(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write(buf)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

/// Open `path` for appending, creating it mode 0640 (less if the umask says so). An
/// existing file keeps its mode, with a warning when anyone may read it.
pub fn open_append(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    if let Ok(m) = f.metadata() {
        if m.mode() & 0o007 != 0 {
            log::warn!(
                "NAT log {}: mode {:04o} lets every local user read who held which address; chmod 0640",
                path.display(),
                m.mode() & 0o7777
            );
        }
    }
    Ok(f)
}

/// Opens (again) the file at a path.
pub(crate) type Opener<F> = Box<dyn FnMut(&Path) -> io::Result<F> + Send>;

/// The file sink's transport.
pub(crate) struct FileSink<F: AppendFile> {
    path: PathBuf,
    open: Opener<F>,
    file: Option<F>,
    /// Bytes of a record cut short at the end of the file, to cut off before anything else.
    torn: u64,
    last_error: Option<String>,
}

impl FileSink<File> {
    /// A sink on `path`, already opened (so that a bad path is an error at start).
    pub(crate) fn new(path: &Path) -> io::Result<FileSink<File>> {
        let f = open_append(path)?;
        Ok(FileSink::with_opener(path, Some(f), Box::new(open_append)))
    }
}

impl<F: AppendFile> FileSink<F> {
    pub(crate) fn with_opener(path: &Path, file: Option<F>, open: Opener<F>) -> FileSink<F> {
        FileSink {
            path: path.to_path_buf(),
            open,
            file,
            torn: 0,
            last_error: None,
        }
    }

    fn fail(&mut self, what: &str, e: io::Error) -> Delivery {
        self.last_error = Some(format!("{what} {}: {e}", self.path.display()));
        Delivery::Retry
    }

    /// Cut a partial record off the end of the file.
    fn cut_torn(&mut self) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let size = f.size()?;
        f.truncate(size.saturating_sub(self.torn))?;
        self.torn = 0;
        Ok(())
    }
}

impl<F: AppendFile> Transport for FileSink<F> {
    fn deliver(&mut self, bytes: &[u8], _records: u32) -> Delivery {
        if self.file.is_none() {
            match (self.open)(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) => return self.fail("opening", e),
            }
        }
        if self.torn > 0 {
            if let Err(e) = self.cut_torn() {
                return self.fail("cutting a partial record off", e);
            }
        }
        let Some(f) = self.file.as_mut() else {
            return Delivery::Retry;
        };
        loop {
            match f.write_once(bytes) {
                Ok(n) if n == bytes.len() => {
                    self.last_error = None;
                    return Delivery::Done;
                }
                Ok(n) => {
                    // Written in part: take it back, and write it whole later.
                    self.torn = n as u64;
                    if let Err(e) = self.cut_torn() {
                        return self.fail("cutting a partial record off", e);
                    }
                    self.last_error = Some(format!(
                        "writing {}: only {n} of {} bytes fit (disk full?)",
                        self.path.display(),
                        bytes.len()
                    ));
                    return Delivery::Retry;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail("writing", e),
            }
        }
    }

    fn wait(&mut self, t: Duration) {
        std::thread::sleep(t);
    }

    fn reopen(&mut self) {
        if self.torn > 0 {
            if let Err(e) = self.cut_torn() {
                log::error!(
                    "NAT log {}: {} bytes of a record cut short stay at its end: {e}",
                    self.path.display(),
                    self.torn
                );
                self.torn = 0;
            }
        }
        self.file = None;
        match (self.open)(&self.path) {
            Ok(f) => self.file = Some(f),
            Err(e) => {
                log::warn!(
                    "NAT log: reopening {} failed: {e}; records wait in the queue and it is tried again",
                    self.path.display()
                );
                self.last_error = Some(format!("opening {}: {e}", self.path.display()));
            }
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A file in memory that takes at most `room` more bytes per write (and errors when
    /// there is none), like a disk filling up; `truncate_fails` to make the cut fail.
    #[derive(Clone, Default)]
    struct Fake {
        data: Arc<Mutex<Vec<u8>>>,
        room: Arc<Mutex<usize>>,
        truncate_fails: Arc<Mutex<bool>>,
    }

    impl AppendFile for Fake {
        fn write_once(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(*room);
            *room -= n;
            self.data.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.data.lock().unwrap().len() as u64)
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            if *self.truncate_fails.lock().unwrap() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.data.lock().unwrap().truncate(len as usize);
            Ok(())
        }
    }

    fn lines_whole(data: &[u8]) -> bool {
        data.is_empty() || (data.ends_with(b"\n") && !data.contains(&0))
    }

    #[test]
    fn a_short_write_is_cut_back_and_written_whole_later() {
        let fake = Fake::default();
        *fake.room.lock().unwrap() = 25;
        let f2 = fake.clone();
        let mut s = FileSink::with_opener(
            Path::new("/fake"),
            Some(fake.clone()),
            Box::new(move |_| Ok(f2.clone())),
        );
        assert_eq!(s.deliver(b"0123456789\n", 1), Delivery::Done);
        // 14 bytes of room left: the second record fits, the third falls short.
        assert_eq!(s.deliver(b"abcdefghij\n", 1), Delivery::Done);
        assert_eq!(s.deliver(b"ABCDEFGHIJ\n", 1), Delivery::Retry);
        assert_eq!(*fake.data.lock().unwrap(), b"0123456789\nabcdefghij\n");
        assert!(s.last_error().unwrap().contains("only 3 of 11 bytes"));
        // Full: an error, nothing written.
        assert_eq!(s.deliver(b"ABCDEFGHIJ\n", 1), Delivery::Retry);
        assert!(s.last_error().unwrap().contains("No space left"));
        assert!(lines_whole(&fake.data.lock().unwrap()));
        // Room again: the record goes in whole.
        *fake.room.lock().unwrap() = 100;
        assert_eq!(s.deliver(b"ABCDEFGHIJ\n", 1), Delivery::Done);
        assert_eq!(
            *fake.data.lock().unwrap(),
            b"0123456789\nabcdefghij\nABCDEFGHIJ\n"
        );
    }

    #[test]
    fn a_failed_cut_stops_writing_until_it_succeeds() {
        let fake = Fake::default();
        *fake.room.lock().unwrap() = 5;
        *fake.truncate_fails.lock().unwrap() = true;
        let f2 = fake.clone();
        let mut s = FileSink::with_opener(
            Path::new("/fake"),
            Some(fake.clone()),
            Box::new(move |_| Ok(f2.clone())),
        );
        assert_eq!(s.deliver(b"0123456789\n", 1), Delivery::Retry);
        *fake.room.lock().unwrap() = 100;
        // Nothing is appended after the fragment while it cannot be cut.
        for _ in 0..3 {
            assert_eq!(s.deliver(b"abc\n", 1), Delivery::Retry);
        }
        assert_eq!(*fake.data.lock().unwrap(), b"01234");
        *fake.truncate_fails.lock().unwrap() = false;
        assert_eq!(s.deliver(b"abc\n", 1), Delivery::Done);
        assert_eq!(*fake.data.lock().unwrap(), b"abc\n");
    }

    /// The process umask, read without changing it (tests run in parallel).
    fn umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .expect("Umask in /proc/self/status");
        u32::from_str_radix(v.trim(), 8).unwrap()
    }

    #[test]
    fn new_files_are_0640_and_so_are_reopened_ones() {
        let dir = std::env::temp_dir().join(format!("dslite-natlog-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nat.log");
        // 0640 under the usual umask (022 or 002); a stricter one only removes bits.
        let want = FILE_MODE & !umask();
        let mut s = FileSink::new(&path).unwrap();
        assert_eq!(s.deliver(b"one\n", 1), Delivery::Done);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&path), want);
        assert_eq!(want & 0o007, 0, "never readable by others");
        // logrotate renames it away; SIGHUP reopens a new one, 0640 too.
        let rotated = dir.join("nat.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        s.reopen();
        assert_eq!(s.deliver(b"two\n", 1), Delivery::Done);
        assert_eq!(mode(&path), want);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\n");
        // A file someone else made world-readable keeps its mode (the operator's choice).
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        s.reopen();
        assert_eq!(mode(&path), 0o644);
        let _ = std::fs::remove_dir_all(&dir);
    }

    const FSIZE_CHILD: &str = "DSLITE_TEST_FSIZE_CHILD";

    /// The real kernel's short writes: a child process with RLIMIT_FSIZE (SIGXFSZ ignored,
    /// as the controller does) appends records past the limit; the file ends on a whole
    /// record, and holds exactly those the sink said it wrote.
    #[test]
    fn a_file_size_limit_never_leaves_a_torn_line() {
        if let Some(path) = std::env::var_os(FSIZE_CHILD) {
            let lim = libc::rlimit {
                rlim_cur: 1000,
                rlim_max: 1000,
            };
            // SAFETY: setrlimit and signal in this child process, before any file work.
            unsafe {
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            }
            let mut s = FileSink::new(Path::new(&path)).unwrap();
            let mut done = 0;
            for i in 0..20 {
                // 90 bytes each: 11 fit in 1000, the 12th only in part.
                let line = format!("{{\"record\":{i:2},\"pad\":\"{}\"}}\n", "x".repeat(67));
                assert_eq!(line.len(), 90);
                match s.deliver(line.as_bytes(), 1) {
                    Delivery::Done => done += 1,
                    Delivery::Retry => {}
                    other => panic!("{other:?}"),
                }
            }
            println!(
                "WRITTEN={done} ERROR={}",
                s.last_error().unwrap_or_default()
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!("dslite-natlog-fsize-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nat.log");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "natlog::file::tests::a_file_size_limit_never_leaves_a_torn_line",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(FSIZE_CHILD, &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let written: usize = stdout
            .split("WRITTEN=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{stdout}"));
        assert_eq!(written, 11, "{stdout}");
        assert!(
            stdout.contains("File too large") || stdout.contains("only"),
            "{stdout}"
        );
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 990, "cut back to the last whole record");
        let text = String::from_utf8(data).unwrap();
        for (i, l) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["record"], i, "{l}");
        }
        assert_eq!(text.lines().count(), written);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
