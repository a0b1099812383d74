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
