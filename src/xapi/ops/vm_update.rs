//! Bringing an existing VM's settings in line with a source VM's record, as Xen
//! Orchestra's update mode does before it writes into a live replica (`xo-replication.md`
//! §7.2): the memory limits in one call, the vCPU counts in the order XAPI accepts, then
//! every other read-write field a copy must share to boot the same way.

use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::rpc::Value;

/// Read-write VM fields copied with their `VM.set_<field>` setter. Not the name, the
/// description, `other_config`, `blocked_operations` or tags, which the replica's own
/// marking and commit decide; not references to the source pool's objects.
const COPIED_FIELDS: &[&str] = &[
    "VCPUs_params",
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
    "has_vendor_device",
    "domain_type",
    "NVRAM",
    "hardware_platform_version",
    "shutdown_delay",
    "start_delay",
    "order",
];

fn int_field(record: &Value, field: &str) -> Option<i64> {
    record.as_struct()?.get(field)?.as_i64()
}

impl XapiClient {
    /// Set `vm`'s settings to those of `source` (a `VM.get_record` answer), calling a
    /// setter only for a field whose value differs: fewer round trips, and no call a host
    /// may not know when there is nothing to change. `vm` must be halted, as XAPI requires
    /// for the memory limits and the vCPU maximum.
    pub async fn update_vm_from(&self, vm: &str, source: &Value) -> Result<(), ClientError> {
        let Some(fields) = source.as_struct() else {
            return Ok(());
        };
        let current: Value = self.call("VM.get_record", vec![Value::from(vm)]).await?;
        let now = current.as_struct();
        let differs = |field: &str| now.and_then(|c| c.get(field)) != fields.get(field);
        const MEMORY: [&str; 4] = [
            "memory_static_min",
            "memory_static_max",
            "memory_dynamic_min",
            "memory_dynamic_max",
        ];
        let memory = MEMORY.map(|f| fields.get(f).cloned());
        if MEMORY.iter().any(|f| differs(f))
            && let [Some(a), Some(b), Some(c), Some(d)] = memory
        {
            self.call("VM.set_memory_limits", vec![Value::from(vm), a, b, c, d])
                .await?;
        }
        if let (Some(max), Some(at_startup)) = (
            int_field(source, "VCPUs_max"),
            int_field(source, "VCPUs_at_startup"),
        ) && (differs("VCPUs_max") || differs("VCPUs_at_startup"))
        {
            let current_at_startup = int_field(&current, "VCPUs_at_startup").unwrap_or(1);
            // XAPI keeps VCPUs_at_startup <= VCPUs_max at every step.
            let set_max = ("VM.set_VCPUs_max", max);
            let set_at = ("VM.set_VCPUs_at_startup", at_startup);
            let order = if max >= current_at_startup {
                [set_max, set_at]
            } else {
                [set_at, set_max]
            };
            for (method, n) in order {
                self.call(method, vec![Value::from(vm), Value::Int(n)])
                    .await?;
            }
        }
        for field in COPIED_FIELDS {
            if let Some(value) = fields.get(*field)
                && differs(field)
            {
                let method = format!("VM.set_{field}");
                self.call(&method, vec![Value::from(vm), value.clone()])
                    .await?;
            }
        }
        Ok(())
    }
}
