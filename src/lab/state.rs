//! The lab host's state: the object database behind a mutex, saved to `<dir>/state.json`
//! behind the calls that change a persistent object (see `lab::flusher`), and the file
//! SR in `<dir>/sr`.
//!
//! Saving writes a temp file, fsyncs it, renames it into place and fsyncs the directory, so a
//! crash leaves the old state or the new one. Sessions and tasks are not saved, as in XAPI
//! (whose `session` and `task` tables are not persisted): after a restart every client logs
//! in again, which npm `xen-api` and the Python SDK do by themselves on `SESSION_INVALID`.
//! Injected faults are not saved either: they are set up by the test that runs the host.
//!
//! A second thread, the boot timer (`lab::boot`), completes started VMs' boots when their
//! delay has passed, through the same locked change as an RPC.
//!
//! Concurrency: RPCs take the database lock for their whole run, storage calls included, so
//! each one is atomic with respect to the others; the data plane uses the [`FileSr`] directly,
//! which has its own locks (lock order: database, then SR). Waiters in `event.from` sleep on a
//! condition variable signalled after every change when they block a thread (`Lab::handle`),
//! and await a watch channel of the database generation when they are async (the HTTP server),
//! so that they hold no thread and end when their client goes away.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::fsio::atomic::{self, AtomicError};
use crate::lab::boot::BootTimer;
use crate::lab::db::{Db, StateFormatError};
use crate::lab::faults::Faults;
use crate::lab::flusher::{FLUSH_INTERVAL, Flusher};
use crate::lab::nbd::NbdEndpoint;
use crate::lab::rpc::{EventWaits, RunningTasks};
use crate::lab::sr::{FileSr, SrError};
use crate::xapi::rpc::XapiFault;

const STATE_FILE: &str = "state.json";
const SR_DIR: &str = "sr";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{}: already holds a lab host ({STATE_FILE} exists)", dir.display())]
    AlreadyInitialised { dir: PathBuf },
    #[error("{}: no lab host here ({STATE_FILE} is missing; run `vhdsync lab init`)", dir.display())]
    NotInitialised { dir: PathBuf },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    State {
        path: PathBuf,
        source: StateFormatError,
    },
    #[error("lab SR: {0}")]
    Sr(#[from] SrError),
    #[error("setting up the lab objects: {0}")]
    Setup(XapiFault),
}

impl From<AtomicError> for LabError {
    fn from(e: AtomicError) -> Self {
        LabError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

/// A lab host: cheap to clone, and every clone is the same host. Dropping the last clone
/// saves the state before it returns.
pub struct Lab {
    shared: Arc<Shared>,
}

impl Clone for Lab {
    fn clone(&self) -> Lab {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Lab {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Lab {
    /// The last handle saves here, in the dropping thread. `Shared`'s own drop is not enough:
    /// the flusher thread briefly holds the shared state during a save, and when it holds it
    /// last, the final save ran there, after the owner had moved on (or exited the process).
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1
            && let Err(e) = self.shared.flush()
        {
            tracing::error!(error = %e, "saving the lab state at shutdown failed");
        }
    }
}

struct Shared {
    dir: PathBuf,
    db: Mutex<Db>,
    changed: Condvar,
    /// The database generation, sent after every change: what async waiters await.
    generation: watch::Sender<u64>,
    /// The tasks a transfer or an `Async.` call is running, which `task.cancel` leaves to them.
    running: RunningTasks,
    /// The `event.from` calls waiting, per session.
    event_waits: EventWaits,
    sr: Arc<FileSr>,
    faults: Faults,
    flusher: Flusher,
    /// When started VMs finish booting (see `lab::boot`).
    boots: BootTimer,
    /// Held across a whole save, so that saves run one at a time and the newest state is the
    /// one written last.
    saving: Mutex<()>,
    /// The [`Lab`] handles alive (the flusher thread holds none).
    handles: AtomicUsize,
    /// The NBD server serving this lab, if one runs (`VDI.get_nbd_info` names it).
    nbd: Mutex<Option<NbdEndpoint>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl Lab {
    /// Open the lab host initialised in `dir`, and reconcile its VDI records with the SR
    /// (see `SR.scan`).
    pub fn open(dir: &Path) -> Result<Lab, LabError> {
        let path = dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotInitialised {
                    dir: dir.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(LabError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let db = Db::from_state_json(&bytes).map_err(|source| LabError::State { path, source })?;
        let sr = FileSr::open(&dir.join(SR_DIR))?;
        let lab = Lab::assemble(dir, db, sr)?;
        lab.with_db_mut(|db| {
            lab.scan_all(db)?;
            // A restart is a toolstack restart: running guests still boot.
            crate::lab::rpc::resume_boots(&lab, db);
            Ok(())
        })
        .map_err(LabError::Setup)?;
        Ok(lab)
    }

    /// A lab host over a fresh directory, for `init`: the SR is created, nothing is saved yet.
    pub(crate) fn create(dir: &Path, db: Db) -> Result<Lab, LabError> {
        if dir.join(STATE_FILE).exists() {
            return Err(LabError::AlreadyInitialised {
                dir: dir.to_path_buf(),
            });
        }
        let sr = FileSr::open(&dir.join(SR_DIR))?;
        Lab::assemble(dir, db, sr)
    }

    fn assemble(dir: &Path, db: Db, sr: FileSr) -> Result<Lab, LabError> {
        let (generation, _) = watch::channel(db.generation());
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            db: Mutex::new(db),
            changed: Condvar::new(),
            generation,
            running: RunningTasks::default(),
            event_waits: EventWaits::default(),
            sr: Arc::new(sr),
            faults: Faults::default(),
            flusher: Flusher::new(),
            boots: BootTimer::new(),
            saving: Mutex::new(()),
            handles: AtomicUsize::new(1),
            nbd: Mutex::new(None),
        });
        // The thread holds no handle that would keep the lab alive: the last handle's drop
        // saves, and dropping the shared state stops the thread.
        let weak = Arc::downgrade(&shared);
        shared
            .flusher
            .spawn(FLUSH_INTERVAL, move || {
                weak.upgrade()
                    .map(|shared| shared.flush().map_err(|e| e.to_string()))
            })
            .map_err(|source| LabError::Io {
                action: "start the state flusher for",
                path: dir.to_path_buf(),
                source,
            })?;
        // Like the flusher, the timer holds no handle; the boots it completes are changes
        // like an RPC's, which wake `event.from` waiters.
        let weak = Arc::downgrade(&shared);
        shared
            .boots
            .spawn(move |due| {
                let shared = weak.upgrade()?;
                let applied = shared.change(|db| {
                    if shared.boots.take_current(&due) {
                        crate::lab::rpc::complete_boot(db, &due)
                    } else {
                        Ok(())
                    }
                });
                if let Err(fault) = applied {
                    tracing::warn!(vm = %due.vm, %fault, "completing a boot failed");
                }
                Some(())
            })
            .map_err(|source| LabError::Io {
                action: "start the boot timer for",
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Lab { shared })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The SR holding every VDI's VHD chain; the data plane reads and imports through it.
    pub fn sr(&self) -> &Arc<FileSr> {
        &self.shared.sr
    }

    /// The leaf file of `vdi` in the SR of the lab host in `dir`, which another process
    /// may be serving (see [`crate::lab::sr::indexed_leaf_path`]).
    pub fn served_leaf_path(dir: &Path, vdi: uuid::Uuid) -> Result<PathBuf, LabError> {
        Ok(crate::lab::sr::indexed_leaf_path(&dir.join(SR_DIR), vdi)?)
    }

    /// The faults injected with `lab.inject_fault`, which calls and transfers meet.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    fn lock(&self) -> MutexGuard<'_, Db> {
        self.shared.lock_db()
    }

    /// Read the database.
    pub(crate) fn with_db<T>(&self, read: impl FnOnce(&Db) -> T) -> T {
        read(&self.lock())
    }

    /// Change the database. Whatever `change` did, even when it failed half-way, is saved
    /// within [`FLUSH_INTERVAL`] if a persistent object changed, and waiters are woken.
    pub(crate) fn with_db_mut<T>(
        &self,
        change: impl FnOnce(&mut Db) -> Result<T, XapiFault>,
    ) -> Result<T, XapiFault> {
        self.shared.change(change)
    }

    /// The timer that completes started VMs' boots.
    pub(crate) fn boot_timer(&self) -> &BootTimer {
        &self.shared.boots
    }

    /// How long a started VM takes to boot (to get its `guest_metrics`), saved with the lab.
    pub fn boot_delay(&self) -> Duration {
        self.with_db(|db| db.settings().boot_delay)
    }

    /// Change the boot delay for the boots that start from now on.
    pub fn set_boot_delay(&self, delay: Duration) {
        // The closure cannot fail.
        let _ = self.with_db_mut(|db| {
            let mut settings = db.settings();
            settings.boot_delay = delay;
            db.set_settings(settings);
            Ok(())
        });
    }

    /// A receiver that sees every later change of the database: async waiters subscribe
    /// before they look, so that no change slips in between.
    pub(crate) fn watch_changes(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// Where the lab's NBD server listens, if one runs; the server keeps it.
    pub(crate) fn nbd_slot(&self) -> &Mutex<Option<NbdEndpoint>> {
        &self.shared.nbd
    }

    pub(crate) fn running_tasks(&self) -> &RunningTasks {
        &self.shared.running
    }

    pub(crate) fn event_waits(&self) -> &EventWaits {
        &self.shared.event_waits
    }

    /// Save now whatever changed since the last save; `lab init` and a stopping `lab serve`
    /// call it so that a failure is reported, not just logged.
    pub fn flush(&self) -> Result<(), LabError> {
        self.shared.flush()
    }

    /// Wait until `ready` finds something or `deadline` passes, then answer `on_timeout`; both
    /// see the database under the same lock as the last check, so nothing slips in between.
    pub(crate) fn wait_for<T>(
        &self,
        deadline: Instant,
        mut ready: impl FnMut(&Db) -> Option<T>,
        on_timeout: impl FnOnce(&Db) -> T,
    ) -> T {
        let mut db = self.lock();
        loop {
            if let Some(found) = ready(&db) {
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                return on_timeout(&db);
            }
            db = self
                .shared
                .changed
                .wait_timeout(db, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Shared {
    /// Change the database (see [`Lab::with_db_mut`]), whoever asks: an RPC or the boot timer.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut Db) -> Result<T, XapiFault>,
    ) -> Result<T, XapiFault> {
        let mut db = self.lock_db();
        let before = db.generation();
        let outcome = change(&mut db);
        if db.is_unsaved() {
            self.flusher.dirty();
        }
        if db.generation() != before {
            self.changed.notify_all();
            self.generation.send_replace(db.generation());
        }
        outcome
    }

    fn lock_db(&self) -> MutexGuard<'_, Db> {
        // A panic mid-change can leave the database inconsistent only in memory; carrying on
        // serves the other clients, and the state file still holds the last whole save.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Save what changed since the last save. The state is serialised under the database lock
    /// and written outside it, so calls wait for the copy, not for the disk.
    fn flush(&self) -> Result<(), LabError> {
        let _saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = {
            let mut db = self.lock_db();
            if !db.take_unsaved() {
                return Ok(());
            }
            db.to_state_json()
        };
        self.save(&bytes)
            .inspect_err(|_| self.lock_db().mark_unsaved())
    }

    /// Write the state file atomically (temp file, fsync, rename, fsync of the directory).
    fn save(&self, state: &[u8]) -> Result<(), LabError> {
        Ok(atomic::write(&self.dir.join(STATE_FILE), state)?)
    }
}
