//! What a cycle tells its caller as it goes: each step as it starts, each disk's transfer
//! (start, progress, end), the commit and retention. Displays and logs are built on these;
//! the cycle itself prints nothing.

use crate::replicate::lease::LeaseError;
use crate::replicate::lock::LockError;

use super::{CycleError, CycleReport, DiskReport, HealthOutcome, Phase};
use crate::xapi::transfer::Progress;

/// Something that happened in a VM's cycle.
#[derive(Debug, Clone, Copy)]
pub struct CycleEvent<'a> {
    /// The VM's UUID.
    pub vm: &'a str,
    /// The VM's name label (as the source host has it); empty before the source VM is read,
    /// as in a [`EventKind::Failed`] because it could not be.
    pub vm_name: &'a str,
    pub kind: EventKind<'a>,
}

/// A disk of the VM being replicated: its userdevice (`0`, `1`, ...) and its VDI's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLabel<'a> {
    pub userdevice: &'a str,
    pub name: &'a str,
}

/// What happened. More kinds may come: match with a wildcard arm.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum EventKind<'a> {
    /// The cycle started this step: every step but [`Phase::SourceVm`] (the first) is
    /// announced. [`Phase::Transfer`] is followed by each disk's own events.
    Step(Phase),
    /// The source snapshot exists; `base` is the earlier snapshot the deltas are against,
    /// when the cycle found one.
    SnapshotTaken {
        snapshot: &'a str,
        base: Option<&'a str>,
    },
    /// A disk's transfer starts: `delta` against the base, else the whole disk.
    DiskStarted {
        disk: DiskLabel<'a>,
        delta: bool,
        virtual_size: u64,
    },
    /// Bytes moved on a disk's transfer; `progress.total` is known once the source's block
    /// table has been read.
    DiskProgress {
        disk: DiskLabel<'a>,
        progress: &'a Progress,
    },
    /// A disk's transfer is complete.
    DiskDone {
        disk: DiskLabel<'a>,
        report: &'a DiskReport,
    },
    /// The live replica is committed and its target snapshot is the new restore point.
    Committed {
        replica: &'a str,
        target_snapshot: &'a str,
    },
    /// Retention removed these restore points (target) and snapshots (source).
    RetentionDone {
        deleted_replicas: &'a [String],
        deleted_snapshots: &'a [String],
    },
    /// The job's health check of the new restore point starts.
    HealthCheckStarted,
    /// The health check's outcome.
    HealthCheckDone(&'a HealthOutcome),
    /// The cycle succeeded: its report, as [`super::replicate_vm`] returns it.
    Done(&'a CycleReport),
    /// The cycle failed (and has cleaned up): its error, as [`super::replicate_vm`]
    /// returns it.
    Failed(&'a CycleError),
    /// The cycle did not start: the VM's local lock or its lease on the source was not
    /// taken. Sent by a job's run (`runner`), not by [`super::replicate_vm`]; the VM's name
    /// is not known yet.
    Refused(Refusal<'a>),
}

/// Why a VM's cycle did not start.
#[derive(Debug, Clone, Copy)]
pub enum Refusal<'a> {
    Lock(&'a LockError),
    Lease(&'a LeaseError),
}

/// Where a cycle sends its events. It is called on the cycle's task, between its steps and
/// from inside transfers: keep it quick.
pub type CycleObserver<'a> = &'a mut (dyn FnMut(&CycleEvent<'_>) + Send);
