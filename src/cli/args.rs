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
