//! `diff`, `export` and `apply`: changed blocks between snapshots and VHD streams.

use std::io::{Read, Write};
use std::process::ExitCode;

use bytes::BytesMut;
use serde_json::json;
use tokio_util::codec::Decoder;

use super::CliError;
use super::args::{ApplyArgs, DiffArgs, ExportArgs};
use super::output::{print_json, stdout_file};
use crate::image::{Chain, changed};
use crate::stream::apply::{ApplyTarget, RawTarget, VhdTarget};
use crate::stream::source::{ChainSource, export_params};
use crate::stream::{StreamDecoder, StreamEncoder, StreamEvent};

fn open_pair(
    leaf: &std::path::Path,
    base: Option<&std::path::Path>,
) -> Result<(Chain, Option<Chain>), CliError> {
    let leaf = Chain::open(leaf)?;
    let base = base.map(Chain::open).transpose()?;
    Ok((leaf, base))
}

pub fn diff(args: &DiffArgs) -> Result<ExitCode, CliError> {
    let (leaf, base) = open_pair(&args.leaf, args.base.as_deref())?;
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
            "{} changed blocks, {bytes} bytes of {}",
            blocks.len(),
            leaf.virtual_size()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn export(args: &ExportArgs) -> Result<ExitCode, CliError> {
    let (leaf, base) = open_pair(&args.leaf, args.base.as_deref())?;
    let params = export_params(&leaf, base.as_ref());
    let encoder = StreamEncoder::new(params).map_err(|e| CliError::Input(e.to_string()))?;
    let mut out = match args.output.as_deref() {
        None => stdout_file()?,
        Some(p) if p.as_os_str() == "-" => stdout_file()?,
        Some(p) => std::fs::File::create(p)
            .map_err(|e| CliError::Failed(format!("{}: create: {e}", p.display())))?,
    };
    let source = ChainSource::new(leaf);
    let frames = encoder
        .into_frames(|index| Ok::<_, crate::stream::StreamError>(source.stream_block(index)));
    for frame in frames {
        let frame = frame.map_err(|e| CliError::Failed(e.to_string()))?;
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
    let mut input: Box<dyn Read> = if args.input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.input)
                .map_err(|e| CliError::Input(format!("{}: open: {e}", args.input.display())))?,
        )
    };
    let mut decoder = StreamDecoder::new();
    let mut buf = BytesMut::with_capacity(4 << 20);
    let mut target: Option<Box<dyn ApplyTarget>> = None;
    let mut block_size = 0u64;
    let mut eof = false;
    loop {
        let event = if eof {
            decoder.decode_eof(&mut buf)
        } else {
            decoder.decode(&mut buf)
        }
        .map_err(|e| CliError::Input(format!("{}: {e}", args.input.display())))?;
        match event {
            Some(StreamEvent::Footer(f)) => {
                let size = args.size.or(Some(f.current_size));
                let t: Box<dyn ApplyTarget> = if is_vhd {
                    Box::new(
                        VhdTarget::open(&args.target, size)
                            .map_err(|e| CliError::Failed(e.to_string()))?,
                    )
                } else {
                    Box::new(
                        RawTarget::open(&args.target, args.size)
                            .map_err(|e| CliError::Failed(e.to_string()))?,
                    )
                };
                if t.virtual_size() < f.current_size {
                    return Err(CliError::Input(format!(
                        "{}: the stream's disk is {} bytes but the target holds {}",
                        args.target.display(),
                        f.current_size,
                        t.virtual_size()
                    )));
                }
                target = Some(t);
            }
            Some(StreamEvent::Header(h)) => block_size = u64::from(h.block_size),
            Some(StreamEvent::Block {
                index,
                bitmap,
                data,
            }) => {
                if let Some(t) = target.as_mut() {
                    t.write_block(u64::from(index) * block_size, &bitmap, &data)
                        .map_err(|e| CliError::Failed(e.to_string()))?;
                }
            }
            Some(StreamEvent::End(_)) => break,
            Some(_) => {}
            None if eof => {
                return Err(CliError::Input(format!(
                    "{}: stream ended early",
                    args.input.display()
                )));
            }
            None => {
                let mut chunk = vec![0u8; 1 << 20];
                let n = input
                    .read(&mut chunk)
                    .map_err(|e| CliError::Failed(format!("read: {e}")))?;
                if n == 0 {
                    eof = true;
                } else {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    if let Some(t) = target.as_mut() {
        t.finish().map_err(|e| CliError::Failed(e.to_string()))?;
    }
    Ok(ExitCode::SUCCESS)
}
