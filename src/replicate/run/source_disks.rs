//! What the source VM brings besides its disks' content: devices mapped onto the target,
//! and the disks Xen Orchestra's name tags leave out.

use serde::Serialize;

use super::{Cycle, CycleCause, CycleError};
use crate::replicate::devices::{Devices, DevicesError, plan_devices};
use crate::xapi::records::{VbdRecord, VdiRecord, VmRecord};

/// A source disk the cycle leaves out.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedDisk {
    pub userdevice: String,
    pub vdi: String,
    pub name: String,
    pub reason: &'static str,
}

/// Xen Orchestra's tag for a disk left out of backups and replication.
const NOBAK: &str = "[NOBAK]";
/// Xen Orchestra's tag for a disk left out of manual snapshots only.
const NOSNAP: &str = "[NOSNAP]";

/// A disk whose name carries `[NOBAK]`: neither snapshotted nor copied.
pub(crate) fn is_left_out(vdi_name: &str) -> bool {
    vdi_name.contains(NOBAK)
}

impl Cycle<'_> {
    /// The source VM's interfaces mapped onto the target's networks, its CD drives and
    /// vTPMs; a `network_map` naming no target network fails here, before the snapshot.
    pub(super) async fn plan_devices(
        &self,
        vm: &VmRecord,
        vbds: &[VbdRecord],
    ) -> Result<Devices, CycleError> {
        let settings = self.settings;
        plan_devices(
            self.source,
            self.target,
            vm,
            vbds,
            &settings.network_map,
            settings.new_mac_addresses,
        )
        .await
        .map_err(|e| match e {
            DevicesError::Source(e) => self.fail(None, Some(self.source), e.into()),
            DevicesError::Target(e) => self.fail(None, Some(self.target), e.into()),
            DevicesError::Mapping(why) => self.fail(None, None, CycleCause::Invalid(why.into())),
        })
    }

    /// The VM's VBDs, read once for its devices and its disks.
    pub(super) async fn vm_vbds(&self, vm: &VmRecord) -> Result<Vec<VbdRecord>, CycleError> {
        let mut vbds = Vec::with_capacity(vm.vbds.len());
        for reference in &vm.vbds {
            vbds.push(self.on_source(self.source.get_record(reference).await)?);
        }
        Ok(vbds)
    }

    /// The VM's disks, from its `vbds`: all of them, those `[NOBAK]` leaves out (with the
    /// VDI references `VM.snapshot` must ignore), and notes on `[NOSNAP]` disks, which Xen
    /// Orchestra leaves out of manual snapshots only: replication copies them.
    pub(super) async fn source_disks(&self, vbds: &[VbdRecord]) -> Result<SourceDisks, CycleError> {
        let mut disks: Vec<&VbdRecord> = vbds.iter().filter(|vbd| vbd.is_disk()).collect();
        // In userdevice order, numeric first, as the VM's disks are listed everywhere.
        disks.sort_by_key(|vbd| {
            (
                vbd.userdevice.parse::<u32>().unwrap_or(u32::MAX),
                vbd.userdevice.clone(),
            )
        });
        let mut found = SourceDisks::default();
        for vbd in disks {
            let vdi: VdiRecord = self.on_source(self.source.get_record(&vbd.vdi).await)?;
            found.own.push(vbd.vdi.clone());
            if is_left_out(&vdi.name_label) {
                found.ignored.push(vbd.vdi.clone());
                found.skipped.push(SkippedDisk {
                    userdevice: vbd.userdevice.clone(),
                    vdi: vdi.uuid,
                    name: vdi.name_label,
                    reason: "[NOBAK] in its name",
                });
            } else if vdi.name_label.contains(NOSNAP) {
                found.notes.push(format!(
                    "disk {}: [NOSNAP] keeps a disk out of manual snapshots only; replicated",
                    vbd.userdevice
                ));
            }
        }
        Ok(found)
    }
}

/// The source VM's disks, read once at the start of the cycle: a snapshot leaves the VM's
/// own disks as they are.
#[derive(Debug, Default)]
pub(super) struct SourceDisks {
    /// Every disk VDI of the VM, those left out included.
    pub own: Vec<String>,
    /// The `[NOBAK]` disks' VDIs, which `VM.snapshot` ignores.
    pub ignored: Vec<String>,
    pub skipped: Vec<SkippedDisk>,
    pub notes: Vec<String>,
}
