//! `vhdsync lab init`: a new lab host with one pool, one host, one file SR ("Local storage"),
//! the networks of a fresh XAPI host and halted VMs with empty disks and network interfaces.
//!
//! The networks are those xapi sets up: the management network, named after its interface
//! ("Pool-wide network associated with eth0", bridge `xenbr0`) with the host's physical PIF
//! `eth0` (management, VLAN -1, the host's address), and the host-internal management
//! network (bridge `xenapi`, no PIF). A VM's interface on another network name makes that
//! network, without a PIF (see [`VmSpec`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::mac;
use super::network::{INTERNAL_MANAGEMENT, free_bridge};
use super::vdi::create_vdi;
use super::vif::{MAC_SEED, create_vif};
pub use super::vm_spec::{VifSpec, VmSpec};
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
    /// The management network first, then the host-internal one, then those the VMs' specs
    /// named.
    pub networks: Vec<NetworkReport>,
    pub vms: Vec<VmReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkReport {
    pub name: String,
    pub bridge: String,
    #[serde(flatten)]
    pub ids: ObjectIds,
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
    pub vifs: Vec<VifReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VifReport {
    pub device: String,
    #[serde(rename = "MAC")]
    pub mac: String,
    /// The network's name.
    pub network: String,
    pub vif: ObjectIds,
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
    /// the virtual size of each disk in bytes, in `userdevice` order, without interfaces.
    pub fn init(
        dir: &Path,
        password: &str,
        vms: &[(String, Vec<u64>)],
    ) -> Result<InitReport, LabError> {
        Lab::init_with_capacity(dir, password, vms, DEFAULT_SR_CAPACITY)
    }

    /// [`Lab::init`] with an SR that may hold `sr_capacity` bytes of VHD files.
    pub fn init_with_capacity(
        dir: &Path,
        password: &str,
        vms: &[(String, Vec<u64>)],
        sr_capacity: u64,
    ) -> Result<InitReport, LabError> {
        let specs: Vec<VmSpec> = vms.iter().cloned().map(VmSpec::from).collect();
        Lab::init_with(dir, password, &specs, sr_capacity)
    }

    /// Create a lab host in `dir` with VMs as `vms` describe them (disks and interfaces),
    /// whose SR may hold `sr_capacity` bytes of VHD files. Fails if `dir` already holds one;
    /// on another failure, what was created is left in `dir`.
    pub fn init_with(
        dir: &Path,
        password: &str,
        vms: &[VmSpec],
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

fn ids(db: &Db, class: Class, reference: &str) -> Result<ObjectIds, XapiFault> {
    Ok(ObjectIds {
        uuid: db.text(class, reference, "uuid")?.to_owned(),
        reference: reference.to_owned(),
    })
}

fn populate(lab: &Lab, db: &mut Db, vms: &[VmSpec]) -> Result<InitReport, XapiFault> {
    let host = db.insert(Class::Host, host_fields());
    let sr = db.insert(Class::Sr, sr_fields());
    let pool = db.insert(Class::Pool, pool_fields(&host, &sr));
    let mut networks = Networks::default();
    let management = networks.add(db, management_network_fields());
    let host_uuid = db.text(Class::Host, &host, "uuid")?.to_owned();
    db.insert(
        Class::Pif,
        management_pif_fields(&host, &management, &host_uuid),
    );
    networks.add(db, internal_network_fields());
    let mut report = InitReport {
        pool: ids(db, Class::Pool, &pool)?,
        host: ids(db, Class::Host, &host)?,
        sr: ids(db, Class::Sr, &sr)?,
        networks: Vec::new(),
        vms: Vec::new(),
    };
    for spec in vms {
        let name = &spec.name;
        let vm = db.insert(Class::Vm, vm_fields(name));
        let mut disks = Vec::new();
        for (position, &size) in spec.disks.iter().enumerate() {
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
        let mut vifs = Vec::new();
        for (position, vif_spec) in spec.vifs.iter().enumerate() {
            let network = match &vif_spec.network {
                None => management.clone(),
                Some(name) => networks.named(db, name),
            };
            let device = position.to_string();
            let vif = create_vif(db, vif_fields(&vm, &network, &device, vif_spec))?;
            vifs.push(VifReport {
                mac: db.text(Class::Vif, &vif, "MAC")?.to_owned(),
                network: db.text(Class::Network, &network, "name_label")?.to_owned(),
                vif: ids(db, Class::Vif, &vif)?,
                device,
            });
        }
        report.vms.push(VmReport {
            name: name.clone(),
            ids: ids(db, Class::Vm, &vm)?,
            disks,
            vifs,
        });
    }
    report.networks = networks.report(db)?;
    Ok(report)
}

/// The networks `init` made, in order.
#[derive(Default)]
struct Networks(Vec<String>);

impl Networks {
    fn add(&mut self, db: &mut Db, fields: Record) -> String {
        let network = db.insert(Class::Network, fields);
        self.0.push(network.clone());
        network
    }

    /// The network named `name`, made (with the next free `xapi<N>` bridge, no PIF) if there
    /// is none yet.
    fn named(&mut self, db: &mut Db, name: &str) -> String {
        if let Some(network) = db.by_name_label(Class::Network, name).into_iter().next() {
            return network;
        }
        let bridge = free_bridge(db);
        self.add(
            db,
            record(vec![
                ("name_label", Value::from(name)),
                ("bridge", Value::from(bridge)),
            ]),
        )
    }

    fn report(&self, db: &Db) -> Result<Vec<NetworkReport>, XapiFault> {
        self.0
            .iter()
            .map(|network| {
                Ok(NetworkReport {
                    name: db.text(Class::Network, network, "name_label")?.to_owned(),
                    bridge: db.text(Class::Network, network, "bridge")?.to_owned(),
                    ids: ids(db, Class::Network, network)?,
                })
            })
            .collect()
    }
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
const HOST_ADDRESS: &str = "127.0.0.1";

fn host_fields() -> Record {
    record(vec![
        ("name_label", Value::from(HOSTNAME)),
        ("hostname", Value::from(HOSTNAME)),
        ("address", Value::from(HOST_ADDRESS)),
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

/// The physical interface xapi names the management network after.
const MANAGEMENT_DEVICE: &str = "eth0";

fn management_network_fields() -> Record {
    record(vec![
        (
            "name_label",
            Value::from(format!(
                "Pool-wide network associated with {MANAGEMENT_DEVICE}"
            )),
        ),
        ("bridge", Value::from("xenbr0")),
    ])
}

fn management_pif_fields(host: &str, network: &str, host_uuid: &str) -> Record {
    record(vec![
        ("device", Value::from(MANAGEMENT_DEVICE)),
        ("network", Value::from(network)),
        ("host", Value::from(host)),
        // A stable, locally administered address of the host's own.
        ("MAC", Value::from(mac::generated(0, host_uuid))),
        ("VLAN", Value::Int(-1)),
        ("physical", Value::Bool(true)),
        ("management", Value::Bool(true)),
        ("ip_configuration_mode", Value::from("Static")),
        ("IP", Value::from(HOST_ADDRESS)),
        ("netmask", Value::from("255.0.0.0")),
    ])
}

/// The network xapi keeps for the host's own guests' use (bridge `xenapi`), which clients
/// recognise by these `other_config` keys.
fn internal_network_fields() -> Record {
    record(vec![
        (
            "name_label",
            Value::from("Host internal management network"),
        ),
        (
            "name_description",
            Value::from(
                "Network on which guests will be assigned a private link-local IP address which can be used to talk XenAPI",
            ),
        ),
        ("bridge", Value::from("xenapi")),
        (
            "other_config",
            text_map(&[
                ("is_guest_installer_network", "true"),
                (INTERNAL_MANAGEMENT, "true"),
                ("ip_begin", "169.254.0.1"),
                ("ip_end", "169.254.255.254"),
                ("netmask", "255.255.0.0"),
            ]),
        ),
    ])
}

fn vif_fields(vm: &str, network: &str, device: &str, spec: &VifSpec) -> Record {
    record(vec![
        ("VM", Value::from(vm)),
        ("network", Value::from(network)),
        ("device", Value::from(device)),
        ("MAC", Value::from(spec.mac.clone().unwrap_or_default())),
    ])
}

const GIB: i64 = 1 << 30;

fn vm_fields(name: &str) -> Record {
    record(vec![
        ("name_label", Value::from(name)),
        (
            "other_config",
            text_map(&[(MAC_SEED, &uuid::Uuid::new_v4().to_string())]),
        ),
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
