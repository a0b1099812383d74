//! The arithmetic of `vhdsync bench`: medians, spreads, throughput ratios and verdicts against
//! the targets of issue 9. Pure: numbers in, numbers out.

use serde_json::{Value, json};

pub const MIB: u64 = 1 << 20;
/// Peak RSS allowed to every command, whatever the disk size.
pub const RSS_LIMIT: u64 = 64 * MIB;

/// One timed run of one side of a measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub seconds: f64,
    /// Peak resident set of the measured process, in bytes.
    pub peak_rss: u64,
}

/// Several runs of one side: the median is the figure, the spread says how much to trust it.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub runs: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The largest peak RSS of any run.
    pub peak_rss: u64,
}

impl Summary {
    /// `None` for no samples: a measurement that did not run has no median.
    pub fn of(samples: &[Sample]) -> Option<Summary> {
        let mut seconds: Vec<f64> = samples.iter().map(|s| s.seconds).collect();
        seconds.sort_by(f64::total_cmp);
        let n = seconds.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => seconds[n / 2],
            _ => (seconds[n / 2 - 1] + seconds[n / 2]) / 2.0,
        };
        Some(Summary {
            runs: n,
            median,
            min: seconds[0],
            max: seconds[n - 1],
            peak_rss: samples.iter().map(|s| s.peak_rss).max().unwrap_or(0),
        })
    }

    /// (max - min) / median: 0.1 means the runs lie within 10 % of the median's size.
    pub fn spread(&self) -> f64 {
        (self.max - self.min) / self.median.max(f64::MIN_POSITIVE)
    }
}

/// One side of a row: what ran, how many bytes it moved, and its runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    pub label: String,
    pub bytes: u64,
    pub summary: Summary,
}

impl Side {
    /// Bytes per second at the median time. A run too fast for the clock counts as 1 µs.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.summary.median.max(1e-6)
    }
}

/// What a row must reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Our throughput over the reference's is at least this.
    RatioAtLeast(f64),
    /// Our median wall time is below this many seconds.
    SecondsBelow(f64),
    /// Reported for information only.
    None,
    /// Reported for information only, the ratio of wall times: the two sides do the same
    /// work (one cycle after the same guest writes) in different numbers of bytes, so their
    /// rates say nothing of which was faster.
    WallTimeOnly,
}

impl Target {
    pub fn describe(&self) -> String {
        match *self {
            Target::RatioAtLeast(min) if min >= 1.0 => format!(">= {min:.1}x"),
            Target::RatioAtLeast(min) => format!(">= {:.0}%", min * 100.0),
            Target::SecondsBelow(s) if s < 1.0 => format!("< {:.0} ms", s * 1000.0),
            Target::SecondsBelow(s) => format!("< {s} s"),
            Target::None | Target::WallTimeOnly => "-".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// No target, or the reference could not run.
    NotJudged,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::NotJudged => "-",
        }
    }
}

/// One line of the result: our side, the reference it is compared with, and the target.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub ours: Side,
    pub reference: Option<Side>,
    pub target: Target,
    /// Why the reference is missing, or what to know when reading the row.
    pub note: Option<String>,
    /// Whether the peak RSS limit applies: it does to our commands, not to an in-process
    /// measurement.
    pub rss_judged: bool,
}

impl Row {
    /// Our throughput over the reference's (each side's bytes over its own median time), or
    /// for [`Target::WallTimeOnly`] the reference's median time over ours.
    pub fn ratio(&self) -> Option<f64> {
        let reference = self.reference.as_ref()?;
        Some(match self.target {
            Target::WallTimeOnly => {
                reference.summary.median / self.ours.summary.median.max(f64::MIN_POSITIVE)
            }
            _ => self.ours.rate() / reference.rate().max(f64::MIN_POSITIVE),
        })
    }

    pub fn verdict(&self) -> Verdict {
        let pass = match self.target {
            Target::RatioAtLeast(min) => match self.ratio() {
                Some(ratio) => ratio >= min,
                None => return Verdict::NotJudged,
            },
            Target::SecondsBelow(limit) => self.ours.summary.median < limit,
            Target::None | Target::WallTimeOnly => return Verdict::NotJudged,
        };
        if pass { Verdict::Pass } else { Verdict::Fail }
    }

    pub fn rss_verdict(&self) -> Verdict {
        match self.rss_judged {
            false => Verdict::NotJudged,
            true if self.ours.summary.peak_rss <= RSS_LIMIT => Verdict::Pass,
            true => Verdict::Fail,
        }
    }

    pub fn to_json(&self) -> Value {
        let side = |s: &Side| {
            json!({
                "label": s.label,
                "bytes": s.bytes,
                "runs": s.summary.runs,
                "median_seconds": s.summary.median,
                "min_seconds": s.summary.min,
                "max_seconds": s.summary.max,
                "spread": s.summary.spread(),
                "bytes_per_second": s.rate(),
                "peak_rss_bytes": s.summary.peak_rss,
            })
        };
        json!({
            "name": self.name,
            "ours": side(&self.ours),
            "reference": self.reference.as_ref().map(side),
            "ratio": self.ratio(),
            "target": self.target.describe(),
            "verdict": self.verdict().word(),
            "rss_limit_bytes": self.rss_judged.then_some(RSS_LIMIT),
            "rss_verdict": self.rss_verdict().word(),
            "note": self.note,
        })
    }
}

/// Whether every judged row passed both its target and its memory limit.
pub fn all_pass(rows: &[Row]) -> bool {
    rows.iter()
        .all(|r| r.verdict() != Verdict::Fail && r.rss_verdict() != Verdict::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, rss_mib: u64) -> Sample {
        Sample {
            seconds,
            peak_rss: rss_mib * MIB,
        }
    }

    fn side(bytes: u64, seconds: &[f64]) -> Side {
        let samples: Vec<Sample> = seconds.iter().map(|&s| sample(s, 10)).collect();
        Side {
            label: "x".into(),
            bytes,
            summary: Summary::of(&samples).unwrap(),
        }
    }

    fn row(ours: Side, reference: Option<Side>, target: Target) -> Row {
        Row {
            name: "row".into(),
            ours,
            reference,
            target,
            note: None,
            rss_judged: true,
        }
    }

    #[test]
    fn the_median_is_the_middle_run_or_the_mean_of_the_two_middle_ones() {
        let odd = Summary::of(&[sample(3.0, 1), sample(1.0, 5), sample(2.0, 2)]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max, odd.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(odd.peak_rss, 5 * MIB);
        assert_eq!(odd.spread(), 1.0);
        let even = Summary::of(&[
            sample(4.0, 1),
            sample(1.0, 1),
            sample(2.0, 1),
            sample(3.0, 1),
        ]);
        assert_eq!(even.unwrap().median, 2.5);
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn the_ratio_compares_throughputs_so_sides_may_move_different_bytes() {
        // Ours moves half the bytes in a quarter of the time: twice the rate.
        let r = row(
            side(50, &[1.0]),
            Some(side(100, &[4.0])),
            Target::RatioAtLeast(0.8),
        );
        assert_eq!(r.ratio(), Some(2.0));
        assert_eq!(r.verdict(), Verdict::Pass);
        let slow = row(
            side(100, &[2.0]),
            Some(side(100, &[1.0])),
            Target::RatioAtLeast(0.9),
        );
        assert_eq!(slow.ratio(), Some(0.5));
        assert_eq!(slow.verdict(), Verdict::Fail);
    }

    #[test]
    fn a_wall_time_row_compares_times_whatever_the_bytes_and_is_not_judged() {
        // The same cycle, ours in 13 MB and 0.5 s, the reference in 268 MB and 1 s.
        let r = row(
            side(13, &[0.5]),
            Some(side(268, &[1.0])),
            Target::WallTimeOnly,
        );
        assert_eq!(r.ratio(), Some(2.0));
        assert_eq!(r.verdict(), Verdict::NotJudged);
        assert_eq!(Target::WallTimeOnly.describe(), "-");
    }

    #[test]
    fn a_ratio_exactly_at_the_target_passes() {
        let r = row(
            side(100, &[1.0]),
            Some(side(100, &[1.0])),
            Target::RatioAtLeast(1.0),
        );
        assert_eq!(r.verdict(), Verdict::Pass);
    }

    #[test]
    fn without_a_reference_or_a_target_a_row_is_not_judged() {
        let missing = row(side(1, &[1.0]), None, Target::RatioAtLeast(1.0));
        assert_eq!(missing.verdict(), Verdict::NotJudged);
        assert_eq!(missing.ratio(), None);
        let info = row(side(1, &[1.0]), None, Target::None);
        assert_eq!(info.verdict(), Verdict::NotJudged);
        assert!(all_pass(&[missing, info]));
    }

    #[test]
    fn wall_time_targets_judge_the_median() {
        let quick = row(side(0, &[1.0, 1.5, 9.0]), None, Target::SecondsBelow(2.0));
        assert_eq!(quick.verdict(), Verdict::Pass);
        let slow = row(side(0, &[2.0]), None, Target::SecondsBelow(2.0));
        assert_eq!(slow.verdict(), Verdict::Fail);
        assert!(!all_pass(&[quick, slow]));
    }

    #[test]
    fn peak_rss_over_64_mib_fails_unless_not_judged() {
        let mut r = row(side(1, &[1.0]), None, Target::None);
        r.ours.summary.peak_rss = RSS_LIMIT;
        assert_eq!(r.rss_verdict(), Verdict::Pass);
        r.ours.summary.peak_rss = RSS_LIMIT + 1;
        assert_eq!(r.rss_verdict(), Verdict::Fail);
        assert!(!all_pass(std::slice::from_ref(&r)));
        r.rss_judged = false;
        assert_eq!(r.rss_verdict(), Verdict::NotJudged);
    }

    #[test]
    fn targets_describe_themselves_as_the_issue_writes_them() {
        assert_eq!(Target::RatioAtLeast(0.4).describe(), ">= 40%");
        assert_eq!(Target::RatioAtLeast(1.0).describe(), ">= 1.0x");
        assert_eq!(Target::SecondsBelow(2.0).describe(), "< 2 s");
        assert_eq!(Target::SecondsBelow(0.02).describe(), "< 20 ms");
    }

    #[test]
    fn json_rows_carry_the_computed_figures() {
        let r = row(
            side(100, &[1.0]),
            Some(side(100, &[2.0])),
            Target::RatioAtLeast(0.9),
        );
        let v = r.to_json();
        assert_eq!(v["ratio"], 2.0);
        assert_eq!(v["verdict"], "pass");
        assert_eq!(v["ours"]["bytes_per_second"], 100.0);
        assert_eq!(v["reference"]["median_seconds"], 2.0);
        assert_eq!(v["rss_verdict"], "pass");
    }
}
