use super::*;

const SR: &str = "6f3b8a2e-1c4d-4e5f-9a0b-1c2d3e4f5a6b";
const VM1: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const VM2: &str = "1b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e";
const FP: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn parse(text: &str) -> Result<Job, JobError> {
    Job::parse(text, Path::new("/etc/vhdsync/job.toml"))
}

/// A minimal valid file with `extra` lines appended at top level.
fn minimal(extra: &str) -> String {
    format!(
        "name = \"nightly\"\n\
         source = \"https://root@xen1.example\"\n\
         target = \"https://xen2.example:8443\"\n\
         target_sr = \"{SR}\"\n\
         vms = [\"{VM1}\"]\n\
         retention = 3\n\
         {extra}"
    )
}

fn error(text: &str) -> JobError {
    parse(text).expect_err("the job file should be refused")
}

#[test]
fn a_full_valid_file() {
    let text = format!(
        "name = \"nightly\"\n\
         source = \"https://root:s3cret@xen1.example\"\n\
         target = \"http://xen2.example:8080\"\n\
         target_password_file = \"secrets/target.pw\"\n\
         target_sr = \"{}\"\n\
         vms = [\n  \"{VM1}\",\n  \"{}\",\n]\n\
         retention = 7\n\
         job_id = \"{}\"\n\
         schedule_id = \"{VM2}\"\n\
         full_interval = 20\n\
         snapshot_retention = 2\n\
         concurrency = 4\n\
         state_dir = \"/var/lib/vhdsync\"\n\
         [tls]\n\
         source_fingerprint = \"{FP}\"\n\
         insecure = true\n",
        SR.to_uppercase(),
        VM2.to_uppercase(),
        VM1.to_uppercase(),
    );
    let job = parse(&text).unwrap();
    assert_eq!(job.name, "nightly");
    assert_eq!(job.source.url.host, "xen1.example");
    assert_eq!(job.source.url.password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(job.source.password_file, None);
    assert_eq!(job.source.fingerprint.as_deref(), Some(FP));
    assert_eq!(job.target.url.port, 8080);
    assert_eq!(
        job.target.password_file.as_deref(),
        Some(Path::new("/etc/vhdsync/secrets/target.pw"))
    );
    assert_eq!(job.target.fingerprint, None);
    assert_eq!(job.target_sr, SR);
    assert_eq!(job.vms, [VM1, VM2]);
    assert_eq!(
        (
            job.retention,
            job.full_interval,
            job.snapshot_retention,
            job.concurrency
        ),
        (7, 20, 2, 4)
    );
    assert_eq!((job.job_id.as_str(), job.schedule_id.as_str()), (VM1, VM2));
    assert!(job.insecure);
    assert_eq!(job.state_dir, Path::new("/var/lib/vhdsync"));
    assert!(!format!("{job:?}").contains("s3cret"));
    let job = parse(&minimal("metrics_file = \"metrics/cr.prom\"\n")).unwrap();
    assert_eq!(
        job.metrics_file.as_deref(),
        Some(Path::new("/etc/vhdsync/metrics/cr.prom"))
    );
    assert!(
        error(&minimal("metrics_file = \"\"\n"))
            .message
            .contains("empty")
    );
}

#[test]
fn defaults() {
    let job = parse(&minimal("")).unwrap();
    assert_eq!(
        (job.full_interval, job.snapshot_retention, job.concurrency),
        (0, 1, 2)
    );
    assert!(!job.insecure);
    assert_eq!(
        (job.source.fingerprint, job.target.fingerprint),
        (None, None)
    );
    assert_eq!(job.job_id, derived_id("job", "nightly"));
    assert_eq!(job.schedule_id, derived_id("schedule", "nightly"));
    assert!(job.state_dir.ends_with("vhdsync"), "{:?}", job.state_dir);
    assert_eq!(job.max_rate, None);
    assert_eq!(job.metrics_file, None);
}

#[test]
fn max_rate_is_a_size_per_second() {
    for (written, bytes) in [
        ("\"50MiB\"", 50 << 20),
        ("\"100MB/s\"", 100 << 20),
        ("\"50M\"", 50 << 20),
        ("1048576", 1 << 20),
    ] {
        let job = parse(&minimal(&format!("max_rate = {written}\n"))).unwrap();
        assert_eq!(job.max_rate, Some(bytes), "{written}");
    }
    for wrong in ["\"fast\"", "0", "-1", "true"] {
        let e = error(&minimal(&format!("max_rate = {wrong}\n")));
        assert_eq!((e.line, e.key.as_str()), (7, "max_rate"), "{wrong}: {e}");
    }
}

#[test]
fn the_default_state_dir_follows_xdg() {
    let os = |s: &str| Some(OsString::from(s));
    assert_eq!(
        default_state_dir(os("/xdg/state"), os("/home/u")),
        Some(PathBuf::from("/xdg/state/vhdsync"))
    );
    assert_eq!(
        default_state_dir(None, os("/home/u")),
        Some(PathBuf::from("/home/u/.local/state/vhdsync"))
    );
    assert_eq!(
        default_state_dir(os("relative"), os("/home/u")),
        Some(PathBuf::from("/home/u/.local/state/vhdsync"))
    );
    assert_eq!(default_state_dir(None, None), None);
}

#[test]
fn derived_ids_are_stable_and_distinct() {
    // Pinned values: these ids are in host metadata, so they must never change.
    assert_eq!(
        derived_id("job", "nightly"),
        "67f81ad5-0c6f-5355-a878-63246a3f83f9"
    );
    assert_eq!(
        derived_id("schedule", "nightly"),
        "4d7b5ce2-db11-5c15-a621-ddeb7dca31ee"
    );
    assert_ne!(derived_id("job", "nightly"), derived_id("job", "hourly"));
    assert_ne!(
        derived_id("schedule", "nightly"),
        derived_id("schedule", "hourly")
    );
}

#[test]
fn relative_paths_are_resolved_against_the_job_file() {
    let job = Job::parse(
        &minimal("source_password_file = \"pw/source\"\nstate_dir = \"state\"\n"),
        Path::new("/srv/jobs/a.toml"),
    )
    .unwrap();
    assert_eq!(
        job.source.password_file.as_deref(),
        Some(Path::new("/srv/jobs/pw/source"))
    );
    assert_eq!(job.state_dir, Path::new("/srv/jobs/state"));
    let job = Job::parse(&minimal("state_dir = \"s\"\n"), Path::new("job.toml")).unwrap();
    assert_eq!(job.state_dir, Path::new("s"));
    let e = error(&minimal("state_dir = \"~/.local/state/vhdsync\"\n"));
    assert_eq!((e.line, e.key.as_str()), (7, "state_dir"));
}

#[test]
fn a_missing_key_is_named_without_a_line() {
    let text = minimal("").replace("retention = 3\n", "");
    let e = error(&text);
    assert_eq!((e.line, e.key.as_str()), (0, "retention"));
    assert_eq!(
        e.to_string(),
        "/etc/vhdsync/job.toml: retention: required key is missing"
    );
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let e = error(&minimal("retension = 5\n"));
    assert_eq!(
        e.to_string(),
        "/etc/vhdsync/job.toml:7: retension: unknown key; did you mean `retention`?"
    );
    let e = error(&minimal("colour = 1\n"));
    assert_eq!((e.line, e.key.as_str()), (7, "colour"));
    assert!(e.message.contains("expected one of: name, source"), "{e}");
    // A top-level key written after the [tls] header lands in [tls].
    let e = error(&minimal("[tls]\ninsecure = true\nconcurrency = 3\n"));
    assert_eq!((e.line, e.key.as_str()), (9, "tls.concurrency"));
    assert!(e.message.contains("before the [tls] header"), "{e}");
}

#[test]
fn a_bad_vm_uuid_is_named_with_its_line() {
    let text = minimal("").replace(
        &format!("vms = [\"{VM1}\"]"),
        &format!("vms = [\n  \"{VM1}\",\n  \"not-a-uuid\",\n]"),
    );
    let e = error(&text);
    assert_eq!((e.line, e.key.as_str()), (7, "vms"));
    assert!(e.message.ends_with("found \"not-a-uuid\""), "{e}");
}

#[test]
fn a_duplicate_vm_is_refused() {
    let text = minimal("").replace(
        &format!("vms = [\"{VM1}\"]"),
        &format!("vms = [\n  \"{VM1}\",\n  \"{}\",\n]", VM1.to_uppercase()),
    );
    let e = error(&text);
    assert_eq!(
        e.to_string(),
        format!("/etc/vhdsync/job.toml:7: vms: VM {VM1} is listed twice (first on line 6)")
    );
    let e = error(&minimal("").replace(&format!("[\"{VM1}\"]"), "[]"));
    assert_eq!((e.line, e.key.as_str()), (5, "vms"));
}

#[test]
fn counts_are_checked() {
    let e = error(&minimal("").replace("retention = 3", "retention = 0"));
    assert_eq!(
        e.to_string(),
        "/etc/vhdsync/job.toml:6: retention: must be at least 1, found 0"
    );
    let e = error(&minimal("concurrency = -1\n"));
    assert_eq!((e.line, e.key.as_str()), (7, "concurrency"));
    assert!(e.message.contains("found -1"), "{e}");
    let e = error(&minimal("full_interval = \"5\"\n"));
    assert_eq!(e.message, "expected a whole number, found string");
}

#[test]
fn a_bad_fingerprint_is_named() {
    let e = error(&minimal("[tls]\ntarget_fingerprint = \"sha256:abcd\"\n"));
    assert_eq!((e.line, e.key.as_str()), (8, "tls.target_fingerprint"));
    assert!(e.message.contains("bad certificate fingerprint"), "{e}");
}

#[test]
fn a_bad_url_never_shows_its_password() {
    let text = minimal("").replace(
        "https://root@xen1.example",
        "https://root:hunter2@xen1.example:notaport",
    );
    let e = error(&text);
    assert_eq!((e.line, e.key.as_str()), (2, "source"));
    assert!(e.message.contains("bad host or port"), "{e}");
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}");
}

#[test]
fn a_password_in_two_places_is_refused() {
    let text = minimal("target_password_file = \"pw\"\n")
        .replace("https://xen2.example", "https://root:pw@xen2.example");
    let e = error(&text);
    assert_eq!((e.line, e.key.as_str()), (7, "target_password_file"));
}

#[test]
fn syntax_errors_carry_the_line() {
    let e = error(&minimal("concurrency = \n"));
    assert_eq!((e.line, e.key.as_str()), (7, "concurrency"));
    assert!(
        e.to_string()
            .starts_with("/etc/vhdsync/job.toml:7: concurrency: invalid TOML"),
        "{e}"
    );
    let e = error(&minimal("retention = 4\n"));
    assert_eq!(
        e.to_string(),
        "/etc/vhdsync/job.toml:7: retention: invalid TOML: duplicate key"
    );
    let e = error(&minimal("[tls\n"));
    assert_eq!((e.line, e.key.as_str()), (7, ""));
}

#[test]
fn an_unreadable_file_is_named() {
    let e = Job::load(Path::new("/nonexistent/job.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/job.toml: cannot read the job file:"),
        "{e}"
    );
}

#[test]
fn lease_ttl_is_a_duration_of_at_least_two_seconds() {
    use std::time::Duration;
    assert_eq!(
        parse(&minimal("")).unwrap().lease_ttl,
        crate::replicate::lease::DEFAULT_TTL
    );
    let job = parse(&minimal("lease_ttl = \"90s\"\n")).unwrap();
    assert_eq!(job.lease_ttl, Duration::from_secs(90));
    for wrong in ["\"1s\"", "\"0s\"", "\"soon\"", "600"] {
        let e = error(&minimal(&format!("lease_ttl = {wrong}\n")));
        assert_eq!((e.line, e.key.as_str()), (7, "lease_ttl"), "{wrong}: {e}");
    }
}

#[test]
fn transport_keys_default_parse_and_refuse_what_cannot_work() {
    assert_eq!(
        parse(&minimal("")).unwrap().transport,
        TransportSettings::default()
    );
    let job = parse(&minimal(
        "cbt = true\ntransport = \"nbd\"\nnbd_concurrency = 8\npurge_snapshot_data = true\n",
    ))
    .unwrap();
    assert_eq!(
        job.transport,
        TransportSettings {
            transport: Transport::Nbd,
            cbt: true,
            nbd_concurrency: 8,
            purge_snapshot_data: true,
        }
    );
    for (extra, key, says) in [
        (
            "transport = \"fast\"\n",
            "transport",
            "\"auto\", \"nbd\" or \"stream\"",
        ),
        ("nbd_concurrency = 0\n", "nbd_concurrency", "at least 1"),
        ("nbd_concurrency = 17\n", "nbd_concurrency", "at most 16"),
        (
            "purge_snapshot_data = true\n",
            "purge_snapshot_data",
            "needs cbt = true",
        ),
        (
            "cbt = true\ntransport = \"stream\"\npurge_snapshot_data = true\n",
            "purge_snapshot_data",
            "CBT and NBD",
        ),
        ("cbt = \"yes\"\n", "cbt", ""),
    ] {
        let e = error(&minimal(extra));
        assert_eq!(e.key, key, "{extra}: {e}");
        assert!(e.line >= 7 && e.to_string().contains(says), "{extra}: {e}");
    }
}

#[test]
fn vms_may_select_by_tag() {
    let with = |vms: &str| minimal("").replace(&format!("vms = [\"{VM1}\"]"), vms);
    let job = parse(&with(&format!(
        "vms = [\"tag:prod\", \"{VM1}\", \"tag:Nightly backup\"]"
    )))
    .unwrap();
    assert_eq!(job.vms, [VM1]);
    assert_eq!(job.vm_tags, ["prod", "Nightly backup"]);
    let tags_only = parse(&with("vms = [\"tag:prod\"]")).unwrap();
    assert!(tags_only.vms.is_empty());
    for (vms, message) in [
        ("vms = [\"tag:\"]", "tag: needs a tag name"),
        ("vms = [\"tag:a\\u001b[2J\"]", "no control characters"),
        ("vms = [\"tag:a\", \"tag:a\"]", "tag \"a\" is listed twice"),
        ("vms = [\"prod\"]", "expected a UUID"),
    ] {
        let e = error(&with(vms));
        assert_eq!((e.line, e.key.as_str()), (5, "vms"), "{vms}: {e}");
        assert!(e.message.contains(message), "{vms}: {e}");
    }
    let long = format!("vms = [\"tag:{}\"]", "x".repeat(257));
    assert!(error(&with(&long)).message.contains("at most 256"));
}
