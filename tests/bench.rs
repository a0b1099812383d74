//! `vhdsync bench` end to end on a small disk: every row measured, the JSON on stdout equal to
//! the file it leaves, the data deleted, and bad arguments refused with exit 2. The targets
//! are not asserted: they depend on the machine.

use std::process::Command;

const VHDSYNC: &str = env!("CARGO_BIN_EXE_vhdsync");

#[test]
fn a_small_bench_measures_every_row_and_keeps_only_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(VHDSYNC)
        .args(["bench", "--size", "16M", "--runs", "1", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("bench.json")).unwrap())
            .unwrap();
    assert_eq!(document, kept);
    assert_eq!(document["disk_bytes"], 16 << 20);
    assert_eq!(document["changed_bytes"], 4 << 20);
    let rows = document["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "export | cat",
            "apply --no-sync",
            "apply",
            "copy-vdi",
            "full cycle",
            "delta cycle",
            "no-change cycle",
            "full cycle, NBD x1",
            "full cycle, NBD x4",
            "full cycle, NBD x8",
            "delta after 200 x 4 KiB, NBD",
            "changed() 2 TiB delta"
        ]
    );
    // A full over NBD carries every block of the disk; the scattered delta only its 200
    // changed extents of 64 KiB, each with its bitmap, and the BAT.
    assert!(row_bytes(rows, "full cycle, NBD x4") > 16 << 20);
    let scattered = row_bytes(rows, "delta after 200 x 4 KiB, NBD");
    assert!(
        (200 * (64 << 10)..=2 * 200 * (64 << 10) + (1 << 20)).contains(&scattered),
        "{scattered}"
    );
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap();
    let stream = row("export | cat")["ours"]["bytes"].as_u64().unwrap();
    assert!(
        stream > 16 << 20,
        "the stream carries the whole disk: {stream}"
    );
    assert_eq!(row("full cycle")["ours"]["bytes"], stream);
    let delta = row("delta cycle")["ours"]["bytes"].as_u64().unwrap();
    assert!(delta > 4 << 20 && delta < stream / 2, "{delta}");
    for name in [
        "export | cat",
        "apply",
        "copy-vdi",
        "full cycle",
        "no-change cycle",
    ] {
        let rss = row(name)["ours"]["peak_rss_bytes"].as_u64().unwrap();
        assert!(rss > 1 << 20, "{name}: peak RSS {rss}");
        assert_ne!(row(name)["rss_verdict"], "-", "{name}");
    }
    assert!(row("delta cycle")["ratio"].as_f64().unwrap() > 0.0);
    assert!(
        !dir.path().join("data").exists(),
        "the data folder is deleted"
    );
    assert!(dir.path().join("logs").is_dir());
}

#[test]
fn bad_arguments_are_refused_with_exit_2() {
    for args in [
        ["--size", "3M", "--runs", "1"],
        ["--size", "16M", "--runs", "0"],
        ["--changed", "150%", "--runs", "1"],
    ] {
        let output = Command::new(VHDSYNC)
            .arg("bench")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
}

fn row_bytes(rows: &[serde_json::Value], name: &str) -> u64 {
    let row = rows.iter().find(|r| r["name"] == name).unwrap();
    row["ours"]["bytes"].as_u64().unwrap()
}
