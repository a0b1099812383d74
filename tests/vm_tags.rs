//! Issue 21 item 5: `vms = ["tag:NAME"]` selects the source's VMs carrying the tag, resolved
//! at each run: a VM tagged between two runs joins the next one, the snapshots a run leaves
//! on the source (which carry the VM's tags) are never selected, a tag matching nothing is a
//! warning, and a job selecting nothing fails. `status` reports the VMs the job replicated.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::lab_pair::{Host, MIB, check_replica_matches, vhdsync};

fn job_file(dir: &Path, source: &Host, target: &Host, vms: &str) -> PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"cr\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\n\
             vms = [{vms}]\nretention = 2\nstate_dir = \"state\"\n",
            source.url(),
            target.url(),
            target.report.sr.uuid,
        ),
    )
    .unwrap();
    path
}

fn run_vms(doc: &serde_json::Value) -> BTreeSet<String> {
    doc["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            assert_eq!(vm["status"], "replicated", "{vm}");
            vm["vm"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_selects_the_source_vms_carrying_it_at_each_run() {
    let source = Host::start(&[
        ("web01", &[2 * MIB]),
        ("db01", &[2 * MIB]),
        ("dev01", &[2 * MIB]),
    ])
    .await;
    let target = Host::start(&[]).await;
    let [web, db, dev] = [0, 1, 2].map(|i| source.report.vms[i].ids.clone());
    for (vm, tag) in [(&web, "prod"), (&db, "prod"), (&db, "db"), (&dev, "dev")] {
        source.client.add_vm_tag(&vm.reference, tag).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let job = job_file(
        dir.path(),
        &source,
        &target,
        "\"tag:prod\", \"tag:missing\"",
    );
    let job = job.to_str().unwrap();

    // The dry run plans the tagged VMs and says what a tag left out.
    let plan = vhdsync(&["replicate", "--dry-run", "--json", "--job", job]).await;
    assert_eq!(plan.code, 0, "{} {}", plan.stdout, plan.stderr);
    let planned: BTreeSet<String> = plan.json["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["vm"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(planned, [web.uuid.clone(), db.uuid.clone()].into());
    assert!(
        plan.json["warnings"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(
                "tag:missing matches no VM on the source"
            )),
        "{}",
        plan.stdout
    );

    let first = vhdsync(&["replicate", "--json", "--job", job]).await;
    assert_eq!(first.code, 0, "{} {}", first.stdout, first.stderr);
    let prod: BTreeSet<String> = [web.uuid.clone(), db.uuid.clone()].into();
    assert_eq!(run_vms(&first.json), prod);
    assert_eq!(first.json["tags"][0]["tag"], "prod");
    assert_eq!(first.json["tags"][0]["vms"].as_array().unwrap().len(), 2);
    assert_eq!(first.json["tags"][1]["vms"], serde_json::json!([]));
    assert_eq!(
        first.json["warnings"],
        serde_json::json!(["tag:missing matches no VM on the source"])
    );
    for vm in first.json["vms"].as_array().unwrap() {
        check_replica_matches(&source, &target, &vm["report"]).await;
    }

    // The source snapshots of the first run carry the tag too: not selected. A VM tagged
    // since joins, with a full copy; the others send deltas.
    source
        .client
        .add_vm_tag(&dev.reference, "prod")
        .await
        .unwrap();
    let second = vhdsync(&["replicate", "--json", "--job", job]).await;
    assert_eq!(second.code, 0, "{} {}", second.stdout, second.stderr);
    let all: BTreeSet<String> = [web.uuid.clone(), db.uuid.clone(), dev.uuid.clone()].into();
    assert_eq!(run_vms(&second.json), all);
    for vm in second.json["vms"].as_array().unwrap() {
        let mode = if vm["vm"] == dev.uuid.as_str() {
            "full"
        } else {
            "delta"
        };
        assert_eq!(vm["report"]["mode"], mode, "{vm}");
    }
    // `--vm` accepts a VM the tag selects, and refuses one it does not.
    let one = vhdsync(&["replicate", "--json", "--job", job, "--vm", &dev.uuid]).await;
    assert_eq!(one.code, 0, "{} {}", one.stdout, one.stderr);
    source
        .client
        .remove_vm_tag(&dev.reference, "prod")
        .await
        .unwrap();
    let refused = vhdsync(&["replicate", "--job", job, "--vm", &dev.uuid]).await;
    assert_eq!(refused.code, 2, "{} {}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("neither listed nor carrying"),
        "{}",
        refused.stderr
    );

    // status reads only the target: the VMs this job replicated there.
    let status = vhdsync(&["status", "--json", "--job", job]).await;
    assert_eq!(status.code, 0, "{} {}", status.stdout, status.stderr);
    let reported: BTreeSet<String> = status.json["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["vm"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reported, all);

    // A job selecting nothing fails, naming its tags.
    let nothing = job_file(dir.path(), &source, &target, "\"tag:missing\"");
    let run = vhdsync(&["replicate", "--job", nothing.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{} {}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("no VM matches tag:missing"),
        "{}",
        run.stderr
    );
}
