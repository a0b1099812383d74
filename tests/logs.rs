//! What `vhdsync replicate` prints on stderr (issue 21): under cron, one timestamped line per
//! step naming the VM and disk, sizes and rates in binary units, no colour and no Rust debug
//! text, `-vv` included; on a terminal, bars labelled by VM name, and no colour with
//! `NO_COLOR`.

mod common;

use common::lab_pair::{BIN, Host, MIB, vhdsync, write_job};

/// `2026-12-07T03:00:00Z `: every line's start.
fn starts_with_timestamp(line: &str) -> bool {
    let bytes = line.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:ddZ ";
    bytes.len() > shape.len()
        && shape.iter().zip(bytes).all(|(want, got)| match want {
            b'd' => got.is_ascii_digit(),
            other => other == got,
        })
}

/// The lines naming VM `name`, without their timestamps.
fn vm_lines<'a>(stderr: &'a str, name: &str) -> Vec<&'a str> {
    let label = format!(" vm \"{name}\" ");
    stderr
        .lines()
        .filter(|l| l.contains(&label))
        .map(|l| {
            assert!(starts_with_timestamp(l), "no RFC 3339 timestamp: {l:?}");
            l.split_once(&label).unwrap().1
        })
        .collect()
}

/// No colour or other escape, no Rust `Debug` rendering of an `Option`.
fn assert_plain(stderr: &str) {
    assert!(!stderr.contains('\x1b'), "an escape code: {stderr:?}");
    assert!(!stderr.contains("Some("), "Rust debug text: {stderr}");
    assert!(!stderr.contains("None"), "Rust debug text: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_each_step_is_one_line_naming_vm_and_disk() {
    let source = Host::start(&[("web-01", &[8 * MIB, 4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    source
        .write(&vm.disks[0].vdi.reference, 0, 3 * MIB, Some(1))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let job = job.to_str().unwrap();

    let first = vhdsync(&["replicate", "--job", job]).await;
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert_plain(&first.stderr);
    let lines = vm_lines(&first.stderr, "web-01");
    let disk0 = "disk 0 \"web-01 disk 0\"";
    // In this order, each once.
    let steps = [
        "cleaning up what interrupted runs left".to_owned(),
        "taking the source snapshot".to_owned(),
        "snapshot taken (".to_owned(),
        "preparing the replica".to_owned(),
        format!("{disk0}: full copy of a 8.0 MiB disk started"),
        // Two 2 MiB blocks hold the 3 MiB written.
        format!("{disk0}: 4.0 MiB to send"),
        format!("{disk0}: full done, 4.0 MiB sent"),
        "disk 1 \"web-01 disk 1\": full copy of a 4.0 MiB disk started".to_owned(),
        "committing the replica".to_owned(),
        "committed replica ".to_owned(),
        "applying retention".to_owned(),
        "retention: nothing to delete".to_owned(),
        "done: full, 4.0 MiB sent of 12.0 MiB in ".to_owned(),
    ];
    let mut at = 0;
    for step in &steps {
        let found: Vec<usize> = (0..lines.len())
            .filter(|i| lines[*i].starts_with(step.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "{step:?} once in {lines:#?}");
        assert!(found[0] >= at, "{step:?} out of order in {lines:#?}");
        at = found[0];
    }
    assert!(lines[at].ends_with("/s"), "a rate: {}", lines[at]);
    // Nothing else but periodic progress lines, in human units.
    for line in &lines {
        let known = steps.iter().any(|s| line.starts_with(s.as_str()))
            || line.starts_with(&format!("{disk0}:"))
            || line.starts_with("disk 1 ");
        assert!(known, "an unexpected line: {line:?}");
        assert!(!line.contains(" bytes"), "a raw byte count: {line:?}");
    }

    // A delta, with the debug logs: still human, still plain.
    source
        .write(&vm.disks[0].vdi.reference, 0, MIB, Some(2))
        .await;
    let second = vhdsync(&["replicate", "--job", job, "-vv"]).await;
    assert_eq!(second.code, 0, "{}{}", second.stdout, second.stderr);
    assert_plain(&second.stderr);
    let lines = vm_lines(&second.stderr, "web-01");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{disk0}: delta of a 8.0 MiB disk started"))),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("snapshot taken (") && l.contains("; base ")),
        "{lines:#?}"
    );
    let debug: Vec<&str> = second
        .stderr
        .lines()
        .filter(|l| l.contains("DEBUG"))
        .collect();
    assert!(!debug.is_empty(), "-vv adds debug lines: {}", second.stderr);
    for line in debug {
        assert!(starts_with_timestamp(line), "{line:?}");
    }
}

/// Run the binary with a pseudo-terminal as its stderr, `env` added; what the terminal
/// showed, and the exit code.
fn on_terminal(args: &[String], env: &[(&str, &str)]) -> (i32, String) {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the integers given; the null pointers ask
    // for no name and default settings.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned here alone.
    let (mut master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    };
    let mut command = std::process::Command::new(BIN);
    command
        .args(args)
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(slave);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    // Drop our copy of the terminal's end with the command: reading ends (EIO) once the
    // child, its last holder, exits.
    drop(command);
    let reader = std::thread::spawn(move || {
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            shown.extend_from_slice(&buf[..n]);
        }
        shown
    });
    let code = child.wait().unwrap().code().unwrap_or(-1);
    let shown = reader.join().unwrap();
    (code, String::from_utf8_lossy(&shown).into_owned())
}

/// A colour or other graphic rendition escape (`ESC [ ... m`), not cursor movement.
fn has_colour(text: &str) -> bool {
    text.split("\x1b[").skip(1).any(|rest| {
        rest.chars()
            .find(|c| !(c.is_ascii_digit() || *c == ';'))
            .is_some_and(|c| c == 'm')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_bars_name_the_vm_and_no_color_is_respected() {
    let source = Host::start(&[("web-01", &[32 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    // Enough to send that the bar is drawn (indicatif draws at most 20 times a second).
    source
        .write(&vm.disks[0].vdi.reference, 0, 24 * MIB, Some(1))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let args: Vec<String> = ["replicate", "--job", job.to_str().unwrap(), "-vv"]
        .map(str::to_owned)
        .to_vec();

    let run = args.clone();
    let (code, coloured) = tokio::task::spawn_blocking(move || on_terminal(&run, &[]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{coloured}");
    // The bar's label and the final step line name the VM, not a UUID prefix.
    assert!(
        coloured.contains("web-01 disk 0 \"web-01 disk 0\""),
        "{coloured:?}"
    );
    assert!(coloured.contains("done: full"), "{coloured:?}");
    assert!(!coloured.contains(&vm.ids.uuid[..8]) || coloured.contains(&vm.ids.uuid));
    // The debug lines are coloured on a terminal...
    assert!(has_colour(&coloured), "{coloured:?}");

    // ...unless NO_COLOR says otherwise.
    source
        .write(&vm.disks[0].vdi.reference, 0, MIB, Some(2))
        .await;
    let (code, plain) =
        tokio::task::spawn_blocking(move || on_terminal(&args, &[("NO_COLOR", "1")]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{plain}");
    assert!(plain.contains("DEBUG"), "{plain:?}");
    assert!(plain.contains("done: delta"), "{plain:?}");
    assert!(!has_colour(&plain), "colour despite NO_COLOR: {plain:?}");
    assert!(!plain.contains("Some("), "{plain:?}");
}

#[test]
fn the_helpers_see_what_they_look_for() {
    assert!(starts_with_timestamp("2026-12-07T03:00:00Z vm \"a\" x"));
    assert!(!starts_with_timestamp("2026-12-07 03:00:00 vm"));
    assert!(has_colour("a \x1b[32mDEBUG\x1b[0m b"));
    assert!(has_colour("\x1b[2m"));
    assert!(!has_colour("\x1b[2K\x1b[1A\x1b[?25l plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cycle_says_so_on_a_timestamped_line() {
    use vhdsync::xapi::rpc::Value;

    let source = Host::start(&[("web-01", &[MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    // The source refuses the snapshot.
    source
        .inject(vec![
            ("kind", Value::from("rpc_error")),
            ("method", Value::from("VM.snapshot")),
            ("code", Value::from("INTERNAL_ERROR")),
            ("count", Value::Int(1)),
        ])
        .await;
    let run = vhdsync(&["replicate", "--job", job.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_plain(&run.stderr);
    let lines = vm_lines(&run.stderr, "web-01");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("failed: ")
            && last.contains("snapshot")
            && last.contains("INTERNAL_ERROR"),
        "{lines:#?}"
    );
    assert_eq!(
        lines[lines.len() - 2],
        "taking the source snapshot",
        "{lines:#?}"
    );
    // Said once, on that line: not again in the run's summary.
    assert_eq!(
        run.stderr.matches("INTERNAL_ERROR").count(),
        1,
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_export_off_a_terminal_prints_timestamped_progress_in_binary_units() {
    let source = Host::start(&[("web-01", &[8 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    source
        .write(&vm.disks[0].vdi.reference, 0, 4 * MIB, Some(1))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let out = dir.path().join("seed");
    let run = vhdsync(&[
        "seed-export",
        "--job",
        job.to_str().unwrap(),
        "--vm",
        &vm.ids.uuid,
        "-o",
        out.to_str().unwrap(),
    ])
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_plain(&run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(" disk 0: 4.0 MiB to send")),
        "{lines:#?}"
    );
    for line in lines {
        assert!(starts_with_timestamp(line), "{line:?}");
    }
}

/// A VM whose lock (this machine) or lease (another machine) another run holds gets one line,
/// by its name, saying who holds it; nothing else on stderr repeats it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_refused_by_its_lock_or_lease_says_so_on_a_timestamped_line() {
    use vhdsync::replicate::job::Job;
    use vhdsync::replicate::lease::{LeaseRecord, key};
    use vhdsync::replicate::lock::VmLock;
    use vhdsync::xapi::rpc::Value;

    let source = Host::start(&[("web-01", &[MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let ids = Job::load(&job).unwrap();
    let replicate = async || vhdsync(&["replicate", "--job", job.to_str().unwrap()]).await;

    let lock = VmLock::acquire(
        &ids.state_dir,
        &ids.job_id,
        &vm.ids.uuid,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let run = replicate().await;
    drop(lock);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert_plain(&run.stderr);
    let lines = vm_lines(&run.stderr, "web-01");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let ours = format!("refused: lock held by pid {} ", std::process::id());
    assert!(lines[0].starts_with(&ours), "{lines:#?}");
    assert!(!run.stderr.contains("another run"), "{}", run.stderr);

    // Another machine's lease on the source VM, for an hour.
    let expires = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let theirs = LeaseRecord {
        run: "their-run".into(),
        holder: "pid 7 on backup-2, state dir /var/lib/vhdsync".into(),
        site: "backup-2 2049:7".into(),
        expires,
        released: false,
    };
    source
        .call(
            "VM.add_to_other_config",
            vec![
                Value::from(vm.ids.reference.as_str()),
                Value::from(key(&ids.job_id, 1).as_str()),
                Value::from(theirs.to_value().as_str()),
            ],
        )
        .await;
    let run = replicate().await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert_plain(&run.stderr);
    let lines = vm_lines(&run.stderr, "web-01");
    assert_eq!(
        lines,
        [format!(
            "refused: lease held by pid 7 on backup-2, state dir /var/lib/vhdsync until {}",
            vhdsync::replicate::keys::rfc3339(expires)
        )],
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("another run"), "{}", run.stderr);
}
