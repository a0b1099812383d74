//! The boot timer: when a started VM's guest agent reports, or its boot crashes. `VM.start`
//! schedules the VM's boot outcome one boot delay ahead; a thread sleeps until the earliest
//! one is due and hands it to the lab, which applies it under the database lock like any
//! change, so that `event.from` waiters wake up as they do for an RPC.
//!
//! Why a thread and not a deadline checked when records are read: clients wait for the
//! `guest_metrics` field with `event.from`, which only wakes on a change, so the change has to
//! happen on time whether anyone reads or not. Why not a tokio task: the lab runs without a
//! runtime too (`Lab::handle`, `lab init`), like its state flusher, which is a thread as well.
//! Nothing here blocks an RPC: scheduling is a map insert.
//!
//! Each boot has an id. Stopping the VM forgets its boot, and the lab applies a due boot
//! only if it is still its VM's current one ([`BootTimer::take_current`], asked under the
//! database lock), so a boot that fell due while its VM was being stopped and started again
//! is dropped instead of reporting early for the new boot.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What becomes of a boot once its delay has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The guest agent reports: the VM gets its `guest_metrics`.
    Report,
    /// The guest crashes: the VM halts.
    Crash,
}

/// A boot whose delay has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Due {
    pub vm: String,
    pub boot: u64,
    pub outcome: Outcome,
}

/// The handle of the timer thread; dropping it stops the thread.
pub(crate) struct BootTimer {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Boots waiting for their time, by (due time, boot id).
    queue: BTreeMap<(Instant, u64), Due>,
    /// Each booting VM's current boot.
    current: HashMap<String, u64>,
    last_boot: u64,
    stopped: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every statement leaves the state consistent; a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What applying a due boot gave: `None` when the lab is gone and the thread should end.
pub(crate) type Fired = Option<()>;

impl BootTimer {
    /// A timer whose thread is not running yet.
    pub(crate) fn new() -> BootTimer {
        BootTimer {
            shared: Arc::new(Shared::default()),
        }
    }

    /// Start the thread; it calls `fire` with each boot as it falls due.
    pub(crate) fn spawn(
        &self,
        fire: impl Fn(Due) -> Fired + Send + 'static,
    ) -> std::io::Result<()> {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("lab-boot-timer".into())
            .spawn(move || run(&shared, fire))
            .map(drop)
    }

    /// A boot of `vm` begins, replacing any earlier one; `outcome` comes after `delay`, or
    /// never (`None`, a hung guest). Returns the boot's id.
    pub(crate) fn schedule(&self, vm: &str, delay: Duration, outcome: Option<Outcome>) -> u64 {
        let mut state = self.shared.lock();
        forget_locked(&mut state, vm);
        state.last_boot += 1;
        let boot = state.last_boot;
        state.current.insert(vm.to_owned(), boot);
        if let Some(outcome) = outcome {
            let due = Instant::now().checked_add(delay).unwrap_or_else(far_future);
            state.queue.insert(
                (due, boot),
                Due {
                    vm: vm.to_owned(),
                    boot,
                    outcome,
                },
            );
            self.shared.wake.notify_all();
        }
        boot
    }

    /// `vm` stopped or went away: its boot, if any, never completes.
    pub(crate) fn forget(&self, vm: &str) {
        forget_locked(&mut self.shared.lock(), vm);
    }

    /// Whether `due` is its VM's current boot; if so the boot is over (it fires once).
    pub(crate) fn take_current(&self, due: &Due) -> bool {
        let mut state = self.shared.lock();
        if state.current.get(&due.vm) == Some(&due.boot) {
            state.current.remove(&due.vm);
            true
        } else {
            false
        }
    }

    /// How many boots wait for their time (for tests).
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.shared.lock().queue.len()
    }
}

impl Drop for BootTimer {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_all();
    }
}

fn forget_locked(state: &mut State, vm: &str) {
    if state.current.remove(vm).is_some() {
        state.queue.retain(|_, due| due.vm != vm);
    }
}

/// A time no boot reaches: about a century ahead, for delays `Instant` cannot add.
fn far_future() -> Instant {
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(century).unwrap_or(now)
}

fn run(shared: &Shared, fire: impl Fn(Due) -> Fired) {
    let mut state = shared.lock();
    loop {
        if state.stopped {
            return;
        }
        let now = Instant::now();
        let next = state.queue.keys().next().map(|(due, _)| *due);
        match next {
            None => {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            Some(due) if due > now => {
                state = shared
                    .wake
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            Some(_) => {
                let later = state.queue.split_off(&(now, u64::MAX));
                let ready = std::mem::replace(&mut state.queue, later);
                drop(state);
                for due in ready.into_values() {
                    if fire(due).is_none() {
                        return;
                    }
                }
                state = shared.lock();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn timer() -> (BootTimer, mpsc::Receiver<Due>) {
        let timer = BootTimer::new();
        let (sender, fired) = mpsc::channel();
        timer.spawn(move |due| sender.send(due).ok()).unwrap();
        (timer, fired)
    }

    #[test]
    fn boots_fire_in_due_order_once_each() {
        let (timer, fired) = timer();
        let slow = timer.schedule("slow", Duration::from_millis(60), Some(Outcome::Report));
        let fast = timer.schedule("fast", Duration::from_millis(10), Some(Outcome::Crash));
        let first = fired.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            (first.vm.as_str(), first.boot, first.outcome),
            ("fast", fast, Outcome::Crash)
        );
        assert!(timer.take_current(&first));
        assert!(!timer.take_current(&first), "a boot completes once");
        let second = fired.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((second.vm.as_str(), second.boot), ("slow", slow));
        assert_eq!(timer.pending(), 0);
    }

    #[test]
    fn forgotten_and_replaced_boots_never_complete() {
        let (timer, fired) = timer();
        timer.schedule("stopped", Duration::from_millis(20), Some(Outcome::Report));
        timer.forget("stopped");
        assert_eq!(timer.pending(), 0);
        let old = timer.schedule("restarted", Duration::ZERO, Some(Outcome::Report));
        let stale = fired.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(stale.boot, old);
        // The VM was stopped and started again before the lab applied the first boot.
        let new = timer.schedule(
            "restarted",
            Duration::from_secs(3600),
            Some(Outcome::Report),
        );
        assert!(!timer.take_current(&stale));
        assert_ne!(new, old);
        // A hung boot is current but never due.
        let hung = timer.schedule("hung", Duration::ZERO, None);
        assert_eq!(timer.pending(), 1);
        assert!(fired.recv_timeout(Duration::from_millis(50)).is_err());
        assert!(timer.take_current(&Due {
            vm: "hung".into(),
            boot: hung,
            outcome: Outcome::Report
        }));
    }

    #[test]
    fn dropping_the_handle_stops_the_thread() {
        let (timer, fired) = timer();
        timer.schedule("vm", Duration::from_secs(3600), Some(Outcome::Report));
        drop(timer);
        // The thread ended and dropped its sender: the channel disconnects.
        assert_eq!(
            fired.recv_timeout(Duration::from_secs(5)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
