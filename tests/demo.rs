//! `vhdsync demo`, the README's first command, end to end: three runs (a full and a delta
//! over the export path, then a delta over CBT + NBD), each replica disk identical to its
//! source snapshot, and the replica refusing to start.

use std::process::Command;

#[test]
fn the_demo_replicates_over_both_transports_and_proves_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .arg("demo")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.matches(" identical").count(), 2, "{stdout}");
    assert!(stdout.contains("refused, as it must be"), "{stdout}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|words| matches!(words.first(), Some(&"1" | &"2" | &"3")))
        .collect();
    let runs: Vec<(&str, &str)> = rows.iter().map(|w| (w[1], w[2])).collect();
    assert_eq!(
        runs,
        [("full", "stream"), ("delta", "stream"), ("delta", "nbd")],
        "{stdout}"
    );
    // 64 extents of 64 KiB and the stream's metadata: far below the 128 MiB of 2 MiB blocks
    // the export path would send.
    let third = &rows[2];
    assert_eq!((third[3], third[4]), ("4.1", "MiB"), "{stdout}");
    // The demo cleans up what it made in the given folder.
    for made in ["source", "target", "state", "job.toml"] {
        assert!(!dir.path().join(made).exists(), "{made} left behind");
    }
}
