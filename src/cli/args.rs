//! The command line's arguments. Their doc comments are clap's help text: plain text, which
//! rustdoc would read as Markdown and HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::units::parse_duration;
use crate::lab::VmSpec;
use crate::units::{parse_rate, parse_size};

/// Incremental replication of XenServer / XCP-ng VMs, and a toolbox for VHD files.
#[derive(Debug, Parser)]
#[command(name = "vhdsync", version, about)]
pub struct Cli {
    /// More logging on stderr (-v info, -vv debug, -vvv trace). VHDSYNC_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a VHD file's footer, header, BAT and parent fields.
    Info(InfoArgs),
    /// Validate a VHD file's structure; exit 0 if clean, 1 if problems, 2 if unreadable.
    Check(CheckArgs),
    /// Write a disk's guest content as raw bytes (a differencing disk through its chain).
    Cat(CatArgs),
    /// List the blocks that differ between two snapshot chains, from their BATs alone.
    Diff(DiffArgs),
    /// Write the VHD stream XAPI would export (a delta with --base).
    Export(ExportArgs),
    /// Write a VHD stream onto a raw file, block device or (TARGET.vhd) a VHD file.
    Apply(ApplyArgs),
    /// Copy a VDI (or its delta against a base) from one host to another, validated in flight.
    CopyVdi(CopyVdiArgs),
    /// Print a host's TLS certificate fingerprint, to pin it with --*-fingerprint or in a job.
    Trust(TrustArgs),
    /// A lab host: a simulated XAPI host over VHD files, for tests, demos and rehearsals.
    Lab(LabArgs),
    /// Run one replication cycle for each VM of a job (exit 3 if another run holds a VM).
    Replicate(ReplicateArgs),
    /// List each VM's restore points and judge their age: as text or JSON (exit 1 if one is
    /// older than --max-age), a Nagios plugin line, or Prometheus metrics.
    Status(StatusArgs),
    /// Replicate a VM between two embedded lab hosts: a full, guest writes, a delta.
    Demo(DemoArgs),
    /// Link a source snapshot and a target VM holding its disks as a job's base and replica
    /// (xo-cr-seed's arguments; also run as `xo-cr-seed`).
    Seed(SeedArgs),
    /// Offline seed: snapshot a job's VM and write its disks as seed files and a manifest.
    SeedExport(SeedExportArgs),
    /// Offline seed: create the replica from seed files on the job's target SR.
    SeedImport(SeedImportArgs),
    /// Make a VM's replica bootable (and start it), after losing the source site.
    Failover(FailoverArgs),
    /// Boot a clone of a VM's newest replica to test it; --cleanup removes the clones.
    TestFailover(TestFailoverArgs),
    /// Boot a clone of each VM's newest restore point, cut off from every network, wait for
    /// its guest to report that it booted, then destroy the clone and record the result.
    HealthCheck(HealthCheckArgs),
    /// Measure vhdsync against cat, qemu-img and a curl relay on the same bytes, between two
    /// lab hosts it starts, and judge the performance targets.
    Bench(BenchArgs),
    /// Write a shell completion script to stdout (bash, zsh, fish, elvish or powershell).
    Completions(super::packaging::CompletionsArgs),
    /// Write the vhdsync(1) manual page (roff) to stdout, or with --out every command's page.
    Man(super::packaging::ManArgs),
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Source host URL, e.g. https://root:pass@10.0.0.1 (percent-encode special characters).
    pub source_url: String,
    /// The source snapshot the target VM's disks were made from.
    pub snapshot_uuid: String,
    /// Target host URL.
    pub target_url: String,
    /// The VM on the target holding the snapshot's disks.
    pub target_vm_uuid: String,
    /// The replication job's id (a UUID, as in Xen Orchestra or the job file's job_id).
    pub job_id: String,
    /// The job's schedule id (a UUID).
    pub schedule_id: String,
    /// Read the source password from this file (else VHDSYNC_SOURCE_PASSWORD, else the URL).
    #[arg(long, value_name = "FILE")]
    pub source_password_file: Option<PathBuf>,
    /// Read the target password from this file.
    #[arg(long, value_name = "FILE")]
    pub target_password_file: Option<PathBuf>,
    /// Pin the source's certificate (see `vhdsync trust`).
    #[arg(long, value_name = "sha256:HEX")]
    pub source_fingerprint: Option<String>,
    /// Pin the target's certificate.
    #[arg(long, value_name = "sha256:HEX")]
    pub target_fingerprint: Option<String>,
    /// Accept any certificate (what xo-cr-seed does; the default when run as `xo-cr-seed`).
    #[arg(long)]
    pub insecure: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SeedExportArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// The VM of the job to export.
    #[arg(long, value_name = "UUID")]
    pub vm: String,
    /// The directory to write the seed files and manifest.json into (created; must be empty).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Export even though the job already has a valid chain for the VM (the next replicate
    /// then sends a full copy).
    #[arg(long)]
    pub force: bool,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Limit the transfer to this many bytes per second: a byte count or a size such as
    /// 50MiB or 100MB (overrides the job's max_rate).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_rate: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SeedImportArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// The directory written by seed-export.
    pub dir: PathBuf,
    /// Limit the transfer to this many bytes per second: a byte count or a size such as
    /// 50MiB or 100MB (overrides the job's max_rate).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_rate: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// The source VM whose replica takes over.
    #[arg(long, value_name = "UUID")]
    pub vm: String,
    /// This replica instead of the newest valid one.
    #[arg(long, value_name = "UUID")]
    pub replica: Option<String>,
    /// Start the replica.
    #[arg(long)]
    pub start: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Fail over even though a VM of this job was already failed over (two copies of the VM
    /// then run).
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TestFailoverArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// The source VM whose newest replica is cloned.
    #[arg(long, value_name = "UUID", required_unless_present = "cleanup")]
    pub vm: Option<String>,
    /// Start the clone.
    #[arg(long, conflicts_with = "cleanup")]
    pub start: bool,
    /// Put the clone's interfaces on a network of their own with no physical interface, so
    /// a rehearsal cannot take production addresses.
    #[arg(long, conflicts_with = "cleanup")]
    pub isolated: bool,
    /// Remove the job's test clones instead (all VMs, or only --vm's).
    #[arg(long)]
    pub cleanup: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Virtual size of the benchmark disk, all of it written with random data.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub size: u64,
    /// Share of the disk the guest rewrites before each delta cycle.
    #[arg(long, default_value = "25%", value_parser = parse_percent)]
    pub changed: f64,
    /// Runs of each measurement; the median is reported with the spread.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Work in this folder (default: a new one in the temporary directory). It needs about
    /// three times --size free; the data is deleted at the end, bench.json and logs/ stay.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the result as one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// Only these VMs of the job (repeatable).
    #[arg(long = "vm", value_name = "UUID")]
    pub vms: Vec<String>,
    /// Abort a disk's transfer when no byte moves for this long (e.g. 90s, 2m; a bare number
    /// is seconds).
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Limit the transfer to this many bytes per second: a byte count or a size such as
    /// 50MiB or 100MB, shared by all the job's transfers (overrides the job's max_rate).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_rate: Option<u64>,
    /// Print one JSON document for the whole run.
    #[arg(long)]
    pub json: bool,
    /// Check the job and print its plan (full or delta per disk, the bytes each would send)
    /// without changing anything: exit 2 on a configuration error, 1 on a host failure.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// CRITICAL when a VM's newest valid restore point is older than this (e.g. 90s, 15m,
    /// 1h 30m, 1d; a bare number is seconds); text and JSON then exit 1.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_age: Option<Duration>,
    /// WARNING when a VM's newest valid restore point is older than this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub warn_age: Option<Duration>,
    /// Output: text, json, nagios (one plugin line, exit 0 OK, 1 WARNING, 2 CRITICAL,
    /// 3 UNKNOWN) or prometheus (the text exposition format).
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

/// `status`'s output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
    Nagios,
    Prometheus,
}

#[derive(Debug, Args)]
pub struct HealthCheckArgs {
    /// The job file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// Check only this VM of the job (repeatable; default: every VM).
    #[arg(long, value_name = "UUID")]
    pub vm: Vec<String>,
    /// How long a guest may take to report that it booted (default: the job's
    /// `health_check_timeout`, else 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the lab hosts' files here (default: a temporary folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Leave the files in place at the end.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct CopyVdiArgs {
    /// Source host URL, e.g. https://root@10.0.0.1 (percent-encode special characters).
    #[arg(long)]
    pub from: String,
    /// The VDI to copy (UUID or reference).
    #[arg(long)]
    pub vdi: String,
    /// Send only the blocks changed since this snapshot VDI (on the source host).
    #[arg(long)]
    pub base: Option<String>,
    /// Target host URL.
    #[arg(long)]
    pub to: String,
    /// The target VDI to write into; it must exist with the same size.
    #[arg(long)]
    pub target_vdi: String,
    /// Read the source password from this file (better than putting it in the URL).
    #[arg(long, value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Read the target password from this file.
    #[arg(long, value_name = "FILE")]
    pub to_password_file: Option<PathBuf>,
    /// Pin the source's certificate (see `vhdsync trust`).
    #[arg(long, value_name = "sha256:HEX")]
    pub from_fingerprint: Option<String>,
    /// Pin the target's certificate.
    #[arg(long, value_name = "sha256:HEX")]
    pub to_fingerprint: Option<String>,
    /// Accept any certificate on both hosts (not recommended; prints a warning).
    #[arg(long)]
    pub insecure: bool,
    /// Abort when no byte moves for this long (e.g. 90s, 2m; a bare number is seconds).
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Limit the transfer to this many bytes per second: a byte count or a size such as
    /// 50MiB or 100MB.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_rate: Option<u64>,
    /// Print one JSON summary document instead of progress.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The host's https URL.
    pub url: String,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The base snapshot's VHD; without it, every allocated block.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// The newer snapshot's VHD.
    pub leaf: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read a damaged file anyway, for recovery, printing each structural finding as a
    /// warning on stderr.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The base snapshot's VHD; the stream is then a differencing disk of the changed blocks.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// The newer snapshot's VHD.
    pub leaf: PathBuf,
    /// Output file, or - for stdout (the default).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Read a damaged file anyway, for recovery, printing each structural finding as a
    /// warning on stderr.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The stream, or - for stdin.
    pub input: PathBuf,
    /// A raw file or block device, or a .vhd file (created dynamic if missing).
    pub target: PathBuf,
    /// Create a missing raw target of this many bytes (K, M, G, T are binary).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Raw targets: return without waiting for the data to reach the disk (no fdatasync), as
    /// `qemu-img convert` does by default. A crash soon after can lose the writes.
    #[arg(long)]
    pub no_sync: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The VHD file.
    pub file: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read a damaged file anyway, for recovery, printing each structural finding as a
    /// warning on stderr.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The VHD file.
    pub file: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// The VHD file (its parents are found through its locators).
    pub file: PathBuf,
    /// Write to this file instead of stdout; in a regular file unallocated regions stay
    /// holes, anything else (a device, a pipe) is written sequentially.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Read a damaged file anyway, for recovery, printing each structural finding as a
    /// warning on stderr.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create a lab host in DIR: a pool, a host, a file SR and halted VMs with empty disks.
    Init(LabInitArgs),
    /// Serve the lab host in DIR; the first line printed is its URL, and the NBD server's
    /// address follows on a line `nbd ADDRESS:PORT`.
    Serve(LabServeArgs),
    /// Write to a VDI of a running lab host as its guest would.
    Write(LabWriteArgs),
    /// Print the SHA-256 of a VDI's whole content (its virtual size).
    Hash(LabHashArgs),
    /// Inject a fault into a running lab host (it prints the fault's id), or list or clear
    /// its faults. A fault fires once unless --persistent.
    Fault(Box<LabFaultArgs>),
}

#[derive(Debug, Args)]
pub struct LabInitArgs {
    /// The directory to create the lab host in.
    #[arg(long)]
    pub dir: PathBuf,
    /// root's password.
    #[arg(long, default_value = "lab")]
    pub password: String,
    /// A halted VM: the sizes of its disks (K, M, G, T are binary), its interfaces,
    /// vif[=NETWORK][@MAC] (the management network without a name), cd (an empty CD drive),
    /// uefi or uefi-secureboot (UEFI firmware with EFI variables in its NVRAM) and vtpm (a
    /// virtual TPM with contents), e.g. web01:64M,16M,vif,vif=backend,cd,uefi,vtpm.
    #[arg(long = "vm", value_name = "NAME:ITEM[,ITEM...]", value_parser = parse_vm)]
    pub vms: Vec<VmSpec>,
    /// How long a started VM takes to boot, i.e. until its guest agent reports
    /// (guest_metrics), e.g. 2s or 500ms; changed at run time with lab.set_boot_delay.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_duration)]
    pub boot_delay: Duration,
    /// Print one JSON document with the uuids and references instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LabServeArgs {
    /// The directory of the lab host.
    #[arg(long)]
    pub dir: PathBuf,
    /// Address and port to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Serve HTTPS with a self-signed certificate kept in DIR; its fingerprint is printed
    /// on the second line.
    #[arg(long)]
    pub tls: bool,
    /// The NBD server's port, on the --listen address (xapi-nbd uses 10809); 0 picks a free
    /// one. It serves once a network has the purpose nbd (TLS) or insecure_nbd.
    #[arg(long, default_value_t = 0)]
    pub nbd_port: u16,
}

/// How to reach a running lab host.
#[derive(Debug, Args)]
pub struct LabHostArgs {
    /// The lab host's URL with credentials, e.g. http://root:lab@127.0.0.1:41234.
    #[arg(long)]
    pub url: String,
    /// For https: trust the certificate with this fingerprint (sha256:<hex>).
    #[arg(long, conflicts_with = "insecure")]
    pub fingerprint: Option<String>,
    /// For https: trust any certificate.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct LabWriteArgs {
    #[command(flatten)]
    pub host: LabHostArgs,
    /// The VDI's uuid (or reference).
    #[arg(long)]
    pub vdi: String,
    /// Byte offset of the write.
    #[arg(long, value_parser = parse_size)]
    pub offset: u64,
    /// Write this many pseudo-random bytes, determined by --seed.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, required_unless_present = "zero", conflicts_with = "zero")]
    pub random: Option<u64>,
    /// The seed of the random bytes.
    #[arg(long, default_value_t = 0, requires = "random")]
    pub seed: u64,
    /// Write this many zero bytes.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub zero: Option<u64>,
}

#[derive(Debug, Args)]
pub struct LabHashArgs {
    #[command(flatten)]
    pub host: LabHostArgs,
    /// The VDI's uuid (or reference).
    #[arg(long)]
    pub vdi: String,
}

/// What `lab fault` takes to describe a fault to inject, which listing or clearing refuses.
const FAULT_SPEC: [&str; 13] = [
    "kind",
    "after",
    "seconds",
    "method",
    "code",
    "count",
    "rate",
    "on",
    "to",
    "vdi",
    "vm",
    "mode",
    "persistent",
];

#[derive(Debug, Args)]
pub struct LabFaultArgs {
    #[command(flatten)]
    pub host: LabHostArgs,
    /// List the faults waiting to fire.
    #[arg(long, conflicts_with = "clear", conflicts_with_all = FAULT_SPEC)]
    pub list: bool,
    /// Clear the fault with this id, or all of them.
    #[arg(long, value_name = "ID", num_args = 0..=1, conflicts_with_all = FAULT_SPEC)]
    pub clear: Option<Option<u64>>,
    /// The fault to inject.
    #[arg(
        required_unless_present_any = ["list", "clear"],
        value_parser = clap::builder::PossibleValuesParser::new(crate::lab::faults::kind_names()),
    )]
    pub kind: Option<String>,
    /// drop_export, drop_import, embedded_error, stall: after this many bytes.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub after: Option<u64>,
    /// stall: for this many seconds.
    #[arg(long, value_name = "N")]
    pub seconds: Option<u64>,
    /// rpc_error: the method that fails, e.g. VDI.clone (its Async form fails too).
    #[arg(long, value_name = "M")]
    pub method: Option<String>,
    /// rpc_error: the XAPI error code it answers.
    #[arg(long, value_name = "C")]
    pub code: Option<String>,
    /// rpc_error: fail this many calls (default 1).
    #[arg(long, value_name = "K")]
    pub count: Option<u64>,
    /// bandwidth: bytes per second.
    #[arg(long, value_name = "BYTES_PER_S", value_parser = parse_size)]
    pub rate: Option<u64>,
    /// sr_full: VDI.create, VDI.clone or import; stall: export, import or nbd; redirect:
    /// export or import; bandwidth: export, import or both (default).
    #[arg(long, value_name = "WHAT")]
    pub on: Option<String>,
    /// redirect: the base URL the request is sent on to, e.g. http://10.0.0.2.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// Only transfers (or clones) of this VDI (uuid or reference) meet the fault.
    #[arg(long, value_name = "UUID")]
    pub vdi: Option<String>,
    /// boot_failure: only this VM's start (uuid or reference) meets the fault.
    #[arg(long, value_name = "UUID")]
    pub vm: Option<String>,
    /// boot_failure: hang (the guest never reports; the default) or crash (the VM halts
    /// after the boot delay).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// Fire every time until cleared, instead of once.
    #[arg(long)]
    pub persistent: bool,
}

/// A percentage from 0 to 100, with or without `%`.
fn parse_percent(text: &str) -> Result<f64, String> {
    let number = text.trim().strip_suffix('%').unwrap_or(text.trim());
    match number.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "{text:?} is not a percentage from 0 to 100, e.g. 25%"
        )),
    }
}

/// `NAME:ITEM[,ITEM...]`, as [`VmSpec`] reads it.
fn parse_vm(text: &str) -> Result<VmSpec, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_flag_takes_the_same_syntax() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["vhdsync"], args].concat());
        for text in ["2m", "120", "120s", "1m 60s"] {
            let Ok(Cli {
                command: Command::Replicate(r),
                ..
            }) = parse(&["replicate", "--job", "j", "--stall-timeout", text])
            else {
                panic!("--stall-timeout {text}");
            };
            assert_eq!(r.stall_timeout, Duration::from_secs(120), "{text}");
            let Ok(Cli {
                command: Command::CopyVdi(c),
                ..
            }) = parse(&[
                "copy-vdi",
                "--from",
                "a",
                "--vdi",
                "v",
                "--to",
                "b",
                "--target-vdi",
                "t",
                "--stall-timeout",
                text,
            ])
            else {
                panic!("copy-vdi --stall-timeout {text}");
            };
            assert_eq!(c.stall_timeout, Duration::from_secs(120), "{text}");
            let Ok(Cli {
                command: Command::Status(s),
                ..
            }) = parse(&["status", "--job", "j", "--max-age", text])
            else {
                panic!("--max-age {text}");
            };
            assert_eq!(s.max_age, Some(Duration::from_secs(120)), "{text}");
        }
        let Ok(Cli {
            command: Command::Replicate(r),
            ..
        }) = parse(&["replicate", "--job", "j"])
        else {
            panic!("defaults");
        };
        assert_eq!(r.stall_timeout, Duration::from_secs(120));
        assert!(parse(&["status", "--job", "j", "--max-age", "15M"]).is_err());
        for (args, expected) in [
            (&["status", "--job", "j"][..], StatusFormat::Text),
            (&["status", "--job", "j", "--json"], StatusFormat::Text),
            (
                &["status", "--job", "j", "--format", "nagios"],
                StatusFormat::Nagios,
            ),
            (
                &["status", "--job", "j", "--format", "prometheus"],
                StatusFormat::Prometheus,
            ),
        ] {
            let Ok(Cli {
                command: Command::Status(s),
                ..
            }) = parse(args)
            else {
                panic!("{args:?}");
            };
            assert_eq!(s.format, expected, "{args:?}");
        }
        assert!(parse(&["status", "--job", "j", "--json", "--format", "json"]).is_err());
        assert!(parse(&["status", "--job", "j", "--format", "xml"]).is_err());
    }

    #[test]
    fn percentages_take_an_optional_sign() {
        assert_eq!(parse_percent("25%"), Ok(25.0));
        assert_eq!(parse_percent("12.5"), Ok(12.5));
        for bad in ["", "%", "101%", "-1", "x%"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vms_are_a_name_disk_sizes_and_interfaces() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["vhdsync", "lab", "init"], args].concat());
        let Ok(Cli {
            command:
                Command::Lab(LabArgs {
                    command: LabCommand::Init(init),
                }),
            ..
        }) = parse(&[
            "--dir",
            "d",
            "--vm",
            "web01:64M,16M,vif,vif=lan@02:00:00:00:00:01",
        ])
        else {
            panic!("lab init --vm");
        };
        let vm = &init.vms[0];
        assert_eq!(vm.disks, vec![64 << 20, 16 << 20]);
        assert_eq!(vm.vifs.len(), 2);
        assert_eq!(vm.vifs[1].network.as_deref(), Some("lan"));
        assert_eq!(init.boot_delay, Duration::from_secs(2));
        let Ok(Cli {
            command:
                Command::Lab(LabArgs {
                    command: LabCommand::Init(init),
                }),
            ..
        }) = parse(&[
            "--dir",
            "d",
            "--boot-delay",
            "250ms",
            "--vm",
            "web01:1G,cd,uefi-secureboot,vtpm",
        ])
        else {
            panic!("lab init --boot-delay");
        };
        assert_eq!(init.boot_delay, Duration::from_millis(250));
        assert_eq!(init.vms[0].cd_drives, 1);
        assert!(init.vms[0].vtpm);
        for bad in ["web01", "web01:64M,", "web01:vif=lan@nope"] {
            assert!(parse(&["--dir", "d", "--vm", bad]).is_err(), "{bad}");
        }
    }
}
