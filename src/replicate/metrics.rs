//! vhdsync's metrics, in the Prometheus text format ([`exposition`]): what the target shows
//! of each VM of a job ([`VmStatus`]), for `status --format prometheus` and the job's
//! `metrics_file`, and, in the metrics file only, each VM's last `replicate` run. Every
//! per-VM sample carries the labels `job` (the job's name), `vm` (the source VM's UUID) and
//! `vm_name`.
//!
//! Ages go stale in a file written once per run, so the file has the newest restore point's
//! timestamp only (alert on `time() - vhdsync_newest_restore_point_timestamp_seconds`); the
//! age is in `status`'s output, computed when it is asked for.
//!
//! A run writes what it knows: the target's view of every VM of the job, and the run's
//! outcome for the VMs it ran. The last-run samples of the job's other VMs (not selected by
//! `--vm`, or locked by another run) are carried over from the previous file, so one VM's
//! run does not erase what is known of the others'. Pure: the caller reads and writes files.
//!
//! [`exposition`]: super::exposition

use std::collections::BTreeMap;

use super::exposition::{Family, Sample, parse_sample, render};
use super::monitor::VmStatus;

const TARGET_UP: &str = "vhdsync_target_up";
const RESTORE_POINTS: &str = "vhdsync_restore_points";
const INTERRUPTED: &str = "vhdsync_interrupted_restore_points";
const NEWEST_TIMESTAMP: &str = "vhdsync_newest_restore_point_timestamp_seconds";
const NEWEST_AGE: &str = "vhdsync_newest_restore_point_age_seconds";
const HEALTH: &str = "vhdsync_health_check_success";
const HEALTH_TIMESTAMP: &str = "vhdsync_health_check_timestamp_seconds";
const FAILED_OVER: &str = "vhdsync_failed_over_timestamp_seconds";
const RUN_TIMESTAMP: &str = "vhdsync_last_run_timestamp_seconds";
const RUN_SUCCESS: &str = "vhdsync_last_run_success";
const RUN_MODE: &str = "vhdsync_last_run_mode";
const RUN_BYTES: &str = "vhdsync_last_run_bytes_sent";
const RUN_DURATION: &str = "vhdsync_last_run_duration_seconds";

/// The families, in the order they are written.
const FAMILIES: &[(&str, &str)] = &[
    (
        TARGET_UP,
        "1 if the target host answered, 0 if it could not be reached or logged in to.",
    ),
    (
        RESTORE_POINTS,
        "Valid restore points of the VM on the target.",
    ),
    (
        INTERRUPTED,
        "Restore points of the VM left by interrupted runs (the next run removes them).",
    ),
    (
        NEWEST_TIMESTAMP,
        "Unix time of the content of the VM's newest valid restore point.",
    ),
    (
        NEWEST_AGE,
        "Age in seconds of the VM's newest valid restore point when this was written.",
    ),
    (
        HEALTH,
        "1 if the last health check recorded on a valid restore point of the VM passed, else 0.",
    ),
    (
        HEALTH_TIMESTAMP,
        "Unix time of the last health check recorded on a valid restore point of the VM.",
    ),
    (
        FAILED_OVER,
        "Unix time a restore point of the VM was failed over to VM failed_over_vm.",
    ),
    (
        RUN_TIMESTAMP,
        "Unix time the last replicate run of the VM ended.",
    ),
    (
        RUN_SUCCESS,
        "1 if the last replicate run of the VM committed a restore point, 0 if it failed.",
    ),
    (
        RUN_MODE,
        "1, labelled with the mode (full, delta, mixed) of the VM's last run, when it succeeded.",
    ),
    (
        RUN_BYTES,
        "Bytes the VM's last run sent, when it succeeded.",
    ),
    (
        RUN_DURATION,
        "Seconds the VM's last run took, when it succeeded.",
    ),
];

/// The families of a run's outcome, which a run carries over for the VMs it did not run.
const RUN_FAMILIES: &[&str] = &[
    RUN_TIMESTAMP,
    RUN_SUCCESS,
    RUN_MODE,
    RUN_BYTES,
    RUN_DURATION,
];

/// One VM's outcome in a `replicate` run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome<'a> {
    pub vm: &'a str,
    /// The source VM's name, when the run read it.
    pub vm_name: Option<&'a str>,
    /// Committed: the mode, bytes sent and seconds; `None` for a failure.
    pub committed: Option<(&'a str, u64, f64)>,
}

/// A metrics document being built.
#[derive(Debug, Clone)]
pub struct Metrics {
    job: String,
    samples: BTreeMap<&'static str, Vec<Sample>>,
    /// The name each VM's samples are labelled with.
    names: BTreeMap<String, String>,
}

impl Metrics {
    pub fn new(job: &str) -> Metrics {
        Metrics {
            job: job.to_owned(),
            samples: BTreeMap::new(),
            names: BTreeMap::new(),
        }
    }

    /// Whether the target answered.
    pub fn target_up(&mut self, up: bool) {
        let labels = vec![("job".to_owned(), self.job.clone())];
        self.push(TARGET_UP, labels, f64::from(u8::from(up)));
    }

    /// Name `vm`'s samples `name` (the name a run read on the source beats the one read
    /// from the target). Call before adding the VM's samples.
    pub fn name_vm(&mut self, vm: &str, name: &str) {
        self.names.insert(vm.to_owned(), name.to_owned());
    }

    /// What the target shows of a VM; its age at `now` when given (a live answer, not a
    /// file).
    pub fn vm_status(&mut self, status: &VmStatus<'_>, now: Option<i64>) {
        if !self.names.contains_key(&status.vm) {
            self.name_vm(&status.vm, &status.name);
        }
        let labels = self.labels(&status.vm);
        self.push(RESTORE_POINTS, labels.clone(), status.valid as f64);
        self.push(INTERRUPTED, labels.clone(), status.interrupted as f64);
        if let Some(newest) = status.newest {
            self.push(NEWEST_TIMESTAMP, labels.clone(), newest as f64);
            if let Some(now) = now {
                self.push(NEWEST_AGE, labels.clone(), (now - newest) as f64);
            }
        }
        if let Some(health) = &status.health {
            self.push(HEALTH, labels.clone(), f64::from(u8::from(health.passed)));
            if let Some(at) = health.at {
                self.push(HEALTH_TIMESTAMP, labels.clone(), at as f64);
            }
        }
        for failed_over in &status.failed_over {
            if let Some(at) = failed_over.at {
                let mut labels = labels.clone();
                labels.push(("failed_over_vm".into(), failed_over.vm.uuid.clone()));
                self.push(FAILED_OVER, labels, at as f64);
            }
        }
    }

    /// A VM's outcome in a run that ended at `finished`.
    pub fn run(&mut self, outcome: &RunOutcome<'_>, finished: i64) {
        if let Some(name) = outcome.vm_name {
            self.name_vm(outcome.vm, name);
        }
        let labels = self.labels(outcome.vm);
        self.push(RUN_TIMESTAMP, labels.clone(), finished as f64);
        self.push(
            RUN_SUCCESS,
            labels.clone(),
            f64::from(u8::from(outcome.committed.is_some())),
        );
        if let Some((mode, bytes, seconds)) = outcome.committed {
            let mut with_mode = labels.clone();
            with_mode.push(("mode".into(), mode.to_owned()));
            self.push(RUN_MODE, with_mode, 1.0);
            self.push(RUN_BYTES, labels.clone(), bytes as f64);
            self.push(RUN_DURATION, labels, seconds);
        }
    }

    /// The last-run samples of `vms` in `previous` (an earlier document of this job), kept
    /// as they were, with the VM names they carry. Anything else in it is left out: what
    /// the target shows is read again, and lines that are not this job's or not ours are
    /// not kept.
    pub fn carry_over(&mut self, previous: &str, vms: &[&str]) {
        for (name, sample) in previous.lines().filter_map(parse_sample) {
            let Some(family) = RUN_FAMILIES.iter().find(|f| **f == name) else {
                continue;
            };
            let ours = sample.label("job") == Some(self.job.as_str())
                && sample.label("vm").is_some_and(|vm| vms.contains(&vm));
            if !ours || !sample.value.is_finite() {
                continue;
            }
            if let (Some(vm), Some(vm_name)) = (sample.label("vm"), sample.label("vm_name"))
                && !self.names.contains_key(vm)
            {
                self.names.insert(vm.to_owned(), vm_name.to_owned());
            }
            self.samples.entry(family).or_default().push(sample);
        }
    }

    /// The document.
    pub fn render(&self) -> String {
        let families: Vec<Family> = FAMILIES
            .iter()
            .map(|(name, help)| Family {
                name,
                help,
                samples: self.samples.get(name).cloned().unwrap_or_default(),
            })
            .collect();
        render(&families)
    }

    fn labels(&self, vm: &str) -> Vec<(String, String)> {
        vec![
            ("job".into(), self.job.clone()),
            ("vm".into(), vm.to_owned()),
            (
                "vm_name".into(),
                self.names.get(vm).cloned().unwrap_or_default(),
            ),
        ]
    }

    fn push(&mut self, family: &'static str, labels: Vec<(String, String)>, value: f64) {
        self.samples
            .entry(family)
            .or_default()
            .push(Sample { labels, value });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::replicate::monitor::vm_status;

    use crate::replicate::plan::fixtures::{id, target_snapshot as snapshot};

    const T: i64 = 1_704_067_200;

    #[test]
    fn a_status_document() {
        let vms = vec![snapshot("we\"b\n01", T - 60)];
        let status = vm_status(&vms, &id(), "cr");
        let mut metrics = Metrics::new("cr");
        metrics.target_up(true);
        metrics.vm_status(&status, Some(T));
        let text = metrics.render();
        let labels = "job=\"cr\",vm=\"vm\",vm_name=\"we\\\"b\\n01\"";
        for line in [
            "vhdsync_target_up{job=\"cr\"} 1".to_owned(),
            format!("vhdsync_restore_points{{{labels}}} 1"),
            format!("vhdsync_interrupted_restore_points{{{labels}}} 0"),
            format!(
                "vhdsync_newest_restore_point_timestamp_seconds{{{labels}}} {}",
                T - 60
            ),
            format!("vhdsync_newest_restore_point_age_seconds{{{labels}}} 60"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(!text.contains("vhdsync_health"), "{text}");
        assert!(!text.contains("last_run"), "{text}");
        // No age in a file.
        let mut file = Metrics::new("cr");
        file.vm_status(&status, None);
        assert!(!file.render().contains(NEWEST_AGE));
    }

    #[test]
    fn a_run_document_keeps_the_other_vms_last_runs() {
        let mut first = Metrics::new("cr");
        first.run(
            &RunOutcome {
                vm: "a",
                vm_name: Some("alpha"),
                committed: Some(("full", 1000, 2.5)),
            },
            T,
        );
        first.run(
            &RunOutcome {
                vm: "b",
                vm_name: Some("bé\\ta"),
                committed: Some(("delta", 10, 0.5)),
            },
            T,
        );
        let previous = first.render();
        assert!(
            previous.contains(
                "vhdsync_last_run_mode{job=\"cr\",vm=\"a\",vm_name=\"alpha\",mode=\"full\"} 1"
            ),
            "{previous}"
        );

        // The next run ran only `a`, and it failed; `b`'s samples stay as they were.
        let mut second = Metrics::new("cr");
        second.run(
            &RunOutcome {
                vm: "a",
                vm_name: None,
                committed: None,
            },
            T + 100,
        );
        second.carry_over(&previous, &["b"]);
        second.carry_over("# junk\nvhdsync_last_run_success{job=\"other\",vm=\"b\",vm_name=\"x\"} 1\nnot a line\n", &["b"]);
        let text = second.render();
        let samples: Vec<(String, Sample)> = text.lines().filter_map(parse_sample).collect();
        let of = |family: &str, vm: &str| -> Vec<f64> {
            samples
                .iter()
                .filter(|(n, s)| n == family && s.label("vm") == Some(vm))
                .map(|(_, s)| s.value)
                .collect()
        };
        assert_eq!(of(RUN_SUCCESS, "a"), [0.0]);
        assert_eq!(of(RUN_TIMESTAMP, "a"), [(T + 100) as f64]);
        assert_eq!(of(RUN_BYTES, "a"), Vec::<f64>::new());
        assert_eq!(of(RUN_SUCCESS, "b"), [1.0]);
        assert_eq!(of(RUN_BYTES, "b"), [10.0]);
        assert_eq!(of(RUN_DURATION, "b"), [0.5]);
        assert!(samples.iter().all(|(_, s)| s.label("job") == Some("cr")));
        let b_names: Vec<&str> = samples
            .iter()
            .filter(|(_, s)| s.label("vm") == Some("b"))
            .filter_map(|(_, s)| s.label("vm_name"))
            .collect();
        assert!(b_names.iter().all(|n| *n == "bé\\ta"), "{b_names:?}");
        // Each family once, its samples together.
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let mut unique = families.clone();
        unique.dedup();
        assert_eq!(families, unique);
    }
}
