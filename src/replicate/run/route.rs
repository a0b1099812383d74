//! Each disk's transport (`xo-replication.md` §2.8): the export path, or NBD (a delta's
//! changes from CBT, a full's allocated blocks from its export's head), chosen from the
//! job's `transport`, the change logs of the base and the new snapshot, and what the host
//! offers (table in [`Cycle::route_disks`]); CBT switched on before the snapshot (`cbt`), and the previous base's data
//! destroyed after the commit (`purge_snapshot_data`).
//!
//! Purging: xapi destroys a snapshot's data only once no VBD uses it, so the previous base's
//! snapshot VM loses its disk VBDs, then its VDIs their data (type `cbt_metadata`; their
//! change logs stay, still usable as the `from` of a change list). The snapshot VM stays,
//! without disks, until retention removes it: it is older than the new base, so it is never
//! chosen as a base again, and without disks it could not be the base of an export or the
//! source of anything. Its metadata VDIs, tagged with its uuid before the purge, go in the
//! run whose retention removes the VM ([`Cycle::sweep_purged`]).

use std::collections::BTreeSet;

use super::{Cycle, CycleCause, CycleError, DiskLabel, DiskReport, EventKind, SourceDisks};
use crate::replicate::keys;
use crate::replicate::plan::{CyclePlan, DiskPlan, SnapshotDisk, SourceSnapshot};
use crate::replicate::transport::Transport;
use crate::xapi::client::ClientError;
use crate::xapi::ops::{Class, MapName};
use crate::xapi::records::{StringMap, VdiRecord};
use crate::xapi::transfer::{NbdOutcome, NbdPath, NbdUnusable, VdiOn, probe_nbd, transfer_nbd};

/// The VDI type `VDI.data_destroy` leaves.
pub(crate) const CBT_METADATA: &str = "cbt_metadata";

/// How one disk's data moves.
#[derive(Debug)]
pub enum Route {
    /// `GET /export_raw_vdi` into the import.
    Stream,
    /// Over NBD: the changed extents of a delta, or a full's extents inside the blocks its
    /// export would send; with what routing learned, so the transfer asks nothing again.
    Nbd(NbdPath),
}

impl Cycle<'_> {
    /// `cbt = true`: `VDI.enable_cbt` on the VM's disks being replicated that lack a change
    /// log, before the snapshot, so that the snapshot has one too.
    pub(super) async fn enable_cbt(&self, disks: &SourceDisks) -> Result<(), CycleError> {
        if !self.settings.transport.cbt {
            return Ok(());
        }
        let source = self.source;
        for vdi in &disks.own {
            if disks.ignored.contains(vdi) || self.on_source(cbt_enabled(source, vdi).await)? {
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

    /// Each disk's route, by userdevice, into `self.routes`, and why a disk that could go
    /// over NBD does not (or reads its whole disk), into the plan's notes.
    ///
    /// | transport | delta | full |
    /// |---|---|---|
    /// | `stream` | export path | export path |
    /// | `auto` | NBD if both snapshots have change logs and the host offers NBD, else the export path (noted) | NBD if the host offers it (silently the export path if not); the export path, noted, if the export head cannot be read |
    /// | `nbd` | as `auto` | NBD, or the cycle fails; the whole disk, noted, if the export head cannot be read |
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
            let (route, note) = match transport {
                Transport::Stream => (Route::Stream, None),
                _ => self.nbd_route(disk, base.as_deref(), transport).await?,
            };
            if let Some(note) = &note {
                plan.notes.push(format!("disk {device}: {note}"));
            }
            self.routes.insert(device.clone(), route);
        }
        Ok(())
    }

    /// `auto` or `nbd`: NBD when a delta's two snapshots have change logs between them and
    /// the host offers NBD, or for a full when the host offers NBD; else the export path
    /// and why (see [`Cycle::route_disks`]).
    async fn nbd_route(
        &self,
        disk: &SnapshotDisk,
        base: Option<&str>,
        transport: Transport,
    ) -> Result<(Route, Option<String>), CycleError> {
        let source = self.source;
        if let Some(base) = base {
            let logged = self.on_source(cbt_enabled(source, base).await)?
                && self.on_source(cbt_enabled(source, &disk.vdi_ref).await)?;
            if !logged {
                return Ok((
                    Route::Stream,
                    Some("CBT is off on the base or the new snapshot; the export path instead of NBD".into()),
                ));
            }
        }
        let on = VdiOn {
            host: source,
            vdi: &disk.vdi_ref,
        };
        let must = transport == Transport::Nbd;
        Ok(
            match probe_nbd(on, base, &self.settings.transfer, self.cancel).await {
                Ok(path) => (Route::Nbd(path), None),
                Err(NbdUnusable::NoNbd(why)) if must => return Err(self.no_nbd(disk, &why)),
                // A full on a host without NBD takes the export path, as it always could.
                Err(NbdUnusable::NoNbd(_)) if base.is_none() => (Route::Stream, None),
                Err(NbdUnusable::NoHead(why, whole)) if must => (
                    Route::Nbd(whole),
                    Some(format!(
                        "the export head could not be read ({why}); the whole disk over NBD"
                    )),
                ),
                Err(unusable) => (
                    Route::Stream,
                    Some(format!("{unusable}; the export path instead of NBD")),
                ),
            },
        )
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
        path: &NbdPath,
        vdi_ref: &str,
        label: DiskLabel<'_>,
    ) -> Result<Result<DiskReport, String>, CycleError> {
        let concurrency = self.settings.transport.nbd_concurrency as usize;
        let outcome = transfer_nbd(
            VdiOn {
                host: self.source,
                vdi: &disk.vdi_ref,
            },
            path,
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
        .map_err(|e| self.transfer_failed(disk, e))?;
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
            NbdOutcome::NoNbd(why) => Ok(Err(why)),
        }
    }

    /// `purge_snapshot_data`: once the new replica is committed, the previous base's disks
    /// lose their VBDs and their data (see the module documentation). A failure is a note:
    /// the replica is committed.
    pub(super) async fn purge_base(&self, base: Option<&SourceSnapshot>, notes: &mut Vec<String>) {
        if !self.settings.transport.purge_snapshot_data {
            return;
        }
        let source = self.source;
        let Some(base) = base else {
            return;
        };
        for disk in &base.disks {
            let purged = async {
                let mut held = disk.other_config.clone();
                let owner = [(keys::PURGED_FROM, base.uuid.as_str())];
                source
                    .set_entries_in(
                        Class::Vdi,
                        &disk.vdi_ref,
                        MapName::OtherConfig,
                        &mut held,
                        &owner,
                    )
                    .await?;
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
    }

    /// `purge_snapshot_data`, after the source's snapshot retention: the metadata VDIs of
    /// snapshots no longer there are destroyed, those retention just removed included.
    /// `kept`: the VM's snapshots as retention left them (read after the purge). A failure
    /// is a note, and the next run sweeps again.
    pub(super) async fn sweep_purged<'s>(
        &self,
        kept: impl IntoIterator<Item = &'s SourceSnapshot>,
        notes: &mut Vec<String>,
    ) {
        if !self.settings.transport.purge_snapshot_data {
            return;
        }
        let mut owners = Snapshots::default();
        for snapshot in kept {
            owners
                .datetimes
                .extend(snapshot.other_config.get(keys::DATETIME).cloned());
            owners.uuids.insert(snapshot.uuid.clone());
        }
        match self.sweep_metadata(&owners).await {
            Ok(swept) => notes.extend(
                swept
                    .into_iter()
                    .map(|uuid| format!("CBT metadata of a removed snapshot {uuid}")),
            ),
            Err(e) => notes.push(format!("could not sweep the CBT metadata VDIs: {e}")),
        }
    }

    /// Destroy the purged disks of this job and VM (`cbt_metadata` VDIs, or any with
    /// `vhdsync:purged_from`) that no VBD uses and whose snapshot VM is gone: the one their
    /// `vhdsync:purged_from` names, or for a VDI purged without it, the one with their
    /// `xo:backup:datetime`.
    async fn sweep_metadata(&self, kept: &Snapshots) -> Result<Vec<String>, ClientError> {
        let source = self.source;
        let mut swept = Vec::new();
        for (reference, vdi) in source.get_all_records::<VdiRecord>().await? {
            let config = &vdi.other_config;
            let ours = config.get(keys::JOB) == Some(&self.id.job_id)
                && config.get(keys::VM) == Some(&self.id.vm_uuid);
            // A purge stopped between the VBD and the data leaves a tagged VDI with its data.
            let purged = vdi.kind == CBT_METADATA || config.contains_key(keys::PURGED_FROM);
            if purged && ours && vdi.vbds.is_empty() && !kept.own(config) {
                source.destroy_vdi(&reference).await?;
                swept.push(vdi.uuid);
            }
        }
        Ok(swept)
    }
}

/// The source VM's snapshots, as the owners of purged disks' change logs.
#[derive(Default)]
struct Snapshots {
    uuids: BTreeSet<String>,
    datetimes: BTreeSet<String>,
}

impl Snapshots {
    /// A purged disk with `config` belongs to one of these snapshots.
    fn own(&self, config: &StringMap) -> bool {
        match config.get(keys::PURGED_FROM) {
            Some(uuid) => self.uuids.contains(uuid),
            None => config
                .get(keys::DATETIME)
                .is_some_and(|d| self.datetimes.contains(d)),
        }
    }
}

async fn cbt_enabled(
    host: &crate::xapi::client::XapiClient,
    vdi: &str,
) -> Result<bool, ClientError> {
    let value = host.call("VDI.get_cbt_enabled", vec![vdi.into()]).await?;
    Ok(value.as_bool().unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entries: &[(&str, &str)]) -> StringMap {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_purged_disk_belongs_to_the_snapshot_it_names_not_to_one_of_the_same_second() {
        let kept = Snapshots {
            uuids: ["snap-b".to_owned()].into(),
            datetimes: ["20261207T13:10:04Z".to_owned()].into(),
        };
        let same_second = |owner: &str| {
            config(&[
                (keys::DATETIME, "20261207T13:10:04Z"),
                (keys::PURGED_FROM, owner),
            ])
        };
        assert!(kept.own(&same_second("snap-b")));
        // Its snapshot is gone, though a kept one was taken in the same second.
        assert!(!kept.own(&same_second("snap-a")));
        // Purged before the tag existed: the datetime is all there is.
        assert!(kept.own(&config(&[(keys::DATETIME, "20261207T13:10:04Z")])));
        assert!(!kept.own(&config(&[(keys::DATETIME, "20261207T13:10:02Z")])));
        assert!(!kept.own(&config(&[])));
    }
}
