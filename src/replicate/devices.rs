//! A replica's devices besides its disks (issue 19, `xo-replication.md` §5, §7.2): network
//! interfaces on the networks [`networks`] chooses, empty CD drives, and vTPMs with their
//! contents. Read from the source before the snapshot (so that a wrong `network_map` fails
//! before anything is touched), written on the live replica before its disks are filled:
//! created on a new one, reconciled on one updated in place.
//!
//! [`networks`]: super::networks

use super::inventory::{networks, vm_nics};
use super::networks::{NicPlan, Rule, map_interfaces};
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::ops::NewVif;
use crate::xapi::records::{NULL_REF, VbdRecord, VifRecord, VmRecord};
use crate::xapi::rpc::Value;

/// What the source VM has besides its disks, as the replica will have it.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    /// Interfaces, with the source interface each copies.
    pub nics: Vec<(NicPlan, VifRecord)>,
    /// CD drives' userdevices; the replica's are empty (ISO SRs belong to a site).
    pub cd_drives: Vec<VbdRecord>,
    /// vTPM contents, one per source vTPM, with its `is_unique` flag.
    pub vtpms: Vec<(bool, String)>,
    pub notes: Vec<String>,
}

/// Why the devices cannot be planned: a host failed, or the job's network map is wrong.
#[derive(Debug)]
pub enum DevicesError {
    Source(ClientError),
    Target(ClientError),
    Mapping(String),
}

/// Read the source VM's devices and map its interfaces onto `target`'s networks. `vbds` are
/// the VM's VBDs, as the caller read them.
pub async fn plan_devices(
    source: &XapiClient,
    target: &XapiClient,
    vm: &VmRecord,
    vbds: &[VbdRecord],
    network_map: &[(String, String)],
    new_macs: bool,
) -> Result<Devices, DevicesError> {
    let source_networks = networks(source).await.map_err(DevicesError::Source)?;
    let nics = vm_nics(source, vm, &source_networks)
        .await
        .map_err(DevicesError::Source)?;
    let target_networks = networks(target).await.map_err(DevicesError::Target)?;
    let (sources, records): (Vec<_>, Vec<_>) = nics.into_iter().unzip();
    let plans = map_interfaces(&sources, &target_networks, network_map, new_macs)
        .map_err(DevicesError::Mapping)?;
    let mut notes = Vec::new();
    for plan in plans.iter().filter(|p| p.rule == Rule::Default) {
        notes.push(format!(
            "interface {}: no network {:?} on the target; on its default network {:?}",
            plan.device, plan.source_network_name, plan.target_network_name
        ));
    }
    let mut cd_drives = Vec::new();
    for vbd in vbds.iter().filter(|vbd| vbd.kind == "CD") {
        if !vbd.empty && vbd.vdi != NULL_REF {
            notes.push(format!(
                "CD drive {}: its disc is not copied; the replica's drive is empty",
                vbd.userdevice
            ));
        }
        cd_drives.push(vbd.clone());
    }
    let mut vtpms = Vec::new();
    for reference in &vm.vtpms {
        let vtpm = Value::from(reference.as_str());
        let contents = source
            .call_for_string("VTPM.get_contents", vec![vtpm.clone()])
            .await
            .map_err(DevicesError::Source)?;
        let unique = source
            .call("VTPM.get_is_unique", vec![vtpm])
            .await
            .map_err(DevicesError::Source)?
            .as_bool()
            .unwrap_or(false);
        vtpms.push((unique, contents));
    }
    Ok(Devices {
        nics: plans.into_iter().zip(records).collect(),
        cd_drives,
        vtpms,
        notes,
    })
}

/// Give the live replica `vm` exactly `devices`: interfaces that differ (network, MAC, MTU)
/// or are not the source's are replaced, missing CD drives are added, and vTPMs are
/// recreated with the source's contents (XO §7.2 destroys and recreates them too).
pub async fn apply_devices(
    target: &XapiClient,
    vm_ref: &str,
    devices: &Devices,
) -> Result<(), ClientError> {
    let vm: VmRecord = target.get_record(vm_ref).await?;
    // What stays is what was read less what is destroyed here: no need to read it again.
    let mut kept = Vec::new();
    for (reference, vif) in target.vm_vifs(&vm).await? {
        let wanted = devices
            .nics
            .iter()
            .find(|(plan, _)| plan.device == vif.device);
        let keep = wanted.is_some_and(|(plan, like)| {
            plan.target_ref == vif.network
                && (plan.mac.is_empty() || plan.mac.eq_ignore_ascii_case(&vif.mac))
                && like.mtu == vif.mtu
        });
        if keep {
            kept.push(vif);
        } else {
            target.destroy_vif(&reference).await?;
        }
    }
    for (plan, like) in &devices.nics {
        if kept.iter().any(|v| v.device == plan.device) {
            continue;
        }
        target
            .create_vif(&NewVif {
                vm: vm_ref,
                network: &plan.target_ref,
                device: &plan.device,
                mac: &plan.mac,
                like,
            })
            .await?;
    }
    let mut drives = Vec::new();
    for reference in &vm.vbds {
        let vbd: VbdRecord = target.get_record(reference).await?;
        if vbd.kind == "CD" {
            drives.push(vbd.userdevice);
        }
    }
    for cd in &devices.cd_drives {
        if !drives.contains(&cd.userdevice) {
            target
                .attach_empty_cd(vm_ref, &cd.userdevice, cd.bootable)
                .await?;
        }
    }
    if !devices.vtpms.is_empty() || !vm.vtpms.is_empty() {
        for reference in &vm.vtpms {
            target
                .call("VTPM.destroy", vec![Value::from(reference.as_str())])
                .await?;
        }
        for (unique, contents) in &devices.vtpms {
            let created = target
                .call_for_string(
                    "VTPM.create",
                    vec![Value::from(vm_ref), Value::Bool(*unique)],
                )
                .await?;
            target
                .call(
                    "VTPM.set_contents",
                    vec![
                        Value::from(created.as_str()),
                        Value::from(contents.as_str()),
                    ],
                )
                .await?;
        }
    }
    Ok(())
}
