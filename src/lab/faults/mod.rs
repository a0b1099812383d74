//! Fault injection: faults a test sets with `lab.inject_fault` (or `vhdsync lab fault`), which
//! the RPC dispatch, the data plane and booting VMs then act on (issue 8 §1). A
//! `boot_failure` is met by the next `VM.start` (of its `vm` only, if given): the VM runs but
//! its guest never reports (`mode: "hang"`, the default), or it halts again once the boot
//! delay has passed (`mode: "crash"`); either way no `guest_metrics` appear, which is what a
//! health check waits for.
//!
//! This module only decides; it performs no I/O and reads no clock. The registry says which
//! fault a call or a transfer meets, and [`TransferFaults::step`] says what to do with a
//! transfer's next bytes (wait, pass some of them, end the transfer); the hooks carry that
//! out. Faults live in memory only, like tasks: a restarted lab host has none.
//!
//! Firing: a one-shot fault is removed when it fires (an `rpc_error` after `count` firings);
//! a persistent one stays until cleared. A transfer arms the data-plane faults that exist when
//! it starts and claims each from the registry only when it fires, so a one-shot fault armed
//! by two concurrent transfers fires in one of them, and a fault cleared meanwhile not at all.
//! A `drop_export` after more bytes than the export has never fires and stays.
//!
//! Three parts: `spec` reads and shows what a test asks for, `registry` keeps the faults
//! waiting to fire and answers which one a call meets, `transfer` is one transfer's state
//! machine over the faults it armed.

mod registry;
mod spec;
mod transfer;

pub use registry::{Fault, Faults, RpcFault};
pub use spec::{
    BootFailure, FaultKind, FaultSpec, Plane, Planes, SpecError, SrFullOn, VdiFilter, VmFilter,
    kind_names,
};
pub use transfer::{Cut, CutKind, Step, TransferFaults};

/// A fault's identifier, unique for the life of the lab host.
pub type FaultId = u64;
