//! `info`, `check` and `cat`: looking at VHD files.

use std::fs::File;
use std::process::ExitCode;

use serde_json::json;

use super::CliError;
use super::args::{CatArgs, CheckArgs, InfoArgs};
use super::output::{print_json, stdout_file};
use super::units::human_bytes;
use crate::image::{
    Chain, Damage, ImageError, ImageErrorKind, RawSink, VhdLayer, check, write_raw,
};
use crate::vhd::SECTOR_SIZE;

/// How `--force` opens files.
pub(super) fn damage_policy(force: bool) -> Damage {
    if force {
        Damage::Tolerate
    } else {
        Damage::Refuse
    }
}

/// A refusal to read a damaged file, with a hint on what to do about it.
pub(super) fn open_error(e: ImageError) -> CliError {
    if matches!(e.kind, ImageErrorKind::Damaged { .. }) {
        eprintln!(
            "vhdsync: hint: `vhdsync check {}` lists every finding; --force reads the file anyway",
            e.path.display()
        );
    }
    e.into()
}

/// Under `--force`, say loudly what was read past, layer by layer.
pub(super) fn warn_damage<'a>(layers: impl IntoIterator<Item = &'a VhdLayer>) {
    for layer in layers {
        for finding in layer.damage() {
            eprintln!(
                "warning: {}: reading past damage: {finding}",
                layer.path().display()
            );
        }
    }
}

/// Open a chain as `--force` says, warning about what it reads past.
pub(super) fn open_chain(path: &std::path::Path, force: bool) -> Result<Chain, CliError> {
    let chain = Chain::open_with(path, damage_policy(force)).map_err(open_error)?;
    warn_damage(chain.layers());
    Ok(chain)
}

pub fn info(args: &InfoArgs) -> Result<ExitCode, CliError> {
    let layer = VhdLayer::open_with(&args.file, damage_policy(args.force)).map_err(open_error)?;
    warn_damage([&layer]);
    let doc = info_document(&layer);
    if args.json {
        print_json(&doc)?;
    } else {
        print_info_text(&doc);
    }
    Ok(ExitCode::SUCCESS)
}

fn info_document(layer: &VhdLayer) -> serde_json::Value {
    let f = layer.footer();
    let allocated = layer.bat().allocated(layer.block_count()).count() as u64;
    let mut doc = json!({
        "file": layer.path().display().to_string(),
        "disk_type": f.disk_type,
        "virtual_size": f.current_size,
        "original_size": f.original_size,
        "geometry": {
            "cylinders": f.geometry.cylinders,
            "heads": f.geometry.heads,
            "sectors_per_track": f.geometry.sectors_per_track,
            "chs_size": f.geometry.size_bytes(),
        },
        "uuid": f.unique_id.to_string(),
        "timestamp": f.timestamp.to_string(),
        "creator": {
            "application": f.creator_app_text(),
            "version": format!("{}.{}", f.creator_version >> 16, f.creator_version & 0xFFFF),
            "host_os": f.creator_host_os_text(),
        },
        "features": f.features,
        "saved_state": f.saved_state,
        "hidden": f.hidden,
        "file_size": layer.file_len(),
        "notes": layer.notes(),
    });
    if let Some(h) = layer.header() {
        let locators: Vec<_> = h
            .parent_locators
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_unused())
            .map(|(i, l)| {
                let path = layer
                    .parent_locator_paths()
                    .into_iter()
                    .find(|(j, _)| *j as usize == i)
                    .map(|(_, p)| p.map_err(|e| e.to_string()));
                json!({
                    "index": i,
                    "platform_code": l.code.to_string(),
                    "data_space": l.data_space,
                    "data_length": l.data_length,
                    "data_offset": l.data_offset,
                    "path": path.as_ref().and_then(|p| p.as_ref().ok()),
                    "error": path.as_ref().and_then(|p| p.as_ref().err()),
                })
            })
            .collect();
        doc["block_size"] = json!(h.block_size);
        doc["table_offset"] = json!(h.table_offset);
        doc["max_table_entries"] = json!(h.max_table_entries);
        doc["blocks"] = json!(layer.block_count());
        doc["allocated_blocks"] = json!(allocated);
        doc["allocated_bytes"] = json!(allocated * (h.bitmap_size() + u64::from(h.block_size)));
        doc["batmap"] = json!(layer.has_batmap());
        if layer.disk_type() == crate::vhd::DiskType::Differencing {
            doc["parent"] = json!({
                "uuid": h.parent_unique_id.to_string(),
                "timestamp": h.parent_timestamp.to_string(),
                "name": h.parent_unicode_name,
                "locators": locators,
            });
        }
    }
    doc
}

fn print_info_text(doc: &serde_json::Value) {
    let s = |k: &str| doc[k].to_string().trim_matches('"').to_string();
    // A format inspector: the exact count next to the readable one.
    let size = |k: &str| {
        let bytes = doc[k].as_u64().unwrap_or_default();
        format!("{} ({bytes} bytes)", human_bytes(bytes))
    };
    println!("file:              {}", s("file"));
    println!("disk type:         {}", s("disk_type"));
    println!("virtual size:      {}", size("virtual_size"));
    let g = &doc["geometry"];
    println!(
        "geometry (C/H/S):  {}/{}/{} ({} bytes)",
        g["cylinders"], g["heads"], g["sectors_per_track"], g["chs_size"]
    );
    println!("uuid:              {}", s("uuid"));
    println!("timestamp:         {}", s("timestamp"));
    let c = &doc["creator"];
    println!(
        "creator:           {} {} ({})",
        c["application"].as_str().unwrap_or_default(),
        c["version"].as_str().unwrap_or_default(),
        c["host_os"].as_str().unwrap_or_default()
    );
    println!("file size:         {}", size("file_size"));
    if doc.get("block_size").is_some() {
        println!("block size:        {}", size("block_size"));
        println!(
            "BAT:               {} entries at byte {}",
            s("max_table_entries"),
            s("table_offset")
        );
        println!(
            "allocated:         {} of {} blocks, {}",
            s("allocated_blocks"),
            s("blocks"),
            size("allocated_bytes")
        );
    }
    if let Some(p) = doc.get("parent") {
        println!(
            "parent uuid:       {}",
            p["uuid"].as_str().unwrap_or_default()
        );
        println!(
            "parent name:       {}",
            p["name"].as_str().unwrap_or_default()
        );
        println!(
            "parent timestamp:  {}",
            p["timestamp"].as_str().unwrap_or_default()
        );
        for l in p["locators"].as_array().into_iter().flatten() {
            let shown = l["path"]
                .as_str()
                .map(str::to_string)
                .or_else(|| l["error"].as_str().map(|e| format!("unreadable: {e}")))
                .unwrap_or_default();
            println!(
                "parent locator {}:  {} at byte {} ({} bytes): {shown}",
                l["index"],
                l["platform_code"].as_str().unwrap_or_default(),
                l["data_offset"],
                l["data_length"]
            );
        }
    }
    for note in doc["notes"].as_array().into_iter().flatten() {
        println!("note:              {}", note.as_str().unwrap_or_default());
    }
}

pub fn check(args: &CheckArgs) -> Result<ExitCode, CliError> {
    let file = File::open(&args.file)
        .map_err(|e| CliError::Input(format!("{}: open: {e}", args.file.display())))?;
    // SAFETY: read-only map of a file we only read; see image::mapping for the same reasoning.
    let map = match file.metadata().map(|m| m.len()) {
        Ok(0) => None,
        _ => Some(
            unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| CliError::Input(format!("{}: mmap: {e}", args.file.display())))?,
        ),
    };
    let bytes: &[u8] = map.as_deref().unwrap_or_default();
    let report = check::check_bytes(bytes).map_err(|e| {
        CliError::Input(format!("{}: not a readable VHD: {e}", args.file.display()))
    })?;
    if args.json {
        print_json(&json!({
            "file": args.file.display().to_string(),
            "clean": report.is_clean(),
            "disk_type": report.disk_type,
            "problems": report.problems,
            "notes": report.notes,
        }))?;
    } else {
        for p in &report.problems {
            println!(
                "problem at byte {}: {}: {}",
                p.offset, p.structure, p.message
            );
        }
        for n in &report.notes {
            println!("note at byte {}: {}: {}", n.offset, n.structure, n.message);
        }
        if report.is_clean() {
            println!("{}: clean", args.file.display());
        } else {
            println!(
                "{}: {} problem(s)",
                args.file.display(),
                report.problems.len()
            );
        }
    }
    Ok(ExitCode::from(if report.is_clean() { 0 } else { 1 }))
}

pub fn cat(args: &CatArgs) -> Result<ExitCode, CliError> {
    let chain = open_chain(&args.file, args.force)?;
    let result = match &args.output {
        Some(path) => {
            let mut out = File::create(path)
                .map_err(|e| CliError::Failed(format!("{}: create: {e}", path.display())))?;
            RawSink::for_file(&mut out)
                .and_then(|sink| write_raw(&chain, sink))
                .map_err(|e| CliError::Failed(format!("{}: write: {e}", path.display())))
        }
        None => {
            let mut out = stdout_file()?;
            write_raw(&chain, RawSink::Stream(&mut out))
                .map_err(|e| CliError::Failed(format!("stdout: write: {e}")))
        }
    };
    let written = result?;
    tracing::info!(
        bytes = written,
        sectors = written / SECTOR_SIZE,
        "wrote {} of guest data",
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}
