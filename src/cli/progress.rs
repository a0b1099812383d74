//! The replication run's display on stderr, from the cycles' events. On a terminal: a line
//! per VM showing its current step, and under it a bar for the disk being transferred, both
//! labelled by VM name; a VM done leaves its one line, so a fleet fits a screen. Otherwise
//! (cron, a pipe, a file): one timestamped line per step and a periodic progress line per
//! disk, no colour and no cursor movement. Nothing for JSON.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use time::OffsetDateTime;

use super::step_text::{self, Cadence, Due};
use crate::replicate::run::{CycleEvent, EventKind};
use crate::replicate::runner::JobObserver;

/// The bars on stderr while a terminal display runs; log lines are printed above them
/// (see `logging`).
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The bars on stderr, if a terminal display has drawn any.
pub(super) fn bars() -> Option<&'static MultiProgress> {
    BARS.get()
}

/// The display for `replicate`'s cycles: bars on a terminal, lines otherwise. `names` are
/// the VMs' names by UUID as the job's check read them, for the events sent before a cycle
/// has read its VM (a refused VM's).
pub(super) fn job_display(json: bool, names: HashMap<String, String>) -> JobObserver {
    if json {
        return Arc::new(Mutex::new(|_: &CycleEvent<'_>| {}));
    }
    if std::io::stderr().is_terminal() {
        let mut bars = Bars::default();
        return Arc::new(Mutex::new(move |event: &CycleEvent<'_>| {
            bars.show(&named(event, &names));
        }));
    }
    let mut lines = Lines::default();
    Arc::new(Mutex::new(move |event: &CycleEvent<'_>| {
        if let Some(line) = lines.line(&named(event, &names), OffsetDateTime::now_utc()) {
            eprintln!("{line}");
        }
    }))
}

/// `event`, with its VM's name from `names` when the event has none.
fn named<'x>(event: &CycleEvent<'x>, names: &'x HashMap<String, String>) -> CycleEvent<'x> {
    let vm_name = match names.get(event.vm) {
        Some(name) if event.vm_name.is_empty() => name.as_str(),
        _ => event.vm_name,
    };
    CycleEvent { vm_name, ..*event }
}

/// One line per step, and per disk its length once known and its progress at a cadence.
#[derive(Default)]
struct Lines {
    /// Per (VM, userdevice) being transferred.
    cadences: HashMap<(String, String), Cadence>,
}

impl Lines {
    /// The line `event` prints at `now`, if any.
    fn line(&mut self, event: &CycleEvent<'_>, now: OffsetDateTime) -> Option<String> {
        let text = match event.kind {
            EventKind::DiskProgress { disk, progress } => {
                let key = (event.vm.to_owned(), disk.userdevice.to_owned());
                let said = match self.cadences.entry(key).or_default().update(progress) {
                    Due::Nothing => return None,
                    Due::ToSend(total) => step_text::to_send(total),
                    Due::Progress => step_text::progress(progress),
                };
                format!("{}: {said}", step_text::disk_label(&disk))
            }
            EventKind::DiskDone { disk, .. } => {
                self.cadences
                    .remove(&(event.vm.to_owned(), disk.userdevice.to_owned()));
                step_text::describe(event)?
            }
            _ => step_text::describe(event)?,
        };
        Some(format!(
            "{} {} {text}",
            step_text::timestamp(now),
            step_text::vm_label(event)
        ))
    }
}

/// Per VM a spinner line with its current step, per disk a bar under it.
#[derive(Default)]
struct Bars {
    /// Per VM UUID.
    steps: HashMap<String, ProgressBar>,
    /// Per (VM UUID, userdevice).
    disks: HashMap<(String, String), ProgressBar>,
}

impl Bars {
    fn multi() -> &'static MultiProgress {
        BARS.get_or_init(MultiProgress::new)
    }

    fn show(&mut self, event: &CycleEvent<'_>) {
        let name = step_text::vm_name(event);
        let step = self.steps.entry(event.vm.to_owned()).or_insert_with(|| {
            let spinner = Bars::multi().add(ProgressBar::new_spinner());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} {msg}") {
                spinner.set_style(style);
            }
            spinner.set_prefix(name.clone());
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        });
        match event.kind {
            EventKind::DiskStarted { disk, .. } => {
                let bar = ProgressBar::new(0);
                if let Ok(style) =
                    ProgressStyle::with_template("  {prefix} [{bar:30}] {msg} ETA {eta}")
                {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(format!("{name} {}", step_text::disk_label(&disk)));
                let bar = Bars::multi().insert_after(step, bar);
                if let Some(text) = step_text::describe(event) {
                    step.set_message(text);
                }
                let key = (event.vm.to_owned(), disk.userdevice.to_owned());
                self.disks.insert(key, bar);
            }
            EventKind::DiskProgress { disk, progress } => {
                if let Some(bar) = self
                    .disks
                    .get(&(event.vm.to_owned(), disk.userdevice.to_owned()))
                {
                    bar.set_length(progress.total.unwrap_or(0));
                    bar.set_position(progress.bytes);
                    bar.set_message(step_text::progress(progress));
                }
            }
            EventKind::DiskDone { disk, .. } => {
                let key = (event.vm.to_owned(), disk.userdevice.to_owned());
                if let Some(bar) = self.disks.remove(&key) {
                    bar.finish_and_clear();
                }
                if let Some(text) = step_text::describe(event) {
                    step.set_message(text);
                }
            }
            EventKind::Done(_) | EventKind::Failed(_) | EventKind::Refused(_) => {
                self.disks.retain(|(vm, _), bar| {
                    let ours = vm == event.vm;
                    if ours {
                        bar.finish_and_clear();
                    }
                    !ours
                });
                if let Some(text) = step_text::describe(event) {
                    step.finish_with_message(text);
                }
            }
            _ => {
                if let Some(text) = step_text::describe(event) {
                    step.set_message(text);
                }
            }
        }
    }
}

impl Drop for Bars {
    /// Whatever did not end (a panicked cycle) stays on screen as it was.
    fn drop(&mut self) {
        for bar in self.disks.values().chain(self.steps.values()) {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::run::{DiskLabel, Phase};
    use crate::xapi::transfer::Progress;

    #[test]
    fn lines_say_each_step_once_and_progress_at_a_cadence() {
        let mut lines = Lines::default();
        let now = OffsetDateTime::from_unix_timestamp(1_796_612_400).unwrap();
        let disk = DiskLabel {
            userdevice: "0",
            name: "root",
        };
        let mut said = Vec::new();
        let mut show = |kind: EventKind<'_>| {
            let event = CycleEvent {
                vm: "uuid-1",
                vm_name: "web-01",
                kind,
            };
            said.extend(lines.line(&event, now));
        };
        show(EventKind::Step(Phase::Snapshot));
        show(EventKind::Step(Phase::Transfer));
        show(EventKind::DiskStarted {
            disk,
            delta: false,
            virtual_size: 1 << 30,
        });
        for bytes in (0..=100u64).map(|i| i * (1 << 20)) {
            show(EventKind::DiskProgress {
                disk,
                progress: &Progress {
                    bytes,
                    total: Some(100 << 20),
                    blocks: 0,
                    blocks_total: None,
                    elapsed: Duration::from_millis(bytes >> 20),
                },
            });
        }
        assert_eq!(
            said[0],
            "2026-12-07T03:00:00Z vm \"web-01\" taking the source snapshot"
        );
        assert_eq!(
            said[2],
            "2026-12-07T03:00:00Z vm \"web-01\" disk 0 \"root\": 100.0 MiB to send"
        );
        // The length, then one line per tenth from 10 % to 90 %: eleven lines in all.
        assert_eq!(said.len(), 12, "{said:#?}");
        assert!(
            said[3].ends_with("10 % 10.0 MiB of 100.0 MiB, 1000.0 MiB/s"),
            "{}",
            said[3]
        );
        for line in &said {
            assert!(!line.contains('\x1b') && !line.contains("Some("), "{line}");
        }
    }
}
