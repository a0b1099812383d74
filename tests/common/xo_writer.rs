//! Xen Orchestra's replication writer, 6.3+ (`xo-replication.md` §3-§7), replayed through
//! the XAPI calls it makes, so that mixed sequences of runs can be tested against the lab:
//! the source snapshot and its keys, the target's live replica created or updated in place
//! (with XO's setters and `VM.update_allowed_operations`), the data through
//! `export_raw_vdi` / `import_raw_vdi`, the completion keys, the target snapshot, and the
//! keys cleared from the live replica. Independent of vhdsync's replication code: it uses
//! only the XAPI client and the data plane.

use std::collections::BTreeMap;

use vhdsync::replicate::keys;
use vhdsync::xapi::records::{StringMap, VdiRecord, VmRecord};
use vhdsync::xapi::rpc::Value;
use vhdsync::xapi::transfer::{TransferOptions, VdiOn, transfer_vdi};

use super::lab_pair::Host;

pub struct XoJob<'a> {
    pub job_id: &'a str,
    pub schedule_id: &'a str,
    pub name: &'a str,
    pub sr_uuid: &'a str,
}

/// What one XO run did.
#[derive(Debug)]
pub struct XoRun {
    pub full: bool,
    pub bytes: u64,
    /// The source snapshot VDIs by userdevice (their content is the replica's).
    pub source_vdis: BTreeMap<String, String>,
    pub live_vm: String,
}

fn map(pairs: &[(&str, &str)]) -> Value {
    Value::Struct(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect(),
    )
}

async fn add_keys(host: &Host, class: &str, reference: &str, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        host.call(
            &format!("{class}.remove_from_other_config"),
            vec![Value::from(reference), Value::from(*k)],
        )
        .await;
        host.call(
            &format!("{class}.add_to_other_config"),
            vec![Value::from(reference), Value::from(*k), Value::from(*v)],
        )
        .await;
    }
}

async fn remove_keys(host: &Host, class: &str, reference: &str, names: &[&str]) {
    for k in names {
        host.call(
            &format!("{class}.remove_from_other_config"),
            vec![Value::from(reference), Value::from(*k)],
        )
        .await;
    }
}

/// A VM's disks: userdevice -> (VDI ref, record).
type Disks = BTreeMap<String, (String, VdiRecord)>;

/// The disks of a VM.
async fn disks(host: &Host, vm: &str) -> Disks {
    host.disks(vm)
        .await
        .into_iter()
        .map(|(device, reference, vdi)| (device, (reference, vdi)))
        .collect()
}

/// One XO run of `job` for `vm_uuid` from `source` to `target`.
pub async fn xo_run(source: &Host, target: &Host, job: &XoJob<'_>, vm_uuid: &str) -> XoRun {
    let vm_ref = source.text("VM.get_by_uuid", &[vm_uuid]).await;
    let vm: VmRecord = source.vm(&vm_ref).await;
    let now = keys::datetime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    );
    // §4: the base is the newest exported job snapshot (keys on its VDIs).
    let mut base: Option<(String, Disks)> = None;
    let mut base_time = String::new();
    for snapshot in &vm.snapshots {
        let disks = disks(source, snapshot).await;
        let ours = disks.values().all(|(_, vdi)| {
            let c = &vdi.other_config;
            c.get(keys::JOB).map(String::as_str) == Some(job.job_id)
                && c.get(keys::EXPORTED).map(String::as_str) == Some("true")
        });
        let time = disks
            .values()
            .next()
            .and_then(|(_, v)| v.other_config.get(keys::DATETIME).cloned())
            .unwrap_or_default();
        if ours && !disks.is_empty() && time >= base_time {
            base_time = time;
            base = Some((snapshot.clone(), disks));
        }
    }
    // §3.8: the snapshot, its keys, its name.
    let snapshot = source
        .text("VM.snapshot", &[&vm_ref, "xo-backup-temp-snapshot-name"])
        .await;
    let snapshot_keys = [
        (keys::DATETIME, now.as_str()),
        (keys::JOB, job.job_id),
        (keys::SCHEDULE, job.schedule_id),
        (keys::VM, vm_uuid),
    ];
    add_keys(source, "VM", &snapshot, &snapshot_keys).await;
    let new_disks = disks(source, &snapshot).await;
    for (reference, vdi) in new_disks.values() {
        add_keys(source, "VDI", reference, &snapshot_keys).await;
        add_keys(source, "VDI", reference, &[(keys::CONTENT_KEY, &vdi.uuid)]).await;
    }
    source
        .call(
            "VM.set_name_label",
            vec![
                Value::from(snapshot.as_str()),
                Value::from(format!("[XO Backup {}] {}", job.name, vm.name_label).as_str()),
            ],
        )
        .await;

    // §6: the target's base for each disk, by content key among target snapshot VDIs; the
    // live VDI must be attached to one halted VM; update in place if so.
    let target_vdis = target.client.get_all_records::<VdiRecord>().await.unwrap();
    let mut live_vm: Option<String> = None;
    let mut bases: BTreeMap<String, (String, String)> = BTreeMap::new(); // device -> (source base ref, live vdi ref)
    if let Some((_, base_disks)) = &base {
        for (device, (base_ref, base_vdi)) in base_disks {
            let key = base_vdi
                .other_config
                .get(keys::CONTENT_KEY)
                .cloned()
                .unwrap_or(base_vdi.uuid.clone());
            let found = target_vdis.iter().find(|(_, v)| {
                v.is_a_snapshot && v.other_config.get(keys::CONTENT_KEY) == Some(&key)
            });
            if let Some((_, snap)) = found {
                let live: VdiRecord = target.client.get_record(&snap.snapshot_of).await.unwrap();
                let vbd: vhdsync::xapi::records::VbdRecord =
                    target.client.get_record(&live.vbds[0]).await.unwrap();
                live_vm = Some(vbd.vm.clone());
                bases.insert(device.clone(), (base_ref.clone(), snap.snapshot_of.clone()));
            }
        }
    }
    let full = bases.len() != new_disks.len();
    let sr_ref = target.text("SR.get_by_uuid", &[job.sr_uuid]).await;
    let name = format!("[XO Backup {}] {}", job.name, vm.name_label);
    let decorate = [
        (keys::COPY_OF, vm_uuid),
        (keys::JOB, job.job_id),
        (keys::SCHEDULE, job.schedule_id),
        (keys::SR, job.sr_uuid),
        (keys::DATETIME, keys::IMPORTING_DATETIME),
    ];
    let target_vm = match (&live_vm, full) {
        (Some(live), false) => {
            // Update mode (§7.2): decorate, then XO's setters.
            add_keys(target, "VM", live, &decorate).await;
            for (method, value) in [
                (
                    "VM.set_name_label",
                    Value::from(format!("[Importing…] {name}").as_str()),
                ),
                ("VM.set_has_vendor_device", Value::Bool(false)),
                ("VM.set_order", Value::Int(0)),
                ("VM.set_shutdown_delay", Value::Int(0)),
                ("VM.set_start_delay", Value::Int(0)),
                (
                    "VM.set_blocked_operations",
                    map(&[("start", "Importing…"), ("start_on", "Importing…")]),
                ),
            ] {
                target
                    .call(method, vec![Value::from(live.as_str()), value])
                    .await;
            }
            live.clone()
        }
        _ => {
            // Create mode.
            let mut fields: BTreeMap<String, Value> = BTreeMap::new();
            for (k, v) in [
                (
                    "name_label",
                    Value::from(format!("[Importing…] {name}").as_str()),
                ),
                ("name_description", Value::from("")),
                ("user_version", Value::Int(1)),
                ("is_a_template", Value::Bool(false)),
                ("memory_static_max", Value::from("1073741824")),
                ("memory_dynamic_max", Value::from("1073741824")),
                ("memory_dynamic_min", Value::from("1073741824")),
                ("memory_static_min", Value::from("1073741824")),
                ("VCPUs_max", Value::from("1")),
                ("VCPUs_at_startup", Value::from("1")),
                ("actions_after_shutdown", Value::from("destroy")),
                ("actions_after_reboot", Value::from("restart")),
                ("actions_after_crash", Value::from("restart")),
                ("other_config", map(&decorate)),
            ] {
                fields.insert(k.to_owned(), v);
            }
            let created = target.call("VM.create", vec![Value::Struct(fields)]).await;
            let created = created.as_str().unwrap().to_owned();
            target
                .call(
                    "VM.set_blocked_operations",
                    vec![
                        Value::from(created.as_str()),
                        map(&[("start", "Importing…"), ("start_on", "Importing…")]),
                    ],
                )
                .await;
            target
                .call(
                    "VM.add_tags",
                    vec![
                        Value::from(created.as_str()),
                        Value::from(keys::REPLICA_TAG),
                    ],
                )
                .await;
            created
        }
    };

    // The data: into the live VDI (update mode) or a new one.
    let options = TransferOptions::default();
    let mut bytes = 0;
    let mut vdi_of = BTreeMap::new();
    for (device, (snap_vdi_ref, snap_vdi)) in &new_disks {
        let disk_keys: [(&str, &str); 6] = [
            (keys::CONTENT_KEY, &snap_vdi.uuid),
            (keys::COPY_OF, &snap_vdi.uuid),
            (keys::JOB, job.job_id),
            (keys::SCHEDULE, job.schedule_id),
            (keys::SR, job.sr_uuid),
            (keys::VM, vm_uuid),
        ];
        let (vdi, base_ref) = match (full, bases.get(device)) {
            (false, Some((base_ref, live))) => (live.clone(), Some(base_ref.clone())),
            _ => {
                let mut fields: BTreeMap<String, Value> = BTreeMap::new();
                for (k, v) in [
                    (
                        "name_label",
                        Value::from(format!("[Importing] {}", snap_vdi.name_label).as_str()),
                    ),
                    ("SR", Value::from(sr_ref.as_str())),
                    (
                        "virtual_size",
                        Value::from(snap_vdi.virtual_size.to_string().as_str()),
                    ),
                    ("type", Value::from("user")),
                    ("sharable", Value::Bool(false)),
                    ("read_only", Value::Bool(false)),
                    ("other_config", map(&disk_keys)),
                ] {
                    fields.insert(k.to_owned(), v);
                }
                let created = target.call("VDI.create", vec![Value::Struct(fields)]).await;
                let created = created.as_str().unwrap().to_owned();
                target
                    .client
                    .attach_disk(&target_vm, &created, device)
                    .await
                    .unwrap();
                (created, None)
            }
        };
        add_keys(target, "VDI", &vdi, &disk_keys).await;
        let report = transfer_vdi(
            VdiOn {
                host: &source.client,
                vdi: snap_vdi_ref,
            },
            base_ref.as_deref(),
            VdiOn {
                host: &target.client,
                vdi: &vdi,
            },
            &options,
            &mut |_| {},
            std::future::pending(),
        )
        .await
        .unwrap();
        bytes += report.bytes;
        target
            .call(
                "VDI.set_name_label",
                vec![
                    Value::from(vdi.as_str()),
                    Value::from(snap_vdi.name_label.as_str()),
                ],
            )
            .await;
        vdi_of.insert(device.clone(), snap_vdi.uuid.clone());
    }

    // End of import and writer `_transfer` (§7.2): name, blocks, completion keys, snapshot,
    // keys cleared from the live replica.
    target
        .call(
            "VM.set_name_label",
            vec![Value::from(target_vm.as_str()), Value::from(name.as_str())],
        )
        .await;
    target
        .call(
            "VM.set_blocked_operations",
            vec![
                Value::from(target_vm.as_str()),
                map(&[
                    ("start", keys::START_BLOCKED),
                    ("start_on", keys::START_BLOCKED),
                ]),
            ],
        )
        .await;
    let snapshot_uuid = source.text("VM.get_uuid", &[&snapshot]).await;
    let completion = [
        (keys::DATETIME, now.as_str()),
        (keys::JOB, job.job_id),
        (keys::SCHEDULE, job.schedule_id),
        (keys::VM, vm_uuid),
        (keys::SR, job.sr_uuid),
        (keys::COPY_OF, snapshot_uuid.as_str()),
    ];
    add_keys(target, "VM", &target_vm, &completion).await;
    let live_disks = disks(target, &target_vm).await;
    for (reference, _) in live_disks.values() {
        add_keys(target, "VDI", reference, &completion[..5]).await;
    }
    let stamp = now.replace(':', "");
    target
        .call(
            "VM.snapshot",
            vec![
                Value::from(target_vm.as_str()),
                Value::from(format!("{} - {} / daily {stamp}", vm.name_label, job.name).as_str()),
            ],
        )
        .await;
    let cleared = [
        keys::DATETIME,
        keys::JOB,
        keys::SCHEDULE,
        keys::VM,
        keys::SR,
        keys::COPY_OF,
        keys::CONTENT_KEY,
    ];
    remove_keys(target, "VM", &target_vm, &cleared).await;
    for (reference, _) in live_disks.values() {
        remove_keys(target, "VDI", reference, &cleared).await;
    }
    target
        .call(
            "VM.update_allowed_operations",
            vec![Value::from(target_vm.as_str())],
        )
        .await;

    // §4: exported, chain length.
    let chain = if full {
        "0".to_owned()
    } else {
        let previous = base
            .as_ref()
            .and_then(|(_, d)| {
                d.values()
                    .next()
                    .and_then(|(_, v)| v.other_config.get(keys::DELTA_CHAIN_LENGTH).cloned())
            })
            .and_then(|c| c.parse::<u32>().ok())
            .unwrap_or(0);
        (previous + 1).to_string()
    };
    let exported: StringMap = [
        (keys::EXPORTED, "true"),
        (keys::DELTA_CHAIN_LENGTH, chain.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let pairs: Vec<(&str, &str)> = exported
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    add_keys(source, "VM", &snapshot, &pairs).await;
    for (reference, _) in new_disks.values() {
        add_keys(source, "VDI", reference, &pairs).await;
    }
    // §10.2, snapshotRetention 0: only the new base stays on the source.
    if let Some((old, _)) = base {
        source.client.destroy_vm_and_disks(&old).await.unwrap();
    }
    XoRun {
        full,
        bytes,
        source_vdis: vdi_of,
        live_vm: target.text("VM.get_uuid", &[&target_vm]).await,
    }
}
