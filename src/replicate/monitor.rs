//! What monitoring reads of a job's VM on the target, and how it is judged: the restore
//! points, the newest valid one's time, interrupted runs' leftovers, the last health check
//! and failovers ([`VmStatus`]), and against the age thresholds, the findings that make its
//! state OK, WARNING or CRITICAL ([`VmStatus::assess`]). `status` prints them in each of its
//! formats and the metrics file is made of them. Pure: the records come from the caller.
//!
//! The rules:
//! * CRITICAL: no valid restore point, or the newest is older than the critical age
//!   (`--max-age`).
//! * WARNING: the newest is older than the warning age (`--warn-age`); valid restore points
//!   none of which has a time; a restore point left by an interrupted run (a killed run: the
//!   next run removes it, but until then a run went wrong); the last recorded health check
//!   failed.
//! * A failover changes no state: it is shown, since it is what an operator did.
//!
//! An interrupted restore point has no time ([`RestorePoint::datetime`] is `None`), so no
//! age is ever computed from one.

use serde::Serialize;

use super::failover::{FailedOver, failed_over_vms};
use super::health::{RecordedResult, last_result};
use super::keys;
use super::layout::{RestorePoint, restore_points};
use super::plan::{Identity, TargetVm};

/// A monitoring state, in the order of severity; [`State::Unknown`] is for a check that
/// could not look (the target unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
    /// The monitoring-plugin name: `OK`, `WARNING`, `CRITICAL`, `UNKNOWN`.
    pub fn label(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }

    /// The monitoring-plugin exit code: 0, 1, 2, 3.
    pub fn exit_code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }
}

/// The age thresholds, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Thresholds {
    pub warn_age: Option<u64>,
    pub max_age: Option<u64>,
}

/// Something wrong with a VM's replication, with its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    /// No valid restore point at all (CRITICAL).
    NoValidRestorePoint,
    /// The newest valid restore point is older than `limit` seconds (CRITICAL above the
    /// critical age, else WARNING).
    TooOld {
        age_seconds: i64,
        limit_seconds: u64,
        critical: bool,
    },
    /// Valid restore points, none with a time (WARNING).
    NoTime,
    /// Restore points left by interrupted runs (WARNING).
    Interrupted { count: usize },
    /// The last recorded health check failed (WARNING); `at` is written in RFC 3339.
    HealthCheckFailed {
        #[serde(serialize_with = "rfc3339")]
        at: Option<i64>,
    },
}

/// A Unix time in JSON as every date there is: RFC 3339.
fn rfc3339<S: serde::Serializer>(at: &Option<i64>, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_some(&at.map(keys::rfc3339))
}

impl Finding {
    pub fn state(&self) -> State {
        match self {
            Finding::NoValidRestorePoint => State::Critical,
            Finding::TooOld { critical, .. } if *critical => State::Critical,
            _ => State::Warning,
        }
    }
}

/// One VM of the job as the target shows it.
#[derive(Debug, Clone)]
pub struct VmStatus<'a> {
    /// The source VM's UUID.
    pub vm: String,
    /// Its name as its restore points give it ([`keys::source_vm_name`]); empty when it has
    /// none.
    pub name: String,
    /// Every restore point, newest first, invalid ones last.
    pub points: Vec<RestorePoint<'a>>,
    /// The newest valid restore point's time (Unix seconds).
    pub newest: Option<i64>,
    pub valid: usize,
    /// Restore points left by interrupted runs (invalid and not merely superseded).
    pub interrupted: usize,
    /// The newest health-check result recorded on a valid restore point.
    pub health: Option<RecordedResult<'a>>,
    /// VMs made by failovers of this VM, newest first.
    pub failed_over: Vec<FailedOver<'a>>,
}

/// `id`'s VM among the target's `vms`; `job_name` reads the VM's name out of its restore
/// points' names.
pub fn vm_status<'a>(vms: &'a [TargetVm], id: &Identity, job_name: &str) -> VmStatus<'a> {
    let points = restore_points(vms, id);
    let valid: Vec<&RestorePoint<'a>> = points.iter().filter(|p| p.valid).collect();
    let named = valid.first().copied().or(points.first());
    let name = named.map_or_else(String::new, |p| {
        keys::source_vm_name(&p.vm.name_label, job_name).to_owned()
    });
    let health = valid
        .iter()
        .filter_map(|p| last_result(p.vm))
        .max_by_key(|r| r.at);
    VmStatus {
        vm: id.vm_uuid.clone(),
        name,
        newest: valid.iter().find_map(|p| p.datetime),
        valid: valid.len(),
        interrupted: points.iter().filter(|p| !p.valid && !p.superseded).count(),
        health,
        failed_over: failed_over_vms(vms, id),
        points,
    }
}

impl VmStatus<'_> {
    /// The newest valid restore point's age at `now`.
    pub fn age(&self, now: i64) -> Option<i64> {
        self.newest.map(|at| now - at)
    }

    /// What is wrong at `now` under `thresholds`, the worst first.
    pub fn assess(&self, now: i64, thresholds: Thresholds) -> Vec<Finding> {
        let mut findings = Vec::new();
        match self.age(now) {
            _ if self.valid == 0 => findings.push(Finding::NoValidRestorePoint),
            None => findings.push(Finding::NoTime),
            Some(age) => {
                let over = |limit: Option<u64>| {
                    limit.filter(|l| age > i64::try_from(*l).unwrap_or(i64::MAX))
                };
                if let Some(limit) = over(thresholds.max_age) {
                    findings.push(Finding::TooOld {
                        age_seconds: age,
                        limit_seconds: limit,
                        critical: true,
                    });
                } else if let Some(limit) = over(thresholds.warn_age) {
                    findings.push(Finding::TooOld {
                        age_seconds: age,
                        limit_seconds: limit,
                        critical: false,
                    });
                }
            }
        }
        if self.interrupted > 0 {
            findings.push(Finding::Interrupted {
                count: self.interrupted,
            });
        }
        if let Some(health) = &self.health
            && !health.passed
        {
            findings.push(Finding::HealthCheckFailed { at: health.at });
        }
        findings.sort_by_key(|f| std::cmp::Reverse(f.state()));
        findings
    }
}

/// The state of a set of findings: the worst, OK when there are none.
pub fn state_of(findings: &[Finding]) -> State {
    findings
        .iter()
        .map(Finding::state)
        .max()
        .unwrap_or(State::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::failover::FAILED_OVER;
    use crate::replicate::health::HEALTH_CHECK;
    use crate::replicate::plan::fixtures::{config, id};

    const T: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

    fn snapshot(uuid: &str, at: i64, extra: &[(&str, &str)]) -> TargetVm {
        let datetime = keys::datetime(at);
        let mut other_config = config(&[
            (keys::JOB, "job"),
            (keys::VM, "vm"),
            (keys::SR, "sr"),
            (keys::DATETIME, &datetime),
        ]);
        other_config.extend(config(extra));
        TargetVm {
            reference: format!("ref-{uuid}"),
            uuid: uuid.into(),
            name_label: keys::target_snapshot_name("web01", "cr", at),
            is_a_snapshot: true,
            other_config,
            ..TargetVm::default()
        }
    }

    /// A classic replica a run was killed writing: invalid, without a time.
    fn interrupted(uuid: &str) -> TargetVm {
        TargetVm {
            reference: format!("ref-{uuid}"),
            uuid: uuid.into(),
            name_label: format!("{}web01", keys::IMPORTING_VM_PREFIX),
            other_config: config(&[
                (keys::JOB, "job"),
                (keys::VM, "vm"),
                (keys::SR, "sr"),
                (keys::DATETIME, keys::IMPORTING_DATETIME),
            ]),
            blocked_operations: config(&[("start", keys::IMPORTING_BLOCKED)]),
            ..TargetVm::default()
        }
    }

    const LIMITS: Thresholds = Thresholds {
        warn_age: Some(3600),
        max_age: Some(7200),
    };

    #[test]
    fn fresh_points_are_ok_and_ages_cross_the_thresholds() {
        let vms = vec![snapshot("a", T - 600, &[]), snapshot("b", T - 60, &[])];
        let status = vm_status(&vms, &id(), "cr");
        assert_eq!(
            (status.name.as_str(), status.newest, status.valid),
            ("web01", Some(T - 60), 2)
        );
        assert_eq!(status.assess(T, LIMITS), []);
        assert_eq!(status.assess(T, Thresholds::default()), []);
        let warned = status.assess(T + 3600, LIMITS);
        assert_eq!(
            warned,
            [Finding::TooOld {
                age_seconds: 3660,
                limit_seconds: 3600,
                critical: false
            }]
        );
        assert_eq!(state_of(&warned), State::Warning);
        let critical = status.assess(T + 7200, LIMITS);
        assert_eq!(state_of(&critical), State::Critical);
        // Exactly at the limit is not over it.
        assert_eq!(status.assess(T - 60 + 7200, LIMITS).len(), 1);
    }

    #[test]
    fn no_valid_point_is_critical_and_an_interrupted_one_never_has_an_age() {
        let vms = vec![interrupted("i")];
        let status = vm_status(&vms, &id(), "cr");
        assert_eq!(
            (status.valid, status.interrupted, status.newest),
            (0, 1, None)
        );
        assert_eq!(status.age(T), None);
        assert!(status.points.iter().all(|p| p.datetime.is_none()));
        let findings = status.assess(T, Thresholds::default());
        assert_eq!(
            findings,
            [
                Finding::NoValidRestorePoint,
                Finding::Interrupted { count: 1 }
            ]
        );
        assert_eq!(state_of(&findings), State::Critical);
        // Beside a valid point, an interrupted run is a warning.
        let vms = vec![interrupted("i"), snapshot("a", T - 60, &[])];
        let findings = vm_status(&vms, &id(), "cr").assess(T, LIMITS);
        assert_eq!(findings, [Finding::Interrupted { count: 1 }]);
        assert_eq!(state_of(&findings), State::Warning);
    }

    #[test]
    fn the_newest_health_check_counts() {
        let passed = format!("{} passed booted", keys::datetime(T - 100));
        let failed = format!("{} failed no guest", keys::datetime(T - 50));
        let vms = vec![
            snapshot("old", T - 600, &[(HEALTH_CHECK, &passed)]),
            snapshot("new", T - 60, &[(HEALTH_CHECK, &failed)]),
        ];
        let status = vm_status(&vms, &id(), "cr");
        assert_eq!(
            status.assess(T, LIMITS),
            [Finding::HealthCheckFailed { at: Some(T - 50) }]
        );
        let vms = vec![
            snapshot("old", T - 600, &[(HEALTH_CHECK, &failed)]),
            snapshot("new", T - 60, &[(HEALTH_CHECK, &passed)]),
        ];
        let status = vm_status(&vms, &id(), "cr");
        assert!(status.health.as_ref().is_some_and(|h| !h.passed));
        let vms = vec![snapshot("new", T - 60, &[(HEALTH_CHECK, &passed)])];
        assert_eq!(vm_status(&vms, &id(), "cr").assess(T, LIMITS), []);
    }

    #[test]
    fn a_failover_is_shown_but_changes_no_state() {
        let mut promoted = snapshot("x", T - 60, &[]);
        promoted.is_a_snapshot = false;
        promoted.uuid = "promoted".into();
        let at = keys::datetime(T - 30);
        promoted.other_config = config(&[
            (FAILED_OVER, &at),
            (keys::FAILED_OVER_JOB, "job"),
            (keys::FAILED_OVER_VM, "vm"),
        ]);
        let vms = vec![snapshot("a", T - 60, &[]), promoted];
        let status = vm_status(&vms, &id(), "cr");
        assert_eq!(status.failed_over.len(), 1);
        assert_eq!(status.failed_over[0].at, Some(T - 30));
        assert_eq!(status.assess(T, LIMITS), []);
    }

    #[test]
    fn findings_in_json_date_in_rfc_3339() {
        let finding = Finding::HealthCheckFailed { at: Some(T) };
        assert_eq!(
            serde_json::to_value(&finding).unwrap(),
            serde_json::json!({"finding": "health_check_failed", "at": "2024-01-01T00:00:00Z"})
        );
        let unknown = Finding::HealthCheckFailed { at: None };
        assert_eq!(
            serde_json::to_value(&unknown).unwrap()["at"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn states_order_and_codes() {
        assert!(State::Ok < State::Warning && State::Warning < State::Critical);
        assert!(State::Critical < State::Unknown);
        let codes: Vec<u8> = [State::Ok, State::Warning, State::Critical, State::Unknown]
            .iter()
            .map(|s| s.exit_code())
            .collect();
        assert_eq!(codes, [0, 1, 2, 3]);
        assert_eq!(state_of(&[]), State::Ok);
    }
}
