//! The replication run's display on stderr, from the cycles' events: a bar per disk on a
//! terminal, a log line per disk every few seconds otherwise, nothing for JSON.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::terminal_text;
use super::units::{human_bytes, human_rate};
use crate::replicate::run::{CycleEvent, EventKind};
use crate::replicate::runner::JobObserver;

/// The display for `replicate`'s cycles.
pub(super) fn job_display(json: bool) -> JobObserver {
    let tty = !json && std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let mut known: BTreeMap<(String, String), indicatif::ProgressBar> = BTreeMap::new();
    let mut last_log = Instant::now();
    Arc::new(Mutex::new(move |event: &CycleEvent<'_>| {
        let EventKind::DiskProgress { disk, progress: p } = event.kind else {
            return;
        };
        let label = format!(
            "{} disk {}",
            terminal_text::name(event.vm_name),
            disk.userdevice
        );
        if json {
        } else if tty {
            let key = (event.vm.to_owned(), disk.userdevice.to_owned());
            let bar = known.entry(key).or_insert_with(|| {
                let bar = bars.add(indicatif::ProgressBar::new(p.total.unwrap_or(0)));
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{prefix} {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
                ) {
                    bar.set_style(style);
                }
                bar.set_prefix(label);
                bar
            });
            bar.set_length(p.total.unwrap_or(0));
            bar.set_position(p.bytes);
        } else if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            eprintln!(
                "vhdsync: {label}: {} of {}, {}",
                human_bytes(p.bytes),
                human_bytes(p.total.unwrap_or(0)),
                human_rate(p.rate())
            );
        }
    }))
}
