//! seed-import: check the seed files, recreate the replica from them on the job's target
//! SR, and link it to the source snapshot as a base.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::frames::SeedFrames;
use super::{OfflineError, SeedJob, SeedProgress};
use crate::replicate::clock::Clock;
use crate::replicate::inventory::load_snapshot;
use crate::replicate::keys;
use crate::replicate::manifest::{MANIFEST, Manifest, ManifestDisk};
use crate::replicate::op_error::on_host;
use crate::replicate::plan::{Identity, SnapshotDisk};
use crate::replicate::replica::{create_replica_disk, create_replica_vm, roll_back};
use crate::replicate::seed::{DiskPair, SeedFacts, SeededReplica, link};
use crate::replicate::seed_file::{
    END_LEN, FILE_HEADER_LEN, FRAME_HEADER_LEN, Record, SeedFileError, parse_file_header,
    parse_record,
};
use crate::xapi::client::XapiClient;
use crate::xapi::records::Record as _;
use crate::xapi::records::{SrRecord, VmRecord};
use crate::xapi::transfer::{
    ImportError, Throttle, Throttled, TransferOptions, VdiOn, import_stream,
};

/// Walks a seed file's frame headers without decompressing: its size against the
/// manifest, every header's CRC and bounds, and the end record's totals. A truncated file
/// fails here, with its frame number, before anything is created on the target.
pub fn scan(dir: &Path, disk: &ManifestDisk) -> Result<(), OfflineError> {
    let path = dir.join(&disk.file);
    let seed_error = |error: SeedFileError| OfflineError::SeedFile {
        file: path.clone(),
        error,
    };
    let io =
        |e: std::io::Error| OfflineError::Invalid(format!("seed file {}: {e}", path.display()));
    let mut file = File::open(&path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut header = [0u8; FILE_HEADER_LEN];
    if len < FILE_HEADER_LEN as u64 {
        return Err(seed_error(SeedFileError::Truncated {
            frame: 0,
            offset: len,
            missing: FILE_HEADER_LEN as u64 - len,
        }));
    }
    file.read_exact(&mut header).map_err(io)?;
    let max = parse_file_header(&header).map_err(seed_error)?;
    let mut offset = FILE_HEADER_LEN as u64;
    let mut frame = 0u64;
    let mut uncompressed = 0u64;
    let mut record = [0u8; END_LEN];
    loop {
        let available = (len - offset).min(END_LEN as u64) as usize;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.read_exact(&mut record[..available]).map_err(io)?;
        let parsed = parse_record(&record[..available], frame, offset, max).map_err(seed_error)?;
        match parsed {
            None => {
                return Err(seed_error(SeedFileError::Truncated {
                    frame,
                    offset: len,
                    missing: (FRAME_HEADER_LEN.saturating_sub(available)).max(1) as u64,
                }));
            }
            Some(Record::Frame(h)) => {
                let next = offset + FRAME_HEADER_LEN as u64 + u64::from(h.compressed_len);
                if next > len {
                    return Err(seed_error(SeedFileError::Truncated {
                        frame,
                        offset: len,
                        missing: next - len,
                    }));
                }
                uncompressed += u64::from(h.uncompressed_len);
                frame += 1;
                offset = next;
            }
            Some(Record::End(totals)) => {
                let end = offset + END_LEN as u64;
                if totals.frames != frame
                    || totals.uncompressed != uncompressed
                    || totals.compressed != end
                {
                    return Err(seed_error(SeedFileError::BadEnd {
                        offset,
                        problem: format!(
                            "records {} frames, {} bytes, a file of {}; found {frame}, {uncompressed}, {end}",
                            totals.frames, totals.uncompressed, totals.compressed
                        ),
                    }));
                }
                if end != len {
                    return Err(seed_error(SeedFileError::TrailingData {
                        offset: end,
                        len: len - end,
                    }));
                }
                break;
            }
        }
    }
    if len != disk.file_size || uncompressed != disk.stream_length || frame != disk.frames {
        return Err(OfflineError::Invalid(format!(
            "seed file {}: {len} bytes, {frame} frames, a stream of {uncompressed} bytes; the manifest says {}, {}, {}",
            path.display(),
            disk.file_size,
            disk.frames,
            disk.stream_length
        )));
    }
    Ok(())
}

/// What seed-import made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub replica: String,
    pub replica_name: String,
    pub snapshot: String,
    pub disks: Vec<ImportedDisk>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportedDisk {
    pub userdevice: String,
    pub virtual_size: u64,
    pub file: String,
    pub stream_bytes: u64,
    pub replica_vdi: String,
}

/// Create the replica from `dir` on the job's target SR and link it to the source snapshot.
pub async fn import(
    source: &XapiClient,
    target: &XapiClient,
    job: &SeedJob,
    dir: &Path,
    progress: SeedProgress<'_>,
) -> Result<ImportReport, OfflineError> {
    let manifest = Manifest::load(dir).map_err(|e| OfflineError::Invalid(e.to_string()))?;
    if !manifest.job_id.eq_ignore_ascii_case(&job.id.job_id) {
        return Err(OfflineError::Invalid(format!(
            "{}: the seed belongs to job {} ({:?}), not to this job {} ({:?})",
            dir.join(MANIFEST).display(),
            manifest.job_id,
            manifest.job_name,
            job.id.job_id,
            job.name
        )));
    }
    for disk in &manifest.disks {
        scan(dir, disk)?;
    }
    let id = Identity {
        vm_uuid: manifest.vm_uuid.clone(),
        ..job.id.clone()
    };
    // The base must still be there, with the disks the seed was made from.
    let (snapshot_ref, _) = source
        .record_by_uuid::<VmRecord>(&manifest.snapshot_uuid)
        .await
        .map_err(|e| {
            OfflineError::Invalid(format!(
                "the seed's source snapshot {} is gone from {} ({e}): the seed can no longer be a base; export a new one",
                manifest.snapshot_uuid,
                source.host()
            ))
        })?;
    let snapshot = load_snapshot(source, &snapshot_ref)
        .await
        .map_err(on_host("reading the source snapshot's disks"))?;
    for disk in &manifest.disks {
        if !snapshot
            .disks
            .iter()
            .any(|d| d.userdevice == disk.userdevice && d.vdi_uuid == disk.snapshot_vdi)
        {
            return Err(OfflineError::Invalid(format!(
                "disk {}: the source snapshot {} no longer has VDI {}",
                disk.userdevice, manifest.snapshot_uuid, disk.snapshot_vdi
            )));
        }
    }
    let (sr_ref, _) = target
        .record_by_uuid::<SrRecord>(&id.sr_uuid)
        .await
        .map_err(|e| OfflineError::Invalid(format!("target SR {}: {e}", id.sr_uuid)))?;

    let raw = manifest.vm_record_value();
    let vm = VmRecord {
        name_label: manifest.vm_name.clone(),
        ..VmRecord::from_value(&raw).map_err(|e| {
            OfflineError::Invalid(format!("{}: vm_record: {e}", dir.join(MANIFEST).display()))
        })?
    };
    let now = job.clock.unix();
    let replica_ref = create_replica_vm(target, &id, &raw, &vm, now)
        .await
        .map_err(on_host("creating the replica VM"))?;
    let mut created = Vec::new();
    let outcome = fill(
        source,
        target,
        &id,
        &manifest,
        &snapshot.disks,
        dir,
        &sr_ref,
        &replica_ref,
        &mut created,
        job.clock.as_ref(),
        job.throttle.as_ref(),
        progress,
    )
    .await;
    if outcome.is_err() {
        roll_back(target, &replica_ref, &created).await;
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn fill(
    source: &XapiClient,
    target: &XapiClient,
    id: &Identity,
    manifest: &Manifest,
    snapshot_disks: &[SnapshotDisk],
    dir: &Path,
    sr_ref: &str,
    replica_ref: &str,
    created: &mut Vec<String>,
    clock: &dyn Clock,
    throttle: Option<&Throttle>,
    progress: SeedProgress<'_>,
) -> Result<ImportReport, OfflineError> {
    let mut vdis = Vec::new();
    for disk in &manifest.disks {
        let vdi = create_replica_disk(target, id, sr_ref, &disk.snapshot_vdi, disk.virtual_size)
            .await
            .map_err(on_host(format!("disk {}", disk.userdevice)))?;
        created.push(vdi.clone());
        target
            .attach_disk(replica_ref, &vdi, &disk.userdevice)
            .await
            .map_err(on_host(format!("disk {}", disk.userdevice)))?;
        vdis.push(vdi);
    }
    let mut reports = Vec::new();
    for (disk, vdi) in manifest.disks.iter().zip(&vdis) {
        import_disk(
            target,
            disk,
            &dir.join(&disk.file),
            vdi,
            throttle.cloned(),
            progress,
        )
        .await?;
        target
            .set_vdi_name_label(vdi, &disk.name_label)
            .await
            .map_err(on_host("naming the replica disk"))?;
        let uuid = target
            .vdi_uuid(vdi)
            .await
            .map_err(on_host("reading the replica disk's uuid"))?;
        reports.push(ImportedDisk {
            userdevice: disk.userdevice.clone(),
            virtual_size: disk.virtual_size,
            file: disk.file.clone(),
            stream_bytes: disk.stream_length,
            replica_vdi: uuid,
        });
    }
    // Commit: the same metadata as `seed`, on the replica and on the source snapshot.
    let pairs: Vec<DiskPair> = manifest
        .disks
        .iter()
        .zip(&vdis)
        .filter_map(|(disk, vdi)| {
            let source = snapshot_disks
                .iter()
                .find(|d| d.userdevice == disk.userdevice)?
                .clone();
            Some(DiskPair {
                userdevice: disk.userdevice.clone(),
                target: SnapshotDisk {
                    vdi_ref: vdi.clone(),
                    ..source.clone()
                },
                source,
            })
        })
        .collect();
    let snapshot_ref = source
        .get_by_uuid::<VmRecord>(&manifest.snapshot_uuid)
        .await
        .map_err(on_host("finding the source snapshot"))?;
    let facts = SeedFacts {
        id,
        snapshot_ref: &snapshot_ref,
        snapshot_uuid: &manifest.snapshot_uuid,
        datetime: &manifest.snapshot_datetime,
        source_vm_name: &manifest.vm_name,
    };
    let name = keys::replica_name(
        &manifest.vm_name,
        &manifest.job_name,
        keys::parse_datetime(&manifest.snapshot_datetime).unwrap_or(0),
    );
    let replica: VmRecord = target
        .get_record(replica_ref)
        .await
        .map_err(on_host("reading the replica"))?;
    let seeded = SeededReplica {
        vm_ref: replica_ref,
        tags: &replica.tags,
        name: &name,
    };
    link(source, target, &facts, &pairs, seeded, clock.unix_ms()).await?;
    let uuid = replica.uuid;
    Ok(ImportReport {
        replica: uuid,
        replica_name: name,
        snapshot: manifest.snapshot_uuid.clone(),
        disks: reports,
    })
}

/// `PUT /import_raw_vdi?format=vhd` of a seed file's stream through the import half, with
/// the manifest's exact Content-Length. A bad frame aborts the body mid-way (the import
/// fails and leaves the VDI as it was) and the error names the file and the frame; the last
/// frame is held back until the end record and the stream's digest check out.
async fn import_disk(
    target: &XapiClient,
    disk: &ManifestDisk,
    path: &Path,
    vdi: &str,
    throttle: Option<Throttle>,
    progress: SeedProgress<'_>,
) -> Result<(), OfflineError> {
    let context = format!("import of disk {} into VDI {vdi}", disk.userdevice);
    let frames = SeedFrames::open(path, disk).await?;
    let mut stream = Throttled::new(frames, throttle);
    import_stream(
        VdiOn { host: target, vdi },
        disk.stream_length,
        "vhdsync seed-import",
        &mut stream,
        &TransferOptions::default(),
        &mut |p| progress(&disk.userdevice, p),
        &CancellationToken::new(),
    )
    .await
    .map(|_| ())
    .map_err(|e| match e {
        ImportError::Source(e) => e,
        ImportError::Import(source) => OfflineError::Transfer {
            context,
            source: Box::new(source),
        },
    })
}
