//! vhdsync: incremental replication of XenServer / XCP-ng VMs between hosts, the way Xen
//! Orchestra's Continuous Replication does it, as a library and the `vhdsync` binary.
//!
//! Each cycle snapshots a VM on the source host, streams only the VHD blocks changed since the
//! last replicated snapshot from the source's `/export_raw_vdi` straight into the target's
//! `/import_raw_vdi` (validated in flight, never stored), and commits a new protected replica
//! with Xen Orchestra's metadata, so either tool can continue the other's replica chains.
//!
//! # Entry points
//!
//! - Log in to a host: [`HostLogin`] (a [`HostUrl`] with the user, the password from a file, an
//!   environment variable or the URL, and the certificate [`Trust`]) gives an [`XapiClient`],
//!   or a [`ConnectError`]; [`credential_warnings`] says what the password's owner should fix.
//! - Copy one VDI (whole, or its delta against a base) between two hosts: [`transfer_vdi`] with
//!   [`TransferOptions`] (stall timeout, a bandwidth [`Throttle`] shared by the transfers
//!   given clones of it), giving a [`TransferReport`] or a [`TransferError`].
//! - Replicate one VM: [`replicate_vm`] runs one cycle with [`CycleSettings`] (usually from a
//!   [`Job`] file: [`Job::load`], [`Job::cycle_settings`], [`Job::source_login`]) until done
//!   or until its [`CancellationToken`] is cancelled, giving a [`CycleReport`] or a
//!   [`CycleError`] naming the phase, host and disk, with an [`ErrorKind`] to match on.
//!   Its observer is told of each step and each disk's progress ([`CycleEvent`]).
//!   [`run_job`] runs a job's VMs under their locks, a few at a time ([`RunOptions`]).
//! - Test against the simulated host: [`lab`] is a XAPI-compatible host over real VHD files
//!   ([`Lab`], served by [`LabServer`]), which the example below starts in-process.
//!
//! # Example
//!
//! Two lab hosts in this process, and one replication cycle of a VM from one to the other:
//!
//! ```
//! use std::path::Path;
//! use std::sync::Arc;
//!
//! use vhdsync::{
//!     CancellationToken, HostLogin, HostUrl, Job, Lab, LabServer, SystemClock, TransferOptions,
//!     Trust, replicate_vm,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (source_dir, target_dir) = (dir.path().join("source"), dir.path().join("target"));
//! // A source with one VM of one 8 MiB disk, and an empty target; root's password is "lab".
//! let source_lab = Lab::init(&source_dir, "lab", &[("web01".into(), vec![8 << 20])])?;
//! let target_lab = Lab::init(&target_dir, "lab", &[])?;
//! let any_port = "127.0.0.1:0".parse()?;
//! let source_server = LabServer::start(Lab::open(&source_dir)?, any_port, false).await?;
//! let target_server = LabServer::start(Lab::open(&target_dir)?, any_port, false).await?;
//!
//! // Log in. The password could also come from a file (`password_file`) or an environment
//! // variable (`password_env`), which keeps it out of `ps`.
//! let login = |server: &LabServer| -> Result<HostLogin, vhdsync::ConnectError> {
//!     let url = server.base_url().replacen("://", "://root:lab@", 1);
//!     Ok(HostLogin::new(HostUrl::parse(&url)?, Trust::SystemRoots))
//! };
//! let source = login(&source_server)?.connect().await?;
//! let target = login(&target_server)?.connect().await?;
//!
//! // The job's settings, as a job file holds them.
//! let vm = &source_lab.vms[0].ids.uuid;
//! let job = Job::parse(
//!     &format!(
//!         "name = \"nightly\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\n\
//!          vms = [\"{vm}\"]\nretention = 2\nstate_dir = \"{}\"\n",
//!         source_server.base_url(),
//!         target_server.base_url(),
//!         target_lab.sr.uuid,
//!         dir.path().display(),
//!     ),
//!     Path::new("job.toml"),
//! )?;
//! let settings = job.cycle_settings(TransferOptions::default(), Arc::new(SystemClock));
//!
//! // Cancelling the token (from another task, or a signal handler) stops the cycle, which
//! // then destroys what it created.
//! let cancel = CancellationToken::new();
//! let report = replicate_vm(&source, &target, &settings, vm, &mut |_| {}, &cancel).await?;
//! assert_eq!((report.mode, report.disks.len()), ("full", 1));
//! println!("{} bytes sent into replica {}", report.bytes_sent, report.replica);
//! # Ok(())
//! # }
//! ```
//!
//! `examples/copy_vdi.rs` and `examples/replicate_vm.rs` are small programs for real hosts
//! using only these entry points (`tests/examples.rs` runs them against lab hosts).
//!
//! # Layers
//!
//! Imports only go down (see DESIGN.md):
//! 1. pure, no files, sockets or clocks: [`vhd`] (the format), [`stream::encode`] and
//!    [`stream::decode`], the seed-file codec, [`xapi::rpc`], [`replicate::plan`];
//! 2. one kind of I/O each: [`image`] (VHD files on disk), [`stream::apply`],
//!    [`xapi`] (clients, [`xapi::connect`], [`xapi::transfer`]), [`lab`];
//! 3. orchestration across two hosts: [`replicate`] (the cycle, commit, seeding, failover);
//! 4. the command line, the only place that prints or picks exit codes (not API).

// Not API: the arithmetic and report of `vhdsync bench`, public for `benches/` and the tests.
#[doc(hidden)]
pub mod bench;
// Not API: the command line, public only for the binary (`src/main.rs`).
#[doc(hidden)]
pub mod cli;
pub mod fsio;
pub mod image;
pub mod lab;
pub mod nbd;
pub mod replicate;
pub mod stream;
pub mod units;
pub mod vhd;
pub mod xapi;

pub use lab::http::LabServer;
pub use lab::{InitReport, Lab, LabError};
pub use replicate::clock::{Clock, SystemClock};
pub use replicate::job::{HostSpec, Job, JobError};
pub use replicate::run::{
    CycleCause, CycleError, CycleEvent, CycleObserver, CycleReport, CycleSettings, DiskLabel,
    DiskReport, ErrorKind, EventKind, replicate_vm,
};
pub use replicate::runner::{JobObserver, RunOptions, VmOutcome, run_job};
pub use tokio_util::sync::CancellationToken;
pub use xapi::client::{ClientError, XapiClient};
pub use xapi::connect::{
    ConnectError, CredentialWarning, HostLogin, SOURCE_PASSWORD_ENV, TARGET_PASSWORD_ENV,
    credential_warnings, trust_for,
};
pub use xapi::tls::{Fingerprint, Trust};
pub use xapi::transfer::{
    Progress, Throttle, TransferError, TransferErrorKind, TransferOptions, TransferReport, VdiOn,
    transfer_vdi,
};
pub use xapi::{HostUrl, Secret};
