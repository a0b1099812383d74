//! seed-export: snapshot a job's VM and read each disk's export into a seed file.

use std::path::Path;
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::writer::{BackgroundWriter, Written};
use super::{OfflineError, SeedJob, SeedProgress};
use crate::fsio::atomic::{self, AtomicFile};
use crate::replicate::inventory::load_snapshot;
use crate::replicate::keys;
use crate::replicate::manifest::{FORMAT, MANIFEST, Manifest, ManifestDisk, record_subset};
use crate::replicate::op_error::on_host;
use crate::replicate::plan::SnapshotDisk;
use crate::replicate::seed::{source_seed_keys, write_source};
use crate::xapi::client::XapiClient;
use crate::xapi::ops::VM_CONSTRUCTOR_FIELDS;
use crate::xapi::records::VmRecord;
use crate::xapi::rpc::Value;
use crate::xapi::transfer::{
    ChunkStream, ExportStream, Progress, Throttle, Throttled, TransferOptions, VdiOn, open_export,
};

/// Snapshot `id.vm_uuid`, tag the snapshot as the job's exported base (see below), and
/// write every disk as a seed file into `dir` (created, must be empty), then the manifest.
///
/// The snapshot is marked exported now, not at import: a job snapshot left unexported is
/// what an interrupted run leaves, and the next `replicate` would delete it.
pub async fn export(
    source: &XapiClient,
    job: &SeedJob,
    dir: &Path,
    level: i32,
    progress: SeedProgress<'_>,
) -> Result<Manifest, OfflineError> {
    prepare_dir(dir)?;
    let (vm_ref, vm) = source
        .record_by_uuid::<VmRecord>(&job.id.vm_uuid)
        .await
        .map_err(|e| OfflineError::Invalid(format!("VM {}: {e}", job.id.vm_uuid)))?;
    if vm.is_a_snapshot || vm.is_a_template {
        return Err(OfflineError::Invalid(format!(
            "{} is a snapshot or template, not a VM",
            job.id.vm_uuid
        )));
    }
    let raw = source
        .vm_record_value(&vm_ref)
        .await
        .map_err(on_host("reading the VM record"))?;
    let name = keys::snapshot_name(&job.name, &vm.name_label);
    let snapshot_ref = source
        .snapshot_vm(&vm_ref, &name, &[])
        .await
        .map_err(on_host(format!("snapshot of VM {}", vm.uuid)))?;
    let outcome = export_snapshot(
        source,
        job,
        (&vm_ref, &vm),
        &raw,
        &snapshot_ref,
        dir,
        level,
        progress,
    )
    .await;
    if outcome.is_err() {
        // Not a base without its seed files: remove it, as the runner does.
        let _ = source.destroy_vm_and_disks(&snapshot_ref).await;
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn export_snapshot(
    source: &XapiClient,
    job: &SeedJob,
    (vm_ref, vm): (&str, &VmRecord),
    raw: &Value,
    snapshot_ref: &str,
    dir: &Path,
    level: i32,
    progress: SeedProgress<'_>,
) -> Result<Manifest, OfflineError> {
    let snapshot = load_snapshot(source, snapshot_ref)
        .await
        .map_err(on_host("reading the snapshot's disks"))?;
    let datetime = keys::datetime(job.clock.unix());
    write_source(
        source,
        &source_seed_keys(&job.id, &datetime, snapshot_ref, &snapshot.disks),
    )
    .await?;
    let live = load_snapshot(source, vm_ref)
        .await
        .map_err(on_host("reading the VM's disks"))?;
    let mut disks = Vec::new();
    for disk in &snapshot.disks {
        let file = format!("disk-{}.seed", disk.userdevice);
        let written = export_disk(
            source,
            disk,
            &dir.join(&file),
            level,
            job.throttle.clone(),
            progress,
        )
        .await?;
        let name_label = source
            .vdi_name_label(&disk.vdi_ref)
            .await
            .unwrap_or_default();
        disks.push(ManifestDisk {
            userdevice: disk.userdevice.clone(),
            virtual_size: disk.virtual_size,
            name_label,
            snapshot_vdi: disk.vdi_uuid.clone(),
            vm_vdi: live
                .disks
                .iter()
                .find(|d| d.userdevice == disk.userdevice)
                .map(|d| d.vdi_uuid.clone())
                .unwrap_or_default(),
            file,
            file_size: written.file_size,
            file_sha256: written.file_sha256,
            stream_length: written.stream_length,
            stream_sha256: written.stream_sha256,
            frames: written.frames,
        });
    }
    let mut fields: Vec<&str> = VM_CONSTRUCTOR_FIELDS.to_vec();
    fields.extend(["name_label", "tags", "other_config"]);
    let manifest = Manifest {
        format: FORMAT.into(),
        version: 1,
        job_name: job.name.clone(),
        job_id: job.id.job_id.clone(),
        schedule_id: job.id.schedule_id.clone(),
        vm_uuid: vm.uuid.clone(),
        vm_name: vm.name_label.clone(),
        snapshot_uuid: snapshot.uuid.clone(),
        snapshot_datetime: datetime,
        vm_record: record_subset(raw, &fields),
        disks,
    };
    // A struct of strings and numbers always serialises.
    let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    atomic::write(&dir.join(MANIFEST), &text)?;
    Ok(manifest)
}

fn prepare_dir(dir: &Path) -> Result<(), OfflineError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| OfflineError::Invalid(format!("{}: {e}", dir.display())))?;
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| OfflineError::Invalid(format!("{}: {e}", dir.display())))?;
    if entries.next().is_some() {
        return Err(OfflineError::Invalid(format!(
            "{}: not empty; seed-export writes into a new or empty directory",
            dir.display()
        )));
    }
    Ok(())
}

/// `GET /export_raw_vdi?format=vhd` of the snapshot VDI into a seed file: the export half's
/// stream, validated as it arrives (checksums, BAT, block count, final footer), its last
/// bytes released only once the export task succeeded, and the file renamed into place only
/// then.
async fn export_disk(
    source: &XapiClient,
    disk: &SnapshotDisk,
    path: &Path,
    level: i32,
    throttle: Option<Throttle>,
    progress: SeedProgress<'_>,
) -> Result<Written, OfflineError> {
    let context = format!("export of disk {} (VDI {})", disk.userdevice, disk.vdi_uuid);
    let side = VdiOn {
        host: source,
        vdi: &disk.vdi_ref,
    };
    let options = TransferOptions::default();
    let export = open_export(
        side,
        None,
        "vhdsync seed-export",
        &options,
        &CancellationToken::new(),
    )
    .await
    .map_err(|source| OfflineError::Transfer {
        context: context.clone(),
        source: Box::new(source),
    })?;
    let mut stream = Throttled::new(export, throttle);
    // Dropped on any error, which deletes the temp file.
    let outcome = match AtomicFile::create(path) {
        Ok(seed) => {
            write_seed(
                &mut stream,
                seed,
                level,
                &context,
                &disk.userdevice,
                progress,
            )
            .await
        }
        Err(e) => Err(e.into()),
    };
    stream.into_inner().close().await;
    outcome
}

/// The whole stream into `seed`, committed once complete, with the stream's digest.
async fn write_seed(
    stream: &mut Throttled<ExportStream<'_>>,
    mut seed: AtomicFile,
    level: i32,
    context: &str,
    userdevice: &str,
    progress: SeedProgress<'_>,
) -> Result<Written, OfflineError> {
    let total = stream.get_ref().total_len();
    let file = seed
        .file()
        .try_clone()
        .map_err(OfflineError::io("open", seed.temp_path()))?;
    let mut writer = BackgroundWriter::start(file, seed.temp_path(), level)?;
    let mut stream_hash = Sha256::new();
    let started = Instant::now();
    let mut bytes = 0u64;
    loop {
        let chunk = match stream.next_chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(source) => {
                let _ = writer.finish().await;
                return Err(OfflineError::Transfer {
                    context: context.to_owned(),
                    source: Box::new(source),
                });
            }
        };
        bytes += chunk.len() as u64;
        stream_hash.update(&chunk);
        if let Err(e) = writer.push(chunk).await {
            return Err(writer.finish().await.err().unwrap_or(e));
        }
        let (blocks, blocks_total) = stream.blocks();
        progress(
            userdevice,
            &Progress {
                bytes,
                total: Some(total),
                blocks,
                blocks_total,
                elapsed: started.elapsed(),
            },
        );
    }
    let mut written = writer.finish().await?;
    written.stream_sha256 = hex::encode(stream_hash.finalize());
    seed.commit()?;
    Ok(written)
}
