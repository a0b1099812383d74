//! `status --format nagios`: one monitoring-plugin line (Nagios, Icinga, Naemon, Zabbix's
//! and Sensu's plugin runners), `VHDSYNC <STATE> - <summary> | <perfdata>`, whose state
//! gives the exit code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
//!
//! Perfdata per VM, labelled by the VM's UUID (names change and may hold anything):
//! `'age_<uuid>'` the newest valid restore point's age in seconds with the warning and
//! critical ages as thresholds (`U` when there is none), and `'restore_points_<uuid>'` the
//! count of valid restore points. Text from the hosts (VM names) is escaped: no control
//! character, and no `|`, which would start the perfdata.

use std::fmt::Write as _;

use super::terminal_text;
use super::units::human_age;
use crate::replicate::keys;
use crate::replicate::monitor::{Finding, State, Thresholds, VmStatus, state_of};

/// A VM's status with its findings.
pub type Assessed<'a> = (VmStatus<'a>, Vec<Finding>);

/// The plugin line and its state for a job's VMs at `now`.
pub fn plugin_line(
    job: &str,
    vms: &[Assessed<'_>],
    now: i64,
    thresholds: Thresholds,
) -> (State, String) {
    let state = vms
        .iter()
        .map(|(_, findings)| state_of(findings))
        .max()
        .unwrap_or(State::Ok);
    let mut parts: Vec<String> = vms
        .iter()
        .filter(|(_, findings)| !findings.is_empty())
        .map(|(status, findings)| {
            let said: Vec<String> = findings.iter().map(|f| finding_text(f, now)).collect();
            format!("{}: {}", vm_label(status), said.join(", "))
        })
        .collect();
    if parts.is_empty() {
        let oldest = vms.iter().filter_map(|(s, _)| s.age(now)).max();
        parts.push(match oldest {
            Some(age) => format!(
                "{} VM(s), each with a restore point at most {} old",
                vms.len(),
                human_age(age)
            ),
            None => format!("{} VM(s)", vms.len()),
        });
    }
    for (status, _) in vms {
        for done in &status.failed_over {
            parts.push(format!(
                "{} failed over to VM {}{}",
                vm_label(status),
                done.vm.uuid,
                done.at
                    .map_or_else(String::new, |at| format!(" at {}", keys::rfc3339(at)))
            ));
        }
    }
    let mut perfdata = String::new();
    let limit = |l: Option<u64>| l.map_or_else(String::new, |l| l.to_string());
    for (status, _) in vms {
        let age = status
            .age(now)
            .map_or_else(|| "U".to_owned(), |a| format!("{a}s"));
        let _ = write!(
            perfdata,
            " 'age_{vm}'={age};{};{};0 'restore_points_{vm}'={};;;0",
            limit(thresholds.warn_age),
            limit(thresholds.max_age),
            status.valid,
            vm = status.vm,
        );
    }
    let line = format!(
        "VHDSYNC {} - job {}: {} |{perfdata}",
        state.label(),
        plugin_text(job),
        parts.join("; ")
    );
    (state, line)
}

/// The line for a check that could not look (the job file, the target): UNKNOWN.
pub fn unknown_line(error: &str) -> String {
    format!("VHDSYNC UNKNOWN - {}", plugin_text(error))
}

fn vm_label(status: &VmStatus<'_>) -> String {
    if status.name.is_empty() {
        status.vm.clone()
    } else {
        plugin_text(&status.name)
    }
}

fn finding_text(finding: &Finding, now: i64) -> String {
    match finding {
        Finding::NoValidRestorePoint => "no valid restore point".into(),
        Finding::TooOld {
            age_seconds,
            limit_seconds,
            critical,
        } => format!(
            "newest restore point {} old (over the {} age, {})",
            human_age(*age_seconds),
            if *critical { "critical" } else { "warning" },
            human_age(i64::try_from(*limit_seconds).unwrap_or(i64::MAX))
        ),
        Finding::NoTime => "no restore point has a time".into(),
        Finding::Interrupted { count } => {
            format!("{count} restore point(s) left by an interrupted run")
        }
        Finding::HealthCheckFailed { at } => match at {
            Some(at) => format!("health check failed {} ago", human_age(now - at)),
            None => "health check failed".into(),
        },
    }
}

/// Host text made safe for a plugin line: control characters escaped (a newline would end
/// the line), `|` (the perfdata separator) replaced.
fn plugin_text(text: &str) -> String {
    terminal_text::name(text).replace('|', "¦")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::monitor::vm_status;
    use crate::replicate::plan::TargetVm;
    use crate::replicate::plan::fixtures::{id, target_snapshot as snapshot};

    const T: i64 = 1_704_067_200;

    const LIMITS: Thresholds = Thresholds {
        warn_age: Some(3600),
        max_age: Some(7200),
    };

    fn line(vms: &[TargetVm], now: i64) -> (State, String) {
        let status = vm_status(vms, &id(), "cr");
        let findings = status.assess(now, LIMITS);
        plugin_line("cr", &[(status, findings)], now, LIMITS)
    }

    #[test]
    fn ok_warning_and_critical_lines() {
        let vms = [snapshot("web01", T - 60)];
        assert_eq!(
            line(&vms, T),
            (
                State::Ok,
                "VHDSYNC OK - job cr: 1 VM(s), each with a restore point at most 1m old | 'age_vm'=60s;3600;7200;0 'restore_points_vm'=1;;;0".to_owned()
            )
        );
        let (state, text) = line(&vms, T + 3600);
        assert_eq!(state, State::Warning);
        assert!(
            text.starts_with("VHDSYNC WARNING - job cr: web01: newest restore point 1h 1m old (over the warning age, 1h) | 'age_vm'=3660s;3600;7200;0"),
            "{text}"
        );
        let (state, text) = line(&vms, T + 7200);
        assert_eq!(state, State::Critical);
        assert!(text.contains("over the critical age, 2h"), "{text}");
        let (state, text) = line(&[], T);
        assert_eq!(state, State::Critical);
        assert!(
            text.ends_with("job cr: vm: no valid restore point | 'age_vm'=U;3600;7200;0 'restore_points_vm'=0;;;0"),
            "{text}"
        );
    }

    #[test]
    fn hostile_names_stay_on_one_line_before_the_perfdata() {
        let vms = [snapshot("evil\n| 'x'=1 \x1b[2J", T - 60)];
        let (_, text) = line(&vms, T + 3600);
        assert!(!text.contains('\n') && !text.contains('\x1b'), "{text}");
        assert_eq!(text.matches('|').count(), 1, "{text}");
        assert!(
            text.contains("evil\\u{a}¦ 'x'=1 \\u{1b}[2J: newest"),
            "{text}"
        );
        assert_eq!(
            unknown_line("cannot reach https://h:1\nforged | x"),
            "VHDSYNC UNKNOWN - cannot reach https://h:1\\u{a}forged ¦ x"
        );
    }
}
