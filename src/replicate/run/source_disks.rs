//! What the source VM brings besides its disks' content: devices mapped onto the target,
//! and the disks Xen Orchestra's name tags leave out.

use serde::Serialize;

use super::{Cycle, CycleCause, CycleError};
use crate::replicate::devices::{Devices, DevicesError, plan_devices};
use crate::xapi::records::VmRecord;

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
    pub(super) async fn plan_devices(&self, vm: &VmRecord) -> Result<Devices, CycleError> {
        let settings = self.settings;
        plan_devices(
            self.source,
            self.target,
            vm,
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

    /// The disks `[NOBAK]` leaves out (with the VDI references `VM.snapshot` must ignore),
    /// and notes on `[NOSNAP]` disks, which Xen Orchestra leaves out of manual snapshots
    /// only: replication copies them.
    pub(super) async fn excluded_disks(
        &self,
        vm: &VmRecord,
    ) -> Result<(Vec<SkippedDisk>, Vec<String>, Vec<String>), CycleError> {
        let (mut skipped, mut ignored, mut notes) = (Vec::new(), Vec::new(), Vec::new());
        for disk in self.on_source(self.source.vm_disks(vm).await)? {
            if is_left_out(&disk.vdi.name_label) {
                ignored.push(disk.vdi_ref.clone());
                skipped.push(SkippedDisk {
                    userdevice: disk.userdevice,
                    vdi: disk.vdi.uuid,
                    name: disk.vdi.name_label,
                    reason: "[NOBAK] in its name",
                });
            } else if disk.vdi.name_label.contains(NOSNAP) {
                notes.push(format!(
                    "disk {}: [NOSNAP] keeps a disk out of manual snapshots only; replicated",
                    disk.userdevice
                ));
            }
        }
        Ok((skipped, ignored, notes))
    }
}
