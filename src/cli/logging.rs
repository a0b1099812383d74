//! Log lines on stderr (`-v` and up, or `VHDSYNC_LOG`): RFC 3339 UTC timestamps to the
//! second like the progress lines, colour only on a terminal and never with `NO_COLOR`, and
//! printed above the progress bars rather than through them.

use std::io::{self, IsTerminal, Write};

use time::OffsetDateTime;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use super::progress;
use super::step_text;

pub(super) fn init(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VHDSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let colour = colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| AboveBars)
        .with_ansi(colour)
        .with_timer(UtcSeconds)
        // Module paths help a developer at -vv; an operator at -v wants the message.
        .with_target(verbose >= 2)
        .try_init();
}

/// Colour on a terminal unless `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>).
fn colour_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// The progress lines' timestamp on every log line.
struct UtcSeconds;

impl FormatTime for UtcSeconds {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        w.write_str(&step_text::timestamp(OffsetDateTime::now_utc()))
    }
}

/// Stderr, with the progress bars (when drawn) moved out of the way of each line.
struct AboveBars;

impl Write for AboveBars {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The formatter hands over each event whole: the bars are suspended per line.
        match progress::bars() {
            Some(bars) => bars.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(colour_wanted(true, None));
        assert!(!colour_wanted(false, None));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, Some(OsStr::new("1"))));
        // The convention: an empty NO_COLOR is as if unset.
        assert!(colour_wanted(true, Some(OsStr::new(""))));
    }
}
