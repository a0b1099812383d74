use std::path::Path;

use super::*;

const SR: &str = "6f3b8a2e-1c4d-4e5f-9a0b-1c2d3e4f5a6b";
const LISTED: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

fn job(vms: &str) -> Job {
    Job::parse(
        &format!(
            "name = \"cr\"\nsource = \"https://root@src\"\ntarget = \"https://root@dr\"\n\
             target_sr = \"{SR}\"\nvms = [{vms}]\nretention = 2\nstate_dir = \"/tmp/s\"\n"
        ),
        Path::new("/etc/vhdsync/job.toml"),
    )
    .unwrap()
}

fn uuid(n: u8) -> String {
    format!("{n:08x}-0000-4000-8000-000000000000")
}

fn vm(n: u8, tags: &[&str]) -> (String, VmRecord) {
    (
        format!("OpaqueRef:vm{n}"),
        VmRecord {
            uuid: uuid(n),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ..VmRecord::default()
        },
    )
}

#[test]
fn listed_uuids_then_each_tags_vms_each_once() {
    let job = job(&format!("\"{LISTED}\", \"tag:prod\", \"tag:db\""));
    let records = [
        vm(3, &["prod", "db"]),
        vm(1, &["prod"]),
        vm(2, &["Prod", "other"]),
        (
            LISTED_REF.into(),
            VmRecord {
                uuid: LISTED.into(),
                tags: vec!["prod".into()],
                ..VmRecord::default()
            },
        ),
    ];
    let selection = select(&job, &records).unwrap();
    assert_eq!(selection.vms, [LISTED.to_owned(), uuid(1), uuid(3)]);
    assert_eq!(
        selection.tags,
        [
            TagMatch {
                tag: "prod".into(),
                // By UUID.
                vms: vec![uuid(1), uuid(3), LISTED.to_owned()],
            },
            TagMatch {
                tag: "db".into(),
                vms: vec![uuid(3)],
            },
        ]
    );
    assert!(selection.warnings.is_empty(), "{:?}", selection.warnings);
}

const LISTED_REF: &str = "OpaqueRef:listed";

#[test]
fn templates_snapshots_dom0_and_this_jobs_replicas_are_never_selected() {
    let job = job("\"tag:prod\"");
    let mut records = vec![vm(1, &["prod"])];
    let mut template = vm(2, &["prod"]);
    template.1.is_a_template = true;
    let mut snapshot = vm(3, &["prod"]);
    snapshot.1.is_a_snapshot = true;
    snapshot.1.snapshot_of = "OpaqueRef:vm1".into();
    let mut dom0 = vm(4, &["prod"]);
    dom0.1.is_control_domain = true;
    // A classic replica of VM 1 by this job, and a live one known by its snapshot's keys.
    let mut classic = vm(5, &["prod"]);
    classic.1.other_config = [
        (keys::JOB.to_owned(), job.job_id.clone()),
        (keys::VM.to_owned(), uuid(1)),
    ]
    .into();
    let live = vm(6, &["prod"]);
    let mut live_snapshot = vm(7, &["prod"]);
    live_snapshot.1.is_a_snapshot = true;
    live_snapshot.1.snapshot_of = live.0.clone();
    live_snapshot.1.other_config = classic.1.other_config.clone();
    // Another job's replica is a VM like any other here.
    let mut others = vm(8, &["prod"]);
    others.1.other_config = [
        (keys::JOB.to_owned(), uuid(99)),
        (keys::VM.to_owned(), uuid(1)),
    ]
    .into();
    // The source VM's own snapshot carries this job's keys for itself: still selected.
    let mut own_snapshot = vm(9, &[]);
    own_snapshot.1.is_a_snapshot = true;
    own_snapshot.1.snapshot_of = "OpaqueRef:vm1".into();
    own_snapshot.1.other_config = [
        (keys::JOB.to_owned(), job.job_id.clone()),
        (keys::VM.to_owned(), uuid(1)),
    ]
    .into();
    records.extend([
        template,
        snapshot,
        dom0,
        classic,
        live,
        live_snapshot,
        others,
        own_snapshot,
    ]);
    let selection = select(&job, &records).unwrap();
    assert_eq!(selection.vms, [uuid(1), uuid(8)]);
}

#[test]
fn an_empty_tag_warns_and_an_empty_selection_is_an_error() {
    let records = [vm(1, &["prod"])];
    let selection = select(&job("\"tag:prod\", \"tag:gone\""), &records).unwrap();
    assert_eq!(selection.vms, [uuid(1)]);
    assert_eq!(selection.warnings, ["tag:gone matches no VM on the source"]);
    let nothing = select(&job("\"tag:gone\""), &records).unwrap_err();
    assert_eq!(nothing.to_string(), "job \"cr\": no VM matches tag:gone");
}

#[test]
fn a_tagged_vm_whose_uuid_is_not_a_uuid_is_skipped() {
    let mut hostile = vm(1, &["prod"]);
    hostile.1.uuid = "../../etc/passwd".into();
    let records = [hostile, vm(2, &["prod"])];
    let selection = select(&job("\"tag:prod\""), &records).unwrap();
    assert_eq!(selection.vms, [uuid(2)]);
    assert_eq!(
        selection.warnings,
        ["1 tagged VM(s) on the source skipped: their uuid is not a UUID"]
    );
}

#[test]
fn status_reports_the_vms_a_tag_job_replicated() {
    let target_vm = |job_id: &str, vm: &str| TargetVm {
        reference: String::new(),
        uuid: String::new(),
        name_label: String::new(),
        is_a_template: false,
        is_a_snapshot: true,
        snapshot_of: String::new(),
        power_state: String::new(),
        other_config: [
            (keys::JOB.to_owned(), job_id.to_owned()),
            (keys::VM.to_owned(), vm.to_owned()),
        ]
        .into(),
        blocked_operations: Default::default(),
    };
    let tagged = job(&format!("\"{LISTED}\", \"tag:prod\""));
    let on_target = [
        target_vm(&tagged.job_id, &uuid(2)),
        target_vm(&tagged.job_id, &uuid(2)),
        target_vm(&tagged.job_id, LISTED),
        target_vm(&tagged.job_id, "not-a-uuid"),
        target_vm(&uuid(99), &uuid(3)),
    ];
    assert_eq!(
        vms_on_target(&tagged, &on_target),
        [LISTED.to_owned(), uuid(2)]
    );
    let listed = job(&format!("\"{LISTED}\""));
    assert_eq!(vms_on_target(&listed, &on_target), [LISTED.to_owned()]);
}
