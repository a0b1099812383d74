//! A lab host served in-process for the integration tests that drive whole cycles (the
//! fault campaign, secrets, concurrency), with the guest and fault calls they use.

// Each test binary uses part of this.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tempfile::TempDir;
use vhdsync::lab::http::LabServer;
use vhdsync::lab::{InitReport, Lab};
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::XapiClient;
use vhdsync::xapi::records::{VbdRecord, VdiRecord, VmRecord};
use vhdsync::xapi::rpc::Value;
use vhdsync::xapi::tls::Trust;

pub struct Host {
    _dir: TempDir,
    pub server: LabServer,
    pub client: XapiClient,
    pub report: InitReport,
}

impl Host {
    /// A lab host with user `root` and `password`, and these VMs (name, disk sizes).
    pub async fn start(password: &str, vms: &[(&str, &[u64])]) -> Host {
        let dir = scratch_dir();
        let vms: Vec<(String, Vec<u64>)> = vms
            .iter()
            .map(|(n, d)| ((*n).to_owned(), d.to_vec()))
            .collect();
        let report = Lab::init(dir.path(), password, &vms).unwrap();
        let server = LabServer::start(
            Lab::open(dir.path()).unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            false,
        )
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
            server,
            client,
            report,
        }
    }

    pub async fn call(&self, method: &str, params: Vec<Value>) -> Value {
        self.client
            .call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    pub async fn hash(&self, vdi: &str) -> String {
        self.call("lab.hash", vec![Value::from(vdi)])
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

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
    pub async fn disks(&self, vm_ref: &str) -> BTreeMap<String, String> {
        let vm: VmRecord = self.client.get_record(vm_ref).await.unwrap();
        let mut disks = BTreeMap::new();
        for vbd in &vm.vbds {
            let vbd: VbdRecord = self.client.get_record(vbd).await.unwrap();
            if vbd.is_disk() {
                let vdi: VdiRecord = self.client.get_record(&vbd.vdi).await.unwrap();
                disks.insert(vbd.userdevice, vdi.uuid);
            }
        }
        disks
    }

    /// VDIs no VM uses: leaks.
    pub async fn unused_vdis(&self) -> Vec<String> {
        let vms = self.client.get_all_records::<VmRecord>().await.unwrap();
        let mut used = BTreeSet::new();
        for (reference, _) in &vms {
            used.extend(self.disks(reference).await.into_values());
        }
        self.client
            .get_all_records::<VdiRecord>()
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, vdi)| !used.contains(&vdi.uuid))
            .map(|(_, vdi)| format!("{} ({})", vdi.uuid, vdi.name_label))
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

/// The host's URL with `root:password` in it.
pub fn url(server: &LabServer, password: &str) -> String {
    server
        .base_url()
        .replacen("://", &format!("://root:{password}@"), 1)
}
