//! A job checked before it runs (`replicate --dry-run`, and the start of every real run):
//! both hosts logged in to, the target SR found and able to take the replicas, every VM
//! found and replicable, and each disk planned (full or delta, on which base) with the
//! cycle's own planning (`run::plan_disks`). It changes nothing on either host but the export
//! tasks of its estimates, which it removes.
//!
//! A configuration error ([`PreflightError::is_config`]) is the job's or the hosts' setup
//! at fault: no run can succeed until someone fixes it, so a real run stops before the
//! first snapshot.
//!
//! Space: a disk sent whole needs its virtual size on the SR (an LVM SR allocates it all;
//! a file SR may need less, but a full of a busy disk can need that much). The SR failing to
//! hold the disks the plan sends whole is a configuration error; a plan of deltas only is
//! not held to the size of a full, but warned about when the SR could not take one, since
//! `full_interval` or a lost base would ask for one.

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::inventory::{load_snapshot, networks, sr_disks, vm_nics};
use super::job::Job;
use super::layout::TargetDisk;
use super::networks::{Network, map_interfaces};
use super::plan::{DiskPlan, Identity, SnapshotDisk, SourceSnapshot, TargetSide, not_replicable};
use super::run::{is_left_out, plan_disks};
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::connect::{ConnectError, HostLogin};
use crate::xapi::connection::TransportError;
use crate::xapi::records::{SrRecord, TaskRecord, VdiRecord, VmRecord};
use crate::xapi::rpc::Value;
use crate::xapi::transfer::{TransferOptions, VdiOn, open_export};

/// The XAPI error for a UUID no object has.
const UUID_INVALID: &str = "UUID_INVALID";
/// The SR operation a replica's disks need.
const VDI_CREATE: &str = "vdi_create";

/// Which of a job's two hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Source,
    Target,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// Why a job cannot run, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "no password for the {} host {host}: set {}_password_file in the job file, the \
         environment variable {env}, or a password in the {} URL{}",
        side.name(), side.name(), side.name(),
        empty_file.as_ref().map(|p| format!(" (the password file {} is empty)", p.display())).unwrap_or_default()
    )]
    MissingPassword {
        side: Side,
        host: String,
        env: String,
        /// The password file, when it was given but holds nothing.
        empty_file: Option<std::path::PathBuf>,
    },
    #[error(
        "{source}: the {} host's certificate is not trusted; if it is the host's own (XAPI \
         hosts' certificates are self-signed), run `vhdsync trust {url}` and set \
         tls.{}_fingerprint in the job file to the fingerprint it prints",
        side.name(), side.name()
    )]
    Untrusted {
        side: Side,
        url: String,
        source: TransportError,
    },
    /// The host's own error names it.
    #[error("the {} host refused the user name or password: {source}", side.name())]
    Refused { side: Side, source: ClientError },
    #[error("the {} host: {source}", side.name())]
    Connect { side: Side, source: ConnectError },
    #[error("target_sr {sr}: no such SR on the target host {host}")]
    NoSuchSr { host: String, sr: String },
    #[error(
        "target_sr {sr} ({name}) on {host}: the SR does not allow creating disks (its allowed \
         operations: {})", if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") }
    )]
    SrNotWritable {
        host: String,
        sr: String,
        name: String,
        allowed: Vec<String>,
    },
    #[error(
        "target_sr {sr} ({name}) on {host}: {free} bytes free, but the disks sent whole \
         need {needed} bytes"
    )]
    SrTooSmall {
        host: String,
        sr: String,
        name: String,
        free: u64,
        needed: u64,
    },
    #[error("VM {vm}: no such VM on the source host {host}")]
    NoSuchVm { host: String, vm: String },
    #[error("VM {vm} ({name}) on {host}: {why}")]
    NotReplicable {
        host: String,
        vm: String,
        name: String,
        why: &'static str,
    },
    /// The job's `network_map` names no target network for one of the VM's interfaces (or
    /// the target has no network for guests at all).
    #[error("VM {vm} ({name}): {why}")]
    NetworkMap {
        vm: String,
        name: String,
        why: String,
    },
    /// A host failed a read: no fault of the job's.
    #[error("{what}: {source}")]
    Host { what: String, source: ClientError },
}

impl PreflightError {
    /// The job or the hosts' setup is at fault (exit 2), not a host failing a call.
    pub fn is_config(&self) -> bool {
        match self {
            PreflightError::Host { .. } => false,
            PreflightError::Connect { source, .. } => source.is_input(),
            _ => true,
        }
    }
}

/// The reads of a check, for [`PreflightError::Host`].
fn reading<T>(
    what: impl FnOnce() -> String,
    r: Result<T, ClientError>,
) -> Result<T, PreflightError> {
    r.map_err(|source| PreflightError::Host {
        what: what(),
        source,
    })
}

/// Log in to the job's source, then its target. Both passwords are looked for before either
/// host is contacted, so a missing one fails alone and first.
pub async fn connect(job: &Job) -> Result<(XapiClient, XapiClient), PreflightError> {
    let login = |side: Side| {
        let login = match side {
            Side::Source => job.source_login(),
            Side::Target => job.target_login(),
        };
        login.map_err(|e| PreflightError::Connect {
            side,
            source: e.into(),
        })
    };
    let (source, target) = (login(Side::Source)?, login(Side::Target)?);
    check_password(&source, Side::Source)?;
    check_password(&target, Side::Target)?;
    Ok((
        log_in(&source, Side::Source).await?,
        log_in(&target, Side::Target).await?,
    ))
}

/// A password that is missing, or empty, which no XAPI host takes for root: its own error,
/// rather than a login with nothing that the host refuses.
fn check_password(login: &HostLogin, side: Side) -> Result<(), PreflightError> {
    let missing = |empty_file| PreflightError::MissingPassword {
        side,
        host: login.url.to_string(),
        env: login.password_env.clone().unwrap_or_default(),
        empty_file,
    };
    match login.password() {
        Ok(password) if password.is_empty() => Err(missing(login.password_file.clone())),
        Ok(_) => Ok(()),
        Err(ConnectError::NoPassword { .. }) => Err(missing(None)),
        Err(source) => Err(PreflightError::Connect { side, source }),
    }
}

async fn log_in(login: &HostLogin, side: Side) -> Result<XapiClient, PreflightError> {
    login.connect().await.map_err(|e| match e {
        ConnectError::Tls(source) => PreflightError::Untrusted {
            side,
            // As `vhdsync trust` takes it: without the credentials.
            url: login.url.to_string(),
            source,
        },
        ConnectError::Authentication { source, .. } => PreflightError::Refused { side, source },
        source => PreflightError::Connect { side, source },
    })
}

/// What a job would do now, and what stops it.
#[derive(Debug, Serialize)]
pub struct JobCheck {
    pub source: String,
    pub target: String,
    pub sr: SrCheck,
    pub vms: Vec<VmCheck>,
    /// What does not stop the job but its owner should know.
    pub warnings: Vec<String>,
    /// The RPC calls the check made to both hosts, logins not included.
    pub rpc_calls: u64,
}

/// The target SR as found.
#[derive(Debug, Serialize)]
pub struct SrCheck {
    pub uuid: String,
    pub name: Option<String>,
    /// `physical_size - physical_utilisation`, when the SR reports a size.
    pub free: Option<u64>,
    /// The virtual sizes of the disks the plan sends whole.
    pub needed_for_fulls: u64,
    /// The virtual sizes of every planned disk: what a full of them all would need.
    pub needed_for_a_full: u64,
    #[serde(serialize_with = "error_text")]
    pub error: Option<PreflightError>,
}

/// One VM of the job: its plan, or why it cannot be replicated.
#[derive(Debug, Serialize)]
pub struct VmCheck {
    pub vm: String,
    pub name: Option<String>,
    /// `full`, `delta`, or `mixed`; absent without a plan.
    pub mode: Option<&'static str>,
    /// The snapshot the deltas are against.
    pub base: Option<String>,
    pub disks: Vec<DiskCheck>,
    /// Why disks go full, or where the base was found.
    pub notes: Vec<String>,
    #[serde(serialize_with = "error_text")]
    pub error: Option<PreflightError>,
}

/// One disk of a VM's plan.
#[derive(Debug, Clone, Serialize)]
pub struct DiskCheck {
    pub userdevice: String,
    pub vdi: String,
    pub mode: &'static str,
    pub virtual_size: u64,
    /// The bytes the disk's transfer would send, as of now.
    pub estimated_bytes: Option<u64>,
    /// How [`DiskCheck::estimated_bytes`] was found.
    pub estimate: String,
}

fn error_text<S: serde::Serializer>(e: &Option<PreflightError>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.serialize_some(&e.to_string()),
        None => s.serialize_none(),
    }
}

impl JobCheck {
    /// Every error found, the SR's first.
    pub fn errors(&self) -> impl Iterator<Item = &PreflightError> {
        self.sr
            .error
            .iter()
            .chain(self.vms.iter().filter_map(|v| v.error.as_ref()))
    }
}

/// What [`check_job`] is asked.
pub struct CheckOptions<'a> {
    /// The VMs to check (the job's when empty).
    pub vms: &'a [String],
    /// Open each disk's export to read its exact length (the dry run); a real run does not.
    pub estimate: bool,
    pub transfer: &'a TransferOptions,
}

/// Check the job on its two hosts, logged in to: the target SR, then each VM in turn.
pub async fn check_job(
    job: &Job,
    source: &XapiClient,
    target: &XapiClient,
    options: &CheckOptions<'_>,
) -> JobCheck {
    let calls = || source.requests_sent() + target.requests_sent();
    let before = calls();
    let mut check = check_hosts(job, source, target, options).await;
    check.rpc_calls = calls() - before;
    tracing::debug!(calls = check.rpc_calls, "checked the job");
    check
}

async fn check_hosts(
    job: &Job,
    source: &XapiClient,
    target: &XapiClient,
    options: &CheckOptions<'_>,
) -> JobCheck {
    let selected = if options.vms.is_empty() {
        &job.vms
    } else {
        options.vms
    };
    let mut warnings = Vec::new();
    let (sr, target_disks) = match check_sr(target, &job.target_sr).await {
        Ok(found) => found,
        Err(e) => {
            let sr = SrCheck {
                uuid: job.target_sr.clone(),
                name: None,
                free: None,
                needed_for_fulls: 0,
                needed_for_a_full: 0,
                error: Some(e),
            };
            return JobCheck {
                source: source.host(),
                target: target.host(),
                vms: check_vms_alone(job, source, selected).await,
                sr,
                warnings,
                rpc_calls: 0,
            };
        }
    };
    // The networks of both sides, read once, map every VM's interfaces as its cycle will.
    let networks = match (networks(source).await, networks(target).await) {
        (Ok(source_networks), Ok(target_networks)) => Ok((source_networks, target_networks)),
        (Err(e), _) => Err(format!("reading the source's networks: {e}")),
        (_, Err(e)) => Err(format!("reading the target's networks: {e}")),
    };
    let (source_networks, target_networks) = match networks {
        Ok(both) => both,
        Err(why) => {
            warnings.push(format!("{why}; the network mapping is not checked"));
            (Vec::new(), Vec::new())
        }
    };
    let mut vms = Vec::new();
    for vm in selected {
        let id = Identity {
            job_id: job.job_id.clone(),
            schedule_id: job.schedule_id.clone(),
            vm_uuid: vm.clone(),
            sr_uuid: job.target_sr.clone(),
        };
        let planner = Planner {
            source,
            id: &id,
            target_disks: &target_disks,
            full_interval: job.full_interval,
            networks: (!source_networks.is_empty()).then_some(NetworkCheck {
                source: &source_networks,
                target: &target_networks,
                map: &job.network_map,
            }),
            options,
        };
        vms.push(planner.check_vm().await);
    }
    let planned = || vms.iter().flat_map(|v| &v.disks);
    let needed_for_fulls = planned()
        .filter(|d| d.mode == "full")
        .map(|d| d.virtual_size)
        .sum();
    let needed_for_a_full = planned().map(|d| d.virtual_size).sum();
    let free =
        (sr.physical_size > 0).then(|| sr.physical_size.saturating_sub(sr.physical_utilisation));
    let mut error = None;
    match free {
        None => warnings.push(format!(
            "target_sr {}: the SR reports no size; its free space is not checked",
            sr.uuid
        )),
        Some(free) if free < needed_for_fulls => {
            error = Some(PreflightError::SrTooSmall {
                host: target.host(),
                sr: sr.uuid.clone(),
                name: sr.name_label.clone(),
                free,
                needed: needed_for_fulls,
            })
        }
        Some(free) if free < needed_for_a_full => warnings.push(format!(
            "target_sr {}: {free} bytes free; the deltas fit, but a full of these disks \
             ({needed_for_a_full} bytes) would not",
            sr.uuid
        )),
        Some(_) => {}
    }
    JobCheck {
        source: source.host(),
        target: target.host(),
        sr: SrCheck {
            uuid: sr.uuid,
            name: Some(sr.name_label),
            free,
            needed_for_fulls,
            needed_for_a_full,
            error,
        },
        vms,
        warnings,
        rpc_calls: 0,
    }
}

/// The SR `uuid` on the target, able to take new disks, and the disks on it.
async fn check_sr(
    target: &XapiClient,
    uuid: &str,
) -> Result<(SrRecord, Vec<TargetDisk>), PreflightError> {
    let what = || format!("reading target_sr {uuid}");
    let (reference, sr) = match target.record_by_uuid::<SrRecord>(uuid).await {
        Err(e) if e.xapi_code() == Some(UUID_INVALID) => {
            return Err(PreflightError::NoSuchSr {
                host: target.host(),
                sr: uuid.to_owned(),
            });
        }
        found => reading(what, found)?,
    };
    let allowed = reading(
        what,
        target
            .call(
                "SR.get_allowed_operations",
                vec![Value::from(reference.as_str())],
            )
            .await,
    )?;
    let allowed: Vec<String> = allowed
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    if !allowed.iter().any(|op| op == VDI_CREATE) {
        return Err(PreflightError::SrNotWritable {
            host: target.host(),
            sr: uuid.to_owned(),
            name: sr.name_label,
            allowed,
        });
    }
    let vdis = reading(what, target.get_all_records::<VdiRecord>().await)?;
    let disks = reading(what, sr_disks(target, &reference, vdis).await)?;
    Ok((sr, disks))
}

/// Without a target SR to plan against, the VMs are still looked up and judged.
async fn check_vms_alone(job: &Job, source: &XapiClient, selected: &[String]) -> Vec<VmCheck> {
    let mut checks = Vec::new();
    for vm in selected {
        let mut check = VmCheck::new(vm);
        match find_vm(source, vm, &job.job_id).await {
            Ok(record) => check.name = Some(record.name_label),
            Err(e) => check.error = Some(e),
        }
        checks.push(check);
    }
    checks
}

/// The VM `uuid` on the source, if it is one the job can replicate.
async fn find_vm(
    source: &XapiClient,
    uuid: &str,
    job_id: &str,
) -> Result<VmRecord, PreflightError> {
    let (_, vm) = match source.record_by_uuid::<VmRecord>(uuid).await {
        Err(e) if e.xapi_code() == Some(UUID_INVALID) => {
            return Err(PreflightError::NoSuchVm {
                host: source.host(),
                vm: uuid.to_owned(),
            });
        }
        found => reading(|| format!("VM {uuid}: reading it"), found)?,
    };
    if let Some(why) = not_replicable(&vm, job_id) {
        return Err(PreflightError::NotReplicable {
            host: source.host(),
            vm: uuid.to_owned(),
            name: vm.name_label,
            why,
        });
    }
    Ok(vm)
}

impl VmCheck {
    fn new(vm: &str) -> VmCheck {
        VmCheck {
            vm: vm.to_owned(),
            name: None,
            mode: None,
            base: None,
            disks: Vec::new(),
            notes: Vec::new(),
            error: None,
        }
    }
}

/// One VM's plan, as its cycle would make it now.
struct Planner<'a> {
    source: &'a XapiClient,
    id: &'a Identity,
    target_disks: &'a [TargetDisk],
    full_interval: u32,
    /// None when the networks could not be read (a warning says so).
    networks: Option<NetworkCheck<'a>>,
    options: &'a CheckOptions<'a>,
}

/// What mapping a VM's interfaces onto the target's networks needs.
struct NetworkCheck<'a> {
    source: &'a [Network],
    target: &'a [Network],
    map: &'a [(String, String)],
}

impl Planner<'_> {
    async fn check_vm(&self) -> VmCheck {
        let mut check = VmCheck::new(&self.id.vm_uuid);
        if let Err(e) = self.plan(&mut check).await {
            check.error = Some(e);
        }
        check
    }

    async fn plan(&self, check: &mut VmCheck) -> Result<(), PreflightError> {
        let source = self.source;
        let uuid = &self.id.vm_uuid;
        let vm = find_vm(source, uuid, &self.id.job_id).await?;
        check.name = Some(vm.name_label.clone());
        if let Some(networks) = &self.networks {
            let what = || format!("VM {uuid}: reading its interfaces");
            let nics = reading(what, vm_nics(source, &vm, networks.source).await)?;
            let (nics, _): (Vec<_>, Vec<_>) = nics.into_iter().unzip();
            // MACs do not matter to whether a network is found.
            map_interfaces(&nics, networks.target, networks.map, false).map_err(|why| {
                PreflightError::NetworkMap {
                    vm: uuid.clone(),
                    name: vm.name_label.clone(),
                    why,
                }
            })?;
        }
        let what = || format!("VM {uuid}: reading its disks and snapshots");
        let vm_disks = reading(what, source.vm_disks(&vm).await)?;
        let own_disks: Vec<String> = vm_disks.iter().map(|d| d.vdi_ref.clone()).collect();
        // The disks the snapshot will have: the VM's own, less those `[NOBAK]` leaves out.
        let disks: Vec<SnapshotDisk> = vm_disks
            .into_iter()
            .filter(|d| !is_left_out(&d.vdi.name_label))
            .map(|d| SnapshotDisk {
                userdevice: d.userdevice,
                vdi_ref: d.vdi_ref,
                vdi_uuid: d.vdi.uuid,
                virtual_size: d.vdi.virtual_size,
                other_config: d.vdi.other_config,
            })
            .collect();
        let mut snapshots = Vec::new();
        for reference in &vm.snapshots {
            snapshots.push(reading(what, load_snapshot(source, reference).await)?);
        }
        // The cycle's clean-up removes this job's snapshots never exported before planning.
        snapshots.retain(|s| !s.is_job_snapshot(self.id) || s.is_exported());
        let base: Option<&SourceSnapshot> = super::plan::select_base(&snapshots, self.id);
        let side = TargetSide {
            disks: self.target_disks,
            id: self.id,
            source_disks: &own_disks,
        };
        let plan = plan_disks(&disks, base, &snapshots, &side, self.full_interval);
        check.notes = plan.notes.clone();
        for disk in &disks {
            let planned = plan.disks.get(&disk.userdevice).unwrap_or(&DiskPlan::Full);
            let base_vdi = match planned {
                DiskPlan::Full => None,
                DiskPlan::Delta { base_vdi, .. } => Some(base_vdi.as_str()),
            };
            let (estimated_bytes, estimate) = if self.options.estimate {
                self.estimate(disk, base_vdi).await
            } else {
                (None, "not estimated".to_owned())
            };
            check.disks.push(DiskCheck {
                userdevice: disk.userdevice.clone(),
                vdi: disk.vdi_uuid.clone(),
                mode: if base_vdi.is_some() { "delta" } else { "full" },
                virtual_size: disk.virtual_size,
                estimated_bytes,
                estimate,
            });
        }
        check.base = snapshots
            .iter()
            .find(|s| {
                s.disks.iter().any(|d| {
                    plan.disks.values().any(
                        |p| matches!(p, DiskPlan::Delta { base_vdi, .. } if *base_vdi == d.vdi_ref),
                    )
                })
            })
            .map(|s| s.uuid.clone());
        check.mode = Some(mode_of(&check.disks));
        Ok(())
    }

    /// The length of the stream the disk's transfer would send now: the head of its export
    /// (whole, or the delta against the base), read up to the BAT, which fixes the length;
    /// no block is read. A host that refuses the export leaves the virtual size, an upper
    /// bound.
    async fn estimate(&self, disk: &SnapshotDisk, base_vdi: Option<&str>) -> (Option<u64>, String) {
        let label = format!("vhdsync dry run {}", uuid::Uuid::new_v4());
        let on = VdiOn {
            host: self.source,
            vdi: &disk.vdi_ref,
        };
        let cancel = CancellationToken::new();
        let opened = open_export(on, base_vdi, &label, self.options.transfer, &cancel).await;
        let found = match opened {
            Ok(export) => {
                let length = export.total_len();
                export.close().await;
                (
                    Some(length),
                    "the export's length now, from its BAT's allocated blocks".to_owned(),
                )
            }
            Err(e) => (
                Some(disk.virtual_size),
                format!("at most the virtual size; the export could not be opened: {e}"),
            ),
        };
        self.remove_tasks(&label).await;
        found
    }

    /// The export's task, ended but kept by the host: a dry run leaves nothing behind.
    async fn remove_tasks(&self, label: &str) {
        let Ok(tasks) = self
            .source
            .call("task.get_by_name_label", vec![Value::from(label)])
            .await
        else {
            return;
        };
        for task in tasks.as_array().unwrap_or_default() {
            if let Some(task) = task.as_str() {
                let finished = self
                    .source
                    .get_record::<TaskRecord>(task)
                    .await
                    .is_ok_and(|t| t.status.is_finished());
                if finished {
                    let _ = self.source.destroy_task(task).await;
                }
            }
        }
    }
}

/// A VM's mode from its disks': `full`, `delta`, or `mixed`.
fn mode_of(disks: &[DiskCheck]) -> &'static str {
    if disks.iter().all(|d| d.mode == "full") {
        "full"
    } else if disks.iter().all(|d| d.mode == "delta") {
        "delta"
    } else {
        "mixed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(mode: &'static str) -> DiskCheck {
        DiskCheck {
            userdevice: "0".into(),
            vdi: "v".into(),
            mode,
            virtual_size: 1,
            estimated_bytes: None,
            estimate: String::new(),
        }
    }

    #[test]
    fn a_vm_is_full_delta_or_mixed_by_its_disks() {
        assert_eq!(mode_of(&[disk("full"), disk("full")]), "full");
        assert_eq!(mode_of(&[disk("delta")]), "delta");
        assert_eq!(mode_of(&[disk("delta"), disk("full")]), "mixed");
    }

    #[test]
    fn no_password_and_an_empty_one_are_missing_before_any_login() {
        let url = crate::xapi::HostUrl::parse("https://root@t").unwrap();
        let mut login = HostLogin::new(url, crate::xapi::tls::Trust::Insecure);
        login.password_env = Some("VHDSYNC_TEST_PREFLIGHT_UNSET".into());
        let error = check_password(&login, Side::Target).unwrap_err();
        assert!(
            matches!(&error, PreflightError::MissingPassword { empty_file: None, env, .. } if env == "VHDSYNC_TEST_PREFLIGHT_UNSET"),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "\n").unwrap();
        login.password_file = Some(file.clone());
        let error = check_password(&login, Side::Target).unwrap_err();
        assert!(error.to_string().contains("is empty"), "{error}");
        std::fs::write(&file, "secret\n").unwrap();
        assert!(check_password(&login, Side::Target).is_ok());
        login.password_file = Some(dir.path().join("absent"));
        let error = check_password(&login, Side::Target).unwrap_err();
        assert!(matches!(error, PreflightError::Connect { .. }), "{error}");
        assert!(
            error.is_config(),
            "an unreadable password file is the job's to fix"
        );
    }

    #[test]
    fn configuration_errors_are_told_from_host_failures() {
        let missing = PreflightError::MissingPassword {
            side: Side::Target,
            host: "https://t:443".into(),
            env: "VHDSYNC_TARGET_PASSWORD".into(),
            empty_file: None,
        };
        let text = missing.to_string();
        for part in [
            "target_password_file",
            "VHDSYNC_TARGET_PASSWORD",
            "https://t:443",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(missing.is_config());
        let untrusted = PreflightError::Untrusted {
            side: Side::Source,
            url: "https://s:443".into(),
            source: TransportError::Tls {
                host: "https://s:443".into(),
                message: "invalid peer certificate: UnknownIssuer".into(),
            },
        };
        let text = untrusted.to_string();
        assert!(text.contains("vhdsync trust https://s:443"), "{text}");
        assert!(text.contains("tls.source_fingerprint"), "{text}");
        assert!(untrusted.is_config());
        let host = PreflightError::Host {
            what: "reading target_sr x".into(),
            source: ClientError::Transport(TransportError::Http {
                host: "https://t:443".into(),
                message: "reset".into(),
            }),
        };
        assert!(!host.is_config());
        let sr = PreflightError::SrNotWritable {
            host: "h".into(),
            sr: "s".into(),
            name: "n".into(),
            allowed: vec![],
        };
        assert!(sr.to_string().contains("operations: none"), "{sr}");
    }
}
