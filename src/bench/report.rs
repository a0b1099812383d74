//! The bench result as a table for people and a JSON document for tools. Pure.

use std::fmt::Write;
use std::path::Path;

use serde_json::{Value, json};

use super::measure::{MIB, RSS_LIMIT, Row, Side, all_pass};

/// What the figures were measured on and with.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub disk_bytes: u64,
    pub changed_bytes: u64,
    pub runs: usize,
    pub cpus: usize,
    pub cpu_model: String,
    pub filesystem: String,
}

fn seconds(s: f64) -> String {
    if s < 0.1 {
        format!("{:.2} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn side_text(side: &Side) -> String {
    let rate = if side.bytes > 0 {
        format!(" {}", crate::units::format_rate(side.rate()))
    } else {
        String::new()
    };
    format!(
        "{} ±{:.0}%{rate}",
        seconds(side.summary.median),
        side.summary.spread() * 100.0
    )
}

fn ratio_text(row: &Row) -> String {
    match row.ratio() {
        Some(r) if r >= 1.0 => format!("{r:.2}x"),
        Some(r) => format!("{:.0}%", r * 100.0),
        None => "-".into(),
    }
}

pub fn table(setting: &Setting, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vhdsync bench: {} MiB disk, {} MiB changed per delta, median of {} runs (±: (max-min)/median)",
        setting.disk_bytes / MIB,
        setting.changed_bytes / MIB,
        setting.runs
    );
    let _ = writeln!(
        out,
        "machine: {} CPUs, {}, {}",
        setting.cpus, setting.cpu_model, setting.filesystem
    );
    let _ = writeln!(out);
    let header = [
        "measurement",
        "vhdsync",
        "reference",
        "ratio",
        "target",
        "result",
        "peak RSS",
    ];
    let mut lines: Vec<[String; 7]> = vec![header.map(String::from)];
    for row in rows {
        let reference = match &row.reference {
            Some(r) => format!("{}: {}", r.label, side_text(r)),
            None => "-".into(),
        };
        let rss = if row.rss_judged {
            format!(
                "{:.1} MiB {}",
                row.ours.summary.peak_rss as f64 / MIB as f64,
                row.rss_verdict().word()
            )
        } else {
            "-".into()
        };
        lines.push([
            row.name.clone(),
            side_text(&row.ours),
            reference,
            ratio_text(row),
            row.target.describe(),
            row.verdict().word().into(),
            rss,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| r.note.as_ref().map(|n| format!("  {}: {n}", r.name)))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\nnotes:");
        for note in notes {
            let _ = writeln!(out, "{note}");
        }
    }
    let _ = writeln!(
        out,
        "\npeak RSS limit {} MiB; all targets {}",
        RSS_LIMIT / MIB,
        if all_pass(rows) { "met" } else { "NOT met" }
    );
    out
}

pub fn json(setting: &Setting, rows: &[Row]) -> Value {
    json!({
        "disk_bytes": setting.disk_bytes,
        "changed_bytes": setting.changed_bytes,
        "runs": setting.runs,
        "machine": {
            "cpus": setting.cpus,
            "cpu_model": setting.cpu_model,
            "filesystem": setting.filesystem,
        },
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "all_targets_met": all_pass(rows),
    })
}

/// The CPU model from /proc/cpuinfo's text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

/// The type and mount point of the filesystem holding `path`, from /proc/mounts' text: the
/// longest mount point that contains it.
pub fn filesystem_of(path: &Path, mounts: &str) -> Option<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point).then_some((point, kind))
        })
        .max_by_key(|(point, _)| point.len())
        .map(|(point, kind)| format!("{kind} on {point}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::{Sample, Summary, Target};

    fn side(label: &str, bytes: u64, seconds: f64) -> Side {
        Side {
            label: label.into(),
            bytes,
            summary: Summary::of(&[Sample {
                seconds,
                peak_rss: 20 * MIB,
            }])
            .unwrap(),
        }
    }

    fn setting() -> Setting {
        Setting {
            disk_bytes: 256 * MIB,
            changed_bytes: 64 * MIB,
            runs: 1,
            cpus: 2,
            cpu_model: "Some CPU".into(),
            filesystem: "ext4 on /".into(),
        }
    }

    #[test]
    fn the_table_shows_each_row_with_its_ratio_target_and_verdict() {
        let rows = vec![
            Row {
                name: "export | cat".into(),
                ours: side("export", 1_000_000_000, 1.0),
                reference: Some(side("cat | cat", 1_000_000_000, 0.5)),
                target: Target::RatioAtLeast(0.4),
                note: None,
                rss_judged: true,
            },
            Row {
                name: "apply".into(),
                ours: side("apply", 1_000_000_000, 1.0),
                reference: None,
                target: Target::RatioAtLeast(1.0),
                note: Some("qemu-img is not installed".into()),
                rss_judged: true,
            },
        ];
        let text = table(&setting(), &rows);
        assert!(text.contains("256 MiB disk, 64 MiB changed"), "{text}");
        let export = text
            .lines()
            .find(|l| l.starts_with("export | cat"))
            .unwrap();
        for part in [
            "1.00 s ±0% 953.7 MiB/s",
            "cat | cat: 0.50 s",
            "50%",
            ">= 40%",
            "pass",
            "20.0 MiB pass",
        ] {
            assert!(export.contains(part), "{part} in {export}");
        }
        assert!(text.contains("apply: qemu-img is not installed"), "{text}");
        assert!(text.contains("all targets met"), "{text}");
        let document = json(&setting(), &rows);
        assert_eq!(document["rows"].as_array().unwrap().len(), 2);
        assert_eq!(document["all_targets_met"], true);
        assert_eq!(document["rows"][1]["verdict"], "-");
    }

    #[test]
    fn machine_facts_come_from_proc() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        let mounts =
            "/dev/vda / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\ntmpfs /tmp/x tmpfs rw 0 0\n";
        assert_eq!(
            filesystem_of(Path::new("/dev/shm/bench"), mounts).as_deref(),
            Some("tmpfs on /dev/shm")
        );
        assert_eq!(
            filesystem_of(Path::new("/work/bench"), mounts).as_deref(),
            Some("ext4 on /")
        );
        // A mount point is a path prefix, not a string prefix.
        assert_eq!(
            filesystem_of(Path::new("/tmp/xy"), mounts).as_deref(),
            Some("ext4 on /")
        );
    }
}
