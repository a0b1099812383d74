//! `vhdsync bench` as one call: [`run`] sets up the testbed, measures vhdsync and the tools
//! it must keep up with on the same bytes, judges the targets of issue 9 and saves the result
//! as `bench.json`; the caller shows the [`Report`]. Every measured side (ours and the
//! reference) is a child process, so its own wall time and peak RSS are read (wait4) without
//! this process or the lab hosts counting.

use std::path::{Path, PathBuf};

use super::BenchError;
use super::measure::{MIB, Row, Sample, Side, Summary, Target};
use super::process::{Logs, find_program};
use super::report::{Setting, cpu_model, filesystem_of, json, table};
use super::testbed::{
    CONCURRENCIES, Cycles, DIFF_RUNS, GRANULE, NbdCycles, Progress, SCATTERED_WRITES, Testbed,
};

/// What to measure, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Virtual size of the benchmark disk: whole 2 MiB blocks, at least one.
    pub size: u64,
    /// Percentage of the disk the guest rewrites before each delta cycle.
    pub changed_percent: f64,
    /// Runs of each measurement, at least one.
    pub runs: usize,
    /// The folder to work in; `None` makes a new one in the temporary directory. Its `data`
    /// folder is deleted at the end, `bench.json` and `logs/` stay.
    pub dir: Option<PathBuf>,
}

/// A finished bench: what it ran on, its rows, and where its result was saved.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub setting: Setting,
    pub rows: Vec<Row>,
    /// `bench.json`, the [`Report::to_json`] document.
    pub saved_to: PathBuf,
}

impl Report {
    pub fn to_json(&self) -> serde_json::Value {
        json(&self.setting, &self.rows)
    }

    /// The table for people.
    pub fn table(&self) -> String {
        table(&self.setting, &self.rows)
    }
}

/// Run the bench; `progress` hears each step as it starts.
pub fn run(options: &Options, progress: Progress<'_>) -> Result<Report, BenchError> {
    let size = options.size;
    if size < GRANULE || !size.is_multiple_of(GRANULE) {
        return Err(BenchError::BadSize { size });
    }
    if options.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    let changed_bytes = (size as f64 * options.changed_percent / 100.0) as u64 / GRANULE * GRANULE;
    let changed_bytes = changed_bytes.max(GRANULE);
    let dir = match &options.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("vhdsync-bench-{}", std::process::id())),
    };
    let data = dir.join("data");
    if data.exists() {
        return Err(BenchError::DataLeft { data });
    }
    std::fs::create_dir_all(&data)
        .map_err(|e| BenchError::io("creating the data folder", &data, e))?;
    let rows = measure(
        &data,
        &dir.join("logs"),
        size,
        changed_bytes,
        options.runs,
        progress,
    );
    // The data is gigabytes; the result and the logs stay.
    let _ = std::fs::remove_dir_all(&data);
    let rows = rows?;
    let report = Report {
        setting: machine(&dir, size, changed_bytes, options.runs),
        rows,
        saved_to: dir.join("bench.json"),
    };
    let text = serde_json::to_string_pretty(&report.to_json())
        .map_err(|e| BenchError::new("encoding the result", e.to_string()))?;
    std::fs::write(&report.saved_to, text + "\n")
        .map_err(|e| BenchError::io("saving the result", &report.saved_to, e))?;
    Ok(report)
}

fn machine(dir: &Path, disk_bytes: u64, changed_bytes: u64, runs: usize) -> Setting {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    Setting {
        disk_bytes,
        changed_bytes,
        runs,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown CPU".into()),
        filesystem: filesystem_of(&dir, &read("/proc/mounts"))
            .unwrap_or_else(|| "unknown filesystem".into()),
    }
}

/// The timings of one measurement's two sides over the runs.
#[derive(Default)]
struct Sides {
    ours: Vec<Sample>,
    reference: Vec<Sample>,
}

impl Sides {
    /// One run of each side, the reference first when `reference_first`; ours alone when
    /// there is no reference (its tool is missing).
    fn run_both(
        &mut self,
        reference_first: bool,
        ours: impl FnOnce() -> Result<Sample, BenchError>,
        reference: Option<impl FnOnce() -> Result<Sample, BenchError>>,
    ) -> Result<(), BenchError> {
        match reference {
            Some(reference) if reference_first => {
                self.reference.push(reference()?);
                self.ours.push(ours()?);
            }
            Some(reference) => {
                self.ours.push(ours()?);
                self.reference.push(reference()?);
            }
            None => self.ours.push(ours()?),
        }
        Ok(())
    }
}

fn summary(samples: &[Sample], what: &str) -> Result<Summary, BenchError> {
    Summary::of(samples).ok_or_else(|| BenchError::new(what, "no run completed".into()))
}

fn side(label: &str, bytes: u64, samples: &[Sample]) -> Result<Side, BenchError> {
    Ok(Side {
        label: label.into(),
        bytes,
        summary: summary(samples, label)?,
    })
}

fn measure(
    data: &Path,
    logs: &Path,
    size: u64,
    changed_bytes: u64,
    runs: usize,
    progress: Progress<'_>,
) -> Result<Vec<Row>, BenchError> {
    let logs = Logs::new(logs)?;
    let lab = Testbed::start(data, logs, size, progress)?;
    let qemu = find_program("qemu-img");
    let curl = find_program("curl");
    let stream_len = lab.stream_len()?;
    let (mut export, mut apply_fast, mut apply_durable, mut copy) = (
        Sides::default(),
        Sides::default(),
        Sides::default(),
        Sides::default(),
    );
    for round in 1..=runs {
        progress(&format!("round {round}/{runs}: export, apply, copy-vdi"));
        export.ours.push(lab.export()?);
        export.reference.push(lab.cat()?);
        // Which side writes first alternates: a write is faster into pages the run before
        // it has just freed, and on a VM whose balloon hands free memory back to its host,
        // much slower into memory free for a few seconds (`scripts/page-cache-reuse.py`).
        let reference_first = round % 2 == 1;
        for durable in [false, true] {
            let sides = if durable {
                &mut apply_durable
            } else {
                &mut apply_fast
            };
            sides.run_both(
                reference_first,
                || lab.apply(durable),
                qemu.as_ref().map(|qemu| || lab.qemu_convert(qemu, durable)),
            )?;
        }
        // The raw file is not needed again this round: free its space for the copies.
        lab.remove_out()?;
        // Alternated too: the first of the two may read the source VDI from disk, the second
        // from the page cache.
        copy.run_both(
            reference_first,
            || lab.copy_vdi(),
            curl.as_ref()
                .map(|curl| || lab.curl_relay(curl, stream_len)),
        )?;
    }
    let mut nbd = NbdCycles::default();
    lab.nbd_fulls(runs, &mut nbd)?;
    let (full, delta, unchanged) = lab.cycles(runs, changed_bytes)?;
    lab.scattered_deltas(runs, &mut nbd)?;
    progress("timing changed() on a 2 TiB 3-layer chain");
    let diff = lab.diff()?;
    lab.stop();

    let missing = |tool: &str, samples: &[Sample]| {
        samples
            .is_empty()
            .then(|| format!("{tool} is not installed: no reference"))
    };
    let reference = |label: &str, samples: &[Sample]| -> Result<Option<Side>, BenchError> {
        match samples.is_empty() {
            true => Ok(None),
            false => side(label, stream_len, samples).map(Some),
        }
    };
    let copy_side = side("copy-vdi", stream_len, &copy.ours)?;
    let delta_bytes = delta.bytes / delta.samples.len().max(1) as u64;
    let per_cycle = |c: &Cycles| c.bytes / c.samples.len().max(1) as u64;
    let cat_rate = reference("cat | cat", &export.reference)?.map(|cat| cat.rate());
    let export_full = side(
        "vhdsync replicate, export path",
        per_cycle(&full),
        &full.samples,
    )?;
    let mut nbd_rows = Vec::new();
    for (at, concurrency) in CONCURRENCIES.iter().enumerate() {
        let fulls = &nbd.fulls[at];
        let judged = *concurrency == 4;
        nbd_rows.push(Row {
            name: format!("full cycle, NBD x{concurrency}"),
            ours: side(
                &format!("vhdsync replicate, NBD x{concurrency}"),
                per_cycle(fulls),
                &fulls.samples,
            )?,
            reference: judged.then(|| export_full.clone()),
            target: if judged {
                Target::RatioAtLeast(1.0)
            } else {
                Target::None
            },
            note: judged.then(|| match cat_rate {
                Some(rate) => format!(
                    "rate = stream bytes sent / wall time; cat of the stream file: {:.0} MiB/s",
                    rate / MIB as f64
                ),
                None => "rate = stream bytes sent / wall time".into(),
            }),
            rss_judged: true,
        });
    }
    let nbd_delta = per_cycle(&nbd.nbd_deltas);
    let bound = 2 * SCATTERED_WRITES * (64 << 10) + MIB;
    nbd_rows.push(Row {
        name: format!("delta after {SCATTERED_WRITES} x 4 KiB, NBD"),
        ours: side(
            "vhdsync replicate, NBD x4",
            nbd_delta,
            &nbd.nbd_deltas.samples,
        )?,
        reference: Some(side(
            "vhdsync replicate, export path",
            per_cycle(&nbd.stream_deltas),
            &nbd.stream_deltas.samples,
        )?),
        target: Target::WallTimeOnly,
        note: Some(format!(
            "ratio = the export path's wall time over NBD's; bytes sent per delta: NBD {} ({}, bound {}), export path {}",
            nbd_delta,
            if nbd_delta <= bound {
                "within the bound"
            } else {
                "OVER the bound"
            },
            bound,
            per_cycle(&nbd.stream_deltas)
        )),
        rss_judged: true,
    });
    Ok([
        Row {
            name: "export | cat".into(),
            ours: side("vhdsync export | cat", stream_len, &export.ours)?,
            reference: reference("cat | cat", &export.reference)?,
            target: Target::RatioAtLeast(0.4),
            note: Some("to /dev/null through a pipe: write(2) to /dev/null would never read the mapped pages".into()),
            rss_judged: true,
        },
        Row {
            name: "apply --no-sync".into(),
            ours: side("vhdsync apply --no-sync", stream_len, &apply_fast.ours)?,
            reference: reference("qemu-img convert", &apply_fast.reference)?,
            target: Target::RatioAtLeast(1.0),
            note: missing("qemu-img", &apply_fast.reference).or(Some(
                "the two alternate, each following the other; qemu-img is fast only right after a run that leaves its output in the page cache, vhdsync drops its pages as it goes".into(),
            )),
            rss_judged: true,
        },
        Row {
            name: "apply".into(),
            ours: side("vhdsync apply", stream_len, &apply_durable.ours)?,
            reference: reference("qemu-img convert + sync", &apply_durable.reference)?,
            target: Target::RatioAtLeast(1.0),
            note: missing("qemu-img", &apply_durable.reference),
            rss_judged: true,
        },
        Row {
            name: "copy-vdi".into(),
            ours: copy_side.clone(),
            reference: reference("curl GET | curl PUT", &copy.reference)?,
            target: Target::RatioAtLeast(0.9),
            note: missing("curl", &copy.reference),
            rss_judged: true,
        },
        Row {
            name: "full cycle".into(),
            ours: side("vhdsync replicate", full.bytes / full.samples.len().max(1) as u64, &full.samples)?,
            reference: None,
            target: Target::None,
            note: None,
            rss_judged: true,
        },
        Row {
            name: "delta cycle".into(),
            ours: side("vhdsync replicate", delta_bytes, &delta.samples)?,
            reference: Some(copy_side),
            target: Target::RatioAtLeast(0.8),
            note: Some(format!(
                "{} MiB rewritten before each; rate = stream bytes sent / the cycle's wall time",
                changed_bytes / MIB
            )),
            rss_judged: true,
        },
        Row {
            name: "no-change cycle".into(),
            ours: side("vhdsync replicate", 0, &unchanged.samples)?,
            reference: None,
            target: Target::SecondsBelow(2.0),
            note: None,
            rss_judged: true,
        },
    ]
    .into_iter()
    .chain(nbd_rows)
    .chain([Row {
            name: "changed() 2 TiB delta".into(),
            ours: side("changed()", 0, &diff)?,
            reference: None,
            target: Target::SecondsBelow(0.02),
            note: Some(format!("in process, median of {DIFF_RUNS}")),
            rss_judged: false,
        }])
    .collect())
}
