//! What one `vhdsync replicate` cycle of a one-disk VM costs its two hosts in XAPI calls: a
//! delta cycle and a no-change cycle stay within a budget just above what they take now, and
//! no list of a whole class (`*.get_all_records`) is read more often than the cycle needs
//! (the checks, the lease, the clean-up, the planning and the retention each need theirs).
//! The calls are counted from the client's trace of each request, by host and method.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::lab_pair::{BIN, Host, MIB, write_job};

/// Which host a call went to, and its method.
type Calls = BTreeMap<(&'static str, String), u32>;

/// The calls of a delta cycle (the checks and the lease included), and of a no-change
/// cycle, which also destroys the restore point beyond the retention: what these cycles
/// took when the budget was set (132 and 136), plus two for a rare retried read. A listing
/// read once too often stays within these; [`LISTINGS`] catches it.
const DELTA_BUDGET: u64 = 134;
const NO_CHANGE_BUDGET: u64 = 138;

/// The lists of a whole class a cycle reads, at most, on each host: on the target the VMs
/// once for the clean-up and the planning and once for the retention (after the commit
/// changed them), the VDIs once for the checks and once for the clean-up and the planning,
/// the VBDs once for the checks and once for the planning; on both, the networks and their
/// PIFs for the checks and for the cycle; on the source the VDIs for the sweep of orphaned
/// snapshot disks, and the pool for the lease's clock.
const LISTINGS: [(&str, &str, u32); 10] = [
    ("target", "VM.get_all_records", 2),
    ("target", "VDI.get_all_records", 2),
    ("target", "VBD.get_all_records", 2),
    ("target", "network.get_all_records", 2),
    ("target", "PIF.get_all_records", 2),
    ("source", "VDI.get_all_records", 1),
    ("source", "network.get_all_records", 2),
    ("source", "PIF.get_all_records", 2),
    ("source", "pool.get_all_records", 1),
    ("source", "VM.get_all_records", 0),
];

/// One `replicate --json` of the job with the client's trace on: the run's own count of its
/// calls, and the calls by host and method.
async fn counted_cycle(job: &Path, source: &Host, target: &Host) -> (u64, Calls) {
    let out = tokio::process::Command::new(BIN)
        .args(["replicate", "--json", "--job", job.to_str().unwrap()])
        .env("VHDSYNC_LOG", "vhdsync::xapi::client=trace")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replicate failed: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &json["vms"][0]["report"];
    assert!(report["mode"] == "delta", "not a delta cycle: {json}");
    let hosts = [
        ("source", source.server.base_url()),
        ("target", target.server.base_url()),
    ];
    let mut calls = Calls::new();
    for line in stderr.lines().filter(|l| l.contains(" RPC ")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_default()
                .to_owned()
        };
        let host = field("host=");
        let role = hosts
            .iter()
            .find(|(_, url)| url.trim_end_matches('/') == host.trim_end_matches('/'))
            .map(|(role, _)| *role)
            .unwrap_or_else(|| panic!("a call to neither host: {line}"));
        *calls.entry((role, field("method="))).or_default() += 1;
    }
    (json["rpc_calls"].as_u64().unwrap(), calls)
}

/// The calls as a table, for a failure's message.
fn table(calls: &Calls) -> String {
    calls
        .iter()
        .map(|((role, method), n)| format!("{n:4} {role} {method}\n"))
        .collect()
}

fn check_budget(cycle: &str, counted: &(u64, Calls), budget: u64) {
    let (total, calls) = counted;
    // The trace sees the two logouts after the run's count was taken.
    let traced: u64 = calls.values().map(|n| u64::from(*n)).sum();
    assert_eq!(traced, total + 2, "{cycle}: the trace and the count differ");
    assert!(
        *total <= budget,
        "{cycle}: {total} calls, over the budget of {budget}:\n{}",
        table(calls)
    );
    for (role, method, most) in LISTINGS {
        let read = calls.get(&(role, method.to_owned())).copied().unwrap_or(0);
        assert!(
            read <= most,
            "{cycle}: {method} read {read} times on the {role}, at most {most} needed:\n{}",
            table(calls)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_and_a_no_change_cycle_stay_within_their_call_budgets() {
    let source = Host::start(&[("web01", &[8 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let disk = vm.disks[0].vdi.reference.clone();
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 3);
    std::fs::write(
        &job,
        std::fs::read_to_string(&job).unwrap().replace(
            "state_dir = \"state\"",
            &format!("state_dir = {:?}", dir.path().join("state")),
        ),
    )
    .unwrap();

    source.write(&disk, 0, 4 * MIB, Some(1)).await;
    let out = tokio::process::Command::new(BIN)
        .args(["replicate", "--json", "--job", job.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "the full failed: {out:?}");

    source.write(&disk, MIB, MIB, Some(2)).await;
    let delta = counted_cycle(&job, &source, &target).await;
    check_budget("the delta cycle", &delta, DELTA_BUDGET);

    // The third cycle leaves three restore points; the fourth destroys the oldest.
    counted_cycle(&job, &source, &target).await;
    let no_change = counted_cycle(&job, &source, &target).await;
    check_budget("the no-change cycle", &no_change, NO_CHANGE_BUDGET);
}
