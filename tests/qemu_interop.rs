//! Interoperability with qemu-img: images qemu creates must read back byte for byte as qemu
//! reads them, with the same virtual size. Skipped, with a note, where qemu-img is absent.

mod common;

use std::path::Path;
use std::process::Command;

use common::pattern;

fn qemu_img() -> Option<&'static str> {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "qemu-img")
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 40 MiB raw file in which random 2 MiB blocks hold data and the rest are holes.
fn random_raw(path: &Path) {
    let mut raw = vec![0u8; 40 << 20];
    for block in [0usize, 3, 4, 9, 13, 19] {
        let start = block << 21;
        raw[start..start + (2 << 20)].copy_from_slice(&pattern(block as u64 + 7, 2 << 20));
    }
    // A partial block of data, to exercise a bitmap-full block with zero sectors in it.
    raw[(16 << 21) + 4096..(16 << 21) + 8192].fill(0xA5);
    std::fs::write(path, raw).unwrap();
}

fn compare_with_qemu(options: &str) {
    let Some(qemu) = qemu_img() else {
        eprintln!("note: qemu-img not found; qemu interop test skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("source.raw");
    let vhd = dir.path().join("image.vhd");
    random_raw(&raw);
    run(Command::new(qemu)
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", options])
        .arg(&raw)
        .arg(&vhd));

    let ours = dir.path().join("ours.raw");
    let theirs = dir.path().join("theirs.raw");
    run(Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .arg("cat")
        .arg(&vhd)
        .arg("-o")
        .arg(&ours));
    run(Command::new(qemu)
        .args(["convert", "-f", "vpc", "-O", "raw"])
        .arg(&vhd)
        .arg(&theirs));
    let (a, b) = (
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{options}: raw sizes differ");
    assert!(a == b, "{options}: content differs from qemu-img's");

    let info = run(Command::new(qemu)
        .args(["info", "-f", "vpc", "--output=json"])
        .arg(&vhd));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let ours_info = run(Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .arg("info")
        .arg("--json")
        .arg(&vhd));
    let ours_info: serde_json::Value = serde_json::from_slice(&ours_info.stdout).unwrap();
    assert_eq!(
        ours_info["virtual_size"], info["virtual-size"],
        "{options}: virtual size"
    );
    assert_eq!(a.len() as u64, info["virtual-size"].as_u64().unwrap());
    // Stdout output (the streaming path) is identical to the sparse file output.
    let piped = run(Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .arg("cat")
        .arg(&vhd));
    assert_eq!(
        piped.stdout.len(),
        a.len(),
        "{options}: stdout output length"
    );
    let first = piped.stdout.iter().zip(&a).position(|(x, y)| x != y);
    assert_eq!(
        first, None,
        "{options}: stdout output differs from file output"
    );
    // And the image is clean.
    run(Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .arg("check")
        .arg(&vhd));
}

#[test]
fn dynamic_with_default_chs_sizing() {
    compare_with_qemu("subformat=dynamic");
}

#[test]
fn dynamic_with_force_size() {
    compare_with_qemu("subformat=dynamic,force_size=on");
}

#[test]
fn fixed() {
    compare_with_qemu("subformat=fixed");
}

/// A 3-layer chain with partial blocks: the case where a block-merging reader goes wrong.
fn sample_chain(dir: &Path) -> common::FileSrVdi {
    let mut vdi = common::FileSrVdi::new(dir, 21 << 20, 2 << 20);
    vdi.write(0, &pattern(1, 6 << 20));
    vdi.snapshot();
    vdi.write(3 << 19, &pattern(2, 4096));
    vdi.write(9 << 20, &pattern(3, 3 << 20));
    vdi.snapshot();
    vdi.write((21 << 20) - 1024, &pattern(4, 1024));
    vdi
}

#[test]
fn qemu_reads_our_full_export_as_our_cat() {
    let Some(qemu) = qemu_img() else {
        eprintln!("note: qemu-img not found; qemu interop test skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vdi = sample_chain(dir.path());
    let stream = dir.path().join("export.vhd");
    run(Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .arg("export")
        .arg(&vdi.leaf)
        .arg("-o")
        .arg(&stream));
    let theirs = dir.path().join("theirs.raw");
    run(Command::new(qemu)
        .args(["convert", "-f", "vpc", "-O", "raw"])
        .arg(&stream)
        .arg(&theirs));
    let ours = run(Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .arg("cat")
        .arg(&vdi.leaf))
    .stdout;
    let theirs = std::fs::read(&theirs).unwrap();
    assert_eq!(theirs.len(), ours.len(), "qemu-img's size of our export");
    assert!(
        theirs == ours,
        "qemu-img reads our export differently from our cat"
    );
    assert!(ours.iter().any(|&b| b != 0), "the sample has data");
}

#[test]
fn our_decoder_takes_qemu_vpc_output_from_a_pipe() {
    let Some(qemu) = qemu_img() else {
        eprintln!("note: qemu-img not found; qemu interop test skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("source.raw");
    let vhd = dir.path().join("qemu.vhd");
    random_raw(&raw);
    run(Command::new(qemu)
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=dynamic,force_size=on",
        ])
        .arg(&raw)
        .arg(&vhd));
    let applied = dir.path().join("applied.raw");
    // Through a pipe: the decoder can neither seek nor learn the file's length.
    let mut cat = Command::new("cat")
        .arg(&vhd)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .arg("apply")
        .arg("-")
        .arg(&applied)
        .arg("--size")
        .arg((40u64 << 20).to_string())
        .stdin(cat.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(cat.wait().unwrap().success());
    assert!(status.success(), "apply of qemu-img's vpc output failed");
    assert!(
        std::fs::read(&applied).unwrap() == std::fs::read(&raw).unwrap(),
        "applying qemu-img's vpc stream does not give back the raw source"
    );
}
