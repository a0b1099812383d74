//! A new replica before its commit: the VM created from the source record and its disks,
//! all marked as importing from their first moment (`xo-replication.md` §7.1, §9), and the
//! rollback that removes them when the run fails.

use std::collections::BTreeMap;

use super::keys;
use super::plan::Identity;
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::ops::{NewVdi, constructor_fields, map_value};
use crate::xapi::records::{NULL_REF, StringMap, VmRecord};
use crate::xapi::rpc::Value;

/// The XO keys of a replica and its disks, with `datetime`.
pub fn replica_keys(id: &Identity, datetime: &str) -> StringMap {
    [
        (keys::DATETIME, datetime),
        (keys::JOB, &id.job_id),
        (keys::SCHEDULE, &id.schedule_id),
        (keys::VM, &id.vm_uuid),
        (keys::SR, &id.sr_uuid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A replica's tags: the source VM's plus XO's replica tag.
pub fn replica_tags(source_tags: &[String]) -> Vec<String> {
    let mut tags = source_tags.to_vec();
    if !tags.iter().any(|t| t == keys::REPLICA_TAG) {
        tags.push(keys::REPLICA_TAG.into());
    }
    tags
}

/// `VM.create` on `target` from a VM record (`raw`, the source's `get_record` answer),
/// marked as importing from its first moment: `[Importing…]` name, `Importing…` start
/// block, XO's epoch datetime and our importing key (`now`), `auto_poweron` off, the
/// replica tag.
pub async fn create_replica_vm(
    target: &XapiClient,
    id: &Identity,
    raw: &Value,
    vm: &VmRecord,
    now: i64,
) -> Result<String, ClientError> {
    let mut args: BTreeMap<String, Value> = constructor_fields(raw);
    let mut other_config: StringMap = vm
        .other_config
        .iter()
        .filter(|(k, _)| !keys::is_replication_state(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    other_config.extend(replica_keys(id, keys::IMPORTING_DATETIME));
    other_config.insert(keys::IMPORTING.into(), keys::datetime(now));
    other_config.insert(keys::AUTO_POWERON.into(), "false".into());
    let blocked: StringMap = keys::BLOCKED_OPERATIONS
        .iter()
        .map(|op| ((*op).to_owned(), keys::IMPORTING_BLOCKED.to_owned()))
        .collect();
    args.insert(
        "name_label".into(),
        Value::from(format!("{}{}", keys::IMPORTING_VM_PREFIX, vm.name_label).as_str()),
    );
    args.insert("is_a_template".into(), Value::Bool(false));
    args.insert("affinity".into(), Value::from(NULL_REF));
    args.insert("ha_always_run".into(), Value::Bool(false));
    args.insert("ha_restart_priority".into(), Value::from(""));
    args.insert("other_config".into(), map_value(&other_config));
    args.insert("blocked_operations".into(), map_value(&blocked));
    args.insert(
        "tags".into(),
        Value::Array(
            replica_tags(&vm.tags)
                .iter()
                .map(|t| Value::from(t.as_str()))
                .collect(),
        ),
    );
    for reference in ["suspend_SR", "appliance", "snapshot_schedule"] {
        if args.contains_key(reference) {
            args.insert(reference.into(), Value::from(NULL_REF));
        }
    }
    target.create_vm(args).await
}

/// A replica disk's name and keys while it is imported: `[Importing] <source VDI uuid>`,
/// the job's keys with the importing datetime, `xo:copy_of` = `contentKey` = the source
/// snapshot VDI's uuid.
pub fn importing_disk(id: &Identity, source_vdi_uuid: &str) -> (String, StringMap) {
    let mut other_config = replica_keys(id, keys::IMPORTING_DATETIME);
    other_config.insert(keys::COPY_OF.into(), source_vdi_uuid.to_owned());
    other_config.insert(keys::CONTENT_KEY.into(), source_vdi_uuid.to_owned());
    (
        format!("{}{}", keys::IMPORTING_VDI_PREFIX, source_vdi_uuid),
        other_config,
    )
}

/// A new empty replica disk of `size` bytes on `sr_ref`, marked as importing.
pub async fn create_replica_disk(
    target: &XapiClient,
    id: &Identity,
    sr_ref: &str,
    source_vdi_uuid: &str,
    size: u64,
) -> Result<String, ClientError> {
    let (name, other_config) = importing_disk(id, source_vdi_uuid);
    target
        .create_vdi(&NewVdi {
            name_label: &name,
            sr: sr_ref,
            virtual_size: size,
            other_config: &other_config,
        })
        .await
}

/// Best effort after a failed run: destroy the live replica being written with its disks
/// (new, cloned, or its own half-written ones; never a restore point's), and the disks the
/// run created but had not attached. What fails here is left to the next run's clean-up.
pub async fn roll_back(target: &XapiClient, replica_ref: &str, created_vdis: &[String]) {
    let attached = target.disk_vdis(replica_ref).await.unwrap_or_default();
    let _ = target.destroy_vm(replica_ref).await;
    for vdi in attached.iter().chain(created_vdis) {
        let _ = target.destroy_vdi(vdi).await;
    }
}
