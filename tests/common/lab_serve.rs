//! One lab host served on a free local port, with a client logged in to it: what the lab's
//! own integration tests start from.

use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;
use vhdsync::lab::http::LabServer;
use vhdsync::lab::{InitConfig, InitReport, Lab, VmSpec};
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::{ClientError, XapiClient};
use vhdsync::xapi::rpc::{Value, XapiFault};
use vhdsync::xapi::tls::Trust;

/// The root password the lab tests initialise their labs with.
pub const PASSWORD: &str = "lab";

/// Serve the lab initialised in `dir` (HTTPS with its self-signed certificate when `tls`)
/// and log in as root.
pub async fn serve(dir: &Path, tls: bool) -> (Lab, LabServer, XapiClient) {
    let lab = Lab::open(dir).unwrap();
    let server = LabServer::start(lab.clone(), "127.0.0.1:0".parse().unwrap(), tls)
        .await
        .unwrap();
    let client = login(&server.base_url()).await;
    (lab, server, client)
}

/// Log in as root to the lab at `base_url`, trusting any certificate.
pub async fn login(base_url: &str) -> XapiClient {
    let url = base_url.replacen("://", &format!("://root:{PASSWORD}@"), 1);
    XapiClient::connect(HostUrl::parse(&url).unwrap(), &Trust::Insecure, None)
        .await
        .unwrap()
}

/// A lab host in a temporary directory, served, and a logged-in client of it. Test files add
/// their own helpers in `impl LabHost` blocks of their own.
pub struct LabHost {
    pub dir: TempDir,
    /// The served lab, to save its state on demand.
    pub lab: Lab,
    pub server: LabServer,
    pub client: XapiClient,
    pub report: InitReport,
    tls: bool,
}

impl LabHost {
    /// A host with VMs as `specs` describe them (`NAME:ITEM,...`, as `lab init --vm`).
    pub async fn start(specs: &[&str], config: &InitConfig, tls: bool) -> LabHost {
        let dir = tempfile::tempdir().unwrap();
        let specs: Vec<VmSpec> = specs.iter().map(|s| s.parse().unwrap()).collect();
        let report = Lab::init_with_config(dir.path(), PASSWORD, &specs, config).unwrap();
        LabHost::serve(dir, report, tls).await
    }

    async fn serve(dir: TempDir, report: InitReport, tls: bool) -> LabHost {
        let (lab, server, client) = serve(dir.path(), tls).await;
        LabHost {
            dir,
            lab,
            server,
            client,
            report,
            tls,
        }
    }

    /// Save the state now, stop serving and let go of the lab.
    pub async fn stop(self) -> (TempDir, InitReport) {
        self.lab.flush().unwrap();
        drop(self.client);
        self.server.shutdown(Duration::from_secs(1)).await;
        drop(self.lab);
        (self.dir, self.report)
    }

    /// Stop, then serve the lab again from its files.
    pub async fn restart(self) -> LabHost {
        let tls = self.tls;
        let (dir, report) = self.stop().await;
        LabHost::serve(dir, report, tls).await
    }

    /// The call's result or XAPI's fault; any other failure fails the test.
    pub async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, XapiFault> {
        match self.client.call(method, params).await {
            Ok(value) => Ok(value),
            Err(ClientError::Xapi { fault, .. }) => Err(fault),
            Err(other) => panic!("{method}: {other}"),
        }
    }

    pub async fn ok(&self, method: &str, params: Vec<Value>) -> Value {
        self.call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    pub async fn text(&self, method: &str, params: Vec<Value>) -> String {
        let value = self.ok(method, params).await;
        value
            .as_str()
            .unwrap_or_else(|| panic!("{method} gave {value:?}"))
            .to_owned()
    }

    pub async fn fault(&self, method: &str, params: Vec<Value>) -> XapiFault {
        self.call(method, params)
            .await
            .expect_err(&format!("{method} should fail"))
    }

    /// The reference of the VM `lab init` made with this name.
    pub fn vm_named(&self, name: &str) -> String {
        let vm = self.report.vms.iter().find(|vm| vm.name == name).unwrap();
        vm.ids.reference.clone()
    }

    /// The first VM's first disk.
    pub fn first_vdi(&self) -> String {
        self.report.vms[0].disks[0].vdi.reference.clone()
    }
}
