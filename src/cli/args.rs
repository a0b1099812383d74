use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
}

/// How to reach and trust one host: `--from-…` or `--to-…` options.
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
    /// Abort when no byte moves for this many seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub stall_timeout: u64,
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
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The stream, or - for stdin.
    pub input: PathBuf,
    /// A raw file or block device, or a .vhd file (created dynamic if missing).
    pub target: PathBuf,
    /// Create a missing raw target of this many bytes.
    #[arg(long)]
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
    /// Write to this file instead of stdout; unallocated regions stay holes.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}
