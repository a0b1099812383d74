//! Real third-party XAPI clients against lab hosts served by `vhdsync lab serve`: the npm
//! `xen-api` client (events on and off, JSON-RPC and XML-RPC) and the `xo-cr-seed` CLI of
//! `@xen-orchestra/cr-seed-cli`, installed at test time with `npm ci` from the lockfile in
//! `tests/npm`. The Node scripts there drive the clients and print what they saw as JSON;
//! this test checks it against what the lab hosts hold, read with vhdsync's own client.
//!
//! Without `node`/`npm`, or when `npm ci` cannot reach the registry, the tests print a note
//! and pass, unless `VHDSYNC_REQUIRE_NPM_CLIENTS` is set (`.ci/run` sets it), where they fail.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value as Json, json};
use tempfile::TempDir;
use uuid::Uuid;

use common::npm::{CLIENT_TIMEOUT, clients, node, run_with_timeout};
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::XapiClient;
use vhdsync::xapi::rpc::Value;
use vhdsync::xapi::tls::Trust;

/// Needs percent-encoding in a URL: checks that the clients decode credentials as XO does.
const PASSWORD: &str = "l@b pass/#?";
const BLOCKED: &str = "Start operation for this vm is blocked, clone it if you want to use it.";

// ---------------------------------------------------------------------------------------
// Lab hosts

/// A lab host made by `vhdsync lab init` and served by `vhdsync lab serve`, with a session
/// of vhdsync's own client to check what the third-party clients did.
struct LabHost {
    dir: TempDir,
    server: Child,
    /// The base URL with the credentials, as the clients take it.
    url: String,
    /// What `lab init --json` reported.
    init: Json,
    runtime: tokio::runtime::Runtime,
    client: XapiClient,
}

impl LabHost {
    /// A host with one halted VM per `(name, disk sizes)`, e.g. `("web01", "8M,4M")`.
    fn start(vms: &[(&str, &str)]) -> LabHost {
        let dir = tempfile::tempdir().unwrap();
        let mut init = Command::new(env!("CARGO_BIN_EXE_vhdsync"));
        init.args(["lab", "init", "--json", "--password", PASSWORD, "--dir"])
            .arg(dir.path());
        for (name, sizes) in vms {
            init.arg("--vm").arg(format!("{name}:{sizes}"));
        }
        let output = run_with_timeout(&mut init, CLIENT_TIMEOUT);
        assert!(output.success, "lab init failed:\n{}", output.stderr);
        let init: Json = serde_json::from_str(&output.stdout).unwrap_or_else(|e| {
            panic!("lab init --json printed no JSON ({e}):\n{}", output.stdout)
        });

        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut server = Command::new(env!("CARGO_BIN_EXE_vhdsync"))
            .args(["lab", "serve", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("cannot start vhdsync lab serve");
        let base = first_line(&mut server, Duration::from_secs(30));
        let (scheme, authority) = base
            .split_once("://")
            .unwrap_or_else(|| panic!("lab serve printed {base:?}, not a URL"));
        let password = utf8_percent_encode(PASSWORD, NON_ALPHANUMERIC);
        let url = format!("{scheme}://root:{password}@{authority}");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let host_url = HostUrl::parse(&url).unwrap();
        let client = runtime
            .block_on(XapiClient::connect(host_url, &Trust::SystemRoots, None))
            .unwrap_or_else(|e| panic!("vhdsync's client cannot log in to {base}: {e}"));
        LabHost {
            dir,
            server,
            url,
            init,
            runtime,
            client,
        }
    }

    fn call(&self, method: &str, params: &[&str]) -> Value {
        let params = params.iter().map(|p| Value::from(*p)).collect();
        self.runtime
            .block_on(self.client.call(method, params))
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// A result that is text: a string, or a datetime (which XML-RPC types, JSON does not).
    fn text(&self, method: &str, params: &[&str]) -> String {
        let value = self.call(method, params);
        value
            .as_datetime()
            .unwrap_or_else(|| panic!("{method} gave {value:?}, not text"))
            .to_owned()
    }

    /// The `init` report's entry for the VM named `name`.
    fn vm(&self, name: &str) -> &Json {
        self.init["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|vm| vm["name"] == name)
            .unwrap_or_else(|| panic!("lab init reported no VM {name}: {}", self.init))
    }

    /// A VM's disks as `userdevice -> VDI uuid`, read through its VBDs.
    fn disks(&self, vm_ref: &str) -> BTreeMap<String, String> {
        let vbds = self.call("VM.get_VBDs", &[vm_ref]);
        vbds.as_array()
            .unwrap()
            .iter()
            .map(|vbd| {
                let vbd = self.call("VBD.get_record", &[vbd.as_str().unwrap()]);
                let vdi = vbd.get("VDI").unwrap().as_str().unwrap();
                (
                    vbd.get("userdevice").unwrap().as_str().unwrap().to_owned(),
                    self.text("VDI.get_uuid", &[vdi]),
                )
            })
            .collect()
    }

    fn other_config(&self, vm_ref: &str) -> BTreeMap<String, String> {
        string_map(&self.call("VM.get_other_config", &[vm_ref]))
    }
}

impl Drop for LabHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("serve.log"));
            eprintln!("lab serve log:\n{}", log.unwrap_or_default());
        }
    }
}

/// The first line a child prints on stdout; the rest is drained so it never blocks.
fn first_line(child: &mut Child, timeout: Duration) -> String {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = sender.send(line);
        }
    });
    match receiver.recv_timeout(timeout) {
        Ok(Ok(line)) => line.trim().to_owned(),
        other => panic!("lab serve printed no URL within {timeout:?}: {other:?}"),
    }
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_struct()
        .unwrap_or_else(|| panic!("{value:?} is not a map"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

fn json_string_map(value: &Json) -> BTreeMap<String, String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not a map"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// npm `xen-api`

/// Run `xen-api-client.mjs` on a fresh host and check it against the host: the VM list, the
/// `other_config` maps it read back after its writes and removals, the `MAP_DUPLICATE_KEY`
/// it got, and (with events) the snapshot it took with `callAsync`.
fn check_xen_api(events: bool, transport: &str) {
    let Some(clients) = clients() else { return };
    let host = LabHost::start(&[("web01", "8M,4M"), ("db01", "4M")]);
    let vm = host.vm("web01");
    let (vm_ref, vm_uuid) = (vm["ref"].as_str().unwrap(), vm["uuid"].as_str().unwrap());
    let before = host.other_config(vm_ref);
    let listed_before: BTreeSet<(String, String, bool)> = host
        .call("VM.get_all_records", &[])
        .as_struct()
        .unwrap()
        .values()
        .map(|vm| {
            let field = |name| vm.get(name).unwrap().as_str().unwrap().to_owned();
            let snapshot = vm.get("is_a_snapshot").unwrap().as_bool().unwrap();
            (field("uuid"), field("name_label"), snapshot)
        })
        .collect();
    let nonce = Uuid::new_v4().to_string();

    let seen = node(
        clients,
        "xen-api-client.mjs",
        &[
            ("url", &host.url),
            ("vm", vm_uuid),
            ("nonce", &nonce),
            ("events", if events { "on" } else { "off" }),
            ("transport", transport),
        ],
    );

    assert_eq!(seen["pool"]["uuid"], host.init["pool"]["uuid"]);
    let listed: BTreeSet<(String, String, bool)> = seen["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            let field = |name: &str| vm[name].as_str().unwrap().to_owned();
            (
                field("uuid"),
                field("name_label"),
                vm["is_a_snapshot"] == true,
            )
        })
        .collect();
    assert_eq!(listed, listed_before);
    assert_eq!(seen["vm"], vm_ref);

    let key = |name: &str| format!("vhdsync-test:{nonce}:{name}");
    let value = |name: &str| format!("{name} {nonce}");
    let with = |entries: &[(&str, &str)]| {
        let mut map = before.clone();
        map.extend(entries.iter().map(|(k, v)| (key(k), value(v))));
        map
    };
    let entries = [("entries-a", "entries-a"), ("entries-b", "entries-b")];
    let mut written = vec![("call", "call"), ("helper", "helper again")];
    written.extend(entries);
    assert_eq!(json_string_map(&seen["afterSet"]), with(&written));
    assert_eq!(
        seen["duplicate"],
        json!({"code": "MAP_DUPLICATE_KEY", "params": ["VM", "other_config", vm_ref, key("call")]})
    );
    let kept = with(&entries);
    assert_eq!(json_string_map(&seen["afterRemove"]), kept);
    // What another client reads now: the writes really happened on the host.
    assert_eq!(host.other_config(vm_ref), kept);

    if events {
        let snapshot = &seen["snapshot"];
        let snapshot_ref = snapshot["ref"].as_str().unwrap();
        let record = host.call("VM.get_record", &[snapshot_ref]);
        let field = |name| record.get(name).unwrap().as_str().unwrap();
        assert_eq!(snapshot["uuid"], field("uuid"));
        assert_eq!(snapshot["name_label"], format!("snapshot {nonce}"));
        assert_eq!(snapshot["name_label"], field("name_label"));
        assert_eq!(snapshot["is_a_snapshot"], true);
        assert_eq!(snapshot["snapshot_of"], vm_ref);
        assert_eq!(field("snapshot_of"), vm_ref);
    } else {
        assert!(seen["snapshot"].is_null());
    }
}

#[test]
fn npm_xen_api_with_events_over_json_rpc() {
    check_xen_api(true, "json-rpc");
}

#[test]
fn npm_xen_api_with_events_over_xml_rpc() {
    check_xen_api(true, "xml-rpc");
}

/// With `auto`, the client picks JSON-RPC only if `/jsonrpc` answers with exactly
/// `application/json`; either way the results must be the same.
#[test]
fn npm_xen_api_without_events() {
    check_xen_api(false, "auto");
}

/// `datamodel.mjs`: the explicit VM setters Xen Orchestra's replica update calls, a walk of a
/// VHD chain through its hidden parents, which must be unmanaged VDI records, and a network
/// and a VIF created and read back.
#[test]
fn npm_xen_api_sets_vm_fields_and_walks_vhd_chains() {
    let Some(clients) = clients() else { return };
    let host = LabHost::start(&[("web01", "8M,4M")]);
    let vm = host.vm("web01");
    let (vm_ref, vm_uuid) = (vm["ref"].as_str().unwrap(), vm["uuid"].as_str().unwrap());

    let seen = node(
        clients,
        "datamodel.mjs",
        &[("url", &host.url), ("vm", vm_uuid)],
    );

    assert_eq!(seen["vm"], vm_ref);
    let record = host.call("VM.get_record", &[vm_ref]);
    let int = |name| record.get(name).unwrap().as_i64().unwrap();
    assert_eq!(
        record.get("has_vendor_device").unwrap().as_bool(),
        Some(true)
    );
    assert_eq!(
        (int("order"), int("shutdown_delay"), int("start_delay")),
        (3, 7, 11)
    );
    assert_eq!(
        seen["updated"],
        json!({
            "has_vendor_device": true,
            "order": 3,
            "shutdown_delay": 7,
            "start_delay": 11,
            "allowed_operations": ["clone", "destroy", "snapshot", "start", "start_on"],
        })
    );

    // The first snapshot froze the disk's original VHD (the base, no parent); the second
    // froze the child the disk had continued on. The walk meets them newest first.
    let chain = seen["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2, "{chain:?}");
    for hidden in chain {
        assert_eq!(hidden["managed"], false, "{hidden}");
        assert_eq!(hidden["read_only"], true, "{hidden}");
        assert_eq!(hidden["is_a_snapshot"], false, "{hidden}");
        assert_eq!(hidden["VBDs"], json!([]), "{hidden}");
    }
    assert_eq!(chain[0]["vhd_parent"], chain[1]["uuid"]);
    assert_eq!(chain[1]["vhd_parent"], Json::Null);
    // Each snapshot builds on the parent frozen when it was taken, as the host says too.
    let snapshots = seen["snapshots"].as_array().unwrap();
    let vhd_parent = |uuid: &str| {
        let vdi = host.call("VDI.get_by_uuid", &[uuid]);
        let config = string_map(&host.call("VDI.get_sm_config", &[vdi.as_str().unwrap()]));
        config.get("vhd-parent").cloned().unwrap_or_default()
    };
    assert_eq!(vhd_parent(snapshots[0].as_str().unwrap()), chain[1]["uuid"]);
    assert_eq!(vhd_parent(snapshots[1].as_str().unwrap()), chain[0]["uuid"]);
    assert_eq!(vhd_parent(seen["disk"].as_str().unwrap()), chain[0]["uuid"]);

    // The network and VIF it created, as it read them back and as the host has them.
    let networking = &seen["networking"];
    let (network, vif) = (
        networking["network"].as_str().unwrap(),
        networking["vif"].as_str().unwrap(),
    );
    assert_eq!(
        networking["network_record"],
        json!({"name_label": "npm network", "MTU": 9000, "bridge": "xapi0",
               "VIFs": [vif], "PIFs": []})
    );
    let read = &networking["vif_record"];
    assert_eq!(read["device"], "3");
    assert_eq!(read["network"], network);
    assert_eq!(read["VM"], vm_ref);
    assert_eq!(read["MAC_autogenerated"], true);
    assert_eq!(read["MTU"], 9000);
    assert_eq!(read["other_config"], json!({"origin": "npm"}));
    assert_eq!(networking["vm_vifs"], json!([vif]));
    let mac = read["MAC"].as_str().unwrap();
    assert_eq!(host.call("VIF.get_MAC", &[vif]).as_str(), Some(mac));
    assert_eq!(mac.len(), 17, "{mac}");
    assert_eq!(
        host.call("network.get_name_label", &[network]).as_str(),
        Some("npm network")
    );
}

// ---------------------------------------------------------------------------------------
// xo-cr-seed

/// One change `cr-seed.mjs` reports: host, class, object uuid, field, map key, before and
/// after, `None` standing for absent.
type Change = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A reported value as text: strings as they are, `null` as `None`, anything else (a whole
/// record, when an object appeared) as JSON text.
fn text_or_none(value: &Json) -> Option<String> {
    match value {
        Json::Null => None,
        Json::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// The real `xo-cr-seed` on a source snapshot and a target VM with the same disks: it must
/// succeed and write exactly the keys of xo-replication.md §13.4, on exactly those objects,
/// and change nothing else on either host.
#[test]
fn xo_cr_seed_writes_exactly_the_documented_keys() {
    let Some(clients) = clients() else { return };
    let source = LabHost::start(&[("web01", "8M,4M")]);
    let target = LabHost::start(&[("replica", "8M,4M")]);
    let source_vm = source.vm("web01");
    let source_vm_uuid = source_vm["uuid"].as_str().unwrap();
    let snapshot_ref = source.text(
        "VM.snapshot",
        &[source_vm["ref"].as_str().unwrap(), "seed base"],
    );
    let snapshot_uuid = source.text("VM.get_uuid", &[&snapshot_ref]);
    let snapshot_time = source.text("VM.get_snapshot_time", &[&snapshot_ref]);
    let snapshot_disks = source.disks(&snapshot_ref);
    let target_vm = target.vm("replica");
    let target_vm_uuid = target_vm["uuid"].as_str().unwrap();
    let target_disks = target.disks(target_vm["ref"].as_str().unwrap());
    assert_eq!(
        snapshot_disks.keys().collect::<Vec<_>>(),
        target_disks.keys().collect::<Vec<_>>(),
        "the target VM must have the source's userdevices"
    );
    let job = Uuid::new_v4().to_string();
    let schedule = Uuid::new_v4().to_string();

    let seen = node(
        clients,
        "cr-seed.mjs",
        &[
            ("source", &source.url),
            ("snapshot", &snapshot_uuid),
            ("target", &target.url),
            ("target-vm", target_vm_uuid),
            ("job", &job),
            ("schedule", &schedule),
        ],
    );

    assert_eq!(seen["bin"]["name"], "xo-cr-seed");
    // On failure the CLI prints "Fatal error: …" and still exits 0: stderr tells.
    assert_eq!(
        seen["cli"],
        json!({"status": 0, "signal": null, "stdout": "", "stderr": ""}),
        "xo-cr-seed failed"
    );

    let change = |host: &str,
                  class: &str,
                  uuid: &str,
                  field: &str,
                  key: Option<&str>,
                  before: Option<&str>,
                  after: &str|
     -> Change {
        (
            host.into(),
            class.into(),
            uuid.into(),
            field.into(),
            key.map(str::to_owned),
            before.map(str::to_owned),
            Some(after.into()),
        )
    };
    let added = |host: &str, class: &str, uuid: &str, field: &str, key: &str, value: &str| {
        change(host, class, uuid, field, Some(key), None, value)
    };
    let backup_keys = [
        ("xo:backup:datetime", snapshot_time.as_str()),
        ("xo:backup:job", job.as_str()),
        ("xo:backup:schedule", schedule.as_str()),
        ("xo:backup:vm", source_vm_uuid),
    ];
    let mut expected = BTreeSet::new();
    // The source snapshot VM: the four backup keys and `exported`; nothing on its VDIs.
    for (key, value) in backup_keys.iter().chain(&[("xo:backup:exported", "true")]) {
        expected.insert(added(
            "source",
            "VM",
            &snapshot_uuid,
            "other_config",
            key,
            value,
        ));
    }
    // The target VM: renamed, the four keys plus `sr` and `copy_of`, start blocked.
    let source_name = source_vm["name"].as_str().unwrap();
    expected.insert(change(
        "target",
        "VM",
        target_vm_uuid,
        "name_label",
        None,
        Some("replica"),
        &format!("{source_name} ({snapshot_time})"),
    ));
    let target_sr = target.init["sr"]["uuid"].as_str().unwrap();
    let target_keys = [("xo:backup:sr", target_sr), ("xo:copy_of", &snapshot_uuid)];
    for (key, value) in backup_keys.iter().chain(&target_keys) {
        expected.insert(added(
            "target",
            "VM",
            target_vm_uuid,
            "other_config",
            key,
            value,
        ));
    }
    for operation in ["start", "start_on"] {
        expected.insert(added(
            "target",
            "VM",
            target_vm_uuid,
            "blocked_operations",
            operation,
            BLOCKED,
        ));
    }
    // Each target disk: `xo:copy_of` = the source snapshot's VDI at the same userdevice.
    for (userdevice, vdi) in &target_disks {
        let copy_of = &snapshot_disks[userdevice];
        expected.insert(added(
            "target",
            "VDI",
            vdi,
            "other_config",
            "xo:copy_of",
            copy_of,
        ));
    }

    let changes: BTreeSet<Change> = seen["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let text = |name: &str| c[name].as_str().unwrap_or("").to_owned();
            (
                text("host"),
                text("class"),
                text("uuid"),
                text("field"),
                text_or_none(&c["key"]),
                text_or_none(&c["before"]),
                text_or_none(&c["after"]),
            )
        })
        .collect();
    let missing: Vec<_> = expected.difference(&changes).collect();
    let unexpected: Vec<_> = changes.difference(&expected).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "xo-cr-seed's writes differ from xo-replication.md §13.4\nmissing: {missing:#?}\nunexpected: {unexpected:#?}"
    );
}
