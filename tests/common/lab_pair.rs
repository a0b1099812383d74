//! Lab hosts served in-process (a source and a target), a job file for them, and the
//! `vhdsync` binary run against them: what the tests that drive whole cycles share (seeding,
//! failover, the fault campaign, secrets, concurrency, hostile input).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tempfile::TempDir;
use vhdsync::lab::http::LabServer;
use vhdsync::lab::{InitReport, Lab};
use vhdsync::replicate::keys;
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::XapiClient;
use vhdsync::xapi::records::{VbdRecord, VdiRecord, VmRecord};
use vhdsync::xapi::rpc::Value;
use vhdsync::xapi::tls::Trust;

pub const MIB: u64 = 1 << 20;
pub const BIN: &str = env!("CARGO_BIN_EXE_vhdsync");

pub struct Host {
    _dir: TempDir,
    /// root's password, percent-encoded in [`Host::url`].
    pub password: String,
    pub server: LabServer,
    pub client: XapiClient,
    pub report: InitReport,
}

impl Host {
    /// A lab host (user root, password `lab`) with halted VMs of the given disk sizes.
    pub async fn start(vms: &[(&str, &[u64])]) -> Host {
        Host::start_with_password(vms, "lab").await
    }

    pub async fn start_with_password(vms: &[(&str, &[u64])], password: &str) -> Host {
        let dir = scratch_dir();
        let vms: Vec<(String, Vec<u64>)> = vms
            .iter()
            .map(|(n, d)| ((*n).to_owned(), d.to_vec()))
            .collect();
        let report = Lab::init(dir.path(), password, &vms).unwrap();
        let lab = Lab::open(dir.path()).unwrap();
        let server = LabServer::start(lab, "127.0.0.1:0".parse().unwrap(), false)
            .await
            .unwrap();
        let client = XapiClient::connect(
            HostUrl::parse(&url(&server, password)).unwrap(),
            &Trust::Insecure,
            None,
        )
        .await
        .unwrap();
        Host {
            _dir: dir,
            password: password.to_owned(),
            server,
            client,
            report,
        }
    }

    pub fn url(&self) -> String {
        url(&self.server, &self.password)
    }

    pub async fn call(&self, method: &str, params: Vec<Value>) -> Value {
        self.client
            .call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    pub async fn text(&self, method: &str, params: &[&str]) -> String {
        let params = params.iter().map(|p| Value::from(*p)).collect();
        self.call(method, params)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Guest writes of `len` pseudo-random bytes (`seed`) at `offset`, or zeros when `seed`
    /// is `None`.
    pub async fn write(&self, vdi: &str, offset: u64, len: u64, seed: Option<u64>) {
        let data = match seed {
            Some(seed) => Value::Int(seed as i64),
            None => Value::from("zero"),
        };
        let params = vec![
            Value::from(vdi),
            Value::Int(offset as i64),
            Value::Int(len as i64),
            data,
        ];
        self.call("lab.write", params).await;
    }

    pub async fn hash(&self, vdi: &str) -> String {
        self.text("lab.hash", &[vdi]).await
    }

    pub async fn vms(&self) -> Vec<(String, VmRecord)> {
        self.client.get_all_records::<VmRecord>().await.unwrap()
    }

    /// The replicas on this host (committed or not): VMs carrying `xo:backup:job`, no snapshots.
    pub async fn replicas(&self) -> Vec<(String, VmRecord)> {
        self.vms()
            .await
            .into_iter()
            .filter(|(_, vm)| !vm.is_a_snapshot && vm.other_config.contains_key(keys::JOB))
            .collect()
    }

    /// The target snapshots of the current layout: snapshots carrying a job's keys.
    pub async fn target_snapshots(&self) -> Vec<(String, VmRecord)> {
        self.vms()
            .await
            .into_iter()
            .filter(|(_, vm)| vm.is_a_snapshot && vm.other_config.contains_key(keys::JOB))
            .collect()
    }

    /// The VM a host's snapshots were taken of, for live replicas: those with snapshots.
    pub async fn live_replicas(&self) -> Vec<(String, VmRecord)> {
        let snapshots = self.target_snapshots().await;
        self.vms()
            .await
            .into_iter()
            .filter(|(reference, vm)| {
                !vm.is_a_snapshot && snapshots.iter().any(|(_, s)| s.snapshot_of == *reference)
            })
            .collect()
    }

    pub async fn vm(&self, reference: &str) -> VmRecord {
        self.client.get_record(reference).await.unwrap()
    }

    /// A VM's disks: (userdevice, VDI ref, VDI record), by userdevice.
    pub async fn disks(&self, vm_ref: &str) -> Vec<(String, String, VdiRecord)> {
        let vm: VmRecord = self.client.get_record(vm_ref).await.unwrap();
        let mut disks = Vec::new();
        for vbd in &vm.vbds {
            let vbd: VbdRecord = self.client.get_record(vbd).await.unwrap();
            if vbd.is_disk() {
                let vdi: VdiRecord = self.client.get_record(&vbd.vdi).await.unwrap();
                disks.push((vbd.userdevice, vbd.vdi, vdi));
            }
        }
        disks.sort_by(|a, b| a.0.cmp(&b.0));
        disks
    }

    /// The managed VDIs: disks, not the hidden chain parents the SR keeps as unmanaged VDIs.
    pub async fn vdi_count(&self) -> usize {
        self.client
            .get_all_records::<VdiRecord>()
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, vdi)| vdi.managed)
            .count()
    }

    /// `VM.snapshot`: the snapshot's reference.
    pub async fn snapshot(&self, vm_ref: &str, name: &str) -> String {
        self.text("VM.snapshot", &[vm_ref, name]).await
    }

    /// `lab.inject_fault` with the spec's members.
    pub async fn inject(&self, members: Vec<(&str, Value)>) {
        let spec = members
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        self.call("lab.inject_fault", vec![Value::Struct(spec)])
            .await;
    }

    pub async fn clear_faults(&self) {
        self.call("lab.clear_faults", vec![]).await;
    }

    /// A VM's disks: userdevice -> VDI uuid.
    pub async fn disk_uuids(&self, vm_ref: &str) -> BTreeMap<String, String> {
        self.disks(vm_ref)
            .await
            .into_iter()
            .map(|(userdevice, _, vdi)| (userdevice, vdi.uuid))
            .collect()
    }

    /// Managed VDIs no VM uses: leaks. Hidden chain parents are the SR's, not leaks.
    pub async fn unused_vdis(&self) -> Vec<String> {
        self.unused_vdi_records()
            .await
            .into_iter()
            .map(|vdi| format!("{} ({})", vdi.uuid, vdi.name_label))
            .collect()
    }

    /// The managed VDIs no VM's VBD uses, whole.
    pub async fn unused_vdi_records(&self) -> Vec<VdiRecord> {
        let mut used = BTreeSet::new();
        for (reference, _) in &self.vms().await {
            used.extend(self.disk_uuids(reference).await.into_values());
        }
        self.client
            .get_all_records::<VdiRecord>()
            .await
            .unwrap()
            .into_iter()
            .map(|(_, vdi)| vdi)
            .filter(|vdi| vdi.managed && !used.contains(&vdi.uuid))
            .collect()
    }
}

/// The lab hosts' SRs fsync every VDI change, which dominates a long campaign on a disk: in
/// memory (`/dev/shm`) where there is one.
pub fn scratch_dir() -> TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// The server's URL with root's password percent-encoded, as XO's docs tell users to write.
pub fn url(server: &LabServer, password: &str) -> String {
    let password = utf8_percent_encode(password, NON_ALPHANUMERIC);
    server
        .base_url()
        .replacen("://", &format!("://root:{password}@"), 1)
}

/// A job file `job.toml` in `dir` replicating `vm` from `source` to `target`'s SR.
pub fn write_job(dir: &Path, source: &Host, target: &Host, vm: &str, retention: u32) -> PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"cr\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\nvms = [\"{vm}\"]\nretention = {retention}\nstate_dir = \"state\"\n",
            source.url(),
            target.url(),
            target.report.sr.uuid,
        ),
    )
    .unwrap();
    path
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: serde_json::Value,
}

/// Run the binary (as `program`, e.g. a symlink named xo-cr-seed) with `args`.
pub async fn run_as(program: &Path, args: &[&str]) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("vhdsync finishes")
    .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn vhdsync(args: &[&str]) -> Run {
    run_as(Path::new(BIN), args).await
}

/// `replicate --json` of the job, which must succeed: the one VM's report.
pub async fn replicate(job: &Path) -> serde_json::Value {
    let run = vhdsync(&["replicate", "--job", job.to_str().unwrap(), "--json"]).await;
    assert_eq!(
        run.code, 0,
        "replicate failed: {} {}",
        run.stdout, run.stderr
    );
    run.json["vms"][0]["report"].clone()
}

/// Every disk of a cycle report holds the content of the source snapshot VDI it came from.
pub async fn check_replica_matches(source: &Host, target: &Host, report: &serde_json::Value) {
    for disk in report["disks"].as_array().unwrap() {
        let ours = target.hash(disk["replica_vdi"].as_str().unwrap()).await;
        let theirs = source.hash(disk["source_vdi"].as_str().unwrap()).await;
        assert_eq!(
            ours, theirs,
            "disk {} of replica {}",
            disk["userdevice"], report["replica"]
        );
    }
}
