//! Monitoring through the binary, between two in-process lab hosts: `status --format nagios`
//! (one plugin line, perfdata, exit codes 0 to 3 for OK, WARNING, CRITICAL and UNKNOWN),
//! `status --format prometheus` and the job's `metrics_file` (valid exposition format read
//! line by line by a parser of the test's own, a hostile VM name escaped, the file replaced
//! atomically after each run and keeping the last runs of VMs not run), RFC 3339 dates in
//! JSON, and interrupted restore points shown as such, never with an age from 1970.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lab_pair::{Host, MIB, Run, vhdsync};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use vhdsync::replicate::job::Job;
use vhdsync::replicate::keys;

/// A VM name made to break every output format: quotes, backslashes, newlines that would
/// start a forged sample or a second plugin line, the perfdata separator.
const HOSTILE: &str = "we\"b\\01\nvhdsync_forged{job=\"cr\"} 1\n| 'x'=1";

/// A job file `file` in `dir` for `vms`, its target at `target_url` (`target`'s SR).
fn write_job(
    dir: &Path,
    file: &str,
    (source, target_url, target): (&Host, &str, &Host),
    vms: &[&str],
    extra: &str,
) -> PathBuf {
    let path = dir.join(file);
    let vms: Vec<String> = vms.iter().map(|vm| format!("\"{vm}\"")).collect();
    std::fs::write(
        &path,
        format!(
            "name = \"cr\"\nsource = \"{}\"\ntarget = \"{target_url}\"\ntarget_sr = \"{}\"\nvms = [{}]\nretention = 2\nstate_dir = \"state\"\n{extra}",
            source.url(),
            target.report.sr.uuid,
            vms.join(", "),
        ),
    )
    .unwrap();
    path
}

/// A URL on which nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://root:lab@127.0.0.1:{port}")
}

async fn status(job: &Path, args: &[&str]) -> Run {
    let mut all = vec!["status", "--job", job.to_str().unwrap()];
    all.extend_from_slice(args);
    vhdsync(&all).await
}

async fn replicate(job: &Path, vm: &str) -> Run {
    vhdsync(&[
        "replicate",
        "--job",
        job.to_str().unwrap(),
        "--vm",
        vm,
        "--json",
    ])
    .await
}

/// One sample of an exposition document.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// The Prometheus text format, checked line by line: `# HELP` and `# TYPE` before each
/// family's samples, each family in one block, names and label names well formed, label
/// values with only the three escapes, a float value, no series twice, a final newline.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "no final newline: {text:?}"
    );
    let is_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut samples: Vec<Sample> = Vec::new();
    let mut typed: Vec<String> = Vec::new();
    let mut helped: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(is_name(name) && !help.is_empty(), "{line:?}");
            assert!(!helped.contains(&name.to_owned()), "HELP twice: {line:?}");
            helped.push(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(is_name(name), "{line:?}");
            assert_eq!(kind, "gauge", "{line:?}");
            assert!(
                !typed.contains(&name.to_owned()),
                "family split in two: {line:?}"
            );
            assert_eq!(
                helped.last().map(String::as_str),
                Some(name),
                "HELP before TYPE: {line:?}"
            );
            typed.push(name.to_owned());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.trim().is_empty(),
            "{line:?}"
        );
        let name_end = line.find(['{', ' ']).expect("a sample has a value");
        let name = &line[..name_end];
        assert!(is_name(name), "{line:?}");
        assert_eq!(
            typed.last().map(String::as_str),
            Some(name),
            "sample outside its family: {line:?}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            loop {
                let (start, c) = chars.next().expect("unterminated labels");
                if c == '}' {
                    rest = &inner[start + 1..];
                    break;
                }
                let eq = inner[start..].find('=').expect("label=value") + start;
                let label = &inner[start..eq];
                assert!(is_name(label) && !label.contains(':'), "{line:?}");
                while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                    chars.next();
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated label value").1 {
                        '\\' => match chars.next().expect("escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => panic!("bad escape \\{other} in {line:?}"),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(label.to_owned(), value).is_none(), "{line:?}");
                if chars.peek().map(|(_, c)| *c) == Some(',') {
                    chars.next();
                }
            }
        }
        let value = rest.strip_prefix(' ').expect("a space before the value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        let sample = Sample {
            name: name.to_owned(),
            labels,
            value,
        };
        assert!(
            !samples
                .iter()
                .any(|s| s.name == sample.name && s.labels == sample.labels),
            "series twice: {line:?}"
        );
        samples.push(sample);
    }
    samples
}

fn values(samples: &[Sample], name: &str, vm: &str) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.name == name && s.label("vm") == vm)
        .map(|s| s.value)
        .collect()
}

fn assert_rfc3339(text: &serde_json::Value, unix: Option<i64>) {
    let text = text
        .as_str()
        .unwrap_or_else(|| panic!("not a date: {text}"));
    let parsed = OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert!(text.ends_with('Z') && text.len() == 20, "{text}");
    if let Some(unix) = unix {
        assert_eq!(parsed.unix_timestamp(), unix, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nagios_states_and_exit_codes() {
    let source = Host::start(&[("web01", &[4 * MIB]), ("db01", &[2 * MIB])]).await;
    let target = Host::start(&[]).await;
    let (web, db) = (
        source.report.vms[0].ids.uuid.clone(),
        source.report.vms[1].ids.uuid.clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        "job.toml",
        (&source, &target.url(), &target),
        &[&web, &db],
        "",
    );
    let run = replicate(&job, &web).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    // db01 has no restore point yet: CRITICAL, whatever the thresholds.
    let run = status(&job, &["--format", "nagios"]).await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    // Without a restore point, nothing on the target names the VM: its UUID stands in.
    assert!(
        run.stdout.starts_with(&format!(
            "VHDSYNC CRITICAL - job cr: {db}: no valid restore point |"
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("'age_{db}'=U;;;0 'restore_points_{db}'=0;;;0")),
        "{}",
        run.stdout
    );

    let run = replicate(&job, &db).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let run = status(
        &job,
        &["--format", "nagios", "--warn-age", "1h", "--max-age", "2h"],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let (summary, perfdata) = run.stdout.trim_end().split_once(" | ").unwrap();
    assert!(
        summary.starts_with("VHDSYNC OK - job cr: 2 VM(s), each with a restore point at most"),
        "{summary}"
    );
    // Perfdata: per VM its age (with the thresholds) and its count of restore points.
    for vm in [&web, &db] {
        let age = perfdata
            .split(' ')
            .find_map(|p| p.strip_prefix(&format!("'age_{vm}'=")))
            .unwrap_or_else(|| panic!("{perfdata}"));
        let (seconds, rest) = age.split_once("s;").unwrap();
        assert!(seconds.parse::<u64>().unwrap() < 120, "{age}");
        assert_eq!(rest, "3600;7200;0");
        // The live replica and its target snapshot.
        assert!(
            perfdata.contains(&format!("'restore_points_{vm}'=2;;;0")),
            "{perfdata}"
        );
    }

    // Older than the warning age, then than the critical age.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let run = status(
        &job,
        &["--format", "nagios", "--warn-age", "0s", "--max-age", "1h"],
    )
    .await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .starts_with("VHDSYNC WARNING - job cr: web01: newest restore point"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("over the warning age, 0s"),
        "{}",
        run.stdout
    );
    let run = status(&job, &["--format", "nagios", "--max-age", "0s"]).await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with("VHDSYNC CRITICAL - "),
        "{}",
        run.stdout
    );
    // Text and JSON keep their codes: 1 when over --max-age.
    assert_eq!(status(&job, &["--max-age", "0s"]).await.code, 1);
    assert_eq!(status(&job, &["--json", "--warn-age", "0s"]).await.code, 0);

    // A restore point left by an interrupted run: WARNING, and never an age.
    let ids = Job::load(&job).unwrap();
    let live = target
        .live_replicas()
        .await
        .into_iter()
        .find(|(_, vm)| vm.name_label.ends_with("web01"))
        .unwrap()
        .0;
    let leftover = target
        .text("VM.clone", &[&live, "[Importing…] web01"])
        .await;
    for (key, value) in [
        (keys::JOB, ids.job_id.as_str()),
        (keys::VM, web.as_str()),
        (keys::SR, target.report.sr.uuid.as_str()),
        (keys::DATETIME, keys::IMPORTING_DATETIME),
        (keys::IMPORTING, "20240101T00:00:00Z"),
    ] {
        target
            .call(
                "VM.add_to_other_config",
                vec![leftover.as_str().into(), key.into(), value.into()],
            )
            .await;
    }
    let run = status(&job, &["--format", "nagios", "--max-age", "1h"]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("web01: 1 restore point(s) left by an interrupted run"),
        "{}",
        run.stdout
    );
    let run = status(&job, &["--json"]).await;
    let rows = run.json["vms"][0]["replicas"].as_array().unwrap().clone();
    let invalid: Vec<_> = rows.iter().filter(|r| r["valid"] == false).collect();
    assert_eq!(invalid.len(), 1, "{}", run.stdout);
    for field in ["datetime", "timestamp", "age_seconds"] {
        assert!(invalid[0][field].is_null(), "{field}: {}", invalid[0]);
    }
    assert_eq!(run.json["vms"][0]["state"], "warning", "{}", run.stdout);
    assert_eq!(run.json["vms"][0]["findings"][0]["finding"], "interrupted");
    let run = status(&job, &[]).await;
    assert!(run.stdout.contains("interrupted run"), "{}", run.stdout);
    assert!(
        !run.stdout.contains("1970") && !run.stdout.contains("years"),
        "{}",
        run.stdout
    );

    // The target down, or refusing the login: UNKNOWN, one line.
    let down = write_job(
        dir.path(),
        "down.toml",
        (&source, &closed_port_url(), &target),
        &[&web],
        "",
    );
    let run = status(&down, &["--format", "nagios"]).await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with("VHDSYNC UNKNOWN - "),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    let wrong = target.url().replace("root:lab@", "root:wrong@");
    let refused = write_job(
        dir.path(),
        "refused.toml",
        (&source, &wrong, &target),
        &[&web],
        "",
    );
    let run = status(&refused, &["--format", "nagios"]).await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with("VHDSYNC UNKNOWN - "),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("wrong"),
        "the password leaks: {}",
        run.stdout
    );
    // Bad thresholds are UNKNOWN too, as plugins answer bad arguments.
    let run = status(
        &job,
        &["--format", "nagios", "--warn-age", "2h", "--max-age", "1h"],
    )
    .await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("--warn-age"), "{}", run.stdout);
    let run = status(&job, &["--warn-age", "2h", "--max-age", "1h"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_output_and_the_metrics_file() {
    let source = Host::start(&[("web01", &[4 * MIB]), ("db01", &[2 * MIB])]).await;
    let target = Host::start(&[]).await;
    let (web, db) = (
        source.report.vms[0].ids.uuid.clone(),
        source.report.vms[1].ids.uuid.clone(),
    );
    source
        .call(
            "VM.set_name_label",
            vec![
                source.report.vms[0].ids.reference.as_str().into(),
                HOSTILE.into(),
            ],
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let metrics_dir = dir.path().join("textfile");
    std::fs::create_dir(&metrics_dir).unwrap();
    let metrics = metrics_dir.join("cr.prom");
    let extra = "metrics_file = \"textfile/cr.prom\"\n";
    let job = write_job(
        dir.path(),
        "job.toml",
        (&source, &target.url(), &target),
        &[&web, &db],
        extra,
    );

    // The first run, of web01 only.
    let run = replicate(&job, &web).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let report = &run.json["vms"][0]["report"];
    let first = std::fs::read_to_string(&metrics).unwrap();
    let samples = parse_exposition(&first);
    assert_eq!(values(&samples, "vhdsync_last_run_success", &web), [1.0]);
    assert_eq!(
        values(&samples, "vhdsync_last_run_bytes_sent", &web),
        [report["bytes_sent"].as_u64().unwrap() as f64]
    );
    assert_eq!(
        values(&samples, "vhdsync_last_run_duration_seconds", &web).len(),
        1
    );
    let mode: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "vhdsync_last_run_mode")
        .collect();
    assert_eq!((mode.len(), mode[0].label("mode")), (1, "full"));
    // The live replica and its target snapshot.
    assert_eq!(values(&samples, "vhdsync_restore_points", &web), [2.0]);
    assert_eq!(values(&samples, "vhdsync_restore_points", &db), [0.0]);
    assert!(values(&samples, "vhdsync_last_run_success", &db).is_empty());
    let newest = values(
        &samples,
        "vhdsync_newest_restore_point_timestamp_seconds",
        &web,
    );
    let reported = OffsetDateTime::parse(report["datetime"].as_str().unwrap(), &Rfc3339).unwrap();
    assert_eq!(newest, [reported.unix_timestamp() as f64]);
    // No age in a file: it would go stale; the timestamp does not.
    assert!(!first.contains("vhdsync_newest_restore_point_age_seconds"));
    assert!(
        samples
            .iter()
            .any(|s| s.name == "vhdsync_target_up" && s.value == 1.0)
    );
    // The hostile name is one label value, read back whole; nothing forged.
    for s in samples.iter().filter(|s| s.label("vm") == web) {
        assert_eq!(s.label("vm_name"), HOSTILE, "{s:?}");
        assert_eq!(s.label("job"), "cr");
    }
    assert!(!samples.iter().any(|s| s.name == "vhdsync_forged"));
    let first_inode = std::fs::metadata(&metrics).unwrap().ino();
    let web_run_time = values(&samples, "vhdsync_last_run_timestamp_seconds", &web);

    // The second run, of db01: the file is replaced, web01's last run kept as it was.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let run = replicate(&job, &db).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let second = std::fs::read_to_string(&metrics).unwrap();
    assert_ne!(
        std::fs::metadata(&metrics).unwrap().ino(),
        first_inode,
        "replaced by a rename"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&metrics_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["cr.prom"], "temp files left");
    let samples = parse_exposition(&second);
    assert_eq!(
        values(&samples, "vhdsync_last_run_timestamp_seconds", &web),
        web_run_time
    );
    assert_eq!(values(&samples, "vhdsync_last_run_success", &web), [1.0]);
    assert_eq!(values(&samples, "vhdsync_last_run_success", &db), [1.0]);
    assert!(values(&samples, "vhdsync_last_run_timestamp_seconds", &db)[0] > web_run_time[0]);
    assert_eq!(values(&samples, "vhdsync_restore_points", &db), [2.0]);
    let names: Vec<&str> = samples
        .iter()
        .filter(|s| s.label("vm") == db)
        .map(|s| s.label("vm_name"))
        .collect();
    assert!(names.iter().all(|n| *n == "db01"), "{names:?}");

    // status --format prometheus: the same view of the target, with ages.
    let run = status(&job, &["--format", "prometheus"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let live = parse_exposition(&run.stdout);
    assert_eq!(values(&live, "vhdsync_restore_points", &web), [2.0]);
    let age = values(&live, "vhdsync_newest_restore_point_age_seconds", &web);
    assert!(age.len() == 1 && (0.0..120.0).contains(&age[0]), "{age:?}");
    for s in live.iter().filter(|s| s.label("vm") == web) {
        assert_eq!(
            s.label("vm_name"),
            HOSTILE,
            "the name from the target: {s:?}"
        );
    }
    assert!(!run.stdout.contains("last_run"));

    // Hosts that cannot be reached: the run fails, and the file says so for each VM.
    let down = write_job(
        dir.path(),
        "down.toml",
        (&source, &closed_port_url(), &target),
        &[&web, &db],
        extra,
    );
    let run = vhdsync(&["replicate", "--job", down.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    let samples = parse_exposition(&std::fs::read_to_string(&metrics).unwrap());
    for vm in [&web, &db] {
        assert_eq!(values(&samples, "vhdsync_last_run_success", vm), [0.0]);
        assert!(values(&samples, "vhdsync_last_run_bytes_sent", vm).is_empty());
    }
    // status --format prometheus still answers, with the target down.
    let run = status(&down, &["--format", "prometheus"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let samples = parse_exposition(&run.stdout);
    assert_eq!(samples.len(), 1, "{}", run.stdout);
    assert_eq!(
        (samples[0].name.as_str(), samples[0].value),
        ("vhdsync_target_up", 0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_dates_are_rfc_3339() {
    let source = Host::start(&[("web01", &[2 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(
        dir.path(),
        "job.toml",
        (&source, &target.url(), &target),
        &[&vm],
        "",
    );
    let run = replicate(&job, &vm).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_rfc3339(&run.json["started_at"], None);
    assert_rfc3339(&run.json["finished_at"], None);
    let report = &run.json["vms"][0]["report"];
    assert_rfc3339(&report["datetime"], None);
    // The XO form stays beside it: the value of xo:backup:datetime on the snapshots.
    let snapshot = target.target_snapshots().await.remove(0).1;
    assert_eq!(
        report["xo_datetime"],
        snapshot.other_config[keys::DATETIME].as_str()
    );
    let at = keys::parse_datetime(report["xo_datetime"].as_str().unwrap()).unwrap();
    assert_eq!(report["datetime"], keys::rfc3339(at).as_str());

    let run = status(&job, &["--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_rfc3339(&run.json["checked_at"], None);
    let doc = &run.json["vms"][0];
    assert_rfc3339(&doc["newest"], Some(at));
    assert_eq!(doc["newest_timestamp"], at);
    for row in doc["replicas"].as_array().unwrap() {
        assert_rfc3339(&row["datetime"], row["timestamp"].as_i64());
    }
}
