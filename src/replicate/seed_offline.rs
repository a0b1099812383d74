//! Offline seeding, Xen Orchestra's documented manual procedure as two commands:
//! [`export`] snapshots a job's VM and writes each disk's full VHD stream (what the source
//! host's `/export_raw_vdi?format=vhd` serves) as a [`seed_file`](super::seed_file) plus a
//! [`Manifest`]; [`import`] recreates the replica on the job's target SR from those files
//! and writes the same metadata as [`seed`](super::seed::seed).
//!
//! Import is atomic in the runner's way: the replica carries the importing markers from its
//! first moment, every file is checked structurally (frame headers, lengths, end record)
//! before anything is created, frames are verified again as they stream into the import,
//! and any failure destroys what was created.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::{Request, StatusCode};
use sha2::{Digest, Sha256};

use super::clock::Clock;
use super::inventory::load_snapshot;
use super::keys;
use super::manifest::{FORMAT, MANIFEST, Manifest, ManifestDisk, record_subset};
use super::op_error::{OpError, on_host};
use super::plan::{Identity, SnapshotDisk};
use super::replica::{create_replica_disk, create_replica_vm, roll_back};
use super::seed::{SeedFacts, SeededReplica, link, source_seed_keys, write_source};
use super::seed_file::{
    DEFAULT_FRAME, END_LEN, FILE_HEADER_LEN, FRAME_HEADER_LEN, Record, SeedDecoder, SeedEncoder,
    SeedEvent, SeedFileError, parse_file_header, parse_record,
};
use crate::fsio::atomic::{self, AtomicFile};
use crate::xapi::client::XapiClient;
use crate::xapi::ops::VM_CONSTRUCTOR_FIELDS;
use crate::xapi::records::Record as _;
use crate::xapi::records::{SrRecord, VmRecord};
use crate::xapi::rpc::Value;
use crate::xapi::transfer::body::ChannelBody;
use crate::xapi::transfer::{Progress, Validator, encode};

/// Read size for seed files.
const READ_CHUNK: usize = 1 << 20;
/// Decoded frames queued ahead of the import body (each at most 16 MiB, usually 4 MiB).
const QUEUE_DEPTH: usize = 4;
const TASK_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an offline seed failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Bad arguments or a seed that does not fit the job (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// A seed file is corrupt or truncated (exit 2): which file, and where in it.
    #[error("seed file {file}: {error}")]
    SeedFile { file: PathBuf, error: SeedFileError },
    /// A host failed a call (exit 1).
    #[error(transparent)]
    Host(OpError),
    /// The local disk or a transfer failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl OfflineError {
    pub fn is_input(&self) -> bool {
        !matches!(self, OfflineError::Failed(_) | OfflineError::Host(_))
    }
}

impl From<OpError> for OfflineError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Invalid(m) => OfflineError::Invalid(m),
            host => OfflineError::Host(host),
        }
    }
}

/// What export and import need from the job.
#[derive(Debug, Clone)]
pub struct SeedJob {
    pub name: String,
    pub id: Identity,
    /// The time of the snapshot and of the commit.
    pub clock: Arc<dyn Clock>,
}

/// Per-disk progress: (userdevice, progress).
pub type SeedProgress<'a> = &'a mut (dyn FnMut(&str, &Progress) + Send);

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
        .snapshot_vm(&vm_ref, &name)
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
        let written = export_disk(source, disk, &dir.join(&file), level, progress).await?;
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
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|e| OfflineError::Failed(e.to_string()))?;
    write_atomically(&dir.join(MANIFEST), &text)?;
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

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OfflineError> {
    atomic::write(path, bytes).map_err(|e| OfflineError::Failed(e.to_string()))
}

struct Written {
    file_size: u64,
    file_sha256: String,
    stream_length: u64,
    stream_sha256: String,
    frames: u64,
}

/// Appends frames to a seed file, hashing what it writes. (The stream's own digest is
/// taken by the reader, which balances the two threads.)
struct SeedWriter {
    encoder: SeedEncoder,
    file: File,
    pending: BytesMut,
    file_hash: Sha256,
    path: PathBuf,
}

impl SeedWriter {
    fn create(file: File, path: &Path, level: i32) -> Result<SeedWriter, OfflineError> {
        let fail = |e: std::io::Error| OfflineError::Failed(format!("{}: {e}", path.display()));
        let mut writer = SeedWriter {
            encoder: SeedEncoder::new(level, DEFAULT_FRAME).map_err(fail)?,
            file,
            pending: BytesMut::with_capacity(DEFAULT_FRAME as usize),
            file_hash: Sha256::new(),
            path: path.to_owned(),
        };
        let header = writer.encoder.header();
        writer.emit(&header)?;
        Ok(writer)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), OfflineError> {
        self.file_hash.update(bytes);
        self.file
            .write_all(bytes)
            .map_err(|e| OfflineError::Failed(format!("{}: {e}", self.path.display())))
    }

    fn push(&mut self, mut data: &[u8]) -> Result<(), OfflineError> {
        let max = self.encoder.max_frame() as usize;
        while !data.is_empty() {
            let take = (max - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == max {
                self.flush_frame()?;
            }
        }
        Ok(())
    }

    fn flush_frame(&mut self) -> Result<(), OfflineError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let frame = self
            .encoder
            .frame(&self.pending)
            .map_err(|e| OfflineError::Failed(format!("{}: zstd: {e}", self.path.display())))?;
        self.pending.clear();
        self.emit(&frame)
    }

    fn finish(mut self) -> Result<Written, OfflineError> {
        self.flush_frame()?;
        let (end, totals) = self.encoder.end();
        self.emit(&end)?;
        self.file
            .sync_all()
            .map_err(|e| OfflineError::Failed(format!("{}: {e}", self.path.display())))?;
        Ok(Written {
            file_size: totals.compressed,
            file_sha256: hex::encode(self.file_hash.finalize()),
            stream_length: totals.uncompressed,
            stream_sha256: String::new(),
            frames: totals.frames,
        })
    }
}

/// A [`SeedWriter`] on its own thread, so compression overlaps the download: the export
/// reader hands over chunks through a bounded queue (backpressure), the thread compresses
/// and writes frames.
struct BackgroundWriter {
    queue: Option<tokio::sync::mpsc::Sender<Bytes>>,
    thread: std::thread::JoinHandle<Result<Written, OfflineError>>,
}

impl BackgroundWriter {
    fn start(file: File, path: &Path, level: i32) -> Result<BackgroundWriter, OfflineError> {
        let mut writer = SeedWriter::create(file, path, level)?;
        let (queue, mut chunks) = tokio::sync::mpsc::channel::<Bytes>(QUEUE_DEPTH * 16);
        let thread = std::thread::spawn(move || {
            while let Some(chunk) = chunks.blocking_recv() {
                writer.push(&chunk)?;
            }
            writer.finish()
        });
        Ok(BackgroundWriter {
            queue: Some(queue),
            thread,
        })
    }

    async fn push(&mut self, chunk: Bytes) -> Result<(), OfflineError> {
        let delivered = match &self.queue {
            Some(queue) => queue.send(chunk).await.is_ok(),
            None => false,
        };
        if delivered {
            Ok(())
        } else {
            // The thread stopped on an error: it says which.
            self.queue = None;
            Err(OfflineError::Failed("the seed file writer stopped".into()))
        }
    }

    fn finish(mut self) -> Result<Written, OfflineError> {
        self.queue = None;
        self.thread
            .join()
            .unwrap_or_else(|_| Err(OfflineError::Failed("the seed file writer panicked".into())))
    }
}

/// `GET /export_raw_vdi?format=vhd` of the snapshot VDI into a seed file, the stream
/// validated as it arrives (checksums, BAT, block count, final footer) and the export task's
/// verdict awaited before the file is renamed into place.
async fn export_disk(
    source: &XapiClient,
    disk: &SnapshotDisk,
    path: &Path,
    level: i32,
    progress: SeedProgress<'_>,
) -> Result<Written, OfflineError> {
    let context = format!("export of disk {} (VDI {})", disk.userdevice, disk.vdi_uuid);
    let task = source
        .create_task("vhdsync seed-export", &disk.vdi_uuid)
        .await
        .map_err(|e| OfflineError::Failed(format!("{context}: {e}")))?;
    let outcome = async {
        let endpoint = source.endpoint();
        let query = format!(
            "vdi={}&format=vhd&session_id={}&task_id={}",
            encode(&disk.vdi_ref),
            encode(source.session_id().expose()),
            encode(&task),
        );
        let request = Request::get(format!("{}/export_raw_vdi?{query}", endpoint.url().path))
            .header(HOST, endpoint.url().authority())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = endpoint.send(request).await.map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        let mut body = response.into_body();
        // Dropped on any error below, which deletes the temp file.
        let mut seed = AtomicFile::create(path).map_err(|e| e.to_string())?;
        let file = seed.file().try_clone().map_err(|e| e.to_string())?;
        let mut writer =
            BackgroundWriter::start(file, seed.temp_path(), level).map_err(|e| e.to_string())?;
        let mut validator = Validator::new();
        let mut stream_hash = Sha256::new();
        let started = Instant::now();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the export at byte {bytes}: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let extra = validator
                .push(&data)
                .map_err(|e| format!("the export at byte {bytes}: {e}"))?;
            if extra > 0 {
                return Err(format!("{extra} bytes after the stream's final footer"));
            }
            bytes += data.len() as u64;
            stream_hash.update(&data);
            if let Err(e) = writer.push(data).await {
                return Err(writer.finish().err().unwrap_or(e).to_string());
            }
            progress(
                &disk.userdevice,
                &Progress {
                    bytes,
                    total: validator.decoder.total_len(),
                    blocks: validator.decoder.blocks_seen(),
                    blocks_total: validator.decoder.blocks_expected(),
                    elapsed: started.elapsed(),
                },
            );
        }
        validator
            .finish()
            .map_err(|e| format!("the export at byte {bytes}: {e}"))?;
        source
            .task_outcome(&task, TASK_TIMEOUT)
            .await
            .map_err(|e| format!("the export task: {e}"))?;
        let mut written = writer.finish().map_err(|e| e.to_string())?;
        written.stream_sha256 = hex::encode(stream_hash.finalize());
        seed.commit().map_err(|e| e.to_string())?;
        Ok(written)
    }
    .await;
    let _ = source.destroy_task(&task).await;
    outcome.map_err(|e| OfflineError::Failed(format!("{context}: {e}")))
}

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
        import_disk(target, disk, &dir.join(&disk.file), vdi, progress).await?;
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
    let pairs: Vec<super::seed::DiskPair> = manifest
        .disks
        .iter()
        .zip(&vdis)
        .filter_map(|(disk, vdi)| {
            let source = snapshot_disks
                .iter()
                .find(|d| d.userdevice == disk.userdevice)?
                .clone();
            Some(super::seed::DiskPair {
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

/// `PUT /import_raw_vdi?format=vhd` of a seed file's stream, with the manifest's exact
/// Content-Length. A reader decodes and verifies frame after frame into a bounded queue; a
/// bad frame aborts the body mid-way (the import fails and leaves the VDI as it was) and
/// the error names the file and the frame. The last bytes are held back until the end
/// record and the stream's digest check out.
async fn import_disk(
    target: &XapiClient,
    disk: &ManifestDisk,
    path: &Path,
    vdi: &str,
    progress: SeedProgress<'_>,
) -> Result<(), OfflineError> {
    let context = format!("import of disk {} into VDI {vdi}", disk.userdevice);
    let task = target
        .create_task("vhdsync seed-import", vdi)
        .await
        .map_err(|e| OfflineError::Failed(format!("{context}: {e}")))?;
    let endpoint = target.endpoint().clone();
    let (queue, body) = ChannelBody::new(disk.stream_length, QUEUE_DEPTH);
    let request = Request::put(format!(
        "{}/import_raw_vdi?vdi={}&format=vhd&session_id={}&task_id={}",
        endpoint.url().path,
        encode(vdi),
        encode(target.session_id().expose()),
        encode(&task)
    ))
    .header(HOST, endpoint.url().authority())
    .header(CONTENT_LENGTH, disk.stream_length)
    .body(body)
    .map_err(|e| OfflineError::Failed(format!("{context}: {e}")))?;
    let response = tokio::spawn(async move { endpoint.send(request).await });

    let feed = async {
        let seed_error = |error: SeedFileError| OfflineError::SeedFile {
            file: path.to_owned(),
            error,
        };
        let io = |e: std::io::Error| OfflineError::Failed(format!("{}: {e}", path.display()));
        let mut file = File::open(path).map_err(io)?;
        let mut decoder = SeedDecoder::new();
        let mut buf = BytesMut::new();
        let mut hash = Sha256::new();
        let mut held: Option<Bytes> = None;
        let mut sent = 0u64;
        let started = Instant::now();
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut ended = false;
        while !ended {
            let n = file.read(&mut chunk).map_err(io)?;
            buf.extend_from_slice(&chunk[..n]);
            loop {
                let event = if n == 0 {
                    decoder.decode_eof(&mut buf)
                } else {
                    decoder.decode(&mut buf)
                }
                .map_err(seed_error)?;
                match event {
                    Some(SeedEvent::Frame { data, .. }) => {
                        hash.update(&data);
                        if let Some(previous) = held.replace(data) {
                            sent += previous.len() as u64;
                            if queue.send(Ok(previous)).await.is_err() {
                                return Ok(sent);
                            }
                            progress(
                                &disk.userdevice,
                                &Progress {
                                    bytes: sent,
                                    total: Some(disk.stream_length),
                                    blocks: 0,
                                    blocks_total: None,
                                    elapsed: started.elapsed(),
                                },
                            );
                        }
                    }
                    Some(SeedEvent::End(_)) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
        }
        let digest = hex::encode(hash.finalize());
        if digest != disk.stream_sha256 {
            return Err(OfflineError::Invalid(format!(
                "seed file {}: the stream's SHA-256 is {digest}, the manifest says {}",
                path.display(),
                disk.stream_sha256
            )));
        }
        if let Some(last) = held.take() {
            sent += last.len() as u64;
            let _ = queue.send(Ok(last)).await;
        }
        Ok(sent)
    };
    let fed = feed.await;
    if let Err(e) = &fed {
        let _ = queue
            .send(Err(std::io::Error::other(format!("aborted: {e}"))))
            .await;
    }
    drop(queue);
    let answer = response.await;
    let outcome = match fed {
        Err(e) => Err(e),
        Ok(_) => match answer {
            Ok(Ok(response)) if response.status() == StatusCode::OK => {
                let _ = response.into_body().collect().await;
                target
                    .task_outcome(&task, TASK_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|e| OfflineError::Failed(format!("{context}: {e}")))
            }
            Ok(Ok(response)) => Err(OfflineError::Failed(format!(
                "{context}: HTTP status {}",
                response.status()
            ))),
            Ok(Err(e)) => Err(OfflineError::Failed(format!("{context}: {e}"))),
            Err(e) => Err(OfflineError::Failed(format!("{context}: {e}"))),
        },
    };
    if outcome.is_err() {
        let _ = target.cancel_task(&task).await;
        let _ = target.wait_task(&task, Duration::from_secs(10)).await;
    } else {
        let _ = target.destroy_task(&task).await;
    }
    outcome
}
