//! `vhdsync lab init`: a new lab host with one pool, one host, one file SR ("Local storage")
//! and halted VMs with empty disks.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::vdi::create_vdi;
use crate::lab::db::{Class, Db, EPOCH, PasswordHash, Record};
use crate::lab::state::{Lab, LabError};
use crate::xapi::rpc::{Value, XapiFault};

/// The SR's capacity unless told otherwise: 1 TiB, thin-provisioned.
pub const DEFAULT_SR_CAPACITY: u64 = 1 << 40;

/// What `init` created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitReport {
    pub pool: ObjectIds,
    pub host: ObjectIds,
    pub sr: ObjectIds,
    pub vms: Vec<VmReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectIds {
    pub uuid: String,
    #[serde(rename = "ref")]
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmReport {
    pub name: String,
    #[serde(flatten)]
    pub ids: ObjectIds,
    pub disks: Vec<DiskReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskReport {
    pub userdevice: String,
    pub vbd: ObjectIds,
    pub vdi: ObjectIds,
    /// The size the SR gave the VDI: the requested one rounded up to whole 2 MiB blocks.
    pub virtual_size: u64,
}

impl Lab {
    /// Create a lab host in `dir` with an SR of [`DEFAULT_SR_CAPACITY`]. Each VM is a name and
    /// the virtual size of each disk in bytes, in `userdevice` order.
    pub fn init(
        dir: &Path,
        password: &str,
        vms: &[(String, Vec<u64>)],
    ) -> Result<InitReport, LabError> {
        Lab::init_with_capacity(dir, password, vms, DEFAULT_SR_CAPACITY)
    }

    /// Create a lab host in `dir`, whose SR may hold `sr_capacity` bytes of VHD files. Fails
    /// if `dir` already holds one; on another failure, what was created is left in `dir`.
    pub fn init_with_capacity(
        dir: &Path,
        password: &str,
        vms: &[(String, Vec<u64>)],
        sr_capacity: u64,
    ) -> Result<InitReport, LabError> {
        std::fs::create_dir_all(dir).map_err(|source| LabError::Io {
            action: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let lab = Lab::create(dir, Db::new(PasswordHash::new(password)))?;
        lab.sr().set_capacity(Some(sr_capacity))?;
        let report = lab
            .with_db_mut(|db| populate(&lab, db, vms))
            .map_err(LabError::Setup)?;
        lab.flush()?;
        Ok(report)
    }
}

fn populate(lab: &Lab, db: &mut Db, vms: &[(String, Vec<u64>)]) -> Result<InitReport, XapiFault> {
    let host = db.insert(Class::Host, host_fields());
    let sr = db.insert(Class::Sr, sr_fields());
    let pool = db.insert(Class::Pool, pool_fields(&host, &sr));
    let ids = |db: &Db, class: Class, reference: &str| -> Result<ObjectIds, XapiFault> {
        Ok(ObjectIds {
            uuid: db.text(class, reference, "uuid")?.to_owned(),
            reference: reference.to_owned(),
        })
    };
    let mut report = InitReport {
        pool: ids(db, Class::Pool, &pool)?,
        host: ids(db, Class::Host, &host)?,
        sr: ids(db, Class::Sr, &sr)?,
        vms: Vec::new(),
    };
    for (name, disk_sizes) in vms {
        let vm = db.insert(Class::Vm, vm_fields(name));
        let mut disks = Vec::new();
        for (position, &size) in disk_sizes.iter().enumerate() {
            let userdevice = position.to_string();
            let vdi_fields: Record = [(
                "name_label".to_owned(),
                Value::from(format!("{name} disk {userdevice}")),
            )]
            .into();
            let vdi = create_vdi(lab, db, &sr, size, vdi_fields)?;
            let vbd = db.insert(Class::Vbd, vbd_fields(&vm, &vdi, &userdevice));
            let virtual_size = db.get(Class::Vdi, &vdi, "virtual_size")?.as_i64();
            disks.push(DiskReport {
                userdevice,
                vbd: ids(db, Class::Vbd, &vbd)?,
                vdi: ids(db, Class::Vdi, &vdi)?,
                virtual_size: virtual_size
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
            });
        }
        report.vms.push(VmReport {
            name: name.clone(),
            ids: ids(db, Class::Vm, &vm)?,
            disks,
        });
    }
    Ok(report)
}

fn text_map(pairs: &[(&str, &str)]) -> Value {
    Value::Struct(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn record(pairs: Vec<(&str, Value)>) -> Record {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

const HOSTNAME: &str = "lab";

fn host_fields() -> Record {
    record(vec![
        ("name_label", Value::from(HOSTNAME)),
        ("hostname", Value::from(HOSTNAME)),
        ("address", Value::from("127.0.0.1")),
        // XAPI 2.21 is XenServer 8 / XCP-ng 8.3.
        ("API_version_major", Value::Int(2)),
        ("API_version_minor", Value::Int(21)),
        ("API_version_vendor", Value::from("XenSource")),
        (
            "software_version",
            text_map(&[
                ("product_brand", "XCP-ng"),
                ("product_version", "8.3.0"),
                ("platform_name", "XCP"),
                ("platform_version", "3.4.0"),
                ("xapi", "24.19"),
                ("xen", "4.17.5"),
                ("hostname", HOSTNAME),
                ("build_number", "vhdsync-lab"),
                ("date", "2024-10-01"),
            ]),
        ),
        ("sched_policy", Value::from("credit")),
        (
            "supported_bootloaders",
            Value::from(vec!["pygrub", "eliloader"]),
        ),
        ("edition", Value::from("xcp-ng")),
        ("cpu_info", text_map(&[("cpu_count", "1")])),
        (
            "virtual_hardware_platform_versions",
            Value::from(vec![0i64, 1, 2]),
        ),
        ("last_software_update", Value::DateTime(EPOCH.into())),
    ])
}

fn sr_fields() -> Record {
    record(vec![
        ("name_label", Value::from("Local storage")),
        ("type", Value::from("ext")),
        ("content_type", Value::from("user")),
    ])
}

fn pool_fields(host: &str, sr: &str) -> Record {
    record(vec![
        ("name_label", Value::from(HOSTNAME)),
        ("master", Value::from(host)),
        ("default_SR", Value::from(sr)),
        ("suspend_image_SR", Value::from(sr)),
        ("crash_dump_SR", Value::from(sr)),
    ])
}

const GIB: i64 = 1 << 30;

fn vm_fields(name: &str) -> Record {
    record(vec![
        ("name_label", Value::from(name)),
        ("memory_static_max", Value::Int(GIB)),
        ("memory_dynamic_max", Value::Int(GIB)),
        ("memory_dynamic_min", Value::Int(GIB)),
        ("memory_static_min", Value::Int(GIB / 2)),
        ("memory_target", Value::Int(GIB)),
        ("HVM_boot_policy", Value::from("BIOS order")),
        ("HVM_boot_params", text_map(&[("order", "cd")])),
        (
            "platform",
            text_map(&[
                ("acpi", "1"),
                ("apic", "true"),
                ("pae", "true"),
                ("viridian", "true"),
            ]),
        ),
        ("hardware_platform_version", Value::Int(2)),
    ])
}

fn vbd_fields(vm: &str, vdi: &str, userdevice: &str) -> Record {
    record(vec![
        ("VM", Value::from(vm)),
        ("VDI", Value::from(vdi)),
        ("userdevice", Value::from(userdevice)),
        ("bootable", Value::Bool(userdevice == "0")),
        ("mode", Value::from("RW")),
        ("type", Value::from("Disk")),
        ("other_config", text_map(&[("owner", "")])),
    ])
}
