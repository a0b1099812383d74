//! Write-behind saving of the lab host's state, as xapi saves its database: a call that
//! changes a persistent object only marks the state dirty, and a flusher thread writes the
//! whole state at most every [`FLUSH_INTERVAL`] (xapi's `Db_globs.db_FLUSH_TIMER`, 2 s).
//!
//! Why: saving is a whole-file write and two fsyncs, each a disk cache flush on the SR's
//! filesystem. Done inside every call, under the database lock, it cost 1.3 to 1.6 ms per
//! mutating RPC on an idle disk, so a replication cycle's hundred metadata calls timed the
//! lab's disk, not the client. xapi never paid that: a lab that did was slower than the host
//! it stands for.
//!
//! What a crash loses is what it loses on xapi: a `kill -9` of the lab host may forget the
//! changes of its last [`FLUSH_INTERVAL`]. A clean stop (SIGTERM, or dropping the last
//! [`crate::lab::Lab`]) saves everything first. VDI contents and the SR index are not behind
//! this: the SR saves them synchronously, and opening a lab reconciles the two (`SR.scan`).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The longest a change waits before it is saved.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// What one flush did: `None` when the lab is gone and the thread should end.
pub(super) type FlushOutcome = Option<Result<(), String>>;

/// The handle of the flusher thread: [`Flusher::dirty`] wakes it, dropping it stops it (the
/// owner saves a last time itself).
pub(super) struct Flusher {
    signal: Arc<Signal>,
}

#[derive(Default)]
struct Signal {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    dirty: bool,
    stopped: bool,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Flusher {
    /// A flusher whose thread is not running yet: changes marked before
    /// [`Flusher::spawn`] are saved by its first flush.
    pub(super) fn new() -> Flusher {
        Flusher {
            signal: Arc::new(Signal::default()),
        }
    }

    /// Start the thread; it calls `flush` at most every `interval` while changes come in.
    pub(super) fn spawn(
        &self,
        interval: Duration,
        flush: impl Fn() -> FlushOutcome + Send + 'static,
    ) -> std::io::Result<()> {
        let signal = self.signal.clone();
        std::thread::Builder::new()
            .name("lab-state-flusher".into())
            .spawn(move || run(&signal, interval, flush))
            .map(drop)
    }

    /// A persistent object changed: save within the interval.
    pub(super) fn dirty(&self) {
        let mut state = self.signal.lock();
        if !state.dirty {
            state.dirty = true;
            self.signal.wake.notify_all();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.signal.lock().stopped = true;
        self.signal.wake.notify_all();
    }
}

fn run(signal: &Signal, interval: Duration, flush: impl Fn() -> FlushOutcome) {
    let mut state = signal.lock();
    loop {
        while !state.dirty && !state.stopped {
            state = signal
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        // Let the changes of one interval gather into one save.
        let deadline = Instant::now() + interval;
        while !state.stopped {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = signal
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if state.stopped {
            return;
        }
        state.dirty = false;
        drop(state);
        match flush() {
            None => return,
            Some(Ok(())) => state = signal.lock(),
            Some(Err(message)) => {
                tracing::error!(error = %message, "saving the lab state failed; retrying");
                state = signal.lock();
                state.dirty = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(interval: Duration) -> (Flusher, Arc<AtomicUsize>) {
        let flushes = Arc::new(AtomicUsize::new(0));
        let counted = flushes.clone();
        let flusher = Flusher::new();
        flusher
            .spawn(interval, move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Some(Ok(()))
            })
            .unwrap();
        (flusher, flushes)
    }

    fn wait_for(flushes: &AtomicUsize, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while flushes.load(Ordering::SeqCst) < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn changes_within_an_interval_make_one_save() {
        let (flusher, flushes) = counting(Duration::from_millis(200));
        for _ in 0..50 {
            flusher.dirty();
        }
        wait_for(&flushes, 1);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(flushes.load(Ordering::SeqCst), 1);
        flusher.dirty();
        wait_for(&flushes, 2);
        assert_eq!(flushes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn nothing_is_saved_without_a_change() {
        let (_flusher, flushes) = counting(Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(flushes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failed_save_is_retried() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = attempts.clone();
        let flusher = Flusher::new();
        flusher
            .spawn(Duration::from_millis(10), move || {
                match counted.fetch_add(1, Ordering::SeqCst) {
                    0 => Some(Err("disk full".into())),
                    _ => Some(Ok(())),
                }
            })
            .unwrap();
        flusher.dirty();
        wait_for(&attempts, 2);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_stopped_flusher_leaves_the_last_save_to_its_owner() {
        let (flusher, flushes) = counting(Duration::from_secs(60));
        flusher.dirty();
        drop(flusher);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(flushes.load(Ordering::SeqCst), 0);
    }
}
