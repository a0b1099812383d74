//! Which VMs a run replicates: the job's listed UUIDs and every source VM carrying one of its
//! `tag:NAME` entries (Xen Orchestra's "smart mode"), resolved from one read of the source's
//! VMs at each run, so a VM tagged today is replicated tonight.
//!
//! The union is taken in the file's order, UUIDs first, then each tag's VMs by UUID, each VM
//! once. A tag never selects a template, a snapshot, the control domain, or a replica of this
//! very job (a replica carries the source's tags; with source and target in one pool it
//! would otherwise be replicated in turn). A tag matching no VM is a warning: a tag's members
//! come and go. No VM at all is an error, as in Xen Orchestra ("no VMs match this pattern"):
//! a job that replicates nothing is most likely a typo, and should not pass as a success.
//!
//! The records come from the source, which anyone who may edit its VMs controls: a VM whose
//! UUID is not a UUID is skipped with a warning (the UUID names lock files and keys), and
//! the warnings quote only the job's own tag names and checked UUIDs.

use std::collections::BTreeSet;

use super::job::{Job, TAG_PREFIX};
use super::keys;
use super::plan::TargetVm;
use crate::xapi::records::VmRecord;

/// A run's VMs, and what to warn about.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Selection {
    /// VM UUIDs, canonical, each once.
    pub vms: Vec<String>,
    /// For each tag of the job, the VMs it selected (also those listed by UUID).
    pub tags: Vec<TagMatch>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TagMatch {
    pub tag: String,
    pub vms: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("job {job:?}: no VM matches {}", describe(.listed, .tags))]
pub struct NothingSelected {
    job: String,
    listed: usize,
    tags: Vec<String>,
}

fn describe(listed: &usize, tags: &[String]) -> String {
    let tags: Vec<String> = tags.iter().map(|t| format!("{TAG_PREFIX}{t}")).collect();
    match listed {
        0 => tags.join(", "),
        n => format!("{n} listed UUID(s) and {}", tags.join(", ")),
    }
}

/// The VMs `job` selects among the source's VM records (`VM.get_all_records`).
pub fn select(job: &Job, records: &[(String, VmRecord)]) -> Result<Selection, NothingSelected> {
    let mut selection = Selection {
        vms: job.vms.clone(),
        ..Selection::default()
    };
    let mut chosen: BTreeSet<String> = job.vms.iter().cloned().collect();
    let replicas = own_replicas(&job.job_id, records);
    let mut skipped_bad_uuid = 0usize;
    for tag in &job.vm_tags {
        let mut matched = Vec::new();
        for (reference, vm) in records {
            if !vm.tags.iter().any(|t| t == tag)
                || vm.is_a_template
                || vm.is_a_snapshot
                || vm.is_control_domain
                || replicas.contains(reference.as_str())
            {
                continue;
            }
            match uuid::Uuid::try_parse(&vm.uuid) {
                Ok(uuid) => matched.push(uuid.to_string()),
                Err(_) => skipped_bad_uuid += 1,
            }
        }
        matched.sort_unstable();
        matched.dedup();
        if matched.is_empty() {
            selection
                .warnings
                .push(format!("{TAG_PREFIX}{tag} matches no VM on the source"));
        }
        for vm in &matched {
            if chosen.insert(vm.clone()) {
                selection.vms.push(vm.clone());
            }
        }
        selection.tags.push(TagMatch {
            tag: tag.clone(),
            vms: matched,
        });
    }
    if skipped_bad_uuid > 0 {
        selection.warnings.push(format!(
            "{skipped_bad_uuid} tagged VM(s) on the source skipped: their uuid is not a UUID"
        ));
    }
    if selection.vms.is_empty() {
        return Err(NothingSelected {
            job: job.name.clone(),
            listed: job.vms.len(),
            tags: job.vm_tags.clone(),
        });
    }
    Ok(selection)
}

/// The references of this job's replicas among `records`: VMs that carry the job's keys for
/// another VM (a classic replica, or one being imported), or whose snapshots do (a live
/// replica, whose own keys are cleared once committed).
fn own_replicas<'a>(job_id: &str, records: &'a [(String, VmRecord)]) -> BTreeSet<&'a str> {
    let replica_keys = |vm: &VmRecord, of: &str| {
        vm.other_config.get(keys::JOB).is_some_and(|j| j == job_id)
            && vm.other_config.get(keys::VM).is_some_and(|v| v != of)
    };
    let uuids: std::collections::HashMap<&str, &str> = records
        .iter()
        .map(|(reference, vm)| (reference.as_str(), vm.uuid.as_str()))
        .collect();
    let mut replicas = BTreeSet::new();
    for (reference, vm) in records {
        if vm.is_a_snapshot {
            if let Some((parent, parent_uuid)) = uuids.get_key_value(vm.snapshot_of.as_str())
                && replica_keys(vm, parent_uuid)
            {
                replicas.insert(*parent);
            }
        } else if replica_keys(vm, &vm.uuid) {
            replicas.insert(reference.as_str());
        }
    }
    replicas
}

/// The VMs `status` and the metrics report on: the listed UUIDs, and for a job with tags
/// also every VM this job has restore points of on the target (the target alone cannot say
/// which VMs carry a tag now; it shows which ones were replicated).
pub fn vms_on_target(job: &Job, target_vms: &[TargetVm]) -> Vec<String> {
    let mut vms = job.vms.clone();
    if job.vm_tags.is_empty() {
        return vms;
    }
    let mut found: BTreeSet<String> = BTreeSet::new();
    for vm in target_vms {
        if vm.other_config.get(keys::JOB) != Some(&job.job_id) {
            continue;
        }
        if let Some(uuid) = vm
            .other_config
            .get(keys::VM)
            .and_then(|v| uuid::Uuid::try_parse(v).ok())
        {
            found.insert(uuid.to_string());
        }
    }
    vms.extend(found.into_iter().filter(|vm| !job.vms.contains(vm)));
    vms
}

#[cfg(test)]
mod tests;
