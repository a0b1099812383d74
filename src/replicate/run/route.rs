//! Each disk's transport (`xo-replication.md` §2.8): the export path, or CBT + NBD, chosen
//! from the job's `transport`, the change logs of the base and the new snapshot, and what
//! the host offers; CBT switched on before the snapshot (`cbt`), and the previous base's data
//! destroyed after the commit (`purge_snapshot_data`).
//!
//! Purging: xapi destroys a snapshot's data only once no VBD uses it, so the previous base's
//! snapshot VM loses its disk VBDs, then its VDIs their data (type `cbt_metadata`; their
//! change logs stay, still usable as the `from` of a change list). The snapshot VM stays,
//! without disks, until retention removes it: it is older than the new base, so it is never
//! chosen as a base again, and without disks it could not be the base of an export or the
//! source of anything. Its metadata VDIs go once the VM is gone ([`Cycle::purge_base`]).

use std::collections::BTreeSet;

use super::{Cycle, CycleCause, CycleError, DiskLabel, DiskReport, EventKind, Phase};
use crate::replicate::keys;
use crate::replicate::plan::{CyclePlan, DiskPlan, SnapshotDisk, SourceSnapshot};
use crate::replicate::transport::Transport;
use crate::xapi::client::ClientError;
use crate::xapi::records::{VdiRecord, VmRecord};
use crate::xapi::transfer::{NbdOutcome, VdiOn, transfer_nbd};

/// The VDI type `VDI.data_destroy` leaves.
pub(crate) const CBT_METADATA: &str = "cbt_metadata";

/// How one disk's data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /export_raw_vdi` into the import.
    Stream,
    /// The changed extents (or the whole disk, for a full) read over NBD.
    Nbd,
}

impl Cycle<'_> {
    /// `cbt = true`: `VDI.enable_cbt` on the VM's disks being replicated that lack a change
    /// log, before the snapshot, so that the snapshot has one too.
    pub(super) async fn enable_cbt(
        &self,
        vm_ref: &str,
        ignored: &[String],
    ) -> Result<(), CycleError> {
        if !self.settings.transport.cbt {
            return Ok(());
        }
        let source = self.source;
        for vdi in self.on_source(source.disk_vdis(vm_ref).await)? {
            if ignored.contains(&vdi) || self.on_source(cbt_enabled(source, &vdi).await)? {
                continue;
            }
            tracing::info!(vm = %self.id.vm_uuid, vdi, "enabling CBT");
            self.on_source(
                source
                    .call("VDI.enable_cbt", vec![vdi.as_str().into()])
                    .await,
            )?;
        }
        Ok(())
    }

    /// Each disk's route, by userdevice, into `self.routes`, and why a delta that could not
    /// go over NBD takes the export path, into the plan's notes.
    pub(super) async fn route_disks(
        &mut self,
        disks: &[SnapshotDisk],
        plan: &mut CyclePlan,
    ) -> Result<(), CycleError> {
        let transport = self.settings.transport.transport;
        for disk in disks {
            let device = &disk.userdevice;
            let base = match plan.disks.get(device) {
                Some(DiskPlan::Delta { base_vdi, .. }) => Some(base_vdi.clone()),
                _ => None,
            };
            let (route, why) = match (&base, transport) {
                (_, Transport::Stream) => (Route::Stream, None),
                (None, Transport::Auto) => (Route::Stream, None),
                (None, Transport::Nbd) => {
                    self.require_nbd(disk).await?;
                    (Route::Nbd, None)
                }
                (Some(base), _) => self.delta_route(disk, base, transport).await?,
            };
            if let Some(why) = &why {
                plan.notes.push(format!(
                    "disk {device}: {why}; the export path instead of NBD"
                ));
            }
            self.routes.insert(device.clone(), route);
        }
        Ok(())
    }

    /// A delta's route: NBD when both snapshots have change logs between them and the host
    /// offers NBD, else the export path and why.
    async fn delta_route(
        &self,
        disk: &SnapshotDisk,
        base: &str,
        transport: Transport,
    ) -> Result<(Route, Option<String>), CycleError> {
        let source = self.source;
        let logged = self.on_source(cbt_enabled(source, base).await)?
            && self.on_source(cbt_enabled(source, &disk.vdi_ref).await)?;
        if !logged {
            return Ok((
                Route::Stream,
                Some("CBT is off on the base or the new snapshot".into()),
            ));
        }
        match self.offers_nbd(disk).await? {
            Some(why) if transport == Transport::Nbd => Err(self.no_nbd(disk, &why)),
            Some(why) => Ok((Route::Stream, Some(why))),
            None => {
                // The change list itself is asked for again by the transfer; asking now
                // tells a reset change log in time to send a full instead.
                let params = vec![base.into(), disk.vdi_ref.as_str().into()];
                match source.call("VDI.list_changed_blocks", params).await {
                    Ok(_) => Ok((Route::Nbd, None)),
                    Err(e) => Ok((
                        Route::Stream,
                        Some(format!("no usable change log since the base ({e})")),
                    )),
                }
            }
        }
    }

    /// `transport = "nbd"` with a full: the host must offer NBD.
    async fn require_nbd(&self, disk: &SnapshotDisk) -> Result<(), CycleError> {
        match self.offers_nbd(disk).await? {
            Some(why) => Err(self.no_nbd(disk, &why)),
            None => Ok(()),
        }
    }

    /// Why the host offers no NBD for `disk`, or `None` when it does.
    async fn offers_nbd(&self, disk: &SnapshotDisk) -> Result<Option<String>, CycleError> {
        let params = vec![disk.vdi_ref.as_str().into()];
        Ok(match self.source.call("VDI.get_nbd_info", params).await {
            Ok(info) if info.as_array().is_some_and(|a| !a.is_empty()) => None,
            Ok(_) => Some("the host offers no NBD (no network with an NBD purpose)".into()),
            Err(e) => Some(format!("VDI.get_nbd_info failed ({e})")),
        })
    }

    fn no_nbd(&self, disk: &SnapshotDisk, why: &str) -> CycleError {
        CycleError {
            disk: Some(disk.userdevice.clone()),
            ..self.fail(
                None,
                Some(self.source),
                CycleCause::Invalid(format!("transport \"nbd\": {why}").into()),
            )
        }
    }

    /// `disk` over NBD into `vdi_ref`: its report, or why the export path must take it
    /// instead (a fallback the caller notes).
    pub(super) async fn transfer_over_nbd(
        &self,
        disk: &SnapshotDisk,
        name: &str,
        base: Option<&str>,
        vdi_ref: &str,
        label: DiskLabel<'_>,
    ) -> Result<Result<DiskReport, String>, CycleError> {
        let concurrency = self.settings.transport.nbd_concurrency as usize;
        let outcome = transfer_nbd(
            VdiOn {
                host: self.source,
                vdi: &disk.vdi_ref,
            },
            base,
            VdiOn {
                host: self.target,
                vdi: vdi_ref,
            },
            &self.settings.transfer,
            concurrency,
            &mut |progress| {
                self.emit(EventKind::DiskProgress {
                    disk: label,
                    progress,
                })
            },
            self.cancel.cancelled(),
        )
        .await
        .map_err(|e| CycleError {
            vm: self.id.vm_uuid.clone(),
            phase: Phase::Transfer,
            disk: Some(disk.userdevice.clone()),
            host: Some(e.host.clone()),
            cause: e.into(),
        })?;
        match outcome {
            NbdOutcome::Sent { report, bytes_read } => {
                let replica_vdi = self.on_target(self.target.vdi_uuid(vdi_ref).await)?;
                Ok(Ok(DiskReport {
                    userdevice: disk.userdevice.clone(),
                    name: name.to_owned(),
                    mode: if base.is_some() { "delta" } else { "full" },
                    transport: "nbd",
                    virtual_size: disk.virtual_size,
                    bytes_read,
                    bytes_sent: report.bytes,
                    blocks: report.blocks,
                    source_vdi: disk.vdi_uuid.clone(),
                    replica_vdi,
                }))
            }
            NbdOutcome::NoNbd(why) if self.settings.transport.transport == Transport::Nbd => {
                Err(self.no_nbd(disk, &why))
            }
            NbdOutcome::NoNbd(why) | NbdOutcome::NoChangeLog(why) => Ok(Err(why)),
        }
    }

    /// `purge_snapshot_data`: once the new replica is committed, the previous base's disks
    /// lose their VBDs and their data (see the module documentation), and the metadata VDIs
    /// of snapshots retention removed since are destroyed. A failure is a note: the replica
    /// is committed.
    pub(super) async fn purge_base(&self, base: Option<&SourceSnapshot>, notes: &mut Vec<String>) {
        if !self.settings.transport.purge_snapshot_data {
            return;
        }
        let source = self.source;
        for disk in base.map_or(&[][..], |b| &b.disks[..]) {
            let purged = async {
                let vbds = source
                    .call("VDI.get_VBDs", vec![disk.vdi_ref.as_str().into()])
                    .await?;
                for vbd in vbds.as_array().unwrap_or_default() {
                    source.call("VBD.destroy", vec![vbd.clone()]).await?;
                }
                let params = vec![disk.vdi_ref.as_str().into()];
                source.call("VDI.data_destroy", params).await
            };
            match purged.await {
                Ok(_) => notes.push(format!(
                    "purged the data of base snapshot disk {} (only its CBT metadata remains)",
                    disk.vdi_uuid
                )),
                Err(e) => notes.push(format!(
                    "could not purge the data of base snapshot disk {}: {e}",
                    disk.vdi_uuid
                )),
            }
        }
        match self.sweep_metadata().await {
            Ok(swept) => notes.extend(
                swept
                    .into_iter()
                    .map(|uuid| format!("CBT metadata of a removed snapshot {uuid}")),
            ),
            Err(e) => notes.push(format!("could not sweep the CBT metadata VDIs: {e}")),
        }
    }

    /// Destroy the `cbt_metadata` VDIs of this job and VM whose snapshot VM (the one with
    /// their `xo:backup:datetime`) is gone.
    async fn sweep_metadata(&self) -> Result<Vec<String>, ClientError> {
        let source = self.source;
        let (_, vm) = source.record_by_uuid::<VmRecord>(&self.id.vm_uuid).await?;
        let mut kept = BTreeSet::new();
        for snapshot in &vm.snapshots {
            let record: VmRecord = source.get_record(snapshot).await?;
            kept.extend(record.other_config.get(keys::DATETIME).cloned());
        }
        let mut swept = Vec::new();
        for (reference, vdi) in source.get_all_records::<VdiRecord>().await? {
            let config = &vdi.other_config;
            let ours = config.get(keys::JOB) == Some(&self.id.job_id)
                && config.get(keys::VM) == Some(&self.id.vm_uuid);
            let owned = config.get(keys::DATETIME).is_some_and(|d| kept.contains(d));
            if vdi.kind == CBT_METADATA && ours && !owned {
                source.destroy_vdi(&reference).await?;
                swept.push(vdi.uuid);
            }
        }
        Ok(swept)
    }
}

async fn cbt_enabled(
    host: &crate::xapi::client::XapiClient,
    vdi: &str,
) -> Result<bool, ClientError> {
    let value = host.call("VDI.get_cbt_enabled", vec![vdi.into()]).await?;
    Ok(value.as_bool().unwrap_or(false))
}
