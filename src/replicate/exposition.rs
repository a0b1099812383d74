//! The Prometheus text exposition format (0.0.4), as node_exporter's textfile collector and
//! Prometheus read it: metric families of gauges written with their `# HELP` and `# TYPE`
//! lines, each family's samples together, label values escaped (`\\`, `\"`, `\n`); and one
//! sample line read back, for a writer that keeps some of its previous samples.
//!
//! Label values are VM names, which anyone on the source pool may set to anything: the
//! escaping is what keeps a name from ending its sample line or forging another. Pure.

use std::fmt::Write as _;

/// A metric family: its name, help text and samples, all gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<Sample>,
}

/// One sample: its labels (name, value), in order, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if it has one.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The families with samples, in the order given.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for family in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
        let _ = writeln!(out, "# TYPE {} gauge", family.name);
        for sample in &family.samples {
            out.push_str(family.name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{name}=\"{}\"", escape_label_value(value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_value(sample.value));
        }
    }
    out
}

/// A label value as the format writes it: backslash, double quote and line feed escaped.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text: backslash and line feed escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A value as Go's `strconv.ParseFloat` reads it.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

/// A sample line read back: metric name, labels, value (a timestamp after it is ignored).
/// `None` for a comment, a blank line, or a line that is not a sample in this format.
pub fn parse_sample(line: &str) -> Option<(String, Sample)> {
    let line = line.trim_end_matches('\r');
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_ascii_whitespace();
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let value = parse_value(fields.next()?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some((name.to_owned(), Sample { labels, value }))
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name="value",…}` after the opening brace: the labels and what follows the brace.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = text.find('=')?;
        let name = text[..eq].trim();
        if !is_name(name) || name.contains(':') {
            return None;
        }
        let mut chars = text[eq + 1..].trim_start().char_indices();
        let start = text.len() - chars.as_str().len();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return None;
        }
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    _ => return None,
                },
                (at, '"') => break start + at + 1,
                (_, '\n') => return None,
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_owned(), value));
        text = text[end..].trim_start();
        if let Some(after) = text.strip_prefix(',') {
            text = after;
        } else if !text.starts_with('}') {
            return None;
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if text
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            text.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: labels
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    #[test]
    fn families_render_with_help_type_and_escaped_labels() {
        let families = [
            Family {
                name: "vhdsync_a",
                help: "A help\\text\nover lines.",
                samples: vec![
                    sample(&[("vm", "x"), ("vm_name", "we\"b\\0\n1")], 1.0),
                    sample(&[], 2.5),
                ],
            },
            Family {
                name: "vhdsync_empty",
                help: "Not written.",
                samples: vec![],
            },
            Family {
                name: "vhdsync_b",
                help: "B.",
                samples: vec![sample(&[("job", "j")], 1_705_314_030.0)],
            },
        ];
        assert_eq!(
            render(&families),
            "# HELP vhdsync_a A help\\\\text\\nover lines.\n\
             # TYPE vhdsync_a gauge\n\
             vhdsync_a{vm=\"x\",vm_name=\"we\\\"b\\\\0\\n1\"} 1\n\
             vhdsync_a 2.5\n\
             # HELP vhdsync_b B.\n\
             # TYPE vhdsync_b gauge\n\
             vhdsync_b{job=\"j\"} 1705314030\n"
        );
    }

    #[test]
    fn sample_lines_read_back() {
        let (name, s) = parse_sample("m{a=\"x\\\"y\", b = \"\\\\\\n\",} 12.5 1700000000").unwrap();
        assert_eq!(name, "m");
        assert_eq!(s, sample(&[("a", "x\"y"), ("b", "\\\n")], 12.5));
        let (_, s) = parse_sample("m +Inf").unwrap();
        assert_eq!(s.value, f64::INFINITY);
        assert!(parse_sample("m NaN").unwrap().1.value.is_nan());
        for bad in [
            "",
            "# HELP m x",
            "m",
            "m{a=\"x\"}",
            "m{a=\"x} 1",
            "m{a=x} 1",
            "m{a=\"\\q\"} 1",
            "m 1 2 3",
            "m 0x10",
            "1m 1",
            "m{a=\"x\"}1",
            "m{1a=\"x\"} 1",
        ] {
            assert_eq!(parse_sample(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Any label value, however hostile, renders as one line that reads back the same.
        #[test]
        fn any_label_value_round_trips(value in "\\PC*|[\\\\\"\n{}=, ]*", other in ".*", v in -1e15f64..1e15) {
            let family = Family {
                name: "vhdsync_x",
                help: "X.",
                samples: vec![sample(&[("vm_name", &value), ("job", &other)], v)],
            };
            let text = render(&[family]);
            let lines: Vec<&str> = text.lines().collect();
            proptest::prop_assert_eq!(lines.len(), 3);
            let (name, parsed) = parse_sample(lines[2]).unwrap();
            proptest::prop_assert_eq!(name, "vhdsync_x");
            proptest::prop_assert_eq!(parsed.label("vm_name"), Some(value.as_str()));
            proptest::prop_assert_eq!(parsed.label("job"), Some(other.as_str()));
            proptest::prop_assert_eq!(parsed.value, v);
        }
    }
}
