//! A sink's bounded queue and its writer thread: the controller never waits on a receiver.
//!
//! The controller pushes each record into the sink's queue and goes on. A thread per sink
//! takes records in order and hands them to its transport (a file, a datagram socket),
//! which never blocks for long: when the receiver cannot take a record now (a full socket
//! buffer, no receiver yet, a full disk), the record stays at the head of the queue and is
//! retried; when the queue is full, new records are lost and counted. Records still queued
//! when the controller stops get a bounded time to go out, and the rest are counted too.
//!
//! A sink opened `synchronous` (the file) also makes the controller wait until its record
//! is written, while the sink keeps up: the record is then in the page cache before the
//! next event is taken from the kernel, so a SIGKILL loses nothing consumed. Waits for
//! slow writes (a millisecond or more) are bounded by a budget per second, so a slow or
//! stalled disk slows the controller by that share at most, and the queue takes the rest.
//!
//! One file of 530 lines, 170 of them its tests (which drive the queue and the thread
//! together): the queue and the thread that empties it are one mechanism.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{
            AtomicBool, AtomicU64,
            Ordering::{Acquire, Relaxed, Release, SeqCst},
        },
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// What a transport did with one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Sent or written whole.
    Done,
    /// Not now (full buffer, no receiver, no space): keep it, wait, try again.
    Retry,
    /// The receiver reported refusing an earlier record (an ICMP port unreachable surfacing
    /// as ECONNREFUSED on a UDP socket): that one is lost; try this one again at once.
    EarlierRefused,
    /// This record can never be delivered (too long for a datagram): lost.
    Lost,
}

/// The sink's end: a file or a socket.
pub(crate) trait Transport: Send + 'static {
    /// Deliver one item of `records` records; must not block for long.
    fn deliver(&mut self, bytes: &[u8], records: u32) -> Delivery;
    /// Wait up to `t` until delivering may succeed (poll for room, or sleep).
    fn wait(&mut self, t: Duration);
    /// SIGHUP: reopen the file, resend templates.
    fn reopen(&mut self) {}
    /// The last error, for the controller's log.
    fn last_error(&self) -> Option<String>;
}

/// How long a record that cannot go out waits before it is tried again.
pub(crate) const RETRY_EVERY: Duration = Duration::from_millis(200);
/// How long records still queued at shutdown get to go out.
pub(crate) const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);
/// A synchronous sink makes the controller wait at most this long per second for writes
/// slower than [`SLOW_WRITE`].
const SYNC_BUDGET: Duration = Duration::from_millis(50);
const SLOW_WRITE: Duration = Duration::from_millis(1);

/// One sink's counters, shared with the metrics (they survive a reload).
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records delivered.
    pub delivered: AtomicU64,
    /// Lost: the queue was full (the receiver, or the disk, did not keep up).
    pub lost_queue_full: AtomicU64,
    /// Lost: the receiver refused them (UDP: ICMP port unreachable).
    pub lost_refused: AtomicU64,
    /// Lost: undeliverable (too long for a datagram).
    pub lost_error: AtomicU64,
    /// Lost: still queued when the controller stopped.
    pub lost_shutdown: AtomicU64,
    /// Records waiting in the queue now.
    pub queued: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl SinkStats {
    pub fn lost(&self) -> u64 {
        self.lost_queue_full.load(Relaxed)
            + self.lost_refused.load(Relaxed)
            + self.lost_error.load(Relaxed)
            + self.lost_shutdown.load(Relaxed)
    }
}

pub(crate) enum Item {
    Data { bytes: Vec<u8>, records: u32 },
    Reopen,
}

struct State {
    items: VecDeque<Item>,
    cap: usize,
    /// Items pushed, and items the thread finished (delivered, lost or applied).
    pushed: u64,
    finished: u64,
    /// Set when the sink closes: the thread gives up what is left at this instant.
    give_up_at: Option<Instant>,
    exited: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    progress: Condvar,
    stats: Arc<SinkStats>,
    /// A copy of `State::finished`, to check without the lock.
    finished: AtomicU64,
    /// Set (under the lock) by a side about to sleep on its condition variable, so that
    /// the other wakes it only then (a wake-up is a system call).
    worker_sleeps: AtomicBool,
    pusher_sleeps: AtomicBool,
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    // A poisoned lock only means a panic elsewhere: the queue itself is still consistent.
    s.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running sink: its queue and thread.
pub(crate) struct Sink {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    synchronous: bool,
    budget_window: Instant,
    budget_spent: Duration,
}

impl Sink {
    pub(crate) fn start(
        name: &str,
        transport: impl Transport,
        cap: usize,
        stats: Arc<SinkStats>,
        synchronous: bool,
    ) -> std::io::Result<Sink> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                items: VecDeque::new(),
                cap: cap.max(1),
                pushed: 0,
                finished: 0,
                give_up_at: None,
                exited: false,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            stats,
            finished: AtomicU64::new(0),
            worker_sleeps: AtomicBool::new(false),
            pusher_sleeps: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("natlog-{name}"))
            .spawn(move || run(&s, transport))?;
        Ok(Sink {
            shared,
            thread: Some(thread),
            synchronous,
            budget_window: Instant::now(),
            budget_spent: Duration::ZERO,
        })
    }

    /// Queue one item; with a synchronous sink, wait (within the budget) until it is done.
    /// A full queue loses a data item (counted); a reopen is always queued.
    pub(crate) fn push(&mut self, item: Item) {
        let stats = &self.shared.stats;
        let seq = {
            let mut st = lock(&self.shared);
            // Reopens are never refused, but one waiting is enough.
            if matches!(item, Item::Reopen) && matches!(st.items.back(), Some(Item::Reopen)) {
                return;
            }
            if let Item::Data { records, .. } = &item {
                if st.give_up_at.is_some() {
                    stats.lost_shutdown.fetch_add(*records as u64, Relaxed);
                    return;
                }
                if st.items.len() >= st.cap {
                    stats.lost_queue_full.fetch_add(*records as u64, Relaxed);
                    return;
                }
            }
            st.items.push_back(item);
            st.pushed += 1;
            stats.queued.store(st.items.len() as u64, Relaxed);
            st.pushed
        };
        if self.shared.worker_sleeps.load(SeqCst) {
            self.shared.work.notify_one();
        }
        if self.synchronous {
            self.wait_for(seq);
        }
    }

    fn wait_for(&mut self, seq: u64) {
        let now = Instant::now();
        if now.duration_since(self.budget_window) >= Duration::from_secs(1) {
            self.budget_window = now;
            self.budget_spent = Duration::ZERO;
        }
        let left = SYNC_BUDGET.saturating_sub(self.budget_spent);
        if left.is_zero() {
            return;
        }
        let sh = &self.shared;
        if sh.finished.load(Acquire) < seq {
            let mut st = lock(sh);
            sh.pusher_sleeps.store(true, SeqCst);
            while st.finished < seq && !st.exited {
                let Some(t) = left.checked_sub(now.elapsed()) else {
                    break;
                };
                st = sh
                    .progress
                    .wait_timeout(st, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            sh.pusher_sleeps.store(false, SeqCst);
        }
        // Only a slow write counts: a healthy sink is waited for every time.
        let spent = now.elapsed();
        if spent >= SLOW_WRITE {
            self.budget_spent += spent;
        }
    }

    /// Stop taking records: the thread delivers what is queued for up to
    /// [`FLUSH_AT_EXIT`], then counts the rest lost.
    pub(crate) fn begin_close(&mut self) {
        {
            let mut st = lock(&self.shared);
            if st.give_up_at.is_none() {
                st.give_up_at = Some(Instant::now() + FLUSH_AT_EXIT);
            }
        }
        self.shared.work.notify_all();
    }

    /// [`Sink::begin_close`], and wait up to `wait` for the thread to finish.
    pub(crate) fn close(&mut self, wait: Duration) {
        self.begin_close();
        let st = lock(&self.shared);
        // The thread signals its exit unconditionally.
        let (st, _) = self
            .shared
            .progress
            .wait_timeout_while(st, wait, |st| !st.exited)
            .unwrap_or_else(|e| e.into_inner());
        let exited = st.exited;
        drop(st);
        if exited {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Sink {
    /// Without waiting: the thread flushes in the background (a reload replaced the sink).
    fn drop(&mut self) {
        self.close(Duration::ZERO);
    }
}

fn run(shared: &Shared, mut t: impl Transport) {
    let stats = &shared.stats;
    let note_error = |t: &dyn Transport| {
        if let Some(e) = t.last_error() {
            *stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    };
    loop {
        let (item, give_up_at) = {
            let mut st = lock(shared);
            loop {
                if let Some(at) = st.give_up_at {
                    if st.items.is_empty() || Instant::now() >= at {
                        let left: u64 = st
                            .items
                            .drain(..)
                            .map(|i| match i {
                                Item::Data { records, .. } => records as u64,
                                Item::Reopen => 0,
                            })
                            .sum();
                        stats.lost_shutdown.fetch_add(left, Relaxed);
                        stats.queued.store(0, Relaxed);
                        st.exited = true;
                        shared.progress.notify_all();
                        return;
                    }
                }
                if let Some(item) = st.items.pop_front() {
                    stats.queued.store(st.items.len() as u64, Relaxed);
                    break (item, st.give_up_at);
                }
                shared.worker_sleeps.store(true, SeqCst);
                st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
                shared.worker_sleeps.store(false, SeqCst);
            }
        };
        match item {
            Item::Reopen => t.reopen(),
            Item::Data { bytes, records } => {
                let mut refused_in_a_row = 0;
                loop {
                    match t.deliver(&bytes, records) {
                        Delivery::Done => {
                            stats.delivered.fetch_add(records as u64, Relaxed);
                            break;
                        }
                        Delivery::Lost => {
                            stats.lost_error.fetch_add(records as u64, Relaxed);
                            note_error(&t);
                            break;
                        }
                        Delivery::EarlierRefused if refused_in_a_row < 3 => {
                            stats.lost_refused.fetch_add(1, Relaxed);
                            note_error(&t);
                            refused_in_a_row += 1;
                        }
                        Delivery::EarlierRefused | Delivery::Retry => {
                            note_error(&t);
                            refused_in_a_row = 0;
                            // A close may have come while we retried: read it fresh.
                            let give_up = lock(shared).give_up_at.or(give_up_at);
                            if give_up.is_some_and(|at| Instant::now() >= at) {
                                stats.lost_shutdown.fetch_add(records as u64, Relaxed);
                                break;
                            }
                            t.wait(RETRY_EVERY);
                        }
                    }
                }
            }
        }
        let mut st = lock(shared);
        st.finished += 1;
        shared.finished.store(st.finished, Release);
        let wake = shared.pusher_sleeps.load(SeqCst);
        drop(st);
        if wake {
            shared.progress.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A receiver that takes records only while `open`, counting them.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<Vec<u8>>>>,
        refuse_next: Arc<AtomicU64>,
    }

    impl Transport for Gate {
        fn deliver(&mut self, bytes: &[u8], _: u32) -> Delivery {
            if self.refuse_next.load(Relaxed) > 0 {
                self.refuse_next.fetch_sub(1, Relaxed);
                return Delivery::EarlierRefused;
            }
            if bytes == b"too long" {
                return Delivery::Lost;
            }
            if !self.open.load(Relaxed) {
                return Delivery::Retry;
            }
            self.got.lock().unwrap().push(bytes.to_vec());
            Delivery::Done
        }
        fn wait(&mut self, t: Duration) {
            std::thread::sleep(t.min(Duration::from_millis(5)));
        }
        fn last_error(&self) -> Option<String> {
            Some("closed gate".into())
        }
    }

    fn data(s: &str) -> Item {
        Item::Data {
            bytes: s.as_bytes().to_vec(),
            records: 1,
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_stalled_receiver_costs_counted_losses_and_never_blocks_the_pusher() {
        let gate = Gate::default();
        let stats = Arc::new(SinkStats::default());
        let mut s = Sink::start("t", gate.clone(), 8, stats.clone(), false).unwrap();
        let t0 = Instant::now();
        s.push(data("r0"));
        wait_until("the thread to hold r0", || lock(&s.shared).items.is_empty());
        for i in 1..1000 {
            s.push(data(&format!("r{i}")));
        }
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "pushing never waits"
        );
        // One in the thread's hands, 8 queued, the rest lost.
        assert_eq!(stats.queued.load(Relaxed), 8);
        assert_eq!(stats.lost_queue_full.load(Relaxed), 1000 - 9);
        assert_eq!(stats.delivered.load(Relaxed), 0);
        assert_eq!(
            stats.last_error.lock().unwrap().as_deref(),
            Some("closed gate")
        );
        // The receiver comes back: what was kept goes out, in order.
        gate.open.store(true, Relaxed);
        wait_until("the backlog", || stats.delivered.load(Relaxed) == 9);
        let got = gate.got.lock().unwrap().clone();
        let want: Vec<Vec<u8>> = (0..9).map(|i| format!("r{i}").into_bytes()).collect();
        assert_eq!(got, want);
        s.push(data("after"));
        wait_until("a new record", || stats.delivered.load(Relaxed) == 10);
        assert_eq!(stats.queued.load(Relaxed), 0);
    }

    #[test]
    fn refusals_and_undeliverable_records_are_counted_apart() {
        let gate = Gate::default();
        gate.open.store(true, Relaxed);
        gate.refuse_next.store(2, Relaxed);
        let stats = Arc::new(SinkStats::default());
        let mut s = Sink::start("t", gate.clone(), 8, stats.clone(), true).unwrap();
        s.push(data("a"));
        s.push(data("too long"));
        s.push(data("b"));
        wait_until("three records", || {
            stats.delivered.load(Relaxed) + stats.lost_error.load(Relaxed) == 3
        });
        assert_eq!(
            stats.lost_refused.load(Relaxed),
            2,
            "two earlier ones refused"
        );
        assert_eq!(stats.lost_error.load(Relaxed), 1);
        assert_eq!(
            *gate.got.lock().unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(stats.lost(), 3);
    }

    #[test]
    fn a_synchronous_sink_has_written_each_record_when_push_returns() {
        let gate = Gate::default();
        gate.open.store(true, Relaxed);
        let stats = Arc::new(SinkStats::default());
        let mut s = Sink::start("t", gate.clone(), 8, stats.clone(), true).unwrap();
        for i in 0..200u64 {
            s.push(data(&format!("r{i}")));
            assert_eq!(stats.delivered.load(Relaxed), i + 1, "record {i} written");
        }
    }

    #[test]
    fn a_stalled_synchronous_sink_costs_at_most_its_budget() {
        let gate = Gate::default();
        let stats = Arc::new(SinkStats::default());
        let mut s = Sink::start("t", gate.clone(), 10_000, stats.clone(), true).unwrap();
        let t0 = Instant::now();
        for i in 0..2000 {
            s.push(data(&format!("r{i}")));
        }
        let spent = t0.elapsed();
        assert!(
            spent < SYNC_BUDGET * 3 + Duration::from_millis(200),
            "waited {spent:?} on a stalled sink"
        );
        wait_until("1999 kept, not lost", || stats.queued.load(Relaxed) == 1999);
        assert_eq!(stats.lost(), 0);
    }

    #[test]
    fn closing_flushes_what_it_can_and_counts_the_rest() {
        let gate = Gate::default();
        gate.open.store(true, Relaxed);
        let stats = Arc::new(SinkStats::default());
        let mut s = Sink::start("t", gate.clone(), 100, stats.clone(), false).unwrap();
        for i in 0..50 {
            s.push(data(&format!("r{i}")));
        }
        s.close(Duration::from_secs(5));
        assert_eq!(
            stats.delivered.load(Relaxed),
            50,
            "a healthy sink flushes all"
        );
        assert!(s.thread.is_none(), "and its thread is gone");
        s.push(data("late"));
        assert_eq!(stats.lost_shutdown.load(Relaxed), 1, "closed: counted");

        // A receiver that never takes anything: the flush gives up after its deadline.
        let gate = Gate::default();
        let stats = Arc::new(SinkStats::default());
        let mut s = Sink::start("t", gate, 100, stats.clone(), false).unwrap();
        for i in 0..50 {
            s.push(data(&format!("r{i}")));
        }
        let t0 = Instant::now();
        s.close(FLUSH_AT_EXIT + Duration::from_secs(3));
        assert!(t0.elapsed() < FLUSH_AT_EXIT + Duration::from_secs(1));
        assert_eq!(stats.lost_shutdown.load(Relaxed), 50);
        assert_eq!(stats.queued.load(Relaxed), 0);
    }
}
