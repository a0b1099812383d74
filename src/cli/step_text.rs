//! A cycle's events in words, for the log lines and the progress bars alike: which VM and
//! disk, what step, sizes and rates in binary units, host text made safe for a terminal.
//! Pure: the display decides when and where to print.

use std::time::Duration;

use time::OffsetDateTime;
use time::macros::format_description;

use super::terminal_text;
use crate::replicate::lease::LeaseError;
use crate::replicate::lock::LockError;
use crate::replicate::run::{CycleEvent, DiskLabel, EventKind, HealthOutcome, Phase, Refusal};
use crate::units::{format_rate, format_size};
use crate::xapi::transfer::Progress;

/// `vm "web-01"`: how every line names its VM; by UUID until its name is known.
pub fn vm_label(event: &CycleEvent<'_>) -> String {
    if event.vm_name.is_empty() {
        return format!("vm {}", terminal_text::name(event.vm));
    }
    format!("vm \"{}\"", terminal_text::name(event.vm_name))
}

/// The VM's name for a bar's label; its UUID until the name is known.
pub fn vm_name(event: &CycleEvent<'_>) -> String {
    let name = if event.vm_name.is_empty() {
        event.vm
    } else {
        event.vm_name
    };
    terminal_text::name(name).into_owned()
}

/// `disk 0 "web-01 root"`: a disk by its userdevice and its VDI's name.
pub fn disk_label(disk: &DiskLabel<'_>) -> String {
    format!(
        "disk {} \"{}\"",
        terminal_text::name(disk.userdevice),
        terminal_text::name(disk.name)
    )
}

/// The step or outcome `event` reports, in words; `None` for the transfer's progress (see
/// [`progress`]) and for the transfer step itself, which its disks' lines tell.
pub fn describe(event: &CycleEvent<'_>) -> Option<String> {
    Some(match event.kind {
        EventKind::Step(Phase::Transfer) | EventKind::DiskProgress { .. } => return None,
        EventKind::Step(phase) => match phase {
            Phase::SourceVm => "reading the source VM".to_owned(),
            Phase::Cleanup => "cleaning up what interrupted runs left".to_owned(),
            Phase::Snapshot => "taking the source snapshot".to_owned(),
            Phase::ReplicaCreation => "preparing the replica".to_owned(),
            Phase::Commit => "committing the replica".to_owned(),
            Phase::Retention => "applying retention".to_owned(),
            Phase::Transfer => "transferring the disks".to_owned(),
        },
        EventKind::SnapshotTaken { snapshot, base } => match base {
            Some(base) => format!("snapshot taken ({snapshot}; base {base})"),
            None => format!("snapshot taken ({snapshot}; no base: full copies)"),
        },
        EventKind::DiskStarted {
            disk,
            delta,
            virtual_size,
        } => format!(
            "{}: {} of a {} disk started",
            disk_label(&disk),
            if delta { "delta" } else { "full copy" },
            format_size(virtual_size)
        ),
        EventKind::DiskDone { disk, report } => format!(
            "{}: {} done{}, {} sent",
            disk_label(&disk),
            report.mode,
            // The export path is the default; NBD is worth saying.
            match report.transport {
                "stream" => String::new(),
                other => format!(" over {}", other.to_uppercase()),
            },
            format_size(report.bytes_sent)
        ),
        EventKind::Committed {
            replica,
            target_snapshot,
        } => format!("committed replica {replica}, restore point {target_snapshot}"),
        EventKind::RetentionDone {
            deleted_replicas,
            deleted_snapshots,
        } => match (deleted_replicas.len(), deleted_snapshots.len()) {
            (0, 0) => "retention: nothing to delete".to_owned(),
            (replicas, snapshots) => format!(
                "retention: deleted {replicas} restore point(s) on the target, \
                 {snapshots} snapshot(s) on the source"
            ),
        },
        EventKind::HealthCheckStarted => "health check of the new restore point".to_owned(),
        EventKind::HealthCheckDone(outcome) => match outcome {
            HealthOutcome::Checked(report) => format!(
                "health check {} ({})",
                if report.passed { "passed" } else { "FAILED" },
                terminal_text::message(&report.detail)
            ),
            HealthOutcome::Error { error, .. } => {
                format!("health check FAILED ({})", terminal_text::message(error))
            }
        },
        EventKind::Done(report) => format!(
            "done: {}, {} sent of {} in {:.1} s, {}",
            report.mode,
            format_size(report.bytes_sent),
            format_size(report.virtual_size),
            report.seconds,
            format_rate(report.bytes_sent as f64 / report.seconds.max(1e-9))
        ),
        EventKind::Failed(error) => failed(error),
        EventKind::Refused(why) => refusal(why),
    })
}

/// A VM whose cycle did not start: `refused:` with the holder when another run has its lock
/// or lease, else `failed:` with the error.
fn refusal(why: Refusal<'_>) -> String {
    let held = match why {
        Refusal::Lock(LockError::Held { holder, .. }) => format!("lock held by {holder}"),
        Refusal::Lease(LeaseError::Held {
            holder, expires, ..
        }) => format!(
            "lease held by {holder} until {}",
            crate::replicate::keys::rfc3339(*expires)
        ),
        Refusal::Lease(LeaseError::Contended { .. }) => {
            "other runs kept changing its lease on the source".to_owned()
        }
        Refusal::Lock(e) => return failed(e),
        Refusal::Lease(e) => return failed(e),
    };
    format!("refused: {}", terminal_text::message(&held))
}

fn failed(error: &dyn std::error::Error) -> String {
    format!("failed: {}", terminal_text::message(&error.to_string()))
}

/// A transfer's progress: `45 % 5.4 MiB of 12.0 MiB, 38.2 MiB/s`, or without the share and
/// the total while the source's block table is being read.
pub fn progress(p: &Progress) -> String {
    match p.total {
        Some(total) => format!(
            "{} % {} of {}, {}",
            percent(p.bytes, total),
            format_size(p.bytes),
            format_size(total),
            format_rate(p.rate())
        ),
        None => format!("{}, {}", format_size(p.bytes), format_rate(p.rate())),
    }
}

/// `12.0 MiB to send`: said once per disk, when the transfer knows its length.
pub fn to_send(total: u64) -> String {
    format!("{} to send", format_size(total))
}

/// Whole percent of `done` in `total`, 100 for an empty transfer.
fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 100;
    }
    (u128::from(done.min(total)) * 100 / u128::from(total)) as u64
}

/// `2026-12-07T03:00:00Z`: RFC 3339 in UTC, to the second, as every log line starts.
pub fn timestamp(at: OffsetDateTime) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// When a transfer's periodic progress line is due: every [`Cadence::EVERY`] of the
/// transfer's time, or each time it passes another tenth of its length, whichever comes
/// first.
#[derive(Debug, Default)]
pub struct Cadence {
    last_at: Duration,
    last_tenth: u64,
    total_said: bool,
}

/// What a progress update should print, if anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// The transfer's length is now known: say it once.
    ToSend(u64),
    Progress,
}

impl Cadence {
    pub const EVERY: Duration = Duration::from_secs(10);

    pub fn update(&mut self, p: &Progress) -> Due {
        // The transfer started over (NBD falling back to the export path): so does its
        // cadence, its length included.
        if p.elapsed < self.last_at {
            *self = Cadence::default();
        }
        if let Some(total) = p.total
            && !self.total_said
        {
            self.total_said = true;
            self.last_at = p.elapsed;
            return Due::ToSend(total);
        }
        let tenth = match p.total {
            Some(total) => percent(p.bytes, total) / 10,
            None => 0,
        };
        // The end (100 %) is the done line's to tell.
        let new_tenth = tenth > self.last_tenth && tenth < 10;
        if new_tenth || p.elapsed.saturating_sub(self.last_at) >= Cadence::EVERY {
            self.last_at = p.elapsed;
            self.last_tenth = self.last_tenth.max(tenth);
            return Due::Progress;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::run::DiskReport;

    fn event(kind: EventKind<'_>) -> CycleEvent<'_> {
        CycleEvent {
            vm: "0a1b2c3d-0000-4000-8000-000000000001",
            vm_name: "web-01",
            kind,
        }
    }

    const ROOT: DiskLabel<'static> = DiskLabel {
        userdevice: "0",
        name: "web-01 root",
    };

    fn at(bytes: u64, total: Option<u64>, seconds: u64) -> Progress {
        Progress {
            bytes,
            total,
            blocks: 0,
            blocks_total: None,
            elapsed: Duration::from_secs(seconds),
        }
    }

    #[test]
    fn steps_read_as_sentences_naming_vm_and_disk() {
        let taken = event(EventKind::SnapshotTaken {
            snapshot: "5e",
            base: Some("4d"),
        });
        assert_eq!(vm_label(&taken), "vm \"web-01\"");
        assert_eq!(describe(&taken).unwrap(), "snapshot taken (5e; base 4d)");
        let first = event(EventKind::SnapshotTaken {
            snapshot: "5e",
            base: None,
        });
        assert!(describe(&first).unwrap().contains("no base"));
        let started = event(EventKind::DiskStarted {
            disk: ROOT,
            delta: true,
            virtual_size: 20 << 30,
        });
        assert_eq!(
            describe(&started).unwrap(),
            "disk 0 \"web-01 root\": delta of a 20.0 GiB disk started"
        );
        let report = DiskReport {
            userdevice: "0".into(),
            name: "web-01 root".into(),
            mode: "delta",
            transport: "stream",
            virtual_size: 20 << 30,
            bytes_read: 12 << 20,
            bytes_sent: 12 << 20,
            blocks: 6,
            source_vdi: "s".into(),
            replica_vdi: "r".into(),
        };
        let done = event(EventKind::DiskDone {
            disk: ROOT,
            report: &report,
        });
        assert_eq!(
            describe(&done).unwrap(),
            "disk 0 \"web-01 root\": delta done, 12.0 MiB sent"
        );
        let over_nbd = DiskReport {
            transport: "nbd",
            ..report.clone()
        };
        let done = event(EventKind::DiskDone {
            disk: ROOT,
            report: &over_nbd,
        });
        assert_eq!(
            describe(&done).unwrap(),
            "disk 0 \"web-01 root\": delta done over NBD, 12.0 MiB sent"
        );
        let none: [String; 0] = [];
        let one = ["old".to_owned()];
        let kept = event(EventKind::RetentionDone {
            deleted_replicas: &none,
            deleted_snapshots: &none,
        });
        assert_eq!(describe(&kept).unwrap(), "retention: nothing to delete");
        let pruned = event(EventKind::RetentionDone {
            deleted_replicas: &one,
            deleted_snapshots: &none,
        });
        assert!(
            describe(&pruned)
                .unwrap()
                .contains("deleted 1 restore point(s)")
        );
        assert_eq!(
            describe(&event(EventKind::Step(Phase::Snapshot))).unwrap(),
            "taking the source snapshot"
        );
        // The transfer step is told by its disks; progress has its own text.
        assert_eq!(describe(&event(EventKind::Step(Phase::Transfer))), None);
    }

    #[test]
    fn host_text_cannot_reach_the_terminal_raw() {
        let hostile = CycleEvent {
            vm: "x",
            vm_name: "evil\x1b[2J\nforged line",
            kind: EventKind::Step(Phase::Cleanup),
        };
        let label = vm_label(&hostile);
        assert!(!label.contains('\x1b') && !label.contains('\n'), "{label}");
        let disk = DiskLabel {
            userdevice: "0",
            name: "\u{202e}gpj.exe",
        };
        assert!(!disk_label(&disk).contains('\u{202e}'));
    }

    #[test]
    fn health_checks_say_passed_or_failed_with_the_guests_word() {
        use crate::replicate::health::HealthReport;
        use crate::replicate::layout::PointKind;
        let report = |passed| {
            HealthOutcome::Checked(HealthReport {
                vm: "v".into(),
                restore_point: "r".into(),
                kind: PointKind::TargetSnapshot,
                passed,
                detail: "guest agent up\x1b[2J".into(),
                seconds: 1.0,
                cleaned_up: Vec::new(),
            })
        };
        let (good, bad) = (report(true), report(false));
        let said = describe(&event(EventKind::HealthCheckDone(&good))).unwrap();
        assert!(
            said.starts_with("health check passed (guest agent up"),
            "{said}"
        );
        assert!(!said.contains('\x1b'), "{said}");
        let said = describe(&event(EventKind::HealthCheckDone(&bad))).unwrap();
        assert!(said.starts_with("health check FAILED"), "{said}");
        let error = HealthOutcome::Error {
            passed: false,
            error: "no guest metrics".into(),
        };
        assert_eq!(
            describe(&event(EventKind::HealthCheckDone(&error))).unwrap(),
            "health check FAILED (no guest metrics)"
        );
    }

    #[test]
    fn a_vm_whose_name_is_unknown_is_named_by_uuid() {
        let unread = CycleEvent {
            vm: "0a1b",
            vm_name: "",
            kind: EventKind::Step(Phase::Cleanup),
        };
        assert_eq!(vm_label(&unread), "vm 0a1b");
        assert_eq!(vm_name(&unread), "0a1b");
    }

    #[test]
    fn progress_shows_share_sizes_and_rate_in_binary_units() {
        // 5.4 MiB of 12.0 MiB in a second.
        let p = at(5_662_311, Some(12 << 20), 1);
        assert_eq!(progress(&p), "45 % 5.4 MiB of 12.0 MiB, 5.4 MiB/s");
        assert_eq!(progress(&at(3 << 20, None, 0)), "3.0 MiB, 0 B/s");
        assert_eq!(progress(&at(0, Some(0), 0)), "100 % 0 B of 0 B, 0 B/s");
        assert_eq!(to_send(12 << 20), "12.0 MiB to send");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_second() {
        let at = OffsetDateTime::from_unix_timestamp(1_796_612_400).unwrap();
        let offset = at.to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(timestamp(at), "2026-12-07T03:00:00Z");
        assert_eq!(timestamp(offset), "2026-12-07T03:00:00Z");
    }

    #[test]
    fn progress_lines_come_every_tenth_or_every_ten_seconds() {
        let total = 1000;
        let mut cadence = Cadence::default();
        // Before the length is known: only the time rule.
        assert_eq!(cadence.update(&at(0, None, 0)), Due::Nothing);
        assert_eq!(cadence.update(&at(0, None, 10)), Due::Progress);
        // The length, once.
        assert_eq!(cadence.update(&at(0, Some(total), 11)), Due::ToSend(total));
        assert_eq!(cadence.update(&at(50, Some(total), 12)), Due::Nothing);
        // Each new tenth...
        assert_eq!(cadence.update(&at(100, Some(total), 12)), Due::Progress);
        assert_eq!(cadence.update(&at(150, Some(total), 13)), Due::Nothing);
        // ...jumping several at once says it once.
        assert_eq!(cadence.update(&at(450, Some(total), 13)), Due::Progress);
        assert_eq!(cadence.update(&at(480, Some(total), 14)), Due::Nothing);
        // A slow stretch: every ten seconds.
        assert_eq!(cadence.update(&at(490, Some(total), 22)), Due::Nothing);
        assert_eq!(cadence.update(&at(495, Some(total), 23)), Due::Progress);
        // The end is the done line's.
        assert_eq!(cadence.update(&at(1000, Some(total), 25)), Due::Nothing);
        // A transfer that starts over (its clock back at 0) is told afresh.
        assert_eq!(cadence.update(&at(0, Some(2000), 0)), Due::ToSend(2000));
        assert_eq!(cadence.update(&at(200, Some(2000), 1)), Due::Progress);
    }

    #[test]
    fn a_refusal_names_the_holder_and_an_error_is_a_failure() {
        let held = LeaseError::Held {
            vm: "v".into(),
            holder: "pid 7 on b2\x1b[2J".into(),
            expires: 1_705_314_030,
        };
        assert_eq!(
            describe(&event(EventKind::Refused(Refusal::Lease(&held)))).unwrap(),
            "refused: lease held by pid 7 on b2\\u{1b}[2J until 2024-01-15T10:20:30Z"
        );
        let locked = LockError::Held {
            vm: "v".into(),
            holder: "pid 8 on b1".into(),
        };
        assert_eq!(
            describe(&event(EventKind::Refused(Refusal::Lock(&locked)))).unwrap(),
            "refused: lock held by pid 8 on b1"
        );
        let malformed = LeaseError::Malformed {
            vm: "v".into(),
            key: "k".into(),
            why: "not JSON".into(),
        };
        let text = describe(&event(EventKind::Refused(Refusal::Lease(&malformed)))).unwrap();
        assert!(
            text.starts_with("failed: VM v: the source's other_config key k"),
            "{text}"
        );
    }
}
