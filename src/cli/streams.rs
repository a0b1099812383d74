//! `diff`, `export` and `apply`: changed blocks between snapshots and VHD streams.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::SystemTime;

use serde_json::json;

use super::CliError;
use super::args::{ApplyArgs, DiffArgs, ExportArgs};
use super::inspect::open_chain;
use super::output::{print_json, stdout_file};
use super::units::human_bytes;
use crate::image::{Chain, changed};
use crate::stream::apply::{ApplyError, ApplyTarget, RawTarget, VhdTarget};
use crate::stream::{ChainExport, FeedError, feed};
use crate::vhd::{Footer, VhdTimestamp};

fn open_pair(
    leaf: &std::path::Path,
    base: Option<&std::path::Path>,
    force: bool,
) -> Result<(Chain, Option<Chain>), CliError> {
    let leaf = open_chain(leaf, force)?;
    let base = base.map(|b| open_chain(b, force)).transpose()?;
    Ok((leaf, base))
}

pub fn diff(args: &DiffArgs) -> Result<ExitCode, CliError> {
    let (leaf, base) = open_pair(&args.leaf, args.base.as_deref(), args.force)?;
    let set = changed(&leaf, base.as_ref());
    let blocks: Vec<u32> = set.iter().collect();
    let bytes = blocks
        .iter()
        .map(|&i| leaf.leaf().block_len(i))
        .sum::<u64>();
    if args.json {
        print_json(
            &json!({"blocks": blocks, "count": blocks.len(), "bytes": bytes,
            "block_size": leaf.block_size(), "virtual_size": leaf.virtual_size()}),
        )?;
    } else {
        let list: Vec<String> = blocks.iter().map(u32::to_string).collect();
        println!("{}", list.join(" "));
        println!(
            "{} changed blocks, {} of {}",
            blocks.len(),
            human_bytes(bytes),
            human_bytes(leaf.virtual_size())
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn export(args: &ExportArgs) -> Result<ExitCode, CliError> {
    let (leaf, base) = open_pair(&args.leaf, args.base.as_deref(), args.force)?;
    let export = ChainExport::new(
        leaf,
        base.as_ref(),
        uuid::Uuid::new_v4(),
        VhdTimestamp::from_system_time(SystemTime::now()),
    )
    .map_err(|e| CliError::Input(format!("{}: {e}", args.leaf.display())))?;
    let mut out = match args.output.as_deref() {
        None => stdout_file()?,
        Some(p) if p.as_os_str() == "-" => stdout_file()?,
        Some(p) => std::fs::File::create(p)
            .map_err(|e| CliError::Failed(format!("{}: create: {e}", p.display())))?,
    };
    for frame in export.frames() {
        let frame = frame.map_err(|e| CliError::Failed(format!("{}: {e}", args.leaf.display())))?;
        out.write_all(&frame)
            .map_err(|e| CliError::Failed(format!("write: {e}")))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn apply(args: &ApplyArgs) -> Result<ExitCode, CliError> {
    let is_vhd = args
        .target
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("vhd"));
    let input: Box<dyn Read> = if args.input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.input)
                .map_err(|e| CliError::Input(format!("{}: open: {e}", args.input.display())))?,
        )
    };
    let open_target = |footer: &Footer| -> Result<Box<dyn ApplyTarget + Send>, FeedError> {
        let target: Box<dyn ApplyTarget + Send> = if is_vhd {
            Box::new(VhdTarget::open(
                &args.target,
                args.size.or(Some(footer.current_size)),
            )?)
        } else {
            let raw = RawTarget::open(&args.target, args.size)?;
            Box::new(if args.no_sync {
                raw.without_sync()
            } else {
                raw
            })
        };
        if target.virtual_size() < footer.current_size {
            return Err(ApplyError::TooSmall {
                path: args.target.clone(),
                stream: footer.current_size,
                target: target.virtual_size(),
            }
            .into());
        }
        Ok(target)
    };
    feed(input, open_target).map_err(|e| match e {
        FeedError::Stream(_)
        | FeedError::Read { .. }
        | FeedError::Apply(ApplyError::TooSmall { .. }) => {
            CliError::Input(format!("{}: {e}", args.input.display()))
        }
        FeedError::Apply(_) | FeedError::WriterLost => CliError::Failed(e.to_string()),
    })?;
    Ok(ExitCode::SUCCESS)
}
