//! `VM` calls, and the VM's disks through its `VBD`s.

use std::collections::BTreeMap;

use super::record;
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::records::{VbdRecord, VdiRecord, VmRecord};
use crate::xapi::rpc::Value;

/// One disk of a VM: a `Disk` VBD and its VDI.
#[derive(Debug, Clone, PartialEq)]
pub struct VmDisk {
    pub userdevice: String,
    pub vdi_ref: String,
    pub vdi: VdiRecord,
}

/// The fields of a VM record that `VM.create` takes (XAPI's constructor), copied from a
/// source VM so that a copy boots the same way.
pub const VM_CONSTRUCTOR_FIELDS: &[&str] = &[
    "name_description",
    "user_version",
    "memory_target",
    "memory_static_max",
    "memory_dynamic_max",
    "memory_dynamic_min",
    "memory_static_min",
    "VCPUs_params",
    "VCPUs_max",
    "VCPUs_at_startup",
    "actions_after_shutdown",
    "actions_after_reboot",
    "actions_after_crash",
    "PV_bootloader",
    "PV_kernel",
    "PV_ramdisk",
    "PV_args",
    "PV_bootloader_args",
    "PV_legacy_args",
    "HVM_boot_policy",
    "HVM_boot_params",
    "HVM_shadow_multiplier",
    "platform",
    "PCI_bus",
    "recommendations",
    "xenstore_data",
    "shutdown_delay",
    "start_delay",
    "order",
    "suspend_SR",
    "appliance",
    "hardware_platform_version",
    "has_vendor_device",
    "reference_label",
    "domain_type",
    "NVRAM",
];

/// The constructor fields `raw` (a `VM.get_record` answer) holds.
pub fn constructor_fields(raw: &Value) -> BTreeMap<String, Value> {
    let mut fields = BTreeMap::new();
    if let Some(record) = raw.as_struct() {
        for field in VM_CONSTRUCTOR_FIELDS {
            if let Some(value) = record.get(*field) {
                fields.insert((*field).to_owned(), value.clone());
            }
        }
    }
    fields
}

impl XapiClient {
    /// `VM.get_record` as the host sent it, every field kept: the source of a copy's
    /// constructor fields.
    pub async fn vm_record_value(&self, vm: &str) -> Result<Value, ClientError> {
        self.call("VM.get_record", vec![Value::from(vm)]).await
    }

    /// `VM.create` with `fields`: the new VM's reference.
    pub async fn create_vm(&self, fields: BTreeMap<String, Value>) -> Result<String, ClientError> {
        self.call_for_string("VM.create", vec![Value::Struct(fields)])
            .await
    }

    /// `VM.snapshot` named `name`, leaving out the disks `ignore_vdis` names: the
    /// snapshot's reference. The third argument goes only when there is one to ignore, so
    /// hosts that predate it are asked the two-argument form.
    pub async fn snapshot_vm(
        &self,
        vm: &str,
        name: &str,
        ignore_vdis: &[String],
    ) -> Result<String, ClientError> {
        let mut params = vec![Value::from(vm), Value::from(name)];
        if !ignore_vdis.is_empty() {
            params.push(Value::Array(
                ignore_vdis
                    .iter()
                    .map(|v| Value::from(v.as_str()))
                    .collect(),
            ));
        }
        self.call_for_string("VM.snapshot", params).await
    }

    /// `VM.clone` (a fast clone of the disks) named `name`: the clone's reference.
    pub async fn clone_vm(&self, vm: &str, name: &str) -> Result<String, ClientError> {
        self.call_for_string("VM.clone", vec![Value::from(vm), Value::from(name)])
            .await
    }

    /// `VM.destroy`: the VM only; its disks stay, as in XAPI.
    pub async fn destroy_vm(&self, vm: &str) -> Result<(), ClientError> {
        self.call_unit("VM.destroy", vec![Value::from(vm)]).await
    }

    /// `VM.start`, neither paused nor forced.
    pub async fn start_vm(&self, vm: &str) -> Result<(), ClientError> {
        let params = vec![Value::from(vm), Value::Bool(false), Value::Bool(false)];
        self.call_unit("VM.start", params).await
    }

    pub async fn hard_shutdown_vm(&self, vm: &str) -> Result<(), ClientError> {
        self.call_unit("VM.hard_shutdown", vec![Value::from(vm)])
            .await
    }

    pub async fn vm_uuid(&self, vm: &str) -> Result<String, ClientError> {
        self.call_for_string("VM.get_uuid", vec![Value::from(vm)])
            .await
    }

    pub async fn set_vm_name_label(&self, vm: &str, name: &str) -> Result<(), ClientError> {
        self.call_unit(
            "VM.set_name_label",
            vec![Value::from(vm), Value::from(name)],
        )
        .await
    }

    /// Replace `vm`'s whole `other_config` in one call.
    pub async fn set_vm_other_config(
        &self,
        vm: &str,
        other_config: &crate::xapi::records::StringMap,
    ) -> Result<(), ClientError> {
        let params = vec![Value::from(vm), super::map_value(other_config)];
        self.call_unit("VM.set_other_config", params).await
    }

    /// `VM.set_is_a_template`: a clone of a snapshot is a template until this turns it into
    /// a VM.
    pub async fn set_vm_is_a_template(&self, vm: &str, template: bool) -> Result<(), ClientError> {
        let params = vec![Value::from(vm), Value::Bool(template)];
        self.call_unit("VM.set_is_a_template", params).await
    }

    /// `ha_restart_priority` = `""`: HA never restarts the VM.
    pub async fn clear_ha_restart_priority(&self, vm: &str) -> Result<(), ClientError> {
        let params = vec![Value::from(vm), Value::from("")];
        self.call_unit("VM.set_ha_restart_priority", params).await
    }

    pub async fn add_vm_tag(&self, vm: &str, tag: &str) -> Result<(), ClientError> {
        self.call_unit("VM.add_tags", vec![Value::from(vm), Value::from(tag)])
            .await
    }

    pub async fn remove_vm_tag(&self, vm: &str, tag: &str) -> Result<(), ClientError> {
        self.call_unit("VM.remove_tags", vec![Value::from(vm), Value::from(tag)])
            .await
    }

    /// A read-write disk VBD plugging `vdi` into `vm` at `userdevice` (0 boots).
    pub async fn attach_disk(
        &self,
        vm: &str,
        vdi: &str,
        userdevice: &str,
    ) -> Result<(), ClientError> {
        let vbd = record([
            ("VM", Value::from(vm)),
            ("VDI", Value::from(vdi)),
            ("userdevice", Value::from(userdevice)),
            ("bootable", Value::Bool(userdevice == "0")),
            ("mode", Value::from("RW")),
            ("type", Value::from("Disk")),
            ("empty", Value::Bool(false)),
            ("unpluggable", Value::Bool(false)),
            ("other_config", Value::Struct(BTreeMap::new())),
            ("qos_algorithm_type", Value::from("")),
            ("qos_algorithm_params", Value::Struct(BTreeMap::new())),
        ]);
        self.call_unit("VBD.create", vec![vbd]).await
    }

    /// An empty CD drive at `userdevice`.
    pub async fn attach_empty_cd(
        &self,
        vm: &str,
        userdevice: &str,
        bootable: bool,
    ) -> Result<(), ClientError> {
        let vbd = record([
            ("VM", Value::from(vm)),
            ("VDI", Value::from(crate::xapi::records::NULL_REF)),
            ("userdevice", Value::from(userdevice)),
            ("bootable", Value::Bool(bootable)),
            ("mode", Value::from("RO")),
            ("type", Value::from("CD")),
            ("empty", Value::Bool(true)),
            ("unpluggable", Value::Bool(true)),
            ("other_config", Value::Struct(BTreeMap::new())),
            ("qos_algorithm_type", Value::from("")),
            ("qos_algorithm_params", Value::Struct(BTreeMap::new())),
        ]);
        self.call_unit("VBD.create", vec![vbd]).await
    }

    /// The VDIs of `vm`'s disk VBDs, in VBD order.
    pub async fn disk_vdis(&self, vm: &str) -> Result<Vec<String>, ClientError> {
        let record: VmRecord = self.get_record(vm).await?;
        let mut vdis = Vec::new();
        for vbd_ref in &record.vbds {
            let vbd: VbdRecord = self.get_record(vbd_ref).await?;
            if vbd.is_disk() {
                vdis.push(vbd.vdi);
            }
        }
        Ok(vdis)
    }

    /// The disks of a VM record (its `Disk` VBDs and their VDIs), by userdevice (numeric
    /// order, then text).
    pub async fn vm_disks(&self, vm: &VmRecord) -> Result<Vec<VmDisk>, ClientError> {
        let mut disks = Vec::new();
        for vbd_ref in &vm.vbds {
            let vbd: VbdRecord = self.get_record(vbd_ref).await?;
            if !vbd.is_disk() {
                continue;
            }
            let vdi: VdiRecord = self.get_record(&vbd.vdi).await?;
            disks.push(VmDisk {
                userdevice: vbd.userdevice,
                vdi_ref: vbd.vdi,
                vdi,
            });
        }
        disks.sort_by_key(|d| {
            (
                d.userdevice.parse::<u32>().unwrap_or(u32::MAX),
                d.userdevice.clone(),
            )
        });
        Ok(disks)
    }

    /// `VM.destroy` keeps the disks, as in XAPI: destroy the VM, then its disk VDIs (each
    /// once a transfer still ending on it lets go, see
    /// [`destroy_vdi_once_free`](XapiClient::destroy_vdi_once_free)).
    pub async fn destroy_vm_and_disks(&self, vm: &str) -> Result<(), ClientError> {
        let vdis = self.disk_vdis(vm).await?;
        self.destroy_vm(vm).await?;
        for vdi in vdis {
            self.destroy_vdi_once_free(&vdi).await?;
        }
        Ok(())
    }
}
